"""Adversarial training: each batch replaced by adversarial examples of the model being trained, then an
ordinary update on them. One step of sign-gradient ascent from a random start in the ε-ball is FGSM
training with a random start (Wong, Rice & Kolter 2020, "Fast is better than free"); several is PGD
training (Madry et al. 2018).

The step is a pure train step with :func:`~mnistfx.make_train_step`'s signature, so the loop compiles,
checkpoints and resumes it as it does the built-in one. Its random starts come from the run's
``gaussian`` stream (the trainer draws ``step.gaussian_size`` standard normal numbers per step, as for
DP-SGD's noise), made uniform in [-1, 1] by the normal distribution function: a resumed run draws the
same starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import grad

from .._checks import check_choice, check_whole, is_finite
from ..constants import MAX_ADV_STEPS, PRECISIONS
from ..errors import ConfigError
from ..models.attacks import attack_loss, project
from ..models.model import Model
from .optim import Optimizer
from .step import make_train_step


def default_step_size(eps: float, steps: int) -> float:
    """The attack's step when none is given: 1.25 ε for FGSM with a random start (Wong et al.'s α), else
    2.5 ε / steps (Madry et al.'s rule, 0.01 for PGD-40 at ε 0.1 ... 0.0188 at ε 0.3)."""
    return 1.25 * eps if steps == 1 else 2.5 * eps / steps


def make_adversarial_step(
    model: Model,
    opt: Optimizer,
    *,
    eps: float,
    batch_size: int,
    steps: int = 1,
    step_size: float | None = None,
    ramp_steps: int = 0,
    label_smoothing: float = 0.0,
    precision: str = "fp32",
    average: Callable | None = None,
) -> Callable:
    """The adversarial train step ``(params, state, opt_state, x, y, noise) -> (params, state, opt_state,
    loss, aux)``.

    Each image of the batch starts at a uniformly random point within ``eps`` (L∞, in [0, 1] pixel units)
    and takes ``steps`` steps of ``step_size`` along the sign of the loss's gradient, each projected back
    into the ``eps``-ball and [0, 1]; the model (in training mode, with the batch's dropout noise) is then
    updated on these images as :func:`~mnistfx.make_train_step`'s step would be on the clean ones (the
    loss it returns is the loss on them).

    Arguments:
        model: the model trained.
        opt: a pure optimiser.
        eps: the L∞ radius of the attack, in [0, 1] pixel units (e.g. 0.3).
        batch_size: the images per step (``noise["gaussian"]`` holds 784 numbers per image).
        steps: the attack's steps (1: FGSM with a random start).
        step_size: the attack's step (default: 1.25 ``eps`` for one step, 2.5 ``eps / steps`` for more).
        ramp_steps: over the first this many steps, the radius (and the step with it) rises linearly from
            ``eps / ramp_steps`` to ``eps`` (0: ``eps`` from the start): a model attacked at ε 0.3 from its
            first step may never leave chance. The step count is the optimiser state's ``"step"``.
        label_smoothing, precision, average: as :func:`~mnistfx.make_train_step`'s.

    Returns:
        The step, with ``gaussian_size`` (``784 * batch_size``), the standard normal numbers it takes per
        step in ``noise["gaussian"]``.

    Raises:
        TypeError: ``model`` is not a :class:`~mnistfx.Model`.
        ConfigError: an argument out of range, or a model whose noise is named ``gaussian``.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a mnistfx.Model, not {type(model).__name__}")
    if not (is_finite(eps) and 0 < eps <= 1):
        raise ConfigError(f"`adv_eps` must be a radius above 0 and at most 1 (pixel units), not {eps!r}")
    steps = check_whole("`adv_steps`", steps, 1, MAX_ADV_STEPS)
    batch_size = check_whole("`batch_size`", batch_size, 1)
    ramp_steps = check_whole("`ramp_steps`", ramp_steps, 0)
    step_size = default_step_size(eps, steps) if step_size is None else step_size
    if not (is_finite(step_size) and 0 < step_size <= 1):
        raise ConfigError(f"`adv_step_size` must be above 0 and at most 1 (pixel units), not {step_size!r}")
    check_choice("`precision`", precision, PRECISIONS)
    if "gaussian" in model._noise_shapes:
        raise ConfigError(f"{model.name}'s noise has a key 'gaussian', which adversarial training uses: rename it")
    update = make_train_step(model, opt, label_smoothing=label_smoothing, precision=precision, average=average)
    gradient = grad(attack_loss(model, train=True), has_aux=True)
    mean, std = model.normalize or (0.0, 1.0)
    eps_, size_ = float(eps), float(step_size)

    def step(params, state, opt_state, x, y, noise):
        noise = dict(noise)
        z = noise.pop("gaussian").reshape(x.shape)
        x0 = (x * std + mean).clamp(0, 1)  # the batch as images in [0, 1] (x is the model's input)
        scale = ((opt_state["step"] + 1) / ramp_steps).clamp(max=1) if ramp_steps else 1.0
        radius, size = eps_ * scale, size_ * scale
        start = torch.special.erf(z / math.sqrt(2))  # uniform in [-1, 1]: 2 Φ(z) - 1
        xa = project(x0 + radius * start, x0, radius)
        for _ in range(steps):
            g, _ = gradient(xa, params, state, y, noise)
            xa = project(xa + size * g.sign(), x0, radius)
        return update(params, state, opt_state, model.normalize_input(xa), y, noise)

    step.gaussian_size = 784 * batch_size  # type: ignore[attr-defined]
    return step
