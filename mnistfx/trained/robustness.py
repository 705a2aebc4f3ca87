"""Robustness beyond clean MNIST: trained weights scored on MNIST-C's 15 corruptions and under FGSM and
PGD attacks (what ``mnistfx robustness`` prints).

The corruptions are made here from the test images (:func:`~mnistfx.corrupt`, deterministic from a seed),
or read from the published MNIST-C files (:func:`~mnistfx.load_mnist_c`) when a user has them; the
attacks are :func:`~mnistfx.fgsm` and :func:`~mnistfx.pgd`, their step compiled once per run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .._checks import check_whole, is_finite
from .._types import StrPath
from ..constants import ATTACKS, CORRUPTIONS, MAX_SEED
from ..data.corruptions import corrupt
from ..data.mnist_c import load_mnist_c
from ..errors import ConfigError
from ..models.attacks import fgsm, make_attack_step, pgd
from ..models.evaluation import _check_labels
from ..models.model import check_images
from ..training.compiling import compile_step
from .weights import Weights

DEFAULT_EPS = (0.1, 0.2, 0.3)
_ATTACK_BATCH = 500  # images attacked at once: the compiled step's one shape


@dataclass(frozen=True)
class Robustness:
    """What :func:`robustness` measured; accuracies are fractions in [0, 1].

    Attributes:
        clean: accuracy on the images as they are.
        corruptions: accuracy under each corruption, keyed by MNIST-C's names.
        attacks: ``{"fgsm": {"0.1": accuracy, ...}, "pgd": {...}}``, keyed by ε as written, and
            ``"pgd_transfer"`` for PGD crafted on other weights.
        images: how many test images were scored.
        settings: how: the corruptions' source and seed, the attacks' steps, step size, restarts and
            seed, the seconds each part took.
    """

    clean: float
    corruptions: dict[str, float]
    attacks: dict[str, dict[str, float]]
    images: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_corruption(self) -> float | None:
        """The mean accuracy over the corruptions scored (``None`` if none were)."""
        return sum(self.corruptions.values()) / len(self.corruptions) if self.corruptions else None

    @property
    def masked(self) -> list[str]:
        """The radii (as keyed) at which PGD crafted on other weights broke more of these images than
        white-box PGD did: a sign of masked gradients (white-box PGD should be the stronger)."""
        white, transfer = self.attacks.get("pgd", {}), self.attacks.get("pgd_transfer", {})
        return [e for e in transfer if e in white and transfer[e] < white[e]]

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON: ``clean``, ``corruptions``, ``mean_corruption``, ``attacks``, ``images``,
        ``settings``."""
        return {
            "clean": self.clean,
            "corruptions": dict(self.corruptions),
            "mean_corruption": self.mean_corruption,
            "attacks": {k: dict(v) for k, v in self.attacks.items()},
            "images": self.images,
            "settings": dict(self.settings),
        }


