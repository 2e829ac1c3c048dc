"""Settings of the whole suite.

One intra-op thread per test process (and, through the environment, per CLI subprocess and Ray worker): on a
2-core machine shared with other jobs, two OpenMP threads per process spend most of their time waiting at
barriers (the tiny models of the tests ran 10-50x slower with 2 threads than with 1 on a loaded machine), so the
suite's time would depend on the load. Tests whose numerics or subject need threads set them themselves
(`train.threads`, torch.set_num_threads inside the test).
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402 - after the environment it reads

torch.set_num_threads(1)
