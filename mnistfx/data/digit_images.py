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
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.nn import functional as F

from .._io import read_limited
from .._types import Gray, StrPath
from ..errors import MnistfxError

IMAGE_MAX_BYTES = 20 << 20  # well above a phone photo's JPEG (3-8 MB)
IMAGE_MAX_PIXELS = 40_000_000  # as claimed by the header, checked before decoding
IMAGE_MAX_ASPECT = 100  # a row of a hundred digits; longer strips are not digit images
DECODE_SIDE = 1024  # images are shrunk to about this many pixels a side before conversion
JPEG_MAX_SCANS = 64  # a progressive JPEG has about ten; each one more is a full decoding pass
JPEG_MAX_SEGMENTS = 256  # APPn and COM segments: a photo has a handful, and Pillow keeps each one
PNG_MAX_CHUNKS = 10_000  # a large photo has a few thousand IDAT chunks; Pillow walks every chunk
PNM_MAX_HEADER = 4096  # bytes of a PBM/PGM/PPM/PFM header: Pillow reads it (comments too) a byte at a time
_PNM_HEADER = {n: re.compile(rb"P[1-6Ff](?:(?:\s|#[^\r\n]*[\r\n])+[-+.\deE]+){%d}\s" % n) for n in (2, 3)}  # sizes, max
PY_DECODE_MAX_PIXELS = (
    1 << 20
)  # files Pillow decodes in Python (run-length BMP, plain-text PBM/PGM/PPM): ~0.6 µs a pixel
MIN_DIGIT_PART = 0.1  # a digit's ink spans at least this part of its image's shorter side...
MIN_DIGIT_PIXELS = 3  # ...and at least this many pixels: a speck or a tap of the pen is not a digit
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "PPM")  # no ICO (images in a container), no TIFF (libtiff prints)
_FIX = "pass an image (PNG, JPEG, ...) of one digit"


