"""Differentially private training: the DP-SGD step, and the privacy it spends.

:func:`make_private_step` is DP-SGD (Abadi et al. 2016, https://arxiv.org/abs/1607.00133) as a pure
step with :func:`~mnistfx.training.step.make_train_step`'s signature: each example's gradient (by
``torch.func.vmap`` of ``torch.func.grad`` of that example's cross-entropy) is scaled so that its L2
norm over all the parameters together is at most ``clip``; the scaled gradients are summed, Gaussian
noise of standard deviation ``noise_multiplier * clip`` is added to each coordinate of the sum, and
the result is divided by the batch size before the optimiser's update. The noise's standard normal
numbers come in as an input, like dropout's (``noise["gaussian"]``), so the step stays pure and
compiles into one graph.

:func:`privacy_spent` and :func:`noise_for_epsilon` account for the privacy with Google's
``dp-accounting`` library (``pip install 'mnistfx[privacy]'``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch.func import grad_and_value, vmap
from torch.nn import functional as F

from .._checks import check_choice, check_whole, is_finite
from ..constants import PRECISIONS
from ..errors import ConfigError, MnistfxError
from ..models.model import Model
from .optim import Optimizer

GAUSSIAN = "gaussian"  # the key of the step's noise dict that holds DP-SGD's standard normal numbers
MAX_NOISE_MULTIPLIER = 1000.0  # noise_for_epsilon gives up beyond this: no model learns under it
ACCOUNTANTS = ("rdp", "pld")


def make_private_step(
    model: Model,
    opt: Optimizer,
    *,
    clip: float,
    noise_multiplier: float,
    precision: str = "fp32",
    average: Callable | None = None,
    batch_size: int | None = None,
) -> Callable:
    """The DP-SGD train step ``(params, state, opt_state, x, y, noise) -> (params, state, opt_state, loss, aux)``.

    ``noise`` holds the model's per-image noise (dropout, one row per image, as
    :func:`~mnistfx.training.batches.batch_inputs` makes it; each example gets its own row) and
    ``noise["gaussian"]``: ``step.gaussian_size`` standard normal float32 numbers in one flat vector,
    one per parameter, taken by the parameters in sorted name order. The gradient the optimiser gets is
    ``(sum of the clipped per-example gradients + noise_multiplier * clip * z) / batch size``, each
    example's gradient multiplied by ``min(1, clip / its norm)``. ``aux`` holds ``clipped``, the
    fraction of the batch's examples whose gradient norm exceeded ``clip``. ``state`` is ``{}`` and
    stays so.

    Arguments:
        model: a model without state (batch norm mixes the examples of a batch, which DP-SGD keeps apart).
        opt: a pure optimiser (e.g. :func:`~mnistfx.sgd`).
        clip: the largest L2 norm of one example's gradient, over all parameters together.
        noise_multiplier: σ, the noise's standard deviation in units of ``clip`` (0: no noise, no privacy).
        precision: ``"bf16"`` runs the forward pass under bf16 autocast (the loss, gradients, clipping
            and update stay float32); ``"fp32"`` does not.
        average: ``average(grads, loss, state) -> (grads, loss, state)``, the means over data-parallel
            processes, applied to the mean of the clipped gradients before the noise is added. The noise
            is then added once, by every process alike: they must all get the same ``z``.
        batch_size: what the noisy sum is divided by (default: the rows of ``x``); with ``average``
            required, and the batch size of all processes together.

    Returns:
        The step, with the attributes ``gaussian_size`` (the number of parameters, the length of
        ``noise["gaussian"]``) and ``layout_optimization`` (``False``: compiled without inductor's
        channels-last layout, see :func:`~mnistfx.compile_step`).
        :func:`~mnistfx.training.step.make_multi_step` of it takes ``k`` such vectors one after another
        (``k * gaussian_size`` numbers).

    Raises:
        TypeError: ``model`` is not a :class:`~mnistfx.Model` or ``opt`` not an optimiser.
        ConfigError: the model has state or noise named ``gaussian``, or an argument is out of range.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a mnistfx.Model, not {type(model).__name__}")
    if not (callable(getattr(opt, "update", None)) and callable(getattr(opt, "init", None))):
        raise TypeError(f"opt must be an optimiser (init and update, e.g. mnistfx.sgd(...)), not {type(opt).__name__}")
    if model.has_state:
        raise ConfigError(
            f"{model.name} has state (batch norm), which mixes the examples of a batch: DP-SGD needs a model "
            "without (e.g. dpcnn, or group norm in place of batch norm)"
        )
    if GAUSSIAN in model._noise_shapes:
        raise ConfigError(f"{model.name}'s noise has a key {GAUSSIAN!r}, which DP-SGD's noise uses: rename it")
    clip = _positive("clip", clip)
    sigma = _nonnegative("noise_multiplier", noise_multiplier)
    check_choice("`precision`", precision, PRECISIONS)
    if average is not None and not callable(average):
        raise TypeError(f"average must be a function (grads, loss, state) -> (grads, loss, state), not {average!r}")
    if batch_size is not None:
        batch_size = check_whole("`batch_size`", batch_size, 1)
    elif average is not None:
        raise ConfigError(
            "with `average` (data parallel) pass `batch_size`, the batch size of all processes together: "
            "the noise is added once, to their mean"
        )
    shapes = model.shapes()
    names = sorted(shapes)
    sizes = [math.prod(shapes[k]) for k in names]
    size = sum(sizes)
    bf16 = precision == "bf16"

    def example_loss(params, x, y, noise):
        with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
            logits, _ = model.forward(params, {}, x[None], train=True, noise={k: v[None] for k, v in noise.items()})
        return F.cross_entropy(logits.float(), y[None])

    per_example = vmap(grad_and_value(example_loss), in_dims=(None, 0, 0, 0))

    def step(params, state, opt_state, x, y, noise):
        z = noise.get(GAUSSIAN)
        if not isinstance(z, torch.Tensor) or tuple(z.shape) != (size,):
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"noise['gaussian'] must be {size} standard normal numbers (gaussian_size), not {got}")
        model_noise = {k: v for k, v in noise.items() if k != GAUSSIAN}
        grads, losses = per_example(params, x, y, model_noise)
        n = x.shape[0]
        sq = torch.stack([grads[k].reshape(n, -1).float().pow(2).sum(1) for k in names]).sum(0)
        norms = sq.sqrt()
        scale = clip / torch.clamp(norms, min=clip)  # min(1, clip / norm), 1 for a zero gradient
        summed = {k: torch.einsum("n,n...->...", scale, grads[k].float()) for k in names}
        loss = losses.mean()
        divisor = n if batch_size is None else batch_size
        if average is None:
            mean = {k: g / divisor for k, g in summed.items()}
        else:  # each process's sum / its rows, averaged: all the processes' sum / their rows
            mean, loss, state = average({k: g / n for k, g in summed.items()}, loss, state)
        noisy = {
            k: mean[k] + (sigma * clip / divisor) * zk.view(shapes[k])
            for k, zk in zip(names, z.float().split(sizes), strict=True)
        }
        params, opt_state = opt.update({k: noisy[k] for k in params}, opt_state, params)
        clipped = (norms > clip).float().mean()
        return params, state, opt_state, loss, {"clipped": clipped}

    step.gaussian_size = size  # type: ignore[attr-defined]
    # Inductor would store the convolutions' tensors channels-last, and the per-example (grouped)
    # weight gradients copy them back and forth: dpcnn's compiled private step ran 1.20-1.42x as
    # many images a second without (benchmarks/dp_opacus.py --layout, 2 EPYC cores, 2026-12-03).
    step.layout_optimization = False  # type: ignore[attr-defined]
    return step


