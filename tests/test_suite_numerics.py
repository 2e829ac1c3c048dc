"""The suite's numerics fixture: a test sees one torch thread, and what a test changes does not leak."""
from __future__ import annotations

import torch

from numerics_testutil import TEST_THREADS, pinned_torch_numerics


def test_each_test_runs_with_the_pinned_thread_count():
    assert torch.get_num_threads() == TEST_THREADS


def test_state_changed_inside_is_restored():
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    with pinned_torch_numerics(threads=2):
        assert torch.get_num_threads() == 2
        torch.set_num_threads(3)  # what train(threads=3) does
        torch.use_deterministic_algorithms(True)  # what Lightning's deterministic=True does
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
