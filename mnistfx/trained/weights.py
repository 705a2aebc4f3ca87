"""Trained weights and the model they belong to: :func:`load_model_weights` reads and checks them into
a :class:`Weights`, which evaluates and predicts (what the CLI's eval, serve, read and export use)."""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from .._checks import is_whole
from .._types import Device, StrPath
from ..constants import MAX_ENSEMBLE, MODELS
from ..errors import WeightsError
from ..models.evaluation import Metrics, evaluate, logits, probabilities
from ..models.model import Model, check_finite, check_params, check_state, check_state_usable
from ..models.notebook_checkpoint import import_notebook_checkpoint
from ..models.registry import get_model, guess_model, model_names
from ..models.torch_module import FunctionalModule, to_module
from ..models.weights_file import _FIX, STATE_PREFIX, load_weights, printable_name


@dataclasses.dataclass(frozen=True)
class Weights:
    """Trained weights as :func:`load_model_weights` reads them.

    Attributes:
        model: the :class:`~mnistfx.Model` they belong to.
        params: the parameters (an ensemble's stacked on a leading member axis).
        state: the model's state (``{}`` for a model without state).
        metadata: what the file says about them (config, accuracies, versions).
        members: the ensemble's size, or ``None`` for a single model.
    """

    model: Model
    params: dict
    state: dict
    metadata: dict
    members: int | None = None

    def to(self, device: Device) -> Weights:
        """The same weights on ``device``."""
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return dataclasses.replace(self, params=move(self.params), state=move(self.state))

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, 10) for images, uint8 of 0-255 or float in [0, 1] (see
        :func:`~mnistfx.check_images`); an ensemble's: the mean of its members'."""
        return probabilities(self.model, self.params, images, state=self.state, members=self.members)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """:func:`~mnistfx.logits` of these weights for images (uint8 of 0-255 or float in [0, 1]):
        (N, 10), or (members, N, 10) for an ensemble."""
        return logits(self.model, self.params, images, state=self.state, members=self.members)

    def to_module(self, member: int | None = None) -> FunctionalModule:
        """These weights as an ordinary ``nn.Module`` (see :func:`~mnistfx.to_module`), in eval mode,
        on the weights' device; it pickles as its parameters and the model's name.

        Arguments:
            member: for an ensemble, which member (0 to ``members - 1``); ``None`` for a single model.

        Returns:
            The module: ``module(model.preprocess(images))`` gives the logits.

        Raises:
            ValueError: an ensemble without ``member``, or ``member`` for a single model or out of range.
        """
        if self.members is None:
            if member is not None:
                raise ValueError(f"these are one model's weights, not an ensemble's: pass no member, not {member!r}")
            return to_module(self.model, self.params, self.state)
        if member is None or not (is_whole(member) and 0 <= member < self.members):
            raise ValueError(
                f"these are an ensemble's weights: pass member, a whole number from 0 to {self.members - 1}, "
                f"not {member!r}"
            )
        take = lambda d: {k: v[member] for k, v in d.items()}  # noqa: E731
        return to_module(self.model, take(self.params), take(self.state))

    def checked_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`probabilities`, refusing unusable weights (any probability not finite) with a
        :class:`~mnistfx.WeightsError`."""
        probs = self.probabilities(images)
        if not bool(probs.isfinite().all()):
            raise WeightsError(
                "these weights give no finite probabilities for these images: they are not usable (train again)"
            )
        return probs

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> Metrics:
        """:func:`~mnistfx.evaluate` of these weights on images (uint8 of 0-255 or float in [0, 1])
        and their labels."""
        return evaluate(self.model, self.params, images, labels, state=self.state, members=self.members)


def load_model_weights(path: StrPath, model: str | None = None) -> Weights:
    """Load weights and the model they belong to, checking that they fit: a :class:`Weights`, ready
    to evaluate (what ``mnistfx eval`` reads).

    The lower-level :func:`~mnistfx.load_weights` reads any safetensors file that
    :func:`~mnistfx.save_weights` wrote and returns its raw ``(tensors, metadata)``, checking the file
    but not that the tensors fit a model; this function builds on it.

    Reads mnistfx safetensors files (a single model's or an ensemble's), and also the original
    notebook's ``.pth`` checkpoints (with ``torch.load(weights_only=True)``, which refuses pickled
    code). The model is looked up by name among the built-in and registered ones: nothing is
    imported because a file names it.

    Arguments:
        path: a ``.safetensors`` (or notebook ``.pth``) file.
        model: the expected model name; default: the one named in the file.

    Returns:
        A :class:`Weights`.

    Raises:
        WeightsError: unreadable file, unknown model, or weights that do not fit the model.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file's path (str or os.PathLike), not {type(path).__name__}")
    if model is not None and not isinstance(model, str):
        raise TypeError(f"model must be a model's name (str) or None, not {type(model).__name__}")
    path = Path(path)
    name: Any  # whatever the file says: checked below
    if path.is_file() and zipfile.is_zipfile(path):
        name, params = import_notebook_checkpoint(path)
        meta: dict[str, Any] = {"model": name, "source": "notebook checkpoint"}
    else:
        params, meta = load_weights(path)
        if str(meta.get("format", "")).startswith("mnistfx-checkpoint"):
            raise WeightsError(
                f"{path} is a training checkpoint, not weights: pass the weights.safetensors "
                "beside it (or continue the run with `resume`)"
            )
        name = meta.get("model")
    state = {k[len(STATE_PREFIX) :]: params.pop(k) for k in [k for k in params if k.startswith(STATE_PREFIX)]}
    if name is None:
        name = model or guess_model(params, source=str(path))
    if model is not None and model != name:
        raise WeightsError(
            f"{path} holds {printable_name(name)} weights, not {model}: pass the model they are for, or other weights"
        )
    if not isinstance(name, str) or name not in model_names():
        raise WeightsError(
            f"{path} is for model {printable_name(name)}, which is not built in ({', '.join(MODELS)}) or "
            "registered here: import yours with `import_model` or `register_model`"
        )
    members = meta.get("members")
    if members is not None and not (is_whole(members) and 2 <= members <= MAX_ENSEMBLE):
        raise WeightsError(f"{path} says it holds {printable_name(members)} ensemble members, which cannot be: {_FIX}")
    m = get_model(name)
    check_params(m, params, source=str(path), dtype=torch.float32, members=members)
    check_state(m, state, source=str(path), members=members)
    for part in (params, {STATE_PREFIX + k: v for k, v in state.items()}):
        check_finite(part, source=str(path), fix="the file is damaged, or the run that wrote it diverged")
    check_state_usable(m, state, source=str(path), fix="the file is damaged: use other weights")
    # the model's own order, not the file's (safetensors reads another in each process): a compiled graph
    # traces its input dicts in their order, and the compile cache finds it again only in the same order
    params = {k: params[k] for k in m.shapes()}
    state = {k: state[k] for k in m.state_shapes()}
    return Weights(m, params, state, meta, members)
