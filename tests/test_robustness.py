"""The attacks (FGSM, PGD), the robustness report, the MNIST-C reader and ``mnistfx robustness``, on a
trained `tuned` and real test images."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run_cli
from torch.nn import functional as F

import mnistfx


@pytest.fixture(scope="module")
def w(trained_tuned):
    return mnistfx.load_model_weights(trained_tuned)


@pytest.fixture(scope="module")
def few(test_slice):
    x, y = test_slice
    return x[:200], y[:200]


def unit(x):
    return x.float().div(255).reshape(-1, 1, 28, 28)


def input_gradient(w, x, y):
    """The gradient of the summed cross-entropy with respect to images in [0, 1], by autograd through the
    weights as an ordinary nn.Module (the reference the functional attacks are checked against)."""
    module = w.to_module()
    x0 = unit(x).requires_grad_(True)
    F.cross_entropy(module(w.model.normalize_input(x0)), y, reduction="sum").backward()
    return x0.grad


def clear(g):
    """Pixels whose gradient is far from 0 compared with its image's largest (float rounding in two
    computations of it cannot flip their sign): 1e-3 of the largest is some 10,000 float32 ulps."""
    return g.abs() > 1e-3 * g.abs().flatten(1).amax(1)[:, None, None, None]


def test_fgsm_is_one_signed_gradient_step(w, few):
    x, y = few
    adv = mnistfx.fgsm(w.model, w.params, x, y, eps=0.2, state=w.state)
    assert adv.shape == x.shape and adv.dtype == torch.float32
    g = input_gradient(w, x, y)
    expected = (unit(x) + 0.2 * g.sign()).clamp(0, 1)
    right = w.probabilities(x).argmax(1) == y
    adv = adv.reshape(-1, 1, 28, 28)
    assert torch.equal(adv[~right], unit(x)[~right]), "an image the model gets wrong is returned as it is"
    mask = clear(g)[right]
    assert mask.float().mean() > 0.5
    torch.testing.assert_close(adv[right][mask], expected[right][mask], atol=1e-6, rtol=0)


def test_pgd_stays_in_the_ball_and_is_monotone(w, few):
    x, y = few
    clean = w.evaluate(x, y).accuracy
    accuracy = []
    for eps in (0.0, 0.1, 0.2, 0.3):
        adv = mnistfx.pgd(w.model, w.params, x, y, eps=eps, steps=20, step_size=0.02, state=w.state)
        assert adv.shape == x.shape and 0 <= adv.min() and adv.max() <= 1
        assert (adv.reshape(-1, 1, 28, 28) - unit(x)).abs().max() <= eps + 1e-6
        accuracy.append(w.evaluate(adv, y).accuracy)
        if eps:  # white-box PGD is at least as strong as one FGSM step
            fgsm = mnistfx.fgsm(w.model, w.params, x, y, eps=eps, state=w.state)
            assert accuracy[-1] <= w.evaluate(fgsm, y).accuracy
    assert accuracy[0] == clean
    assert accuracy == sorted(accuracy, reverse=True) and accuracy[-1] < 0.2 < clean, accuracy


def test_more_steps_and_restarts_break_a_superset(w, few):
    """The same seed starts at the same points: 40 steps continue the path of 10, and a second restart
    only adds images, so what breaks with fewer is broken with more."""
    x, y = few

    def broken(**kw):
        adv = mnistfx.pgd(w.model, w.params, x, y, eps=0.1, step_size=0.01, state=w.state, seed=3, **kw)
        return w.probabilities(adv).argmax(1) != y

    one, ten, forty = broken(steps=1), broken(steps=10), broken(steps=40)
    assert (one <= ten).all() and (ten <= forty).all() and one.sum() < ten.sum() < forty.sum()
    again = broken(steps=10, restarts=3)
    assert (ten <= again).all() and again.sum() > ten.sum()
    assert torch.equal(again, broken(steps=10, restarts=3)), "the same seed attacks the same way"


def test_the_compiled_step_is_the_eager_one(w, few):
    x, y = few
    step = mnistfx.make_attack_step(w.model)
    compiled = mnistfx.compile_step(step, "cpu")
    args = (w.params, w.state, unit(x), unit(x), y, torch.tensor(0.3), torch.tensor(0.1))
    (a, ok_a), (b, ok_b) = step(*args), compiled(*args)
    assert torch.equal(ok_a, ok_b)
    mask = clear(input_gradient(w, x, y))
    torch.testing.assert_close(a[mask], b[mask], atol=1e-6, rtol=0)
    adv = mnistfx.pgd(w.model, w.params, x, y, eps=0.3, steps=5, step_size=0.05, state=w.state, step=compiled)
    assert (adv.reshape(-1, 1, 28, 28) - unit(x)).abs().max() <= 0.3 + 1e-6


def test_models_with_other_parameters_are_attacked_compiled_in_one_process(w, few):
    """The attack steps of two models come from one factory (one code object): compiling the second
    once failed inside torch.compile (KeyError 'fc3.bias', scoring several runs in one process)."""
    x, y = few[0][:64], few[1][:64]
    small = mnistfx.get_model("smallcnn")
    other = mnistfx.Weights(small, small.init(3), small.init_state(small.init(3)), {})
    for weights in (w, other):
        step = mnistfx.make_attack_step(weights.model)
        compiled = mnistfx.compile_step(step, "cpu")
        mask = clear(input_gradient(weights, x, y))
        x0 = unit(x)
        for start in (x0, x0.clone()):  # as pgd calls it: the clean image (aliased), then another tensor
            args = (weights.params, weights.state, start, x0, y, torch.tensor(0.3), torch.tensor(0.1))
            (a, _), (b, _) = step(*args), compiled(*args)
            torch.testing.assert_close(a[mask], b[mask], atol=1e-6, rtol=0)


def test_an_ensemble_is_attacked_through_its_mean(w, few):
    x, y = few
    twins = mnistfx.stack([w.params, w.params])
    adv = mnistfx.fgsm(w.model, twins, x, y, eps=0.1, members=2).reshape(-1, 1, 28, 28)
    g = input_gradient(w, x, y)  # two equal members: the mean's gradient is the member's
    right = w.probabilities(x).argmax(1) == y
    mask = clear(g)[right]
    expected = (unit(x) + 0.1 * g.sign()).clamp(0, 1)
    torch.testing.assert_close(adv[right][mask], expected[right][mask], atol=1e-6, rtol=0)


def test_the_report_matches_its_parts(w, few):
    x, y = few
    x, y = x[:100], y[:100]
    r = mnistfx.robustness(
        w, x, y, corruptions=("fog", "stripe"), eps=(0.1, 0.3), pgd_steps=5, pgd_step_size=0.05, seed=4, compile=False
    )
    assert r.clean == w.evaluate(x, y).accuracy and r.images == 100
    assert r.corruptions == {n: w.evaluate(mnistfx.corrupt(x, n, seed=4), y).accuracy for n in ("fog", "stripe")}
    assert r.mean_corruption == pytest.approx(sum(r.corruptions.values()) / 2)
    pgd = mnistfx.pgd(w.model, w.params, x, y, eps=0.3, steps=5, step_size=0.05, seed=4, state=w.state)
    assert r.attacks["pgd"]["0.3"] == w.evaluate(pgd, y).accuracy
    d = json.loads(mnistfx.to_json(r.to_dict()))
    assert set(d) >= {"clean", "corruptions", "mean_corruption", "attacks"}
    assert set(d["attacks"]) == {"fgsm", "pgd"} and set(d["attacks"]["fgsm"]) == {"0.1", "0.3"}
    assert r.masked == []


def test_a_transfer_attack_exposes_masked_gradients(w, few):
    """A model whose input gradient is zero (the image detached: same predictions) keeps its accuracy
    under white-box PGD; PGD crafted on the honest weights breaks it, and the report says so."""
    x, y = few
    x, y = x[:100], y[:100]
    tuned = w.model
    masked = mnistfx.Model(
        "masked", tuned.init, lambda params, x: tuned.apply(params, x.detach()), normalize=tuned.normalize
    )
    hidden = mnistfx.Weights(model=masked, params=w.params, state={}, metadata={})
    kw = dict(corruptions=(), attacks=("pgd",), eps=(0.3,), pgd_steps=10, pgd_step_size=0.05, compile=False)
    r = mnistfx.robustness(hidden, x, y, transfer_from=w, **kw)
    assert r.attacks["pgd"]["0.3"] > 0.9 and r.attacks["pgd_transfer"]["0.3"] < 0.5
    assert r.masked == ["0.3"]
    honest = mnistfx.robustness(w, x, y, transfer_from=hidden, **kw)
    assert honest.masked == [] and honest.attacks["pgd"]["0.3"] < 0.5


def _write_mnist_c(folder, x, y, names, seed):
    for name in names:
        (folder / name).mkdir(parents=True)
        np.save(folder / name / "test_images.npy", mnistfx.corrupt(x, name, seed=seed).numpy()[..., None])
        np.save(folder / name / "test_labels.npy", y.numpy().astype(np.uint8))


def test_mnist_c_files_score_as_the_made_corruptions(w, few, tmp_path):
    x, y = few
    _write_mnist_c(tmp_path, x, y, ("zigzag", "canny_edges"), seed=7)
    files = mnistfx.load_mnist_c(tmp_path, ("zigzag", "canny_edges"))
    assert files["zigzag"][0].shape == (200, 28, 28) and files["zigzag"][1].dtype == torch.int64
    kw = dict(corruptions=("zigzag", "canny_edges"), attacks=(), seed=7)
    made, read = mnistfx.robustness(w, x, y, **kw), mnistfx.robustness(w, x, y, mnist_c=tmp_path, **kw)
    assert made.corruptions == read.corruptions and read.settings["corruption_source"] == "MNIST-C files"


def _hostile_npy(folder, kind):
    """An MNIST-C folder for ``fog`` whose images file is bad in one way."""
    (folder / "fog").mkdir(parents=True)
    images, labels = folder / "fog" / "test_images.npy", folder / "fog" / "test_labels.npy"
    np.save(labels, np.zeros(10, np.uint8))
    good = np.zeros((10, 28, 28, 1), np.uint8)
    if kind == "pickle":
        np.save(images, np.array([_Canary(folder)], dtype=object), allow_pickle=True)
    elif kind == "float":
        np.save(images, good.astype(np.float32))
    elif kind == "shape":
        np.save(images, np.zeros((10, 32, 32), np.uint8))
    elif kind == "short":
        np.save(images, good)
        images.write_bytes(images.read_bytes()[:-5])
    elif kind == "trailing":
        np.save(images, good)
        images.write_bytes(images.read_bytes() + b"x")
    elif kind == "not npy":
        images.write_bytes(b"\x89PNG not an array")
    elif kind == "huge":
        with open(images, "wb") as f:
            f.truncate(10**9)
    elif kind == "fifo":
        os.mkfifo(images)
    elif kind == "labels":
        np.save(images, good)
        np.save(labels, np.full(10, 11, np.int64))
    elif kind == "count":
        np.save(images, good[:9])
    elif kind == "missing":
        images.unlink(missing_ok=True)
        (folder / "fog" / "test_labels.npy").unlink()
        (folder / "fog").rmdir()


class _Canary:
    def __init__(self, folder):
        self.path = str(folder / "canary")

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.fast
@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("pickle", "holds object"),
        ("float", "holds float32"),
        ("shape", "(10, 32, 32)"),
        ("short", "cut short"),
        ("trailing", "bytes after its array"),
        ("not npy", "not a NumPy .npy file"),
        ("huge", "more than any MNIST-C file"),
        ("fifo", "not a regular file"),
        ("labels", "labels outside 0-9"),
        ("count", "9 images but 10 labels"),
        ("missing", "has no fog"),
    ],
)
def test_hostile_mnist_c_files_are_refused(tmp_path, kind, fragment):
    _hostile_npy(tmp_path, kind)
    with pytest.raises(mnistfx.DataError, match=None) as e:
        mnistfx.load_mnist_c(tmp_path, ("fog",))
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "canary").exists()


def test_the_command_prints_the_issue_s_json_and_draws(trained_tuned, tmp_path, capsys):
    code, out, err = run_cli(
        capsys,
        "robustness",
        str(trained_tuned),
        "--images",
        "200",
        "--corruptions",
        "fog,zigzag",
        "--eps",
        "0.1,0.3",
        "--pgd-steps",
        "5",
        "--json",
        "--plot",
        str(tmp_path / "pictures"),
    )
    assert code == 0, err
    d = json.loads(out)
    assert set(d["corruptions"]) == {"fog", "zigzag"} and d["images"] == 200
    assert d["mean_corruption"] == pytest.approx((d["corruptions"]["fog"] + d["corruptions"]["zigzag"]) / 2)
    assert set(d["attacks"]) == {"fgsm", "pgd"} and set(d["attacks"]["pgd"]) == {"0.1", "0.3"}
    assert all(0 <= v <= 1 for v in [d["clean"], *d["corruptions"].values(), *d["attacks"]["pgd"].values()])
    for name in ("robustness.png", "corruptions.png"):
        assert (tmp_path / "pictures" / name).read_bytes()[:4] == b"\x89PNG"
    code, out, _ = run_cli(capsys, "robustness", str(trained_tuned), "--images", "50", "--attacks", "none")
    assert code == 0 and "mean over corruptions" in out and "canny_edges" in out and "pgd" not in out


def test_the_command_scores_the_run_s_own_validation_images(trained_tuned, mnist, capsys):
    """--validation scores the images the run's seed held out (what a recipe is chosen on), never seen in training."""
    code, out, err = run_cli(
        capsys, "robustness", str(trained_tuned), "--validation", "--images", "300", "--corruptions", "fog",
        "--attacks", "none", "--json",
    )  # fmt: skip
    assert code == 0, err
    d = json.loads(out)
    _, val = mnistfx.train_val_split(0, 5000)
    w = mnistfx.load_model_weights(trained_tuned)
    x, y = mnist.train_images[val[:300]], mnist.train_labels[val[:300]]
    assert d["split"] == "validation" and d["images"] == 300
    assert d["clean"] == w.evaluate(x, y).accuracy
    assert d["corruptions"]["fog"] == w.evaluate(mnistfx.corrupt(x, "fog", seed=0), y).accuracy
    code, out, err = run_cli(capsys, "robustness", str(trained_tuned), "--images", "300", "--corruptions", "none",
                             "--attacks", "none", "--json")  # fmt: skip
    assert json.loads(out)["split"] == "test" and json.loads(out)["images"] == 300


