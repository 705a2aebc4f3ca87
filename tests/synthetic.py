"""MNIST-like digits made here, for tests that need digits but not the real MNIST (the fast tier runs
without the data set and without the network).

Each digit is its character in Pillow's built-in font, at a random size and stroke width, turned by up
to ±15°, shifted by up to 3 pixels and softened, light on black as MNIST's are. They are easier than
MNIST (one typeface), which is what a test of the machinery wants: a model learns them in a few steps.
"""

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

import mnistfx


def synthetic_digits(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` digits as uint8 images (n, 28, 28) and their int64 labels (0-9 in turn)."""
    rng = np.random.default_rng(seed)
    fonts = {size: ImageFont.load_default(size=size) for size in range(18, 25)}
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        img = Image.new("L", (28, 28))
        x, y = 14 + rng.integers(-3, 4), 14 + rng.integers(-3, 4)
        ImageDraw.Draw(img).text(
            (x, y),
            str(i % 10),
            fill=255,
            font=fonts[int(rng.integers(18, 25))],
            anchor="mm",
            stroke_width=int(rng.integers(0, 2)),
            stroke_fill=255,
        )
        img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR, center=(x, y))
        images[i] = np.asarray(img.filter(ImageFilter.GaussianBlur(0.5)))
    return torch.from_numpy(images), torch.arange(n, dtype=torch.int64) % 10


def synthetic_mnist(root, n_train: int = 600, n_test: int = 200, seed: int = 0) -> mnistfx.MNIST:
    """A small data set shaped as :class:`mnistfx.MNIST` (``root`` is only recorded)."""
    train_images, train_labels = synthetic_digits(n_train, seed)
    test_images, test_labels = synthetic_digits(n_test, seed + 1)
    return mnistfx.MNIST(train_images, train_labels, test_images, test_labels, root)
