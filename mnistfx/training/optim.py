"""Pure optimisers built from gradient transforms, with their hyperparameters in their state.

An optimiser is two pure functions, ``init(params) -> state`` and ``update(grads, state, params) ->
(params, state)``. It is a chain of :class:`Transform` s (each turns the updates into new updates:
clipping, weight decay, momentum, Adam's scaling), then a step of ``-lr * schedule(step)`` along
the result: the optax idea, written for parameter dicts.

The state is a dict: ``"step"`` (a 0-d float32 tensor, so compiled code never recompiles for a new
count), ``"hyper"`` (the hyperparameters that may vary during a run or between an ensemble's
members, e.g. ``lr``, ``weight_decay``, ``momentum``, each a 0-d tensor), and one dict per kind of
buffer (``"mu"``, ``"nu"``, ``"momentum"``), keyed like the parameters. Because the hyperparameters
live in the state, vmapping a step over stacked states trains members with rates of their own
(optax's ``inject_hyperparams``); ``init(params, lr=...)`` sets them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .._checks import check_positive
from .._imports import import_attr
from ..errors import ConfigError
from . import schedules
from .config import TrainConfig
from .schedules import ScheduleFn, describe_schedule, warmup_linear_decay

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Transform:
    """One gradient transform of an optimiser's chain.

    Attributes:
        name: what it is (recorded with runs).
        apply: ``(updates, buffers, params, hyper, step) -> (updates, buffers)``: ``buffers`` holds this
            transform's own buffers (a dict of parameter-keyed dicts), ``hyper`` every hyperparameter of
            the optimiser (0-d tensors) and ``step`` the count of this update (1 at the first).
        buffers: the names of its buffers (zeros like the parameters at the start).
        hyper: its hyperparameters and their defaults.
        settings: its fixed settings, recorded with runs.
    """

    name: str
    apply: Callable[..., tuple[Tensors, dict[str, Tensors]]]
    buffers: tuple[str, ...] = ()
    hyper: Mapping[str, float] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Optimizer:
    """A pure optimiser: its transforms, then a step of ``-lr * schedule(step)``.

    Attributes:
        name: e.g. ``"adam"`` (recorded with runs, with :meth:`describe`).
        transforms: the chain applied to the gradients, in order.
        lr: the learning rate's default (a hyperparameter: each state may hold its own).
        schedule: a function of the step count scaling ``lr`` (see ``mnistfx.training.schedules``),
            or ``None`` for a constant rate.
    """

    name: str
    transforms: tuple[Transform, ...]
    lr: float
    schedule: ScheduleFn | None = None

    def __post_init__(self):
        check_positive("lr", self.lr)
        if self.schedule is not None and not callable(self.schedule):
            raise TypeError(f"schedule must be a function of the step count, not {type(self.schedule).__name__}")
        names = [b for t in self.transforms for b in t.buffers]
        hypers = [h for t in self.transforms for h in t.hyper]
        if len(set(names)) < len(names) or "lr" in hypers or len(set(hypers)) < len(hypers):
            raise ValueError(f"the transforms of {self.name} share a buffer or hyperparameter name: rename one")

    @property
    def buffers(self) -> tuple[str, ...]:
        """The names of the state's per-parameter dicts, in chain order (``("mu", "nu")`` for Adam)."""
        return tuple(b for t in self.transforms for b in t.buffers)

    @property
    def hyper(self) -> dict[str, float]:
        """The hyperparameters the state holds, with their defaults."""
        return {"lr": float(self.lr), **{k: float(v) for t in self.transforms for k, v in t.hyper.items()}}

    def init(self, params: Tensors, **hyper: float) -> dict:
        """The state before the first update: zero buffers, a step count of 0, and the hyperparameters
        (their defaults, or the values given here: e.g. ``init(params, lr=3e-3)``)."""
        if not isinstance(params, dict) or not params or not all(isinstance(p, torch.Tensor) for p in params.values()):
            raise TypeError("params must be a non-empty dict of tensors")
        unknown = sorted(set(hyper) - set(self.hyper))
        if unknown:
            raise ConfigError(
                f"{self.name} has no hyperparameter `{unknown[0]}`: it has {', '.join(f'`{h}`' for h in self.hyper)}"
            )
        values = {**self.hyper, **{k: _check_hyper(k, v) for k, v in hyper.items()}}
        device = next(iter(params.values())).device
        return {
            "step": torch.zeros((), device=device),
            "hyper": {k: torch.tensor(float(v), device=device) for k, v in values.items()},
            **{b: {k: torch.zeros_like(p) for k, p in params.items()} for b in self.buffers},
        }

    def update(self, grads: Tensors, state: dict, params: Tensors) -> tuple[Tensors, dict]:
        """One step. Returns new ``(params, state)``; nothing is modified in place."""
        if (
            not isinstance(grads, dict)
            or grads.keys() != params.keys()
            or not isinstance(state, dict)
            or set(state) != {"step", "hyper", *self.buffers}
            or not set(self.hyper) <= set(state["hyper"])
            or any(state[b].keys() != params.keys() for b in self.buffers)
        ):
            raise ValueError(
                f"grads, params and the {self.name} state must have the same names: make the state "
                "with init(params) of this optimiser and the grads from those params"
            )
        step, hyper, updates = state["step"] + 1, state["hyper"], grads
        new_state: dict[str, Any] = {"step": step, "hyper": hyper}
        for t in self.transforms:
            updates, buffers = t.apply(updates, {b: state[b] for b in t.buffers}, params, hyper, step)
            if (
                not isinstance(updates, dict)
                or updates.keys() != params.keys()
                or any(u.shape != params[k].shape for k, u in updates.items())
                or not isinstance(buffers, dict)
                or set(buffers) != set(t.buffers)
            ):
                raise ValueError(
                    f"{self.name}'s transform {t.name} must return one update per parameter, shaped like it, and "
                    f"its buffers {', '.join(t.buffers) or '(none)'}"
                )
            new_state.update(buffers)
        rate = hyper["lr"] if self.schedule is None else hyper["lr"] * self.schedule(step)
        return {k: p - rate * updates[k] for k, p in params.items()}, new_state

    def describe(self) -> dict[str, Any]:
        """The optimiser as plain values: name, hyperparameters' defaults, transforms and schedule."""
        return {
            "name": self.name,
            "hyper": self.hyper,
            "transforms": [{"name": t.name, **t.settings} for t in self.transforms],
            "schedule": describe_schedule(self.schedule),
        }


