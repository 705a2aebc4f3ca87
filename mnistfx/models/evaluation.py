"""Evaluation: predictions, accuracy, per-class precision / recall / F1, confusion matrix, the most
confident mistakes.

Every function here takes images as :func:`~mnistfx.check_images` says: uint8 images hold 0-255,
float images hold values in [0, 1] (used as they are: an adversarial perturbation of 0.1/255 is not
rounded away).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.func import vmap
from torch.nn import functional as F

from .._checks import check_whole, is_whole
from ..errors import WeightsError
from .ensemble import unstack
from .model import Model, blaming, check_images, check_logits, check_params, check_state

EVAL_BATCH = 1000


@dataclass(frozen=True)
class Metrics:
    """Classification metrics on a labelled set of images.

    Attributes:
        accuracy: fraction correct, in [0, 1].
        loss: mean cross-entropy.
        confusion: int64 tensor (10, 10); row = true class, column = predicted class.
        precision: float64 tensor (10,), per class.
        recall: float64 tensor (10,), per class.
        f1: float64 tensor (10,), per class.
        n: number of images.
    """

    accuracy: float
    loss: float
    confusion: torch.Tensor
    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def correct(self) -> int:
        return int(self.confusion.diagonal().sum())

    def to_dict(self) -> dict:
        """Plain Python values, for JSON."""
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "n": self.n,
            "correct": self.correct,
            "precision": self.precision.tolist(),
            "recall": self.recall.tolist(),
            "f1": self.f1.tolist(),
            "confusion": self.confusion.tolist(),
        }


def logits(
    model: Model,
    params: dict,
    images: torch.Tensor,
    *,
    state: dict | None = None,
    members: int | None = None,
    batch_size: int = EVAL_BATCH,
    forward: Callable | None = None,
) -> torch.Tensor:
    """Logits for images, computed in chunks of ``batch_size``.

    Arguments:
        model: the model.
        params: its parameters; the images are moved to their device.
        images: uint8 images of 0-255 or float images of values in [0, 1] (float32, float64,
            float16 or bfloat16, used unrounded), shaped (N, 28, 28), (N, 1, 28, 28) or (N, 784).
        state: the model's state (a model with state, e.g. batch-norm statistics).
        members: ``params`` (and ``state``) are an ensemble of this many members, stacked.
        batch_size: chunk size.
        forward: a function ``(params, x) -> logits`` to use instead of ``model.apply``
            (e.g. a compiled one); its last chunk is padded to ``batch_size`` so that it
            sees one shape only and never recompiles.

    Returns:
        float32 logits (N, 10) on the parameters' device; (members, N, 10) for an ensemble.

    Raises:
        TypeError: images of another dtype, or arguments of the wrong type.
        ValueError: images of another shape or a float image outside [0, 1]; a model with state
            without ``state``; a ``batch_size`` or ``members`` below 1.
        WeightsError: ``params`` or ``state`` that are not the model's.
    """
    _check_model_args(model, params, state, members)
    images = check_images(images, floats=True)
    check_whole("batch_size", batch_size, 1, error=ValueError)
    if forward is not None and not callable(forward):
        raise TypeError(f"forward must be a function (params, x) -> logits, not {type(forward).__name__}")
    pad = forward is not None  # a compiled forward must see one shape; eager needs no padding
    if state is None and model.has_state:
        raise ValueError(
            f"{model.name} has state (e.g. batch-norm statistics): pass state=, from the weights file or the run"
        )
    state = {} if state is None else state
    if forward is None:
        check_params(model, params, members=members)
        check_state(model, state, members=members)

        def forward(p, x, s=state):
            return model.forward(p, s, x)[0]

        if members is not None:
            forward = vmap(forward, in_dims=(0, None, 0))
    device = next(iter(params.values())).device
    n = images.shape[0]
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            chunk = images[start : start + batch_size].to(device)
            if pad and chunk.shape[0] < batch_size:
                chunk = torch.cat([chunk, chunk.new_zeros((batch_size - chunk.shape[0], *chunk.shape[1:]))])
            x = model.preprocess(chunk)
            with blaming(model, "apply"):
                y = forward(params, x, state) if members is not None else forward(params, x)
            check_logits(model, y if members is None else y[0], x.shape[0])
            out.append(y.float())
    if not out:
        return torch.empty(*(() if members is None else (members,)), 0, 10, device=device)
    return torch.cat(out, dim=-2)[..., :n, :]


def _check_model_args(model, params, state, members) -> None:
    """The checks every evaluation function makes on its model, parameters, state and ``members``."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be a mnistfx.Model, not {type(model).__name__}")
    if not isinstance(params, dict) or not params:
        raise TypeError(f"params must be a non-empty dict of tensors, not {type(params).__name__}")
    if state is not None and not isinstance(state, dict):
        raise TypeError(f"state must be a dict of tensors, not {type(state).__name__}")
    if members is not None and not (is_whole(members) and members >= 1):
        raise ValueError(f"members must be a whole number ≥ 1 (the ensemble's size) or None, not {members!r}")


