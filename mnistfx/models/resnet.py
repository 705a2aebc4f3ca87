"""``resnet``: a small residual network with batch norm, as pure functions.

Batch norm's running statistics are explicit state: ``apply(params, x, train=, state=)`` returns
``(logits, new_state)``. In train mode it normalises by the batch's statistics and returns the
running ones moved towards them (PyTorch's rule: momentum 0.1, the running variance unbiased); in
eval mode it normalises by the running statistics and returns the state unchanged. Nothing is
mutated in place, so the step stays pure under ``torch.func.grad``, ``vmap`` and ``torch.compile``.

The layout (parameter names in brackets)::

    stem [stem]:   conv 3x3, 1 -> w0, BN, ReLU                          28 x 28
    stage i:       basic blocks [s{i}b{j}]: conv 3x3 (stride 2 in a stage's first
                   block: 14 x 14, then 7 x 7), BN, ReLU [.a], conv 3x3, BN [.b], plus
                   the input (through conv 1x1 + BN [.down] where the shape changes), ReLU
    head [fc]:     global average pool, linear -> 10

Each unit ``u`` has ``u.conv.weight`` (no bias), ``u.bn.weight`` and ``u.bn.bias``, and the state
``u.bn.running_mean`` and ``u.bn.running_var``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .model import Model

BN_MOMENTUM = 0.1
BN_EPS = 1e-5


@dataclass(frozen=True)
class ResNetArch:
    """A residual network's shape: the stem's width, then each stage's width and number of blocks."""

    stem: int
    stages: tuple[tuple[int, int], ...]  # (width, blocks); each stage halves the height and width


RESNET = ResNetArch(stem=32, stages=((64, 1), (128, 1)))


def _layers(arch: ResNetArch):
    """``(unit, c_in, c_out, kernel, stride)`` for every convolution + batch-norm unit."""
    convs = [("stem", 1, arch.stem, 3, 1)]
    c_in = arch.stem
    for i, (width, blocks) in enumerate(arch.stages):
        for j in range(blocks):
            stride = 2 if j == 0 else 1
            name = f"s{i}b{j}"
            convs += [(f"{name}.a", c_in, width, 3, stride), (f"{name}.b", width, width, 3, 1)]
            if stride != 1 or c_in != width:
                convs.append((f"{name}.down", c_in, width, 1, stride))
            c_in = width
    return convs


def batch_norm(x, params, state, name, train):
    """Batch norm of ``x`` (N, C, H, W) by layer ``name``: ``(y, new_stats)``, computed in float32.

    ``new_stats`` holds the layer's running statistics: moved towards the batch's in train mode,
    unchanged in eval mode.
    """
    x = x.float()
    mean_key, var_key = f"{name}.running_mean", f"{name}.running_var"
    if train:
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        n = x.numel() // x.shape[1]
        stats = {
            mean_key: (1 - BN_MOMENTUM) * state[mean_key] + BN_MOMENTUM * mean.detach(),
            var_key: (1 - BN_MOMENTUM) * state[var_key] + BN_MOMENTUM * var.detach() * (n / max(n - 1, 1)),
        }
    else:
        mean, var = state[mean_key], state[var_key]
        stats = {mean_key: mean, var_key: var}
    scale = params[f"{name}.weight"] * torch.rsqrt(var + BN_EPS)
    shift = params[f"{name}.bias"] - mean * scale
    return x * scale[:, None, None] + shift[:, None, None], stats


def make_resnet(arch: ResNetArch = RESNET, name: str = "resnet") -> Model:
    """The residual network ``arch`` as a :class:`~mnistfx.Model` called ``name``."""
    layers = _layers(arch)
    strides = {n: s for n, _, _, _, s in layers}
    blocks = [f"s{i}b{j}" for i, (_, k) in enumerate(arch.stages) for j in range(k)]
    width = arch.stages[-1][0]

    def init(g: torch.Generator) -> dict[str, torch.Tensor]:
        """Convolutions: Kaiming normal (fan out, ReLU); BN scale 1 and shift 0; the linear layer:
        PyTorch's default. (A block's last BN scale at 0, as some ResNets start, learned 3x slower here.)"""
        params = {}
        for n, c_in, c_out, k, _ in layers:
            params[f"{n}.conv.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * math.sqrt(2.0 / (c_out * k * k))
            params[f"{n}.bn.weight"] = torch.ones(c_out)
            params[f"{n}.bn.bias"] = torch.zeros(c_out)
        bound = 1.0 / math.sqrt(width)
        params["fc.weight"] = torch.empty(10, width).uniform_(-bound, bound, generator=g)
        params["fc.bias"] = torch.empty(10).uniform_(-bound, bound, generator=g)
        return params

    def init_state(params) -> dict[str, torch.Tensor]:
        """Running means 0 and variances 1, as a fresh ``nn.BatchNorm2d``."""
        state = {}
        for n, _, c_out, _, _ in layers:
            state[f"{n}.bn.running_mean"] = torch.zeros(c_out)
            state[f"{n}.bn.running_var"] = torch.ones(c_out)
        return state

    def apply(params, x, *, train=False, state):
        new_state = {}

        def conv_bn(h, n, relu=True):
            w = params[f"{n}.conv.weight"]
            h = F.conv2d(h, w, stride=strides[n], padding=w.shape[-1] // 2)
            h, stats = batch_norm(h, params, state, f"{n}.bn", train)
            new_state.update(stats)
            return F.relu(h) if relu else h

        h = conv_bn(x, "stem")
        for b in blocks:
            skip = conv_bn(h, f"{b}.down", relu=False) if f"{b}.down" in strides else h
            h = F.relu(conv_bn(conv_bn(h, f"{b}.a"), f"{b}.b", relu=False) + skip)
        h = h.mean((2, 3))
        return F.linear(h, params["fc.weight"], params["fc.bias"]), new_state

    def state_problem(state) -> str | None:
        """A running variance below 0 (NaN is left to the finiteness check) cannot be batch norm's."""
        for k, v in state.items():
            if k.endswith("running_var") and bool((v < 0).any()):
                return f"{k} holds negative variances"
        return None

    return Model(name, init, apply, init_state=init_state, normalize=(0.1307, 0.3081), state_problem=state_problem)