def _check_hyper(name: str, value: Any) -> float:
    if not (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and float(value) >= 0
    ):
        raise ConfigError(f"`{name}` must be a finite number ≥ 0, not {value!r}")
    if name == "lr" and value == 0:
        raise ConfigError("`lr` must be a positive number, not 0")
    return float(value)


def _check_factor(name: str, value: Any, hi: float = math.inf) -> float:
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= float(value) < hi):
        raise ValueError(f"{name} must be a number in [0, {hi:g}), not {value!r}")
    return float(value)


# The transforms.


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Transform:
    """Adam's direction: the bias-corrected first moment over the root of the second (plus ``eps``).

    The bias corrections 1 - b**t are computed as -expm1(t log b): exact in float32 where 1 - b**t
    would cancel (1 - 0.999 loses four digits), so the result tracks ``torch.optim.Adam``'s float64.
    """
    if not all(isinstance(b, numbers.Real) and 0 <= float(b) < 1 for b in (b1, b2)):
        raise ValueError(f"betas must be two numbers in [0, 1), not {(b1, b2)!r}")
    if not (isinstance(eps, numbers.Real) and float(eps) >= 0):
        raise ValueError(f"eps must be a number ≥ 0, not {eps!r}")
    b1, b2, eps = float(b1), float(b2), float(eps)

    def apply(updates, buffers, params, hyper, step):
        bc1 = -torch.expm1(step * math.log(b1)) if b1 else 1.0
        bc2_sqrt = torch.sqrt(-torch.expm1(step * math.log(b2))) if b2 else 1.0
        mu = {k: torch.lerp(buffers["mu"][k], g, 1 - b1) for k, g in updates.items()}
        nu = {k: torch.addcmul(buffers["nu"][k] * b2, g, g, value=1 - b2) for k, g in updates.items()}
        return {k: mu[k] / (torch.sqrt(nu[k]) / bc2_sqrt + eps) / bc1 for k in updates}, {"mu": mu, "nu": nu}

    return Transform("scale_by_adam", apply, ("mu", "nu"), settings={"b1": b1, "b2": b2, "eps": eps})


def add_decayed_weights(weight_decay: float = 0.0) -> Transform:
    """Add ``weight_decay`` times the parameters to the updates. Before momentum or Adam's scaling it is an
    L2 penalty (``torch.optim.SGD``'s ``weight_decay``); after Adam's scaling it is decoupled weight
    decay (AdamW). ``weight_decay`` is a hyperparameter of the state."""
    wd = _check_factor("weight_decay", weight_decay)

    def apply(updates, buffers, params, hyper, step):
        return {k: g + hyper["weight_decay"] * params[k] for k, g in updates.items()}, {}

    return Transform("add_decayed_weights", apply, hyper={"weight_decay": wd})


