"""Settings and fixtures of the whole suite.

One intra-op thread per test process (and, through the environment, per CLI subprocess and Ray worker): on a
2-core machine shared with other jobs, two OpenMP threads per process spend most of their time waiting at
barriers (the tiny models of the tests ran 10-50x slower with 2 threads than with 1 on a loaded machine), so the
suite's time would depend on the load. Tests whose numerics or subject need threads set them themselves
(`train.threads`, torch.set_num_threads inside the test).

Triton's interpreter when there is no GPU: Triton reads TRITON_INTERPRET when ``@triton.jit`` decorates a
function, and its own library functions (tl.sum, tl.cumsum, ...) are decorated when triton is first imported,
which ``import lightning`` already does (through torch._dynamo) while tests/archspace is being collected. So the
variable is set here, before any test module is collected, for the Triton kernel tests
(tests/kernels/test_triton_*.py) to run on CPU tensors. With a CUDA device the kernels compile as usual.

Every test also starts from the same torch numerics state, whatever ran before it: `archspace.training.train`
sets the process's torch thread count (`train.threads`) and Lightning's `deterministic=True` switches
deterministic algorithms on for the whole process; both used to leak into every later test, so a test's
floating-point result depended on which tests ran before it and on the machine's core count (a parallel
reduction is split, hence rounded, per thread). Each test runs with one intra-op thread (the same reduction
order on every machine) and gets the previous state back afterwards.
"""
from __future__ import annotations

import os
import signal

os.environ["OMP_NUM_THREADS"] = "1"

# A suite started in the background of a non-interactive shell (`pytest &`, nohup, some CI runners) inherits
# SIGINT ignored, and so would every CLI subprocess the tests start; the tests of Ctrl-C (exit 130, the dashboard
# and train stopping) need the handler an interactive Python has.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402
import torch  # noqa: E402 - after the environment it reads

from numerics_testutil import pinned_torch_numerics  # noqa: E402

torch.set_num_threads(1)

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _pinned_torch_numerics():
    with pinned_torch_numerics():
        yield


def pytest_collection_modifyitems(items):
    """The files that hold a long end-to-end test (marked ``slow``) run first, in their usual order, each
    file's tests still together and in order: with `-n 2 --dist loadfile` each process then starts on the
    long ones and the short in-process files fill in, so the two processes finish together instead of one
    waiting out a study at the end. Nothing is deselected."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group is kept
