"""Models and ``torch.nn.Module`` objects, both ways: :func:`to_module` makes a model and its parameters
an ordinary ``nn.Module`` (picklable), for code that expects one; :func:`from_module` makes a
:class:`~mnistfx.Model` of an ``nn.Module`` built of standard layers.

:func:`from_module` keeps the module's own ``forward`` and runs it through
:func:`torch.func.functional_call` on a copy of the module that lives on the ``meta`` device (as the
built-in CNNs run): the parameters come from the ``params`` dict, the buffers (batch-norm running
statistics) from the model's state, and each ``nn.Dropout`` (``Dropout1d``/``2d``/``3d``) is replaced
by a layer whose randomness is an input: uniform noise, one number per unit (per channel for the
channel-wise ones), given with each training call; a unit is kept where its noise is ≥ ``p``.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Callable
from typing import cast

import torch
from torch import nn
from torch.func import functional_call

from .._io import first_line
from ..errors import ModelError, WeightsError
from .model import Model, check_params, check_state
from .registry import get_model, model_names


class FunctionalModule(nn.Module):
    """``model`` with its own copy of ``params`` (and ``state``) as an ``nn.Module``; see :func:`to_module`."""

    def __init__(self, model: Model, params: dict, state: dict):
        super().__init__()
        self.mnistfx_model = model
        for name, value in params.items():
            _owner(self, name).register_parameter(name.rpartition(".")[2], nn.Parameter(value.detach().clone()))
        for name, value in state.items():
            _owner(self, name).register_buffer(name.rpartition(".")[2], value.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for model inputs ``x`` (N, 1, 28, 28) (see :meth:`Model.preprocess`). In training mode
        dropout draws from torch's global generator and a model's state (e.g. batch-norm statistics)
        is updated in place, as a usual ``nn.Module`` does."""
        params, state = dict(self.named_parameters()), dict(self.named_buffers())
        noise = None
        if self.training:
            g = torch.default_generator
            if x.device.type == "cuda":
                g = torch.cuda.default_generators[
                    x.device.index if x.device.index is not None else torch.cuda.current_device()
                ]
            noise = self.mnistfx_model.dropout_noise(x.shape[0], key=g, device=x.device)
        logits, new_state = self.mnistfx_model.forward(params, state, x, train=self.training, noise=noise)
        if self.training:
            with torch.no_grad():
                for name, value in new_state.items():
                    state[name].copy_(value)
        return logits

    def extra_repr(self) -> str:
        return f"model={self.mnistfx_model.name!r}"

    # Pickling: the model's functions are often local to the function that made them (the built-in
    # models' are), so a registered model is pickled by its name and found again by it when loaded.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        model = state["mnistfx_model"]
        if model.name in model_names() and get_model(model.name) is model:
            state["mnistfx_model"] = _ModelByName(model.name)
        else:
            state["mnistfx_model"] = _ModelByValue(model)
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        ref = state["mnistfx_model"]
        if isinstance(ref, _ModelByName):
            if ref.name not in model_names():
                raise ModelError(
                    f"this module runs model {ref.name!r}, which is not registered in this process: register "
                    "it (register_model or import_model) before loading the module"
                )
            state["mnistfx_model"] = get_model(ref.name)
        super().__setstate__(state)
        model: Model = self.mnistfx_model
        params = {k: v.detach() for k, v in self.named_parameters()}
        try:
            check_params(model, params, source=f"the pickled module of {model.name}")
        except WeightsError as e:
            raise ModelError(f"{e} (model {model.name!r} here is another model of that name)") from None


class _ModelByName:
    """A registered model in a pickle: its name."""

    def __init__(self, name: str):
        self.name = name


class _ModelByValue:
    """A model that is not registered, in a pickle: pickled whole (its functions by reference), or a
    clear error if they cannot be; copying (``copy.deepcopy``) shares it."""

    def __init__(self, model: Model):
        self.model = model

    def __reduce__(self):
        try:
            pickle.dumps(self.model)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            raise pickle.PicklingError(
                f"cannot pickle this module: its model {self.model.name!r} is not registered and its functions "
                f"cannot be pickled ({first_line(e)}): define them at a module's top level, or register the "
                "model (register_model) here and where the pickle is loaded"
            ) from None
        return (_same, (self.model,))

    def __deepcopy__(self, memo) -> Model:
        return self.model


def _same(model: Model) -> Model:
    return model


