"""``mnistfx train --nproc N``: the same command in N data-parallel processes on this machine,
started by torchrun's launcher (what ``torchrun --standalone --nproc-per-node N`` does)."""

from __future__ import annotations

import logging
import os
import sys
import uuid

ARGV: list[str] = []  # the command line `main` was given, which each process runs again


def launch(nproc: int) -> int:
    """Run ``python -m mnistfx`` with :data:`ARGV` in ``nproc`` processes; their exit status (the first
    failed one's, if any failed: torchrun then stops the others)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the processes share this machine's cores: one math library thread each per core they get
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, sys.executable)("-m", "mnistfx", *ARGV)
    except ChildFailedError as e:
        failure = e.get_first_failure()[1]
        return failure.exitcode if failure.exitcode > 0 else 1  # a process killed by a signal has a negative code
    return 0
