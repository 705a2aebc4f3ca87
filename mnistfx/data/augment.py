"""Batched augmentation: one random affine warp (rotation, translation, scale) per batch, and the
per-image elastic distortion, random erasing and Gaussian noise of :class:`Augmentation`."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Augmentation:
    """Augmentations drawn per image after the affine warp, none of them one of MNIST-C's corruptions.

    Each is off at 0. The random numbers of a batch of ``n`` come from one generator in a fixed order
    (elastic field, erasing, noise), each drawn only when its augmentation is on, so a run without them
    draws what it drew before they existed.

    Attributes:
        noise: additive Gaussian noise, N(0, s²) per pixel with s ~ U(0, ``noise``) per image, the result
            clipped to [0, 1] (unlike MNIST-C's shot noise, Poisson, or impulse noise, salt and pepper).
        erase: the probability that an image has a rectangle replaced by uniform noise: random erasing
            (Zhong et al. 2020) with ``torchvision.transforms.RandomErasing``'s draws (2-33 % of the area,
            aspect ratio 0.3-3.3 on a log scale); a side that would not fit is cut to 27 pixels.
        elastic: the strength ``alpha`` of an elastic distortion (Simard et al. 2003), as
            ``torchvision.transforms.v2.ElasticTransform``'s: a field of U(-1, 1) per pixel and axis,
            blurred by a Gaussian of ``elastic_sigma``, times ``alpha / 28`` in grid units (``alpha / 2``
            pixels per unit of the blurred field); bilinear, black outside the image.
        elastic_sigma: the smoothness of the elastic field, in pixels (at most 6: the blur's reflected
            padding must fit in the image).
    """

    noise: float = 0.0
    erase: float = 0.0
    elastic: float = 0.0
    elastic_sigma: float = 5.0

    def __bool__(self) -> bool:
        return bool(self.noise or self.erase or self.elastic)

    def __call__(
        self, x: torch.Tensor, *, key: Key, rows: torch.Tensor | None = None, n: int | None = None
    ) -> torch.Tensor:
        """Augment a batch of [0, 1] images (N, 1, 28, 28); ``rows`` and ``n`` as :func:`random_affine`'s."""
        if not self:
            return x
        size: int = x.shape[0]
        if rows is not None:
            check_rows(rows, n, x.shape[0])
            size = n  # type: ignore[assignment]  # check_rows: a whole number
        g = as_generator(key, x.device)

        def draw(*shape: int, normal: bool = False) -> torch.Tensor:
            make = torch.randn if normal else torch.rand
            u = make(size, *shape, generator=g, device=x.device, dtype=torch.float32)
            return u if rows is None else u[rows]

        side = x.shape[2:]
        if self.elastic:
            x = elastic_warp(x, elastic_field(draw(2, *side), self.elastic, self.elastic_sigma))
        if self.erase:
            x = random_erase(x, draw(5), draw(1, *side), self.erase)
        if self.noise:
            x = (x + self.noise * draw(1, 1, 1) * draw(1, *side, normal=True)).clamp(0, 1)
        return x


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` kernel for ``sigma``: ``int(8 sigma + 1)`` taps (made odd), normalised."""
    k = int(8 * sigma + 1)
    k += 1 - k % 2
    t = torch.linspace(-(k - 1) / 2, (k - 1) / 2, k)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def elastic_field(u: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """The displacement, in ``grid_sample`` units, of uniform draws ``u`` in [0, 1) of shape (N, 2, H, W):
    ``2u - 1`` blurred (reflected edges) by a Gaussian of ``sigma``, times ``alpha / W`` (x) and ``alpha / H``
    (y). Returns (N, H, W, 2), as torchvision's ``ElasticTransform`` makes one image's."""
    n, _, h, w = u.shape
    kernel = gaussian_kernel(sigma).to(u)
    pad = kernel.numel() // 2
    field = F.pad((2 * u - 1).reshape(2 * n, 1, h, w), (pad, pad, pad, pad), mode="reflect")
    field = F.conv2d(F.conv2d(field, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    field = field.reshape(n, 2, h, w) * torch.tensor([alpha / w, alpha / h], device=u.device).view(1, 2, 1, 1)
    return field.permute(0, 2, 3, 1)


def elastic_warp(x: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) sampled bilinearly at the pixel centres moved by ``displacement`` (N, H, W, 2),
    black outside: torchvision's ``elastic_image`` for each image."""
    _, _, h, w = x.shape
    ys = torch.linspace((1 - h) / h, (h - 1) / h, h, device=x.device)
    xs = torch.linspace((1 - w) / w, (w - 1) / w, w, device=x.device)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)
    return F.grid_sample(x, grid + displacement.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def random_erase(x: torch.Tensor, u: torch.Tensor, fill: torch.Tensor, p: float) -> torch.Tensor:
    """Random erasing from draws ``u`` in [0, 1) (N, 5): whether (``u[:, 0] < p``), the area (2-33 %), the
    log aspect ratio (0.3-3.3), the top and left of the rectangle, whose pixels take ``fill`` (N, C, H, W)."""
    _, _, h, w = x.shape
    area = h * w * (0.02 + 0.31 * u[:, 1])
    aspect = torch.exp(math.log(0.3) + (math.log(10 / 3) - math.log(0.3)) * u[:, 2])
    eh = torch.round(torch.sqrt(area * aspect)).clamp(1, h - 1)
    ew = torch.round(torch.sqrt(area / aspect)).clamp(1, w - 1)
    top = torch.floor(u[:, 3] * (h - eh + 1))
    left = torch.floor(u[:, 4] * (w - ew + 1))
    r = torch.arange(h, device=x.device).view(1, h, 1)
    c = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (r >= top.view(-1, 1, 1)) & (r < (top + eh).view(-1, 1, 1))
    inside = inside & (c >= left.view(-1, 1, 1)) & (c < (left + ew).view(-1, 1, 1)) & (u[:, 0] < p).view(-1, 1, 1)
    return torch.where(inside.unsqueeze(1), fill.to(x.dtype), x)
