"""Refused: weights files: safetensors and the notebook's .pth, damaged, huge, hostile or of another model.

Each case (its id is its name) must end in one line, ``error: ...``, that names the problem, a non-zero
exit, no traceback, and no file created or changed. Fixtures come from conftest.py.
"""

import json

import torch
from refusals import Cases

import mnistfx

case = Cases()


class _Canary:
    """Pickles as a call to ``open(path, "w")``: if anything unpickles it, the file appears."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _weights(tmp_path, params, model="tuned"):
    path = tmp_path / "w.safetensors"
    mnistfx.save_weights(path, params, {"model": model})
    return ["eval", str(path)]


def _weights_meta(tmp_path, params, meta):
    path = tmp_path / "w.safetensors"
    mnistfx.save_weights(path, params, meta)
    return ["eval", str(path)]


def _sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _safetensors(tmp_path, header: dict, data: bytes = b""):

    blob = json.dumps(header).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)
    return ["eval", str(path)]


def _train(tmp_path, *bad):
    """`mnistfx train` with one bad value, kept short in case the value were ever accepted."""
    short = {"--epochs": "1", "--train-size": "64"}
    extra = [a for k, v in short.items() if k not in bad for a in (k, v)]
    return ["train", *bad, "--no-compile", *extra, "--out", str(tmp_path / "run")]


@case("is empty")
def weights_file_that_is_empty(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"")
    return ["eval", str(tmp_path / "w.safetensors")]


@case("is not a safetensors file")
def weights_file_that_is_text(tmp_path):
    (tmp_path / "w.safetensors").write_text("not safetensors at all")
    return ["eval", str(tmp_path / "w.safetensors")]


@case("is not a safetensors file")
def weights_file_with_a_garbage_header(tmp_path):
    (tmp_path / "w.safetensors").write_bytes((16).to_bytes(8, "little") + b"{garbage}" + bytes(7))
    return ["eval", str(tmp_path / "w.safetensors")]


@case("cannot read weights", "No such file")
def weights_file_that_is_missing(tmp_path):
    return ["eval", str(tmp_path / "nowhere.safetensors")]


@case("lacks fc4.bias", "not tuned weights")
def weights_with_a_missing_tensor(tmp_path):
    params = mnistfx.get_model("tuned").init(0)
    del params["fc4.bias"]
    return _weights(tmp_path, params)


@case("fc1.weight has shape (784, 3136), tuned expects (512, 784)")
def weights_with_the_wrong_shapes(tmp_path):
    return _weights(tmp_path, mnistfx.get_model("cnn").init(0))


@case("conv1.weight is torch.float16, expected torch.float32")
def weights_with_the_wrong_dtype(tmp_path):
    return _weights(tmp_path, {k: v.half() for k, v in mnistfx.get_model("tuned").init(0).items()})


@case("is not a plain PyTorch state_dict", "never pickled code")
def pth_that_runs_code_when_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"Convolutional_layers.0.weight": _Canary(str(tmp_path / "canary"))}, path)
    return ["eval", str(path)]


@case("unknown model 'lenet': choose one of tuned, cnn, resnet, dpcnn")
def unknown_model(tmp_path):
    return _train(tmp_path, "lenet")


@case("says it holds 1 ensemble members, which cannot be")
def weights_with_an_ensemble_of_one(tmp_path):
    return _weights_meta(tmp_path, mnistfx.get_model("tuned").init(0), {"model": "tuned", "members": 1})


@case("says it holds 'three' ensemble members")
def weights_with_a_member_count_that_is_not_a_number(tmp_path):
    return _weights_meta(tmp_path, mnistfx.get_model("tuned").init(0), {"model": "tuned", "members": "three"})


@case("conv1.weight has shape (8, 1, 3, 3), tuned expects (3, 8, 1, 3, 3)", "ensemble size")
def weights_of_one_model_that_claim_to_be_an_ensemble(tmp_path):
    return _weights_meta(tmp_path, mnistfx.get_model("tuned").init(0), {"model": "tuned", "members": 3})


@case("is for model '\\x1b[31mred', which is not built in", "--model MODULE:ATTR")
def weights_naming_a_model_with_terminal_escapes(tmp_path):
    return _weights_meta(tmp_path, mnistfx.get_model("tuned").init(0), {"model": "\x1b[31mred"})


@case("is for model 'mymlp', which is not built in", "--model MODULE:ATTR")
def weights_of_a_model_that_is_not_imported(tmp_path):
    return _weights_meta(tmp_path, {"w": torch.zeros(3)}, {"model": "mymlp"})


@case("has an unexpected tensor state/mean")
def weights_with_state_a_model_does_not_have(tmp_path):
    params = {**mnistfx.get_model("tuned").init(0), "state/mean": torch.zeros(3)}
    return _weights_meta(tmp_path, params, {"model": "tuned"})


@case("is not MODULE:ATTR")
def a_model_spec_without_an_attribute(weights):
    return ["eval", str(weights), "--model", "json:"]


@case("json:dumps is of type function, not a mnistfx.Model")
def a_model_spec_that_is_not_a_model(tmp_path):
    return _train(tmp_path, "json:dumps")


@case("is 21,474,836,480 bytes, more than any weights mnistfx reads")
def weights_file_of_20_gb(tmp_path):
    return ["eval", str(_sparse(tmp_path / "w.safetensors", 20 << 30))]


@case("weights /dev/zero is not a regular file")
def weights_from_dev_zero():
    return ["eval", "/dev/zero"]


@case("is not a regular file")
def weights_that_are_a_folder(tmp_path):
    (tmp_path / "w.safetensors").mkdir()
    return ["eval", str(tmp_path / "w.safetensors")]


@case("is 4,294,967,296 bytes, more than any weights mnistfx reads")
def pth_of_4_gb(tmp_path):
    path = tmp_path / "big.pth"
    torch.save({"Convolutional_layers.0.weight": torch.zeros(8, 1, 3, 3)}, path)
    with open(path, "r+b") as f:  # sparse: nothing is written
        f.truncate(4 << 30)
    return ["eval", str(path)]


@case("has dtype 'F4', which mnistfx does not read")
def safetensors_with_a_dtype_torch_lacks(tmp_path):
    return _safetensors(tmp_path, {"conv1.weight": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, b"\0")


@case("has dtype 'F8_E8M0', which mnistfx does not read")
def safetensors_with_an_exotic_float8(tmp_path):
    return _safetensors(tmp_path, {"x": {"dtype": "F8_E8M0", "shape": [1], "data_offsets": [0, 1]}}, b"\0")


@case("has metadata 'model' nested too deep to read")
def safetensors_with_metadata_nested_100000_deep(tmp_path):
    return _safetensors(
        tmp_path,
        {
            "__metadata__": {"model": "[" * 100_000 + "]" * 100_000},
            "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        },
        bytes(4),
    )


@case("is not a safetensors file", "invalid JSON in header")
def safetensors_whose_header_is_nested_100000_deep(tmp_path):
    blob = ("[" * 100_000 + "]" * 100_000).encode()
    (tmp_path / "w.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob)
    return ["eval", str(tmp_path / "w.safetensors")]


@case("has a key 0 that is not a tensor name")
def pth_whose_keys_are_integers(tmp_path):
    torch.save({0: torch.zeros(8, 1, 3, 3)}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("has a key ('Convolutional_layers', 0) that is not a tensor name")
def pth_whose_keys_are_tuples(tmp_path):
    torch.save({("Convolutional_layers", 0): torch.zeros(8, 1, 3, 3)}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("is not a dense float tensor with data")
def pth_holding_a_sparse_tensor(tmp_path):
    torch.save({"Convolutional_layers.0.weight": torch.zeros(8, 9).to_sparse()}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("is not a dense float tensor with data")
def pth_holding_a_meta_tensor(tmp_path):
    torch.save({"Convolutional_layers.0.weight": torch.empty(8, 1, 3, 3, device="meta")}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("would inflate to 1,073,7", "more than any notebook checkpoint (268,435,456)")
def pth_that_inflates_to_1_gb(tmp_path):
    path = tmp_path / "bomb.pth"
    torch.save({"Convolutional_layers.0.weight": torch.zeros(8, 1, 3, 3)}, path)
    blob = bytearray(path.read_bytes())
    at = blob.index(b"PK\x01\x02")  # the first central-directory entry: claim 1 GB uncompressed
    blob[at + 24 : at + 28] = (1 << 30).to_bytes(4, "little")
    path.write_bytes(bytes(blob))
    return ["eval", str(path)]


@case("holds NaN or infinite values", "the file is damaged, or the run that wrote it diverged")
def weights_holding_nan(tmp_path):
    from safetensors.torch import save_file

    params = mnistfx.get_model("tuned").init(0)
    params["fc1.weight"][0, 0] = float("nan")
    save_file(params, tmp_path / "w.safetensors", metadata={"model": '"tuned"'})
    return ["eval", str(tmp_path / "w.safetensors")]


@case("has shape (20000, 20000), more elements than any notebook layer")
def pth_holding_a_zero_stride_view(tmp_path):
    torch.save({"Convolutional_layers.0.weight": torch.zeros(1).expand(20000, 20000)}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("exists: pass --overwrite to replace it, or another --out")
def export_over_a_file_of_the_users(tmp_path, weights):
    (tmp_path / "mine.pth").write_text("the user's own file")
    return ["export-notebook", str(weights), "--out", str(tmp_path / "mine.pth")]


@case("cannot write", "pass a writable --out")
def import_into_a_folder_that_does_not_exist(tmp_path, weights):
    (tmp_path / "file").write_text("x")
    return ["import-notebook", str(weights), "--out", str(tmp_path / "file" / "w.safetensors")]


@case("holds 300 tensors, more than the notebook's models have")
def pth_of_many_views_of_one_tensor(tmp_path):
    base = torch.zeros(50, 50)
    torch.save({f"Linear_layers.0.k{i}": base.t() for i in range(300)}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("has an unexpected tensor Linear_layers.0.k0")
def pth_with_a_name_that_is_not_the_notebooks(tmp_path):
    torch.save({"Linear_layers.0.k0": torch.zeros(2)}, tmp_path / "w.pth")
    return ["eval", str(tmp_path / "w.pth")]


@case("is not a safetensors file", "10001 tensors, more than mnistfx writes")
def safetensors_of_many_tensors(tmp_path):
    return _safetensors(
        tmp_path, {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(10_001)}
    )


@case("give NaN or infinite outputs for 10,000 of 10,000 images", "not usable")
def eval_of_weights_whose_outputs_overflow(tmp_path):
    params = mnistfx.get_model("tuned").init(0)
    params["fc4.weight"] = params["fc4.weight"].sign() * 3e38  # finite, but every logit is inf - inf
    mnistfx.save_weights(tmp_path / "w.safetensors", params, {"model": "tuned"})
    return ["eval", str(tmp_path / "w.safetensors")]


test_refused = case.test()
