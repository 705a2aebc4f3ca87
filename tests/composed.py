"""Handwritten numbers composed from real MNIST digits, as photos of paper: for the tests of
`mnistfx read` and for benchmarks/read_accuracy.py."""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass
class Number:
    """A composed number: the image (uint8 gray), its digits as text, and each digit's ink box (x, y, w, h)."""

    image: np.ndarray
    text: str
    boxes: list


def compose(
    rng: np.random.Generator,
    images,
    labels,
    n: int,
    *,
    light_on_dark: bool = False,
    scale=(1.5, 4.0),
    gap=(3, 0.4),
    grain=(2.0, 10.0),
    blur=1.0,
    indices=None,
) -> Number:
    """``n`` MNIST digits in a row on paper: each scaled by ``scale`` (a range, × its 28 px), gaps of
    ``gap[0]`` px to ``gap[1]`` × the tallest digit (never touching), baselines jittered by up to 12 % of
    the tallest, a paper level with a linear gradient of up to 50 gray levels in a random direction, Gaussian
    grain of ``grain`` σ (a range), a Gaussian blur of up to ``blur`` px; ``light_on_dark`` for chalk on a
    board. ``indices`` picks the digits (default: random ones)."""
    indices = rng.integers(len(images), size=n) if indices is None else indices
    pieces = []
    for i in indices:
        d = images[int(i)].numpy()
        rows, cols = np.nonzero(d)
        d = d[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]  # its ink, so that gaps are between inks
        s = rng.uniform(*scale)
        size = (max(1, round(d.shape[1] * s)), max(1, round(d.shape[0] * s)))
        pieces.append(np.asarray(Image.fromarray(d).resize(size, Image.BILINEAR), np.float32) / 255)
    tallest = max(p.shape[0] for p in pieces)
    jitter = round(0.12 * tallest)
    margin = int(rng.integers(8, 40))
    gaps = rng.integers(gap[0], max(gap[0] + 1, round(gap[1] * tallest)), size=n)
    gaps[-1] = 0
    height = tallest + 2 * (jitter + margin)
    width = sum(p.shape[1] for p in pieces) + int(gaps.sum()) + 2 * margin
    ink = np.zeros((height, width), np.float32)
    boxes, x = [], margin
    for p, g in zip(pieces, gaps, strict=True):
        h, w = p.shape
        y = margin + jitter + tallest - h + int(rng.integers(-jitter, jitter + 1))  # on a jittered baseline
        ink[y : y + h, x : x + w] = p
        boxes.append((x, y, w, h))
        x += w + int(g)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    slope = (xx * np.cos(angle) + yy * np.sin(angle)) / np.hypot(height, width)
    paper = (rng.uniform(15, 70) if light_on_dark else rng.uniform(170, 235)) + rng.uniform(0, 50) * (slope - 0.5)
    stroke = rng.uniform(180, 250) if light_on_dark else rng.uniform(10, 70)
    gray = paper + ink * (stroke - paper)
    radius = rng.uniform(0, blur)
    if radius > 0.2:
        gray = np.asarray(
            Image.fromarray(np.clip(np.rint(gray), 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius)),
            np.float32,
        )
    gray = gray + rng.normal(0, rng.uniform(*grain), gray.shape)
    text = "".join(str(int(labels[int(i)])) for i in indices)
    return Number(np.clip(np.rint(gray), 0, 255).astype(np.uint8), text, boxes)


def digit_errors(true: str, read: str) -> int:
    """The digits missed, added or misread: the edit distance between the two strings."""
    row = list(range(len(read) + 1))
    for i, t in enumerate(true, 1):
        prev, row[0] = row[0], i
        for j, r in enumerate(read, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (t != r))
    return row[-1]
