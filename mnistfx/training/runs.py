"""A finished run and its folder: :class:`Run`, what is saved of it, and the folder's rules.

A run folder holds ``weights.safetensors``, ``history.json`` and ``checkpoint.safetensors``, each
written atomically. A new run replaces a folder's run only when told to, and while a run writes
into its folder no other process can.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._checks import is_finite, is_whole
from .._io import atomic_write_bytes, read_limited, remove_stale_temps, to_json
from .._types import StrPath
from ..constants import MAX_EPOCHS, VERSION
from ..errors import MnistfxError, RunFolderError
from ..models.evaluation import Metrics
from ..models.weights_file import STATE_PREFIX, save_weights
from .checkpoint import CHECKPOINT_FILE, Checkpoint, read_position
from .config import TrainConfig

try:
    import fcntl
except ImportError:  # Windows: run folders are not locked
    fcntl = None  # type: ignore[assignment]

WEIGHTS_FILE = "weights.safetensors"
HISTORY_FILE = "history.json"
RUN_FILES = (WEIGHTS_FILE, HISTORY_FILE, CHECKPOINT_FILE)


@dataclass
class Run:
    """The result of :func:`~mnistfx.train`.

    Attributes:
        config: what produced it.
        params: the trained parameters (on the config's device); an ensemble's stacked.
        state: the model's state (``{}`` for a model without state).
        history: one dict per epoch (train loss, val loss and accuracy, seconds, img/s).
        val: metrics on the validation split after the last epoch.
        test: metrics on the full 10,000-image test set (``None`` if it was not evaluated);
            an ensemble's from the mean of its members' probabilities.
        member_val: an ensemble's metrics of each member, on the validation split.
        member_test: an ensemble's metrics of each member, on the test set.
        seconds: wall time of the whole run; compile_seconds: of the first (compiling) step.
        processes: the data-parallel processes that trained it (1: one process).
        optimizer: the optimiser it trained with (:meth:`~mnistfx.Optimizer.describe`: name,
            hyperparameters, transforms, schedule).
    """

    config: TrainConfig
    params: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    val: Metrics | None = None
    test: Metrics | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    member_val: list[Metrics] | None = None
    member_test: list[Metrics] | None = None
    seconds: float = 0.0
    compile_seconds: float = 0.0
    processes: int = 1
    optimizer: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        """What :func:`save_run` stores beside the weights: config, accuracies, times, versions."""
        return {
            "model": self.config.model,
            "config": self.config.to_dict(),
            "seed": self.config.seed,
            "epochs": self.config.epochs,
            "members": self.config.ensemble if self.config.ensemble > 1 else None,
            "val_accuracy": self.val.accuracy if self.val else None,
            "test_accuracy": self.test.accuracy if self.test else None,
            "member_val_accuracy": [m.accuracy for m in self.member_val] if self.member_val else None,
            "member_test_accuracy": [m.accuracy for m in self.member_test] if self.member_test else None,
            "seconds": round(self.seconds, 2),
            "compile_seconds": round(self.compile_seconds, 2),
            "processes": self.processes,
            "optimizer": self.optimizer,
            "mnistfx_version": VERSION,
            "torch_version": torch.__version__,
        }

    def summary(self) -> dict:
        """The metadata with the per-epoch history and the validation and test metrics (``history.json``)."""
        return {
            **self.metadata(),
            "history": self.history,
            "val": self.val.to_dict() if self.val else None,
            "test": self.test.to_dict() if self.test else None,
        }


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/<model>-seed<N>``, with ``-<recipe>`` for a recipe other than the default and ``-ens<K>``
    for an ensemble (``runs/tuned-fast-ens5-seed0``)."""
    recipe_part = "" if config.recipe == "default" else f"-{config.recipe}"
    ensemble_part = f"-ens{config.ensemble}" if config.ensemble > 1 else ""
    return Path("runs") / f"{config.model}{recipe_part}{ensemble_part}-seed{config.seed}"


def run_folder(path: StrPath) -> Path:
    """The run folder ``path`` names: itself, or the folder of a checkpoint file given instead."""
    path = Path(path)
    return path.parent if path.is_file() else path


def check_run_dir(path: StrPath, *, overwrite: bool = False) -> None:
    """Raise :class:`~mnistfx.RunFolderError` if the folder ``path`` holds a run a new one would replace.

    An unfinished run's checkpoint is progress that :func:`~mnistfx.resume` can continue; a finished
    run's files are results. Either is replaced only with ``overwrite``.
    """
    path = Path(path)
    present = [name for name in RUN_FILES if (path / name).exists()]
    if overwrite or not present:
        return
    try:
        ckpt = read_position(path / CHECKPOINT_FILE) if CHECKPOINT_FILE in present else None
    except MnistfxError:  # load_checkpoint turns every failure into one
        ckpt = None  # damaged: there is nothing to continue, but the folder still holds a run's files
    if ckpt is not None and not ckpt.finished:
        raise RunFolderError(
            f"{path} holds an unfinished run (epoch {ckpt.epoch} of {ckpt.config.epochs}): continue "
            f"it with `resume({path})`, start it again with `overwrite=True`, or pass another `checkpoint_dir`"
        )
    raise RunFolderError(
        f"{path} holds a finished run ({', '.join(present)}): pass `overwrite=True` to replace it, "
        "or another `checkpoint_dir`"
    )


def check_resumable(path, finished: bool) -> None:
    """Raise :class:`~mnistfx.RunFolderError` if the run folder ``path`` holds a finished run with its
    weights (resuming it would rewrite them); ``finished``: whether its checkpoint is at the end."""
    path = Path(path)
    if finished and all((path / name).is_file() for name in (WEIGHTS_FILE, HISTORY_FILE)):
        raise RunFolderError(f"{path} holds a finished run, with its weights: there is nothing to resume")


def check_run_start(path: StrPath, *, resuming: Checkpoint | None = None, overwrite: bool = False) -> None:
    """Raise :class:`~mnistfx.RunFolderError` if a run cannot start in the run folder ``path``: a new
    run (``resuming`` is ``None``) in a folder that holds a run, unless ``overwrite`` (a path that is a
    file: :class:`~mnistfx.MnistfxError`); or the run of the checkpoint ``resuming`` when it finished and
    its weights are written. :func:`~mnistfx.train` and
    :func:`~mnistfx.resume` check this themselves; a launcher checks it once before it starts processes."""
    if resuming is not None:
        check_resumable(run_folder(path), resuming.finished)  # a checkpoint file names its folder
        return
    path = _not_a_file(path)
    if path.is_dir():
        check_run_dir(path, overwrite=overwrite)


@contextlib.contextmanager
def run_lock(path: StrPath) -> Iterator[None]:
    """Hold the run folder ``path`` while this process writes into it; another process is refused.

    The lock (``flock`` on the folder itself, so no file is made) is released when the block ends,
    also when the process dies. It is re-entrant within a process. Where ``fcntl`` is missing
    (Windows) nothing is locked.
    """
    key = os.path.realpath(path)
    fd = None
    if fcntl is not None and key not in _HELD:
        fd = os.open(key, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(
                f"another mnistfx run is writing into {path}: let it finish, or pass another `checkpoint_dir`"
            ) from None
    _HELD[key] = _HELD.get(key, 0) + 1
    try:
        yield
    finally:
        _HELD[key] -= 1
        if not _HELD[key]:
            del _HELD[key]
        if fd is not None:
            os.close(fd)  # closing releases the lock


_HELD: dict[str, int] = {}  # run folders this process holds, by real path: how many holders


def prepare_run_dir(path: StrPath) -> Path:
    """Create the run folder ``path`` (with parents) and check it is writable, before any work.

    Old temp files that a killed save left beside a run's files are removed (the files
    themselves are always whole: every save writes a temp file and renames it).
    """
    path = _not_a_file(path)
    for name in RUN_FILES:
        if (path / name).exists() and not (path / name).is_file():
            raise MnistfxError(
                f"{path / name} is in the way (not a regular file): remove it or pass another `checkpoint_dir`"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # a nameless file where the system allows: no name is taken
            pass
    except OSError as e:
        # a resumed run cannot move, so the advice fits both: make the folder writable, or start elsewhere
        raise MnistfxError(
            f"cannot write to output folder {path} ({e.strerror}): make it writable, or write the run to another folder"
        ) from None
    remove_stale_temps(path, RUN_FILES)
    return path


def save_run(run: Run, out_dir: StrPath, *, overwrite: bool = False) -> dict[str, Path]:
    """Write ``weights.safetensors`` (with :meth:`Run.metadata`) and ``history.json`` (:meth:`Run.summary`)
    into ``out_dir``, each atomically, under the folder's lock.

    A folder that already holds a run's results (``weights.safetensors`` or ``history.json``) is
    refused unless ``overwrite``, as :func:`~mnistfx.train` refuses it. The checkpoint that
    :func:`~mnistfx.train` or :func:`~mnistfx.resume` wrote there is no result and stays beside them.

    Arguments:
        run: a :class:`Run`, from :func:`~mnistfx.train` or :func:`~mnistfx.resume`.
        out_dir: the run folder (created if needed).
        overwrite: replace the results already there.

    Returns:
        The paths written, by kind: ``"weights"`` and ``"history"``.

    Raises:
        RunFolderError: ``out_dir`` holds a run's results (without ``overwrite``), or another process
            is writing into it.
        MnistfxError: ``out_dir`` is a file or cannot be written.
    """
    if not isinstance(run, Run):
        raise TypeError(f"save_run takes a mnistfx.Run (from train or resume), not {type(run).__name__}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, not {overwrite!r}")
    out = prepare_run_dir(out_dir)
    paths = {"weights": out / WEIGHTS_FILE, "history": out / HISTORY_FILE}
    with run_lock(out):
        present = [p.name for p in paths.values() if p.exists()]
        if present and not overwrite:
            raise RunFolderError(
                f"{out} holds a finished run ({', '.join(present)}): pass `overwrite=True` to replace it, "
                "or another `out_dir`"
            )
        try:
            save_weights(
                paths["weights"], {**run.params, **{STATE_PREFIX + k: v for k, v in run.state.items()}}, run.metadata()
            )
            atomic_write_bytes(paths["history"], (to_json(run.summary(), indent=2) + "\n").encode())
        except OSError as e:
            raise MnistfxError(
                f"cannot write the run's files into {out} ({e.strerror}); its checkpoint is whole: "
                f"make room, then `resume({out})` writes them"
            ) from None
    return paths


HISTORY_MAX_BYTES = 16 << 20  # 10,000 epochs of a 64-member sweep's numbers are a few MB
MAX_LOSS = 1e6  # cross-entropy far past any run's first epoch; larger numbers are no history
_FIX_HISTORY = "pass the folder of a run that `mnistfx train` wrote"
# the numbers every epoch of mnistfx's history may hold: (lowest, highest); None: no bound
_HISTORY_NUMBERS: dict[str, tuple[float | None, float | None]] = {
    "train_loss": (-MAX_LOSS, MAX_LOSS),  # a loss of one's own may be negative
    "val_loss": (0.0, MAX_LOSS),  # cross-entropy
    "val_accuracy": (0.0, 1.0),
    "seconds": (0.0, None),
    "img_per_s": (0.0, None),
}


def existing_run_folder(path: StrPath) -> Path:
    """The run folder ``path`` names: itself, or the folder of a file in it (``weights.safetensors``,
    ``history.json``, the checkpoint); :class:`~mnistfx.MnistfxError` if there is no such folder."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a run folder must be a path (str or os.PathLike), not {type(path).__name__}")
    path = Path(path)
    if path.is_file():
        return path.parent
    if not path.is_dir():
        raise MnistfxError(f"{path} does not exist: pass the folder of a run (or a file in it)")
    return path


def load_history(run_dir: StrPath) -> list[dict]:
    """The per-epoch history of a run, read from its ``history.json`` (as :func:`save_run` wrote it),
    every entry checked.

    The file's size is checked before it is read. Each entry must have a whole ``epoch`` from 1 to
    10,000 (increasing from entry to entry) and a finite ``train_loss`` within ±1e6; ``val_loss``
    (0 to 1e6) and ``val_accuracy`` (0 to 1) are finite numbers, or ``None`` or absent for a run
    without validation; ``seconds`` and ``img_per_s`` finite numbers ≥ 0; any other field a finite
    number, ``None``, a short string or a list of finite numbers (or ``None``).

    Arguments:
        run_dir: the run folder, or any file in it (e.g. its ``weights.safetensors``), or the
            ``history.json`` itself.

    Returns:
        A list of dicts, one per epoch, oldest first.

    Raises:
        MnistfxError: no such folder, a file that is missing, too large or not JSON, or an entry
            that breaks the rules above (the message names it).
    """
    folder = existing_run_folder(run_dir)
    path = Path(run_dir) if Path(run_dir).is_file() and Path(run_dir).suffix == ".json" else folder / HISTORY_FILE
    raw = read_limited(path, HISTORY_MAX_BYTES, what="history", fix=_FIX_HISTORY, error=MnistfxError)
    try:
        history = json.loads(raw).get("history")
    except (ValueError, RecursionError, AttributeError):
        history = None
    if not isinstance(history, list) or not 0 < len(history) <= MAX_EPOCHS:
        raise MnistfxError(
            f"{path} holds no per-epoch history mnistfx can read (a list of 1 to {MAX_EPOCHS:,} epochs): {_FIX_HISTORY}"
        )
    last = 0
    for i, entry in enumerate(history, 1):
        problem = _history_problem(entry, last)
        if problem:
            raise MnistfxError(
                f"{path} holds no per-epoch history mnistfx can read (entry {i}: {problem}): {_FIX_HISTORY}"
            )
        last = entry["epoch"]
    return history


def _history_problem(entry, last: int) -> str | None:
    """What is wrong with one epoch's history entry (``last``: the epoch before it), if anything."""
    if not isinstance(entry, dict) or not all(isinstance(k, str) and 0 < len(k) <= 64 for k in entry):
        return "not a map of field names to values"
    epoch: Any = entry.get("epoch")
    if not (is_whole(epoch) and last < epoch <= MAX_EPOCHS):
        return f"epoch {_shown(epoch)}, not a whole number from {last + 1} to {MAX_EPOCHS:,}"
    for key, (lo, hi) in _HISTORY_NUMBERS.items():
        value: Any = entry.get(key)
        if value is None and key != "train_loss":
            continue
        if not (is_finite(value) and (lo is None or value >= lo) and (hi is None or value <= hi)):
            bounds = f"from {lo:g} to {hi:g}" if hi is not None else f"≥ {lo:g}"
            return f"{key} {_shown(value)}, not a finite number {bounds}"
    for key, value in entry.items():
        if key in _HISTORY_NUMBERS or key == "epoch":
            continue
        ok = (
            value is None
            or is_finite(value)
            or (isinstance(value, str) and len(value) <= 200)
            or (isinstance(value, list) and len(value) <= 4096 and all(v is None or is_finite(v) for v in value))
        )
        if not ok:
            return f"{key} {_shown(value)}, not a finite number, a short string or a list of numbers"
    return None


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _not_a_file(path: StrPath) -> Path:
    """``path``, refused if it is there and not a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MnistfxError(f"output path {path} is a file: pass `checkpoint_dir` with a folder")
    return path