def trace(momentum: float = 0.9, *, nesterov: bool = False) -> Transform:
    """Momentum: a buffer ``momentum * buffer + updates`` (as ``torch.optim.SGD``, no dampening; its first
    buffer is the first gradient, which is momentum * 0 + g), used as the update (or, with ``nesterov``,
    ``updates + momentum * buffer``). ``momentum`` is a hyperparameter of the state."""
    m = _check_factor("momentum", momentum, 1.0)

    def apply(updates, buffers, params, hyper, step):
        mom = hyper["momentum"]
        buf = {k: buffers["momentum"][k] * mom + g for k, g in updates.items()}
        return ({k: g + mom * buf[k] for k, g in updates.items()} if nesterov else buf), {"momentum": buf}

    return Transform("trace", apply, ("momentum",), {"momentum": m}, {"nesterov": bool(nesterov)})


def clip_by_global_norm(max_norm: float) -> Transform:
    """Scale the updates so that their norm over all parameters together is at most ``max_norm`` (as
    ``torch.nn.utils.clip_grad_norm_``, which divides by the norm plus 1e-6)."""
    limit = check_positive("max_norm", max_norm)

    def apply(updates, buffers, params, hyper, step):
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in updates.values()]))
        scale = torch.clamp(limit / (norm + 1e-6), max=1.0)
        return {k: g * scale for k, g in updates.items()}, {}

    return Transform("clip_by_global_norm", apply, settings={"max_norm": limit})


