"""MNIST-C's 15 corruptions (Mu & Gilmer 2019), applied to a batch of MNIST images.

MNIST-C (github.com/google-research/mnist-c, ``corruptions.py``) corrupts the MNIST test images with 15
functions, each at one fixed severity: the default of its ``severity`` argument. Written here from those
definitions (no code of theirs); the numbers below are the values each function of ``corruptions.py``
takes at its default severity:

- ``shot_noise`` (severity 5 of ``[60, 25, 12, 5, 3]``: c = 3): ``Poisson(x * 3) / 3`` of the image in
  [0, 1], clipped to [0, 1].
- ``impulse_noise`` (severity 4 of ``[.03, .06, .09, .17, .27]``: amount 0.17): scikit-image's
  ``random_noise(mode='s&p', amount=0.17)``: each pixel is hit with probability 0.17, and a hit one
  becomes 0 or 255 with even odds (written here: three lines, and scikit-image is not needed).
- ``glass_blur`` (severity 1 of ``(sigma, max_delta, iterations)``: (0.7, 1, 2)): a Gaussian blur of
  sigma 0.7, truncated to uint8; then twice, for rows and columns 27 down to 2, with even odds, a swap of
  the pixel with the one ``(dy, dx)`` away, each of dy and dx drawn from {-1, 0} (NumPy's
  ``randint(-1, 1)``); then the blur again. MNIST-C calls scikit-image's ``gaussian(...,
  multichannel=True)`` on a 2-D image, which takes the columns for colour channels: its blur runs down
  the columns only (sigma (0.7, 0)), and so does this one, through SciPy's ``gaussian_filter`` (the
  function scikit-image calls, ``mode='nearest'``, ``truncate=4``).
- ``motion_blur`` (severity 1 of ``(radius, sigma)``: (10, 3), angle ~ U(-45°, 45°)): ImageMagick's
  ``MotionBlurImage`` through Wand. ImageMagick is not a Python library, so its definition is written
  here (MagickCore ``effect.c`` and ``gem.c``): a one-sided line kernel of ``2 * ceil(radius) + 1`` = 21
  taps with weights ``exp(-i² / (2 sigma²))`` (i = 0..20), normalised; tap i reads the pixel
  ``(ceil(i cos a - 0.5), ceil(i sin a - 0.5))`` columns and rows away, pixels past the edge repeating
  the edge (the default virtual-pixel method). The sum is in 16-bit quanta (257 per 8-bit step), rounded
  to a whole quantum as a Q16 build does; the 8-bit PNG that MNIST-C reads back holds ``floor(q / 257)``
  (what ImageMagick 6.9.11 Q16 writes: its ``convert -motion-blur`` gives these bytes exactly, and
  ``tests/test_corruptions.py`` checks that where it is installed).
- ``shear`` (severity 2 of ``[.2, .4, .6, .8, 1.]``: 0.4, direction ±1 at random), ``rotate`` (severity 2
  of the same list: ±0.4 rad), ``scale`` (severity 3 of ``[1/.9, 1/.8, 1/.7, 1/.6, 1/.5]``: 1/0.7 on both
  axes), ``translate`` (severity 3 of ``[1, 2, 3, 4, 5]``: 3 pixels, the sign of each axis at random):
  scikit-image's ``warp(x, inverse_map=AffineTransform(...))``, order 1 (bilinear), 0 outside the image,
  the three first with the translation that keeps the centre (13.5, 13.5) in place. The map takes an
  output pixel to the point it reads, so ``scale`` shrinks the digit by 0.7 and ``translate`` moves it
  by ``-(dx, dy)``. The shear matrix is the 2019 scikit-image's, ``[[1, -sin c], [0, cos c]]`` (it
  defines shear as an angle; scikit-image 0.21 changed what ``shear=`` means). Done here by torch's
  ``grid_sample`` (bilinear, zeros, ``align_corners=True``: pixel centres at whole coordinates, as
  scikit-image's).
- ``brightness`` (severity 5 of ``[.1, .2, .3, .4, .5]``: 0.5): gray to RGB to HSV, V + 0.5 clipped to
  1, back to RGB and gray: for a gray image exactly ``min(x + 0.5, 1)``.
- ``stripe``: the columns 0-6 and 21-27 inverted (``255 - x``).
- ``fog`` (severity 5 of ``(c0, wibbledecay)``: (3.0, 1.4)): ``x + 3 * plasma[:28, :28]``, scaled by
  ``max(x) / (max(x) + 3)`` and clipped; the plasma is a 256x256 diamond-square fractal (its
  ``plasma_fractal``: starting wibble 100, each midpoint the mean of its four neighbours (wrapping) plus
  ``wibble * U(-wibble, wibble)``, wibble divided by 1.4 each level), normalised to [0, 1].
- ``spatter`` (severity 4 of ``(loc, scale, sigma, threshold, mask_sigma, mud)``: (0.65, 0.3, 1, 0.65,
  1.5, mud)): a N(0.65, 0.3²) layer blurred with sigma 1; the mask of where it exceeds 0.65 blurred with
  sigma 1.5, values under 0.8 set to 0; ``x * (1 - m) + (63 / 255) * m``. Blurs by SciPy's
  ``gaussian_filter`` as above (both axes here).
- ``dotted_line``: its ``line_from_points`` from column 0, row r0 to column 27, row r1 (r0, r1 in
  0..26): ``1 + log(1 - d / 2.3)`` clipped to [0, 1], d the vertical distance to the line, kept in the
  columns ``floor(c0)`` to ``ceil(c1) - 1``, then only the columns whose ``c // 2`` is odd (2, 3, 6, 7,
  ...); added to the image and clipped.
- ``zigzag``: the same lines between the points of a zigzag (teeth 2 long and 2 high) from column 2,
  row r0 (0..26) towards column 25, row ``r0 + U{-5..4}``, turned to that slope; added and clipped.
- ``canny_edges``: scikit-image's ``feature.canny`` (sigma 1, thresholds 0.1 and 0.2) of the image in
  [0, 1]; the edges 255, the rest 0.

MNIST-C's functions return float32 in [0, 255]; its data set stores uint8 (TensorFlow Datasets'
``mnist_corrupted`` reads them as uint8 images of 28x28x1). Here each result is cast to float32 and
rounded to the nearest whole number, halves to even (``np.round``, as the ``round_and_astype`` of
MNIST-C's ``visualize_corruptions`` notebook does). ``brightness`` lands on halves (x + 127.5), so its
result is x + 128 for even x and x + 127 for odd x.

Randomness: image ``i`` of a call draws from its own NumPy generator,
``numpy.random.default_rng([fold_in(seed, "corrupt/" + name), start + i])``: its corruption depends on
the seed, the corruption, its position ``start + i`` and its own pixels, never on the other images of
the batch, so a batch in slices (each with its ``start``) is corrupted as the whole. Neither torch's nor
NumPy's global random generator is read or written.

SciPy and scikit-image are the optional ``robustness`` extra (``pip install 'mnistfx[robustness]'``),
imported by the three corruptions that use them: ``glass_blur`` and ``spatter`` (SciPy) and
``canny_edges`` (scikit-image).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from .._checks import check_choice, check_whole
from ..constants import CORRUPTIONS, MAX_SEED
from ..errors import MnistfxError
from ..rng import fold_in

MAX_CORRUPT_IMAGES = 70_000  # all of MNIST in one call; more in slices, each with its `start`
_INSTALL = "pip install 'mnistfx[robustness]'"
_SIDE = 28
_CENTRE = 13.5  # the image's centre in pixel coordinates, which shear, rotate and scale keep in place
_CHUNK = 4096  # images warped at once: bounds the memory of the sampling grid
_FOG_CHUNK = 128  # images whose 256x256 plasma is made at once (about 70 MB)

Streams = list[np.random.Generator]


def corrupt(images: torch.Tensor, name: str, *, seed: int, start: int = 0) -> torch.Tensor:
    """MNIST-C's corruption ``name`` at its benchmark severity, applied to each image.

    :data:`CORRUPTIONS` names the 15 in MNIST-C's order; each is MNIST-C's operation with the parameters
    of its benchmark (the docstring of ``mnistfx/data/corruptions.py`` gives them, from MNIST-C's
    ``corruptions.py``), rounded to uint8 as its data set stores them. The same images, name, seed and
    start give the same bytes.

    Arguments:
        images: uint8 tensor (N, 28, 28) of MNIST-like digits (light on black), N at most 70,000.
        name: one of :data:`CORRUPTIONS`.
        seed: the seed of the random ones (from 0 to 2**63 - 1); ``stripe``, ``scale``,
            ``brightness`` and ``canny_edges`` draw nothing.
        start: the position of ``images[0]`` in the whole set (each image draws from the stream of its
            position, so ``corrupt(x[a:b], name, seed=s, start=a)`` is ``corrupt(x, name, seed=s)[a:b]``).

    Returns:
        The corrupted images: uint8 tensor (N, 28, 28) of 0-255, on the images' device.

    Raises:
        ConfigError: ``name`` is not one of :data:`CORRUPTIONS`, or ``seed`` or ``start`` is not a whole
            number in range.
        TypeError: ``images`` is not a uint8 tensor.
        ValueError: ``images`` is not of shape (N, 28, 28), or holds more than 70,000 images.
        MnistfxError: the corruption needs SciPy or scikit-image and it is not installed.
    """
    check_choice("`name`", name, CORRUPTIONS)
    _check_images(images)
    seed = check_whole("`seed`", seed, 0, MAX_SEED)
    start = check_whole("`start`", start, 0, MAX_SEED)
    if not len(images):
        return images.clone()
    function, draws = _FUNCTIONS[name]
    x = images.detach().cpu().numpy()
    streams = _streams(seed, name, start, len(x)) if draws else []
    return torch.from_numpy(_to_uint8(function(x, streams))).to(images.device)


def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        what = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(
            f"images must be a uint8 tensor (0-255), not {what}: "
            "convert float images in [0, 1] with (images * 255).round().to(torch.uint8)"
        )
    if images.dim() != 3 or tuple(images.shape[1:]) != (_SIDE, _SIDE):
        raise ValueError(f"images must have shape (N, 28, 28), not {tuple(images.shape)}")
    if len(images) > MAX_CORRUPT_IMAGES:
        raise ValueError(
            f"corrupt takes at most {MAX_CORRUPT_IMAGES:,} images a call, not {len(images):,}: "
            "pass them in slices, each with its `start`"
        )


def _streams(seed: int, name: str, start: int, n: int) -> Streams:
    """One NumPy generator per image, from the seed, the corruption and the image's position."""
    base = fold_in(seed, f"corrupt/{name}")
    return [np.random.default_rng([base, start + i]) for i in range(n)]


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """MNIST-C's float32 results in [0, 255] as uint8: rounded to the nearest, halves to even."""
    return np.clip(np.round(values.astype(np.float32)), 0, 255).astype(np.uint8)


