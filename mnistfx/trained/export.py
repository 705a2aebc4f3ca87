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
import keyword
import math
import os
import re
import stat
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from .._io import first_line, read_limited, write_new
from .._types import StrPath
from ..constants import VERSION
from ..errors import MnistfxError
from ..models.ensemble import unstack
from ..models.torch_module import to_module
from ..models.weights_file import WEIGHTS_MAX_BYTES
from .weights import Weights, load_model_weights

INPUT, OUTPUT = "images", "logits"
INPUT_HELP = "uint8 images (N, 28, 28), light digit on black as MNIST's"
_TRACE_BATCH = 2  # sizes 0 and 1 would be specialised by torch.export
_PROTOBUF_MAX_BYTES = (2 << 30) - 1  # one ONNX file without external data
_INSTALL = "pip install 'mnistfx[export]'"
_JSON_MAX_BYTES = 64 << 20  # a program's graph and configs: a few hundred kB for these models
_VALUE_MAX_BYTES = 256 << 20  # one value the graph computes for 2 images (resnet's largest: about 1 MB)


class ImagesToLogits(nn.Module):
    """``weights`` in eval mode as one ``nn.Module``: uint8 images (N, 28, 28) -> float32 logits (N, 10)
    (for an ensemble: the log of its members' mean probability)."""

    def __init__(self, weights: Weights):
        super().__init__()
        if weights.members is None:
            members = [(weights.params, weights.state)]
        else:
            states = unstack(weights.state) if weights.state else [{}] * weights.members
            members = list(zip(unstack(weights.params), states, strict=True))
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


def export_onnx(weights: Weights | StrPath, path: StrPath, *, overwrite: bool = False) -> Path:
    """Write ``weights`` as one self-contained ONNX file (weights embedded) with torch's dynamo exporter.

    The graph takes ``images``, uint8 (N, 28, 28) with any N, and gives ``logits``, float32 (N, 10)
    (the model's own input scaling inside, eval mode, an ensemble's log mean probability); the file's
    metadata names the model and its ensemble size.

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
        program = torch.onnx.export(
            ImagesToLogits(weights),
            (_example(),),
            dynamo=True,
            verbose=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={INPUT: {0: _batch()}},
        )
        if program is None:  # dynamo=True always returns a program
            raise MnistfxError("torch.onnx.export returned no program")
        proto = program.model_proto
    meta = {
        "mnistfx_model": weights.model.name,
        "mnistfx_members": str(weights.members or 1),
        "mnistfx_version": VERSION,
        "input": INPUT_HELP,
    }
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    if proto.ByteSize() > _PROTOBUF_MAX_BYTES:
        raise MnistfxError(f"{weights.model.name} is too large for one ONNX file (2 GB): export fewer members")
    _write(path, proto.SerializeToString(), overwrite)
    return path


def export_program(weights: Weights | StrPath, path: StrPath, *, overwrite: bool = False) -> Path:
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
_PLAIN = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/weights/weight_\d+|data/constants/tensor_\d+"
    r"|data/(weights|constants)/model_(weights|constants)_config\.json|data/sample_inputs/model\.pt"
)
# The strings of a program's graph that torch's deserializer evaluates, runs or resolves, in the grammar
# torch.export writes them: a symbolic size is sympy's srepr (which sympify evaluates), a node's target
# an operator that the program calls, and every other string a name or a path of names, which torch
# writes into generated Python source (a quote or a bracket there would be code).
_EXPR_TOKEN = re.compile(
    r"\s+|-?\d{1,12}(?!\d)|[(),+/-]|\*(?!\s*\*)|Symbol\('[su]\d{1,9}'(?:, [a-z]+=(?:True|False))*\)|true|false"
    r"|(?:Integer|Rational|Add|Mul|Max|Min|FloorDiv|CeilDiv|CleanDiv|Mod|PythonMod"
    r"|ModularIndexing|FloorToInt|CeilToInt|IntTrueDiv|Eq|Ne|Lt|Le|Gt|Ge|StrictLessThan"
    r"|StrictGreaterThan|LessThan|GreaterThan|Equality|Unequality|And|Or|Not)(?=\()"
)
_EXPR_MAX_CHARS = 4096  # no Pow or ** and numbers of at most 12 digits: sympify computes what it reads, exactly
# ATen operators that compute tensors from tensors: those mnistfx's models export to, and the usual ones
# of a model of one's own. Not those that touch files or memory (aten.from_file maps any file) or work
# in place.
_OPS = frozenset(
    """
    _assert_tensor_metadata add avg_pool2d conv2d div flatten linear log_softmax logsumexp max_pool2d mean mul
    relu reshape rsqrt stack sub to unsqueeze
    addmm mm matmul bmm t transpose permute view squeeze expand expand_as view_as reshape_as contiguous clone
    cat split chunk slice select index_select narrow flip roll alias detach _unsafe_view _to_copy type_as
    conv1d conv3d convolution batch_norm _native_batch_norm_legit_no_training layer_norm group_norm
    instance_norm adaptive_avg_pool1d adaptive_avg_pool2d adaptive_max_pool2d max_pool1d max_pool2d_with_indices
    avg_pool1d pad constant_pad_nd upsample_nearest2d upsample_bilinear2d pixel_shuffle embedding einsum
    scaled_dot_product_attention gelu silu sigmoid tanh hardtanh leaky_relu elu softplus softmax _softmax
    _log_softmax exp log sqrt square reciprocal erf neg abs clamp clamp_min clamp_max maximum minimum where
    sum amax amin max min var std var_mean argmax eq ne lt gt le ge floor_divide dropout native_dropout
    full_like zeros_like ones_like sym_size
