"""Reading digit images from files (PNG, JPEG, ...) as MNIST-like uint8 tensors.

Every file is distrusted: its size and kind are checked before it is read, its claimed pixel
count and shape before it is decoded, JPEGs are shrunk while decoding and large images right
after, and a decoder's failure of any kind is one :class:`~mnistfx.MnistfxError`.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ._io import read_limited
from .errors import MnistfxError

IMAGE_MAX_BYTES = 50 << 20      # far above a phone photo's JPEG
IMAGE_MAX_PIXELS = 40_000_000   # as claimed by the header, checked before decoding
IMAGE_MAX_ASPECT = 100          # a row of a hundred digits; longer strips are not digit images
DECODE_SIDE = 1024              # images are shrunk to about this many pixels a side before conversion
_FIX = "pass a PNG or JPEG of one digit"


def read_digit_images(paths, *, invert: bool = False) -> torch.Tensor:
    """Read image files as a uint8 batch (N, 28, 28): grayscale, resized to 28×28.

    16-bit images are scaled to 8 bits. In an image with transparency the opaque pixels are the
    digit, whatever their colour (so ``invert`` does not apply to it).

    Arguments:
        paths: PNG or JPEG files, each holding one digit.
        invert: the digits are dark on a light background (MNIST's are light on dark).

    Returns:
        A uint8 tensor (N, 28, 28).

    Raises:
        MnistfxError: a file is missing, too large, not an image that can be decoded, or shows no digit.
    """
    out = []
    for path in map(Path, paths):
        gray, from_alpha = _decode(path)
        if int(gray.max()) - int(gray.min()) <= 8:
            raise MnistfxError(f"{path} shows no digit (every pixel is about the same shade): {_FIX}")
        img = torch.from_numpy(gray)
        if img.shape != (28, 28):
            img = F.interpolate(img[None, None].float(), size=(28, 28), mode="bilinear", antialias=True,
                                align_corners=False)[0, 0].round().clamp(0, 255).to(torch.uint8)
        out.append(255 - img if invert and not from_alpha else img)
    return torch.stack(out)


def _decode(path: Path) -> tuple[np.ndarray, bool]:
    """The image as uint8 gray (H, W), and whether it came from the alpha channel."""
    data = read_limited(path, IMAGE_MAX_BYTES, what="image", fix=_FIX, error=MnistfxError)
    limits = (f"images of up to {IMAGE_MAX_PIXELS:,} pixels, at most {IMAGE_MAX_ASPECT} times as long as wide, "
              f"are read: {_FIX}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data))  # reads the header only
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # PIL's own, larger limit
                claimed = re.search(r"\((\d+) pixels\)", str(e))
                raise MnistfxError(f"{path} claims {int(claimed[1]):,} pixels: {limits}" if claimed
                                   else f"{path} claims too many pixels: {limits}") from None
            width, height = img.size
            if width < 1 or height < 1 or width * height > IMAGE_MAX_PIXELS \
                    or max(width, height) > IMAGE_MAX_ASPECT * min(width, height):
                raise MnistfxError(f"{path} claims {width}×{height} pixels: {limits}")
            img.draft(img.mode, (DECODE_SIDE, DECODE_SIDE))  # JPEG: decode at 1/2, 1/4 or 1/8 size
            img.load()
            return _gray(img)
    except MnistfxError:
        raise
    except Exception as e:  # PIL's decoders raise OSError, ValueError, SyntaxError, EOFError and more alike
        raise MnistfxError(f"{path} is not an image file (PNG, JPEG, ...) that can be decoded "
                           f"({type(e).__name__}): {_FIX}") from None


def _gray(img: Image.Image) -> tuple[np.ndarray, bool]:
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # 16-bit (or wider) gray: scale, not clip
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8))
    alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    img = img.convert("RGBA" if alpha else "RGB")
    factor = math.ceil(max(img.size) / DECODE_SIDE)
    if factor > 1:
        img = img.reduce(factor)  # box filter: what the resize to 28×28 would average anyway
    if alpha:
        a = np.asarray(img)[..., 3]
        if a.min() < 255:  # real transparency: the opaque strokes are the digit
            return np.ascontiguousarray(a), True
        img = img.convert("RGB")
    rgb = np.asarray(img, dtype=np.float32)
    # ITU-R 601 luma, as torchvision's rgb_to_grayscale computes it (then truncated to uint8)
    gray = rgb[..., 0] * 0.2989 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return gray.clip(0, 255).astype(np.uint8), False
