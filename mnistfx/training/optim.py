"""Pure optimisers (Adam, AdamW, SGD with momentum) and learning-rate schedules.

An optimiser is two pure functions: ``init(params) -> state`` and ``update(grads, state, params) ->
(params, state)``. Every state is a dict holding ``"step"`` (a 0-d float32 tensor, so compiled code
never recompiles for a new count) and one dict per kind of buffer, keyed like the parameters. A
schedule is a function from the step count (a 0-d tensor, 1 at the first update) to the rate.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._checks import check_positive
from .config import TrainConfig

Schedule = Callable[[torch.Tensor], torch.Tensor]
LearningRate = float | Schedule


@dataclass(frozen=True)
class Optimizer:
    """A pure optimiser: ``init(params) -> state``, ``update(grads, state, params) -> (params, state)``.

    Attributes:
        name: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        buffers: the names of the state's per-parameter dicts (``("mu", "nu")`` for Adam).
        step_fn: ``(grads, buffers, params, step, lr) -> (params, buffers)``, the arithmetic.
        lr: the learning rate, or a schedule of the step count.
    """

    name: str
    buffers: tuple[str, ...]
    step_fn: Callable
    lr: LearningRate

    def init(self, params: dict[str, torch.Tensor]) -> dict:
        """Zero buffers and a step count of 0."""
        if not isinstance(params, dict) or not params or not all(isinstance(p, torch.Tensor) for p in params.values()):
            raise TypeError("params must be a non-empty dict of tensors")
        device = next(iter(params.values())).device
        return {
            "step": torch.zeros((), device=device),
            **{b: {k: torch.zeros_like(p) for k, p in params.items()} for b in self.buffers},
        }

    def update(self, grads: dict, state: dict, params: dict) -> tuple[dict, dict]:
        """One step. Returns new ``(params, state)``; nothing is modified in place."""
        if (
            not isinstance(grads, dict)
            or grads.keys() != params.keys()
            or not isinstance(state, dict)
            or set(state) != {"step", *self.buffers}
            or any(state[b].keys() != params.keys() for b in self.buffers)
        ):
            raise ValueError(
                f"grads, params and the {self.name} state must have the same names: make the state "
                "with init(params) of this optimiser and the grads from those params"
            )
        step = state["step"] + 1
        lr = self.lr(step) if callable(self.lr) else self.lr
        params, buffers = self.step_fn(grads, {b: state[b] for b in self.buffers}, params, step, lr)
        return params, {"step": step, **buffers}


def _check_lr(lr) -> None:
    if not callable(lr):
        check_positive("lr", lr)


def _check_betas(betas, eps) -> tuple[tuple[float, float], float]:
    if len(betas) != 2 or not all(isinstance(b, numbers.Real) and 0 <= float(b) < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), not {betas!r}")
    if not (isinstance(eps, numbers.Real) and float(eps) >= 0):
        raise ValueError(f"eps must be a number ≥ 0, not {eps!r}")
    return (float(betas[0]), float(betas[1])), float(eps)


def _check_factor(name: str, value, hi: float = math.inf) -> float:
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= float(value) < hi):
        raise ValueError(f"{name} must be a number in [0, {hi:g}), not {value!r}")
    return float(value)


def _adam_arithmetic(betas, eps, weight_decay):
    b1, b2 = betas

    def step_fn(grads, buffers, params, step, lr):
        # Bias corrections 1 - b**t as -expm1(t log b): exact in float32 where 1 - b**t
        # would cancel (1 - 0.999 loses four digits), so we track torch.optim.Adam's float64.
        step_size = lr / -torch.expm1(step * math.log(b1))
        bc2_sqrt = torch.sqrt(-torch.expm1(step * math.log(b2)))
        mu = {k: torch.lerp(buffers["mu"][k], g, 1 - b1) for k, g in grads.items()}
        nu = {k: torch.addcmul(buffers["nu"][k] * b2, g, g, value=1 - b2) for k, g in grads.items()}
        if weight_decay:  # decoupled, before the Adam step (as torch.optim.AdamW)
            params = {k: p * (1 - lr * weight_decay) for k, p in params.items()}
        new = {k: p - step_size * mu[k] / (torch.sqrt(nu[k]) / bc2_sqrt + eps) for k, p in params.items()}
        return new, {"mu": mu, "nu": nu}

    return step_fn


def adam(lr: LearningRate = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> Optimizer:
    """A functional Adam optimiser with the same arithmetic as ``torch.optim.Adam``.

    Arguments:
        lr: a learning rate, or a schedule: a function from the step count (a 0-d tensor,
            1 at the first update) to a 0-d tensor learning rate.
        betas: the decay rates of the first and second moment estimates.
        eps: added to the denominator for numerical stability.

    Returns:
        An :class:`Optimizer` whose state holds ``step``, ``mu`` and ``nu``.
    """
    _check_lr(lr)
    betas, eps = _check_betas(betas, eps)
    return Optimizer("adam", ("mu", "nu"), _adam_arithmetic(betas, eps, 0.0), lr)


def adamw(
    lr: LearningRate = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2
) -> Optimizer:
    """A functional AdamW (Adam with decoupled weight decay), as ``torch.optim.AdamW``.

    Each step first shrinks every parameter by ``lr * weight_decay`` of itself, then takes
    :func:`adam`'s step. Arguments as for :func:`adam`, plus ``weight_decay`` in [0, 1).
    """
    _check_lr(lr)
    betas, eps = _check_betas(betas, eps)
    wd = _check_factor("weight_decay", weight_decay, 1.0)
    return Optimizer("adamw", ("mu", "nu"), _adam_arithmetic(betas, eps, wd), lr)


def sgd(
    lr: LearningRate = 0.05, momentum: float = 0.9, *, nesterov: bool = False, weight_decay: float = 0.0
) -> Optimizer:
    """Functional SGD with (heavy-ball or Nesterov) momentum, as ``torch.optim.SGD`` (no dampening).

    Arguments:
        lr: a learning rate or a schedule (see :func:`adam`).
        momentum: the momentum factor in [0, 1); 0 is plain SGD (the state then has no buffer).
        nesterov: use Nesterov momentum.
        weight_decay: L2 penalty added to the gradient (coupled, as ``torch.optim.SGD``).

    Returns:
        An :class:`Optimizer` whose state holds ``step`` and, with momentum, ``momentum``.
    """
    _check_lr(lr)
    momentum = _check_factor("momentum", momentum, 1.0)
    wd = _check_factor("weight_decay", weight_decay)
    if nesterov and not momentum:
        raise ValueError("nesterov needs a momentum above 0")

    def step_fn(grads, buffers, params, step, lr):
        if wd:
            grads = {k: g + wd * params[k] for k, g in grads.items()}
        if not momentum:
            return {k: p - lr * grads[k] for k, p in params.items()}, {}
        # torch.optim.SGD starts the buffer at the first gradient: momentum * 0 + g is the same
        buf = {k: buffers["momentum"][k] * momentum + g for k, g in grads.items()}
        direction = {k: g + momentum * buf[k] for k, g in grads.items()} if nesterov else buf
        return {k: p - lr * direction[k] for k, p in params.items()}, {"momentum": buf}

    return Optimizer("sgd", ("momentum",) if momentum else (), step_fn, lr)


OPTIMIZERS = {"adam": adam, "adamw": adamw, "sgd": sgd}  # keyed by constants.OPTIMIZERS (a test checks)


def config_optimizer(config: TrainConfig) -> Optimizer:
    """The optimiser, with its learning-rate schedule, that a run of ``config`` trains with."""
    total = config.epochs * config.steps_per_epoch
    lr = lr_schedule(config.lr, total, round(config.decay * total), round(config.warmup * total))
    if config.optimizer == "sgd":
        return sgd(lr, config.momentum, weight_decay=config.weight_decay or 0.0)
    if config.optimizer == "adamw":
        return adamw(lr, weight_decay=1e-2 if config.weight_decay is None else config.weight_decay)
    return adam(lr)


def lr_schedule(lr: float, total_steps: int, decay_steps: int, warmup_steps: int = 0) -> LearningRate:
    """The learning rate for each step: a constant ``lr``, or a schedule (a function of the step count).

    Over the first ``warmup_steps`` it rises linearly from ``lr / 25`` to ``lr``; over the last
    ``decay_steps`` it falls linearly to 0; in between it is ``lr``. The schedule computes with
    tensors, so inside a compiled step a new step count never recompiles.

    Arguments:
        lr: the peak learning rate.
        total_steps: the number of steps of the whole run.
        decay_steps, warmup_steps: the lengths of the decay and the warm-up (0: none).

    Returns:
        ``lr`` itself when there is neither warm-up nor decay, else a schedule for an optimiser.
    """
    if decay_steps <= 0 and warmup_steps <= 0:
        return lr

    def schedule(step: torch.Tensor) -> torch.Tensor:
        rate: float | torch.Tensor = lr
        if warmup_steps > 0:
            rate = rate * (0.04 + 0.96 * torch.clamp(step / warmup_steps, max=1.0))
        if decay_steps > 0:
            rate = rate * torch.clamp((total_steps - step + 1) / decay_steps, max=1.0)
        return rate  # type: ignore[return-value]  # a tensor: there is warm-up or decay

    return schedule
