"""The two reference CNNs as pure functions: ``init(key) -> params``, ``apply(params, x)``.

A model's parameters are a flat ``dict[str, Tensor]`` (``conv1.weight``, ``fc1.bias``, ...).
No object owns them: ``apply`` binds them to a stateless module skeleton that lives on the
``meta`` device and runs it through :func:`torch.func.functional_call`.

Dropout takes its randomness as an argument too. ``dropout_noise`` draws one uniform number
per dropped unit (per channel for the convolutions' ``Dropout2d``) from an explicit
generator; the skeleton turns the noise into masks. The global RNG is never touched, and the
compiled train step receives the noise as an ordinary input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from ._checks import check_whole
from .constants import MODELS
from .errors import ConfigError, WeightsError
from .rng import as_generator


@dataclass(frozen=True)
class _Arch:
    """One reference architecture (see SPEC: no activation after either convolution)."""

    pool1: str                      # "max" or "avg", after conv1
    pool2: str | None               # "max" or None, after conv2
    fc: tuple[int, ...]             # widths of the linear layers, input first
    conv_drop: tuple[float, float]  # Dropout2d after conv1, conv2
    fc_drop: tuple[float, ...]      # Dropout after each hidden linear layer
    normalize: bool                 # inputs are (x - 0.5) / 0.5 rather than x in [0, 1]


ARCHS = {
    "tuned": _Arch("avg", "max", (784, 512, 128, 64, 10), (0.4, 0.2), (0.5, 0.3, 0.15), True),
    "cnn": _Arch("max", None, (3136, 784, 196, 49, 10), (0.4, 0.2), (0.6, 0.3, 0.15), False),
}  # keyed by constants.MODELS (a test checks they agree)


class _Skeleton(nn.Module):
    """The module skeleton: layers for their shapes and names, never for their values."""

    def __init__(self, arch: _Arch):
        super().__init__()
        self.arch = arch
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, device="meta")
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, device="meta")
        self.fcs = [f"fc{i + 1}" for i in range(len(arch.fc) - 1)]
        for name, n_in, n_out in zip(self.fcs, arch.fc[:-1], arch.fc[1:]):
            self.add_module(name, nn.Linear(n_in, n_out, device="meta"))

    def forward(self, x, noise=None):
        a = self.arch
        x = _drop(self.conv1(x), noise, "conv1", a.conv_drop[0])
        x = F.max_pool2d(x, 2) if a.pool1 == "max" else F.avg_pool2d(x, 2)
        x = _drop(self.conv2(x), noise, "conv2", a.conv_drop[1])
        if a.pool2 == "max":
            x = F.max_pool2d(x, 2)
        x = x.flatten(1)
        for name, p in zip(self.fcs[:-1], a.fc_drop):
            x = _drop(F.relu(getattr(self, name)(x)), noise, name, p)
        return getattr(self, self.fcs[-1])(x)


def _drop(x, noise, name, p):
    """Inverted dropout from given uniform noise: shape (N, C) for channels, (N, F) for units."""
    if noise is None:
        return x
    keep = noise[name] >= p
    if x.dim() == 4:
        keep = keep[:, :, None, None]
    return x * keep * (1.0 / (1.0 - p))


@dataclass(frozen=True)
class Model:
    """A model as a pair of pure functions over a flat parameter dict.

    Attributes:
        name: ``"cnn"`` or ``"tuned"``.
        normalize: whether inputs are normalised with mean 0.5, std 0.5.
    """

    name: str
    arch: _Arch
    skeleton: _Skeleton

    @property
    def normalize(self) -> bool:
        return self.arch.normalize

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The name and shape of every parameter, in a fixed order."""
        return {k: tuple(v.shape) for k, v in self.skeleton.named_parameters()}

    def init(self, key) -> dict[str, torch.Tensor]:
        """Fresh float32 CPU parameters.

        Linear weights ~ Normal(0, 1/sqrt(fan_in)), linear biases 0; convolutions use
        PyTorch's default scheme (weight and bias ~ Uniform(±1/sqrt(fan_in))).

        Arguments:
            key: an ``int`` seed or a CPU ``torch.Generator``.

        Returns:
            A dict from parameter name to tensor.
        """
        g = as_generator(key)
        shapes = self.shapes()
        params = {}
        for name, shape in shapes.items():
            layer, kind = name.split(".")
            fan_in = math.prod(shapes[f"{layer}.weight"][1:])
            bound = 1.0 / math.sqrt(fan_in)
            t = torch.empty(shape)
            if layer.startswith("conv"):
                t.uniform_(-bound, bound, generator=g)
            elif kind == "weight":
                t.normal_(0.0, bound, generator=g)
            else:
                t.zero_()
            params[name] = t
        return params

    def apply(self, params, x, *, train: bool = False, key=None, noise=None) -> torch.Tensor:
        """Logits for a batch of (already preprocessed) images.

        Arguments:
            params: the parameter dict.
            x: float tensor of shape (N, 1, 28, 28), see :meth:`preprocess`.
            train: apply dropout; needs ``key`` (or ready-made ``noise``).
            key: an ``int`` seed or ``torch.Generator`` for the dropout masks.
            noise: dropout noise from :meth:`dropout_noise` (instead of ``key``).

        Returns:
            Logits of shape (N, 10).
        """
        check_params(self, params)
        _check_batch(x)
        if train and noise is None:
            if key is None:
                raise ValueError("apply(train=True) needs a key for dropout (an int seed or a torch.Generator)")
            noise = self.dropout_noise(x.shape[0], key=key, device=x.device)
        if train:
            self._check_noise(noise, x.shape[0])
        return functional_call(self.skeleton, params, (x, noise if train else None))

    def _check_noise(self, noise, n: int) -> None:
        widths = self._noise_widths()
        if not isinstance(noise, dict) or set(noise) != set(widths):
            raise ValueError(f"noise must be a dict with keys {', '.join(widths)} (from {self.name}.dropout_noise)")
        for k, w in widths.items():
            if tuple(noise[k].shape) != (n, w):
                raise ValueError(f"noise[{k!r}] has shape {tuple(noise[k].shape)}, expected {(n, w)} for {n} images")

    def _noise_widths(self) -> dict[str, int]:
        return {"conv1": 8, "conv2": 16, **dict(zip(self.skeleton.fcs, self.arch.fc[1:-1]))}

    def dropout_noise(self, n: int, *, key, device=None) -> dict[str, torch.Tensor]:
        """Uniform [0, 1) noise for every dropout layer of a batch of ``n`` images.

        Arguments:
            n: the batch size.
            key: an ``int`` seed or a ``torch.Generator`` on ``device``.
            device: where the noise is made.
        """
        check_whole("n", n, 0, error=ValueError)
        g = as_generator(key, device)
        return {k: torch.rand(n, w, generator=g, device=device) for k, w in self._noise_widths().items()}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 28, 28), (N, 1, 28, 28) or (N, 784) -> float (N, 1, 28, 28) as the model expects."""
        return self.normalize_input(check_images(images).reshape(-1, 1, 28, 28).float() / 255.0)

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images scaled to [0, 1] -> the model's input (mean 0.5, std 0.5 normalisation if it uses one)."""
        return (x - 0.5) / 0.5 if self.normalize else x


