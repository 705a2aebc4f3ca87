"""Data-parallel training on ``torch.distributed``: each process (rank) trains on its shard of every
global batch, and the gradients are averaged inside the compiled step.

Started by torchrun (``torchrun --nproc-per-node N -m mnistfx train ...``), or by ``mnistfx train
--nproc N``, which runs torchrun's launcher for N processes on this machine.

What stays the single-process run's: the config (the global batch, the recipe), the initial
parameters, and every random number. Each rank draws the shuffle, the augmentation and the dropout
of the whole global batch from the run's generators and keeps its rows, so the generators stay
equal on every rank, one data-parallel step equals the single-process step on the same batch (to
float tolerance: the sums run in another order), and the checkpoint rank 0 writes resumes with any
number of processes that divides the batch.

What differs: a model with batch norm normalises by its shard's statistics (as PyTorch's
``DistributedDataParallel`` without ``SyncBatchNorm``); its running statistics are averaged over
the ranks at every step, so the state stays the same on all of them.

Every rank checks its own inputs; what only rank 0 can check (the run folder, the checkpoint) is
shared with :func:`agree` before the first step, so a bad input stops every rank with one line.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from ..errors import ConfigError, MnistfxError

_BEFORE = "run the command again (no process had begun training)"
_AFTER = "continue it with `resume(run_dir)` if it wrote a checkpoint, else run the command again"
# A rank waits this long for a peer that neither answers nor dies (ranks never wait on each other longer
# than a cold compile or an evaluation takes), and for all of them to join.
TIMEOUT = datetime.timedelta(minutes=5)
_MESSAGE_BYTES = 1024
_COLLECTIVE_FAILURE = re.compile(r"gloo|nccl|c10d|Connection (closed|reset)", re.I)  # in a failed collective's error
_WHY = re.compile(r"Connection (closed|reset)|timed? ?out|broken pipe|peer", re.I)  # its telling line


@dataclass(frozen=True)
class Parallel:
    """This process's place in a data-parallel run."""

    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        """Whether this is rank 0: the one that reads and writes the run folder and reports."""
        return self.rank == 0