""".split()
)
_TARGET = re.compile(
    r"torch\.ops\.aten\.(?P<op>[A-Za-z_][A-Za-z0-9_]*)\.[A-Za-z][A-Za-z0-9_]*"
    r"|_operator\.(?:getitem|add|sub|mul|floordiv|truediv|mod|neg|eq|ne|lt|le|gt|ge)"
    r"|torch\.sym_(?:float|int|max|min|not|ite|sqrt|sum)"
)
_NAMES = re.compile(r"[\w.,;+\-]*")  # any other string: names, paths of names, lists of them
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ATTRIBUTE = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
_VARIABLE_KEYS = {"name", "as_name", "forward_arg_names"}
_ATTRIBUTE_KEYS = {"parameter_name", "buffer_name", "tensor_constant_name", "fqn"}
_REFUSED_KEYS = {"as_graph", "as_graphs", "as_custom_obj", "as_operator", "custom_obj_name"}  # code and objects
_METADATA_KEYS = {"stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn"}  # shown in generated code
_TREESPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict"}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")  # a line break inside generated code's comment
_ITEMSIZE = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 2,
    7: 4,
    8: 8,
    9: 4,
    10: 8,
    11: 16,
    12: 1,
    13: 2,
    28: 2,
    29: 1,
    30: 1,
    31: 1,
    32: 1,
    33: 1,
    34: 4,
    35: 8,
}  # torch.export's dtype codes


def load_program(path: StrPath) -> torch.export.ExportedProgram:
    """Read a ``.pt2`` program as :func:`export_program` writes it, checked so that nothing in it runs.

    ``torch.export.load`` unpickles parts of a ``.pt2`` archive that ask for it (tensors marked as
    pickled, custom objects, example inputs), some without ``weights_only``; it evaluates the graph's
    symbolic sizes with ``sympy.sympify``, runs its guards as Python code, resolves each node's target
    by name (``torch.os.system`` is a name) and writes names and stack traces into generated code. So
    a crafted file could run code. This reads the archive first and refuses it unless every part is a
    plain tensor no larger than its recorded shape needs, and every string torch would evaluate, run
    or resolve is in the grammar torch.export writes (symbolic sizes of sympy's own functions, ATen
    operators, plain names, no guards); call ``.module()`` on the result to run it.

    Raises:
        MnistfxError: the file is missing, too large, not a ``.pt2`` archive, or holds anything
            but plain tensors and a graph in that grammar.
    """
    fix = "pass a .pt2 file written by mnistfx export (other .pt2 files may hold code)"
    data = read_limited(path, WEIGHTS_MAX_BYTES, what="program", fix=fix, error=MnistfxError)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            _check_archive(archive)
            checked = _rewritten(archive)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(checked)
            _dry_run(program)
            return program
    except MnistfxError as e:
        raise MnistfxError(f"{path}: {e}: {fix}") from None
    except Exception as e:  # zip errors, torch's own checks, JSON nested past recursion: all mean "not such a program"
        raise MnistfxError(f"{path} is not a torch.export program ({first_line(e)}): {fix}") from None


def _check_archive(archive: zipfile.ZipFile) -> None:
    """Refuse an archive with any part that ``torch.export.load`` would unpickle, evaluate or run."""
    infos = archive.infolist()
    roots = {info.filename.partition("/")[0] for info in infos}
    if len(roots) != 1:
        raise MnistfxError("not one archive folder")
    parts = {}
    for info in infos:
        name = info.filename.partition("/")[2]
        if not _PLAIN.fullmatch(name) or (name.startswith("data/sample_inputs/") and info.file_size):
            raise MnistfxError(f"it holds {name!r}, which is not a plain tensor or the graph")
        if name.endswith(".json") and info.file_size > _JSON_MAX_BYTES:
            raise MnistfxError(f"its {name} would inflate to {info.file_size:,} bytes")
        if name in parts:
            raise MnistfxError(f"it holds {name!r} twice")
        parts[name] = info
    if "models/model.json" not in parts:
        raise MnistfxError("it holds no graph (models/model.json)")
    tensors = {}  # each tensor file's name, and the bytes its recorded shape and dtype need
    for kind in ("weights", "constants"):
        listed = parts.get(f"data/{kind}/model_{kind}_config.json")
        config = json.loads(archive.read(listed)).get("config", {}) if listed else {}
        for entry in config.values():
            if entry.get("use_pickle", True):
                raise MnistfxError(f"its {kind} ask for pickled tensors")
            tensors[f"data/{kind}/{entry['path_name']}"] = _storage_bytes(entry["tensor_meta"])
    if sum(tensors.values()) > WEIGHTS_MAX_BYTES:
        raise MnistfxError(f"its tensors' recorded shapes need more than {WEIGHTS_MAX_BYTES:,} bytes")
    for name, info in parts.items():
        # torch fills a tensor with no bytes with zeros of its recorded shape: the bytes must be the shape's
        if name.startswith(("data/weights/weight_", "data/constants/tensor_")) and info.file_size != tensors.get(
            name, 0
        ):
            raise MnistfxError(
                f"its {name} would inflate to {info.file_size:,} bytes, not the "
                f"{tensors.get(name, 0):,} its tensor holds"
            )
    if set(tensors) - set(parts):
        raise MnistfxError("a tensor its configs name is missing from it")
    _check_graph(json.loads(archive.read(parts["models/model.json"])))


def _dry_run(program: torch.export.ExportedProgram) -> None:
    """Run ``program`` once on fake tensors of a batch of 2 (shapes only: nothing is allocated) and refuse
    it if any value it computes would take more than :data:`_VALUE_MAX_BYTES` (an allowed operator with a
    giant size argument, such as a pad of 10**9, would take all memory when run)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    too_large = []

    class Sized(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            for value in torch.utils._pytree.tree_leaves(out):
                if isinstance(value, torch.Tensor) and value.numel() * value.element_size() > _VALUE_MAX_BYTES:
                    too_large.append(tuple(value.shape))
                    raise MemoryError  # stops the run; fx adds its own lines to the error, so the shape is kept apart
            return out

    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        try:
            Sized(program.module()).run(fake.from_tensor(_example()))
        except MemoryError:
            if not too_large:
                raise
    if too_large:
        raise MnistfxError(f"its graph computes a value of shape {too_large[0]} for 2 images")


def _rewritten(archive: zipfile.ZipFile) -> io.BytesIO:
    """The checked entries as a new archive: torch's zip reader and Python's may read two archives out
    of one file (a second central directory), so torch reads the one that was checked."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as fresh:
        for info in archive.infolist():
            fresh.writestr(info.filename, archive.read(info))
    out.seek(0)
    return out


def _storage_bytes(meta: dict) -> int:
    """The bytes a tensor of this recorded shape, strides, offset and dtype can read."""
    sizes = [d["as_int"] for d in meta["sizes"]]
    strides = [d["as_int"] for d in meta["strides"]]
    if not all(isinstance(v, int) and v >= 0 for v in [*sizes, *strides]) or meta["dtype"] not in _ITEMSIZE:
        raise MnistfxError("a tensor's recorded shape is not one of whole sizes of a known dtype")
    if 0 in sizes:
        return 0
    return (
        meta["storage_offset"]["as_int"] + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True)) + 1
    ) * _ITEMSIZE[meta["dtype"]]


def _check_graph(node, key: str = "") -> None:
    """Refuse a graph (``models/model.json``) with any string outside the grammar torch.export writes."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _REFUSED_KEYS:
                raise MnistfxError(f"its graph holds {k!r} (code or an object, not plain tensors)")
            if k == "guards_code" and v != []:
                raise MnistfxError("its graph holds guards, which torch runs as Python code")
            if k == "treespec_namedtuple_fields" and v != {}:
                raise MnistfxError("its graph's inputs or outputs are named tuples, whose names torch writes into code")
            if k in ("in_spec", "out_spec"):
                _check_treespec(v)
                continue
            if k == "metadata" and isinstance(v, dict) and key == "nodes":
                for m in v:
                    if m not in _METADATA_KEYS:
                        raise MnistfxError(f"a node of its graph holds metadata {m!r}")
            _check_graph(v, k)
    elif isinstance(node, list):
        for v in node:
            _check_graph(v, key)
    elif isinstance(node, str):
        if key == "stack_trace":  # free text, in a comment of generated code
            if _CONTROL.search(node):
                raise MnistfxError("its graph holds a stack_trace with control characters")
        elif key == "expr_str":
            _check_expr(node)
        elif key == "target":
            target = _TARGET.fullmatch(node)
            if target is None or (target["op"] is not None and target["op"] not in _OPS):
                raise MnistfxError(f"its graph calls {node[:80]!r}, which is not an ATen operator of tensor arithmetic")
        elif (
            not _NAMES.fullmatch(node)
            or key in _ATTRIBUTE_KEYS
            and node
            and ("__" in node or not _ATTRIBUTE.fullmatch(node))
        ):
            raise MnistfxError(f"its graph holds a {key or 'string'} {node[:80]!r} that is not a plain name")
        elif key in _VARIABLE_KEYS and (not _VARIABLE.fullmatch(node) or keyword.iskeyword(node)):
            raise MnistfxError(f"its graph names a value {node[:80]!r}")


def _check_expr(expr: str) -> None:
    """A symbolic size must be sympy's srepr of sizes, whole numbers and sympy's arithmetic: ``sympify``
    evaluates it as Python."""
    at = 0
    while at < len(expr) <= _EXPR_MAX_CHARS:
        token = _EXPR_TOKEN.match(expr, at)
        if token is None:
            break
        at = token.end()
    if at != len(expr) or not expr:
        raise MnistfxError(f"its graph holds a symbolic size {expr[:80]!r} outside sympy's arithmetic of sizes")


def _check_treespec(spec) -> None:
    """Inputs and outputs must be tensors in tuples, lists and dicts with plain keys: torch writes the
    keys into generated code."""
    if not isinstance(spec, str):
        raise MnistfxError("its graph's inputs or outputs are not described as torch.export describes them")
    stack = [json.loads(spec)[1]]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or node.get("type") not in _TREESPEC_TYPES:
            raise MnistfxError("its graph's inputs or outputs are not tensors in tuples, lists and dicts")
        if node["type"] == "builtins.dict":
            keys = json.loads(node["context"])
            if not all(isinstance(k, str) and _VARIABLE.fullmatch(k) for k in keys):
                raise MnistfxError("its graph's inputs or outputs have keys that are not plain names")
        stack.extend(node.get("children_spec", []))


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
        raise MnistfxError(f"{path} is a folder: pass a file name for `path`")
    if not path.parent.is_dir():
        raise MnistfxError(f"the folder of {path} does not exist: create it, or pass another `path`")
    if os.path.lexists(path):
        if not stat.S_ISREG(os.lstat(path).st_mode):  # a device, FIFO, socket or link is never replaced
            raise MnistfxError(f"{path} exists and is not a regular file: pass another `path`")
        if not overwrite:
            raise MnistfxError(f"{path} exists: pass `overwrite=True` to replace it, or another `path`")
    if not isinstance(weights, Weights):
        weights = load_model_weights(weights)
    return path, weights.to("cpu")


def _write(path: Path, data: bytes, overwrite: bool) -> None:
    try:
        write_new(path, data, overwrite, MnistfxError)
    except OSError as e:
        raise MnistfxError(f"cannot write {path} ({e.strerror}): pass a writable `path`") from None


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
        cause: BaseException | None = e
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
