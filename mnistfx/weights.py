"""Weights as safetensors: the parameter dict plus metadata that says what produced it."""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ._io import atomic_write_bytes, open_checked, to_json
from .constants import MODELS
from .errors import WeightsError
from .models import Model, check_params, get_model

WEIGHTS_MAX_BYTES = 1 << 30  # far above any model's weights or checkpoint (an 8-member cnn ensemble's is 0.25 GB)
PTH_MAX_BYTES = 256 << 20    # a notebook checkpoint, inflated (the published one is 1.9 MB)
_HEADER_MAX_BYTES = 8 << 20  # a checkpoint's header (names, shapes, history) is a few kB
_MAX_TENSORS = 10_000
_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"}  # what torch and mnistfx read
_FIX = "pass a weights.safetensors written by `mnistfx train`"
_LAYER_MAX_ELEMENTS = 4_000_000  # the largest notebook layer, cnn's fc1, has 2,458,624

# The notebook saved an nn.Module with two nn.Sequential blocks; its indices map to our names.
NOTEBOOK_KEYS = {
    "Convolutional_layers.0": "conv1", "Convolutional_layers.3": "conv2",
    "Linear_layers.0": "fc1", "Linear_layers.3": "fc2", "Linear_layers.6": "fc3", "Linear_layers.9": "fc4",
}