def robustness(
    weights: Weights,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    corruptions: Sequence[str] = CORRUPTIONS,
    attacks: Sequence[str] = ATTACKS,
    eps: Sequence[float] = DEFAULT_EPS,
    pgd_steps: int = 40,
    pgd_step_size: float = 0.01,
    restarts: int = 1,
    seed: int = 0,
    mnist_c: StrPath | None = None,
    transfer_from: Weights | None = None,
    compile: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Robustness:
    """Accuracy on clean images, under each of MNIST-C's corruptions and under FGSM and PGD attacks.

    Arguments:
        weights: trained weights (:func:`~mnistfx.load_model_weights`); an ensemble is attacked through
            the mean of its members' probabilities.
        images: uint8 test images (N, 28, 28) (the first N of MNIST's test set to compare with MNIST-C
            files).
        labels: their digits, int64 (N,).
        corruptions: which of :data:`~mnistfx.CORRUPTIONS` to score (``()``: none).
        attacks: ``"fgsm"``, ``"pgd"``, both (default) or none.
        eps: the L∞ radii to attack at, in [0, 1] pixel units.
        pgd_steps: PGD's steps per start (Madry et al.: 40 to train, 100 to evaluate).
        pgd_step_size: PGD's step, in pixel units.
        restarts: PGD's random starts per image (an image is broken if any breaks it).
        seed: the seed of the corruptions and of PGD's random starts.
        mnist_c: read the corrupted images from MNIST-C's published files in this folder (the first
            ``len(images)`` of each) instead of making them.
        transfer_from: other weights to craft PGD examples on, scored on ``weights`` (a transfer attack,
            ``attacks["pgd_transfer"]``): white-box PGD that breaks fewer images than a transfer attack
            points to masked gradients (:attr:`Robustness.masked`).
        compile: compile the attack step (``False``: run it eagerly).
        progress: called with a line before each part (e.g. ``print``).

    Returns:
        A :class:`Robustness`.

    Raises:
        ConfigError: a corruption or attack that does not exist, an ε outside [0, 1], steps, restarts or
            seed out of range.
        DataError: MNIST-C files that cannot be read (see :func:`~mnistfx.load_mnist_c`).
    """
    for what, w in (("weights", weights), ("transfer_from", transfer_from)):
        if not isinstance(w, Weights) and (what == "weights" or w is not None):
            raise TypeError(f"{what} must be a mnistfx.Weights (from load_model_weights), not {type(w).__name__}")
    images = check_images(images)
    images = images.reshape(-1, 28, 28)
    _check_labels(labels, len(images))
    corruptions = _names("corruptions", corruptions, CORRUPTIONS)
    attacks = _names("attacks", attacks, ATTACKS)
    eps = _radii(eps) if attacks or transfer_from is not None else ()
    pgd_steps = check_whole("`pgd_steps`", pgd_steps, 1, 10_000)
    restarts = check_whole("`restarts`", restarts, 1, 1000)
    seed = check_whole("`seed`", seed, 0, MAX_SEED)
    if not (is_finite(pgd_step_size) and 0 < pgd_step_size <= 1):
        raise ConfigError(f"`pgd_step_size` must be a number above 0 and at most 1, not {pgd_step_size!r}")
    say = progress or (lambda line: None)
    n = len(images)
    seconds: dict[str, float] = {}
    files = load_mnist_c(mnist_c, corruptions) if mnist_c is not None and corruptions else None
    tic = time.perf_counter()
    clean = weights.evaluate(images, labels).accuracy
    scores: dict[str, float] = {}
    if corruptions:
        for i, name in enumerate(corruptions):
            say(f"corruption {i + 1}/{len(corruptions)}: {name}")
            if files is None:
                x, y = corrupt(images, name, seed=seed), labels
            else:
                x, y = files[name]
                if len(x) < n:
                    raise ConfigError(f"MNIST-C's {name} holds {len(x):,} images, fewer than the {n:,} asked for")
                x, y = x[:n], y[:n]
            scores[name] = weights.evaluate(x, y).accuracy
    seconds["corruptions"] = time.perf_counter() - tic
    results: dict[str, dict[str, float]] = {}
    sources = [(a, weights) for a in attacks] + ([("pgd_transfer", transfer_from)] if transfer_from else [])
    steps: dict[int, Any] = {}
    for attack, source in sources:
        tic = time.perf_counter()
        results[attack] = {}
        if id(source) not in steps:
            eager = make_attack_step(source.model, members=source.members)
            device = next(iter(source.params.values())).device
            steps[id(source)] = compile_step(eager, device) if compile else None
        for e in eps:
            say(f"{attack} at ε {e:g}" + (f", {pgd_steps} steps" if attack != "fgsm" else ""))
            adv = _attack(
                attack, source, images, labels, e, pgd_steps, pgd_step_size, restarts, seed, steps[id(source)]
            )
            results[attack][f"{e:g}"] = weights.evaluate(adv, labels).accuracy
        seconds[attack] = time.perf_counter() - tic
    settings = {
        "corruption_source": "MNIST-C files" if mnist_c is not None else "mnistfx.corrupt",
        "seed": seed,
        "pgd_steps": pgd_steps,
        "pgd_step_size": pgd_step_size,
        "restarts": restarts,
        "transfer_from": None if transfer_from is None else transfer_from.model.name,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    return Robustness(clean=clean, corruptions=scores, attacks=results, images=n, settings=settings)


def _attack(attack, source, images, labels, eps, steps, step_size, restarts, seed, step) -> torch.Tensor:
    """The adversarial images of one attack at one ε, crafted on ``source``."""
    kw: dict[str, Any] = {"state": source.state, "members": source.members, "step": step}
    kw["batch_size"] = min(_ATTACK_BATCH, max(len(images), 1))
    if attack == "fgsm":
        return fgsm(source.model, source.params, images, labels, eps=eps, **kw)
    return pgd(
        source.model, source.params, images, labels, eps=eps, steps=steps, step_size=step_size, restarts=restarts,
        seed=seed, **kw,
    )  # fmt: skip


def _names(what: str, names: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    names = (names,) if isinstance(names, str) else names
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"`{what}` must be a list of names from {', '.join(allowed)}, not {names!r}")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ConfigError(f"unknown {what} {', '.join(map(repr, unknown))}: choose from {', '.join(allowed)}")
    return tuple(dict.fromkeys(names))


def _radii(eps: Any) -> tuple[float, ...]:
    eps = (eps,) if is_finite(eps) else eps
    if (
        not isinstance(eps, (list, tuple))
        or not eps
        or not all(is_finite(e) and 0 <= e <= 1 for e in eps)
        or len(eps) > 20
    ):
        raise ConfigError(f"`eps` must be 1 to 20 radii from 0 to 1 (pixel units: 0.3 is 30 % of white), not {eps!r}")
    return tuple(dict.fromkeys(float(e) for e in eps))
