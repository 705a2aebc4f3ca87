"""Adversarial examples under an L∞ bound: FGSM (Goodfellow et al. 2015) and PGD with random starts
(Madry et al. 2018), written with :mod:`torch.func` (the gradient of the loss with respect to the image).

Both work on images in [0, 1], before the model's ``normalize``: ``eps`` and ``step_size`` are in pixel
units (0.3 is 30 % of the white-to-black range, as the MNIST literature states them), and every
adversarial image stays a valid image (clipped to [0, 1]).

:func:`make_attack_step` is the pure function one attack step is (what adversarial training runs
inside its train step, and what :func:`~mnistfx.robustness` compiles); :func:`fgsm` and :func:`pgd`
run it over a whole set in chunks. An image counts as broken as soon as any step (or the clean image)
is misclassified, and that image is the one returned: the accuracy on the returned images is the
accuracy under attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.func import grad, vmap
from torch.nn import functional as F

from .._checks import check_whole, is_finite, is_whole
from ..errors import ConfigError
from ..rng import fold_in
from .evaluation import EVAL_BATCH, _check_labels, _check_model_args
from .model import Model, blaming, check_images, check_params, check_state

AttackStep = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def attack_loss(model: Model, *, members: int | None = None, train: bool = False) -> Callable:
    """The loss an attack ascends, as a pure function ``loss(x, params, state, labels, noise) ->
    (summed loss, logits)`` of images ``x`` (N, 1, 28, 28) in [0, 1].

    The loss is the cross-entropy summed over the images (so each image's gradient is its own,
    whatever the batch); an ensemble's (``members=K``) is the cross-entropy of the mean of its
    members' probabilities, the prediction it makes. ``train=True`` runs the model in training mode
    with ``noise`` (dropout), as adversarial training attacks the model it is training; the state the
    pass would update is dropped.
    """

    def one(params, state, z, noise):
        return model.forward(params, state, z, train=train, noise=noise)[0]

    def loss(x, params, state, labels, noise=None):
        z = model.normalize_input(x)
        if members is None:
            out = one(params, state, z, noise).float()
            return F.cross_entropy(out, labels, reduction="sum"), out
        out = vmap(one, in_dims=(0, 0, None, None if noise is None else 0))(params, state, z, noise).float()
        log_mean = torch.logsumexp(out.log_softmax(-1), 0) - math.log(members)
        return F.nll_loss(log_mean, labels, reduction="sum"), log_mean

    return loss


def project(x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """``x`` moved into the L∞ ball of radius ``eps`` around ``x0``, and into [0, 1]."""
    return torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0, 1)


def make_attack_step(model: Model, *, members: int | None = None) -> AttackStep:
    """One step of a sign-gradient attack as a pure function (compile it with
    :func:`~mnistfx.compile_step`):

    ``step(params, state, x, x0, labels, eps, step_size) -> (x_next, correct)``

    where ``x`` is the current image (N, 1, 28, 28) in [0, 1], ``x0`` the clean one, ``eps`` and
    ``step_size`` 0-d tensors (tensors, so that other values do not recompile), ``x_next`` is ``x``
    moved ``step_size`` along the sign of the loss's gradient, projected into the ``eps``-ball
    around ``x0`` and into [0, 1], and ``correct`` (bool, N) says which images ``x`` (before the step)
    still classifies correctly. FGSM is one step from ``x0`` with ``step_size = eps``.

    Arguments:
        model: the model attacked (in evaluation mode).
        members: attack an ensemble of this many members (stacked params and state) through the
            mean of its members' probabilities.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a mnistfx.Model, not {type(model).__name__}")
    if members is not None and not (is_whole(members) and members >= 1):
        raise ValueError(f"members must be a whole number ≥ 1 (the ensemble's size) or None, not {members!r}")
    gradient = grad(attack_loss(model, members=members), has_aux=True)

    def step(params, state, x, x0, labels, eps, step_size):
        g, out = gradient(x, params, state, labels)
        correct = out.argmax(-1) == labels
        return project(x + step_size * g.sign(), x0, eps), correct

    return step


def fgsm(
    model: Model,
    params: dict,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    state: dict | None = None,
    members: int | None = None,
    batch_size: int = EVAL_BATCH,
    step: AttackStep | None = None,
) -> torch.Tensor:
    """Adversarial images by the fast gradient sign method: one step of ``eps`` along the sign of
    the loss's gradient (an image the model already gets wrong is returned as it is).

    Arguments as :func:`pgd` (which this is with ``steps=1``, ``step_size=eps`` and no random start).

    Returns:
        float32 images in [0, 1], of the input's shape, on the parameters' device.
    """
    return _attack(model, params, images, labels, eps, 1, eps, 1, None, state, members, batch_size, step)