def _gaussian_filter(corruption: str) -> Callable[..., np.ndarray]:
    try:
        from scipy.ndimage import gaussian_filter
    except ImportError:
        raise MnistfxError(f"{corruption} needs SciPy: {_INSTALL}") from None
    return gaussian_filter


# The corruptions: uint8 images (N, 28, 28) and one generator per image in, float values in [0, 255] out.


def _shot_noise(x: np.ndarray, streams: Streams) -> np.ndarray:
    c = 3.0
    counts = np.stack([g.poisson(image / 255.0 * c) for g, image in zip(streams, x, strict=True)])
    return np.clip(counts / c, 0, 1) * 255


def _impulse_noise(x: np.ndarray, streams: Streams) -> np.ndarray:
    amount = 0.17
    u = np.stack([g.random((2, _SIDE, _SIDE)) for g in streams])
    hit, salt = u[:, 0] < amount, u[:, 1] < 0.5
    out = x.astype(np.float64)
    out[hit & salt] = 255
    out[hit & ~salt] = 0
    return out


def _glass_blur(x: np.ndarray, streams: Streams) -> np.ndarray:
    sigma, delta, iterations = 0.7, 1, 2
    gaussian_filter = _gaussian_filter("glass_blur")

    def blur(images: np.ndarray) -> np.ndarray:  # down the columns only, as MNIST-C's call does
        return gaussian_filter(images, sigma=(0, sigma, 0), mode="nearest", truncate=4.0)

    y = (blur(x / 255.0) * 255).astype(np.uint8)
    places = range(_SIDE - delta, delta, -1)  # 27 down to 2, for rows and for columns
    k = len(places)
    swaps = np.stack([g.random((iterations, k, k)) < 0.5 for g in streams])
    shifts = np.stack([g.integers(-delta, delta, size=(iterations, k, k, 2)) for g in streams])  # (dx, dy)
    every = np.arange(len(x))
    for it in range(iterations):
        for a, h in enumerate(places):
            for b, w in enumerate(places):
                n = every[swaps[:, it, a, b]]
                h2, w2 = h + shifts[n, it, a, b, 1], w + shifts[n, it, a, b, 0]
                here = y[n, h, w]
                y[n, h, w] = y[n, h2, w2]
                y[n, h2, w2] = here
    return np.clip(blur(y / 255.0), 0, 1) * 255


