"""Models of one's own (tests/own_models.py), as a user would bring them: train, evaluate, save, load,
resume, benchmark and name them on the command line; a model with state; the loss; to_module."""

import json
import shutil
import subprocess
from pathlib import Path

import own_models
import pytest
import torch
from helpers import MNISTFX, assert_one_line_error, run_cli, same_bits

import mnistfx
from mnistfx.models import registry

HERE = Path(__file__).parent


@pytest.fixture(scope="module", autouse=True)
def _registered():
    """The models of one's own that this module's tests register, unregistered after them: the registry is
    the process's, and the next test file in this worker expects the built-in models alone."""
    before = dict(registry._REGISTRY)
    for model in (own_models.mlp, own_models.bn_mlp):
        mnistfx.register_model(model, replace=True)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)


def _small(model, **overrides):
    return mnistfx.recipe(
        model, **{"epochs": 2, "train_size": 2000, "val_size": 500, "compile": False, "seed": 5, **overrides}
    )


def test_own_model_trains_evaluates_saves_and_loads(mnist, tmp_path):
    run = mnistfx.train(_small("own_mlp"), data=mnist)
    assert run.test.accuracy > 0.85 and run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    paths = mnistfx.save_run(run, tmp_path / "run")
    weights = mnistfx.load_model_weights(paths["weights"])
    assert weights.model is own_models.mlp and same_bits(weights.params, run.params) and weights.state == {}
    assert weights.evaluate(mnist.test_images, mnist.test_labels).correct == run.test.correct


def test_a_model_with_state_carries_it_stores_it_and_resumes_bit_for_bit(mnist, tmp_path):
    def keep(kind, **info):
        if kind == "checkpoint" and (info["epoch"], info["step"]) == (1, 40):
            shutil.copytree(tmp_path / "run", tmp_path / "at-40")

    full = mnistfx.train(
        _small("own_bn_mlp"), data=mnist, checkpoint_dir=tmp_path / "run", checkpoint_every=20, on_event=keep
    )
    assert full.test.accuracy > 0.8
    assert set(full.state) == {"mean", "var"} and not torch.equal(full.state["mean"], torch.zeros(256))
    again = mnistfx.resume(tmp_path / "at-40", data=mnist)
    assert same_bits(again.params, full.params) and same_bits(again.state, full.state)
    # evaluation uses the running statistics: other statistics give other predictions
    weights = mnistfx.load_model_weights(mnistfx.save_run(full, tmp_path / "run")["weights"])
    assert same_bits(weights.state, full.state)
    images = mnist.test_images[:500]
    stored = mnistfx.logits(weights.model, weights.params, images, state=weights.state)
    fresh = mnistfx.logits(weights.model, weights.params, images, state=own_models.bn_mlp.init_state(None))
    assert not torch.allclose(stored, fresh)
    with pytest.raises(ValueError, match="has state"):
        own_models.bn_mlp.apply(weights.params, own_models.bn_mlp.preprocess(images))


def test_a_compiled_ensemble_of_a_model_with_state_trains(mnist):
    run = mnistfx.train(_small("own_bn_mlp", ensemble=2, compile=True, epochs=1), data=mnist)
    assert run.state["mean"].shape == (2, 256) and len(run.member_test) == 2
    assert run.test.accuracy > 0.8


def test_the_loss_function_and_its_extra_outputs(mnist):
    model, opt = own_models.mlp, mnistfx.sgd(0.1)
    params = model.init(0)
    x, y = model.preprocess(mnist.train_images[:64]), mnist.train_labels[:64]
    noise = model.dropout_noise(64, key=1)

    def loss(logits, y):
        return torch.nn.functional.cross_entropy(logits, y), {"correct": (logits.argmax(1) == y).sum()}

    new, state, opt_state, value, aux = mnistfx.make_train_step(model, opt, loss=loss)(
        params, {}, opt.init(params), x, y, noise
    )
    logits = model.apply(params, x, train=True, noise=noise)
    assert value.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    assert aux["correct"].item() == (logits.argmax(1) == y).sum().item() and state == {}
    with pytest.raises(ValueError, match="label_smoothing belongs to the default loss"):
        mnistfx.make_train_step(model, opt, loss=loss, label_smoothing=0.1)


def test_train_can_skip_the_test_set(mnist, tmp_path):
    run = mnistfx.train(_small("own_mlp", epochs=1), data=mnist, test=False)
    assert run.test is None and run.val is not None
    meta = mnistfx.load_model_weights(mnistfx.save_run(run, tmp_path)["weights"]).metadata
    assert meta["test_accuracy"] is None and meta["val_accuracy"] == run.val.accuracy


