"""``mnistfx train --nproc N``: the same command in N data-parallel processes on this machine,
started by torchrun's launcher (what ``torchrun --standalone --nproc-per-node N`` does)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import time
import uuid

ARGV: list[str] = []  # the command line `main` was given, which each process runs again
PARENT_ENV = "MNISTFX_LAUNCHER_PID"  # tells a rank that `--nproc` started it, and from which process


def stop_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent (the launcher) dies, even by SIGKILL,
    so no rank trains on alone (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launched() -> bool:
    """Whether ``mnistfx train --nproc`` started this process (its launcher is its parent): the launcher
    then speaks for a run that a signal stopped."""
    return os.environ.get(PARENT_ENV) == str(os.getppid())


def next_step(out, since: float) -> str:
    """What to do with the run in ``out`` that a signal stopped; its files are this run's if written
    ``since`` it started (an ``--overwrite`` run may stop before it replaces the old run's)."""
    from mnistfx.training.runs import run_folder

    folder = run_folder(out)

    def ours(name):
        return (folder / name).is_file() and (folder / name).stat().st_mtime >= since

    if ours("weights.safetensors"):  # the signal came as it ended
        return f"it had finished: its weights are in {out}"
    if ours("checkpoint.safetensors"):
        return f"continue it with `mnistfx train --resume {out}`"
    return "run the command again (no checkpoint was written yet)"


def launch(nproc: int, out) -> int:
    """Run ``python -m mnistfx`` with :data:`ARGV` in ``nproc`` processes; their exit status (the first
    failed one's, if any failed: torchrun then stops the others). A signal to the launcher (Ctrl-C,
    SIGTERM) stops them all, and the launcher says how to go on with the run in ``out``."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from mnistfx.errors import MnistfxError

    # the processes share this machine's cores: one math library thread each per core they get
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10d's connection retries are not the user's news
    os.environ[PARENT_ENV] = str(os.getpid())
    for name in [*logging.root.manager.loggerDict, "torch.distributed"]:  # the ranks speak for themselves
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    started = time.time()
    # the launcher makes a (here empty) folder for the processes' logs: one that is removed afterwards
    with tempfile.TemporaryDirectory(prefix="mnistfx-launch-") as logs:
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc,
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
            monitor_interval=0.1,
            logs_specs=DefaultLogsSpecs(log_dir=logs),
        )
        try:
            elastic_launch(config, sys.executable)("-m", "mnistfx", *ARGV)
        except ChildFailedError as e:
            rank, failure = e.get_first_failure()
            if failure.exitcode > 0:
                return failure.exitcode  # the rank said why
            # killed by a signal (a negative code): it could not say so itself
            try:
                how = signal.Signals(-failure.exitcode).name
            except ValueError:
                how = f"exit status {failure.exitcode}"
            raise MnistfxError(f"rank {rank} was killed ({how}): the run stops") from None
        except SignalException as e:  # Ctrl-C or a kill: the launcher passed it on; the ranks stop quietly
            sys.stdout.flush()
            print(
                f"error: the run was stopped ({signal.Signals(int(e.sigval)).name}): {next_step(out, started)}",
                file=sys.stderr,
                flush=True,
            )
            return 128 + int(e.sigval)
        except RendezvousError as e:
            raise MnistfxError(f"the {nproc} processes could not meet ({e}): try again") from None
    return 0
