"""Internal: the type aliases public signatures share (torch-free, so that the command's help loads none)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    import numpy as np
    import torch

StrPath = Union[str, "os.PathLike[str]"]  # a file or folder, as a string or a path
Key = Union[int, "torch.Generator"]  # randomness: a seed, or a generator to draw from
Device = Union[str, "torch.device"]  # "cpu", "cuda", "cuda:N", or a torch.device
Tensors = dict[str, "torch.Tensor"]  # parameters, a state, dropout noise: names to tensors
Gray = Union["np.ndarray", "torch.Tensor"]  # a 2-D array of gray values
ImageInput = StrPath | bytes | Gray  # an image: its file, the file's bytes, or its gray values
