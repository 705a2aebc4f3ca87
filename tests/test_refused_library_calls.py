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


class _Modules:
    """nn.Modules from_module must refuse, made fresh for each case (their parameters from a forked generator)."""

    @staticmethod
    def _made(fn):
        with torch.random.fork_rng():
            return fn()

    @classmethod
    def alpha(cls):
        return cls._made(
            lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.AlphaDropout(0.2), torch.nn.Linear(784, 10))
        )

    @classmethod
    def functional_dropout(cls):
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(784, 10)

            def forward(self, x):
                return self.fc(torch.nn.functional.dropout(x.flatten(1), 0.5, self.training))

        return cls._made(Net)

    @classmethod
    def twice(cls):
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc2, self.drop = torch.nn.Linear(784, 784), torch.nn.Linear(784, 10), torch.nn.Dropout()

            def forward(self, x):
                return self.fc2(self.drop(self.fc1(self.drop(x.flatten(1)))))

        return cls._made(Net)

    @classmethod
    def own_parameter(cls):
        class Scaled(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(784, 10))

            def forward(self, x):
                return x.flatten(1) @ self.w

        return cls._made(Scaled)


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
            lambda c: c.tuned.preprocess(c.x.squeeze(1) + 2),
            ValueError,
            r"float images must hold values in \[0, 1\], not 2..2: scale them to \[0, 1\]",
        ),
        (
            lambda c: mnistfx.logits(c.tuned, c.params, torch.full((2, 28, 28), 255.0)),
            ValueError,
            r"float images must hold values in \[0, 1\], not 255..255: .*divided by 255",
        ),
        (
            lambda c: mnistfx.probabilities(
                c.tuned, c.params, c.x.clone().index_fill_(0, torch.tensor([1]), float("nan"))
            ),
            ValueError,
            r"float images must hold values in \[0, 1\], not NaN",
        ),
        (
            lambda c: mnistfx.evaluate(c.tuned, c.params, c.x - 1e-3, torch.zeros(2, dtype=torch.long)),
            ValueError,
            r"not -0.001..-0.001",
        ),
        (
            lambda c: mnistfx.predict(c.tuned, c.params, c.u8.long()),
            TypeError,
            r"images must be uint8 \(0-255\) or float in \[0, 1\], not torch.int64: convert .*to\(torch.uint8\)",
        ),
        (
            lambda c: mnistfx.predict(c.tuned, c.params, c.u8.bool()),
            TypeError,
            "not torch.bool",
        ),
        (lambda c: mnistfx.logits(c.tuned, c.params, c.u8, batch_size=0), ValueError, "batch_size must be a whole"),
        (lambda c: mnistfx.logits(c.tuned, c.params, c.u8, members=0), ValueError, "members must be a whole number"),
        (lambda c: mnistfx.logits("tuned", c.params, c.u8), TypeError, "model must be a mnistfx.Model, not str"),
        (lambda c: mnistfx.logits(c.tuned, c.params, c.u8, forward=3), TypeError, "forward must be a function"),
        (
            lambda c: mnistfx.evaluate(c.tuned, c.params, c.u8, torch.zeros(2)),
            ValueError,
            r"labels must be a 1-D integer tensor of digits 0-9, not torch.float32 \(2,\)",
        ),
        (
            lambda c: mnistfx.evaluate(c.tuned, c.params, c.u8, torch.tensor([3, 10])),
            ValueError,
            "labels must hold digits 0-9, not 3..10",
        ),
        (
            lambda c: mnistfx.evaluate_members(c.tuned, c.params, c.u8, torch.zeros(2, dtype=torch.long), members=2),
            ValueError,
            r"conv1.weight has shape \(8, 1, 3, 3\), tuned expects \(2, 8, 1, 3, 3\)",
        ),
        (lambda c: mnistfx.top_mistakes(torch.zeros(2, 9), torch.zeros(2), 1), ValueError, r"shape \(N, 10\)"),
        (lambda c: mnistfx.top_mistakes(torch.zeros(2, 10, dtype=torch.long), c.lab, 1), TypeError, "float tensor"),
        (lambda c: mnistfx.top_mistakes(torch.eye(10)[:2], c.lab, -1), ValueError, "k must be a whole number"),
        (lambda c: mnistfx.top_mistakes(torch.eye(10)[:3], c.lab, 1), ValueError, "got 3 images but 2 labels"),
        (
            lambda c: mnistfx.top_mistakes(torch.full((2, 10), float("nan")), c.lab, 1),
            ValueError,
            "probabilities hold NaN",
        ),
        (lambda c: mnistfx.save_run(c.params, "/nonexistent/run"), TypeError, "save_run takes a mnistfx.Run"),
        (lambda c: mnistfx.save_run(c.run, "/nonexistent/run", overwrite="yes"), TypeError, "overwrite must be"),
        (lambda c: mnistfx.load_history(3), TypeError, "a run folder must be a path"),
        (lambda c: mnistfx.load_history("/nonexistent/run"), mnistfx.MnistfxError, "does not exist: pass the folder"),
        (
            lambda c: mnistfx.plot_run("/nonexistent/run/weights.safetensors"),
            mnistfx.MnistfxError,
            r"^/nonexistent/run/weights.safetensors does not exist",
        ),
        (lambda c: mnistfx.plot_mistakes(c.u8, c.lab, torch.eye(10)[:2], "m.png", most=0), ValueError, "most must be"),
        (
            lambda c: mnistfx.plot_mistakes(c.u8, c.lab, torch.eye(10)[:2], "m.png", data_name=""),
            ValueError,
            "data_name must be a short line",
        ),
        (lambda c: mnistfx.plot_mistakes(c.u8, c.lab, torch.eye(10)[:3], "m.png"), ValueError, "for the 2 images"),
        (lambda c: mnistfx.plot_confusion({}, "c.png"), TypeError, "metrics must be a mnistfx.Metrics"),
        (lambda c: mnistfx.load_model_weights(3), TypeError, "path must be a file's path"),
        (lambda c: c.weights.to_module(member=0), ValueError, "one model's weights, not an ensemble's"),
        (lambda c: c.ensemble.to_module(), ValueError, "an ensemble's weights: pass member, .* 0 to 1, not None"),
        (lambda c: c.ensemble.to_module(member=2), ValueError, "from 0 to 1, not 2"),
        (lambda c: mnistfx.from_module(c.tuned), TypeError, "from_module takes a torch.nn.Module, not Model"),
        (
            lambda c: mnistfx.from_module(_Modules.alpha()),
            mnistfx.ModelError,
            r"layer 1 \(AlphaDropout\) draws random numbers in training that from_module cannot pass in",
        ),
        (
            lambda c: mnistfx.from_module(_Modules.functional_dropout()),
            mnistfx.ModelError,
            "draws from torch's global random generator in training",
        ),
        (
            lambda c: mnistfx.from_module(_Modules.twice()),
            mnistfx.ModelError,
            "dropout layer drop is used 2 times in one forward",
        ),
        (
            lambda c: mnistfx.from_module(_Modules.own_parameter()),
            mnistfx.ModelError,
            r"\(the module itself\) \(Scaled\) has parameters but no reset_parameters\(\)",
        ),
        (
            lambda c: mnistfx.from_module(
                _Modules._made(lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 5)))
            ),
            mnistfx.ModelError,
            r"forward must return float logits \(2, 10\) for 2 images, not torch.float32 \(2, 5\)",
        ),
        (
            lambda c: mnistfx.from_module(_Modules._made(lambda: torch.nn.Sequential(torch.nn.Linear(784, 10)))),
            mnistfx.ModelError,
            "forward failed in eval mode on 2 MNIST images",
        ),
        (lambda c: mnistfx.from_module(torch.nn.ReLU()), mnistfx.ModelError, "has no parameters"),
        (lambda c: mnistfx.from_module(torch.nn.ReLU(), name="2net"), mnistfx.ConfigError, "a model name must be"),
        (lambda c: mnistfx.from_module(torch.nn.ReLU(), normalize=(0, 0)), ValueError, "normalize must be"),
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
        (
            lambda c: mnistfx.random_affine(c.u8, key=0),
            ValueError,
            "random_affine takes float images of shape",
        ),
        (
            lambda c: mnistfx.corrupt(c.u8, "snow", seed=0),
            mnistfx.ConfigError,
            r"^`name` must be one of shot_noise, impulse_noise, .*, canny_edges, not 'snow'$",
        ),
        (
            lambda c: mnistfx.corrupt(c.x.squeeze(1), "fog", seed=0),
            TypeError,
            r"^images must be a uint8 tensor \(0-255\), not torch.float32: convert float images in \[0, 1\] with",
        ),
        (lambda c: mnistfx.corrupt(c.u8.numpy(), "fog", seed=0), TypeError, "uint8 tensor .*, not ndarray"),
        (
            lambda c: mnistfx.corrupt(c.u8[:, None], "fog", seed=0),
            ValueError,
            r"^images must have shape \(N, 28, 28\), not \(2, 1, 28, 28\)$",
        ),
        (
            lambda c: mnistfx.corrupt(c.u8[:1].expand(70_001, 28, 28), "stripe", seed=0),
            ValueError,
            "at most 70,000 images a call, not 70,001: pass them in slices, each with its `start`",
        ),
        (lambda c: mnistfx.corrupt(c.u8, "fog", seed=-1), mnistfx.ConfigError, "`seed` must be a whole number from 0"),
        (lambda c: mnistfx.corrupt(c.u8, "fog", seed=1.5), mnistfx.ConfigError, "`seed` must be a whole number"),
        (lambda c: mnistfx.corrupt(c.u8, "fog", seed=0, start=-2), mnistfx.ConfigError, "`start` must be a whole"),
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
    params = tuned.init(0)
    c = SimpleNamespace(
        tuned=tuned,
        params=params,
        x=torch.zeros(2, 1, 28, 28),
        u8=torch.zeros(2, 28, 28, dtype=torch.uint8),
        lab=torch.tensor([1, 2]),
        run=mnistfx.Run(mnistfx.recipe("tuned"), params),
        weights=mnistfx.Weights(tuned, params, {}, {}),
        ensemble=mnistfx.Weights(tuned, mnistfx.stack([params, params]), {}, {}, members=2),
    )  # what the calls are given
    with pytest.raises(error, match=message):
        call(c)