@pytest.mark.parametrize("name", ["tuned", "own_mlp", "own_bn_mlp"])
def test_to_module_is_a_working_nn_module(mnist, name):
    model = mnistfx.get_model(name)
    params, state = model.init(3), model.init_state(model.init(3))
    module = mnistfx.to_module(model, params, state)
    assert isinstance(module, torch.nn.Module) and not module.training
    assert set(module.state_dict()) == set(params) | set(state)
    assert not any(p.is_meta for p in module.parameters())
    x = model.preprocess(mnist.test_images[:32])
    with torch.no_grad():
        torch.testing.assert_close(module(x), mnistfx.logits(model, params, mnist.test_images[:32], state=state))
    with torch.random.fork_rng():  # a plain-PyTorch training step: dropout from the global generator
        module.train()
        loss = torch.nn.functional.cross_entropy(module(x), mnist.test_labels[:32])
        loss.backward()
    assert all(p.grad is not None for p in module.parameters())
    if state:  # training mode moved the running statistics, in place, as nn.BatchNorm's are
        assert not torch.equal(module.state_dict()["mean"], state["mean"])


def test_own_models_on_the_command_line(tmp_path):
    def mnistfx_cli(*args):
        return subprocess.run([MNISTFX, *map(str, args)], capture_output=True, text=True, cwd=HERE)

    out = tmp_path / "run"
    done = mnistfx_cli(
        "train",
        "own_models:mlp",
        "--epochs",
        "1",
        "--train-size",
        "2000",
        "--val-size",
        "500",
        "--no-compile",
        "--out",
        out,
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == "own_mlp"
    weights = out / "weights.safetensors"
    done = mnistfx_cli("eval", weights)  # nothing is imported because a file names a model
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "--model MODULE:ATTR" in done.stderr
    done = mnistfx_cli("eval", weights, "--model", "own_models:mlp", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["accuracy"] > 0.7
    done = mnistfx_cli(
        "bench",
        "--model",
        "own_models:mlp",
        "--kind",
        "infer",
        "--batch-size",
        "64",
        "--seconds",
        "0.1",
        "--repeats",
        "1",
        "--json",
    )
    assert done.returncode == 0 and json.loads(done.stdout)["results"][0]["compiled"] > 0
    done = mnistfx_cli("eval", weights, "--model", "own_models:bn_mlp")
    assert done.returncode == 1 and "holds 'own_mlp' weights, not own_bn_mlp" in done.stderr


@pytest.mark.parametrize(
    "spec, message",
    [
        ("own_models", "unknown model 'own_models'"),
        ("own_models:", "is not MODULE:ATTR"),
        ("no_such_module_here:mlp", "cannot import 'no_such_module_here'"),
        ("own_models:nothing", "own_models:nothing is nothing, not a mnistfx.Model"),
        ("own_models:init", "own_models:init is of type function, not a mnistfx.Model"),
    ],
)
def test_bad_model_specs_are_one_line(capsys, monkeypatch, spec, message):
    monkeypatch.chdir(HERE)
    assert_one_line_error(*run_cli(capsys, "train", spec, "--epochs", "1")[::2], message)


def test_a_model_needs_a_name_and_functions():
    with pytest.raises(mnistfx.ConfigError, match="model name"):
        mnistfx.Model("no spaces", own_models.init, own_models.apply)
    with pytest.raises(TypeError, match="init must be a function"):
        mnistfx.Model("x", 3, own_models.apply)
    with pytest.raises(mnistfx.ConfigError, match="already registered"):
        mnistfx.register_model(mnistfx.Model("tuned", own_models.init, own_models.apply))
    with pytest.raises(TypeError, match="must return a non-empty dict"):
        mnistfx.Model("empty", lambda g: {}, own_models.apply).init(0)


def _model(name, init=own_models.init, apply=own_models.apply, **kwargs):
    return mnistfx.register_model(mnistfx.Model(name, init, apply, **kwargs), replace=True)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: _model("bad_shape", apply=lambda p, x: torch.zeros(x.shape[0], 5)),
            r"must return float logits of shape \(2, 10\) for 2 images, not torch.float32 \(2, 5\)",
        ),
        (
            lambda: _model("bad_dtype", apply=lambda p, x: torch.zeros(x.shape[0], 10, dtype=torch.long)),
            "must return float logits",
        ),
        (
            lambda: _model("raises", apply=lambda p, x: {}["oops"]),
            r"raises's apply on a batch of 2 images failed \(KeyError",
        ),
        (lambda: _model("f64", init=lambda g: {"w": torch.zeros(3, dtype=torch.float64)}), "float32 tensors"),
        (lambda: _model("slash", init=lambda g: {"state/w": torch.zeros(3)}), "may not be empty or start with state/"),
        (
            lambda: _model(
                "new_key",
                apply=lambda p, x, state: (torch.zeros(x.shape[0], 10), {**state, "extra": x}),
                init_state=lambda p: {"m": torch.zeros(2)},
            ),
            "has an unexpected tensor state/extra",
        ),
        (
            lambda: _model("bad_noise", noise=lambda n, g, device: torch.rand(n, 3, generator=g)),
            r"noise\(n, g, device\) must return",
        ),
    ],
)
def test_a_model_that_breaks_the_contract_is_one_clear_error(mnist, make, message):
    with pytest.raises(mnistfx.ModelError, match=message):
        mnistfx.train(_small(make().name), data=mnist)


