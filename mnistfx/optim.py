"""Pure optimisers and learning-rate schedules.

An optimiser is ``init(params) -> state`` and ``update(grads, state, params) -> (params, state)``;
a schedule is a function from the step count (a 0-d tensor) to the learning rate.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Union

import torch

from ._checks import check_positive

Schedule = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Optimizer:
    """Adam (Kingma & Ba) as two pure functions; see :func:`adam`."""

    lr: Union[float, Schedule]
    betas: tuple[float, float]
    eps: float

    def init(self, params: dict[str, torch.Tensor]) -> dict:
        """Zero moments and a step count of 0 (a float32 tensor, so compiled code never recompiles)."""
        if not isinstance(params, dict) or not params or not all(isinstance(p, torch.Tensor) for p in params.values()):
            raise TypeError("params must be a non-empty dict of tensors")
        return {
            "step": torch.zeros((), device=next(iter(params.values())).device),
            "mu": {k: torch.zeros_like(p) for k, p in params.items()},
            "nu": {k: torch.zeros_like(p) for k, p in params.items()},
        }

    def update(self, grads: dict, state: dict, params: dict) -> tuple[dict, dict]:
        """One Adam step. Returns new ``(params, state)``; nothing is modified in place."""
        if not isinstance(grads, dict) or grads.keys() != params.keys() or state.get("mu", {}).keys() != params.keys():
            raise ValueError("grads, params and the state's moments must have the same names: make the state "
                             "with init(params) and the grads from those params")
        b1, b2 = self.betas
        step = state["step"] + 1
        lr = self.lr(step) if callable(self.lr) else self.lr
        # Bias corrections 1 - b**t as -expm1(t log b): exact in float32 where 1 - b**t
        # would cancel (1 - 0.999 loses four digits), so we track torch.optim.Adam's float64.
        step_size = lr / -torch.expm1(step * math.log(b1))
        bc2_sqrt = torch.sqrt(-torch.expm1(step * math.log(b2)))
        mu = {k: torch.lerp(state["mu"][k], g, 1 - b1) for k, g in grads.items()}
        nu = {k: torch.addcmul(state["nu"][k] * b2, g, g, value=1 - b2) for k, g in grads.items()}
        new = {k: p - step_size * mu[k] / (torch.sqrt(nu[k]) / bc2_sqrt + self.eps)
               for k, p in params.items()}
        return new, {"step": step, "mu": mu, "nu": nu}


def adam(lr: Union[float, Schedule] = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-8) -> Optimizer:
    """A functional Adam optimiser with the same arithmetic as ``torch.optim.Adam``.

    Arguments:
        lr: a learning rate, or a schedule: a function from the step count (a 0-d tensor,
            1 at the first update) to a 0-d tensor learning rate.
        betas: the decay rates of the first and second moment estimates.
        eps: added to the denominator for numerical stability.

    Returns:
        An :class:`Optimizer` with pure ``init`` and ``update``.
    """
    if not callable(lr):
        check_positive("lr", lr)
    if len(betas) != 2 or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), not {betas!r}")
    if not (isinstance(eps, numbers.Real) and eps >= 0):
        raise ValueError(f"eps must be a number ≥ 0, not {eps!r}")
    return Optimizer(lr, tuple(betas), float(eps))


def lr_schedule(lr: float, total_steps: int, decay_steps: int, warmup_steps: int = 0):
    """The learning rate for each step: a constant ``lr``, or a schedule (a function of the step count).

    Over the first ``warmup_steps`` it rises linearly from ``lr / 25`` to ``lr``; over the last
    ``decay_steps`` it falls linearly to 0; in between it is ``lr``. The schedule computes with
    tensors, so inside a compiled step a new step count never recompiles.

    Arguments:
        lr: the peak learning rate.
        total_steps: the number of steps of the whole run.
        decay_steps, warmup_steps: the lengths of the decay and the warm-up (0: none).

    Returns:
        ``lr`` itself when there is neither warm-up nor decay, else a schedule for :func:`adam`.
    """
    if decay_steps <= 0 and warmup_steps <= 0:
        return lr

    def schedule(step):
        rate = lr
        if warmup_steps > 0:
            rate = rate * (0.04 + 0.96 * torch.clamp(step / warmup_steps, max=1.0))
        if decay_steps > 0:
            rate = rate * torch.clamp((total_steps - step + 1) / decay_steps, max=1.0)
        return rate

    return schedule
