"""Ensembles: K members' parameters (and states) stacked on a leading axis and trained by one step.

:func:`make_ensemble_step` maps a whole pure train step over the members with
:func:`torch.func.vmap`, so compiling it gives one graph for all K. The members share each batch's
images and augmentation (an index gather and a warp once per step, not K times; the first
convolution of K members on one input is then one convolution with K times the filters) and
differ in their initialisation and dropout noise. Their optimiser steps are counted once, not K
times: the bias corrections and the learning rate are then scalars, not K-vectors broadcast into
every update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import vmap

from ..rng import fold_in


def stack(trees: list) -> Any:
    """K dicts of tensors (nested dicts too: parameters, states, optimiser states) -> one dict whose
    tensors have the K stacked on a new leading axis (K tensors -> one tensor)."""
    if not isinstance(trees, (list, tuple)) or not trees:
        raise ValueError("stack takes a non-empty list of dicts of tensors")
    first = trees[0]
    if isinstance(first, torch.Tensor):
        if any(
            not isinstance(t, torch.Tensor)
            or t.shape != first.shape
            or t.dtype != first.dtype
            or t.device != first.device
            for t in trees
        ):
            raise ValueError("stack: the members' tensors under one name differ in kind, shape, dtype or device")
        return torch.stack(trees)
    if not isinstance(first, dict) or any(not isinstance(t, dict) or t.keys() != first.keys() for t in trees):
        raise ValueError("stack takes dicts with the same keys (and tensors of the same shapes under them)")
    return {k: stack([t[k] for t in trees]) for k in first}


def unstack(tree: Any) -> list:
    """The inverse of :func:`stack`: a dict of stacked tensors -> a list of K dicts (views, not copies)."""
    if isinstance(tree, torch.Tensor):
        if tree.dim() == 0:
            raise ValueError("unstack: a 0-d tensor has no member axis")
        return list(tree.unbind(0))
    if not isinstance(tree, dict) or not tree:
        raise ValueError("unstack takes a non-empty dict of stacked tensors")
    parts = {k: unstack(v) for k, v in tree.items()}
    sizes = {len(v) for v in parts.values()}
    if len(sizes) != 1:
        raise ValueError(f"unstack: the tensors have different leading sizes {sorted(sizes)}")
    return [{k: v[i] for k, v in parts.items()} for i in range(sizes.pop())]


def member_seed(seed: int, member: int) -> int:
    """The seed of ensemble member ``member`` (from 0) of a run with ``seed``."""
    return fold_in(seed, f"member{member}")


def make_ensemble_step(step: Callable) -> Callable:
    """One step for all members: ``step`` (from :func:`~mnistfx.make_train_step` or
    :func:`~mnistfx.make_multi_step`) mapped over stacked ``params``, ``state``, ``opt_state`` and
    ``noise`` with ``x`` and ``y`` shared; the losses (and aux values) get a leading member axis.

    The optimiser state's ``"step"`` count is the same for every member; it is passed into the mapped
    step once (so its functions of the count stay scalars) and returned stacked again. Everything else
    in it is mapped, its hyperparameters too: members may train with learning rates (weight decay,
    momentum, label smoothing) of their own.
    """

    if not callable(step):
        raise TypeError(f"step must be a train step (e.g. from mnistfx.make_train_step), not {type(step).__name__}")

    def ensemble_step(params, state, opt_state, x, y, noise):
        count = opt_state["step"]  # (K,): one count per member, all equal
        dims = {k: None if k == "step" else 0 for k in opt_state}
        mapped = vmap(step, in_dims=(0, 0, dims, None, None, 0), out_dims=(0, 0, dims, 0, 0))  # type: ignore[arg-type]  # trees
        params, state, opt_state, loss, aux = mapped(params, state, {**opt_state, "step": count[0]}, x, y, noise)
        return params, state, {**opt_state, "step": opt_state["step"].expand(count.shape[0]).clone()}, loss, aux

    return ensemble_step
