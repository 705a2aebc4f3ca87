"""A model and its parameters as an ordinary ``torch.nn.Module``, for code that expects one."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import WeightsError
from .model import Model, check_params, check_state


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