def privacy_spent(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """ε of DP-SGD after ``steps`` steps, at ``delta``: the (ε, δ)-differential privacy spent.

    The accountant (Google's ``dp-accounting``) assumes Poisson sampling: each step takes every
    training example independently with probability ``sample_rate``, and the neighbouring data sets
    differ by adding or removing one example. mnistfx instead shuffles the training set each epoch
    and takes fixed-size batches (``sample_rate`` = batch size / training images); that is how the
    DP-SGD papers and examples that report ε (Abadi et al., TF Privacy, JAX's example, Tramèr &
    Boneh) train too, but the ε reported is then the Poisson analysis's, not a proof for shuffling.

    Arguments:
        noise_multiplier: σ, the noise's standard deviation in units of the clipping norm (0: ε is infinite).
        sample_rate: the probability that a step uses a given example, in (0, 1].
        steps: the number of steps taken (whole, ≥ 1).
        delta: δ, in (0, 1); 1 / (training images) or less is usual (1e-5 for MNIST).
        accountant: ``"rdp"`` (Rényi DP, Mironov 2017, with the conversion to (ε, δ) of Balle et al.
            2020: a fast upper bound) or ``"pld"`` (privacy loss distributions: tighter, slower).

    Returns:
        ε, a float (``inf`` for ``noise_multiplier=0``).

    Raises:
        ConfigError: an argument out of range.
        MnistfxError: ``dp-accounting`` is not installed.
    """
    sigma = _nonnegative("noise_multiplier", noise_multiplier)
    q, steps, delta = _check_accounting(sample_rate, steps, delta)
    check_choice("`accountant`", accountant, ACCOUNTANTS)
    if sigma == 0:
        return math.inf
    return _epsilon(sigma, q, steps, delta, accountant)


def noise_for_epsilon(
    *, epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier σ whose DP-SGD spends at most ``epsilon`` (see :func:`privacy_spent`).

    Found by bisection on :func:`privacy_spent` to a relative precision of 1e-4; the σ returned is the
    upper end of the last interval, so ``privacy_spent`` of it is ≤ ``epsilon``.

    Arguments:
        epsilon: the target ε, > 0.
        delta, sample_rate, steps, accountant: as :func:`privacy_spent`'s.

    Returns:
        σ, a float.

    Raises:
        ConfigError: an argument out of range, or an ``epsilon`` that needs σ above 1000.
        MnistfxError: ``dp-accounting`` is not installed.
    """
    if not (is_finite(epsilon) and 0 < epsilon <= 100):
        raise ConfigError(f"`epsilon` must be a number in (0, 100] (above 100 it promises nothing), not {epsilon!r}")
    q, steps, delta = _check_accounting(sample_rate, steps, delta)
    check_choice("`accountant`", accountant, ACCOUNTANTS)
    epsilon = float(epsilon)
    if _epsilon(MAX_NOISE_MULTIPLIER, q, steps, delta, accountant) > epsilon:
        raise ConfigError(
            f"`epsilon` {epsilon:g} cannot be reached with a noise multiplier up to {MAX_NOISE_MULTIPLIER:g} "
            "at this `delta`, `sample_rate` and `steps`: allow a larger epsilon or delta, or take fewer steps"
        )
    lo, hi = 0.0, 1.0
    while _epsilon(hi, q, steps, delta, accountant) > epsilon:
        lo, hi = hi, min(2 * hi, MAX_NOISE_MULTIPLIER)
    while hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _epsilon(mid, q, steps, delta, accountant) > epsilon else (lo, mid)
    return hi


def _epsilon(sigma: float, q: float, steps: int, delta: float, accountant: str) -> float:
    try:
        import dp_accounting
    except ImportError:
        raise MnistfxError("privacy accounting needs Google's dp-accounting: pip install 'mnistfx[privacy]'") from None
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    acc = dp_accounting.rdp.RdpAccountant() if accountant == "rdp" else dp_accounting.pld.PLDAccountant()
    # The RDP accountant logs a warning for each order it cannot compute and leaves out of the minimum
    # (small orders at a large sampling rate): ε is still the bound over the other orders; not the user's news.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        acc.compose(event)
        return float(acc.get_epsilon(delta))
    except (ArithmeticError, ValueError):  # e.g. a noise multiplier of 1e-300 divides by zero inside it
        raise ConfigError(
            f"the {accountant} accountant cannot account for a noise multiplier of {sigma:g} over {steps} steps: "
            "choose one between 0.1 and 1000"
        ) from None
    finally:
        absl.setLevel(level)


def _check_accounting(sample_rate, steps, delta) -> tuple[float, int, float]:
    if not (is_finite(sample_rate) and 0 < sample_rate <= 1):
        raise ConfigError(f"`sample_rate` must be a number in (0, 1], not {sample_rate!r}")
    steps = check_whole("`steps`", steps, 1)
    if not (is_finite(delta) and 0 < delta < 1):
        raise ConfigError(f"`delta` must be a number in (0, 1), not {delta!r}")
    return float(sample_rate), steps, float(delta)


def _positive(name: str, value) -> float:
    if not (is_finite(value) and value > 0):
        raise ConfigError(f"`{name}` must be a positive number, not {value!r}")
    return float(value)


def _nonnegative(name: str, value) -> float:
    if not (is_finite(value) and value >= 0):
        raise ConfigError(f"`{name}` must be a number ≥ 0, not {value!r}")
    return float(value)
