"""Trained weights as a file that other runtimes run: ONNX, or a ``torch.export`` program (``.pt2``).

The exported graph takes what users have, uint8 images (N, 28, 28) with the digit light on black
as MNIST's, and returns float32 ``logits`` (N, 10): the model's own preprocessing
(:meth:`~mnistfx.Model.preprocess`: /255, then its normalize) is inside the graph, the model runs
in eval mode, and the batch size N is free. An ensemble's output is the log of its members' mean
probability, so that its softmax is :meth:`Weights.probabilities` and its argmax the ensemble's
prediction. The graph's input is named ``images`` and its output ``logits``.

ONNX export needs onnx and onnxscript (the optional ``export`` extra, with onnxruntime to run the
file), imported only when a file is written. The ``.pt2`` format needs only torch.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import stat
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ._io import first_line, read_limited, write_new
from .constants import VERSION
from .ensemble import unstack
from .errors import MnistfxError
from .modules import to_module
from .weights import WEIGHTS_MAX_BYTES, Weights, load_model_weights

INPUT, OUTPUT = "images", "logits"
INPUT_HELP = "uint8 images (N, 28, 28), light digit on black as MNIST's"
_TRACE_BATCH = 2  # sizes 0 and 1 would be specialised by torch.export
_PROTOBUF_MAX_BYTES = (2 << 30) - 1  # one ONNX file without external data
_INSTALL = "pip install 'mnistfx[export]'"
_JSON_MAX_BYTES = 64 << 20  # a program's graph and configs: a few hundred kB for these models


class ImagesToLogits(nn.Module):
    """``weights`` in eval mode as one ``nn.Module``: uint8 images (N, 28, 28) -> float32 logits (N, 10)
    (for an ensemble: the log of its members' mean probability)."""

    def __init__(self, weights: Weights):
        super().__init__()
        if weights.members is None:
            members = [(weights.params, weights.state)]
        else:
            states = unstack(weights.state) if weights.state else [{}] * weights.members
            members = list(zip(unstack(weights.params), states))
        self.model = weights.model
        self.members = nn.ModuleList(to_module(weights.model, p, s) for p, s in members)
        self.ensemble = weights.members is not None
        self.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.model.preprocess(images)
        if not self.ensemble:
            return self.members[0](x)
        log_probs = torch.stack([member(x).log_softmax(-1) for member in self.members])
        return log_probs.logsumexp(0) - math.log(len(self.members))


def export_onnx(weights, path, *, overwrite: bool = False) -> Path:
    """Write ``weights`` as one self-contained ONNX file (weights embedded) with torch's dynamo exporter.

    The graph takes ``images``, uint8 (N, 28, 28) with any N, and gives ``logits``, float32 (N, 10)
    (see the module's docstring); the file's metadata names the model and its ensemble size.

    Arguments:
        weights: a :class:`~mnistfx.Weights`, or the path of a weights file (as
            :func:`~mnistfx.load_model_weights` reads).
        path: the ``.onnx`` file to write (atomically); its folder must exist.
        overwrite: replace an existing file; by default one is refused.

    Returns:
        ``path``.

    Raises:
        MnistfxError: onnx or onnxscript is missing, ``path`` exists (without ``overwrite``), its
            folder is missing or not writable, or the model cannot be exported.
        WeightsError: the weights cannot be read.
    """
    require_onnx()
    path, weights = _prepare(weights, path, overwrite)
    with _exporting(weights, "ONNX"):
        program = torch.onnx.export(ImagesToLogits(weights), (_example(),), dynamo=True, verbose=False, input_names=[INPUT],
                                    output_names=[OUTPUT], dynamic_shapes={INPUT: {0: _batch()}})
        proto = program.model_proto
    meta = {"mnistfx_model": weights.model.name, "mnistfx_members": str(weights.members or 1),
            "mnistfx_version": VERSION, "input": INPUT_HELP}
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    if proto.ByteSize() > _PROTOBUF_MAX_BYTES:
        raise MnistfxError(f"{weights.model.name} is too large for one ONNX file (2 GB): export fewer members")
    _write(path, proto.SerializeToString(), overwrite)
    return path


def export_program(weights, path, *, overwrite: bool = False) -> Path:
    """Write ``weights`` as a ``torch.export`` program (``torch.export.save``, a ``.pt2`` file).

    The program's input and output are those of :func:`export_onnx`; run it with
    ``load_program(path).module()(images)``. It is saved without example inputs, so that loading
    it unpickles nothing (see :func:`load_program`).

    Arguments and errors as :func:`export_onnx` (no extra is needed).
    """
    path, weights = _prepare(weights, path, overwrite)
    with _exporting(weights, "a torch.export program"):
        program = torch.export.export(ImagesToLogits(weights), (_example(),), dynamic_shapes={INPUT: {0: _batch()}})
        program.example_inputs = None  # else saved with torch.save, and read back with torch.load
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
    _write(path, buffer.getvalue(), overwrite)
    return path


# What a plain program's archive holds (under its one top folder); loading any of it unpickles nothing.
_PLAIN = re.compile(r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
                    r"|models/model\.json|data/weights/weight_\d+|data/constants/tensor_\d+"
                    r"|data/(weights|constants)/model_(weights|constants)_config\.json|data/sample_inputs/model\.pt")


def load_program(path) -> torch.export.ExportedProgram:
    """Read a ``.pt2`` program as :func:`export_program` writes it, checked so that nothing is unpickled.

    ``torch.export.load`` itself unpickles parts of a ``.pt2`` archive that ask for it (tensors
    marked as pickled, custom objects, example inputs), some without ``weights_only``, so a
    crafted file could run code. This reads the archive's table first and refuses any part that
    would be unpickled; call ``.module()`` on the result to run it.

    Raises:
        MnistfxError: the file is missing, too large, not a ``.pt2`` archive, or holds anything
            but plain tensors and the graph.
    """
    fix = "pass a .pt2 file written by mnistfx export (other .pt2 files may hold pickled code)"
    data = read_limited(path, WEIGHTS_MAX_BYTES, what="program", fix=fix, error=MnistfxError)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            _check_plain(archive)
            # an ExportedProgram that holds no pickle: all is JSON and raw tensor bytes
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.export.load(io.BytesIO(data))
    except MnistfxError as e:
        raise MnistfxError(f"{path}: {e}: {fix}") from None
    except Exception as e:  # zip errors, torch's own checks: all mean "not such a program"
        raise MnistfxError(f"{path} is not a torch.export program ({first_line(e)}): {fix}") from None


def _check_plain(archive: zipfile.ZipFile) -> None:
    """Refuse an archive with any part that ``torch.export.load`` would unpickle."""
    roots = {info.filename.partition("/")[0] for info in archive.infolist()}
    if len(roots) != 1:
        raise MnistfxError("not one archive folder")
    if sum(info.file_size for info in archive.infolist()) > WEIGHTS_MAX_BYTES:
        raise MnistfxError(f"it would inflate to more than {WEIGHTS_MAX_BYTES:,} bytes")
    for info in archive.infolist():
        name = info.filename.partition("/")[2]
        if name.endswith(".json") and info.file_size > _JSON_MAX_BYTES:
            raise MnistfxError(f"its {name} would inflate to {info.file_size:,} bytes")
        if not _PLAIN.fullmatch(name) or (name.startswith("data/sample_inputs/") and info.file_size):
            raise MnistfxError(f"it holds {name!r}, which is not a plain tensor or the graph")
        if name.endswith("_config.json"):
            config = json.loads(archive.read(info)).get("config", {})
            if any(entry.get("use_pickle", True) for entry in config.values()):
                raise MnistfxError(f"{name} asks for pickled tensors")


def require_onnx() -> None:
    """Raise :class:`~mnistfx.MnistfxError` saying how to install them if onnx or onnxscript (which
    torch's ONNX exporter needs) is missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise MnistfxError(f"ONNX export needs onnx and onnxscript ({e.name} is missing): {_INSTALL}") from None


def _prepare(weights, path, overwrite: bool) -> tuple[Path, Weights]:
    """Check ``path`` (before any work) and load ``weights`` if given as a path."""
    path = Path(path)
    if path.is_dir():
        raise MnistfxError(f"{path} is a folder: pass a file name for --out")
    if not path.parent.is_dir():
        raise MnistfxError(f"the folder of {path} does not exist: create it, or pass another --out")
    if os.path.lexists(path):
        if not stat.S_ISREG(os.lstat(path).st_mode):  # a device, FIFO, socket or link is never replaced
            raise MnistfxError(f"{path} exists and is not a regular file: pass another --out")
        if not overwrite:
            raise MnistfxError(f"{path} exists: pass --overwrite to replace it, or another --out")
    if not isinstance(weights, Weights):
        weights = load_model_weights(weights)
    return path, weights.to("cpu")


def _write(path: Path, data: bytes, overwrite: bool) -> None:
    try:
        write_new(path, data, overwrite, MnistfxError)
    except OSError as e:
        raise MnistfxError(f"cannot write {path} ({e.strerror}): pass a writable --out") from None


@contextlib.contextmanager
def _exporting(weights: Weights, what: str):
    """Exporter failures (a model of one's own may use what the exporter cannot) become one line,
    and the exporter's warnings are kept off the output."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except MnistfxError:
        raise
    except Exception as e:
        cause = e
        while cause is not None:  # the exporter wraps a Ctrl-C in its own error
            if isinstance(cause, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            cause = cause.__cause__ or cause.__context__
        message = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", first_line(e))  # the exporter colours its messages
        raise MnistfxError(f"{weights.model.name} cannot be exported as {what} ({message})") from None


def _example() -> torch.Tensor:
    return torch.zeros(_TRACE_BATCH, 28, 28, dtype=torch.uint8)


def _batch():
    return torch.export.Dim("batch", min=1)
