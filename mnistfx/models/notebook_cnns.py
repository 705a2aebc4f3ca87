"""The original notebook's two CNNs, ``tuned`` and ``cnn`` (see SPEC: no activation after either convolution).

They are :class:`~mnistfx.Model`\\ s like any other: ``init`` draws the parameters, ``apply`` binds
them to a stateless module skeleton that lives on the ``meta`` device and runs it through
:func:`torch.func.functional_call`. Dropout takes its randomness as an argument: ``noise`` draws one
uniform number per dropped unit (per channel for the convolutions' ``Dropout2d``) and the skeleton
turns it into masks, so the global RNG is never touched.

The notebook's own formulation is kept beside them for comparisons: :class:`NotebookNet`, its
``nn.Module``, and :func:`train_transform`, its per-image training transforms. mnistfx never trains
through these; the tests check that :meth:`Model.apply` matches the module, and
``benchmarks/notebook_vs_mnistfx.py`` times the notebook's training loop against mnistfx's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from .model import Model


@dataclass(frozen=True)
class Arch:
    """One reference architecture."""

    pool1: str  # "max" or "avg", after conv1
    pool2: str | None  # "max" or None, after conv2
    fc: tuple[int, ...]  # widths of the linear layers, input first
    conv_drop: tuple[float, float]  # Dropout2d after conv1, conv2
    fc_drop: tuple[float, ...]  # Dropout after each hidden linear layer
    normalize: bool  # inputs are (x - 0.5) / 0.5 rather than x in [0, 1]


ARCHS = {
    "tuned": Arch("avg", "max", (784, 512, 128, 64, 10), (0.4, 0.2), (0.5, 0.3, 0.15), True),
    "cnn": Arch("max", None, (3136, 784, 196, 49, 10), (0.4, 0.2), (0.6, 0.3, 0.15), False),
}  # keyed by constants.NOTEBOOK_MODELS (a test checks they agree)


class _Skeleton(nn.Module):
    """The module skeleton: layers for their shapes and names, never for their values."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.arch = arch
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, device="meta")
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, device="meta")
        self.fcs = [f"fc{i + 1}" for i in range(len(arch.fc) - 1)]
        for name, n_in, n_out in zip(self.fcs, arch.fc[:-1], arch.fc[1:], strict=True):
            self.add_module(name, nn.Linear(n_in, n_out, device="meta"))

    def forward(self, x, noise=None):
        a = self.arch
        x = _drop(self.conv1(x), noise, "conv1", a.conv_drop[0])
        x = F.max_pool2d(x, 2) if a.pool1 == "max" else F.avg_pool2d(x, 2)
        x = _drop(self.conv2(x), noise, "conv2", a.conv_drop[1])
        if a.pool2 == "max":
            x = F.max_pool2d(x, 2)
        x = x.flatten(1)
        for name, p in zip(self.fcs[:-1], a.fc_drop, strict=True):
            x = _drop(F.relu(getattr(self, name)(x)), noise, name, p)
        return getattr(self, self.fcs[-1])(x)


def _drop(x, noise, name, p):
    """Inverted dropout from given uniform noise: shape (N, C) for channels, (N, F) for units."""
    if not noise:
        return x
    keep = noise[name] >= p
    if x.dim() == 4:
        keep = keep[:, :, None, None]
    return x * keep * (1.0 / (1.0 - p))


def reference_model(name: str) -> Model:
    """The built-in model ``name`` (a key of :data:`ARCHS`) as a :class:`~mnistfx.Model`."""
    arch = ARCHS[name]
    skeleton = _Skeleton(arch)
    shapes = {k: tuple(v.shape) for k, v in skeleton.named_parameters()}
    widths = {"conv1": 8, "conv2": 16, **dict(zip(skeleton.fcs, arch.fc[1:-1], strict=False))}

    def init(g: torch.Generator) -> dict[str, torch.Tensor]:
        """Linear weights ~ Normal(0, 1/sqrt(fan_in)), linear biases 0; convolutions PyTorch's default
        (weight and bias ~ Uniform(±1/sqrt(fan_in)))."""
        params = {}
        for key, shape in shapes.items():
            layer, kind = key.split(".")
            bound = 1.0 / math.sqrt(math.prod(shapes[f"{layer}.weight"][1:]))
            t = torch.empty(shape)
            if layer.startswith("conv"):
                t.uniform_(-bound, bound, generator=g)
            elif kind == "weight":
                t.normal_(0.0, bound, generator=g)
            else:
                t.zero_()
            params[key] = t
        return params

    def apply(params, x, *, noise=None):
        return functional_call(skeleton, params, (x, noise))

    def noise(n: int, g: torch.Generator, device) -> dict[str, torch.Tensor]:
        return {k: torch.rand(n, w, generator=g, device=device) for k, w in widths.items()}

    model = Model(name, init, apply, noise=noise, normalize=(0.5, 0.5) if arch.normalize else None)
    model._shapes = shapes  # known without drawing any numbers
    return model


class NotebookNet(nn.Module):
    """The notebook's model: ``Convolutional_layers`` then ``Linear_layers``, as nn.Sequential.

    Its parameters are created by PyTorch's default init from the global RNG, as in the
    notebook; load mnistfx parameters with :func:`to_notebook_state_dict`.
    """

    def __init__(self, name: str):
        super().__init__()
        a = ARCHS[name]
        pool = {"max": nn.MaxPool2d(2), "avg": nn.AvgPool2d(2), None: nn.Identity()}
        self.Convolutional_layers = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.Dropout2d(a.conv_drop[0]),
            pool[a.pool1],
            nn.Conv2d(8, 16, 3, padding=1),
            nn.Dropout2d(a.conv_drop[1]),
            pool[a.pool2],
        )
        layers = []
        for n_in, n_out, p in zip(a.fc[:-2], a.fc[1:-1], a.fc_drop, strict=True):
            layers += [nn.Linear(n_in, n_out), nn.ReLU(), nn.Dropout(p)]
        self.Linear_layers = nn.Sequential(*layers, nn.Linear(a.fc[-2], a.fc[-1]))

    def forward(self, x):
        return self.Linear_layers(self.Convolutional_layers(x).flatten(1))


def train_transform(name: str):
    """The notebook's per-image training transform for PIL images: a random rotation of ±15°, then
    a random shift of ±10 % and scale of 0.9-1.1 (nearest, fill 0); ``tuned`` normalises between the two."""
    from torchvision import transforms  # only the comparisons with the notebook need torchvision

    rotate = transforms.RandomRotation(15)
    affine = transforms.RandomAffine(0, translate=(0.1, 0.1), scale=(0.9, 1.1))
    if ARCHS[name].normalize:
        return transforms.Compose([rotate, transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,)), affine])
    return transforms.Compose([rotate, affine, transforms.ToTensor()])
