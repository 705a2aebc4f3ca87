"""What a model is: :class:`Model`, pure functions over a flat parameter dict, and the checks on its inputs.

A model is made from plain functions (or the methods of a small class of your own)::

    init(g: torch.Generator) -> dict[str, Tensor]               # required: fresh float32 CPU parameters
    apply(params, x, *, train, noise[, state]) -> logits        # required: (N, 1, 28, 28) -> (N, 10)
    noise(n, g, device) -> dict[str, Tensor]                    # optional: per-image randomness (dropout)
    init_state(params) -> dict[str, Tensor]                     # optional: state such as batch-norm statistics
    state_problem(state) -> str | None                          # optional: what makes a loaded state unusable
    normalize = (mean, std)                                     # optional: input scaling after [0, 1]

``apply`` is given only the keywords its signature names (``def apply(params, x)`` is a whole model).
A model with state is called with ``state=`` too and returns ``(logits, new_state)``: in train mode
the new running statistics, in eval mode the state unchanged. No object owns the parameters or the
state: they are dicts that the train step carries, and the weights file stores.


The contract's checks live here too: :func:`check_params` and :func:`check_state` guard every place
parameters come in (a weights file, a checkpoint, ``apply``); :func:`check_model` runs a model once on
a small batch before a train step is compiled, so a model of one's own that breaks the contract is one
clear error.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .._checks import check_whole, is_finite
from .._io import first_line
from .._types import Device, Key, Tensors
from ..constants import MODEL_NAME, MODELS
from ..errors import ConfigError, MnistfxError, ModelError, WeightsError
from ..rng import as_generator

# what a state may hold: the dtypes a weights file can store and mnistfx reads back
STATE_DTYPES = {
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
}


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
    if (
        not isinstance(logits, torch.Tensor)
        or not logits.is_floating_point()
        or logits.is_meta
        or tuple(logits.shape) != (n, 10)
    ):
        got = (
            f"{logits.dtype} {tuple(logits.shape)}{' on meta' if logits.is_meta else ''}"
            if isinstance(logits, torch.Tensor)
            else type(logits).__name__
        )
        raise ModelError(f"{model.name}'s apply must return float logits of shape ({n}, 10) for {n} images, not {got}")


def _check_tensors(
    expected: dict, tensors, *, what: str, model: str, source: str, dtype, members, prefix: str = ""
) -> None:
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
            raise WeightsError(
                f"{source}: {prefix}{k} has shape {tuple(tensors[k].shape)}, {model} expects {lead + shape}: "
                f"these are weights of another model{' or ensemble size' if members else ''}"
            )
        if dtype is not None and tensors[k].dtype != dtype:
            raise WeightsError(f"{source}: {prefix}{k} is {tensors[k].dtype}, expected {dtype}")


def check_params(
    model: Model, params: Any, *, source: str = "params", dtype: torch.dtype | None = None, members: int | None = None
) -> None:
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
    _check_tensors(model.shapes(), params, what="params", model=model.name, source=source, dtype=dtype, members=members)


def check_state(model: Model, state: Any, *, source: str = "state", members: int | None = None) -> None:
    """:func:`check_params` for the model's state (``{}`` for a model without state): names, shapes
    and the dtypes ``init_state`` gives."""
    specs = model._state_specs()
    _check_tensors(
        {k: shape for k, (shape, _) in specs.items()},
        state,
        what="state",
        model=model.name,
        source=source,
        dtype=None,
        members=members,
        prefix="state/",
    )
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


def check_model(
    model: Model, params: dict, state: dict, x: torch.Tensor, y: torch.Tensor, noise: dict, loss: Callable | None = None
) -> None:
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
            raise ModelError(
                str(e).replace(": these are not", ": not") + " (it must keep init_state's names, shapes and dtypes)"
            ) from None
    if loss is not None:
        with blaming(model, "loss"):
            out = loss(logits.float(), y)
        value, aux = out if isinstance(out, tuple) and len(out) == 2 else (out, {})
        if not (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 0):
            raise ModelError("the loss must return a 0-d float tensor, or (that, a dict of tensors)")
        if not isinstance(aux, dict) or not all(isinstance(v, torch.Tensor) for v in aux.values()):
            raise ModelError("the loss's extra outputs must be a dict of tensors")


def check_finite(tensors: dict, *, source: str, fix: str = "the run diverged: train again with a lower `lr`") -> None:
    """Raise :class:`~mnistfx.WeightsError` if a float tensor of ``tensors`` holds NaN or infinity."""
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise WeightsError(f"{source}: {k} holds NaN or infinite values: {fix}")


class Model:
    """A model as pure functions over a flat parameter dict (the contract: docs/library/models.md).

    Arguments:
        name: what runs, weights files and the command line call it (letters, digits, ``_.-``).
        init: ``init(g) -> params`` with ``g`` a CPU ``torch.Generator``.
        apply: ``apply(params, x, *, train, noise, state) -> logits`` (only the keywords it names).
        noise: ``noise(n, g, device) -> dict`` of per-image randomness for training (default: none).
        init_state: ``init_state(params) -> dict`` of state tensors (default: the model has none).
        state_problem: ``state_problem(state) -> str | None``: what is wrong with a state read from a
            file (e.g. "a negative running variance"), or ``None``; its tensors may carry a leading
            ensemble-member axis. Weights files and checkpoints whose state it faults are refused.
        normalize: ``(mean, std)`` applied to [0, 1] images (default: none).
    """

    def __init__(
        self,
        name: str,
        init: Callable,
        apply: Callable,
        *,
        noise: Callable | None = None,
        init_state: Callable | None = None,
        normalize: tuple[float, float] | None = None,
        state_problem: Callable | None = None,
    ):
        if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
            raise ConfigError(f"a model name must be a letter then up to 63 letters, digits or _.-, not {name!r}")
        for what, fn in (
            ("init", init),
            ("apply", apply),
            ("noise", noise),
            ("init_state", init_state),
            ("state_problem", state_problem),
        ):
            if (fn is not None or what in ("init", "apply")) and not callable(fn):
                raise TypeError(f"{what} must be a function, not {type(fn).__name__}")
        if normalize is not None and not (
            isinstance(normalize, (tuple, list))
            and len(normalize) == 2
            and all(is_finite(v) for v in normalize)
            and normalize[1] > 0
        ):
            raise ValueError(f"normalize must be (mean, std), two finite numbers with std > 0, not {normalize!r}")
        self.name, self._init, self._apply, self._noise, self._init_state = name, init, apply, noise, init_state
        self._state_problem = state_problem
        self.normalize = None if normalize is None else (float(normalize[0]), float(normalize[1]))
        self._keywords = _keywords(apply, ("train", "noise", "state"))
        if init_state is not None and "state" not in self._keywords:
            raise TypeError(f"{name}: a model with init_state needs an apply that takes state=")
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._state_shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None
        # the noise of one image, drawn once here: checking noise later must not draw (it may run under vmap)
        self._noise_shapes = {} if noise is None else _noise_shapes(name, noise)

    def __repr__(self) -> str:
        return f"Model({self.name!r})"

    @property
    def has_state(self) -> bool:
        """Whether the model carries state (e.g. batch norm's running statistics)."""
        return self._init_state is not None

    def init(self, key: Key) -> dict[str, torch.Tensor]:
        """Fresh parameters from ``key`` (an ``int`` seed or a CPU ``torch.Generator``)."""
        g = as_generator(key)
        with blaming(self, "init"):
            params = self._init(g)
        if (
            not isinstance(params, dict)
            or not params
            or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) and v.dtype == torch.float32
                for k, v in params.items()
            )
        ):
            raise ModelError(f"{self.name}'s init must return a non-empty dict from names to float32 tensors")
        if any(v.is_meta for v in params.values()):
            raise ModelError(f"{self.name}'s init must return tensors with values, not on the meta device")
        if any(k.startswith("state/") or not k for k in params):
            raise ModelError(
                f"{self.name}'s init: a parameter name may not be empty or start with state/ "
                "(that is where weights files keep a model's state)"
            )
        return params

    def init_state(self, params: dict) -> dict[str, torch.Tensor]:
        """The state a fresh model starts with (``{}`` for a model without state), on the parameters' device."""
        if self._init_state is None:
            return {}
        with blaming(self, "init_state"):
            state = self._init_state(params)
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and k and isinstance(v, torch.Tensor) and not v.is_meta and v.dtype in STATE_DTYPES
            for k, v in state.items()
        ):
            raise ModelError(
                f"{self.name}'s init_state must return a dict from names to tensors with values, of "
                "a dtype weights files keep (float, int, uint8 or bool)"
            )
        if isinstance(params, dict) and params:  # beside the parameters, wherever init_state made it
            device = next(iter(params.values())).device
            state = {k: v.to(device) for k, v in state.items()}
        return state

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The name and shape of every parameter, in a fixed order."""
        if self._shapes is None:
            self._shapes = {k: tuple(v.shape) for k, v in self.init(0).items()}
        return self._shapes

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """The name and shape of every state tensor (none for a model without state)."""
        return {k: shape for k, (shape, _) in self._state_specs().items()}

    def _state_specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        if self._state_shapes is None:
            self._state_shapes = {k: (tuple(v.shape), v.dtype) for k, v in self.init_state(self.init(0)).items()}
        return self._state_shapes

    def forward(
        self,
        params: Mapping[str, torch.Tensor],
        state: Tensors,
        x: torch.Tensor,
        *,
        train: bool = False,
        noise: Tensors | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """``(logits, state)`` for a batch of model inputs: the form the train step and evaluation use.

        Arguments:
            params: the parameter dict.
            state: the state dict (``{}`` for a model without state).
            x: float tensor (N, 1, 28, 28), see :meth:`preprocess`.
            train: training mode (dropout from ``noise``, batch statistics).
            noise: from :meth:`dropout_noise` (training only).
        """
        kwargs = {"train": train, "noise": noise if train else None, "state": state}
        out = self._apply(params, x, **{k: v for k, v in kwargs.items() if k in self._keywords})
        if not self.has_state:
            return out, state
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ModelError(f"{self.name}'s apply must return (logits, state) for a model with state")
        return out

    def apply(
        self,
        params: Tensors,
        x: torch.Tensor,
        *,
        train: bool = False,
        key: Key | None = None,
        noise: Tensors | None = None,
        state: Tensors | None = None,
    ) -> torch.Tensor:
        """Logits (N, 10) for a batch of model inputs (N, 1, 28, 28), checked.

        Arguments:
            params: the parameter dict.
            x: float tensor (N, 1, 28, 28), see :meth:`preprocess`.
            train: training mode; needs ``key`` (or ready-made ``noise``) for a model with noise.
            key: an ``int`` seed or ``torch.Generator`` for the noise.
            noise: noise from :meth:`dropout_noise` (instead of ``key``).
            state: the model's state (required for a model with state; use :meth:`forward` for
                the new state a training pass makes).
        """
        check_params(self, params)
        _check_batch(x)
        if self.has_state:
            if state is None:
                raise ValueError(
                    f"{self.name} has state (e.g. batch-norm statistics): pass state=, from "
                    "init_state(params) or from the weights file"
                )
            check_state(self, state)
        if train and noise is None and self._noise is not None:
            if key is None:
                raise ValueError("apply(train=True) needs a key for dropout (an int seed or a torch.Generator)")
            noise = self.dropout_noise(x.shape[0], key=key, device=x.device)
        if train and self._noise is not None:
            self._check_noise(noise, x.shape[0])
        return self.forward(
            params, state if state is not None and self.has_state else {}, x, train=train, noise=noise or {}
        )[0]

    def dropout_noise(self, n: int, *, key: Key, device: Device | None = None) -> dict[str, torch.Tensor]:
        """The per-image randomness of a training batch of ``n`` images (``{}`` for a model without).

        Arguments:
            n: the batch size.
            key: an ``int`` seed or a ``torch.Generator`` on ``device``.
            device: where the noise is made.
        """
        check_whole("n", n, 0, error=ValueError)
        if self._noise is None:
            return {}
        return self._noise(n, as_generator(key, device), device)

    def _check_noise(self, noise, n: int) -> None:
        want = {k: (n, *shape) for k, shape in self._noise_shapes.items()}
        if not isinstance(noise, dict) or set(noise) != set(want):
            raise ValueError(f"noise must be a dict with keys {', '.join(want)} (from {self.name}.dropout_noise)")
        for k, shape in want.items():
            if not isinstance(noise[k], torch.Tensor) or tuple(noise[k].shape) != shape:
                raise ValueError(
                    f"noise[{k!r}] has shape {tuple(getattr(noise[k], 'shape', ()))}, expected {shape} for {n} images"
                )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 28, 28), (N, 1, 28, 28) or (N, 784) -> float32 (N, 1, 28, 28) as the model expects.

        The one rule for images (see :func:`check_images`): uint8 images hold 0-255 and are divided
        by 255; float images (float32, float64, float16, bfloat16) hold values in [0, 1] and are
        taken as they are (made float32, never rounded to 256 levels). The model's ``normalize``
        is applied after.
        """
        images = check_images(images, floats=True)
        x = images.reshape(-1, 1, 28, 28)
        x = x.float() / 255.0 if images.dtype == torch.uint8 else x.float()
        return self.normalize_input(x)

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images scaled to [0, 1] -> the model's input (its ``normalize`` applied, if it has one)."""
        if self.normalize is None:
            return x
        mean, std = self.normalize
        return (x - mean) / std


