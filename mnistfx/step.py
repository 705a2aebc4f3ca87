"""The pure train step, several steps as one call, their inputs, and how they are compiled.

The train step (forward, loss, gradient through ``torch.func``, optimiser update) is one pure
function ``(params, state, opt_state, x, y, noise) -> (params, state, opt_state, loss, aux)``. A batch's inputs are
made outside it: an index gather from the uint8 images resident on the device, one batched
affine warp, and the dropout noise (aten's ``grid_sample`` is faster here than inductor's
version of it).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import grad_and_value
from torch.nn import functional as F

from ._checks import check_choice
from .augment import check_rows, random_affine
from .constants import PRECISIONS
from .ensemble import stack
from .errors import MnistfxError
from .contract import check_model
from .distributed import is_collective_failure
from .models import Model, check_images
from .optim import Optimizer
from .rng import as_generator

# On the CPU, inductor's C++ wrapper launches the kernels from C++ instead of Python, and the
# runtime size and alignment asserts only repeat what dynamo's guards already check (shapes are
# static). Measured in one process: +6 % img/s for the train step at batch 32, no change at 256,
# and a cold compile no slower. CUDA keeps inductor's defaults (this combination is untested there).
CPU_COMPILE_OPTIONS = {"cpp_wrapper": True, "size_asserts": False, "alignment_asserts": False,
                       "scalar_asserts": False}


def make_train_step(model: Model, opt: Optimizer, *, loss: Callable | None = None, label_smoothing: float = 0.0,
                    precision: str = "fp32", average: Callable | None = None) -> Callable:
    """The pure train step ``(params, state, opt_state, x, y, noise) -> (params, state, opt_state, loss, aux)``.

    Arguments:
        model: the model (``state`` is ``{}`` for a model without state).
        opt: a pure optimiser (e.g. :func:`~mnistfx.adam`).
        loss: ``loss(logits, y) -> loss`` or ``-> (loss, aux)`` with ``aux`` a dict of tensors the step
            returns as they are (default: cross-entropy with ``label_smoothing``).
        label_smoothing: the default loss's label smoothing.
        precision: ``"bf16"`` runs the forward pass under bf16 autocast (the loss, gradients
            and update stay float32); ``"fp32"`` does not.
        average: ``average(grads, loss, state) -> (grads, loss, state)``, applied before the update:
            the means over data-parallel processes (see :func:`mnistfx.distributed.make_average`).

    Returns:
        The step; ``x`` and ``noise`` come from :func:`batch_inputs`.
    """
    check_choice("precision", precision, PRECISIONS)
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be a function (logits, y) -> loss, not {type(loss).__name__}")
    if loss is not None and label_smoothing:
        raise ValueError("label_smoothing belongs to the default loss: put it in your loss function instead")
    if loss is None:
        def loss(logits, y):
            return F.cross_entropy(logits, y, label_smoothing=label_smoothing)

    def loss_fn(params, state, x, y, noise):
        with torch.autocast(x.device.type, torch.bfloat16, enabled=precision == "bf16"):
            logits, new_state = model.forward(params, state, x, train=True, noise=noise)
        new_state = {k: v.to(state[k].dtype) for k, v in new_state.items()}
        out = loss(logits.float(), y)
        value, aux = out if isinstance(out, tuple) else (out, {})
        return value, (new_state, aux)

    def step(params, state, opt_state, x, y, noise):
        grads, (value, (state, aux)) = grad_and_value(loss_fn, has_aux=True)(params, state, x, y, noise)
        if average is not None:
            grads, value, state = average(grads, value, state)
        params, opt_state = opt.update(grads, opt_state, params)
        return params, state, opt_state, value, aux

    return step


def make_multi_step(step: Callable, k: int) -> Callable:
    """``k`` train steps as one pure function with the step's signature: ``x``, ``y`` and ``noise`` hold
    ``k`` batches one after another, taken in order; the loss (and each ``aux`` value) has the ``k``
    steps' values stacked."""

    def multi_step(params, state, opt_state, x, y, noise):
        losses, auxes = [], []
        chunks = {name: n.chunk(k) for name, n in noise.items()}
        for j, (xj, yj) in enumerate(zip(x.chunk(k), y.chunk(k))):
            params, state, opt_state, loss, aux = step(params, state, opt_state, xj, yj,
                                                       {name: c[j] for name, c in chunks.items()})
            losses.append(loss)
            auxes.append(aux)
        return params, state, opt_state, torch.stack(losses), {a: torch.stack([x[a] for x in auxes]) for a in auxes[0]}

    return multi_step


