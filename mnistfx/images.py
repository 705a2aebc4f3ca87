"""Reading digit images from files (PNG, JPEG, ...) as MNIST-like uint8 tensors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from .errors import MnistfxError


def read_digit_images(paths, *, invert: bool = False) -> torch.Tensor:
    """Read image files as a uint8 batch (N, 28, 28): grayscale, resized to 28×28.

    Arguments:
        paths: PNG or JPEG files, each holding one digit.
        invert: the digits are dark on a light background (MNIST's are light on dark).

    Returns:
        A uint8 tensor (N, 28, 28).

    Raises:
        MnistfxError: a file is missing or is not an image torchvision can decode.
    """
    from torchvision.datasets.folder import pil_loader
    from torchvision.transforms.functional import pil_to_tensor, rgb_to_grayscale

    out = []
    for path in map(Path, paths):
        if not path.is_file():
            raise MnistfxError(f"cannot read image {path} (No such file)")
        try:
            img = rgb_to_grayscale(pil_to_tensor(pil_loader(str(path))))
        except (OSError, ValueError, SyntaxError):  # PIL's UnidentifiedImageError is an OSError
            raise MnistfxError(f"{path} is not an image file (PNG, JPEG, ...) that can be decoded") from None
        if img.shape[-2:] != (28, 28):
            img = F.interpolate(img[None].float(), size=(28, 28), mode="bilinear", antialias=True,
                                align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        out.append(255 - img[0] if invert else img[0])
    return torch.stack(out)
