"""Models of one's own, written as a user would: plain functions, no mnistfx code copied.

``mlp`` has dropout noise; ``bn_mlp`` has state (batch norm's running statistics). The CLI tests
name them as ``own_models:mlp`` and ``own_models:bn_mlp`` (run from this folder).
"""

import torch
from torch.nn import functional as F

import mnistfx


def init(g):
    return {
        "w1": torch.randn(784, 256, generator=g) / 28.0,
        "b1": torch.zeros(256),
        "w2": torch.randn(256, 10, generator=g) / 16.0,
        "b2": torch.zeros(10),
    }


def apply(params, x, *, train=False, noise=None):
    h = F.relu(x.flatten(1) @ params["w1"] + params["b1"])
    if train:
        h = h * (noise["h"] >= 0.2) / 0.8  # dropout from the noise the step is given
    return h @ params["w2"] + params["b2"]


def noise(n, g, device):
    return {"h": torch.rand(n, 256, generator=g, device=device)}


mlp = mnistfx.Model("own_mlp", init, apply, noise=noise, normalize=(0.1307, 0.3081))


def bn_init_state(params):
    return {"mean": torch.zeros(256), "var": torch.ones(256)}


def bn_apply(params, x, *, train=False, state):
    h = x.flatten(1) @ params["w1"]
    if train:  # normalise by the batch's statistics and move the running ones towards them
        mean, var = h.mean(0), h.var(0, unbiased=False)
        state = {"mean": 0.9 * state["mean"] + 0.1 * mean, "var": 0.9 * state["var"] + 0.1 * h.var(0)}
    else:
        mean, var = state["mean"], state["var"]
    h = F.relu((h - mean) / torch.sqrt(var + 1e-5) + params["b1"])
    return h @ params["w2"] + params["b2"], state


bn_mlp = mnistfx.Model("own_bn_mlp", init, bn_apply, init_state=bn_init_state, normalize=(0.1307, 0.3081))


broken = mnistfx.Model("own_broken", init, lambda params, x: (x.flatten(1) @ params["w1"])[:, :5])  # 5 classes
