"""A run's functions over its state: :class:`Trainer` holds what stays fixed while a run trains (config,
model, optimiser, the compiled step, the data on the device) and its methods take a
:class:`~mnistfx.TrainState` and return a new one: one call of the step, one epoch, an evaluation, a
checkpoint. :func:`~mnistfx.train` is these functions in a loop, plus a run folder and progress reports;
a loop of one's own can call them directly::

    trainer = mnistfx.make_trainer(config, data=mnist)
    state = trainer.init_state()
    for _ in range(config.epochs):
        state, metrics = trainer.train_epoch(state)

The whole pure step (see :mod:`mnistfx.training.step`) is compiled once: every batch has the same shape
(the last partial batch of an epoch is dropped) and the learning rate is computed inside it from the
step-count tensor in the optimiser state. Evaluation runs eagerly: on 5,000 images a compiled forward
would save about 0.05 s per epoch and cost 10-20 s of compiling on a cold cache. Data lives on the
device as one uint8 tensor and batches are index gathers. Nothing waits for the device except the
progress reports. The random generators live in the state as their byte states; each epoch makes
generators of them and returns their new states, so a state taken anywhere continues bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data.augment import Augmentation
from ..data.mnist import MNIST, train_val_split
from ..errors import ConfigError, MnistfxError, WeightsError
from ..models.ensemble import make_ensemble_step, member_seed, stack, unstack
from ..models.evaluation import Metrics, evaluate, evaluate_members
from ..models.model import Model, blaming
from ..models.registry import get_model
from ..rng import fold_in
from ..runtime.device import keep_freed_memory, resolve_device
from . import distributed
from .adversarial import make_adversarial_step
from .batches import batch_inputs
from .checkpoint import GENERATORS, Checkpoint
from .compiling import compile_step
from .config import TrainConfig
from .optim import Optimizer, config_optimizer
from .privacy import make_private_step, privacy_spent
from .state import TrainState
from .step import check_trainable, make_multi_step, make_train_step


def _to(tree, device):
    """A dict of tensors (nested dicts too) on ``device``."""
    return tree.to(device) if isinstance(tree, torch.Tensor) else {k: _to(v, device) for k, v in tree.items()}


def _report_nothing(kind, **info):
    pass


@dataclass(frozen=True)
class Trainer:
    """What stays fixed while a run trains; its methods are the run's functions of a :class:`TrainState`.

    Make one with :func:`make_trainer`. Attributes: the ``config``, ``model``, optimiser ``opt``, the
    (compiled, for an ensemble vmapped) ``step`` doing ``config.group`` steps per call, the ``device``,
    the training images and labels on it, the validation split, the ensemble's ``members`` (``None``:
    one model), the standard normal numbers the step takes per step (``gaussian``, e.g. DP-SGD's), a
    data-parallel rank's ``rows`` of each batch and ``parallel`` itself, the ``loss`` of one's own and whether
    the step is one's own (``own_step``).
    """

    config: TrainConfig
    model: Model
    opt: Optimizer
    step: Callable
    device: torch.device
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    members: int | None = None
    gaussian: int = 0
    rows: torch.Tensor | None = None
    parallel: distributed.Parallel | None = None
    loss: Callable | None = None
    own_step: bool = False

    @property
    def augmentation(self) -> Augmentation:
        """The augmentations after the warp, from the config's ``aug_*`` fields."""
        cfg = self.config
        return Augmentation(cfg.aug_noise, cfg.aug_erase, cfg.aug_elastic, cfg.aug_elastic_sigma)

    def init_state(self) -> TrainState:
        """The state before the first step: parameters from the seed (each member's from its own), model and
        optimiser states (each member with its own hyperparameters), the generators seeded, epoch 1."""
        cfg, device = self.config, self.device
        seeds = [cfg.seed] if self.members is None else [member_seed(cfg.seed, i) for i in range(self.members)]
        params = [{k: v.to(device) for k, v in self.model.init(fold_in(s, "init")).items()} for s in seeds]
        states = [self.model.init_state(p) for p in params]
        opt_states = [self.opt.init(p, **hyper) for p, hyper in zip(params, member_hyper(cfg, self.opt), strict=True)]
        if "label_smoothing" in cfg.per_member:  # the default loss reads it from the optimiser state
            for opt_state, value in zip(opt_states, cfg.member_values("label_smoothing"), strict=True):
                opt_state["hyper"]["label_smoothing"] = torch.tensor(float(value), device=device)
        one = self.members is None
        rng = {name: torch.Generator(device=device).manual_seed(fold_in(cfg.seed, name)) for name in GENERATORS}
        return TrainState(
            params[0] if one else stack(params),
            states[0] if one else stack(states),
            opt_states[0] if one else stack(opt_states),
            {name: g.get_state() for name, g in rng.items()},
            epoch=1,
            step=0,
            perm=None,
            loss_sum=torch.zeros((), device=device),
        )

    def restore(self, ckpt: Checkpoint) -> TrainState:
        """The state a checkpoint holds, on this trainer's device (checked by :func:`load_checkpoint`)."""
        try:
            for name in GENERATORS:
                torch.Generator(device=self.device).set_state(ckpt.rng[name])
        except RuntimeError:
            raise WeightsError(
                "the checkpoint's random-generator state is damaged (or from another kind of device): "
                "start the run again with `train(config)`"
            ) from None
        return TrainState(
            _to(ckpt.params, self.device),
            _to(ckpt.state, self.device),
            _to(ckpt.opt_state, self.device),
            dict(ckpt.rng),
            ckpt.epoch,
            ckpt.step,
            None if ckpt.perm is None else ckpt.perm.to(self.device),
            ckpt.loss_sum.to(self.device),
        )

    def check(self, state: TrainState) -> None:
        """``check_trainable`` on the state's (first member's) parameters and
        ``check_optimizer`` on its optimiser: a model or optimiser that cannot train fails here, in one
        line, before a step is compiled."""
        first = (lambda tree: unstack(tree)[0] if tree else tree) if self.members else (lambda tree: tree)
        check_trainable(
            self.model, first(state.params), first(state.model_state), self.train_x, self.train_y, loss=self.loss
        )
        check_optimizer(self.opt, first(state.params), first(state.opt_state))

    def train_epoch(
        self,
        state: TrainState,
        *,
        report: Callable | None = None,
        save: Callable[[TrainState], None] | None = None,
        save_every: int = 0,
        compiling: bool = False,
    ) -> tuple[TrainState, dict]:
        """Train from ``state`` to the end of its epoch (from its ``step``: a state taken mid-epoch holds the
        epoch's order and loss so far).

        Arguments:
            state: where to start; a finished epoch's state starts the next epoch.
            report: ``report(kind, **info)`` for progress: ``"compiling"`` (before the first call, if
                ``compiling``), ``"compiled"`` (its ``seconds``) and ``"step"`` (every few steps: epoch,
                step, loss, img/s).
            save: called with the state every ``save_every`` steps of the run (not at the epoch's end).
            compiling: the first call compiles the step (it is timed apart and reported).

        Returns:
            The state at the epoch's end, and the epoch's metrics: ``train_loss`` (the mean step loss),
            ``seconds``, ``img_per_s`` (training alone), ``compile_seconds``.

        Raises:
            MnistfxError: the loss stopped being finite (checked at each report and save).
        """
        cfg, report = self.config, report or _report_nothing
        n_steps, batch, group = cfg.steps_per_epoch, cfg.batch_size, cfg.group
        if state.step >= n_steps:  # the previous epoch is done
            state = dataclasses.replace(state, epoch=state.epoch + 1, step=0, perm=None)
        epoch, begin = state.epoch, state.step
        g = {name: torch.Generator(device=self.device) for name in GENERATORS}
        for name, gen in g.items():
            gen.set_state(state.rng[name])
        if begin:  # mid-epoch: the state holds the epoch's order and its loss so far
            assert state.perm is not None
            perm, loss_sum = state.perm, state.loss_sum
        else:
            perm = torch.randperm(self.train_x.shape[0], generator=g["shuffle"], device=self.device)
            loss_sum = torch.zeros((), device=self.device)
        params, model_state, opt_state = state.params, state.model_state, state.opt_state
        augment = cfg.augment and epoch <= cfg.epochs - cfg.clean_epochs
        extra = self.augmentation
        compile_seconds, t_epoch = 0.0, time.perf_counter()
        report_every = max(1, n_steps // 100)

        def now(step: int, order) -> TrainState:
            rng = {name: gen.get_state() for name, gen in g.items()}
            return TrainState(params, model_state, opt_state, rng, epoch, step, order, loss_sum)

        for i in range(begin, n_steps, group):
            end = i + group  # this call does steps i+1 .. end of the epoch, from one gather and warp
            idx = perm[i * batch : end * batch]
            x, noise = batch_inputs(
                self.model,
                self.train_x,
                idx,
                aug_key=g["augment"],
                drop_key=g["dropout"],
                augment=augment,
                faithful_fill=cfg.faithful_fill,
                extra=extra,
                members=self.members,
                rows=self.rows,
            )
            y = self.train_y[idx] if self.rows is None else self.train_y[idx[self.rows]]
            if self.gaussian:  # standard normal numbers the step asked for (e.g. DP-SGD's noise)
                shape = (group * self.gaussian,) if self.members is None else (self.members, group * self.gaussian)
                noise = {**noise, "gaussian": torch.randn(shape, generator=g["gaussian"], device=self.device)}
            if compiling:
                report("compiling")
                t_compile = time.perf_counter()
            with blaming(self.model, f"train step (epoch {epoch}, step {end})"), distributed.guard(self.parallel):
                params, model_state, opt_state, losses, _ = self.step(params, model_state, opt_state, x, y, noise)
            if self.members:
                losses = losses.mean(0)  # the members' mean loss of each step
            loss_sum = loss_sum + losses.detach().sum()
            if compiling:
                compiling, compile_seconds = False, time.perf_counter() - t_compile
                report("compiled", seconds=compile_seconds)
            if end // report_every > i // report_every or end == n_steps:
                self.check_finite(loss_sum, epoch, end, opt_state)
                elapsed = time.perf_counter() - t_epoch - compile_seconds  # img/s counts training, not compiling
                speed = (end - begin) * batch / max(elapsed, 1e-9)
                report("step", epoch=epoch, step=end, loss=losses[-1].item(), img_per_s=speed)
            done = (epoch - 1) * n_steps + end
            if save is not None and save_every and done // save_every > (done - group) // save_every and end < n_steps:
                self.check_finite(loss_sum, epoch, end, opt_state)
                save(now(end, perm))
        train_seconds = time.perf_counter() - t_epoch - compile_seconds
        metrics = {
            "train_loss": (loss_sum / n_steps).item(),
            "seconds": time.perf_counter() - t_epoch,
            "img_per_s": (n_steps - begin) * batch / max(train_seconds, 1e-9),
            "compile_seconds": compile_seconds,
        }
        return now(n_steps, None), metrics

    def check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int, opt_state: dict) -> None:
        """Stop a run whose loss is no longer finite (one wait for the device; the sum covers every step)."""
        value = loss_sum.item()
        if not math.isfinite(value):
            rates = ", ".join(f"{lr:g}" for lr in dict.fromkeys(opt_state["hyper"]["lr"].flatten().tolist()))
            raise MnistfxError(
                f"training diverged at epoch {epoch}, step {step}: the loss is {value} "
                f"(lr {rates} is likely too high) and nothing of it was saved: start again with a lower `lr`"
            )

    def evaluate(self, state: TrainState, images: torch.Tensor, labels: torch.Tensor) -> Metrics:
        """Metrics of the state's model on ``images`` (an ensemble's from its members' mean probabilities)."""
        return evaluate(self.model, state.params, images, labels, state=state.model_state, members=self.members)

    def evaluate_members(self, state: TrainState, images: torch.Tensor, labels: torch.Tensor) -> list[Metrics]:
        """Each ensemble member's metrics on ``images``."""
        if self.members is None:
            raise ValueError("evaluate_members is for an ensemble's trainer (`ensemble` above 1)")
        return evaluate_members(self.model, state.params, images, labels, members=self.members, state=state.model_state)

    def epsilon(self, steps: int) -> float | None:
        """The privacy a DP-SGD run has spent after ``steps`` steps (ε at the config's δ), else ``None``."""
        cfg = self.config
        if not cfg.dp_noise:
            return None
        return privacy_spent(
            noise_multiplier=cfg.dp_noise, sample_rate=cfg.batch_size / cfg.n_train, steps=steps, delta=cfg.dp_delta
        )

    def checkpoint(self, state: TrainState, history: list, compile_seconds: float = 0.0) -> Checkpoint:
        """The checkpoint of ``state``: it with the config, the history and the optimiser's description."""
        return Checkpoint(
            self.config,
            state.epoch,
            state.step,
            state.params,
            state.model_state,
            state.opt_state,
            state.rng,
            state.perm,
            state.loss_sum,
            history,
            compile_seconds,
            self.opt.describe(),
            self.own_step,
        )


def check_optimizer(opt: Optimizer, params: dict, opt_state: dict) -> None:
    """One update of ``opt`` from zero gradients, eagerly: it must run and return parameters and a state of
    the names, shapes and dtypes it was given (an optimiser of one's own fails here in one line, not deep
    in a compiled step or in a checkpoint that cannot be read back).

    Raises:
        ConfigError: the update failed, or returned something else.
    """

    def kinds(tree) -> object:
        if isinstance(tree, torch.Tensor):
            return (tuple(tree.shape), tree.dtype)
        return {k: kinds(v) for k, v in tree.items()} if isinstance(tree, dict) else type(tree).__name__

    grads = {k: torch.zeros_like(p) for k, p in params.items()}
    try:
        with torch.no_grad():
            new_params, new_state = opt.update(grads, opt_state, params)
    except Exception as e:
        raise ConfigError(
            f"the optimiser {opt.name} failed on its first update: {type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:160]}"
        ) from None
    if kinds(new_params) != kinds(params) or kinds(new_state) != kinds(opt_state):
        what = "parameters" if kinds(new_params) != kinds(params) else "state"
        raise ConfigError(
            f"the optimiser {opt.name} returned {what} of other names, shapes or dtypes than it was given: make "
            "each transform return one tensor per parameter, shaped like it, and buffers shaped like the parameters"
        )


def member_hyper(config: TrainConfig, opt: Optimizer) -> list[dict]:
    """Each member's values of the optimiser's hyperparameters that differ between the members.

    Raises:
        ConfigError: a per-member field is not a hyperparameter of ``opt``.
    """
    own = set(opt.hyper)
    for name in config.per_member:
        if name != "label_smoothing" and name not in own:
            raise ConfigError(
                f"{opt.name} has no hyperparameter `{name}` to give each member: it has "
                f"{', '.join(f'`{h}`' for h in own)}"
            )
    names = [name for name in config.per_member if name != "label_smoothing"]
    return [{name: config.member_values(name)[i] for name in names} for i in range(config.ensemble)]


def make_trainer(
    config: TrainConfig,
    *,
    data: MNIST,
    optimizer: Optimizer | None = None,
    step: Callable | None = None,
    loss: Callable | None = None,
    parallel: distributed.Parallel | None = None,
) -> Trainer:
    """The :class:`Trainer` of a run of ``config`` on ``data``: the split made, the training images on the
    device, the step built (the config's, DP-SGD's if ``config.dp_noise`` is set, or ``step``), made to do
    ``config.group`` steps per call, vmapped for an ensemble and compiled if the config says so.

    Arguments:
        config: the run's :class:`~mnistfx.TrainConfig`.
        data: MNIST, loaded (:func:`~mnistfx.load_mnist`).
        optimizer, step, loss, parallel: as for :func:`~mnistfx.train`.

    Raises:
        ConfigError: the settings cannot train together (e.g. a per-member value of a hyperparameter the
            optimiser does not have, or DP-SGD with ``loss``), or the device is not available.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig (see mnistfx.recipe), not {type(config).__name__}")
    if not isinstance(data, MNIST):
        raise TypeError(f"data must be MNIST (from mnistfx.load_mnist), not {type(data).__name__}")
    check_hooks(optimizer, step)
    cfg = config
    model = get_model(cfg.model)
    opt = optimizer if optimizer is not None else config_optimizer(cfg)
    check_settings(cfg, opt, step=step, loss=loss, parallel=parallel)
    device = (
        resolve_device(cfg.device) if parallel is None else distributed.device_for(parallel, resolve_device(cfg.device))
    )
    members = cfg.ensemble if cfg.ensemble > 1 else None
    train_idx, val_idx = train_val_split(cfg.seed, cfg.val_size)
    train_idx = train_idx[: cfg.n_train]
    if members and device.type == "cpu":
        keep_freed_memory()
    own_step = step is not None
    if step is None and cfg.dp_noise is not None:
        step = make_private_step(model, opt, clip=cfg.dp_clip, noise_multiplier=cfg.dp_noise, precision=cfg.precision)
    if step is None and cfg.adv_eps is not None:
        step = make_adversarial_step(
            model,
            opt,
            eps=cfg.adv_eps,
            batch_size=cfg.batch_size,
            steps=cfg.adv_steps,
            step_size=cfg.adv_step_size,
            ramp_steps=round(cfg.adv_warmup * cfg.epochs * cfg.steps_per_epoch),
            label_smoothing=cfg.first("label_smoothing"),
            precision=cfg.precision,
        )
    if step is None:
        step = make_train_step(
            model,
            opt,
            loss=loss,
            label_smoothing=cfg.first("label_smoothing"),
            precision=cfg.precision,
            average=None if parallel is None else distributed.make_average(parallel.world),
        )
    gaussian = getattr(step, "gaussian_size", 0)
    # DP-SGD needs one per parameter, adversarial training one per pixel of the batch
    most = 16 * sum(math.prod(shape) for shape in model.shapes().values()) + 784 * cfg.batch_size
    if isinstance(gaussian, bool) or not isinstance(gaussian, int) or not 0 <= gaussian <= most:
        raise ConfigError(
            f"the step's gaussian_size attribute must be a whole number from 0 to {most:,} (16 per parameter of "
            f"{model.name} and 784 per image of the batch), not {gaussian!r}"
        )
    layout = getattr(step, "layout_optimization", True)
    if not isinstance(layout, bool):
        raise ConfigError(f"the step's layout_optimization attribute must be True or False, not {layout!r}")
    multi = make_multi_step(step, cfg.group)
    if members:
        multi = make_ensemble_step(multi)
    return Trainer(
        config=cfg,
        model=model,
        opt=opt,
        step=compile_step(multi, device, layout_optimization=layout) if cfg.compile else multi,
        device=device,
        train_x=data.train_images[train_idx].to(device),
        train_y=data.train_labels[train_idx].to(device),
        val_x=data.train_images[val_idx].to(device),
        val_y=data.train_labels[val_idx],
        members=members,
        gaussian=gaussian,
        rows=None if parallel is None else distributed.shard_rows(parallel, cfg.group, cfg.batch_size).to(device),
        parallel=parallel,
        loss=loss,
        own_step=own_step,
    )


def check_hooks(optimizer: Optimizer | None, step: Callable | None, on_epoch: Callable | None = None) -> None:
    """An optimiser, a step and an epoch hook of one's own, checked when given.

    Raises:
        TypeError: ``optimizer`` is not an :class:`~mnistfx.Optimizer`, or ``step`` or ``on_epoch`` not a
            function.
    """
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a mnistfx.Optimizer (mnistfx.adam(...), mnistfx.chain(...)), not "
            f"{type(optimizer).__name__}"
        )
    for name, value in (("step", step), ("on_epoch", on_epoch)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be a function, not {type(value).__name__}")


def check_settings(
    config: TrainConfig,
    opt: Optimizer,
    *,
    step: Callable | None = None,
    loss: Callable | None = None,
    parallel: distributed.Parallel | None = None,
) -> None:
    """Refuse, before any work, settings that cannot train together.

    Raises:
        ConfigError: per-member values of hyperparameters ``opt`` lacks, a per-member label smoothing with
            a loss of one's own, or DP-SGD with a step of one's own, data parallelism, a loss of one's own or no
            accountant.
    """
    member_hyper(config, opt)
    if "label_smoothing" in config.per_member and loss is not None:
        raise ConfigError(
            "a `label_smoothing` per member belongs to the default loss: put it in your loss function instead"
        )
    if config.dp_noise is not None and step is not None:
        raise ConfigError(
            "`dp_noise` trains with the built-in DP-SGD step (and reports its privacy): leave out `step`, or "
            "`dp_noise` to train with a step of your own"
        )
    if config.adv_eps is not None:
        if step is not None:
            raise ConfigError(
                "`adv_eps` trains with the built-in adversarial step: leave out `step`, or `adv_eps` to train "
                "with a step of your own"
            )
        if parallel is not None:
            raise ConfigError("adversarial training runs in one process here: train without data parallelism")
        if loss is not None:
            raise ConfigError(
                "adversarial training attacks and trains with cross-entropy, not a loss function of your own "
                "(or train without `adv_eps`)"
            )
    if config.dp_noise is not None:
        if parallel is not None:
            raise ConfigError(
                "DP-SGD trains in one process here: train it without data parallelism, or without `dp_noise`"
            )
        if loss is not None:
            raise ConfigError(
                "DP-SGD trains with cross-entropy, not a loss function of your own (or train without `dp_noise`)"
            )
        if config.dp_noise:  # the accountant is installed and accounts for these settings
            privacy_spent(
                noise_multiplier=config.dp_noise,
                sample_rate=config.batch_size / config.n_train,
                steps=1,
                delta=config.dp_delta,
            )