def from_environment() -> Parallel | None:
    """The place torchrun gave this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or ``None`` when
    it was not started by torchrun (or alone)."""
    env = os.environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        rank, world, local = (int(env[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except (KeyError, ValueError):
        raise ConfigError(
            "RANK, WORLD_SIZE and LOCAL_RANK must all be whole numbers: start data-parallel runs "
            "with torchrun or `mnistfx train --nproc`"
        ) from None
    if not 0 <= rank < world or not 0 <= local < world:
        raise ConfigError(
            f"RANK {rank} and LOCAL_RANK {local} do not fit WORLD_SIZE {world}: start data-parallel runs with torchrun"
        )
    return None if world == 1 else Parallel(rank, world, local)


def device_for(parallel: Parallel, device: torch.device) -> torch.device:
    """The device this rank trains on: on CUDA, the GPU of its local rank."""
    if device.type != "cuda":
        return device
    if parallel.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"local rank {parallel.local_rank} has no GPU ({torch.cuda.device_count()} here): start at "
            "most one process per GPU"
        )
    return torch.device("cuda", parallel.local_rank)


def start(parallel: Parallel) -> None:
    """Join the process group at the address torchrun gave: gloo for CPU tensors, and nccl for CUDA
    tensors where there is a GPU."""
    if dist.is_initialized():
        return
    _check_address(parallel)
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    try:
        dist.init_process_group(backend, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as e:
        raise MnistfxError(
            f"rank {parallel.rank} cannot join the other processes ({str(e).strip()[:200]}): check "
            "torchrun's --rdzv-endpoint / MASTER_ADDR and MASTER_PORT"
        ) from None


def start_parallel() -> Parallel | None:
    """Join the data-parallel run this process was started in, by torchrun (or ``mnistfx train --nproc``):
    read its place from the environment and join the other processes. Call it once in every process, then
    pass what it returns to :func:`~mnistfx.train` or :func:`~mnistfx.resume` as ``parallel``.

    Returns:
        This process's :class:`~mnistfx.Parallel`, or ``None`` in a process that runs alone (then train as
        usual).

    Raises:
        ConfigError: torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) that do not fit.
        MnistfxError: the other processes cannot be reached at the address torchrun gave.
    """
    parallel = from_environment()
    if parallel is not None:
        start(parallel)
    return parallel


def _check_address(parallel: Parallel) -> None:
    """Refuse a ``MASTER_ADDR`` that does not resolve, or a ``MASTER_PORT`` that is no port, at once: the
    rendezvous would retry it until its timeout."""
    env = os.environ
    fix = "check torchrun's --master-addr and --master-port (or --rdzv-endpoint), or MASTER_ADDR and MASTER_PORT"
    port = env.get("MASTER_PORT")
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"rank {parallel.rank}: MASTER_PORT {port!r} is not a port number: {fix}")
    address = env.get("MASTER_ADDR")
    if address is None:
        return
    try:
        socket.getaddrinfo(address, None)
    except (OSError, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigError(
            f"rank {parallel.rank}: MASTER_ADDR {address!r} is not an address this machine can find ({reason}): {fix}"
        ) from None


def stop() -> None:
    """Leave the process group (if joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def check_started(parallel) -> None:
    """``parallel`` must be a :class:`Parallel` of the process group this process joined (:func:`start`)."""
    if not isinstance(parallel, Parallel):
        raise TypeError(
            f"parallel must be a mnistfx.Parallel (from mnistfx.start_parallel()), not {type(parallel).__name__}"
        )
    if not dist.is_initialized() or (dist.get_rank(), dist.get_world_size()) != (parallel.rank, parallel.world):
        raise ConfigError(
            f"rank {parallel.rank} of {parallel.world} has not joined its process group: call "
            "mnistfx.start_parallel() first, in a process torchrun started"
        )


def check_config(parallel: Parallel, config, *, resuming: bool = False) -> None:
    """Refuse a :class:`~mnistfx.TrainConfig` that cannot be trained data-parallel by ``parallel.world`` ranks
    (``resuming``: the config is a checkpoint's, which the command line cannot change)."""
    if config.batch_size % parallel.world:
        fix = (
            f"resume it with a process count that divides {config.batch_size}"
            if resuming
            else f"choose a `batch_size` that is a multiple of {parallel.world}, or another process count"
        )
        raise ConfigError(f"{parallel.world} processes cannot share a batch of {config.batch_size} equally: {fix}")
    if config.ensemble > 1:
        fix = "resume it in one process" if resuming else "set `ensemble=1`, or train in one process"
        raise ConfigError(f"an ensemble trains in one process (its members share each step already): {fix}")
    if config.dp_noise is not None:
        fix = "resume it in one process" if resuming else "train it in one process, or without `dp_noise`"
        raise ConfigError(f"DP-SGD trains in one process here: {fix}")


def check_processes(nproc: int, config, *, resuming: bool = False) -> None:
    """Refuse, before any process starts, ``nproc`` processes on this machine that cannot train ``config``."""
    check_config(Parallel(0, nproc, 0), config, resuming=resuming)
    device = torch.device(config.device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(
            f"{nproc} processes need {nproc} GPUs, and this machine has {torch.cuda.device_count()}: "
            "start at most one process per GPU"
        )


def shard_rows(parallel: Parallel, batches: int, batch_size: int) -> torch.Tensor:
    """The positions this rank trains on among the indices of one call's ``batches`` global batches."""
    per = batch_size // parallel.world
    starts = torch.arange(batches)[:, None] * batch_size + parallel.rank * per
    return (starts + torch.arange(per)).flatten()


def make_average(world: int) -> Callable:
    """``average(grads, loss, state) -> (grads, loss, state)``: the means over all ranks of the
    gradients, the loss and the floating-point state, with one all-reduce (traceable by torch.compile)."""

    def average(grads: dict, loss: torch.Tensor, state: dict):
        # by sorted name: a dict's order may differ between ranks (safetensors reads files in no fixed order)
        names = sorted(grads)
        floats = sorted(k for k, v in state.items() if v.is_floating_point())
        parts = [*(grads[k] for k in names), loss, *(state[k] for k in floats)]
        flat = torch.cat([p.reshape(-1).float() for p in parts])
        flat = funcol.all_reduce(flat, "sum", dist.group.WORLD) / world  # type: ignore[arg-type]  # WORLD: started
        out = [
            piece.view(p.shape).to(p.dtype)
            for piece, p in zip(flat.split([p.numel() for p in parts]), parts, strict=True)
        ]
        averaged = dict(zip(names, out[: len(names)], strict=True))
        state = {**state, **dict(zip(floats, out[len(names) + 1 :], strict=True))}
        return {k: averaged[k] for k in grads}, out[len(names)], state

    return average


def agree(parallel: Parallel, failure: BaseException | None) -> None:
    """Every rank learns whether any rank failed before training: a failed rank re-raises its error,
    the others raise :class:`~mnistfx.MnistfxError` with the first failed rank's message."""
    sent = b"" if failure is None else b"!" + (str(failure) or type(failure).__name__).encode()[: _MESSAGE_BYTES - 1]
    mine = torch.zeros(_MESSAGE_BYTES, dtype=torch.uint8)
    mine[: len(sent)] = torch.tensor(list(sent), dtype=torch.uint8)
    everyone = [torch.empty_like(mine) for _ in range(parallel.world)]
    with guard(parallel, _BEFORE):
        dist.all_gather(everyone, mine)
    if failure is not None:
        raise failure
    for rank, msg in enumerate(everyone):
        if msg[0]:
            text = bytes(msg[1:].tolist()).rstrip(b"\0").decode(errors="replace")
            raise MnistfxError(f"rank {rank} stopped the run: {text}")


def on_main(parallel: Parallel, fn: Callable, errors: tuple = (MnistfxError,)):
    """``fn()`` on rank 0 (``None`` elsewhere), then :func:`agree`: an error of ``errors`` it raises
    stops every rank."""
    result, failure = None, None
    if parallel.main:
        try:
            result = fn()
        except errors as e:
            failure = e
    agree(parallel, failure)
    return result


def check_same(parallel: Parallel, text: str, what: str) -> None:
    """Every rank was given the same ``text`` (e.g. its config as JSON), or all raise :class:`ConfigError`."""
    mine = torch.frombuffer(bytearray(hashlib.sha256(text.encode()).digest()), dtype=torch.uint8)
    everyone = [torch.empty_like(mine) for _ in range(parallel.world)]
    with guard(parallel, _BEFORE):
        dist.all_gather(everyone, mine)
    for rank, digest in enumerate(everyone):
        if not torch.equal(digest, everyone[0]):
            raise ConfigError(
                f"rank {rank} was given other {what} than rank 0: start every process with the same command"
            )


def check_same_work(parallel: Parallel, resuming: bool) -> None:
    """Every rank starts a new run, or every rank resumes one (each rank's first collective, so ranks
    started with different commands stop with one line instead of mismatched collectives)."""
    check_same(parallel, "resume" if resuming else "train", "work (a new run, or `resume`)")


def share_bytes(parallel: Parallel, data: bytes | None) -> bytes:
    """Rank 0's ``data`` on every rank (the others pass ``None``)."""
    if parallel.main and data is None:
        raise ValueError("share_bytes: rank 0 passes the bytes to share")
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64)
    with guard(parallel, _BEFORE):
        dist.broadcast(size, 0)
        buf = (
            torch.frombuffer(bytearray(data), dtype=torch.uint8)
            if data is not None
            else torch.empty(int(size), dtype=torch.uint8)
        )
        dist.broadcast(buf, 0)
    return data if data is not None else buf.numpy().tobytes()


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective's failure (a peer died, was stopped, or stopped answering)."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and bool(_COLLECTIVE_FAILURE.search(str(error)))
    )


@contextlib.contextmanager
def guard(parallel: Parallel | None, fix: str = _AFTER):
    """Turn a failed collective into one line that says what to do (``fix``)."""
    try:
        yield
    except RuntimeError as e:
        if parallel is None or not is_collective_failure(e):
            raise
        lines = [line.strip() for line in str(e).splitlines() if _WHY.search(line)]
        why = lines[0][:200] if lines else str(e).strip().split("\n")[0][:200]
        raise MnistfxError(f"rank {parallel.rank} lost the other processes ({why}): the run stops; {fix}") from None
