"""The torch numerics state every test starts from (applied by tests/conftest.py to each test)."""
from __future__ import annotations

import contextlib

import torch

TEST_THREADS = 1


@contextlib.contextmanager
def pinned_torch_numerics(threads: int = TEST_THREADS):
    """Run the body with `threads` intra-op threads; restore the thread count and the deterministic-
    algorithms switch (which training turns on process-wide) afterwards."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])

