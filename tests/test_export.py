"""`mnistfx export`: ONNX files run in onnxruntime, and torch.export programs, give mnistfx's logits."""

import io
import json
import os
import pickle
import stat
import struct
import sys
import warnings
import zipfile
import zlib

import pytest
import torch
from helpers import assert_one_line_error, run_cli

import mnistfx
from mnistfx.trained.export import INPUT, OUTPUT, export_onnx, load_program

TOL = 1e-4


@pytest.fixture(scope="module")
def ort():
    """onnxruntime, with onnx and onnxscript (the export extra); the test is skipped without them."""
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name, reason=f"{name} is missing: pip install 'mnistfx[export]'")
    return pytest.importorskip("onnxruntime", reason="onnxruntime is missing: pip install 'mnistfx[export]'")


@pytest.fixture(scope="module")
def trained_resnet(mnist, tmp_path_factory):
    """`resnet` after 5 real training steps: its batch-norm running statistics are no longer 0 and 1."""
    config = mnistfx.recipe(
        "resnet", epochs=1, train_size=160, val_size=100, batch_size=32, compile=False, precision="fp32"
    )
    run = mnistfx.train(config, data=mnist, test=False)
    means = [v for k, v in run.state.items() if k.endswith("running_mean")]
    variances = [v for k, v in run.state.items() if k.endswith("running_var")]
    assert means and min(float(v.abs().max()) for v in means) > 1e-3
    assert max(float((v - 1).abs().max()) for v in variances) > 0.1
    return mnistfx.save_run(run, tmp_path_factory.mktemp("trained") / "resnet")["weights"]


def onnx_logits(ort, path, images: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT] and [o.name for o in session.get_outputs()] == [OUTPUT]
    return torch.from_numpy(session.run(None, {INPUT: images.numpy()})[0])


def mnistfx_logits(weights_path, images):
    w = mnistfx.load_model_weights(weights_path)
    return mnistfx.logits(w.model, w.params, images, state=w.state)


@pytest.mark.parametrize("which", ["tuned", "resnet"])
def test_onnx_gives_mnistfx_logits(which, ort, request, mnist, tmp_path, capsys):
    weights = request.getfixturevalue("trained_tuned" if which == "tuned" else "trained_resnet")
    capsys.readouterr()  # what training printed
    out = tmp_path / "model.onnx"
    code, stdout, err = run_cli(capsys, "export", str(weights), "--out", str(out))
    assert code == 0, err
    assert stdout.startswith(f"wrote {out} (onnx, {which}, ") and stdout.count("\n") == 1 and err == ""
    assert os.listdir(tmp_path) == ["model.onnx"]  # one self-contained file, no external data, no temp
    images = mnist.test_images[:100]
    want = mnistfx_logits(weights, images)
    for n in (100, 7, 1):  # traced with 2 images: the batch size is free
        assert (onnx_logits(ort, out, images[:n]) - want[:n]).abs().max() <= TOL
    if which == "tuned":  # a trained model, so the comparison means something
        assert (want.argmax(1) == mnist.test_labels[:100]).float().mean() >= 0.97


def test_onnx_ensemble_gives_its_probabilities(ort, mnist, tmp_path):
    tuned = mnistfx.get_model("tuned")
    path = tmp_path / "ens.safetensors"
    mnistfx.save_weights(path, mnistfx.stack([tuned.init(1), tuned.init(2)]), {"model": "tuned", "members": 2})
    out = export_onnx(path, tmp_path / "ens.onnx")
    images = mnist.test_images[:50]
    got = onnx_logits(ort, out, images)
    assert (got.softmax(-1) - mnistfx.load_model_weights(path).probabilities(images)).abs().max() <= 1e-5
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["mnistfx_model"] == "tuned" and meta["mnistfx_members"] == "2"


def test_program_gives_mnistfx_logits(trained_resnet, mnist, tmp_path, capsys):
    out = tmp_path / "model.pt2"
    code, stdout, err = run_cli(capsys, "export", str(trained_resnet), "--out", str(out), "--json")
    assert code == 0, err
    assert (
        mnistfx.to_json(
            {
                "out": str(out),
                "format": "pt2",
                "bytes": out.stat().st_size,
                "model": "resnet",
                "members": None,
                "weights": str(trained_resnet),
            }
        )
        + "\n"
        == stdout
    )
    images = mnist.test_images[:100]
    want = mnistfx_logits(trained_resnet, images)
    program = load_program(out).module()
    for n in (100, 3):
        assert (program(images[:n]) - want[:n]).abs().max() <= TOL


