"""Training runs: :func:`train` runs a config from scratch, :func:`resume` continues a run from its
checkpoint; both end with the validation and full test-set metrics in a :class:`~mnistfx.Run`.

Between, a run is its :class:`~mnistfx.TrainState` passed through the functions of its
:class:`~mnistfx.training.trainer.Trainer` (one epoch, an evaluation, a checkpoint), top to bottom in
:func:`_train_loop`; this module adds the run folder (made, locked, written atomically), the history
and the progress reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from .._checks import check_whole
from .._types import StrPath
from ..constants import MAX_CHECKPOINT_EVERY, OWN_OPTIMIZER
from ..data.mnist import MNIST, load_mnist
from ..errors import ConfigError, MnistfxError
from ..models.registry import get_model
from ..models.weights_file import read_weights
from ..runtime.device import resolve_device
from . import distributed
from .checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    check_checkpoint_size,
    checkpoint_file,
    load_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig
from .optim import Optimizer, config_optimizer
from .runs import HISTORY_FILE, WEIGHTS_FILE, Run, check_resumable, check_run_dir, prepare_run_dir, run_folder, run_lock
from .state import TrainState
from .trainer import Trainer, check_hooks, check_settings, make_trainer


def _ignore(kind, **info):
    pass


class _Folder:
    """A run's folder: made if needed, locked, checked; its checkpoint written atomically. A folder the run
    made is removed if the run fails before writing into it."""

    def __init__(self, path: StrPath | None, *, saved: bool):
        self.path, self.made = path, False
        self.dir: Path | None = None
        self.saved = saved  # whether the folder holds a checkpoint of this run
        self.stale: list[Path] = []  # an overwritten run's results, removed before this run's first checkpoint

    def open(self, stack: contextlib.ExitStack, start: Checkpoint | None, overwrite: bool) -> None:
        """Make (if needed), lock and check the folder for a new run, or for continuing ``start``."""
        if self.path is None:
            return
        made = not os.path.lexists(self.path)
        self.dir = folder = prepare_run_dir(self.path)
        self.made = made  # once it exists: removed if the run fails before writing into it
        stack.enter_context(run_lock(folder))
        if start is None:
            check_run_dir(folder, overwrite=overwrite)
            self.stale = [folder / name for name in (WEIGHTS_FILE, HISTORY_FILE) if (folder / name).exists()]
        else:
            check_resumable(folder, start.finished)

    def write(self, ckpt: Checkpoint) -> None:
        """Write ``ckpt`` into the folder (an overwritten run's results go first: beside this run's checkpoint
        they would pass for its results, and a finished checkpoint beside weights cannot be resumed)."""
        assert self.dir is not None
        path = self.dir / CHECKPOINT_FILE
        try:
            for stale in self.stale:
                stale.unlink(missing_ok=True)
            self.stale = []
            save_checkpoint(path, ckpt)
        except OSError as e:
            if not self.saved:
                raise MnistfxError(
                    f"cannot write the checkpoint {path} ({e.strerror}); nothing of this run was "
                    "saved: make room, then run the command again"
                ) from None
            raise MnistfxError(
                f"cannot write the checkpoint {path} ({e.strerror}); the previous one is whole: "
                f"make room, then continue with `resume({self.dir})`"
            ) from None
        self.saved = True

    def discard_if_empty(self) -> None:
        if self.made and self.dir is not None:
            with contextlib.suppress(OSError):
                self.dir.rmdir()  # only if empty: an error if the run wrote anything


def _run(
    config: TrainConfig,
    start: Checkpoint | None,
    *,
    data: MNIST | None,
    on_event: Callable | None,
    checkpoint_dir: StrPath | None,
    checkpoint_every: int,
    data_root: StrPath | None = None,
    overwrite: bool = False,
    loss: Callable | None = None,
    test: bool = True,
    parallel: distributed.Parallel | None = None,
    optimizer: Optimizer | None = None,
    step: Callable | None = None,
    on_epoch: Callable | None = None,
) -> Run:
    """Check everything that can be checked, take the run folder (under its lock) and the data, then train.
    Ranks of a data-parallel run first :func:`~mnistfx.training.distributed.agree` that each is ready."""
    t_start = time.perf_counter()
    every = check_whole("`checkpoint_every`", checkpoint_every, 0, MAX_CHECKPOINT_EVERY)
    resolve_device(config.device)
    model = get_model(config.model)
    opt = optimizer if optimizer is not None else config_optimizer(config)
    check_settings(config, opt, step=step, loss=loss, parallel=parallel)
    check_checkpoint_size(model, config, opt)
    if parallel is not None:
        distributed.check_config(parallel, config, resuming=start is not None)
        checkpoint_dir = checkpoint_dir if parallel.main else None
    emit = on_event or _ignore
    folder = _Folder(checkpoint_dir, saved=start is not None)
    try:
        with contextlib.ExitStack() as stack:
            try:
                folder.open(stack, start, overwrite)
                emit("config", config=config, resumed=start is not None)
                if data is None:
                    emit("loading")
                    data = load_mnist(config.data_root if start is None else data_root)
            except MnistfxError as e:
                if parallel is None:
                    raise
                distributed.agree(parallel, e)
            if parallel is not None:
                distributed.agree(parallel, None)
                settings = {k: v for k, v in config.to_dict().items() if k != "data_root"}  # may differ
                distributed.check_same(parallel, json.dumps(settings, sort_keys=True), "settings")
            assert data is not None
            trainer = make_trainer(config, data=data, optimizer=opt, step=step, loss=loss, parallel=parallel)
            run = _train_loop(trainer, start, data, folder, emit, every=every, test=test, on_epoch=on_epoch)
            run.seconds = time.perf_counter() - t_start
            return run
    except BaseException:
        folder.discard_if_empty()
        raise


def _train_loop(
    trainer: Trainer,
    start: Checkpoint | None,
    data: MNIST,
    folder: _Folder,
    emit: Callable,
    *,
    every: int,
    test: bool,
    on_epoch: Callable | None,
) -> Run:
    """The run: a state, epoch after epoch through the trainer, each epoch validated, recorded and saved;
    at the end the validation and test metrics. Only rank 0 of a data-parallel run evaluates and writes."""
    cfg, n_steps = trainer.config, trainer.config.steps_per_epoch
    main = trainer.parallel is None or trainer.parallel.main
    run = Run(cfg, {}, processes=1 if trainer.parallel is None else trainer.parallel.world)
    run.optimizer = trainer.opt.describe()
    state = trainer.init_state() if start is None else trainer.restore(start)
    if start is not None:
        run.history, run.compile_seconds = list(start.history), start.compile_seconds
    trainer.check(state)
    finished_epoch = state.step >= n_steps
    emit(
        "start",
        steps_per_epoch=n_steps,
        epochs=cfg.epochs,
        device=str(trainer.device),
        epoch=state.epoch + finished_epoch,
        step=0 if finished_epoch else state.step,
    )

    def save(now: TrainState) -> None:
        if folder.dir is not None:
            folder.write(trainer.checkpoint(now, run.history, run.compile_seconds))
            emit("checkpoint", epoch=now.epoch, step=now.step)

    def report(kind: str, **info) -> None:
        if kind == "compiled":
            run.compile_seconds = info["seconds"]
        else:
            emit(kind, **info)

    compiling = cfg.compile
    while not (state.epoch >= cfg.epochs and state.step >= n_steps):
        t_epoch = time.perf_counter()
        state, metrics = trainer.train_epoch(state, report=report, save=save, save_every=every, compiling=compiling)
        compiling = False
        if not main:
            continue  # only rank 0 evaluates, reports and writes
        val = trainer.evaluate(state, trainer.val_x, trainer.val_y) if cfg.val_size else None
        entry = {
            "epoch": state.epoch,
            "train_loss": metrics["train_loss"],
            "val_loss": val and val.loss,
            "val_accuracy": val and val.accuracy,
            "seconds": round(time.perf_counter() - t_epoch - metrics["compile_seconds"], 3),
            "img_per_s": round(metrics["img_per_s"], 1),
        }
        epsilon = trainer.epsilon(state.epoch * n_steps)
        if epsilon is not None:
            entry["epsilon"] = epsilon
        run.history.append(entry)
        run.val = val
        emit("epoch", **entry)
        save(state)
        if on_epoch is not None:
            on_epoch(state, dict(entry))

    run.params, run.state = state.params, state.model_state
    if not main:
        return run
    if cfg.val_size:
        run.val = run.val or trainer.evaluate(state, trainer.val_x, trainer.val_y)
        if trainer.members:
            run.member_val = trainer.evaluate_members(state, trainer.val_x, trainer.val_y)
    if test:
        run.test = trainer.evaluate(state, data.test_images, data.test_labels)
        if trainer.members:
            run.member_test = trainer.evaluate_members(state, data.test_images, data.test_labels)
        emit("test", accuracy=run.test.accuracy, loss=run.test.loss)
    return run


def train(
    config: TrainConfig,
    *,
    data: MNIST | None = None,
    on_event: Callable | None = None,
    checkpoint_dir: StrPath | None = None,
    checkpoint_every: int = 0,
    overwrite: bool = False,
    loss: Callable | None = None,
    test: bool = True,
    parallel: distributed.Parallel | None = None,
    optimizer: Optimizer | None = None,
    step: Callable | None = None,
    on_epoch: Callable[[TrainState, dict], None] | None = None,
) -> Run:
    """Train a model from scratch as ``config`` says, then evaluate it on the full test set.

    Everything that can be checked is checked before any work: the device, the model, the
    checkpoint folder (created if needed; one that holds a run is refused unless ``overwrite``,
    and so is one another process is writing into). A run whose loss stops being finite is
    stopped (checked at each progress report and checkpoint, so without a wait per step), and
    nothing of it is saved from that point.

    Arguments:
        config: the run's :class:`~mnistfx.TrainConfig`.
        data: MNIST already loaded (default: :func:`~mnistfx.load_mnist` on ``config.data_root``).
        on_event: called as ``on_event(kind, **info)`` for progress: ``"config"`` (the config,
            once the checks passed), ``"loading"`` (before MNIST is loaded), ``"start"`` (steps
            per epoch, and the epoch and step it starts from), ``"compiling"``, ``"step"`` (every
            few steps: epoch, step, loss, img/s), ``"checkpoint"``, ``"epoch"`` (the history
            entry) and ``"test"``.
        checkpoint_dir: if given, a checkpoint (``checkpoint.safetensors``) is written there
            atomically after every epoch, from which :func:`resume` continues the run.
        checkpoint_every: also write it every this many steps (0: only after epochs).
        overwrite: replace the run (finished or not) that ``checkpoint_dir`` holds.
        loss: the loss function of :func:`~mnistfx.make_train_step` (default: cross-entropy with the
            config's label smoothing); pass the same one to :func:`resume`.
        test: evaluate on the test set at the end (``False`` for sweeps, which must not look at it).
        parallel: train data-parallel as this rank, from :func:`~mnistfx.start_parallel` in a process
            torchrun started: rank 0 alone writes ``checkpoint_dir``, reports and evaluates, and the
            other ranks' :class:`Run` has no metrics.
        optimizer: an :class:`~mnistfx.Optimizer` to train with instead of the one the config describes
            (its ``optimizer``, ``lr``, ``weight_decay``, ``momentum`` and schedule fields); the config
            then names it (``optimizer`` becomes its name, ``lr`` its rate, and the schedule fields claim
            none) and the run records it whole (:meth:`~mnistfx.Optimizer.describe`). Per-member values in
            the config set its hyperparameters.
            Pass the same one to :func:`resume`.
        step: a pure train step of your own, with :func:`~mnistfx.make_train_step`'s signature, built with
            the run's optimiser (``optimizer``, or :func:`mnistfx.config_optimizer` of the config). It is
            compiled, vmapped over an ensemble, checkpointed and resumed as the built-in one. A step
            with a ``gaussian_size`` attribute receives that many standard normal numbers per step in
            ``noise["gaussian"]``, from a generator of the run (e.g. DP-SGD's noise); one whose
            ``layout_optimization`` attribute is ``False`` is compiled so (:func:`~mnistfx.compile_step`).
        on_epoch: called as ``on_epoch(state, metrics)`` after each epoch (once its checkpoint is written)
            with the run's :class:`~mnistfx.TrainState` and the epoch's history entry.

    Returns:
        A :class:`~mnistfx.Run` with the parameters (and state), per-epoch history and validation /
        test metrics; for an ensemble also each member's.

    Raises:
        RunFolderError: ``checkpoint_dir`` holds a run, or another process is writing into it.
        MnistfxError: ``torch.compile`` failed (e.g. its cache folder cannot be written).
        MnistfxError: the loss stopped being finite, or a checkpoint could not be written.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig (see mnistfx.recipe), not {type(config).__name__}")
    if not isinstance(test, bool):
        raise TypeError(f"test must be True or False, not {test!r}")
    check_hooks(optimizer, step, on_epoch)
    if optimizer is not None:
        # the config names the optimiser and claims no rate or schedule of its own (run.optimizer records them)
        config = dataclasses.replace(
            config,
            optimizer=config.optimizer if OWN_OPTIMIZER.fullmatch(config.optimizer) else optimizer.name,
            lr=config.lr if "lr" in config.per_member else optimizer.lr,
            weight_decay=config.weight_decay if "weight_decay" in config.per_member else None,
            schedule="linear",
            warmup=0.0,
            decay=0.0,
        )
    if parallel is not None:
        distributed.check_started(parallel)
        distributed.check_same_work(parallel, False)
    return _run(
        config,
        None,
        data=data,
        on_event=on_event,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        overwrite=overwrite,
        loss=loss,
        test=test,
        parallel=parallel,
        optimizer=optimizer,
        step=step,
        on_epoch=on_epoch,
    )


def resume(
    run_dir: StrPath,
    *,
    data: MNIST | None = None,
    on_event: Callable | None = None,
    checkpoint_every: int = 0,
    data_root: StrPath | None = None,
    loss: Callable | None = None,
    test: bool = True,
    parallel: distributed.Parallel | None = None,
    optimizer: Optimizer | None = None,
    step: Callable | None = None,
    on_epoch: Callable[[TrainState, dict], None] | None = None,
) -> Run:
    """Continue the run whose checkpoint is in ``run_dir``, as :func:`train` would have gone on.

    On the CPU the result is bit-identical to the uninterrupted run's. Checkpoints keep being
    written to ``run_dir`` (a folder, or the checkpoint file in it). Every field of the checkpoint
    is checked as untrusted input, and no path is taken from it: MNIST is read from ``data_root``
    (default: :func:`~mnistfx.default_root`), not from the folder the run was started with.
    Other arguments as for :func:`train`; with ``parallel``, rank 0 reads the checkpoint and sends it to
    the other ranks, which check it as their own. A run that trained with an ``optimizer`` of its own
    continues only with the same one (the checkpoint records it), and a run with a ``step`` of its own
    with a step again.
    """
    check_hooks(optimizer, step, on_epoch)
    if parallel is None:
        ckpt = load_checkpoint(run_dir, optimizer=optimizer)
    else:
        distributed.check_started(parallel)
        distributed.check_same_work(parallel, True)
        raw = distributed.on_main(parallel, lambda: read_weights(checkpoint_file(run_dir)))
        ckpt = load_checkpoint(
            checkpoint_file(run_dir) if parallel.main else run_dir,
            data=distributed.share_bytes(parallel, raw),
            optimizer=optimizer,
        )
    run_dir = run_folder(run_dir)
    if ckpt.own_step != (step is not None):
        raise ConfigError(
            f"the run in {run_dir} trained with a step of its own: pass it again, as `step`"
            if ckpt.own_step
            else f"the run in {run_dir} trained with the built-in step: continue it without `step`"
        )
    try:
        resolve_device(ckpt.config.device)
    except ConfigError:
        raise ConfigError(
            f"{run_dir} was trained on {ckpt.config.device}, which is not available here: resume it "
            "where that device is (its checkpoint holds that device's random state)"
        ) from None
    return _run(
        ckpt.config,
        ckpt,
        data=data,
        on_event=on_event,
        checkpoint_dir=run_dir,
        checkpoint_every=checkpoint_every,
        data_root=data_root,
        loss=loss,
        test=test,
        parallel=parallel,
        optimizer=optimizer,
        step=step,
        on_epoch=on_epoch,
    )
