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

os.environ["OMP_NUM_THREADS"] = "1"

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
