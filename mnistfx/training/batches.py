"""A training batch's inputs, made outside the step: an index gather from the uint8 images resident on
the device, one batched affine warp, and the dropout noise (aten's ``grid_sample`` is faster here than
inductor's version of it)."""

from __future__ import annotations

from typing import Any

import torch

from .._types import Key
from ..data.augment import Augmentation, check_rows, random_affine
from ..models.ensemble import stack
from ..models.model import Model, check_images
from ..rng import as_generator


def augment_batch(
    model: Model,
    x01: torch.Tensor,
    *,
    key: Key,
    faithful_fill: bool = False,
    extra: Augmentation | None = None,
    rows: torch.Tensor | None = None,
    n: int | None = None,
) -> torch.Tensor:
    """The training augmentation of a batch of [0, 1] images, returned as model input.

    By default one warp (rotation, shift and scale together) fills with the background. With
    ``faithful_fill`` the notebook's order is kept: rotate, normalise, then shift and scale,
    whose fill 0 is mid-grey in normalised space. ``extra`` augmentations follow the warp (not with
    ``faithful_fill``), from the same generator. With ``rows``, ``x01`` holds those rows of a batch
    of ``n`` images, and the random numbers are drawn for all ``n``.
    """
    if not faithful_fill:
        x01 = random_affine(x01, key=key, rows=rows, n=n)
        return model.normalize_input(x01 if extra is None else extra(x01, key=key, rows=rows, n=n))
    if extra:
        raise ValueError("the notebook's warp (faithful_fill) takes no other augmentation")
    x = model.normalize_input(random_affine(x01, key=key, translate=0.0, scale=(1.0, 1.0), rows=rows, n=n))
    return random_affine(x, key=key, degrees=0.0, rows=rows, n=n)


def batch_inputs(
    model: Model,
    images: torch.Tensor,
    idx: torch.Tensor,
    *,
    aug_key: Key,
    drop_key: Key,
    augment: bool = True,
    faithful_fill: bool = False,
    extra: Augmentation | None = None,
    members: int | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Any]:
    """The model input and dropout noise for the training batch ``images[idx]``.

    Arguments:
        model: the model.
        images: uint8 images (N, 28, 28), (N, 1, 28, 28) or (N, 784), on the device the step runs on.
        idx: the batch's indices into ``images``.
        aug_key: a ``torch.Generator`` (or seed) for the augmentation.
        drop_key: a ``torch.Generator`` (or seed) for the dropout noise.
        augment: whether to augment, as in :class:`~mnistfx.TrainConfig`.
        faithful_fill: the notebook's fill, as in :class:`~mnistfx.TrainConfig`.
        extra: the augmentations after the warp (``TrainConfig``'s ``aug_*`` fields), when ``augment``.
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
    x = (
        augment_batch(model, x, key=aug_key, faithful_fill=faithful_fill, extra=extra, rows=rows, n=n)
        if augment
        else model.normalize_input(x)
    )
    g = as_generator(drop_key, images.device)  # one generator: each member's noise is its own

    def noise():
        drawn = model.dropout_noise(n, key=g, device=images.device)
        return drawn if rows is None else {k: v[rows] for k, v in drawn.items()}

    return x, (noise() if members is None else stack([noise() for _ in range(members)]))
