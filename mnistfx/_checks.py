"""Internal: the checks that several entry points share, each written once with one wording.

Importable without torch (the config is checked where it is made, before torch loads).
"""

from __future__ import annotations

import math
import numbers

from .errors import ConfigError


def is_whole(value) -> bool:
    """An integer (Python or numpy), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_whole(
    name: str, value, lo: int, hi: int | None = None, *, hi_name: str | None = None, why: str = "", error=ConfigError
) -> int:
    """``value`` as an int, or ``error`` saying it must be a whole number in ``[lo, hi]``."""
    if not is_whole(value) or value < lo or (hi is not None and value > hi):
        bounds = f"≥ {lo}" if hi is None else f"from {lo} to {hi_name or hi}"
        raise error(f"{name} must be a whole number {bounds}{why}, not {_short(value)}")
    return int(value)


def check_fraction(name: str, value) -> float:
    """``value`` as a float in [0, 1], or a :class:`ConfigError`."""
    if not (is_finite(value) and 0 <= value <= 1):
        raise ConfigError(f"{name} must be a fraction between 0 and 1, not {_short(value)}")
    return float(value)


def is_finite(value) -> bool:
    """A real number (not a bool) that is finite as a float (a huge int is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_positive(name: str, value) -> float:
    """``value`` as a finite float > 0, or a :class:`ConfigError`."""
    if not (is_finite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, not {_short(value)}")
    return float(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_choice(name: str, value, choices) -> str:
    """``value`` if it is one of ``choices``, or a :class:`ConfigError` that lists them."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value