def test_a_loss_that_is_not_a_scalar_is_refused_before_compiling(mnist):
    with pytest.raises(mnistfx.ModelError, match="the loss must return a 0-d float tensor"):
        mnistfx.train(_small("own_mlp"), data=mnist, loss=lambda logits, y: logits.sum(1))


def test_a_broken_model_on_the_command_line_is_one_line(capsys, monkeypatch):
    monkeypatch.chdir(HERE)
    code, _, err = run_cli(
        capsys,
        "train",
        "own_models:broken",
        "--epochs",
        "1",
        "--train-size",
        "100",
        "--no-compile",
        "--no-test",
        "--out",
        str(HERE / "never-written"),
    )
    assert_one_line_error(code, err, "own_broken's apply must return float logits of shape (2, 10)")
    assert not (HERE / "never-written").exists()


def test_a_model_that_breaks_later_or_only_in_eval_is_one_clear_error(mnist):
    calls = []

    def apply_third_call_fails(params, x, *, train=False, noise=None):
        calls.append(train)
        if train and calls.count(True) == 4:  # the contract check's call, then the run's steps 1, 2, 3
            raise RuntimeError("broken on the third step")
        return own_models.apply(params, x, train=train, noise=noise)

    _model("late", apply=apply_third_call_fails, noise=own_models.noise)
    with pytest.raises(mnistfx.ModelError, match=r"late's train step \(epoch 1, step 3\) failed \(RuntimeError"):
        mnistfx.train(_small("late"), data=mnist)
    odd = _model("eval_odd", apply=lambda p, x, *, train=False: torch.zeros(x.shape[0], 5 if not train else 10))
    with pytest.raises(mnistfx.ModelError, match=r"eval_odd's apply must return float logits of shape \(100, 10\)"):
        mnistfx.evaluate(odd, odd.init(0), mnist.test_images[:100], mnist.test_labels[:100])


def test_adam_takes_a_weight_decay_of_zero():
    assert mnistfx.recipe("tuned", weight_decay=0.0).weight_decay == 0.0


def test_a_model_that_fails_only_under_grad_is_one_error_in_bench_too(mnist):
    def apply(params, x, *, train=False, noise=None):
        if train and torch.is_grad_enabled():
            params["b2"].numpy()  # a tensor that requires grad has no numpy(): fails only in the real step
        return own_models.apply(params, x, train=train, noise=noise)

    _model("grad_only", apply=apply, noise=own_models.noise)
    with pytest.raises(mnistfx.ModelError, match=r"grad_only's train step at batch 32 failed \(RuntimeError"):
        mnistfx.benchmark("grad_only", kinds=("train",), batch_sizes=(32,), seconds=0.05, repeats=1, data=mnist)


def test_a_run_whose_model_gives_nan_when_evaluated_is_not_saved(mnist, tmp_path):
    """Finite training steps, but NaN logits in eval mode: the run stops at its first evaluation
    with one error, and nothing is written where the run would have been saved."""

    def apply(params, x, *, train=False, noise=None):
        out = own_models.apply(params, x, train=train, noise=noise)
        return out if train else out * float("nan")

    _model("nan_in_eval", apply=apply, noise=own_models.noise)
    with pytest.raises(mnistfx.WeightsError, match="give NaN or infinite outputs for 500 of 500 images"):
        mnistfx.train(_small("nan_in_eval", epochs=1), data=mnist, checkpoint_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "weights.safetensors").exists()