def pgd(
    model: Model,
    params: dict,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    steps: int = 40,
    step_size: float = 0.01,
    restarts: int = 1,
    seed: int = 0,
    state: dict | None = None,
    members: int | None = None,
    batch_size: int = EVAL_BATCH,
    step: AttackStep | None = None,
) -> torch.Tensor:
    """Adversarial images by projected gradient descent under an L∞ bound (Madry et al. 2018):
    from a uniformly random point within ``eps`` of the image, ``steps`` steps of ``step_size``
    along the sign of the loss's gradient, each projected back into the ``eps``-ball and [0, 1].

    An image counts as broken once the clean image or any point the attack reaches is
    misclassified, and that point is returned; each restart (a new random start) attacks only the
    images no earlier one broke. The random starts come from ``seed`` and each image's position, so
    the first N images of a set start where they start within the whole set.

    Arguments:
        model: the model attacked, in evaluation mode.
        params: its parameters (an ensemble's stacked, with ``members=K``: attacked through the mean of
            its members' probabilities).
        images: uint8 images of 0-255 or float images in [0, 1], as :func:`~mnistfx.logits` takes them.
        labels: int64 tensor (N,) of their digits.
        eps: the L∞ radius, in [0, 1] pixel units (e.g. 0.3).
        steps: attack steps per start.
        step_size: the size of one step, in pixel units.
        restarts: random starts per image (the image is broken if any start breaks it).
        seed: the random starts' seed.
        state: the model's state (a model with state).
        members: ``params`` are an ensemble of this many members.
        batch_size: images attacked at once.
        step: a compiled :func:`make_attack_step` of the same model and ``members`` (default: the eager
            one); the last chunk is padded to ``batch_size`` so that it sees one shape.

    Returns:
        float32 images in [0, 1], of the input's shape, on the parameters' device.

    Raises:
        TypeError, ValueError: arguments that are not what is described above.
    """
    check_whole("`steps`", steps, 1, error=ConfigError)
    check_whole("`restarts`", restarts, 1, error=ConfigError)
    check_whole("`seed`", seed, -(2**63), 2**63 - 1, error=ConfigError)
    args = (eps, steps, step_size, restarts, seed, state, members, batch_size, step)
    return _attack(model, params, images, labels, *args)


def _check_radius(name: str, value: Any) -> float:
    if not (is_finite(value) and 0 <= value <= 1):
        raise ConfigError(f"`{name}` must be a number from 0 to 1 (pixel units: 0.3 is 30 % of white), not {value!r}")
    return float(value)


def _attack(model, params, images, labels, eps, steps, step_size, restarts, seed, state, members, batch_size, step):
    """The chunked driver of :func:`fgsm` (``seed=None``: no random start) and :func:`pgd`."""
    _check_model_args(model, params, state, members)
    images = check_images(images, floats=True)
    _check_labels(labels, images.shape[0])
    eps, step_size = _check_radius("eps", eps), _check_radius("step_size", step_size)
    check_whole("`batch_size`", batch_size, 1, error=ConfigError)
    if step is not None and not callable(step):
        raise TypeError(f"step must be a function made by make_attack_step, not {type(step).__name__}")
    if state is None and model.has_state:
        raise ValueError(f"{model.name} has state (e.g. batch-norm statistics): pass state=")
    state = {} if state is None else state
    pad = step is not None
    if step is None:
        check_params(model, params, members=members)
        check_state(model, state, members=members)
        step = make_attack_step(model, members=members)
    device = next(iter(params.values())).device
    shape = images.shape
    x0_all = images.reshape(-1, 1, 28, 28).to(device)
    x0_all = x0_all.float() / 255 if x0_all.dtype == torch.uint8 else x0_all.float()
    y_all = labels.to(device=device, dtype=torch.int64)
    n = x0_all.shape[0]
    adv = x0_all.clone()
    broken = torch.zeros(n, dtype=torch.bool, device=device)
    eps_t = torch.tensor(eps, device=device)
    size_t = torch.tensor(step_size, device=device)
    with torch.no_grad():
        for restart in range(restarts):
            left = (~broken).nonzero().squeeze(1)
            if restart > 0 and not len(left):
                break
            start = None if seed is None else _random_start(seed, restart, n, eps)
            for i in range(0, len(left), batch_size):
                idx = left[i : i + batch_size]
                x0, y = x0_all[idx], y_all[idx]
                x = x0 if start is None else project(x0 + start[idx.cpu()].to(device), x0, eps)
                k = len(idx)
                if pad and k < batch_size:
                    x0, y, x = (_pad(t, batch_size) for t in (x0, y, x))
                hit = torch.zeros(len(x), dtype=torch.bool, device=device)
                found = x.clone()
                if restart == 0 and start is not None:  # the clean image first: one it gets wrong is broken
                    with blaming(model, "apply"):
                        _, ok = step(params, state, x0, x0, y, eps_t, size_t)
                    hit, found = ~ok, x0.clone()
                hit[k:] = True  # the padding: never waited for
                for j in range(steps + 1):  # the last pass only checks the last point
                    with blaming(model, "apply"):
                        nxt, ok = step(params, state, x, x0, y, eps_t, size_t)
                    new = ~ok & ~hit
                    found[new], hit = x[new], hit | new
                    if j == steps or bool(hit.all()):
                        break
                    x = nxt
                found[~hit] = x[~hit]
                adv[idx], broken[idx] = found[:k], hit[:k]
    return adv.reshape(shape)


def _random_start(seed: int, restart: int, n: int, eps: float) -> torch.Tensor:
    """Uniform noise in [-eps, eps] for ``n`` images, drawn in blocks of ``_START_BLOCK`` images from
    generators of their own: image ``i``'s depends on ``i``, not on ``n`` or the batch size."""
    blocks = []
    for b in range(0, n, _START_BLOCK):
        g = torch.Generator().manual_seed(fold_in(seed, f"pgd/start/{restart}/{b}"))
        blocks.append(torch.rand(_START_BLOCK, 1, 28, 28, generator=g))
    return (torch.cat(blocks)[:n] * 2 - 1) * eps if blocks else torch.empty(0, 1, 28, 28)


_START_BLOCK = 256


def _pad(t: torch.Tensor, size: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros((size - t.shape[0], *t.shape[1:]))])
