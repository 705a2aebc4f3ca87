"""The small CNN of the DP-SGD literature on MNIST, ``dpcnn``, and its tanh variant ``dpcnn_tanh``.

``dpcnn`` is the network of JAX's ``examples/differentially_private_sgd.py``, of TF Privacy's MNIST
tutorial and of Opacus's MNIST example (``SampleConvNet``); ``dpcnn_tanh`` is Tramèr & Boneh's (2021)
end-to-end MNIST CNN, the same layers with tanh and a padding of 2 ("Differentially Private Learning
Needs Better Features", after Papernot et al.'s tempered sigmoids). Both take images in [0, 1]
(no normalisation), have no dropout and no state (batch norm would mix the examples that DP-SGD keeps
apart), and 26,010 parameters::

    conv1  8x8, 1 -> 16, stride 2, padding 3 (tanh: 2), activation    28 -> 14 (tanh: 13) px
    max pool 2x2, stride 1                                             -> 13 (12)
    conv2  4x4, 16 -> 32, stride 2, no padding, activation             -> 5 (5)
    max pool 2x2, stride 1                                             -> 4 (4)
    fc1    512 -> 32, activation;  fc2  32 -> 10

Each starts as its published code starts, drawn from the given generator: ``dpcnn`` as TF Privacy's
tutorial (Keras's defaults: weights Glorot-uniform, in ±sqrt(6 / (fan_in + fan_out)), biases 0),
``dpcnn_tanh`` as Tramèr & Boneh's (PyTorch's defaults: weights and biases uniform in
±1/sqrt(fan_in)). :class:`DPConvNet` is the same network as an ``nn.Module`` with the same parameter
names, for comparisons with libraries that take modules (``benchmarks/dp_opacus.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .model import Model


@dataclass(frozen=True)
class DPArch:
    """One variant: its activation and the first convolution's padding."""

    activation: str  # "relu" or "tanh"
    padding: int  # of conv1 (8x8, stride 2)
    init: str  # "glorot" (Keras's default) or "torch" (PyTorch's default)


DP_ARCHS = {"dpcnn": DPArch("relu", 3, "glorot"), "dpcnn_tanh": DPArch("tanh", 2, "torch")}

SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.weight": (16, 1, 8, 8),
    "conv1.bias": (16,),
    "conv2.weight": (32, 16, 4, 4),
    "conv2.bias": (32,),
    "fc1.weight": (32, 512),
    "fc1.bias": (32,),
    "fc2.weight": (10, 32),
    "fc2.bias": (10,),
}

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


def _init(g: torch.Generator, how: str) -> dict[str, torch.Tensor]:
    """``how="torch"``: every weight and bias ~ Uniform(±1/sqrt(fan_in)), PyTorch's default for these
    layers; ``"glorot"``: weights ~ Uniform(±sqrt(6 / (fan_in + fan_out))) and biases 0, Keras's."""
    params = {}
    for key, shape in SHAPES.items():
        weight = SHAPES[key.rpartition(".")[0] + ".weight"]  # (out, in, *kernel)
        fan_in, fan_out = math.prod(weight[1:]), weight[0] * math.prod(weight[2:])
        if how == "torch":
            bound = 1.0 / math.sqrt(fan_in)
        elif key.endswith(".bias"):
            params[key] = torch.zeros(shape)
            continue
        else:
            bound = math.sqrt(6.0 / (fan_in + fan_out))
        params[key] = torch.empty(shape).uniform_(-bound, bound, generator=g)
    return params


def _forward(params, x: torch.Tensor, arch: DPArch) -> torch.Tensor:
    act = _ACTIVATIONS[arch.activation]
    x = act(F.conv2d(x, params["conv1.weight"], params["conv1.bias"], stride=2, padding=arch.padding))
    x = F.max_pool2d(x, 2, 1)
    x = act(F.conv2d(x, params["conv2.weight"], params["conv2.bias"], stride=2))
    x = F.max_pool2d(x, 2, 1)
    x = act(F.linear(x.flatten(1), params["fc1.weight"], params["fc1.bias"]))
    return F.linear(x, params["fc2.weight"], params["fc2.bias"])


def make_dp_cnn(name: str = "dpcnn") -> Model:
    """The built-in model ``name`` (``"dpcnn"`` or ``"dpcnn_tanh"``) as a :class:`~mnistfx.Model`."""
    arch = DP_ARCHS[name]

    def apply(params, x):
        return _forward(params, x, arch)

    def init(g: torch.Generator) -> dict[str, torch.Tensor]:
        return _init(g, arch.init)

    model = Model(name, init, apply)
    model._shapes = dict(SHAPES)  # known without drawing any numbers
    return model


class DPConvNet(nn.Module):
    """``dpcnn`` (or ``dpcnn_tanh``) as an ``nn.Module`` with PyTorch's default initialisation (from the
    global generator, whatever the model's own); ``load_state_dict(params)`` takes mnistfx parameters
    as they are."""

    def __init__(self, name: str = "dpcnn"):
        super().__init__()
        self.arch = DP_ARCHS[name]
        self.conv1 = nn.Conv2d(1, 16, 8, stride=2, padding=self.arch.padding)
        self.conv2 = nn.Conv2d(16, 32, 4, stride=2)
        self.fc1 = nn.Linear(512, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) for images (N, 1, 28, 28) in [0, 1]."""
        act = _ACTIVATIONS[self.arch.activation]
        x = F.max_pool2d(act(self.conv1(x)), 2, 1)
        x = F.max_pool2d(act(self.conv2(x)), 2, 1)
        return self.fc2(act(self.fc1(x.flatten(1))))
