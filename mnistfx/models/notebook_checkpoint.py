"""The original notebook's ``.pth`` checkpoints (a pickled ``state_dict``), read safely and written back.

Read with ``torch.load(weights_only=True)`` after the zip's size and inflated size are checked, and
every tensor checked before any is copied; written atomically under the notebook's own names.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import torch

from .._io import first_line, open_checked, write_new
from .._types import StrPath
from ..constants import NOTEBOOK_MODELS
from ..errors import WeightsError
from .model import Model, check_finite, check_params
from .registry import guess_model

PTH_MAX_BYTES = 256 << 20  # a notebook checkpoint, inflated (the published one is 1.9 MB)
_LAYER_MAX_ELEMENTS = 4_000_000

# The notebook saved an nn.Module with two nn.Sequential blocks; its indices map to our names.
NOTEBOOK_KEYS = {
    "Convolutional_layers.0": "conv1",
    "Convolutional_layers.3": "conv2",
    "Linear_layers.0": "fc1",
    "Linear_layers.3": "fc2",
    "Linear_layers.6": "fc3",
    "Linear_layers.9": "fc4",
}


def import_notebook_checkpoint(path: StrPath) -> tuple[str, dict[str, torch.Tensor]]:
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
        raise WeightsError(
            f"{path} is not a plain PyTorch state_dict ({str(e).splitlines()[0][:100]}): "
            "only tensors are loaded, never pickled code"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state_dict of tensors")
    if len(state) > 2 * len(NOTEBOOK_KEYS):
        raise WeightsError(
            f"{path} holds {len(state)} tensors, more than the notebook's models have: not a notebook checkpoint"
        )
    for key, value in state.items():  # every check before any copy: views may share one storage
        if not isinstance(key, str):
            raise WeightsError(f"{path} has a key {key!r} that is not a tensor name: not a notebook checkpoint")
        layer, _, kind = key.rpartition(".")
        if layer not in NOTEBOOK_KEYS or kind not in ("weight", "bias"):
            raise WeightsError(f"{path} has an unexpected tensor {key}: not a notebook checkpoint")
        if value.layout != torch.strided or value.is_meta or not value.is_floating_point():
            raise WeightsError(
                f"{path}: {key} is not a dense float tensor with data ({value.layout}, "
                f"{value.dtype}, {value.device}): not a notebook checkpoint"
            )
        if value.numel() > _LAYER_MAX_ELEMENTS:  # a zero-stride view claims what it lacks
            raise WeightsError(
                f"{path}: {key} has shape {tuple(value.shape)}, more elements than any notebook "
                "layer: not a notebook checkpoint"
            )
    params = {}
    for key, value in state.items():
        layer, _, kind = key.rpartition(".")
        params[f"{NOTEBOOK_KEYS[layer]}.{kind}"] = value.float().contiguous()
    return guess_model(params, source=str(path), among=NOTEBOOK_MODELS), params


def to_notebook_state_dict(params: dict) -> dict:
    """mnistfx parameters (``conv1.weight`` ...) under the notebook's names (``Convolutional_layers.0.weight`` ...)."""
    theirs = {v: k for k, v in NOTEBOOK_KEYS.items()}
    return {f"{theirs[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in params.items()}


def export_notebook_checkpoint(path: StrPath, model: Model, params: dict, *, overwrite: bool = False) -> Path:
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
    if model.name not in NOTEBOOK_MODELS:
        raise WeightsError(
            f"{model.name} is not one of the notebook's models ({', '.join(NOTEBOOK_MODELS)}): it has no "
            "notebook form; save it with save_weights"
        )
    check_params(model, params, source="params", dtype=torch.float32)
    check_finite(params, source="params")
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in to_notebook_state_dict(params).items()}, buffer)
    write_new(path, buffer.getvalue(), overwrite, WeightsError)
    return path


def _check_zip(path: Path) -> None:
    """Refuse a ``.pth`` (a zip) that is too large, or whose entries would inflate past the limit."""
    fix = "pass the notebook's .pth checkpoint or a weights.safetensors"
    try:
        with (
            open_checked(path, PTH_MAX_BYTES, what="notebook checkpoint", fix=fix, error=WeightsError) as (f, _),
            zipfile.ZipFile(f) as zf,
        ):
            inflated = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise WeightsError(f"{path} is not a readable zip ({first_line(e)}): {fix}") from None
    if inflated > PTH_MAX_BYTES:
        raise WeightsError(
            f"{path} would inflate to {inflated:,} bytes, more than any notebook checkpoint ({PTH_MAX_BYTES:,}): {fix}"
        )
