"""A finished run and its folder: :class:`Run`, what is saved of it, and the folder's rules.

A run folder holds ``weights.safetensors``, ``history.json`` and ``checkpoint.safetensors``, each
written atomically. A new run never overwrites the checkpoint of an unfinished one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._io import atomic_write_bytes, remove_stale_temps
from .checkpoint import CHECKPOINT_FILE, load_checkpoint
from .config import TrainConfig
from .constants import VERSION
from .errors import MnistfxError, UnfinishedRunError
from .metrics import Metrics
from .weights import save_weights

WEIGHTS_FILE = "weights.safetensors"
HISTORY_FILE = "history.json"
RUN_FILES = (WEIGHTS_FILE, HISTORY_FILE, CHECKPOINT_FILE)


@dataclass
class Run:
    """The result of :func:`~mnistfx.train`.

    Attributes:
        config: what produced it.
        params: the trained parameters (on the config's device).
        history: one dict per epoch (train loss, val loss and accuracy, seconds, img/s).
        val: metrics on the validation split after the last epoch.
        test: metrics on the full 10,000-image test set.
        seconds: wall time of the whole run; compile_seconds: of the first (compiling) step.
    """

    config: TrainConfig
    params: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    val: Metrics | None = None
    test: Metrics | None = None
    seconds: float = 0.0
    compile_seconds: float = 0.0

    def metadata(self) -> dict:
        """What :func:`save_run` stores beside the weights: config, accuracies, times, versions."""
        return {
            "model": self.config.model, "config": self.config.to_dict(), "seed": self.config.seed,
            "epochs": self.config.epochs,
            "val_accuracy": self.val.accuracy if self.val else None,
            "test_accuracy": self.test.accuracy if self.test else None,
            "seconds": round(self.seconds, 2), "compile_seconds": round(self.compile_seconds, 2),
            "mnistfx_version": VERSION, "torch_version": torch.__version__,
        }

    def summary(self) -> dict:
        """The metadata with the per-epoch history and the validation and test metrics (``history.json``)."""
        return {**self.metadata(), "history": self.history,
                "val": self.val.to_dict() if self.val else None, "test": self.test.to_dict() if self.test else None}


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/<model>-seed<N>``, or ``runs/<model>-<recipe>-seed<N>`` for a recipe other than the default."""
    recipe_part = "" if config.recipe == "default" else f"-{config.recipe}"
    return Path("runs") / f"{config.model}{recipe_part}-seed{config.seed}"


def run_folder(path) -> Path:
    """The run folder ``path`` names: itself, or the folder of a checkpoint file given instead."""
    path = Path(path)
    return path.parent if path.is_file() else path


def check_no_unfinished_run(path) -> None:
    """Raise :class:`~mnistfx.UnfinishedRunError` if the folder ``path`` holds an unfinished run's
    checkpoint, whose progress a new run would overwrite (a damaged checkpoint holds none)."""
    ckpt_path = Path(path) / CHECKPOINT_FILE
    if not ckpt_path.is_file():
        return
    try:
        ckpt = load_checkpoint(ckpt_path)
    except MnistfxError:
        return  # damaged: nothing to continue from
    if not ckpt.finished:
        raise UnfinishedRunError(f"{path} holds an unfinished run (epoch {ckpt.epoch} of {ckpt.config.epochs}): "
                                 f"continue it with --resume {path}, or pass another --out (or delete {ckpt_path})")


def prepare_run_dir(path) -> Path:
    """Create the run folder ``path`` (with parents) and check it is writable, before any work.

    Old temp files that a killed save left beside a run's files are removed (the files
    themselves are always whole: every save writes a temp file and renames it).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MnistfxError(f"output path {path} is a file: pass --out with a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".mnistfx-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise MnistfxError(f"cannot write to output folder {path} ({e.strerror}): pass --out with a writable folder") from None
    remove_stale_temps(path, RUN_FILES)
    return path


def save_run(run: Run, out_dir) -> dict[str, Path]:
    """Write ``weights.safetensors`` (with :meth:`Run.metadata`) and ``history.json`` (:meth:`Run.summary`)
    into ``out_dir``, each atomically.

    Returns:
        The paths written, by kind: ``"weights"`` and ``"history"``.
    """
    out = prepare_run_dir(out_dir)
    paths = {"weights": out / WEIGHTS_FILE, "history": out / HISTORY_FILE}
    save_weights(paths["weights"], run.params, run.metadata())
    atomic_write_bytes(paths["history"], (json.dumps(run.summary(), indent=2) + "\n").encode())
    return paths
