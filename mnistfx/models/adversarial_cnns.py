"""The two CNNs of the adversarial-training literature on MNIST, ``smallcnn`` and ``madrycnn``.

``smallcnn`` is the network of Wong, Rice & Kolter's MNIST experiments ("Fast is better than free",
2020; first Wong & Kolter's, 2018); ``madrycnn`` is the network of Madry et al.'s MNIST challenge
(2018). Both take images in [0, 1] (no normalisation: an L∞ radius is then in pixel units), have
no dropout and no state, and start as PyTorch's layers start (weights and biases uniform in
±1/sqrt(fan_in)), drawn from the given generator::

    smallcnn (166,406 parameters)                  madrycnn (3,274,634 parameters)
    conv1  4x4, 1 -> 16, stride 2, padding 1, ReLU  conv1  5x5, 1 -> 32, padding 2, ReLU, max pool 2
    conv2  4x4, 16 -> 32, stride 2, padding 1, ReLU conv2  5x5, 32 -> 64, padding 2, ReLU, max pool 2
    fc1    1568 -> 100, ReLU; fc2  100 -> 10         fc1    3136 -> 1024, ReLU; fc2  1024 -> 10
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .model import Model


@dataclass(frozen=True)
class AdvArch:
    """One network: its layers' shapes and how its convolutions run."""

    shapes: dict[str, tuple[int, ...]]
    kernel: int  # the convolutions' size
    stride: int  # the convolutions' stride (smallcnn downsamples by stride, madrycnn by max pooling)
    padding: int


ADV_ARCHS = {
    "smallcnn": AdvArch(
        {
            "conv1.weight": (16, 1, 4, 4),
            "conv1.bias": (16,),
            "conv2.weight": (32, 16, 4, 4),
            "conv2.bias": (32,),
            "fc1.weight": (100, 1568),
            "fc1.bias": (100,),
            "fc2.weight": (10, 100),
            "fc2.bias": (10,),
        },
        kernel=4,
        stride=2,
        padding=1,
    ),
    "madrycnn": AdvArch(
        {
            "conv1.weight": (32, 1, 5, 5),
            "conv1.bias": (32,),
            "conv2.weight": (64, 32, 5, 5),
            "conv2.bias": (64,),
            "fc1.weight": (1024, 3136),
            "fc1.bias": (1024,),
            "fc2.weight": (10, 1024),
            "fc2.bias": (10,),
        },
        kernel=5,
        stride=1,
        padding=2,
    ),
}


def _forward(params, x: torch.Tensor, arch: AdvArch) -> torch.Tensor:
    for conv in ("conv1", "conv2"):
        x = F.conv2d(x, params[f"{conv}.weight"], params[f"{conv}.bias"], stride=arch.stride, padding=arch.padding)
        x = torch.relu(x) if arch.stride > 1 else F.max_pool2d(torch.relu(x), 2)
    x = torch.relu(F.linear(x.flatten(1), params["fc1.weight"], params["fc1.bias"]))
    return F.linear(x, params["fc2.weight"], params["fc2.bias"])


def make_adversarial_cnn(name: str) -> Model:
    """The built-in model ``name`` (``"smallcnn"`` or ``"madrycnn"``) as a :class:`~mnistfx.Model`."""
    arch = ADV_ARCHS[name]

    def init(g: torch.Generator) -> dict[str, torch.Tensor]:
        params = {}
        for key, shape in arch.shapes.items():
            weight = arch.shapes[key.rpartition(".")[0] + ".weight"]
            bound = 1.0 / math.sqrt(math.prod(weight[1:]))  # PyTorch's default for conv and linear layers
            params[key] = torch.empty(shape).uniform_(-bound, bound, generator=g)
        return params

    def apply(params, x):
        return _forward(params, x, arch)

    model = Model(name, init, apply)
    model._shapes = dict(arch.shapes)
    return model
