"""Settings of the whole suite.

Triton's interpreter when there is no GPU: Triton reads TRITON_INTERPRET when ``@triton.jit`` decorates a
function, and its own library functions (tl.sum, tl.cumsum, ...) are decorated when triton is first imported,
which ``import lightning`` already does (through torch._dynamo) while tests/archspace is being collected. So the
variable is set here, before any test module is collected, for the Triton kernel tests
(tests/kernels/test_triton_*.py) to run on CPU tensors. With a CUDA device the kernels compile as usual.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