def _check_batch(x) -> None:
    """A model input must be a float tensor (N, 1, 28, 28)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x must be a float tensor (N, 1, 28, 28), not {what}: make it with Model.preprocess")
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"x must have shape (N, 1, 28, 28), not {tuple(x.shape)}: make it with Model.preprocess")


def get_model(name: str) -> Model:
    """The model called ``name`` (one of :data:`MODELS`)."""
    if name not in ARCHS:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return Model(name, ARCHS[name], _Skeleton(ARCHS[name]))


def check_params(model: Model, params, *, source: str = "params", dtype: torch.dtype | None = None) -> None:
    """Raise unless ``params`` holds exactly ``model``'s parameter names and shapes.

    Arguments:
        model: the model the parameters are for.
        params: the parameter dict to check.
        source: what to call the parameters in the message (e.g. the file they came from).
        dtype: if given, every tensor must have it too.

    Raises:
        TypeError: ``params`` is not a dict of tensors.
        WeightsError: a name is missing or unexpected, or a shape (or dtype) is wrong.
    """
    if not isinstance(params, dict) or not all(isinstance(v, torch.Tensor) for v in params.values()):
        raise TypeError(f"params must be a dict of tensors (from {model.name}.init), not {type(params).__name__}")
    expected = model.shapes()
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has an unexpected tensor {extra[0]}"
        raise WeightsError(f"{source} {what}: these are not {model.name} weights")
    for k, shape in expected.items():
        if tuple(params[k].shape) != shape:
            raise WeightsError(f"{source}: {k} has shape {tuple(params[k].shape)}, {model.name} expects "
                               f"{shape}: these are weights of another model")
        if dtype is not None and params[k].dtype != dtype:
            raise WeightsError(f"{source}: {k} is {params[k].dtype}, expected {dtype}")


_IMAGE_SHAPES = ((28, 28), (1, 28, 28), (784,))


def check_images(images) -> torch.Tensor:
    """``images`` if it is a uint8 batch of shape (N, 28, 28), (N, 1, 28, 28) or (N, 784).

    Raises:
        TypeError: not a uint8 tensor.
        ValueError: another shape.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        what = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"images must be uint8 (0-255), not {what}: for float images in [0, 1] use "
                        "Model.normalize_input")
    if tuple(images.shape[1:]) not in _IMAGE_SHAPES:
        raise ValueError(f"images must have shape (N, 28, 28), (N, 1, 28, 28) or (N, 784), not {tuple(images.shape)}")
    return images


def num_params(params: dict[str, torch.Tensor]) -> int:
    """The total number of parameters in a parameter dict."""
    return sum(p.numel() for p in params.values())
