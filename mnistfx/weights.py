"""Weights as safetensors: the parameter dict plus metadata that says what produced it."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ._io import atomic_write_bytes
from .errors import WeightsError
from .constants import MODELS
from .models import Model, check_params, get_model

# The notebook saved an nn.Module with two nn.Sequential blocks; its indices map to our names.
NOTEBOOK_KEYS = {
    "Convolutional_layers.0": "conv1", "Convolutional_layers.3": "conv2",
    "Linear_layers.0": "fc1", "Linear_layers.3": "fc2", "Linear_layers.6": "fc3", "Linear_layers.9": "fc4",
}


def save_weights(path, params: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Write ``params`` as a safetensors file, atomically.

    Arguments:
        path: the file to write.
        params: a flat dict of tensors (moved to CPU, made contiguous).
        metadata: JSON-serialisable values (model name, config, seed, accuracies, versions);
            each is stored as a JSON string under its key.
    """
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in params.items()):
        raise TypeError("params must be a dict from names (str) to tensors")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in params.items()}
    meta = {str(k): json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write_bytes(path, st_save(tensors, metadata=meta))


def load_weights(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a safetensors file written by :func:`save_weights`.

    Returns:
        ``(params, metadata)``: CPU tensors and the decoded metadata.

    Raises:
        WeightsError: the file is missing, empty or not safetensors.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"cannot read weights {path} ({e.strerror}): pass a weights.safetensors "
                           "written by `mnistfx train`") from None
    if not data:
        raise WeightsError(f"weights file {path} is empty: pass a weights.safetensors written by `mnistfx train`")
    try:
        params = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        raw_meta = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path} is not a safetensors file ({str(e).splitlines()[0][:80]}): pass a "
                           "weights.safetensors written by `mnistfx train`") from None
    meta = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v  # written by another tool: keep the plain string
    return params, meta


def load_model_weights(path, model: str | None = None) -> tuple[Model, dict[str, torch.Tensor], dict]:
    """Load weights and the model they belong to, checking that they fit.

    Reads mnistfx safetensors files, and also the original notebook's ``.pth`` checkpoints
    (with ``torch.load(weights_only=True)``, which refuses pickled code).

    Arguments:
        path: a ``.safetensors`` (or notebook ``.pth``) file.
        model: the expected model name; default: the one named in the file.

    Returns:
        ``(model, params, metadata)``.

    Raises:
        WeightsError: unreadable file, unknown model, or weights that do not fit the model.
    """
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        name, params = import_notebook_checkpoint(path)
        meta = {"model": name, "source": "notebook checkpoint"}
    else:
        params, meta = load_weights(path)
        name = meta.get("model")
    if name is None:
        name = model or _guess_model(params)
    if name not in MODELS:
        raise WeightsError(f"{path} is for model {name!r}, which mnistfx does not know ({', '.join(MODELS)})")
    if model is not None and model != name:
        raise WeightsError(f"{path} holds {name} weights, not {model}: pass --model {name} or other weights")
    m = get_model(name)
    check_params(m, params, source=str(path), dtype=torch.float32)
    return m, params, meta


def _guess_model(params: dict) -> str:
    for name in MODELS:
        if {k: tuple(v.shape) for k, v in params.items()} == get_model(name).shapes():
            return name
    raise WeightsError("these weights match neither model and name none: pass weights written by `mnistfx train`")


def import_notebook_checkpoint(path) -> tuple[str, dict[str, torch.Tensor]]:
    """Read the original notebook's ``state_dict`` checkpoint (``.pth``) as mnistfx params.

    Loaded with ``torch.load(..., map_location="cpu", weights_only=True)``: a file that
    carries pickled code is refused without running it.

    Returns:
        ``(model_name, params)``.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, zip errors: all mean "not weights"
        raise WeightsError(f"{path} is not a plain PyTorch state_dict ({str(e).splitlines()[0][:100]}): "
                           "only tensors are loaded, never pickled code") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state_dict of tensors")
    params = {}
    for key, value in state.items():
        layer, _, kind = key.rpartition(".")
        if layer not in NOTEBOOK_KEYS:
            raise WeightsError(f"{path} has an unexpected tensor {key}: not a notebook checkpoint")
        params[f"{NOTEBOOK_KEYS[layer]}.{kind}"] = value.float().contiguous()
    return _guess_model(params), params