def _motion_blur(x: np.ndarray, streams: Streams) -> np.ndarray:
    radius, sigma = 10.0, 3.0
    width = int(2 * math.ceil(radius) + 1)  # ImageMagick's GetOptimalKernelWidth1D for a radius > 0
    taps = np.arange(width, dtype=np.float64)
    kernel = np.exp(-(taps * taps) / (2 * sigma * sigma))
    kernel /= kernel.sum()
    degrees = np.array([g.uniform(-45, 45) for g in streams])
    angle = np.pi * degrees / 180.0
    px, py = width * np.sin(angle), width * np.cos(angle)
    length = np.hypot(px, py)[:, None]
    dx = np.ceil(taps * py[:, None] / length - 0.5).astype(np.int64)  # (N, width): columns away
    dy = np.ceil(taps * px[:, None] / length - 0.5).astype(np.int64)  # rows away
    n = len(x)
    quanta = x.reshape(n, -1).astype(np.float64) * 257  # 8-bit PNG values as 16-bit quanta
    side = np.arange(_SIDE)
    total = np.zeros((n, _SIDE * _SIDE))
    for i in range(width):
        rows = np.clip(side[None, :] + dy[:, i : i + 1], 0, _SIDE - 1)
        cols = np.clip(side[None, :] + dx[:, i : i + 1], 0, _SIDE - 1)
        index = (rows[:, :, None] * _SIDE + cols[:, None, :]).reshape(n, -1)
        total += kernel[i] * np.take_along_axis(quanta, index, axis=1)
    q = np.floor(np.clip(total, 0, 65535) + 0.5)  # ClampToQuantum, Q16
    return np.floor(q / 257).reshape(n, _SIDE, _SIDE)  # the 8-bit PNG it writes: floor, not nearest