def test_load_program_refuses_what_would_be_unpickled(tuned_weights, tmp_path):
    """torch.export.save keeps example inputs with torch.save (a pickle); load_program refuses that,
    and a file that is not an archive."""
    w = mnistfx.load_model_weights(tuned_weights)
    from mnistfx.trained.export import ImagesToLogits

    program = torch.export.export(ImagesToLogits(w), (torch.zeros(2, 28, 28, dtype=torch.uint8),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    pickled = tmp_path / "pickled.pt2"
    pickled.write_bytes(buffer.getvalue())
    with zipfile.ZipFile(pickled) as z:
        assert any("sample_inputs" in i.filename and i.file_size for i in z.infolist())
    with pytest.raises(mnistfx.MnistfxError, match="sample_inputs.*not a plain tensor"):
        load_program(pickled)
    (tmp_path / "bad.pt2").write_bytes(b"not a zip")
    with pytest.raises(mnistfx.MnistfxError, match="not a torch.export program"):
        load_program(tmp_path / "bad.pt2")


def test_export_bad_inputs(tuned_weights, tmp_path, capsys, monkeypatch):
    unknown = tmp_path / "unknown.safetensors"
    mnistfx.save_weights(unknown, mnistfx.get_model("tuned").init(0), {"model": "nosuch"})
    code, _, err = run_cli(capsys, "export", str(unknown), "--out", str(tmp_path / "a.pt2"))
    assert_one_line_error(code, err, "'nosuch'", "not built in")
    code, _, err = run_cli(capsys, "export", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "a.pt2"))
    assert_one_line_error(code, err, "missing.safetensors", "No such file")
    code, _, err = run_cli(capsys, "export", str(tuned_weights), "--out", str(tmp_path / "nofolder" / "a.pt2"))
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_cli(capsys, "export", str(tuned_weights), "--out", str(tmp_path / "a.bin"))
    assert_one_line_error(code, err, "--format onnx or --format pt2")
    existing = tmp_path / "a.pt2"
    existing.write_bytes(b"keep")
    code, _, err = run_cli(capsys, "export", str(tuned_weights), "--out", str(existing))
    assert_one_line_error(code, err, "exists", "--overwrite")
    assert existing.read_bytes() == b"keep"
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the export extra were not installed
    code, _, err = run_cli(capsys, "export", str(tuned_weights), "--out", str(tmp_path / "a.onnx"))
    assert_one_line_error(code, err, "pip install 'mnistfx[export]'")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["a.pt2", "unknown.safetensors"]  # nothing else written
    code, out, err = run_cli(capsys, "export", str(tuned_weights), "--out", str(existing), "--overwrite")
    assert code == 0 and out.startswith(f"wrote {existing} (pt2, tuned, "), err
    assert load_program(existing).module()(torch.zeros(1, 28, 28, dtype=torch.uint8)).shape == (1, 10)
    assert sorted(os.listdir(tmp_path)) == ["a.pt2", "unknown.safetensors"]


def test_overwrite_never_replaces_what_is_not_a_regular_file(tuned_weights, tmp_path, capsys):
    fifo = tmp_path / "pipe.pt2"
    os.mkfifo(fifo)
    code, _, err = run_cli(capsys, "export", str(tuned_weights), "--out", str(fifo), "--overwrite")
    assert_one_line_error(code, err, "not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["pipe.pt2"]


def test_load_program_refuses_an_archive_that_inflates_too_far(tmp_path):
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/models/model.json", b" " * (65 << 20))  # 64 MiB of spaces: 64 kB deflated
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(mnistfx.MnistfxError, match="would inflate"):
        load_program(bomb)


@pytest.fixture(scope="module")
def honest_program(tmp_path_factory):
    """The bytes of a `tuned` program as mnistfx export writes it."""
    weights = tmp_path_factory.mktemp("honest") / "tuned.safetensors"
    mnistfx.save_weights(weights, mnistfx.get_model("tuned").init(0), {"model": "tuned"})
    return mnistfx.export_program(weights, weights.with_suffix(".pt2")).read_bytes()


def edited_program(data: bytes, path, graph=None, entry=None):
    """``data`` (a .pt2) written to ``path`` with its graph changed by ``graph`` (on the parsed JSON), or
    one of its entries' bytes by ``entry(name, bytes)``."""
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            part = source.read(info)
            if graph and info.filename.endswith("models/model.json"):
                model = json.loads(part)
                graph(model)
                part = json.dumps(model).encode()
            out.writestr(info.filename, entry(info.filename, part) if entry else part)
    return path


def _code(marker) -> str:
    return f"__import__('builtins').open({str(marker)!r}, 'w')"


def _size(model):
    return model["graph_module"]["graph"]["tensor_values"]["images"]["sizes"][0]["as_expr"]


def _node(model):
    return model["graph_module"]["graph"]["nodes"][1]


EDITS = {  # what a crafted graph may hold that torch would evaluate, run or resolve, and what load_program says
    "a symbolic size that is code": (
        lambda m, code: _size(m).update(expr_str=f"{code} and Symbol('s34', positive=True, integer=True)"),
        "symbolic size",
    ),
    "a size of a name that is no symbol": (lambda m, code: _size(m).update(expr_str="Symbol('x.y')"), "symbolic size"),
    "guards": (lambda m, code: m.update(guards_code=[f"{code} is None"]), "guards"),
    "a call of another function": (lambda m, code: _node(m).update(target="torch.os.system"), "not an ATen operator"),
    "a dunder path to an operator": (
        lambda m, code: _node(m).update(target="torch.ops.aten.__class__.__init__"),
        "not an ATen operator",
    ),
    "a stack trace that breaks out of its comment": (
        lambda m, code: _node(m)["metadata"].update(stack_trace=f'File "x.py", line 1, in f\n    x = 1\r{code}\n'),
        "control characters",
    ),
    "metadata that generated code shows": (
        lambda m, code: _node(m)["metadata"].update(custom={"a": code}),
        "metadata 'custom'",
    ),
    "named tuple fields": (
        lambda m, code: m["graph_module"].update(treespec_namedtuple_fields={"x": {"field_names": [code]}}),
        "named tuples",
    ),
    "an attribute path through a dunder": (
        lambda m, code: m["graph_module"]["signature"]["input_specs"][0]["parameter"].update(
            parameter_name="members.__class__"
        ),
        "not a plain name",
    ),
    "an argument name that is code": (
        lambda m, code: m["graph_module"]["module_call_graph"][0]["signature"].update(
            forward_arg_names=[f"images={code}, _='''):#"]
        ),
        "not a plain name",
    ),
    "an operator that maps a file": (
        lambda m, code: _node(m).update(target="torch.ops.aten.from_file.default"),
        "not an ATen operator of tensor arithmetic",
    ),
    "a size that takes for ever to compute": (
        lambda m, code: _size(m).update(
            expr_str="Mul(Symbol('s34', positive=True, integer=True), Pow(Integer(10), Integer(100000000000)))"
        ),
        "symbolic size",
    ),
    "a power written as **": (
        lambda m, code: _size(m).update(expr_str="Mul(Symbol('s34', positive=True, integer=True), 10**999999999999)"),
        "symbolic size",
    ),
    "a number too long to be a size": (
        lambda m, code: _size(m).update(expr_str="Integer(" + "9" * 40 + ")"),
        "symbolic size",
    ),
    "a quote in a module's name": (
        lambda m, code: _node(m)["metadata"].update(nn_module_stack=f"L,,'{code}'"),
        "not a plain name",
    ),
    "a value name that is not a name": (
        lambda m, code: m["graph_module"]["graph"]["outputs"][0]["as_tensor"].update(name="x; import os"),
        "not a plain name",
    ),
    "a keyword for a value's name": (
        lambda m, code: m["graph_module"]["graph"]["outputs"][0]["as_tensor"].update(name="import"),
        "names a value 'import'",
    ),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_load_program_refuses_a_graph_that_would_run_code(edit, honest_program, tmp_path):
    change, message = EDITS[edit]
    marker = tmp_path / "ran"
    path = edited_program(honest_program, tmp_path / "crafted.pt2", lambda m: change(m, _code(marker)))
    with pytest.raises(mnistfx.MnistfxError, match=message):
        load_program(path)
    assert not marker.exists()


def test_torch_itself_runs_the_crafted_size(honest_program, tmp_path):
    """The attack load_program refuses is real: torch.export.load evaluates the size's string."""
    marker = tmp_path / "ran"
    change, _ = EDITS["a symbolic size that is code"]
    path = edited_program(honest_program, tmp_path / "crafted.pt2", lambda m: change(m, _code(marker)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.load(path)
    assert marker.exists()


def test_load_program_refuses_a_tensor_whose_bytes_are_not_its_shape_s(honest_program, tmp_path):
    for change in (lambda part: part * 2, lambda part: b""):  # torch fills an empty entry with zeros of its shape
        path = edited_program(
            honest_program,
            tmp_path / "odd.pt2",
            entry=lambda name, part, change=change: change(part) if name.endswith("weights/weight_0") else part,
        )
        with pytest.raises(
            mnistfx.MnistfxError, match="weight_0 would inflate to .* bytes, not the .* its tensor holds"
        ):
            load_program(path)
    honest = edited_program(honest_program, tmp_path / "honest.pt2")  # rewritten unchanged: still loads
    assert load_program(honest).module()(torch.zeros(2, 28, 28, dtype=torch.uint8)).shape == (2, 10)


class _Opens:
    """Unpickled, it opens (creates) a file: the proof that a pickle in an archive ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _two_archives(honest: dict, crafted: dict) -> bytes:
    """One file that Python's zipfile reads as ``honest`` (name -> bytes) and torch's own reader (miniz)
    as ``crafted``: the end record's central-directory size fits the last directory, which zipfile reads
    (shifting offsets as for data before an archive), and its offset names the first, which miniz reads."""
    out = bytearray(b"\0" * sum(46 + len(n) for n in crafted))  # zipfile's shifted offsets stay >= 0

    def local(name, data):
        at = len(out)
        out.extend(
            struct.pack(
                "<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, zlib.crc32(data), len(data), len(data), len(name), 0
            )
            + name.encode()
            + data
        )
        return at

    def directory(entries, shift=0, pad=0):
        return b"".join(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                0,
                0,
                0,
                zlib.crc32(data),
                len(data),
                len(data),
                len(name),
                0,
                pad,
                0,
                0,
                0,
                at - shift,
            )
            + name.encode()
            + b" " * pad
            for name, data, at in entries
        )

    mine, theirs = [], []
    for name, data in honest.items():
        at = local(name, data)
        mine.append((name, data, at))
        theirs.append((name, crafted[name], at if crafted[name] == data else local(name, crafted[name])))
    first = directory(theirs)
    first_at = len(out)
    out.extend(first)
    last = directory(mine, shift=len(first), pad=16)
    out.extend(last)
    out.extend(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(mine), len(mine), len(last), first_at, 0))
    return bytes(out)


def test_torch_reads_the_archive_that_was_checked(honest_program, tmp_path):
    """A file that zipfile and torch's reader see as two archives: the one torch would see asks for a
    pickled tensor. load_program gives torch the archive it checked, and nothing is unpickled."""
    marker = tmp_path / "ran"
    with zipfile.ZipFile(io.BytesIO(honest_program)) as z:
        honest = {i.filename: z.read(i) for i in z.infolist()}
    crafted = dict(honest)
    root = next(iter(honest)).partition("/")[0]
    config = json.loads(honest[f"{root}/data/weights/model_weights_config.json"])
    entry = next(iter(config["config"].values()))
    entry["use_pickle"] = True
    crafted[f"{root}/data/weights/model_weights_config.json"] = json.dumps(config).encode()
    crafted[f"{root}/data/weights/{entry['path_name']}"] = pickle.dumps(_Opens(marker), protocol=2)
    path = tmp_path / "two.pt2"
    path.write_bytes(_two_archives(honest, crafted))
    program = load_program(path)
    assert not marker.exists()
    assert program.module()(torch.zeros(2, 28, 28, dtype=torch.uint8)).shape == (2, 10)
    with zipfile.ZipFile(path) as z:  # what zipfile sees is the honest archive
        assert {i.filename: z.read(i) for i in z.infolist()} == honest


def test_load_program_refuses_a_graph_that_computes_a_value_too_large(honest_program, tmp_path):
    """An allowed operator with a giant size argument (a pad of 10**9) would take all memory when the
    program runs: a dry run on fake tensors (shapes only) finds it while loading."""

    def pad(model):
        node = next(n for n in model["graph_module"]["graph"]["nodes"] if n["name"] == "reshape")
        node["target"] = "torch.ops.aten.constant_pad_nd.default"
        node["inputs"] = [
            {"name": "self", "arg": {"as_tensor": {"name": "images"}}, "kind": 1},
            {"name": "pad", "arg": {"as_ints": [0, 10**9]}, "kind": 1},
            {"name": "value", "arg": {"as_float": 0.0}, "kind": 1},
        ]

    path = edited_program(honest_program, tmp_path / "pad.pt2", pad)
    with pytest.raises(mnistfx.MnistfxError, match=r"computes a value of shape \(2, 28, 1000000028\) for 2 images"):
        load_program(path)
