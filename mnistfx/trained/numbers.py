"""Reading a handwritten number (digits in a row) from a photo or scan.

The paper is taken away, the ink thresholded against the paper's noise (with hysteresis: faint ink
counts where it touches strong ink), its connected components found (8-connectivity, from the runs
of each row), specks and lines dropped, pieces of one digit merged (overlapping column ranges), and
the digits ordered left to right. Each digit, every pixel not its own set to paper, is prepared as
``predict`` prepares a digit (:func:`~mnistfx.prepare_digit`) and all are classified in one batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .._io import read_limited
from .._types import ImageInput, StrPath
from ..data.digit_images import (
    DECODE_SIDE,
    IMAGE_MAX_ASPECT,
    IMAGE_MAX_BYTES,
    IMAGE_MAX_PIXELS,
    dark_on_light,
    decode_sized,
    prepare_digit,
)
from ..errors import MnistfxError
from .weights import Weights, load_model_weights

MAX_DIGITS = 100  # as images.IMAGE_MAX_ASPECT: a row of a hundred digits
MAX_RUNS = 200_000  # runs of ink along rows; a page of handwriting at 1024 px has a few tens of thousands
STRONG, FAINT = 0.35, 0.15  # ink thresholds, as parts of the contrast between paper and ink
MIN_CONTRAST = 24  # gray levels between paper and ink, as prepare_digit asks of one digit
SPECK_AREA = 0.01  # components smaller than this part of the largest are specks...
SPECK_HEIGHT = 0.3  # ...and so are groups shorter than this part of a digit's usual height,
MIN_HEIGHT = 6  # ...or than this many pixels (no digit can be read from fewer),
MIN_HEIGHT_PART = 0.02  # ...or than this part of the image's shorter side (a speck on a blank page)
MERGE_OVERLAP = 0.5  # components sharing this part of the narrower one's columns are one digit
TIE = 1.25  # invert=None: how much more the ink against the border's shade must stand out
LINE = 4  # components this many times longer than the usual one is tall are lines, not digits
_FIX = "pass a photo or scan of a handwritten number (PNG, JPEG, ...)"


@dataclass(frozen=True)
class FoundDigit:
    """A digit found in an image by :func:`find_digits`.

    Attributes:
        box: ``(x, y, width, height)`` of its ink in the image's pixels (a file's as a viewer shows it).
        image: the digit prepared as MNIST's were: uint8 (28, 28), light on black.
    """

    box: tuple[int, int, int, int]
    image: torch.Tensor


@dataclass(frozen=True)
class ReadDigit:
    """One digit of a :class:`Reading`: the class, its probability, all ten, and where it is."""

    digit: int
    probability: float
    probabilities: tuple[float, ...]
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Reading:
    """A number read by :func:`read_number`: its ``text`` and its ``digits`` (:class:`ReadDigit`), left to right."""

    text: str
    digits: tuple[ReadDigit, ...]

    def to_dict(self) -> dict:
        """Plain Python values, for JSON."""
        return {
            "text": self.text,
            "digits": [
                {
                    "digit": d.digit,
                    "probability": d.probability,
                    "probabilities": list(d.probabilities),
                    "box": dict(zip(("x", "y", "width", "height"), d.box, strict=True)),
                }
                for d in self.digits
            ],
        }


def read_number(weights: Weights | StrPath, image: ImageInput, *, invert: bool | None = None) -> Reading:
    """Read the handwritten number in ``image``: each digit found by :func:`find_digits`, all
    classified in one batch.

    Arguments:
        weights: a :class:`~mnistfx.Weights` (a single model or an ensemble), or a weights file.
        image: as :func:`find_digits` takes it.
        invert: as :func:`find_digits` takes it.

    Returns:
        A :class:`Reading`: the digit string and, per digit, its probabilities and box.

    Raises:
        MnistfxError: the image cannot be read or shows no digit; the weights are unusable.
    """
    w = weights if isinstance(weights, Weights) else load_model_weights(weights)
    found = find_digits(image, invert=invert)
    probs = w.checked_probabilities(torch.stack([f.image for f in found])).cpu()
    digits = tuple(
        ReadDigit(int(p.argmax()), round(float(p.max()), 6), tuple(round(float(v), 6) for v in p), f.box)
        for p, f in zip(probs, found, strict=True)
    )
    return Reading("".join(str(d.digit) for d in digits), digits)


def find_digits(image: ImageInput, *, invert: bool | None = None, source: str | None = None) -> list[FoundDigit]:
    """The digits of a handwritten number in ``image``, left to right, each prepared as MNIST's were.

    Digits must not touch one another; pieces of one digit (a broken stroke) are merged when
    their column ranges overlap. Specks, marks much shorter than the digits and lines much longer
    (an underline, the edge of the paper) are dropped.

    Arguments:
        image: an image file (a path), its bytes, or gray values (H, W) (a numpy array or tensor).
        invert: ``True`` for dark digits on light paper, ``False`` for light on dark; ``None``:
            whichever stands out more from the paper (a file with transparency: as ``predict`` decides).
        source: what to call the image in errors (default: its path, or "the image").

    Returns:
        A list of :class:`FoundDigit`, boxes in the image's own pixels.

    Raises:
        MnistfxError: the image cannot be read, shows no digit, or more than ``MAX_DIGITS`` marks.
    """
    gray, alpha, (width, height), source = _load(image, source)
    if alpha is not None:  # transparent is paper
        gray, invert = dark_on_light(gray, alpha, invert)
    ink, smooth, _, sigma, contrast = _ink(gray.astype(np.float32), invert)
    if contrast < MIN_CONTRAST:
        raise MnistfxError(f"{source} shows no digits (nothing stands out from the paper): {_FIX}")
    # Hysteresis: the faint parts of a stroke (its soft edges, a light touch of the pen) belong to
    # a digit when they touch its strong ink; faint marks alone are not ink.
    strong = smooth > max(5 * sigma, STRONG * contrast, MIN_CONTRAST / 2)
    rows, starts, ends, labels = _components(smooth > max(4 * sigma, FAINT * contrast), source)
    seen = np.pad(np.cumsum(strong, axis=1, dtype=np.int32), ((0, 0), (1, 0)))
    held = np.bincount(labels, weights=seen[rows, ends] - seen[rows, starts], minlength=labels.max(initial=-1) + 1)
    keep = held[labels] > 0
    rows, starts, ends = rows[keep], starts[keep], ends[keep]
    labels = np.unique(labels[keep], return_inverse=True)[1].reshape(-1)
    h, w = ink.shape
    groups, boxes = _digits(rows, starts, ends, labels, (h, w), source)
    lengths = ends - starts
    owner = np.zeros(h * w, np.int32)  # each pixel's digit (1, 2, ...), 0 for paper and specks
    owner[np.repeat(rows * w + starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())] = np.repeat(
        groups[labels] + 1, lengths
    )
    owner = owner.reshape(h, w)
    ink = np.clip(ink, 0, None)
    sx, sy = width / w, height / h
    found = []
    for g, (x0, y0, x1, y1) in enumerate(boxes):
        grow = max(1, round((y1 - y0) / 24))  # the strokes' soft edges, below the threshold
        ys, xs = slice(max(y0 - grow, 0), y1 + grow), slice(max(x0 - grow, 0), x1 + grow)
        mine = owner[ys, xs] == g + 1
        others = (owner[ys, xs] > 0) & ~mine
        keep = _spread(mine, grow, np.maximum) & ~_spread(others, grow, np.maximum)  # no neighbour's stroke leaks in
        crop = np.pad(ink[ys, xs] * keep, max(2, (y1 - y0) // 4))  # paper all round
        try:
            digit = prepare_digit(crop, invert=False)
        except MnistfxError:
            raise MnistfxError(
                f"{source}: mark {g + 1} from the left stands out too little from the paper to be read: {_FIX}"
            ) from None
        box = (round(x0 * sx), round(y0 * sy), max(1, round((x1 - x0) * sx)), max(1, round((y1 - y0) * sy)))
        found.append(FoundDigit(box, digit))
    return found


def _load(image, source: str | None):
    """``(gray, alpha, (width, height) as shown, source)`` of a path, a file's bytes or an array."""
    if isinstance(image, (str, os.PathLike)):
        source = source or str(image)
        image = read_limited(image, IMAGE_MAX_BYTES, what="image", fix=_FIX, error=MnistfxError)
    source = source or "the image"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return (*decode_sized(bytes(image), source, fix=_FIX), source)
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise TypeError(
            f"image must be a path, a file's bytes or a 2-D array of gray values, not {type(image).__name__}"
        )
    gray = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ValueError(f"image must be a 2-D array of gray values, not shape {gray.shape}")
    h, w = gray.shape
    if h * w > IMAGE_MAX_PIXELS or max(h, w) > IMAGE_MAX_ASPECT * min(h, w):
        raise MnistfxError(
            f"{source} is {w}×{h} pixels: images of up to {IMAGE_MAX_PIXELS:,} pixels, at most "
            f"{IMAGE_MAX_ASPECT} times as long as wide, are read: {_FIX}"
        )
    if not np.isfinite(gray).all():
        raise MnistfxError(f"{source} holds NaN or infinite values: {_FIX}")
    if max(h, w) > DECODE_SIDE:  # the size a decoded file is shrunk to, so that the work is bounded alike
        size = (max(1, round(h * DECODE_SIDE / max(h, w))), max(1, round(w * DECODE_SIDE / max(h, w))))
        gray = F.interpolate(torch.from_numpy(gray)[None, None], size=size, mode="area")[0, 0].numpy()
    return gray, None, (w, h), source