def compile_step(fn: Callable, device) -> Callable:
    """``fn`` as one ``torch.compile``\\ d graph with static shapes, compiled for ``device``.

    Compiling happens at the first call; if it fails (no C++ compiler, a cache folder that cannot
    be written, ...), that call raises a one-line :class:`~mnistfx.MnistfxError` that says so.
    """
    options = CPU_COMPILE_OPTIONS if torch.device(device).type == "cpu" else None
    compiled = torch.compile(fn, fullgraph=True, dynamic=False, options=options)
    ready = False

    def call(*args):
        nonlocal ready
        if ready:
            return compiled(*args)
        try:
            out = compiled(*args)
        except Exception as e:  # inductor wraps what went wrong (OSError, CalledProcessError, ...) in its own errors
            for inner in _causes(e):  # not the compiler's: a rank was stopped, or a peer failed
                if isinstance(inner, MnistfxError) or is_collective_failure(inner):
                    raise inner from None
            cause = (str(e).strip().splitlines() or [type(e).__name__])[-1][:160]
            raise MnistfxError(f"torch.compile failed ({cause}): run with --no-compile (a model of one's own must "
                               "also trace under torch.compile), or point TORCHINDUCTOR_CACHE_DIR at a writable "
                               "folder with room") from None
        ready = True
        return out

    return call


def _causes(e: BaseException):
    """``e`` and the exceptions it was raised from (dynamo wraps what happens while it traces)."""
    seen = []
    while e is not None and len(seen) < 20 and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def check_trainable(model: Model, params: dict, state: dict, images: torch.Tensor, labels: torch.Tensor, *,
                    loss: Callable | None = None) -> None:
    """:func:`~mnistfx.models.check_model` on two of ``images`` prepared as a training batch (with
    generators of its own, so a run's random streams are untouched), before a step is compiled."""
    idx = torch.arange(2, device=images.device)
    x, noise = batch_inputs(model, images, idx, aug_key=0, drop_key=0)
    with torch.no_grad():
        check_model(model, params, state, x, labels[idx], noise, loss)


def augment_batch(model: Model, x01: torch.Tensor, *, key, faithful_fill: bool = False,
                  rows: torch.Tensor | None = None, n: int | None = None) -> torch.Tensor:
    """The training augmentation of a batch of [0, 1] images, returned as model input.

    By default one warp (rotation, shift and scale together) fills with the background. With
    ``faithful_fill`` the notebook's order is kept: rotate, normalise, then shift and scale,
    whose fill 0 is mid-grey in normalised space. With ``rows``, ``x01`` holds those rows of a batch
    of ``n`` images, and the random numbers are drawn for all ``n``.
    """
    if not faithful_fill:
        return model.normalize_input(random_affine(x01, key=key, rows=rows, n=n))
    x = model.normalize_input(random_affine(x01, key=key, translate=0.0, scale=(1.0, 1.0), rows=rows, n=n))
    return random_affine(x, key=key, degrees=0.0, rows=rows, n=n)


def batch_inputs(model: Model, images: torch.Tensor, idx: torch.Tensor, *, aug_key, drop_key,
                 augment: bool = True, faithful_fill: bool = False, members: int | None = None,
                 rows: torch.Tensor | None = None):
    """The model input and dropout noise for the training batch ``images[idx]``.

    Arguments:
        model: the model.
        images: uint8 images (N, 28, 28), (N, 1, 28, 28) or (N, 784), on the device the step runs on.
        idx: the batch's indices into ``images``.
        aug_key, drop_key: ``torch.Generator`` (or seeds) for the augmentation and dropout.
        augment, faithful_fill: as in :class:`~mnistfx.TrainConfig`.
        members: for an ensemble step, draw this many members' noise (stacked on a leading axis);
            the images are shared.
        rows: make only these positions of ``idx`` (a data-parallel rank's shard); the random numbers
            are drawn for all of ``idx`` and these rows kept, so they are the single-process run's.

    Returns:
        ``(x, noise)`` for the train step.
    """
    n = idx.shape[0]
    if rows is not None:
        check_rows(rows, n, rows.numel() if isinstance(rows, torch.Tensor) else -1)
    x = check_images(images)[idx if rows is None else idx[rows]].reshape(-1, 1, 28, 28).float() / 255.0
    x = (augment_batch(model, x, key=aug_key, faithful_fill=faithful_fill, rows=rows, n=n) if augment
         else model.normalize_input(x))
    g = as_generator(drop_key, images.device)  # one generator: each member's noise is its own

    def noise():
        drawn = model.dropout_noise(n, key=g, device=images.device)
        return drawn if rows is None else {k: v[rows] for k, v in drawn.items()}

    return x, (noise() if members is None else stack([noise() for _ in range(members)]))