def _owner(root: nn.Module, name: str) -> nn.Module:
    """The submodule that holds the tensor ``name`` (``conv1.weight`` -> ``root.conv1``), made as needed."""
    module = root
    for part in name.split(".")[:-1]:
        child = module._modules.get(part)
        if child is None:
            if hasattr(module, part) or not part:
                raise ValueError(f"the tensor name {name!r} cannot be a module path: rename it")
            child = nn.Module()
            module.add_module(part, child)
        module = child
    if not name.rpartition(".")[2] or hasattr(module, name.rpartition(".")[2]):
        raise ValueError(f"the tensor name {name!r} clashes with another name: rename it")
    return module


def _stacked(model: Model, params: dict) -> bool:
    """Whether ``params`` are ``model``'s parameters of several members, stacked."""
    first = next(iter(params.values()), None)
    if first is None or first.dim() == 0:
        return False
    try:
        check_params(model, params, members=first.shape[0])
    except WeightsError:
        return False
    return True


def to_module(model: Model, params: dict, state: dict | None = None) -> FunctionalModule:
    """An ``nn.Module`` that runs ``model`` with a copy of ``params`` (and ``state``) as its parameters
    (and buffers), under the same names: ``module.state_dict()`` has mnistfx's names, ``module(x)``
    gives ``model.apply``'s logits, and ``module.train()`` / ``module.eval()`` switch dropout and
    batch statistics (updating the state's buffers in place in training mode). It lives on the
    device of the tensors given (a real device: nothing of it is on ``meta``).

    Arguments:
        model: a :class:`~mnistfx.Model`.
        params: its parameters (one model, not an ensemble's stack).
        state: its state, for a model with state.
    """
    if not isinstance(model, Model):
        raise TypeError(f"to_module takes a mnistfx.Model, not {type(model).__name__}")
    try:
        check_params(model, params)
    except WeightsError:
        if _stacked(model, params):
            raise ValueError(
                "these are an ensemble's stacked params: take one member with mnistfx.unstack(params)[i]"
            ) from None
        raise
    if not all(v.is_floating_point() for v in params.values()):
        raise ValueError("to_module takes float parameters (they become nn.Parameters, which need gradients)")
    state = {} if state is None else state
    check_state(model, state)
    if any(t.is_meta for t in (*params.values(), *state.values())):
        raise ValueError("params on the meta device hold no values: pass real tensors (from init or a weights file)")
    return FunctionalModule(model, params, state).eval()


# the dropout layers from_module gives explicit noise: how many spatial axes follow the channel axis
# (None: elementwise, as nn.Dropout)
_DROPOUTS: dict[type, int | None] = {nn.Dropout: None, nn.Dropout1d: 1, nn.Dropout2d: 2, nn.Dropout3d: 3}
# layers that draw random numbers in training that no input can give them
_RANDOM_LAYERS = (nn.AlphaDropout, nn.FeatureAlphaDropout, nn.RReLU)
_PROBE = 2  # the batch from_module runs the module on, once, to find its dropout layers' shapes


class _ExplicitDropout(nn.Module):
    """Inverted dropout whose randomness is an input: the buffer ``noise`` (uniform in [0, 1), one number
    per unit, or per channel with ``spatial`` axes after it set to 1), given with each training call."""

    def __init__(self, p: float, spatial: int | None):
        super().__init__()
        self.p, self.spatial = float(p), spatial
        self.register_buffer("noise", torch.empty(0, device="meta"), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        noise = cast(torch.Tensor, self.noise)  # given with each call, as a buffer
        return x * (noise >= self.p) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}, noise per {'unit' if self.spatial is None else 'channel'}"