def probabilities(model: Model, params: dict, images: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Class probabilities (N, 10) for images (uint8 of 0-255, or float in [0, 1]): the softmax of the
    logits, or for an ensemble (``members=K``) the mean of its members' softmax. Keyword arguments as
    :func:`logits`."""
    out = logits(model, params, images, **kwargs).softmax(-1)
    return out.mean(0) if kwargs.get("members") is not None else out


def predict(model: Model, params: dict, images: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Predicted digits (int64, shape (N,)) for images (uint8 of 0-255, or float in [0, 1]); keyword
    arguments as :func:`logits`."""
    return probabilities(model, params, images, **kwargs).argmax(1)


def evaluate(model: Model, params: dict, images: torch.Tensor, labels: torch.Tensor, **kwargs: Any) -> Metrics:
    """Accuracy, loss, per-class precision / recall / F1 and the confusion matrix.

    Arguments:
        model: the :class:`~mnistfx.Model`.
        params: its parameters (an ensemble's stacked, with ``members=K``: scored on the mean of its
            members' probabilities).
        images: uint8 images of 0-255, or float images in [0, 1], as :func:`logits` takes them.
        labels: int64 tensor (N,) of digits 0-9.
        kwargs: passed on to :func:`logits` (``state``, ``members``, ``batch_size``, ...).

    Returns:
        A :class:`Metrics`; its loss is the cross-entropy (an ensemble's: of the mean probabilities).

    Raises:
        TypeError, ValueError: images or labels that are not a batch of images and its digits (see
            :func:`logits` for the rest).
        WeightsError: the model's output for some image is NaN or infinite (no prediction to score).
    """
    _check_model_args(model, params, kwargs.get("state"), kwargs.get("members"))
    images = check_images(images, floats=True)
    _check_labels(labels, images.shape[0])
    labels = labels.cpu().long()
    if kwargs.get("members") is None:
        out = logits(model, params, images, **kwargs).cpu()
        loss = F.cross_entropy(out, labels).item() if len(labels) else float("nan")
    else:
        out = probabilities(model, params, images, **kwargs).cpu()
        loss = F.nll_loss(out.clamp(min=1e-30).log(), labels).item() if len(labels) else float("nan")
    unusable = int((~out.isfinite()).any(1).sum())
    if unusable:  # argmax would call them all 0 and score them
        raise WeightsError(
            f"these weights give NaN or infinite outputs for {unusable:,} of {len(out):,} images: they "
            "are not usable (train again; a run that diverged needs a lower learning rate)"
        )
    return metrics_from_predictions(out.argmax(1), labels, loss=loss)


def _check_labels(labels, n: int) -> None:
    """Refuse ``labels`` unless they are a 1-D integer tensor of ``n`` digits 0-9."""
    if (
        not isinstance(labels, torch.Tensor)
        or labels.dim() != 1
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        what = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a 1-D integer tensor of digits 0-9, not {what}")
    if labels.shape[0] != n:
        raise ValueError(f"got {n} images but {labels.shape[0]} labels")
    if n and not 0 <= int(labels.min()) <= int(labels.max()) <= 9:
        raise ValueError(f"labels must hold digits 0-9, not {int(labels.min())}..{int(labels.max())}")


def evaluate_members(
    model: Model, params: dict, images: torch.Tensor, labels: torch.Tensor, *, members: int, state: dict | None = None
) -> list[Metrics]:
    """Each ensemble member's :class:`Metrics` (``params`` and ``state`` stacked, as :func:`evaluate`).

    Arguments:
        model: the :class:`~mnistfx.Model`.
        params: the ensemble's parameters, stacked on a leading member axis.
        images: uint8 images of 0-255, or float images in [0, 1].
        labels: int64 tensor (N,) of digits 0-9.
        state: the ensemble's model state, stacked likewise (``None``: none).
        members: the ensemble's size.

    Returns:
        One :class:`Metrics` per member, in order.
    """
    _check_model_args(model, params, state, members)
    check_params(model, params, members=members)
    check_state(model, {} if state is None else state, members=members)
    images = check_images(images, floats=True)
    _check_labels(labels, images.shape[0])
    states = unstack(state) if state else [{}] * members
    return [evaluate(model, p, images, labels, state=s) for p, s in zip(unstack(params), states, strict=True)]


class Mistakes(NamedTuple):
    """The most confident mistakes, most confident first, as :func:`top_mistakes` finds them.

    Attributes:
        indices: int64 (k,): where each mistake is among the images.
        predicted: int64 (k,): the digit predicted.
        true: int64 (k,): the true digit.
        confidence: float (k,): the probability given to the predicted digit.
        total: how many mistakes there are in all (``k`` or more).
    """

    indices: torch.Tensor
    predicted: torch.Tensor
    true: torch.Tensor
    confidence: torch.Tensor
    total: int


def top_mistakes(probabilities: torch.Tensor, labels: torch.Tensor, k: int) -> Mistakes:
    """The ``k`` most confident mistakes: the images whose predicted digit (the most probable) is not
    their label, ordered by the probability of that prediction, highest first (ties: lower index first).

    Arguments:
        probabilities: float (N, 10), e.g. from :func:`probabilities` (any scores whose largest entry
            is the prediction).
        labels: integer tensor (N,) of the true digits 0-9.
        k: how many to return at most (fewer if there are fewer mistakes).

    Returns:
        :class:`Mistakes` (``indices``, ``predicted``, ``true``, ``confidence``, ``total``), on the
        CPU.

    Raises:
        TypeError: ``probabilities`` is not a float tensor.
        ValueError: a shape that is not (N, 10), labels that are not N digits, ``k`` below 0, or a
            probability that is NaN.
    """
    if not isinstance(probabilities, torch.Tensor) or not probabilities.is_floating_point():
        what = probabilities.dtype if isinstance(probabilities, torch.Tensor) else type(probabilities).__name__
        raise TypeError(f"probabilities must be a float tensor (N, 10), not {what}")
    if probabilities.dim() != 2 or probabilities.shape[1] != 10:
        raise ValueError(f"probabilities must have shape (N, 10), not {tuple(probabilities.shape)}")
    _check_labels(labels, probabilities.shape[0])
    k = check_whole("k", k, 0, error=ValueError)
    probs = probabilities.detach().cpu()
    if bool(probs.isnan().any()):
        raise ValueError("probabilities hold NaN: there is no prediction to rank (these weights are not usable)")
    confidence, predicted = probs.max(1)
    true = labels.cpu().long()
    wrong = torch.nonzero(predicted != true).flatten()
    order = confidence[wrong].argsort(descending=True, stable=True)
    indices = wrong[order][:k]
    return Mistakes(indices, predicted[indices], true[indices], confidence[indices], len(wrong))


def metrics_from_predictions(pred: torch.Tensor, labels: torch.Tensor, *, loss: float = float("nan")) -> Metrics:
    """:class:`Metrics` from predicted and true digits (both int64 tensors of digits 0-9, shape (N,))."""
    for name, t in (("pred", pred), ("labels", labels)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != 1:
            raise ValueError(
                f"{name} must be a 1-D int64 tensor of digits, not {getattr(t, 'dtype', type(t).__name__)}"
            )
        if len(t) and not 0 <= int(t.min()) <= int(t.max()) <= 9:
            raise ValueError(f"{name} must hold digits 0-9, not {int(t.min())}..{int(t.max())}")
    if pred.shape != labels.shape:
        raise ValueError(f"got {len(pred)} predictions but {len(labels)} labels")
    confusion = torch.bincount(labels * 10 + pred, minlength=100).reshape(10, 10)
    tp = confusion.diagonal().double()
    precision = tp / confusion.sum(0).double().clamp(min=1)
    recall = tp / confusion.sum(1).double().clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    accuracy = (tp.sum() / max(len(labels), 1)).item()
    return Metrics(accuracy, loss, confusion, precision, recall, f1)
