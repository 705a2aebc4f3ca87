"""The pure train step, and several steps as one call.

The train step (forward, loss, gradient through ``torch.func``, optimiser update) is one pure
function ``(params, state, opt_state, x, y, noise) -> (params, state, opt_state, loss, aux)``. Its
inputs come from :mod:`mnistfx.training.batches`; :mod:`mnistfx.training.compiling` compiles it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad_and_value
from torch.nn import functional as F

from .._checks import check_choice
from ..constants import PRECISIONS
from ..models.model import Model, check_model
from .batches import batch_inputs
from .optim import Optimizer


def make_train_step(
    model: Model,
    opt: Optimizer,
    *,
    loss: Callable | None = None,
    label_smoothing: float = 0.0,
    precision: str = "fp32",
    average: Callable | None = None,
) -> Callable:
    """The pure train step ``(params, state, opt_state, x, y, noise) -> (params, state, opt_state, loss, aux)``.

    Arguments:
        model: the model (``state`` is ``{}`` for a model without state).
        opt: a pure optimiser (e.g. :func:`~mnistfx.adam`).
        loss: ``loss(logits, y) -> loss`` or ``-> (loss, aux)`` with ``aux`` a dict of tensors the step
            returns as they are (default: cross-entropy with ``label_smoothing``).
        label_smoothing: the default loss's label smoothing; a ``"label_smoothing"`` hyperparameter in the
            optimiser state (an ensemble's members each with their own) takes its place.
        precision: ``"bf16"`` runs the forward pass under bf16 autocast (the loss, gradients
            and update stay float32); ``"fp32"`` does not.
        average: ``average(grads, loss, state) -> (grads, loss, state)``, applied before the update:
            the means over data-parallel processes (see ``mnistfx.training.distributed.make_average``).

    Returns:
        The step; ``x`` and ``noise`` come from :func:`batch_inputs`.
    """
    check_choice("precision", precision, PRECISIONS)
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be a function (logits, y) -> loss, not {type(loss).__name__}")
    if loss is not None and label_smoothing:
        raise ValueError("label_smoothing belongs to the default loss: put it in your loss function instead")
    own_loss = loss

    def loss_fn(params, state, x, y, noise, smoothing):
        with torch.autocast(x.device.type, torch.bfloat16, enabled=precision == "bf16"):
            logits, new_state = model.forward(params, state, x, train=True, noise=noise)
        new_state = {k: v.to(state[k].dtype) for k, v in new_state.items()}
        if own_loss is not None:
            out = own_loss(logits.float(), y)
        elif smoothing is None:
            out = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        else:
            out = smoothed_cross_entropy(logits.float(), y, smoothing)
        value, aux = out if isinstance(out, tuple) else (out, {})
        return value, (new_state, aux)

    def step(params, state, opt_state, x, y, noise):
        smoothing = opt_state["hyper"].get("label_smoothing") if own_loss is None else None
        grads, (value, (state, aux)) = grad_and_value(loss_fn, has_aux=True)(params, state, x, y, noise, smoothing)
        if average is not None:
            grads, value, state = average(grads, value, state)
        params, opt_state = opt.update(grads, opt_state, params)
        return params, state, opt_state, value, aux

    return step


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with label smoothing given as a tensor (``F.cross_entropy``'s takes a float): the mean of
    ``(1 - smoothing) * -log p[y] + smoothing * mean_c(-log p[c])``, as ``torch.nn.CrossEntropyLoss`` defines it."""
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, y[:, None]).squeeze(-1)
    return ((1 - smoothing) * nll - smoothing * logp.mean(-1)).mean()


def make_multi_step(step: Callable, k: int) -> Callable:
    """``k`` train steps as one pure function with the step's signature: ``x``, ``y`` and ``noise`` hold
    ``k`` batches one after another, taken in order; the loss (and each ``aux`` value) has the ``k``
    steps' values stacked."""

    def multi_step(params, state, opt_state, x, y, noise):
        losses, auxes = [], []
        chunks = {name: n.chunk(k) for name, n in noise.items()}
        for j, (xj, yj) in enumerate(zip(x.chunk(k), y.chunk(k), strict=True)):
            params, state, opt_state, loss, aux = step(
                params, state, opt_state, xj, yj, {name: c[j] for name, c in chunks.items()}
            )
            losses.append(loss)
            auxes.append(aux)
        return params, state, opt_state, torch.stack(losses), {a: torch.stack([x[a] for x in auxes]) for a in auxes[0]}

    return multi_step


def check_trainable(
    model: Model, params: dict, state: dict, images: torch.Tensor, labels: torch.Tensor, *, loss: Callable | None = None
) -> None:
    """:func:`~mnistfx.models.check_model` on two of ``images`` prepared as a training batch (with
    generators of its own, so a run's random streams are untouched), before a step is compiled."""
    idx = torch.arange(2, device=images.device)
    x, noise = batch_inputs(model, images, idx, aug_key=0, drop_key=0)
    with torch.no_grad():
        check_model(model, params, state, x, labels[idx], noise, loss)
