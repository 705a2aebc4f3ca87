"""Explicit randomness: keys are ``int`` seeds or ``torch.Generator`` objects, never the global RNG."""

from __future__ import annotations

import hashlib

import torch

from ._checks import is_whole
from ._types import Device, Key


def as_generator(key: Key, device: Device | None = None) -> torch.Generator:
    """A ``torch.Generator`` from ``key``: an ``int`` seed (a new generator) or a generator (as is).

    Arguments:
        key: an ``int`` seed or a ``torch.Generator``.
        device: the device a new generator is made for (default CPU).
    """
    if isinstance(key, torch.Generator):
        return key
    if not is_whole(key):
        raise TypeError(f"key must be an int seed or a torch.Generator, not {type(key).__name__}")
    if not -(2**63) <= int(key) < 2**64:
        raise ValueError(f"key {key} is out of a seed's range (-2**63 to 2**64 - 1)")
    g = torch.Generator(device=device if device is not None else "cpu")
    g.manual_seed(int(key))
    return g


def fold_in(seed: int, name: str) -> int:
    """A new 63-bit seed derived from ``seed`` and a stream name (like ``jax.random.fold_in``)."""
    if not is_whole(seed) or not isinstance(name, str):
        raise TypeError(
            f"fold_in takes an int seed and a str name, not {type(seed).__name__} and {type(name).__name__}"
        )
    seed = int(seed)
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
