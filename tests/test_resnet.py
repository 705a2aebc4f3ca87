"""``resnet``: batch norm as explicit state, checked against PyTorch's own, trained, resumed, stacked."""

import json
import shutil

import pytest
import torch
from helpers import MNISTFX, same_bits
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import mnistfx
from mnistfx.models.resnet import batch_norm


def _small(**overrides):
    return mnistfx.recipe(
        "resnet",
        **{
            "epochs": 2,
            "train_size": 3200,
            "batch_size": 32,
            "compile": False,
            "lr": 0.05,
            "warmup": 0.0,
            "decay": 0.5,
            "label_smoothing": 0.0,
            "clean_epochs": 0,
            "val_size": 1000,
            "precision": "fp32",
            "seed": 3,
            **overrides,
        },
    )


def test_batch_norm_is_pytorchs_in_both_modes():
    g = torch.Generator().manual_seed(0)
    reference = nn.BatchNorm2d(6)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5, generator=g)
        reference.bias.uniform_(-1, 1, generator=g)
    params = {"u.bn.weight": reference.weight.detach().clone(), "u.bn.bias": reference.bias.detach().clone()}
    state = {"u.bn.running_mean": torch.zeros(6), "u.bn.running_var": torch.ones(6)}
    for _ in range(3):  # train mode: batch statistics, running ones moved with momentum 0.1 (unbiased variance)
        x = torch.randn(8, 6, 5, 5, generator=g) * 3 + 1
        y, state = batch_norm(x, params, state, "u.bn", True)
        torch.testing.assert_close(y, reference.train()(x))
        torch.testing.assert_close(state["u.bn.running_mean"], reference.running_mean)
        torch.testing.assert_close(state["u.bn.running_var"], reference.running_var)
    y, same = batch_norm(x, params, state, "u.bn", False)  # eval mode: the running statistics, state unchanged
    torch.testing.assert_close(y, reference.eval()(x))
    assert same_bits(same, state)


def test_the_model_has_state_and_no_state_in_its_parameters():
    model = mnistfx.get_model("resnet")
    params = model.init(0)
    state = model.init_state(params)
    units = {k[: -len(".weight")] for k in params if k.endswith(".bn.weight")}
    assert model.has_state and set(state) == {f"{u}.{s}" for u in units for s in ("running_mean", "running_var")}
    assert not any("running" in k for k in params)
    assert mnistfx.num_params(params) == 289_514
    logits = mnistfx.logits(model, params, torch.zeros(3, 28, 28, dtype=torch.uint8), state=state)
    assert logits.shape == (3, 10)


def test_resnet_learns_stores_its_statistics_and_resumes_bit_for_bit(mnist, tmp_path):
    def keep(kind, **info):
        if kind == "checkpoint" and (info["epoch"], info["step"]) == (2, 80):  # resumed: 20 steps, to the end
            shutil.copytree(tmp_path / "run", tmp_path / "at-2-80")

    full = mnistfx.train(
        _small(), data=mnist, checkpoint_dir=tmp_path / "run", checkpoint_every=4, on_event=keep, test=False
    )
    assert full.val.accuracy > 0.85
    assert full.history[1]["train_loss"] < full.history[0]["train_loss"]
    again = mnistfx.resume(tmp_path / "at-2-80", data=mnist, test=False)
    assert same_bits(again.params, full.params) and same_bits(again.state, full.state)
    weights = mnistfx.load_model_weights(mnistfx.save_run(full, tmp_path / "run")["weights"])
    assert same_bits(weights.state, full.state)
    images, labels = mnist.test_images[:1000], mnist.test_labels[:1000]
    assert weights.evaluate(images, labels).accuracy > 0.85  # with its running statistics
    fresh = mnistfx.evaluate(
        weights.model, weights.params, images, labels, state=weights.model.init_state(weights.params)
    )
    assert fresh.accuracy < 0.5


def test_negative_running_variances_are_refused_in_weights_and_checkpoints(mnist, tmp_path):
    run = mnistfx.train(
        _small(epochs=1, train_size=320, val_size=100), data=mnist, checkpoint_dir=tmp_path / "run", test=False
    )
    files = {
        "weights": mnistfx.save_run(run, tmp_path / "run")["weights"],
        "checkpoint": tmp_path / "run" / "checkpoint.safetensors",
    }
    for kind, path in files.items():
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        tensors = load_file(path)
        name = next(k for k in tensors if k.endswith("s1b0.b.bn.running_var"))
        tensors[name][3] = -0.5
        save_file(tensors, path, metadata=meta)
        load = mnistfx.load_model_weights if kind == "weights" else mnistfx.load_checkpoint
        with pytest.raises(mnistfx.WeightsError, match="s1b0.b.bn.running_var holds negative variances"):
            load(path)


def test_a_resnet_ensemble_keeps_statistics_of_each_member(mnist):
    # Eager: compiling this vmapped resnet took 110 s of the suite; a compiled ensemble of a model with state is
    # test_own_models.py's test_a_compiled_ensemble_of_a_model_with_state_trains.
    run = mnistfx.train(_small(ensemble=2, epochs=1), data=mnist, test=False)
    assert run.state["stem.bn.running_mean"].shape == (2, 32) and len(run.member_val) == 2
    assert not torch.equal(*mnistfx.unstack(run.state["stem.bn.running_mean"]))  # members of their own
    images, labels = mnist.test_images[:1000], mnist.test_labels[:1000]
    both = mnistfx.evaluate(mnistfx.get_model("resnet"), run.params, images, labels, state=run.state, members=2)
    assert both.accuracy > 0.6  # one epoch of 100 steps


def test_to_module_runs_resnet_with_its_statistics(mnist):
    model = mnistfx.get_model("resnet")
    params = model.init(1)
    state = {k: v + 0.1 if k.endswith("mean") else v for k, v in model.init_state(params).items()}
    module = mnistfx.to_module(model, params, state)
    x = model.preprocess(mnist.test_images[:16])
    with torch.no_grad():
        torch.testing.assert_close(module(x), mnistfx.logits(model, params, mnist.test_images[:16], state=state))


def test_resnet_on_the_command_line(tmp_path):
    import subprocess

    def cli(*args):
        return subprocess.run([MNISTFX, *args], capture_output=True, text=True)

    done = cli(
        "train",
        "resnet",
        "--epochs",
        "1",
        "--train-size",
        "512",
        "--batch-size",
        "64",
        "--val-size",
        "500",
        "--no-compile",
        "--no-test",  # eval below scores the test set
        "--out",
        str(tmp_path / "r"),
    )
    assert done.returncode == 0, done.stderr
    weights = str(tmp_path / "r" / "weights.safetensors")
    done = cli("eval", weights, "--json")
    assert done.returncode == 0 and '"accuracy"' in done.stdout, done.stderr
    from torchvision.transforms.functional import to_pil_image

    paths = [str(tmp_path / f"digit{i}.png") for i in range(3)]
    for i, path in enumerate(paths):
        to_pil_image(mnistfx.load_mnist().test_images[i]).save(path)
    done = cli("predict", weights, *paths, "--json")
    assert done.returncode == 0, done.stderr
    w = mnistfx.load_model_weights(weights)
    expected = mnistfx.predict(w.model, w.params, mnistfx.read_digit_images(paths), state=w.state).tolist()
    assert [row["digit"] for row in json.loads(done.stdout)] == expected
    done = cli("export-notebook", weights, "--out", str(tmp_path / "r.pth"))
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "notebook" in done.stderr
    assert not (tmp_path / "r.pth").exists()