def test_validation_needs_a_run_with_a_validation_split(tmp_path, mnist, weights, capsys):
    code, _, err = run_cli(capsys, "robustness", str(weights), "--validation", "--mnist-c", str(tmp_path))
    assert_one_line_error(code, err, "--mnist-c holds corrupted test images: score them without --validation")
    code, _, err = run_cli(capsys, "robustness", str(weights), "--validation")
    assert_one_line_error(code, err, "these weights carry no run config (mnistfx train's do)")
    run = mnistfx.train(
        mnistfx.recipe("tuned", epochs=1, train_size=64, val_size=0, compile=False), data=mnist, test=False
    )
    mnistfx.save_run(run, tmp_path / "all")
    code, _, err = run_cli(capsys, "robustness", str(tmp_path / "all" / "weights.safetensors"), "--validation")
    assert_one_line_error(code, err, "trained on all 60,000 training images: it has no validation images")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--eps", "0.1,2"], "give 1 to 20 radii from 0 to 1"),
        (["--eps", "a"], "not a comma-separated list of numbers"),
        (["--corruptions", "snow"], "unknown snow"),
        (["--attacks", "cw"], "unknown cw"),
        (["--images", "0"], "--images"),
        (["--mnist-c", "/nonexistent"], "is not a folder"),
        (["--transfer-from", "/nonexistent.safetensors"], "/nonexistent.safetensors"),
    ],
)
def test_the_command_refuses_bad_flags(trained_tuned, capsys, args, fragment):
    code, _, err = run_cli(capsys, "robustness", str(trained_tuned), *args)
    assert_one_line_error(code, err, fragment)
