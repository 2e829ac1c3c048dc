"""Settings of the whole suite.

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
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402 - after the environment it reads

torch.set_num_threads(1)

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
