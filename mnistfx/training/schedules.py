"""Learning-rate schedules: functions of the step count that scale an optimiser's learning rate.

A schedule maps the step count (a 0-d float tensor, 1 at the first update) to a factor; the
optimiser's rate at that step is its ``lr`` hyperparameter times the factor. The factor is a
function of the count alone and the peak rate lives in the optimiser's state, so the members of an
ensemble can share one schedule with rates of their own (see :mod:`mnistfx.training.optim`). Every
built-in schedule computes with tensors (a new count never recompiles a compiled step) and says
what it is in :meth:`Schedule.describe`, which runs record with their results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .._checks import check_fraction, check_whole
from ..errors import ConfigError

ScheduleFn = Callable[[torch.Tensor], "torch.Tensor | float"]


def _ramp(step: torch.Tensor, begin: float, length: float) -> torch.Tensor:
    """0 at ``begin``, rising linearly to 1 at ``begin + length`` (clamped to [0, 1])."""
    return torch.clamp((step - begin) / max(length, 1.0), 0.0, 1.0)


@dataclass(frozen=True)
class Schedule:
    """A built-in schedule: call it with the step count for the factor of the learning rate."""

    def __call__(self, step: torch.Tensor) -> torch.Tensor:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The schedule's name and settings, as plain values (recorded with a run)."""
        return {"name": _NAMES[type(self)], **asdict(self)}


