"""Kernel tests. Without a CUDA device the Triton kernels run under Triton's CPU interpreter: Triton reads
TRITON_INTERPRET when @triton.jit decorates a function, so it is set here, before any test module
imports archspace.kernels.triton_chunk / triton_recurrent. With a GPU the same tests compile and run the
kernels at real shapes (see triton_testutil.ON_GPU)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
