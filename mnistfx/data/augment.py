"""Batched augmentation: one random affine warp (rotation, translation, scale) per batch."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from .._types import Key
from ..constants import MAX_BATCH_SIZE, MAX_STEPS_PER_CALL
from ..rng import as_generator

MAX_ROWS_OF = MAX_BATCH_SIZE * MAX_STEPS_PER_CALL  # the largest batch a call of the train step draws for


def random_affine(
    x: torch.Tensor,
    *,
    key: Key,
    degrees: float = 15.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.9, 1.1),
    fill: float = 0.0,
    rows: torch.Tensor | None = None,
    n: int | None = None,
) -> torch.Tensor:
    """Rotate, scale and shift every image of a batch by its own random amount, in one warp.

    The draws follow torchvision's ``RandomRotation(degrees)`` then ``RandomAffine(0,
    translate, scale)``: angle ~ U(±degrees), shifts are whole pixels, round(U(±translate·28)),
    scale ~ U(scale); the warp is about the image centre with nearest-neighbour sampling.

    Arguments:
        x: float images of shape (N, 1, H, W).
        key: an ``int`` seed or a ``torch.Generator`` on ``x.device``.
        degrees: the largest rotation, in degrees either way.
        translate: the largest shift, as a fraction of the image's side, either way.
        scale: the range ``(low, high)`` of the scale factor.
        fill: the value of pixels that come from outside the image.
        rows, n: ``x`` holds these rows of a batch of ``n`` images: the random numbers are drawn for
            all ``n`` and these rows warped (a data-parallel rank's shard of a global batch).

    Returns:
        The warped images, same shape and dtype.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        what = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"random_affine takes float images of shape (N, C, H, W), not a {what}")
    _, _, h, w = x.shape
    size = x.shape[0]
    if rows is not None:
        check_rows(rows, n, x.shape[0])
        size = n  # type: ignore[assignment]  # check_rows: a whole number
    u = torch.rand(size, 4, generator=as_generator(key, x.device), device=x.device, dtype=torch.float32)
    if rows is not None:
        u = u[rows]
    angle = (2 * u[:, 0] - 1) * math.radians(degrees)
    # Whole-pixel shifts, converted to grid units (the grid spans 2 over W pixels).
    tx = torch.round((2 * u[:, 1] - 1) * translate * w) * (2.0 / w)
    ty = torch.round((2 * u[:, 2] - 1) * translate * h) * (2.0 / h)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 3]
    # The grid maps output to input coordinates: the inverse of (rotate, scale, shift).
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack(
        [
            torch.stack([cos, sin, -(cos * tx + sin * ty)], 1),
            torch.stack([-sin, cos, sin * tx - cos * ty], 1),
        ],
        1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if fill == 0.0:
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return F.grid_sample(x - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False) + fill


def check_rows(rows, n, count: int) -> None:
    """``rows`` must be ``count`` positions in a batch of ``n`` (an int64 vector of values in [0, n))."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_ROWS_OF:
        raise ValueError(f"rows need n, the size of the whole batch they are rows of (1 to {MAX_ROWS_OF}), not {n!r}")
    if (
        not isinstance(rows, torch.Tensor)
        or rows.dtype != torch.int64
        or rows.dim() != 1
        or not rows.numel()
        or rows.numel() != count
        # their values only on the CPU: on a GPU reading them would wait for the device at every step
        or (rows.device.type == "cpu" and not 0 <= int(rows.min()) <= int(rows.max()) < n)
    ):
        raise ValueError(
            f"rows must be a non-empty int64 vector of {'the ' if count < 0 else count} positions in a "
            f"batch of {n}, one per image"
        )