@dataclass(frozen=True)
class Constant(Schedule):
    """The learning rate itself at every step."""

    def __call__(self, step: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(step)


@dataclass(frozen=True)
class WarmupLinearDecay(Schedule):
    """Rises linearly from 1/25 over the first ``warmup_steps``, falls linearly to 0 over the last
    ``decay_steps`` of ``total_steps``, and is 1 between. ``warmup_steps = 0.2 * total_steps,
    decay_steps = 0.8 * total_steps`` is a (linear) one-cycle schedule."""

    total_steps: int
    decay_steps: int
    warmup_steps: int = 0

    def __call__(self, step: torch.Tensor) -> torch.Tensor:
        factor = torch.ones_like(step)
        if self.warmup_steps > 0:
            factor = factor * (0.04 + 0.96 * torch.clamp(step / self.warmup_steps, max=1.0))
        if self.decay_steps > 0:  # 0 after the last step, never below
            factor = factor * torch.clamp((self.total_steps - step + 1) / self.decay_steps, 0.0, 1.0)
        return factor


@dataclass(frozen=True)
class Cosine(Schedule):
    """Optional linear warm-up from 0 over ``warmup_steps``, then half a cosine from 1 down to ``final``
    at ``total_steps`` (as ``torch.optim.lr_scheduler.CosineAnnealingLR``, stepped once per update)."""

    total_steps: int
    warmup_steps: int = 0
    final: float = 0.0

    def __call__(self, step: torch.Tensor) -> torch.Tensor:
        progress = _ramp(step - 1, self.warmup_steps, self.total_steps - self.warmup_steps)
        factor = self.final + (1 - self.final) * 0.5 * (1 + torch.cos(math.pi * progress))
        if self.warmup_steps > 0:
            factor = factor * torch.clamp(step / self.warmup_steps, max=1.0)
        return factor


@dataclass(frozen=True)
class OneCycle(Schedule):
    """``torch.optim.lr_scheduler.OneCycleLR``'s shape (cosine annealing): from ``1 / div`` up to 1 over
    the first ``rise`` fraction of ``total_steps``, then down to ``1 / (div * final_div)``."""

    total_steps: int
    rise: float = 0.3
    div: float = 25.0
    final_div: float = 1e4

    def __call__(self, step: torch.Tensor) -> torch.Tensor:
        start, low = 1 / self.div, 1 / (self.div * self.final_div)
        peak_at = self.rise * self.total_steps - 1  # OneCycleLR's step index of the peak (0-based)
        up = 0.5 * (1 - torch.cos(math.pi * _ramp(step - 1, 0.0, peak_at)))
        down = 0.5 * (1 + torch.cos(math.pi * _ramp(step - 1, peak_at, self.total_steps - 1 - peak_at)))
        return torch.where(step - 1 <= peak_at, start + (1 - start) * up, low + (1 - low) * down)


@dataclass(frozen=True)
class StepDecay(Schedule):
    """Multiplied by ``gamma`` after every ``step_size`` updates (``torch.optim.lr_scheduler.StepLR``
    stepped every ``step_size`` updates; pytorch/examples' MNIST uses one epoch and gamma 0.7)."""

    step_size: int
    gamma: float = 0.1

    def __call__(self, step: torch.Tensor) -> torch.Tensor:
        return self.gamma ** torch.floor((step - 1) / self.step_size)


_NAMES = {Constant: "constant", WarmupLinearDecay: "linear", Cosine: "cosine", OneCycle: "one-cycle", StepDecay: "step"}
SCHEDULES = tuple(_NAMES.values())


def _steps(name: str, value: Any, lo: int = 0) -> int:
    return check_whole(f"`{name}`", value, lo)


def constant() -> Schedule:
    """The constant schedule (factor 1)."""
    return Constant()


def warmup_linear_decay(total_steps: int, decay_steps: int, warmup_steps: int = 0) -> Schedule:
    """Linear warm-up from 1/25 over ``warmup_steps``, linear decay to 0 over the last ``decay_steps`` of
    ``total_steps`` (mnistfx's default shape; see ``WarmupLinearDecay``).

    Raises:
        ConfigError: a count is not a whole number, or warm-up and decay together exceed the total.
    """
    total = _steps("total_steps", total_steps, 1)
    decay, warmup = _steps("decay_steps", decay_steps), _steps("warmup_steps", warmup_steps)
    if decay + warmup > total:
        raise ConfigError(f"`warmup_steps` + `decay_steps` ({warmup + decay}) exceed `total_steps` ({total})")
    return WarmupLinearDecay(total, decay, warmup)


def cosine(total_steps: int, warmup_steps: int = 0, final: float = 0.0) -> Schedule:
    """Cosine decay from 1 to ``final`` (a fraction of the peak) at ``total_steps``, after an optional linear
    warm-up (see ``Cosine``).

    Raises:
        ConfigError: a bad count, or ``final`` outside [0, 1].
    """
    total = _steps("total_steps", total_steps, 1)
    warmup = check_whole("`warmup_steps`", warmup_steps, 0, total - 1)
    return Cosine(total, warmup, check_fraction("`final`", final))


def one_cycle(total_steps: int, rise: float = 0.3, div: float = 25.0, final_div: float = 1e4) -> Schedule:
    """A one-cycle schedule, as ``torch.optim.lr_scheduler.OneCycleLR`` with cosine annealing (see
    ``OneCycle``): ``rise`` is the fraction of steps spent rising, ``div`` the peak over the start,
    ``final_div`` the start over the end.

    Raises:
        ConfigError: a bad count, ``rise`` not in (0, 1), or a divisor below 1.
    """
    total = _steps("total_steps", total_steps, 2)
    rise = check_fraction("`rise`", rise)
    if not 0 < rise * total - 1 < total - 1:
        raise ConfigError(
            f"`rise` {rise} leaves no step to rise or to fall over {total} steps: choose one in "
            f"({2 / total:.3g}, {1 - 1 / total:.3g}), or more steps"
        )
    for name, value in (("div", div), ("final_div", final_div)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 1 <= value < math.inf):
            raise ConfigError(f"`{name}` must be a number ≥ 1, not {value!r}")
    return OneCycle(total, rise, float(div), float(final_div))


def step_decay(step_size: int, gamma: float = 0.1) -> Schedule:
    """Multiply the rate by ``gamma`` after every ``step_size`` updates (see ``StepDecay``).

    Raises:
        ConfigError: ``step_size`` not a whole number ≥ 1, or ``gamma`` outside (0, 1].
    """
    size = _steps("step_size", step_size, 1)
    gamma = check_fraction("`gamma`", gamma)
    if gamma == 0:
        raise ConfigError("`gamma` must be above 0 (0 would stop training after the first interval)")
    return StepDecay(size, gamma)


def describe_schedule(schedule: ScheduleFn | None) -> dict[str, Any]:
    """What a schedule is, as plain values: a built-in's name and settings, or a function's qualified name."""
    if schedule is None:
        return {"name": "constant"}
    if isinstance(schedule, Schedule):
        return schedule.describe()
    name = getattr(schedule, "__qualname__", type(schedule).__name__)
    return {"name": f"{getattr(schedule, '__module__', '?')}:{name}"}