def _ink(gray: np.ndarray, invert: bool | None):
    """How far each pixel stands out from the paper, as is and blurred a little (grain averaged away,
    strokes kept), whether the ink is dark, the paper's noise (σ, of the blurred image) and the ink's
    contrast (the 95th percentile of what stands out by 5 σ). The paper's level is a low (light ink) or
    high (dark ink) percentile in cells of an eighth of the short side, each moved to the extreme of its
    neighbours' (a cell inside a thick stroke sees no paper) and interpolated between cells. With
    ``invert=None`` the ink is the border's usual side unless the other stands out :data:`TIE` times more."""
    h, w = gray.shape
    s = max(8, min(h, w) // 8)
    nh, nw = -(-h // s), -(-w // s)
    cells = np.pad(gray, ((0, nh * s - h), (0, nw * s - w)), mode="edge").reshape(nh, s, nw, s)
    low, high = np.percentile(cells.transpose(0, 2, 1, 3).reshape(nh, nw, s * s), [25, 75], axis=2)
    best = None
    first = invert if invert is not None else dark_on_light(gray, None, None)[1]  # the border's side first
    for dark in (first,) if invert is not None else (first, not first):
        paper = _spread(high, 1, np.maximum) if dark else _spread(low, 1, np.minimum)
        for axis, n in ((0, h), (1, w)):  # bilinear between the cells' centres, one axis at a time
            at = np.clip((np.arange(n) + 0.5) / s - 0.5, 0, paper.shape[axis] - 1)
            i = np.minimum(at.astype(int), paper.shape[axis] - 2) if paper.shape[axis] > 1 else np.zeros(n, int)
            f = np.expand_dims(at - i, 1 - axis)
            paper = (
                np.take(paper, i, axis) * (1 - f) + np.take(paper, np.minimum(i + 1, paper.shape[axis] - 1), axis) * f
            )
        ink = ((paper - gray) if dark else (gray - paper)).astype(np.float32)
        smooth = _spread(ink, 1, np.add) / 9
        level = float(np.median(smooth))
        sigma = 1.4826 * float(np.median(np.abs(smooth - level)))
        strong = smooth[smooth > level + 5 * sigma]
        contrast = float(np.percentile(strong, 95)) - level if strong.size else 0.0
        if best is None or contrast > TIE * best[-1]:
            best = ink - level, smooth - level, dark, sigma, contrast
    return best


def _components(mask: np.ndarray, source: str):
    """The 8-connected components of ``mask`` as runs along its rows: ``(row, start, end, label)``
    arrays, ``end`` exclusive, labels 0, 1, ... (runs of adjacent rows that touch are united)."""
    w = mask.shape[1]
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]
    n = len(rows)
    if n > MAX_RUNS:
        raise MnistfxError(
            f"{source} has more separate marks than a handwritten number ({n:,} runs of ink, at "
            f"most {MAX_RUNS:,} are read): {_FIX}"
        )
    key = w + 2  # rows' runs sorted by row, then column: one sorted key each for starts and ends
    lo = np.searchsorted(rows * key + ends, (rows + 1) * key + starts, side="left")  # next row's first run reaching us
    hi = np.searchsorted(rows * key + starts, (rows + 1) * key + ends, side="right")  # ...and past its last one
    count = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(n), count)
    b = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + np.repeat(lo, count)
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(a.tolist(), b.tolist(), strict=True):
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    labels = np.unique(np.array([root(i) for i in range(n)], np.int64), return_inverse=True)[1].reshape(-1)
    return rows, starts, ends, labels