def from_module(module: nn.Module, *, name: str | None = None, normalize: tuple[float, float] | None = None) -> Model:
    """A :class:`~mnistfx.Model` that runs ``module``'s own ``forward`` as a pure function.

    The model's parameters are the module's (``params`` has its ``named_parameters`` names and
    shapes, float32), its state the module's buffers (e.g. batch norm's running statistics, updated
    in training as the module would), and its dropout explicit noise: each ``nn.Dropout``,
    ``Dropout1d``, ``Dropout2d`` and ``Dropout3d`` takes uniform noise named by the layer's path
    (``model.dropout_noise(n, key=...)``) and keeps a unit (a channel) where its noise is ≥ ``p``.
    ``model.init(key)`` runs each layer's ``reset_parameters`` (PyTorch's default initialisation)
    with torch's generator seeded from ``key``, restoring the global generator after, so the same
    key gives the same parameters and nothing else draws from the global generator. The module
    given is copied, never changed; its current values are the parameters
    ``{k: v.detach().float() for k, v in module.named_parameters()}`` (and its buffers the state).

    The module is run once here, eagerly, on 2 zero images (N, 1, 28, 28), in eval and in training
    mode; it must give logits (N, 10) (log-probabilities, as ``log_softmax`` gives, are logits too).

    Arguments:
        module: an ``nn.Module`` built of standard layers, taking (N, 1, 28, 28) float images.
        name: the model's name (default: the module's class name, lower-cased).
        normalize: ``(mean, std)`` applied to images in [0, 1] before the module sees them (e.g.
            ``(0.1307, 0.3081)``, as pytorch/examples' MNIST does); default none.

    Returns:
        The :class:`~mnistfx.Model` (not registered: :func:`~mnistfx.register_model` it to train it
        by name or save and load its weights).

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ModelError: a layer draws random numbers that cannot be given as noise (``AlphaDropout``,
            ``RReLU``, ``F.dropout`` or ``torch.rand`` in ``forward``, a dropout layer used twice), a
            module with parameters has no ``reset_parameters``, the module has no parameters, or it
            fails on MNIST images or does not give logits (N, 10).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_module takes a torch.nn.Module, not {type(module).__name__}")
    if name is None:
        name = re.sub(r"[^a-z0-9_.-]", "", type(module).__name__.lower()) or "module"
        name = name if name[0].isalpha() else f"m{name}"
    Model(name, _unused, _unused, normalize=normalize)  # name and normalize checked, as a Model checks them
    shown = name
    _refuse_random_layers(module, shown)
    try:
        template = copy.deepcopy(module).to("cpu").float()
    except Exception as e:
        raise ModelError(f"{shown}: cannot copy the module ({type(e).__name__}: {first_line(e)})") from e
    dropouts = _replace_dropouts(template)
    shapes = {k: tuple(v.shape) for k, v in template.named_parameters()}
    if not shapes:
        raise ModelError(f"{shown} has no parameters: nothing to train")
    for path, m in template.named_modules():
        if any(True for _ in m.parameters(recurse=False)) and not callable(getattr(m, "reset_parameters", None)):
            raise ModelError(
                f"{shown}: layer {path or '(the module itself)'} ({type(m).__name__}) has parameters but no "
                "reset_parameters(), so it cannot be initialised from a key: give it one"
            )
    noise_buffers = {f"{path}.noise" for path in dropouts}
    fresh_state = copy.deepcopy(template)
    for m in fresh_state.modules():
        reset = getattr(m, "reset_running_stats", None)
        if callable(reset):
            reset()
    initial_state = {k: v.detach().clone() for k, v in fresh_state.named_buffers() if k not in noise_buffers}
    noise_shapes = _noise_shapes(template, dropouts, shown)
    train_skeleton = copy.deepcopy(template).to("meta").train()
    eval_skeleton = copy.deepcopy(template).to("meta").eval()

    def init(g: torch.Generator) -> dict[str, torch.Tensor]:
        seed = int(torch.randint(0, 2**62, (), generator=g))
        fresh = copy.deepcopy(template)
        with torch.random.fork_rng(devices=[]):  # the global CPU generator is restored after
            torch.default_generator.manual_seed(seed)
            for m in fresh.modules():
                if any(True for _ in m.parameters(recurse=False)):
                    getattr(m, "reset_parameters")()  # noqa: B009 (checked to be there when the model was made)
        return {k: v.detach().clone() for k, v in fresh.named_parameters()}

    def apply(params, x, *, train=False, noise=None, state=None):
        tensors = dict(params)
        new_state = {k: v.clone() for k, v in state.items()} if train and state else state or {}
        tensors.update(new_state)
        if train and noise:
            tensors.update({f"{path}.noise": noise[path] for path in noise_shapes})
        logits = functional_call(train_skeleton if train else eval_skeleton, tensors, (x,))
        return (logits, new_state) if initial_state else logits

    def make_noise(n: int, g: torch.Generator, device) -> dict[str, torch.Tensor]:
        return {k: torch.rand(n, *shape, generator=g, device=device) for k, shape in noise_shapes.items()}

    def init_state(params) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in initial_state.items()}

    if initial_state:
        model = Model(
            name, init, apply, noise=make_noise if noise_shapes else None, init_state=init_state, normalize=normalize
        )
    else:

        def apply_stateless(params, x, *, train=False, noise=None):
            return apply(params, x, train=train, noise=noise)

        model = Model(name, init, apply_stateless, noise=make_noise if noise_shapes else None, normalize=normalize)
    model._shapes = shapes  # known without drawing any numbers
    _probe_training(model, template, shown)
    return model


def _unused(*args):
    raise AssertionError("never called")


def _refuse_random_layers(module: nn.Module, name: str) -> None:
    """A :class:`~mnistfx.ModelError` for a layer that draws random numbers no input can give it."""
    for path, m in module.named_modules():
        random = isinstance(m, _RANDOM_LAYERS) or (
            isinstance(m, nn.modules.dropout._DropoutNd) and type(m) not in _DROPOUTS
        )
        random = random or (isinstance(m, nn.RNNBase) and m.dropout > 0 and m.num_layers > 1)
        random = random or (isinstance(m, nn.MultiheadAttention) and m.dropout > 0)
        if random:
            raise ModelError(
                f"{name}: layer {path} ({type(m).__name__}) draws random numbers in training that from_module "
                "cannot pass in: its random layers may be nn.Dropout, Dropout1d, Dropout2d and Dropout3d"
            )


def _replace_dropouts(root: nn.Module) -> dict[str, _ExplicitDropout]:
    """Replace every dropout layer of ``root`` by an :class:`_ExplicitDropout`, in place; by path."""
    found = {}
    for path, m in list(root.named_modules()):
        if type(m) in _DROPOUTS:
            parent_path, _, child = path.rpartition(".")
            parent = root.get_submodule(parent_path)
            found[path] = parent._modules[child] = _ExplicitDropout(m.p, _DROPOUTS[type(m)])
    return found


def _noise_shapes(template: nn.Module, dropouts: dict, name: str) -> dict[str, tuple[int, ...]]:
    """Run ``template`` (eval mode, CPU) on a batch of zero images: the shape of one image's noise of
    each dropout layer that its ``forward`` uses; :class:`~mnistfx.ModelError` if it fails."""
    seen: dict[str, list[tuple[int, ...]]] = {path: [] for path in dropouts}
    hooks = [
        layer.register_forward_pre_hook(lambda m, args, path=path: seen[path].append(tuple(args[0].shape)))
        for path, layer in dropouts.items()
    ]
    try:
        with torch.no_grad():
            out = _run(template.eval(), torch.zeros(_PROBE, 1, 28, 28), name, "eval mode")
    finally:
        for h in hooks:
            h.remove()
    _check_out(out, name)
    shapes = {}
    for path, calls in seen.items():
        if not calls:
            continue  # a layer forward does not use: no noise
        if len(calls) > 1:
            raise ModelError(
                f"{name}: dropout layer {path} is used {len(calls)} times in one forward: one mask cannot serve "
                "each use, give each its own nn.Dropout"
            )
        (shape,) = calls
        spatial = dropouts[path].spatial
        if not shape or shape[0] != _PROBE or (spatial is not None and len(shape) != 2 + spatial):
            raise ModelError(
                f"{name}: dropout layer {path} sees a tensor of shape {shape} for {_PROBE} images: its first axis "
                "must be the batch" + ("" if spatial is None else f" and it must have {2 + spatial} axes")
            )
        shapes[path] = shape[1:] if spatial is None else (shape[1],) + (1,) * spatial
    return shapes


def _run(fn: Callable, x: torch.Tensor, name: str, mode: str):
    try:
        return fn(x)
    except Exception as e:
        raise ModelError(
            f"{name}'s forward failed in {mode} on {x.shape[0]} MNIST images (N, 1, 28, 28) "
            f"({type(e).__name__}: {first_line(e)})"
        ) from e


def _check_out(out, name: str) -> None:
    if not (isinstance(out, torch.Tensor) and out.is_floating_point() and tuple(out.shape) == (_PROBE, 10)):
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{name}'s forward must return float logits ({_PROBE}, 10) for {_PROBE} images, not {got}")


def _probe_training(model: Model, template: nn.Module, name: str) -> None:
    """Run ``model`` once in training mode with all-keeping noise and the template's values: a
    :class:`~mnistfx.ModelError` if its forward draws from the global generator (``F.dropout``,
    ``torch.rand``, a random layer), which is then restored."""
    params = {k: v.detach() for k, v in template.named_parameters()}
    state = model.init_state(params)
    noise = {k: torch.ones_like(v) for k, v in model.dropout_noise(_PROBE, key=0).items()}
    before = torch.get_rng_state()
    try:
        with torch.no_grad():
            out = _run(
                lambda x: model.forward(params, state, x, train=True, noise=noise)[0],
                torch.zeros(_PROBE, 1, 28, 28),
                name,
                "training mode",
            )
    finally:
        drew = not torch.equal(before, torch.get_rng_state())
        torch.set_rng_state(before)
    _check_out(out, name)
    if drew:
        raise ModelError(
            f"{name}'s forward draws from torch's global random generator in training (F.dropout, torch.rand or "
            "a random layer): from_module gives randomness only to nn.Dropout layers: use those"
        )
