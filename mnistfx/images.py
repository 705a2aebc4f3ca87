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
from PIL import Image, ImageOps
from torch.nn import functional as F

from ._io import read_limited
from .errors import MnistfxError

IMAGE_MAX_BYTES = 20 << 20      # well above a phone photo's JPEG (3-8 MB)
IMAGE_MAX_PIXELS = 40_000_000   # as claimed by the header, checked before decoding
IMAGE_MAX_ASPECT = 100          # a row of a hundred digits; longer strips are not digit images
DECODE_SIDE = 1024              # images are shrunk to about this many pixels a side before conversion
JPEG_MAX_SCANS = 64            # a progressive JPEG has about ten; each one more is a full decoding pass
JPEG_MAX_SEGMENTS = 256        # APPn and COM segments: a photo has a handful, and Pillow keeps each one
PNG_MAX_CHUNKS = 10_000        # a large photo has a few thousand IDAT chunks; Pillow walks every chunk
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "PPM")  # no ICO (images in a container), no TIFF (libtiff prints)
_FIX = "pass a PNG or JPEG of one digit"


def read_digit_images(paths, *, invert: bool = False) -> torch.Tensor:
    """Read image files as a uint8 batch (N, 28, 28): grayscale, resized to 28×28.

    16-bit images are scaled to 8 bits, EXIF orientation is applied, and transparent
    pixels are background (black, or white with ``invert``).

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
        gray, alpha = _decode(path)
        if alpha is not None:  # transparent is background: black, or white for dark digits (invert)
            gray = np.rint(gray * alpha + (255.0 if invert else 0.0) * (1 - alpha)).clip(0, 255).astype(np.uint8)
        if int(gray.max()) - int(gray.min()) <= 8:
            hint = "" if invert else " (a dark digit on a transparent background needs --invert)" * (alpha is not None)
            raise MnistfxError(f"{path} shows no digit (every pixel is about the same shade){hint}: {_FIX}")
        img = torch.from_numpy(gray)
        if img.shape != (28, 28):
            img = F.interpolate(img[None, None].float(), size=(28, 28), mode="bilinear", antialias=True,
                                align_corners=False)[0, 0].round().clamp(0, 255).to(torch.uint8)
        out.append(255 - img if invert else img)
    return torch.stack(out)


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The image as gray (H, W), uint8, or float with its alpha (H, W) in [0, 1] if it has transparency."""
    data = read_limited(path, IMAGE_MAX_BYTES, what="image", fix=_FIX, error=MnistfxError)
    limits = (f"images of up to {IMAGE_MAX_PIXELS:,} pixels, at most {IMAGE_MAX_ASPECT} times as long as wide, "
              f"are read: {_FIX}")
    _check_structure(path, data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd files would be lines of their own
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
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
            img = ImageOps.exif_transpose(img)  # as a viewer shows it
            return _gray(img)
    except MnistfxError:
        raise
    except Exception as e:  # PIL's decoders raise OSError, ValueError, SyntaxError, EOFError and more alike
        raise MnistfxError(f"{path} is not an image file ({', '.join(FORMATS)}) that can be decoded "
                           f"({type(e).__name__}): {_FIX}") from None


def _check_structure(path: Path, data: bytes) -> None:
    """Refuse a JPEG or PNG whose count of scans, segments or chunks no photo has (each costs Pillow time)."""
    if data[:2] == b"\xff\xd8":  # 0xFF is escaped inside scan data, so these counts are of markers
        scans = data.count(b"\xff\xda")
        segments = sum(data.count(bytes((0xFF, m))) for m in (*range(0xE0, 0xF0), 0xFE))
        if scans > JPEG_MAX_SCANS or segments > JPEG_MAX_SEGMENTS:
            raise MnistfxError(f"{path} is a JPEG of {scans} scans and {segments} metadata segments (photos have "
                               f"at most a dozen of each): {_FIX}")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        at, chunks = 8, 0
        while at + 8 <= len(data) and chunks <= PNG_MAX_CHUNKS:
            at += 12 + int.from_bytes(data[at:at + 4], "big")  # length, type, data, CRC
            chunks += 1
        if chunks > PNG_MAX_CHUNKS:
            raise MnistfxError(f"{path} is a PNG of more than {PNG_MAX_CHUNKS:,} chunks: {_FIX}")


def _gray(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 gray of a decoded image, shrunk to about :data:`DECODE_SIDE`; transparency as 0 alpha."""
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit (or wider) gray: scale, not clip
        a = np.asarray(img)
        top = 65535 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255
        img = Image.fromarray(np.clip(np.rint(a.astype(np.float32) * (255.0 / top)), 0, 255).astype(np.uint8))
    alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    img = img.convert("RGBA" if alpha else "RGB")
    factor = math.ceil(max(img.size) / DECODE_SIDE)
    if factor > 1:
        img = img.reduce(factor)  # box filter: what the resize to 28×28 would average anyway
    rgba = np.asarray(img, dtype=np.float32)
    # ITU-R 601 luma, as torchvision's rgb_to_grayscale computes it (then truncated to uint8)
    gray = rgba[..., 0] * 0.2989 + rgba[..., 1] * 0.587 + rgba[..., 2] * 0.114
    if alpha:
        return gray, rgba[..., 3] / 255.0
    return gray.clip(0, 255).astype(np.uint8), None
