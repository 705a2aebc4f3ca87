"""Weights as safetensors: the parameter dict plus metadata that says what produced it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .._io import first_line, open_checked, to_json, write_new
from .._types import StrPath
from ..errors import WeightsError
from .model import check_finite

WEIGHTS_MAX_BYTES = 2 << 30  # a 64-member cnn ensemble's checkpoint (with Adam) is 2.0 GB; train refuses larger
_HEADER_MAX_BYTES = 8 << 20  # a checkpoint's header (names, shapes, history) is a few kB
_MAX_TENSORS = 10_000
_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"}  # what torch and mnistfx read
_FIX = "pass a weights.safetensors written by `mnistfx train`"
STATE_PREFIX = "state/"  # a model's state tensors sit beside its parameters under this prefix


def save_weights(
    path: StrPath, params: dict[str, torch.Tensor], metadata: dict | None = None, *, overwrite: bool = True
) -> None:
    """Write ``params`` as a safetensors file, atomically.

    Arguments:
        path: the file to write.
        params: a flat dict of tensors (moved to CPU, made contiguous); NaN or infinity is refused.
        metadata: JSON-serialisable values (model name, config, seed, accuracies, versions);
            each is stored as a JSON string under its key.
        overwrite: replace an existing file; with ``False`` one is refused.
    """
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in params.items()
    ):
        raise TypeError("params must be a dict from names (str) to tensors")
    check_finite(params, source=f"not saving {path}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in params.items()}
    meta = {str(k): to_json(v) for k, v in (metadata or {}).items()}
    write_new(Path(path), st_save(tensors, metadata=meta), overwrite, WeightsError)


def load_weights(path: StrPath) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a safetensors file written by :func:`save_weights`: its raw tensors and metadata.

    The file's size and kind are checked before it is read, and its header (tensor dtypes,
    metadata) before any tensor is made; nothing checks that the tensors fit a model. For a run's
    or :func:`~mnistfx.save_run`'s weights with their model, checked to fit and ready to evaluate,
    use :func:`~mnistfx.load_model_weights` (it returns a :class:`~mnistfx.Weights`).

    Returns:
        ``(params, metadata)``: CPU tensors and the decoded metadata.

    Raises:
        WeightsError: the file is missing, not a regular file, too large, empty, not
            safetensors, or holds a dtype or metadata mnistfx does not read.
    """
    return parse_weights(read_weights(path), path)


def read_weights(path) -> bytes:
    """The bytes of the safetensors file ``path``, whose size, kind and header are checked before the
    tensors are read (:class:`~mnistfx.WeightsError` as for :func:`load_weights`)."""
    path = Path(path)
    with open_checked(path, WEIGHTS_MAX_BYTES, what="weights", fix=_FIX, error=WeightsError) as (f, size):
        if size == 0:
            raise WeightsError(f"weights file {path} is empty: {_FIX}")
        try:
            head = f.read(8)
            head += f.read(min(max(int.from_bytes(head, "little"), 0), _HEADER_MAX_BYTES))
            _read_header(path, head)  # checked (or refused) before the tensors are read
            return head + f.read(size - len(head))
        except OSError as e:
            raise WeightsError(f"cannot read weights {path} ({e.strerror}): {_FIX}") from None


def parse_weights(data: bytes, path) -> tuple[dict[str, torch.Tensor], dict]:
    """:func:`load_weights` of a safetensors file's bytes (``path`` names it in errors)."""
    if len(data) > WEIGHTS_MAX_BYTES:
        raise WeightsError(f"weights {path} are larger than mnistfx reads ({WEIGHTS_MAX_BYTES:,} bytes): {_FIX}")
    raw_meta = _read_header(path, data)
    try:
        params = st_load(data)
    except Exception as e:  # safetensors' own checks (offsets, sizes): all mean "not safetensors"
        raise WeightsError(f"{path} is not a safetensors file ({first_line(e)}): {_FIX}") from None
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
        header = json.loads(data[8 : 8 + size])
    except (ValueError, RecursionError) as e:
        raise bad(f"invalid JSON in header: {first_line(e)}") from None
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
            raise WeightsError(
                f"{path}: tensor {name} has dtype {dtype!r}, which mnistfx does not read "
                f"({', '.join(sorted(_DTYPES))}): {_FIX}"
            )
    return meta


def printable_name(name) -> str:
    """A model name read from a file, shown safely (a file may hold anything there)."""
    return repr(name)[:70]