def save_weights(path, params: dict[str, torch.Tensor], metadata: dict | None = None, *,
                 overwrite: bool = True) -> None:
    """Write ``params`` as a safetensors file, atomically.

    Arguments:
        path: the file to write.
        params: a flat dict of tensors (moved to CPU, made contiguous); NaN or infinity is refused.
        metadata: JSON-serialisable values (model name, config, seed, accuracies, versions);
            each is stored as a JSON string under its key.
        overwrite: replace an existing file; with ``False`` one is refused.
    """
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in params.items()):
        raise TypeError("params must be a dict from names (str) to tensors")
    check_finite(params, source=f"not saving {path}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in params.items()}
    meta = {str(k): to_json(v) for k, v in (metadata or {}).items()}
    _write_new(Path(path), st_save(tensors, metadata=meta), overwrite)


def _write_new(path: Path, data: bytes, overwrite: bool) -> None:
    """Write ``data`` atomically, refusing to replace a file unless ``overwrite``."""
    if not overwrite and os.path.lexists(path):
        raise WeightsError(f"{path} exists: pass --overwrite to replace it, or another --out")
    atomic_write_bytes(path, data)


def load_weights(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a safetensors file written by :func:`save_weights`.

    The file's size and kind are checked before it is read, and its header (tensor dtypes,
    metadata) before any tensor is made.

    Returns:
        ``(params, metadata)``: CPU tensors and the decoded metadata.

    Raises:
        WeightsError: the file is missing, not a regular file, too large, empty, not
            safetensors, or holds a dtype or metadata mnistfx does not read.
    """
    path = Path(path)
    with open_checked(path, WEIGHTS_MAX_BYTES, what="weights", fix=_FIX, error=WeightsError) as (f, size):
        if size == 0:
            raise WeightsError(f"weights file {path} is empty: {_FIX}")
        try:
            head = f.read(8)
            head += f.read(min(max(int.from_bytes(head, "little"), 0), _HEADER_MAX_BYTES))
            raw_meta = _read_header(path, head)  # checked (or refused) before the tensors are read
            data = head + f.read(size - len(head))
        except OSError as e:
            raise WeightsError(f"cannot read weights {path} ({e.strerror}): {_FIX}") from None
    try:
        params = st_load(data)
    except Exception as e:  # safetensors' own checks (offsets, sizes): all mean "not safetensors"
        raise WeightsError(f"{path} is not a safetensors file ({_first_line(e)}): {_FIX}") from None
    meta = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v  # written by another tool: keep the plain string
        except RecursionError:
            raise WeightsError(f"{path} has metadata {k!r} nested too deep to read: {_FIX}") from None
    return params, meta


def _read_header(path: Path, data: bytes) -> dict:
    """Check a safetensors header (size, JSON, dtypes) and return its string metadata."""
    def bad(reason):
        return WeightsError(f"{path} is not a safetensors file ({reason}): {_FIX}")

    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < size <= min(len(data) - 8, _HEADER_MAX_BYTES):  # data: at least the header
        raise bad("header too large" if size > 0 else "too short")
    try:
        header = json.loads(data[8:8 + size])
    except (ValueError, RecursionError) as e:
        raise bad(f"invalid JSON in header: {_first_line(e)}") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if len(header) > _MAX_TENSORS:
        raise bad(f"{len(header)} tensors, more than mnistfx writes")
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("its metadata is not a map of strings")
    for name, entry in header.items():
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if dtype not in _DTYPES:
            raise WeightsError(f"{path}: tensor {name} has dtype {dtype!r}, which mnistfx does not read "
                               f"({', '.join(sorted(_DTYPES))}): {_FIX}")
    return meta


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:80]


def check_finite(params: dict, *, source: str, fix: str = "the run diverged: train again with a lower --lr") -> None:
    """Raise :class:`WeightsError` if a float tensor of ``params`` holds NaN or infinity."""
    for k, v in params.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise WeightsError(f"{source}: {k} holds NaN or infinite values: {fix}")


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
        if str(meta.get("format", "")).startswith("mnistfx-checkpoint"):
            raise WeightsError(f"{path} is a training checkpoint, not weights: pass the weights.safetensors "
                               "beside it (or continue the run with --resume)")
        name = meta.get("model")
    if name is None:
        name = model or _guess_model(params, source=str(path))
    if name not in MODELS:
        raise WeightsError(f"{path} is for model {name!r}, which mnistfx does not know ({', '.join(MODELS)})")
    if model is not None and model != name:
        raise WeightsError(f"{path} holds {name} weights, not {model}: pass --model {name} or other weights")
    m = get_model(name)
    check_params(m, params, source=str(path), dtype=torch.float32)
    check_finite(params, source=str(path))
    return m, params, meta


def _guess_model(params: dict, *, source: str) -> str:
    for name in MODELS:
        if {k: tuple(v.shape) for k, v in params.items()} == get_model(name).shapes():
            return name
    raise WeightsError(f"{source} holds weights that match no model and name none: pass weights written by "
                       "`mnistfx train`")


def import_notebook_checkpoint(path) -> tuple[str, dict[str, torch.Tensor]]:
    """Read the original notebook's ``state_dict`` checkpoint (``.pth``) as mnistfx params.

    Loaded with ``torch.load(..., map_location="cpu", weights_only=True)``: a file that
    carries pickled code is refused without running it.

    Returns:
        ``(model_name, params)``.
    """
    _check_zip(Path(path))
    try:
        with warnings.catch_warnings():  # its notes on what it checks would be lines of their own
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, zip errors: all mean "not weights"
        raise WeightsError(f"{path} is not a plain PyTorch state_dict ({str(e).splitlines()[0][:100]}): "
                           "only tensors are loaded, never pickled code") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state_dict of tensors")
    if len(state) > 2 * len(NOTEBOOK_KEYS):
        raise WeightsError(f"{path} holds {len(state)} tensors, more than the notebook's models have: "
                           "not a notebook checkpoint")
    for key, value in state.items():  # every check before any copy: views may share one storage
        layer, _, kind = key.rpartition(".") if isinstance(key, str) else ("", "", "")
        if not isinstance(key, str):
            raise WeightsError(f"{path} has a key {key!r} that is not a tensor name: not a notebook checkpoint")
        if layer not in NOTEBOOK_KEYS or kind not in ("weight", "bias"):
            raise WeightsError(f"{path} has an unexpected tensor {key}: not a notebook checkpoint")
        if not isinstance(key, str):
            raise WeightsError(f"{path} has a key {key!r} that is not a tensor name: not a notebook checkpoint")
        if value.layout != torch.strided or value.is_meta or not value.is_floating_point():
            raise WeightsError(f"{path}: {key} is not a dense float tensor with data ({value.layout}, "
                               f"{value.dtype}, {value.device}): not a notebook checkpoint")
        if value.numel() > _LAYER_MAX_ELEMENTS:  # a zero-stride view claims what it lacks
            raise WeightsError(f"{path}: {key} has shape {tuple(value.shape)}, more elements than any notebook "
                               "layer: not a notebook checkpoint")
    params = {}
    for key, value in state.items():
        layer, _, kind = key.rpartition(".")
        params[f"{NOTEBOOK_KEYS[layer]}.{kind}"] = value.float().contiguous()
    return _guess_model(params, source=str(path)), params


def to_notebook_state_dict(params: dict) -> dict:
    """mnistfx parameters (``conv1.weight`` ...) under the notebook's names (``Convolutional_layers.0.weight`` ...)."""
    theirs = {v: k for k, v in NOTEBOOK_KEYS.items()}
    return {f"{theirs[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in params.items()}


def export_notebook_checkpoint(path, model: Model, params: dict, *, overwrite: bool = False) -> Path:
    """Write ``params`` as the notebook's ``state_dict`` checkpoint (``.pth``), atomically.

    The notebook's own ``nn.Module`` loads it with ``load_state_dict(strict=True)`` and then
    predicts what mnistfx predicts.

    Arguments:
        path: the ``.pth`` file to write.
        model: the model the parameters are for (checked: names, shapes, float32, finite).
        params: the parameters.
        overwrite: replace an existing file (default: refuse to).

    Returns:
        The path written.
    """
    path = Path(path)
    check_params(model, params, source="params", dtype=torch.float32)
    check_finite(params, source="params")
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in to_notebook_state_dict(params).items()}, buffer)
    _write_new(path, buffer.getvalue(), overwrite)
    return path


def _check_zip(path: Path) -> None:
    """Refuse a ``.pth`` (a zip) that is too large, or whose entries would inflate past the limit."""
    fix = "pass the notebook's .pth checkpoint or a weights.safetensors"
    try:
        with open_checked(path, PTH_MAX_BYTES, what="notebook checkpoint", fix=fix, error=WeightsError) as (f, _), \
                zipfile.ZipFile(f) as zf:
            inflated = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise WeightsError(f"{path} is not a readable zip ({_first_line(e)}): {fix}") from None
    if inflated > PTH_MAX_BYTES:
        raise WeightsError(f"{path} would inflate to {inflated:,} bytes, more than any notebook checkpoint "
                           f"({PTH_MAX_BYTES:,}): {fix}")