def _centred(a: np.ndarray) -> np.ndarray:
    """The maps (N, 2, 3) of the linear parts ``a`` (N, 2, 2) that keep the centre in place."""
    return np.concatenate([a, (_CENTRE * (1 - a.sum(axis=2)))[:, :, None]], axis=2)


def _warp(x: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """scikit-image's ``warp(image, inverse_map)`` for each image: output pixel (col, row) takes the
    bilinear value at ``map @ (col, row, 1)`` of the image in [0, 1], 0 outside."""
    side = np.arange(_SIDE, dtype=np.float64)
    cols, rows = np.meshgrid(side, side)  # (28, 28) each: the output pixel's column and row
    out = np.empty(x.shape, np.float64)
    for s in range(0, len(x), _CHUNK):
        m = maps[s : s + _CHUNK, :, :, None, None]
        src = m[:, :, 0] * cols + m[:, :, 1] * rows + m[:, :, 2]  # (n, 2, 28, 28): column, row read
        grid = torch.from_numpy(np.moveaxis(src * (2.0 / (_SIDE - 1)) - 1, 1, -1).copy())
        images = torch.from_numpy(x[s : s + _CHUNK, None] / 255.0)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out[s : s + _CHUNK] = warped[:, 0].numpy()
    return np.clip(out, 0, 1) * 255


def _signs(streams: Streams, k: int = 1) -> np.ndarray:
    return np.stack([g.choice(np.array([-1.0, 1.0]), k) for g in streams])  # (N, k)


def _shear(x: np.ndarray, streams: Streams) -> np.ndarray:
    c = 0.4 * _signs(streams)[:, 0]
    zero, one = np.zeros_like(c), np.ones_like(c)
    a = np.stack([np.stack([one, -np.sin(c)], 1), np.stack([zero, np.cos(c)], 1)], 1)
    return _warp(x, _centred(a))


def _scale(x: np.ndarray, streams: Streams) -> np.ndarray:
    s = 1 / 0.7
    a = np.broadcast_to(np.array([[s, 0.0], [0.0, s]]), (len(x), 2, 2))
    return _warp(x, _centred(a))


def _rotate(x: np.ndarray, streams: Streams) -> np.ndarray:
    c = 0.4 * _signs(streams)[:, 0]
    a = np.stack([np.stack([np.cos(c), -np.sin(c)], 1), np.stack([np.sin(c), np.cos(c)], 1)], 1)
    return _warp(x, _centred(a))


def _translate(x: np.ndarray, streams: Streams) -> np.ndarray:
    shift = 3 * _signs(streams, 2)  # (dx, dy): the pixel read is (col + dx, row + dy)
    maps = np.zeros((len(x), 2, 3))
    maps[:, 0, 0] = maps[:, 1, 1] = 1
    maps[:, :, 2] = shift
    return _warp(x, maps)


def _brightness(x: np.ndarray, streams: Streams) -> np.ndarray:
    return np.minimum(x / 255.0 + 0.5, 1) * 255


def _stripe(x: np.ndarray, streams: Streams) -> np.ndarray:
    out = x.astype(np.float64)
    for cols in (slice(None, 7), slice(21, None)):
        out[:, :, cols] = 255 - out[:, :, cols]
    return out


def _plasma(streams: Streams, size: int = 256, decay: float = 1.4) -> np.ndarray:
    """MNIST-C's ``plasma_fractal`` for each stream, normalised to [0, 1]; the top-left 28x28 of each.

    Diamond-square, a level at a time: ``grid`` holds the heights at the corners of the current squares
    (wrapping around), and each level adds the squares' centres, then the midpoints of their top and left
    sides, each the mean of its four neighbours plus ``wibble * U(-wibble, wibble)``.
    """
    count = len(streams)
    noise = np.empty((count, size * size - 1), np.float32)  # the 65,535 draws of the whole map
    for stream, row in zip(streams, noise, strict=True):
        stream.random(dtype=np.float32, out=row)
    noise *= 2
    noise -= 1  # U(-1, 1)
    used = 0
    wibble = 100.0
    grid = np.zeros((count, 1, 1), np.float32)

    def wibbled(four: np.ndarray) -> np.ndarray:
        nonlocal used
        n = four.shape[1]
        u = noise[:, used : used + n * n].reshape(four.shape)
        used += n * n
        return four / 4 + u * np.float32(wibble * wibble)

    while True:
        n = grid.shape[1]
        g = np.concatenate([grid, grid[:, :1]], axis=1)
        g = np.concatenate([g, g[:, :, :1]], axis=2)  # corner (i, j) at g[i, j], wrapping to row and column n
        centres = wibbled(g[:, :-1, :-1] + g[:, 1:, :-1] + g[:, :-1, 1:] + g[:, 1:, 1:])
        c = np.concatenate([centres[:, -1:], centres], axis=1)
        c = np.concatenate([c[:, :, -1:], c], axis=2)  # centre (i, j) at c[i + 1, j + 1], wrapping to row -1
        top = wibbled(c[:, 1:, 1:] + c[:, :-1, 1:] + g[:, :-1, :-1] + g[:, :-1, 1:])  # centres above and below
        left = wibbled(c[:, 1:, 1:] + c[:, 1:, :-1] + g[:, :-1, :-1] + g[:, 1:, :-1])  # centres left and right
        parts = ((0, 0, grid), (0, 1, top), (1, 0, left), (1, 1, centres))  # (row, column) in a 2x2 cell
        if 2 * n == size:
            break
        grid = np.empty((count, 2 * n, 2 * n), np.float32)
        for r, col, part in parts:
            grid[:, r::2, col::2] = part
        wibble /= decay
    # The whole map is needed only for its minimum and maximum: the last level is not interleaved.
    low = np.min([part.min(axis=(1, 2)) for _, _, part in parts], axis=0)[:, None, None]
    high = np.max([part.max(axis=(1, 2)) for _, _, part in parts], axis=0)[:, None, None]
    crop = np.empty((count, _SIDE, _SIDE), np.float32)
    for r, col, part in parts:
        crop[:, r::2, col::2] = part[:, : _SIDE // 2, : _SIDE // 2]
    return ((crop - low) / (high - low)).astype(np.float64)


def _fog(x: np.ndarray, streams: Streams) -> np.ndarray:
    c = 3.0
    plasma = np.concatenate([_plasma(streams[s : s + _FOG_CHUNK]) for s in range(0, len(x), _FOG_CHUNK)])
    y = x / 255.0
    top = y.max(axis=(1, 2), keepdims=True)
    return np.clip((y + c * plasma) * top / (top + c), 0, 1) * 255


def _spatter(x: np.ndarray, streams: Streams) -> np.ndarray:
    loc, scale, sigma, threshold, mask_sigma = 0.65, 0.3, 1.0, 0.65, 1.5
    gaussian_filter = _gaussian_filter("spatter")
    liquid = np.stack([g.normal(loc, scale, (_SIDE, _SIDE)) for g in streams])
    liquid = gaussian_filter(liquid, sigma=(0, sigma, sigma), mode="nearest", truncate=4.0)
    wet = (liquid > threshold).astype(np.float32)
    mask = gaussian_filter(wet, sigma=(0, mask_sigma, mask_sigma), mode="nearest", truncate=4.0)
    mask[mask < 0.8] = 0
    y = x.astype(np.float32) / 255
    return np.clip(y * (1 - mask) + (63 / 255) * mask, 0, 1) * 255


def _line(c0: float, r0, c1: float, r1) -> np.ndarray:
    """MNIST-C's ``line_from_points``: the line through (c0, r0) and (c1, r1), 1 on it and falling off to 0 at
    about 1.45 rows away, in the columns floor(c0) to ceil(c1) - 1; r0 and r1 may be arrays (N,)."""
    r0 = np.asarray(r0, np.float64)[..., None, None]
    r1 = np.asarray(r1, np.float64)[..., None, None]
    side = np.arange(_SIDE, dtype=np.float64)
    cols, rows = side[None, :], side[:, None]
    distance = np.minimum(np.abs(rows - ((r1 - r0) / (c1 - c0) * (cols - c0) + r0)), 2.3 - 1e-10)
    line = np.clip(np.log(1 - distance / 2.3) + 1, 0, 1)
    return line * ((cols >= math.floor(c0)) & (cols < math.ceil(c1)))


def _dotted_line(x: np.ndarray, streams: Streams) -> np.ndarray:
    ends = np.stack([g.integers(0, 27, size=2) for g in streams])  # rows at column 0 and column 27
    dots = (np.arange(_SIDE) // 2) % 2 == 1  # columns 2, 3, 6, 7, ...
    line = _line(0, ends[:, 0], 27, ends[:, 1]) * dots
    return np.clip(x / 255.0 + line, 0, 1) * 255


def _zigzag_lines(r0: int, r1: int) -> np.ndarray:
    """MNIST-C's zigzag from (2, r0) towards (25, r1), as the sum of its segments' lines (28, 28)."""
    length, height = 2.0, 2.0  # of a tooth
    c0, c1 = 2, 25
    theta = math.atan((r1 - r0) / (c1 - c0))
    d = (c1 - c0) / math.cos(theta)
    points = [(0.0, 0.0)]
    r = 0.0
    for i in range(int((d - length) // (2 * length)) + 1):
        r = (-1) ** i * height
        points.append(((2 * i + 1) * length, r))
    whole = 2 * length * (d // (2 * length))
    if d != whole:
        points.append((d, r / (2 * (d - whole))))
    cos, sin = math.cos(theta), math.sin(theta)
    turned = [(c0 + cos * c - sin * r, r0 + sin * c + cos * r) for c, r in points]
    total = np.zeros((_SIDE, _SIDE))
    for (ca, ra), (cb, rb) in zip(turned[:-1], turned[1:], strict=True):
        if cb != ca:
            total += _line(ca, ra, cb, rb)
    return total


def _zigzag(x: np.ndarray, streams: Streams) -> np.ndarray:
    patterns: dict[tuple[int, int], np.ndarray] = {}  # one per (r0, r1): 270 at most
    lines = np.empty(x.shape)
    for n, g in enumerate(streams):
        r0 = int(g.integers(0, 27))
        r1 = r0 + int(g.integers(-5, 5))
        if (r0, r1) not in patterns:
            patterns[r0, r1] = _zigzag_lines(r0, r1)
        lines[n] = patterns[r0, r1]
    return np.clip(x / 255.0 + lines, 0, 1) * 255


def _canny_edges(x: np.ndarray, streams: Streams) -> np.ndarray:
    try:
        from skimage.feature import canny
    except ImportError:
        raise MnistfxError(f"canny_edges needs scikit-image: {_INSTALL}") from None
    return np.stack([canny(image / 255.0) for image in x]).astype(np.float64) * 255


# Each corruption's function, and whether it draws random numbers.
_FUNCTIONS: dict[str, tuple[Callable[[np.ndarray, Streams], np.ndarray], bool]] = {
    "shot_noise": (_shot_noise, True),
    "impulse_noise": (_impulse_noise, True),
    "glass_blur": (_glass_blur, True),
    "motion_blur": (_motion_blur, True),
    "shear": (_shear, True),
    "scale": (_scale, False),
    "rotate": (_rotate, True),
    "brightness": (_brightness, False),
    "translate": (_translate, True),
    "stripe": (_stripe, False),
    "fog": (_fog, True),
    "spatter": (_spatter, True),
    "dotted_line": (_dotted_line, True),
    "zigzag": (_zigzag, True),
    "canny_edges": (_canny_edges, False),
}