def _digits(rows, starts, ends, labels, shape: tuple[int, int], source: str):
    """Components grouped into digits: each component's digit (-1 for a speck), and the digits'
    boxes ``(x0, y0, x1, y1)`` (ends exclusive), left to right, in an image of ``shape`` (H, W)."""
    k = int(labels.max()) + 1 if labels.size else 0
    x0, y0 = np.full(k, np.iinfo(np.int64).max), np.full(k, np.iinfo(np.int64).max)
    x1, y1 = np.zeros(k, np.int64), np.zeros(k, np.int64)
    np.minimum.at(x0, labels, starts)
    np.maximum.at(x1, labels, ends)
    np.minimum.at(y0, labels, rows)
    np.maximum.at(y1, labels, rows + 1)
    area = np.bincount(labels, weights=ends - starts, minlength=k)
    # Lines and frames (an underline, a ruled line, the edge of the paper) are not digits, and
    # would join every digit whose columns they share.
    usual = np.median((y1 - y0)[area >= 4]) if (area >= 4).any() else 0
    area[(x1 - x0 > LINE * usual) | (y1 - y0 > LINE * usual)] = 0
    group = np.full(k, -1)
    boxes: list[list[int]] = []  # one [x0, y0, x1, y1] per digit; a component joins the last when it shares its columns
    for c in sorted(np.nonzero(area >= max(4.0, SPECK_AREA * area.max(initial=0)))[0], key=lambda c: x0[c]):
        if boxes:
            b = boxes[-1]
            shared = min(b[2], x1[c]) - max(b[0], x0[c])
            if shared >= MERGE_OVERLAP * min(b[2] - b[0], x1[c] - x0[c]):
                b[:] = [min(b[0], x0[c]), min(b[1], y0[c]), max(b[2], x1[c]), max(b[3], y1[c])]
                group[c] = len(boxes) - 1
                continue
        boxes.append([int(x0[c]), int(y0[c]), int(x1[c]), int(y1[c])])
        group[c] = len(boxes) - 1
    heights = np.array([b[3] - b[1] for b in boxes])
    usual = np.median(heights[heights >= 0.5 * heights.max()]) if boxes else 0
    least = max(MIN_HEIGHT, MIN_HEIGHT_PART * min(shape))
    kept = [i for i, hgt in enumerate(heights) if hgt >= max(SPECK_HEIGHT * usual, least)]
    if not kept:
        tallest = f"the tallest is {heights.max()} of {shape[1]}×{shape[0]} pixels, " if boxes else ""
        raise MnistfxError(
            f"{source} shows no digits (only specks stand out from the paper: {tallest}a digit is at "
            f"least {least:.0f} tall): {_FIX}"
        )
    if len(kept) > MAX_DIGITS:
        raise MnistfxError(
            f"{source} shows {len(kept)} marks the size of digits, more than a number mnistfx reads "
            f"(at most {MAX_DIGITS}): {_FIX}"
        )
    renumber = np.full(len(boxes) + 1, -1)
    renumber[kept] = np.arange(len(kept))
    return renumber[group], [tuple(boxes[i]) for i in kept]


def _spread(a: np.ndarray, by: int, op) -> np.ndarray:
    """``op`` (``np.add``, ``np.maximum``, ``np.minimum``) of each element's square neighbourhood of
    ``by`` elements each way (the edges repeated): a box sum, a dilation, an erosion."""
    for axis in (0, 1):
        n = a.shape[axis]
        padded = np.pad(a, [(by, by) if d == axis else (0, 0) for d in (0, 1)], mode="edge")
        a = padded[:n] if axis == 0 else padded[:, :n]
        for k in range(1, 2 * by + 1):
            a = op(a, padded[k : k + n] if axis == 0 else padded[:, k : k + n])
    return a
