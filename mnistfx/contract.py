"""What a model must give back, checked: its parameters, its state, and what its functions return.

:func:`check_params` and :func:`check_state` guard every place parameters come in (a weights
file, a checkpoint, ``apply``); :func:`check_model` runs a model once on a small batch before
a train step is compiled, so a model of one's own that breaks the contract is one clear error.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from ._io import first_line
from .constants import MODELS
from .errors import MnistfxError, ModelError, WeightsError

# what a state may hold: the dtypes a weights file can store and mnistfx reads back
STATE_DTYPES = {torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
                torch.int8, torch.uint8, torch.bool}


@contextlib.contextmanager
def blaming(model, what: str):
    """Turn an error raised inside, by a model of one's own, into one :class:`~mnistfx.ModelError` that
    names the model and what failed; mnistfx's own models' errors stay as they are (bugs to see whole)."""
    try:
        yield
    except MnistfxError:
        raise
    except (Exception, SystemExit) as e:
        if model.name in MODELS:
            raise
        raise ModelError(f"{model.name}'s {what} failed ({type(e).__name__}: {first_line(e)})") from e


def check_logits(model, logits, n: int) -> None:
    """:class:`~mnistfx.ModelError` unless ``logits`` are float logits (n, 10) on a real device."""
    if (not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.is_meta
            or tuple(logits.shape) != (n, 10)):
        got = (f"{logits.dtype} {tuple(logits.shape)}{' on meta' if logits.is_meta else ''}"
               if isinstance(logits, torch.Tensor) else type(logits).__name__)
        raise ModelError(f"{model.name}'s apply must return float logits of shape ({n}, 10) for {n} images, not {got}")


def _check_tensors(expected: dict, tensors, *, what: str, model: str, source: str, dtype, members,
                   prefix: str = "") -> None:
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise TypeError(f"{what} must be a dict of tensors (from {model}.init), not {type(tensors).__name__}")
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing or extra:
        problem = f"lacks {prefix}{missing[0]}" if missing else f"has an unexpected tensor {prefix}{extra[0]}"
        raise WeightsError(f"{source} {problem}: these are not {model} weights")
    lead = () if members is None else (members,)
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != lead + shape:
            raise WeightsError(f"{source}: {prefix}{k} has shape {tuple(tensors[k].shape)}, {model} expects {lead + shape}: "
                               f"these are weights of another model{' or ensemble size' if members else ''}")
        if dtype is not None and tensors[k].dtype != dtype:
            raise WeightsError(f"{source}: {prefix}{k} is {tensors[k].dtype}, expected {dtype}")


def check_params(model, params, *, source: str = "params", dtype: torch.dtype | None = None,
                 members: int | None = None) -> None:
    """Raise unless ``params`` holds exactly ``model``'s parameter names and shapes.

    Arguments:
        model: the model the parameters are for.
        params: the parameter dict to check.
        source: what to call the parameters in the message (e.g. the file they came from).
        dtype: if given, every tensor must have it too.
        members: the parameters of an ensemble of this many members, stacked on a leading axis.

    Raises:
        TypeError: ``params`` is not a dict of tensors.
        WeightsError: a name is missing or unexpected, or a shape (or dtype) is wrong.
    """
    _check_tensors(model.shapes(), params, what="params", model=model.name, source=source, dtype=dtype,
                   members=members)


def check_state(model, state, *, source: str = "state", members: int | None = None) -> None:
    """:func:`check_params` for the model's state (``{}`` for a model without state): names, shapes
    and the dtypes ``init_state`` gives."""
    specs = model._state_specs()
    _check_tensors({k: shape for k, (shape, _) in specs.items()}, state, what="state", model=model.name,
                   source=source, dtype=None, members=members, prefix="state/")
    for k, (_, dtype) in specs.items():
        if state[k].dtype != dtype:
            raise WeightsError(f"{source}: state/{k} is {state[k].dtype}, {model.name} keeps it as {dtype}")


def check_state_usable(model, state: dict, *, source: str, fix: str) -> None:
    """Raise :class:`~mnistfx.WeightsError` if the model's ``state_problem`` faults ``state`` (read from
    ``source``; ``fix`` says what to do)."""
    rule = model._state_problem
    if rule is None:
        return
    with blaming(model, "state_problem"):
        problem = rule(state)
    if problem is not None and not isinstance(problem, str):
        raise ModelError(f"{model.name}'s state_problem must return None or a string, not {type(problem).__name__}")
    if problem:
        raise WeightsError(f"{source}: its {model.name} state is unusable ({problem}): {fix}")


def check_model(model, params: dict, state: dict, x: torch.Tensor, y: torch.Tensor, noise: dict,
                loss: Callable | None = None) -> None:
    """Run ``model`` once, eagerly, on a small batch in training and in eval mode (and ``loss`` on its
    logits), before anything is compiled: a :class:`~mnistfx.ModelError` that says what is wrong
    unless each returns what the model contract asks for."""
    n = x.shape[0]
    try:
        model._check_noise(noise, n)
    except ValueError as e:
        raise ModelError(f"{model.name}'s noise: {e}") from None
    for train in (True, False):
        with blaming(model, f"apply on a batch of {n} images"):
            logits, new_state = model.forward(params, state, x, train=train, noise=noise)
        check_logits(model, logits, n)
        try:
            check_state(model, new_state, source=f"the state {model.name}'s apply returned")
        except (TypeError, WeightsError) as e:
            raise ModelError(str(e).replace(": these are not", ": not") + " (it must keep init_state's names, "
                             "shapes and dtypes)") from None
    if loss is not None:
        with blaming(model, "loss"):
            out = loss(logits.float(), y)
        value, aux = out if isinstance(out, tuple) and len(out) == 2 else (out, {})
        if not (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 0):
            raise ModelError("the loss must return a 0-d float tensor, or (that, a dict of tensors)")
        if not isinstance(aux, dict) or not all(isinstance(v, torch.Tensor) for v in aux.values()):
            raise ModelError("the loss's extra outputs must be a dict of tensors")


def check_finite(tensors: dict, *, source: str, fix: str = "the run diverged: train again with a lower --lr") -> None:
    """Raise :class:`~mnistfx.WeightsError` if a float tensor of ``tensors`` holds NaN or infinity."""
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise WeightsError(f"{source}: {k} holds NaN or infinite values: {fix}")
