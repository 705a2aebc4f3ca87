"""Training runs: :func:`train` runs a config from scratch, :func:`resume` continues a run from its
checkpoint; both end with the validation and full test-set metrics in a :class:`~mnistfx.Run`. The
loop between is :class:`Loop`: it sets a run up, trains it epoch by epoch (from a checkpoint if
given), evaluates it, and writes its checkpoints.

The whole pure step (see :mod:`mnistfx.training.step`) is compiled once: every batch has the same shape
(the last partial batch of an epoch is dropped) and the learning rate is computed inside it from
its step-count tensor. Evaluation runs eagerly: on 5,000 images a compiled forward would save
about 0.05 s per epoch and cost 10-20 s of compiling on a cold cache. Data lives on the device
as one uint8 tensor and batches are index gathers. Nothing in the loop waits for the device
except the progress reports.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .._checks import check_whole
from .._types import StrPath
from ..constants import MAX_CHECKPOINT_EVERY
from ..data.mnist import MNIST, load_mnist, train_val_split
from ..errors import ConfigError, MnistfxError, WeightsError
from ..models.ensemble import make_ensemble_step, member_seed, stack, unstack
from ..models.evaluation import evaluate, evaluate_members
from ..models.model import blaming
from ..models.registry import get_model
from ..models.weights_file import read_weights
from ..rng import fold_in
from ..runtime.device import keep_freed_memory, resolve_device
from . import distributed
from .batches import batch_inputs
from .checkpoint import (
    CHECKPOINT_FILE,
    GENERATORS,
    Checkpoint,
    check_checkpoint_size,
    checkpoint_file,
    load_checkpoint,
    save_checkpoint,
)
from .compiling import compile_step
from .config import TrainConfig
from .optim import config_optimizer
from .runs import HISTORY_FILE, WEIGHTS_FILE, Run, check_resumable, check_run_dir, prepare_run_dir, run_folder, run_lock
from .step import check_trainable, make_multi_step, make_train_step


def _to(tree, device):
    """A dict of tensors (nested dicts too) on ``device``."""
    return tree.to(device) if isinstance(tree, torch.Tensor) else {k: _to(v, device) for k, v in tree.items()}


def _ignore(kind, **info):
    pass


class Loop:
    """One run: checked and set up when made, trained by :meth:`run` (from ``start`` if given)."""

    def __init__(
        self,
        config: TrainConfig,
        start: Checkpoint | None,
        data,
        on_event,
        checkpoint_dir,
        checkpoint_every,
        *,
        data_root=None,
        overwrite: bool = False,
        loss=None,
        test: bool = True,
        parallel=None,
    ):
        self.t_start = time.perf_counter()  # parallel: checked by train / resume before their first collective
        self.parallel, self.main = parallel, parallel is None or parallel.main
        self.config, self.start, self.data, self.overwrite = config, start, data, overwrite
        self.loss, self.test = loss, test
        self.members = config.ensemble if config.ensemble > 1 else None
        self.data_root = config.data_root if start is None else data_root
        self.every = check_whole("`checkpoint_every`", checkpoint_every, 0, MAX_CHECKPOINT_EVERY)
        self.device = resolve_device(config.device)
        self.model = get_model(config.model)
        check_checkpoint_size(self.model, config)
        if parallel is not None:
            distributed.check_config(parallel, config, resuming=start is not None)
            checkpoint_dir = checkpoint_dir if parallel.main else None
        self.emit = on_event or _ignore
        self.checkpoint_dir, self.made_dir = checkpoint_dir, False
        self.dir: Path | None = None
        self.saved = start is not None  # whether the folder holds a checkpoint of this run
        self.stale: list = []  # an overwritten run's results, removed before this run's first checkpoint

    def run(self) -> Run:
        """Train under the run folder's lock (if there is a folder); a folder this run made and left
        empty (it failed before its first checkpoint) is removed. Ranks of a data-parallel run first
        :func:`~mnistfx.training.distributed.agree` that each is ready."""
        try:
            with contextlib.ExitStack() as stack:
                try:
                    self._prepare(stack)
                except MnistfxError as e:
                    if self.parallel is None:
                        raise
                    distributed.agree(self.parallel, e)
                if self.parallel is not None:
                    distributed.agree(self.parallel, None)
                    settings = {k: v for k, v in self.config.to_dict().items() if k != "data_root"}  # may differ
                    distributed.check_same(self.parallel, json.dumps(settings, sort_keys=True), "settings")
                return self._run()
        except BaseException:
            if self.made_dir:
                with contextlib.suppress(OSError):
                    self.dir.rmdir()  # type: ignore[union-attr]  # made_dir: there is one  # only if empty: an error if the run wrote anything
            raise

    def _prepare(self, stack: contextlib.ExitStack) -> None:
        """Take the device, the run folder (made if needed, locked, checked) and the data."""
        if self.parallel is not None:
            self.device = distributed.device_for(self.parallel, self.device)
        if self.checkpoint_dir is not None:
            made = not os.path.lexists(self.checkpoint_dir)
            self.dir = folder = prepare_run_dir(self.checkpoint_dir)
            self.made_dir = made  # once it exists: removed if the run fails before writing into it
            stack.enter_context(run_lock(folder))
            if self.start is None:
                check_run_dir(folder, overwrite=self.overwrite)
                self.stale = [folder / name for name in (WEIGHTS_FILE, HISTORY_FILE) if (folder / name).exists()]
            else:
                check_resumable(folder, self.start.finished)
        self.emit("config", config=self.config, resumed=self.start is not None)
        if self.data is None:
            self.emit("loading")
            self.data = load_mnist(self.data_root)

    def _run(self) -> Run:
        cfg, model, device = self.config, self.model, self.device
        train_idx, val_idx = train_val_split(cfg.seed, cfg.val_size)
        train_idx = train_idx[: cfg.n_train]
        train_x = self.data.train_images[train_idx].to(device)
        train_y = self.data.train_labels[train_idx].to(device)
        val_x, val_y = self.data.train_images[val_idx].to(device), self.data.train_labels[val_idx]

        n_steps = cfg.steps_per_epoch
        self.opt = config_optimizer(cfg)
        if self.members and device.type == "cpu":
            keep_freed_memory()
        average = None if self.parallel is None else distributed.make_average(self.parallel.world)
        self.rows = (
            None
            if self.parallel is None
            else distributed.shard_rows(self.parallel, cfg.group, cfg.batch_size).to(device)
        )
        step = make_multi_step(
            make_train_step(
                model,
                self.opt,
                loss=self.loss,
                label_smoothing=cfg.label_smoothing,
                precision=cfg.precision,
                average=average,
            ),
            cfg.group,
        )
        if self.members:
            step = make_ensemble_step(step)
        self.step = compile_step(step, device) if cfg.compile else step
        self.generators = {
            name: torch.Generator(device=device).manual_seed(fold_in(cfg.seed, name)) for name in GENERATORS
        }
        self.result = Run(cfg, {}, processes=1 if self.parallel is None else self.parallel.world)
        first_epoch, first_step = self._initial_state()
        first = lambda tree: unstack(tree)[0] if self.members and tree else tree  # noqa: E731 (a member's part)
        check_trainable(model, first(self.params), first(self.state), train_x, train_y, loss=self.loss)
        self.compiling = cfg.compile
        self.emit(
            "start", steps_per_epoch=n_steps, epochs=cfg.epochs, device=str(device), epoch=first_epoch, step=first_step
        )

        for epoch in range(first_epoch, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            begin = first_step if epoch == first_epoch else 0
            t_epoch += self._train_epoch(epoch, begin, train_x, train_y)
            train_seconds = time.perf_counter() - t_epoch
            if not self.main:
                continue  # only rank 0 evaluates, reports and writes
            val = self._evaluate(val_x, val_y)
            entry = {
                "epoch": epoch,
                "train_loss": (self.loss_sum / n_steps).item(),
                "val_loss": val.loss,
                "val_accuracy": val.accuracy,
                "seconds": round(time.perf_counter() - t_epoch, 3),
                "img_per_s": round((n_steps - begin) * cfg.batch_size / train_seconds, 1),
            }
            self.result.history.append(entry)
            self.result.val = val
            self.emit("epoch", **entry)
            self._save(epoch, n_steps, None)

        run = self.result
        run.params, run.state = self.params, self.state
        if not self.main:
            return run
        run.val = run.val or self._evaluate(val_x, val_y)
        if self.members:
            run.member_val = evaluate_members(model, self.params, val_x, val_y, members=self.members, state=self.state)
        if self.test:
            run.test = self._evaluate(self.data.test_images, self.data.test_labels)
            if self.members:
                run.member_test = evaluate_members(
                    model,
                    self.params,
                    self.data.test_images,
                    self.data.test_labels,
                    members=self.members,
                    state=self.state,
                )
            self.emit("test", accuracy=run.test.accuracy, loss=run.test.loss)
        run.seconds = time.perf_counter() - self.t_start
        return run

    def _evaluate(self, images, labels):
        return evaluate(self.model, self.params, images, labels, state=self.state, members=self.members)

    def _initial_state(self) -> tuple[int, int]:
        """Set the parameters and optimiser state, fresh or from the checkpoint; return where to start."""
        device, start, seed = self.device, self.start, self.config.seed
        if start is None:
            seeds = [seed] if self.members is None else [member_seed(seed, i) for i in range(self.members)]
            params = [{k: v.to(device) for k, v in self.model.init(fold_in(s, "init")).items()} for s in seeds]
            states = [self.model.init_state(p) for p in params]
            opt_states = [self.opt.init(p) for p in params]
            self.params, self.state, self.opt_state = (
                (xs[0] if self.members is None else stack(xs)) for xs in (params, states, opt_states)
            )
            return 1, 0
        self.params, self.state, self.opt_state = (
            _to(part, device) for part in (start.params, start.state, start.opt_state)
        )
        try:
            for name, g in self.generators.items():
                g.set_state(start.rng[name])
        except RuntimeError:
            raise WeightsError(
                "the checkpoint's random-generator state is damaged (or from another kind of device): "
                "start the run again with `train(config)`"
            ) from None
        self.result.history, self.result.compile_seconds = list(start.history), start.compile_seconds
        return (start.epoch + 1, 0) if start.step >= self.config.steps_per_epoch else (start.epoch, start.step)

    def _train_epoch(self, epoch: int, begin: int, train_x, train_y) -> float:
        """Steps ``begin + 1`` to the end of ``epoch``; returns the seconds spent compiling."""
        cfg, n_steps, batch, group = self.config, self.config.steps_per_epoch, self.config.batch_size, self.config.group
        g = self.generators
        if begin:  # resumed mid-epoch: the checkpoint holds the epoch's order and its loss so far
            start = self.start
            assert start is not None and start.perm is not None and start.loss_sum is not None
            self.perm, self.loss_sum = start.perm.to(self.device), start.loss_sum.to(self.device)
        else:
            self.perm = torch.randperm(train_x.shape[0], generator=g["shuffle"], device=self.device)
            self.loss_sum = torch.zeros((), device=self.device)
        augment = cfg.augment and epoch <= cfg.epochs - cfg.clean_epochs
        compile_seconds, t_epoch = 0.0, time.perf_counter()
        report_every = max(1, n_steps // 100)
        for i in range(begin, n_steps, group):
            end = i + group  # this call does steps i+1 .. end of the epoch, from one gather and warp
            idx = self.perm[i * batch : end * batch]
            x, noise = batch_inputs(
                self.model,
                train_x,
                idx,
                aug_key=g["augment"],
                drop_key=g["dropout"],
                augment=augment,
                faithful_fill=cfg.faithful_fill,
                members=self.members,
                rows=self.rows,
            )
            y = train_y[idx] if self.rows is None else train_y[idx[self.rows]]
            if self.compiling:
                self.emit("compiling")
                t_compile = time.perf_counter()
            with blaming(self.model, f"train step (epoch {epoch}, step {end})"), distributed.guard(self.parallel):
                self.params, self.state, self.opt_state, losses, _ = self.step(
                    self.params, self.state, self.opt_state, x, y, noise
                )
            if self.members:
                losses = losses.mean(0)  # the members' mean loss of each step
            self.loss_sum = self.loss_sum + losses.detach().sum()
            if self.compiling:
                self.compiling = False
                compile_seconds = self.result.compile_seconds = time.perf_counter() - t_compile
            if end // report_every > i // report_every or end == n_steps:
                self._check_finite(epoch, end)
                elapsed = time.perf_counter() - t_epoch - compile_seconds  # img/s counts training, not compiling
                self.emit(
                    "step",
                    epoch=epoch,
                    step=end,
                    loss=losses[-1].item(),
                    img_per_s=(end - begin) * batch / max(elapsed, 1e-9),
                )
            done = (epoch - 1) * n_steps + end
            if self.every and done // self.every > (done - group) // self.every and end < n_steps:
                self._save(epoch, end, self.perm)
        return compile_seconds

    def _check_finite(self, epoch: int, step: int) -> None:
        """Stop a run whose loss is no longer finite (one wait for the device; the sum covers every step)."""
        loss_sum = self.loss_sum.item()
        if not math.isfinite(loss_sum):
            raise MnistfxError(
                f"training diverged at epoch {epoch}, step {step}: the loss is {loss_sum} "
                f"(lr {self.config.lr:g} is likely too high) and nothing of it was saved: start "
                "again with a lower `lr`"
            )

    def _save(self, epoch: int, step: int, perm) -> None:
        """Write the checkpoint (if the run has a folder) and tell the caller."""
        self._check_finite(epoch, step)  # on every rank: each says why the run stops
        if self.dir is None:
            return
        path = self.dir / CHECKPOINT_FILE
        try:
            # an overwritten run's weights must not outlive its checkpoint: beside this run's, they would
            # pass for its results (and a finished checkpoint beside weights cannot be resumed)
            for stale in self.stale:
                stale.unlink(missing_ok=True)
            self.stale = []
            save_checkpoint(
                path,
                Checkpoint(
                    self.config,
                    epoch,
                    step,
                    self.params,
                    self.state,
                    self.opt_state,
                    {k: g.get_state() for k, g in self.generators.items()},
                    perm,
                    self.loss_sum,
                    self.result.history,
                    self.result.compile_seconds,
                ),
            )
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
        self.emit("checkpoint", epoch=epoch, step=step)


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
        parallel: train data-parallel as this rank (see :mod:`mnistfx.training.distributed`; the process group
            must be started): rank 0 alone writes ``checkpoint_dir``, reports and evaluates, and the
            other ranks' :class:`Run` has no metrics.

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
    if parallel is not None:
        distributed.check_started(parallel)
        distributed.check_same_work(parallel, False)
    return Loop(
        config,
        None,
        data,
        on_event,
        checkpoint_dir,
        checkpoint_every,
        overwrite=overwrite,
        loss=loss,
        test=test,
        parallel=parallel,
    ).run()


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
) -> Run:
    """Continue the run whose checkpoint is in ``run_dir``, as :func:`train` would have gone on.

    On the CPU the result is bit-identical to the uninterrupted run's. Checkpoints keep being
    written to ``run_dir`` (a folder, or the checkpoint file in it). Every field of the checkpoint
    is checked as untrusted input, and no path is taken from it: MNIST is read from ``data_root``
    (default: :func:`~mnistfx.default_root`), not from the folder the run was started with.
    Other arguments as for :func:`train`; with ``parallel``, rank 0 reads the checkpoint and sends it to
    the other ranks, which check it as their own.
    """
    if parallel is None:
        ckpt = load_checkpoint(run_dir)
    else:
        distributed.check_started(parallel)
        distributed.check_same_work(parallel, True)
        raw = distributed.on_main(parallel, lambda: read_weights(checkpoint_file(run_dir)))
        ckpt = load_checkpoint(
            checkpoint_file(run_dir) if parallel.main else run_dir, data=distributed.share_bytes(parallel, raw)
        )
    run_dir = run_folder(run_dir)
    try:
        resolve_device(ckpt.config.device)
    except ConfigError:
        raise ConfigError(
            f"{run_dir} was trained on {ckpt.config.device}, which is not available here: resume it "
            "where that device is (its checkpoint holds that device's random state)"
        ) from None
    return Loop(
        ckpt.config,
        ckpt,
        data,
        on_event,
        run_dir,
        checkpoint_every,
        data_root=data_root,
        loss=loss,
        test=test,
        parallel=parallel,
    ).run()