def _noise_shapes(name: str, noise: Callable) -> dict[str, tuple[int, ...]]:
    """The shape of one image's noise, drawn once (checking noise later must not draw: it may run under vmap)."""
    one = noise(1, torch.Generator(), "cpu")
    if not isinstance(one, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == 1 for k, v in one.items()
    ):
        raise ModelError(f"{name}'s noise(n, g, device) must return a dict of tensors with n rows")
    return {k: tuple(v.shape[1:]) for k, v in one.items()}


def _keywords(fn: Callable, names: tuple[str, ...]) -> set[str]:
    """Which of ``names`` ``fn`` takes as keywords (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it everything
        return set(names)
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return set(names)
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} & set(names)


def _check_batch(x) -> None:
    """A model input must be a float tensor (N, 1, 28, 28)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x must be a float tensor (N, 1, 28, 28), not {what}: make it with Model.preprocess")
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"x must have shape (N, 1, 28, 28), not {tuple(x.shape)}: make it with Model.preprocess")


_IMAGE_SHAPES = ((28, 28), (1, 28, 28), (784,))


def check_images(images: Any, *, floats: bool = False) -> torch.Tensor:
    """``images`` if it is a batch of images of shape (N, 28, 28), (N, 1, 28, 28) or (N, 784).

    The one rule for images: **uint8 images hold 0-255; float images hold values in [0, 1]**.
    Evaluation (:func:`~mnistfx.logits`, :func:`~mnistfx.probabilities`, :func:`~mnistfx.predict`,
    :func:`~mnistfx.evaluate`, :class:`~mnistfx.Weights`, the plots and :meth:`Model.preprocess`)
    takes both; training data (:func:`~mnistfx.batch_inputs`) is uint8.

    Arguments:
        images: the tensor to check.
        floats: also accept float images (float32, float64, float16 or bfloat16), whose every
            value must be finite and in [0, 1]; by default only uint8 is.

    Returns:
        ``images``, unchanged.

    Raises:
        TypeError: not a tensor, or of another dtype (an integer tensor other than uint8 included).
        ValueError: another shape, or a float image with a value outside [0, 1] (or NaN).
    """
    if not isinstance(images, torch.Tensor) or not (
        images.dtype == torch.uint8 or (floats and images.dtype in _FLOAT_IMAGES)
    ):
        what = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        if floats:
            fix = (
                "convert integer images of 0-255 with .to(torch.uint8)"
                if isinstance(images, torch.Tensor) and not images.is_floating_point() and not images.is_complex()
                else "pass uint8 images (0-255) or float images in [0, 1]"
            )
            raise TypeError(f"images must be uint8 (0-255) or float in [0, 1], not {what}: {fix}")
        raise TypeError(
            f"images must be uint8 (0-255), not {what}: for float images in [0, 1] use Model.normalize_input"
        )
    if tuple(images.shape[1:]) not in _IMAGE_SHAPES:
        raise ValueError(f"images must have shape (N, 28, 28), (N, 1, 28, 28) or (N, 784), not {tuple(images.shape)}")
    if images.dtype != torch.uint8 and images.numel():
        low, high = images.aminmax()
        if not (bool(low >= 0) and bool(high <= 1)):  # NaN fails both comparisons
            span = "NaN" if bool(images.isnan().any()) else f"{float(low):.4g}..{float(high):.4g}"
            raise ValueError(
                f"float images must hold values in [0, 1], not {span}: scale them to [0, 1] (images of "
                "0-255 divided by 255), or pass uint8 images of 0-255"
            )
    return images


_FLOAT_IMAGES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def num_params(params: dict[str, torch.Tensor]) -> int:
    """The total number of parameters in a parameter dict."""
    return sum(p.numel() for p in params.values())