def chain(name: str, *transforms: Transform, lr: float = 1e-3, schedule: ScheduleFn | None = None) -> Optimizer:
    """An optimiser of your own: ``transforms`` in order, then a step of ``-lr * schedule(step)``.

    Arguments:
        name: its name, recorded with runs.
        transforms: :class:`Transform` s, e.g. ``clip_by_global_norm(1.0), trace(0.9)``, or your own.
        lr: the learning rate (its default: states may hold their own).
        schedule: a function of the step count (a 0-d tensor, 1 at the first update) scaling ``lr``.

    Returns:
        An :class:`Optimizer`.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, not {name!r}")
    if not all(isinstance(t, Transform) for t in transforms):
        raise TypeError("chain takes Transforms (e.g. mnistfx.trace(0.9)) after the name")
    return Optimizer(name, tuple(transforms), lr, schedule)


# The built-in optimisers.


def adam(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    *,
    schedule: ScheduleFn | None = None,
) -> Optimizer:
    """A functional Adam optimiser with the same arithmetic as ``torch.optim.Adam``.

    Arguments:
        lr: the learning rate.
        betas: the decay rates of the first and second moment estimates.
        eps: added to the denominator for numerical stability.
        schedule: scales ``lr`` at each step (see ``mnistfx.training.schedules``); ``None``: constant.

    Returns:
        An :class:`Optimizer` whose state holds ``step``, ``hyper`` (``lr``), ``mu`` and ``nu``.
    """
    lr, schedule = _rate(lr, schedule)
    return Optimizer("adam", (scale_by_adam(*_betas(betas), eps),), lr, schedule)


def adamw(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    *,
    schedule: ScheduleFn | None = None,
) -> Optimizer:
    """A functional AdamW (Adam with decoupled weight decay), as ``torch.optim.AdamW``.

    Each step moves every parameter by ``lr * weight_decay`` of itself besides :func:`adam`'s step.
    Arguments as for :func:`adam`, plus ``weight_decay`` in [0, 1).
    """
    lr, schedule = _rate(lr, schedule)
    wd = _check_factor("weight_decay", weight_decay, 1.0)
    return Optimizer("adamw", (scale_by_adam(*_betas(betas), eps), add_decayed_weights(wd)), lr, schedule)


def sgd(
    lr: float = 0.05,
    momentum: float = 0.9,
    *,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    schedule: ScheduleFn | None = None,
) -> Optimizer:
    """Functional SGD with (heavy-ball or Nesterov) momentum, as ``torch.optim.SGD`` (no dampening).

    Arguments:
        lr: the learning rate.
        momentum: the momentum factor in [0, 1); 0 is plain SGD (the state then has no buffer).
        nesterov: use Nesterov momentum.
        weight_decay: L2 penalty added to the gradient (coupled, as ``torch.optim.SGD``).
        schedule: scales ``lr`` at each step (see :func:`adam`).

    Returns:
        An :class:`Optimizer` whose state holds ``step``, ``hyper`` and, with momentum, ``momentum``.
    """
    lr, schedule = _rate(lr, schedule)
    momentum = _check_factor("momentum", momentum, 1.0)
    if nesterov and not momentum:
        raise ValueError("nesterov needs a momentum above 0")
    decay = add_decayed_weights(_check_factor("weight_decay", weight_decay))
    return Optimizer("sgd", (decay, trace(momentum, nesterov=nesterov)) if momentum else (decay,), lr, schedule)


def _betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be two numbers in [0, 1), not {betas!r}")
    return betas[0], betas[1]


def _rate(lr: Any, schedule: ScheduleFn | None) -> tuple[float, ScheduleFn | None]:
    """``lr`` and ``schedule`` checked; a function passed as ``lr`` is a schedule of the rate itself."""
    if callable(lr):
        if schedule is not None:
            raise ValueError("give the schedule once: as `schedule` (scaling `lr`) or as `lr` itself")
        return 1.0, lr
    return check_positive("lr", lr), schedule


OPTIMIZERS = {"adam": adam, "adamw": adamw, "sgd": sgd}  # keyed by constants.OPTIMIZERS (a test checks)


def config_optimizer(config: TrainConfig) -> Optimizer:
    """The optimiser, with its learning-rate schedule, that a run of ``config`` trains with (with the first
    member's hyperparameters as its defaults: a run gives each member its own in the optimiser state).

    Raises:
        ConfigError: the config names an optimiser of your own, which only you can make: pass it to
            :func:`~mnistfx.train` as ``optimizer``.
    """
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"the config names the optimiser {config.optimizer}, not a built-in one: pass that optimiser as `optimizer`"
        )
    total = config.epochs * config.steps_per_epoch
    schedule = config_schedule(config, total)
    lr = config.first("lr")
    wd = config.first("weight_decay")
    if config.optimizer == "sgd":
        # with momenta per member, every member has the buffer (a member's 0 is plain SGD through it)
        return sgd(lr, max(config.member_values("momentum")), weight_decay=wd or 0.0, schedule=schedule)
    if config.optimizer == "adamw":
        return adamw(lr, weight_decay=1e-2 if wd is None else wd, schedule=schedule)
    return adam(lr, schedule=schedule)


def config_schedule(config: TrainConfig, total: int) -> ScheduleFn | None:
    """The schedule ``config`` names, over ``total`` steps (``None``: a constant rate)."""
    warmup, decay = round(config.warmup * total), round(config.decay * total)
    if config.schedule == "cosine":
        return schedules.cosine(total, min(warmup, total - 1))
    if config.schedule == "one-cycle":
        return schedules.one_cycle(total, config.warmup or 0.3)
    if config.schedule == "step":
        return schedules.step_decay(config.steps_per_epoch, config.gamma)
    if decay <= 0 and warmup <= 0:
        return None
    return warmup_linear_decay(total, decay, warmup)


def import_optimizer(spec: str) -> Optimizer:
    """The :class:`Optimizer` ``spec`` names as ``"package.module:attr"`` (searched in the current folder
    first). Importing runs the module's code: only name modules you trust.

    Raises:
        ConfigError: it cannot be imported, or is not an :class:`Optimizer`.
    """
    opt = import_attr(spec, "optimizer", "myoptim:adadelta, for the Optimizer adadelta in myoptim.py")
    if not isinstance(opt, Optimizer):
        what = "nothing" if opt is None else f"of type {type(opt).__name__}"
        raise ConfigError(
            f"{spec} is {what}, not a mnistfx.Optimizer: point at the optimiser your module makes (mnistfx.chain)"
        )
    return opt


def lr_schedule(lr: float, total_steps: int, decay_steps: int, warmup_steps: int = 0) -> float | ScheduleFn:
    """The learning rate for each step: a constant ``lr``, or a function of the step count.

    Over the first ``warmup_steps`` it rises linearly from ``lr / 25`` to ``lr``; over the last
    ``decay_steps`` it falls linearly to 0; in between it is ``lr`` (see
    :func:`~mnistfx.warmup_linear_decay`, the same shape as a factor of an optimiser's ``lr``).

    Returns:
        ``lr`` itself when there is neither warm-up nor decay, else a function of the step count.
    """
    check_positive("lr", lr)
    if decay_steps <= 0 and warmup_steps <= 0:
        return lr
    shape = warmup_linear_decay(total_steps, decay_steps, warmup_steps)
    return lambda step: lr * shape(step)