def read_digit_images(paths: Iterable[StrPath], *, invert: bool | None = None, prepare: bool = True) -> torch.Tensor:
    """Read image files of one digit each as a uint8 batch (N, 28, 28), light digits on black.

    16-bit images are scaled to 8 bits, EXIF orientation is applied, and transparent pixels are
    background.

    Arguments:
        paths: image files (PNG, JPEG, ...), each holding one digit.
        invert: ``True`` for dark digits on a light background, ``False`` for light on dark;
            ``None`` decides from the image's border (a light border means a dark digit).
        prepare: prepare each image as MNIST's digits were (:func:`prepare_digit`); ``False``
            only resizes it to 28×28 (for images that already are MNIST-like).

    Returns:
        A uint8 tensor (N, 28, 28).

    Raises:
        MnistfxError: a file is missing, too large, not an image that can be decoded, or shows no digit.
    """
    out = []
    for path in map(Path, paths):
        gray, alpha = _decode(path)
        if prepare:
            out.append(prepare_digit(gray, alpha=alpha, invert=invert, source=str(path)))
            continue
        gray, invert_this = dark_on_light(gray, alpha, invert)
        if float(gray.max()) - float(gray.min()) <= 8:
            raise MnistfxError(f"{path} shows no digit (every pixel is about the same shade): {_FIX}")
        img = torch.from_numpy(np.rint(gray).clip(0, 255).astype(np.uint8))
        if img.shape != (28, 28):
            img = (
                F.interpolate(
                    img[None, None].float(), size=(28, 28), mode="bilinear", antialias=True, align_corners=False
                )[0, 0]
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        out.append(255 - img if invert_this else img)
    return torch.stack(out)


def prepare_digit(
    image: Gray, *, invert: bool | None = None, alpha: np.ndarray | None = None, source: str = "the image"
) -> torch.Tensor:
    """One digit prepared as MNIST's were: 28×28 uint8, a light digit on black, centred.

    The image is made light-on-dark (inverted when its border is light, or as ``invert`` says),
    its background and noise floor set to 0 and its strokes stretched to full range, cropped to the
    ink, scaled to fit 20×20 keeping its aspect ratio (anti-aliased), and placed in 28×28 so that
    its centre of mass is at the centre, as LeCun's page describes MNIST's preparation.

    Arguments:
        image: gray values 0-255, shape (H, W): a numpy array or a tensor.
        invert: ``True`` for a dark digit on light, ``False`` for light on dark, ``None``: decide
            from the border.
        alpha: opacity in [0, 1], shape (H, W), for an image with transparency (transparent is
            background).
        source: what to call the image in an error.

    Raises:
        MnistfxError: the image shows no digit.
    """
    gray = np.asarray(image.numpy() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ValueError(f"image must be a 2-D array of gray values, not shape {gray.shape}")
    gray, invert = dark_on_light(gray, alpha, invert)
    if invert:
        gray = 255.0 - gray
    border = _border(gray)
    level = float(np.median(border))  # the background, and 3 sigma of its noise (robustly: from the MAD)
    floor = level + 3 * 1.4826 * float(np.median(np.abs(border - level)))
    peak = float(np.percentile(gray, 99.9))
    if peak - floor < 24:
        raise MnistfxError(f"{source} shows no digit (nothing stands out from its background): {_FIX}")
    ink = np.clip((gray - floor) / (peak - floor), 0, 1)
    rows, cols = np.nonzero(ink > 0.5)  # the strokes' cores; a speck far away must not stretch the box
    r0, r1 = np.quantile(rows, [0.002, 0.998]).round().astype(int)
    c0, c1 = np.quantile(cols, [0.002, 0.998]).round().astype(int)
    span = max(r1 - r0, c1 - c0) + 1
    if span < max(MIN_DIGIT_PIXELS, MIN_DIGIT_PART * min(gray.shape)):
        raise MnistfxError(
            f"{source} shows no digit, only a mark {span} pixels across in an image of "
            f"{gray.shape[1]}×{gray.shape[0]} (a digit spans at least {MIN_DIGIT_PART:.0%} of it): "
            f"crop the image to the digit, or {_FIX}"
        )
    crop = torch.from_numpy(np.ascontiguousarray(ink[r0 : r1 + 1, c0 : c1 + 1]))
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    digit = F.interpolate(crop[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0]
    digit = (digit / digit.max()).clamp(0, 1)
    mass = digit.sum()
    cy = float((digit.sum(1) * torch.arange(size[0])).sum() / mass)
    cx = float((digit.sum(0) * torch.arange(size[1])).sum() / mass)
    out = torch.zeros(28, 28)
    top, left = round(14.0 - cy), round(14.0 - cx)  # MNIST's digits have their centre of mass at (14, 14)
    ys, xs = slice(max(top, 0), min(top + size[0], 28)), slice(max(left, 0), min(left + size[1], 28))
    out[ys, xs] = digit[ys.start - top : ys.stop - top, xs.start - left : xs.stop - left]
    return (out * 255).round().to(torch.uint8)


def _border(gray: np.ndarray) -> np.ndarray:
    k = max(1, min(gray.shape) // 16)
    return np.concatenate([gray[:k].ravel(), gray[-k:].ravel(), gray[:, :k].ravel(), gray[:, -k:].ravel()])


def dark_on_light(gray: np.ndarray, alpha, invert: bool | None) -> tuple[np.ndarray, bool]:
    """Gray with transparency made background, and whether the digit is dark on light."""
    gray = gray.astype(np.float32)
    if alpha is not None:
        if invert is None:  # the opaque strokes' shade says which background they stand on
            invert = bool((gray * alpha).sum() / max(float(alpha.sum()), 1e-6) < 128)
        gray = gray * alpha + (255.0 if invert else 0.0) * (1 - alpha)
    if invert is None:
        invert = bool(np.median(_border(gray)) > 127)
    return gray, invert


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The image file ``path`` decoded as :func:`decode_image` decodes bytes."""
    return decode_image(read_limited(path, IMAGE_MAX_BYTES, what="image", fix=_FIX, error=MnistfxError), str(path))


def decode_image(
    data: bytes, source: str = "the image", *, fix: str = _FIX, max_pixels: int = IMAGE_MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode an image file's bytes (PNG, JPEG, BMP, GIF, WebP, PPM) to gray, as ``predict`` reads files.

    The size, the structure and the pixel count its header claims are checked before decoding;
    JPEGs are decoded at a reduced scale and large images shrunk to about ``DECODE_SIDE``
    pixels a side; EXIF orientation is applied.

    Arguments:
        data: the file's bytes (at most ``IMAGE_MAX_BYTES``).
        source: what to call the image in an error (its path, an upload's name).
        fix: what the user can do, ending every error.
        max_pixels: the most pixels the header may claim (decoding costs about 40 ns a pixel).

    Returns:
        ``(gray, alpha)``: gray (H, W) as uint8, or as float32 with its opacity ``alpha`` (H, W) in
        [0, 1] when the image has transparency (else ``alpha`` is ``None``).

    Raises:
        MnistfxError: too large, or not an image that can be decoded.
    """
    gray, alpha, _ = decode_sized(data, source, fix=fix, max_pixels=max_pixels)
    return gray, alpha


def decode_sized(
    data: bytes, source: str, *, fix: str = _FIX, max_pixels: int = IMAGE_MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """:func:`decode_image`, and the image's ``(width, height)`` as a viewer shows it (before shrinking)."""
    if len(data) > IMAGE_MAX_BYTES:
        raise MnistfxError(
            f"{source} is {len(data):,} bytes, more than any image mnistfx reads ({IMAGE_MAX_BYTES:,}): {fix}"
        )
    limits = f"images of up to {max_pixels:,} pixels, at most {IMAGE_MAX_ASPECT} times as long as wide, are read: {fix}"
    _check_structure(source, data, fix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd files would be lines of their own
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # PIL's own, larger limit
                claimed = re.search(r"\((\d+) pixels\)", str(e))
                raise MnistfxError(
                    f"{source} claims {int(claimed[1]):,} pixels: {limits}"
                    if claimed
                    else f"{source} claims too many pixels: {limits}"
                ) from None
            width, height = img.size
            if (
                width < 1
                or height < 1
                or width * height > max_pixels
                or max(width, height) > IMAGE_MAX_ASPECT * min(width, height)
            ):
                raise MnistfxError(f"{source} claims {width}×{height} pixels: {limits}")
            if width * height > PY_DECODE_MAX_PIXELS and any(tile[0] in Image.DECODERS for tile in img.tile):
                raise MnistfxError(
                    f"{source} is a {img.format} of {width}×{height} pixels stored in a way that is "
                    f"decoded slowly (run-length or plain text); such files are read up to "
                    f"{PY_DECODE_MAX_PIXELS:,} pixels: save it as PNG, or {fix}"
                )
            img.draft(img.mode, (DECODE_SIDE, DECODE_SIDE))  # JPEG: decode at 1/2, 1/4 or 1/8 size
            img.load()
            drafted = img.size
            shown = ImageOps.exif_transpose(img)  # as a viewer shows it
            if shown.size != drafted:  # turned a quarter
                width, height = height, width
            return (*_gray(shown, source, fix), (width, height))
    except MnistfxError:
        raise
    except Exception as e:  # PIL's decoders raise OSError, ValueError, SyntaxError, EOFError and more alike
        raise MnistfxError(
            f"{source} is not an image file ({', '.join(FORMATS)}) that can be decoded ({type(e).__name__}): {fix}"
        ) from None


def _check_structure(source: str, data: bytes, fix: str) -> None:
    """Refuse a JPEG or PNG whose count of scans, segments or chunks no photo has, or a PBM/PGM/PPM/PFM
    whose header runs long (each costs Pillow time)."""
    if data[:2] == b"\xff\xd8":  # 0xFF is escaped inside scan data, so these counts are of markers
        scans = data.count(b"\xff\xda")
        segments = sum(data.count(bytes((0xFF, m))) for m in (*range(0xE0, 0xF0), 0xFE))
        if scans > JPEG_MAX_SCANS or segments > JPEG_MAX_SEGMENTS:
            raise MnistfxError(
                f"{source} is a JPEG of {scans} scans and {segments} metadata segments (photos have "
                f"at most a dozen of each): {fix}"
            )
    elif re.match(rb"P[1-6Ff]\s", data):
        header = _PNM_HEADER[2 if data[1:2] in b"14" else 3].match(data[:PNM_MAX_HEADER])
        if header is None:
            raise MnistfxError(
                f"{source} is a PBM/PGM/PPM/PFM whose header is not its sizes within "
                f"{PNM_MAX_HEADER:,} bytes (long comments): {fix}"
            )
        if data[1:2] in b"123" and b"#" in data[header.end() :]:  # Pillow copies the rest past each comment
            raise MnistfxError(f"{source} is a plain-text PBM/PGM/PPM with comments among its pixels: {fix}")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        at, chunks = 8, 0
        while at + 8 <= len(data) and chunks <= PNG_MAX_CHUNKS:
            at += 12 + int.from_bytes(data[at : at + 4], "big")  # length, type, data, CRC
            chunks += 1
        if chunks > PNG_MAX_CHUNKS:
            raise MnistfxError(f"{source} is a PNG of more than {PNG_MAX_CHUNKS:,} chunks: {fix}")


def _gray(img: Image.Image, source: str, fix: str) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 gray of a decoded image, shrunk to about :data:`DECODE_SIDE`; transparency as 0 alpha."""
    if img.mode == "F":  # float gray (PFM): 0-1 as such files hold it, or 0-255
        a = np.asarray(img, dtype=np.float32)
        if not np.isfinite(a).all():
            raise MnistfxError(f"{source} holds NaN or infinite values: {fix}")
        top = 1.0 if a.max(initial=0) <= 1 else 255.0
        img = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8))
    elif img.mode.startswith("I;16") or img.mode == "I":  # 16-bit (or wider) gray: scale, not clip
        a = np.asarray(img)
        top = 65535 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255
        img = Image.fromarray(np.clip(np.rint(a.astype(np.float32) * (255.0 / top)), 0, 255).astype(np.uint8))
    alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    img = img.convert("RGBA" if alpha else "RGB")
    factor = math.ceil(max(img.size) / DECODE_SIDE)
    if factor > 1:
        img = img.reduce(factor)  # box filter: what the resize to 28×28 would average anyway
    rgba = np.asarray(img, dtype=np.float32)
    if alpha and rgba[..., 3].min() == 255:  # an alpha channel that hides nothing (a canvas's PNG) is none
        alpha = False
    # ITU-R 601 luma, as torchvision's rgb_to_grayscale computes it (then truncated to uint8)
    gray = rgba[..., 0] * 0.2989 + rgba[..., 1] * 0.587 + rgba[..., 2] * 0.114
    if alpha:
        return gray, rgba[..., 3] / 255.0
    return gray.clip(0, 255).astype(np.uint8), None
