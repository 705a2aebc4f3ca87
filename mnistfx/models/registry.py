"""Models by name: the built-in ones, those registered with :func:`register_model`, and ``module:attr``.

A name in a weights file or a checkpoint is only ever looked up here: nothing is imported because
a file says so. Code is imported only from a ``module:attr`` the user names (:func:`import_model`,
the command line's ``MODEL`` argument and ``--model`` option).
"""

from __future__ import annotations

from .._imports import import_attr
from ..constants import MODELS, NOTEBOOK_MODELS
from ..errors import ConfigError, WeightsError
from .adversarial_cnns import ADV_ARCHS, make_adversarial_cnn
from .dp_cnn import DP_ARCHS, make_dp_cnn
from .model import Model
from .notebook_cnns import reference_model
from .resnet import make_resnet

_REGISTRY: dict[str, Model] = {
    **{name: reference_model(name) for name in NOTEBOOK_MODELS},
    "resnet": make_resnet(),
    **{name: make_dp_cnn(name) for name in DP_ARCHS},
    **{name: make_adversarial_cnn(name) for name in ADV_ARCHS},
}


def register_model(model: Model, *, replace: bool = False) -> Model:
    """Make ``model`` known by its name to :func:`get_model`, :func:`~mnistfx.train`, weights loading and
    the other functions that take a model's name; returns it.

    Arguments:
        model: a :class:`~mnistfx.Model`.
        replace: replace a model registered under the same name (a built-in one never is).
    """
    if not isinstance(model, Model):
        raise TypeError(f"register_model takes a mnistfx.Model, not {type(model).__name__}")
    if model.name in MODELS or (model.name in _REGISTRY and not replace and _REGISTRY[model.name] is not model):
        raise ConfigError(
            f"a model named {model.name!r} is already registered: give yours another name"
            + ("" if model.name in MODELS else " (or pass replace=True)")
        )
    _REGISTRY[model.name] = model
    return model


def get_model(name: str) -> Model:
    """The model called ``name``: a built-in one (:data:`~mnistfx.MODELS`) or one registered."""
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    raise ConfigError(
        f"unknown model {name!r}: choose one of {', '.join(model_names())}, or name your own as "
        "MODULE:ATTR (in Python: register_model)"
    )


def model_names() -> tuple[str, ...]:
    """The names :func:`get_model` knows, built-in ones first."""
    return tuple(_REGISTRY)


def guess_model(params: dict, *, source: str, among=None) -> str:
    """The name of the model (of ``among``, default all known) whose parameter names and shapes
    ``params`` has; :class:`~mnistfx.WeightsError` if none."""
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    for name in among or model_names():
        if shapes == get_model(name).shapes():
            return name
    raise WeightsError(
        f"{source} holds weights that match no model and name none: pass weights written by `mnistfx train`"
    )


def import_model(spec: str) -> Model:
    """Import the :class:`~mnistfx.Model` ``spec`` names (``"package.module:attr"``), register it, return it.

    The current folder is searched first, so ``mymodels:mlp`` finds ``./mymodels.py``. Only name a
    module you trust: importing runs its code.
    """
    model = import_attr(spec, "model", "mymodels:mlp, for the Model mlp in mymodels.py")
    if not isinstance(model, Model):
        what = "nothing" if model is None else f"of type {type(model).__name__}"
        raise ConfigError(f"{spec} is {what}, not a mnistfx.Model: point at the Model(...) your module makes")
    return register_model(model, replace=True)
