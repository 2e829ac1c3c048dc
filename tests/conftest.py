"""Suite-wide fixtures: every test starts from the same torch numerics state, whatever ran before it.

`archspace.training.train` sets the process's torch thread count (`train.threads`) and Lightning's
`deterministic=True` switches deterministic algorithms on for the whole process; both used to leak into
every later test, so a test's floating-point result depended on which tests ran before it and on the
machine's core count (a parallel reduction is split, hence rounded, per thread). Each test now runs with
one intra-op thread (the same reduction order on every machine, and no spinning OpenMP workers competing
for the cores of a loaded CI box) and gets the previous state back afterwards.
"""
from __future__ import annotations

import pytest

from numerics_testutil import pinned_torch_numerics


@pytest.fixture(autouse=True)
def _pinned_torch_numerics():
    with pinned_torch_numerics():
        yield
