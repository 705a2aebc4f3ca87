"""Refused: library calls with arguments no function can use, and pickles that must not run code. Each raises
one typed error whose message says what was wrong."""

import pickle
from types import SimpleNamespace

import pytest
import torch

import mnistfx
from mnistfx.data import fetch

pytestmark = pytest.mark.fast  # no real data, no compiling: `make check` runs these


@pytest.fixture(scope="module")
def tuned():
    return mnistfx.get_model("tuned")


class _Canary:
    """Pickles as a call to ``open(path, "w")``: if anything unpickles it, the file appears."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


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


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda c: c.tuned.apply(c.params, torch.zeros(2, 28, 28)),
            ValueError,
            r"x must have shape \(N, 1, 28, 28\), not \(2, 28, 28\)",
        ),
        (
            lambda c: c.tuned.apply(c.params, c.u8.unsqueeze(1)),
            TypeError,
            "x must be a float tensor .* not torch.uint8",
        ),
        (lambda c: c.tuned.apply(c.params, [[0.0]]), TypeError, "x must be a float tensor .* not list"),
        (
            lambda c: c.tuned.apply({k: v for k, v in c.params.items() if k != "fc2.bias"}, c.x),
            ValueError,
            "params lacks fc2.bias",
        ),
        (
            lambda c: c.tuned.apply(mnistfx.get_model("cnn").init(0), c.x),
            ValueError,
            r"params: fc1.weight has shape \(784, 3136\), tuned expects \(512, 784\)",
        ),
        (
            lambda c: c.tuned.apply({**c.params, "fc9.bias": c.params["fc4.bias"]}, c.x),
            ValueError,
            "params has an unexpected tensor fc9.bias",
        ),
        (
            lambda c: c.tuned.apply(list(c.params.values()), c.x),
            TypeError,
            "params must be a dict of tensors",
        ),
        (
            lambda c: c.tuned.apply(c.params, c.x, train=True, noise=c.tuned.dropout_noise(3, key=0)),
            ValueError,
            r"noise\['conv1'\] has shape \(3, 8\), expected \(2, 8\)",
        ),
        (lambda c: c.tuned.apply(c.params, c.x, train=True), ValueError, "needs a key for dropout"),
        (lambda c: c.tuned.dropout_noise(-1, key=0), ValueError, "n must be a whole number"),
        (lambda c: c.tuned.init("seed"), TypeError, "key must be an int seed or a torch.Generator"),
        (
            lambda c: c.tuned.preprocess(c.x.squeeze(1)),
            TypeError,
            "images must be uint8 .* not torch.float32",
        ),
        (
            lambda c: c.tuned.preprocess(torch.zeros(2, 32, 32, dtype=torch.uint8)),
            ValueError,
            r"not \(2, 32, 32\)",
        ),
        (
            lambda c: mnistfx.evaluate(c.tuned, c.params, c.u8, torch.zeros(3, dtype=torch.long)),
            ValueError,
            "got 2 images but 3 labels",
        ),
        (lambda c: mnistfx.predict(c.tuned, c.params, c.x), TypeError, "images must be uint8"),
        (
            lambda c: mnistfx.random_affine(c.u8, key=0),
            ValueError,
            "random_affine takes float images of shape",
        ),
        (
            lambda c: mnistfx.adam(1e-3).update({"w": c.x}, mnistfx.adam(1e-3).init(c.params), c.params),
            ValueError,
            "must have the same names",
        ),
        (lambda c: mnistfx.adam(betas=(0.9, 1.5)), ValueError, "betas must be two numbers in"),
        (lambda c: mnistfx.adam(1e-3).init({}), TypeError, "non-empty dict of tensors"),
        (lambda c: mnistfx.fold_in("0", "init"), TypeError, "fold_in takes an int seed"),
        (
            lambda c: mnistfx.batch_inputs(c.tuned, c.x.squeeze(1), torch.arange(2), aug_key=0, drop_key=1),
            TypeError,
            "images must be uint8",
        ),
        (
            lambda c: mnistfx.save_weights("/nonexistent/w.safetensors", [1, 2]),
            TypeError,
            "params must be a dict",
        ),
        (lambda c: mnistfx.train({"model": "tuned"}), TypeError, "config must be a TrainConfig"),
        (lambda c: mnistfx.get_model("lenet"), ValueError, "unknown model 'lenet'"),
    ],
)
def test_library_functions_check_their_inputs(call, error, message, tuned):
    c = SimpleNamespace(
        tuned=tuned, params=tuned.init(0), x=torch.zeros(2, 1, 28, 28), u8=torch.zeros(2, 28, 28, dtype=torch.uint8)
    )  # what the calls are given
    with pytest.raises(error, match=message):
        call(c)
