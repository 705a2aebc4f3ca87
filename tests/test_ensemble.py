"""Ensembles: stacked members trained by one vmapped step, checked against separate steps; their
runs, checkpoints, weights files, evaluation, prediction and plots."""

import json
import shutil

import pytest
import torch
from helpers import assert_one_line_error, run_cli, same_bits

import mnistfx


def test_stack_and_unstack_are_inverses():
    model, opt = mnistfx.get_model("tuned"), mnistfx.adam(1e-3)
    members = [opt.init(model.init(i)) for i in range(3)]
    stacked = mnistfx.stack(members)
    assert stacked["step"].shape == (3,) and stacked["mu"]["fc1.weight"].shape == (3, 512, 784)
    assert all(same_bits(a["mu"], b["mu"]) for a, b in zip(mnistfx.unstack(stacked), members, strict=True))
    with pytest.raises(ValueError, match="same keys"):
        mnistfx.stack([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])
    with pytest.raises(ValueError, match="different leading sizes"):
        mnistfx.unstack({"a": torch.zeros(2), "b": torch.zeros(3)})


# Eager with two steps per call (the default recipe's), compiled as the bare step: compiling the two-step vmapped
# graph took 80 s of the suite, and the compiled single model's two-step graph is test_resume.py's. Compiled, on 64
# images of 3 members, its two graphs are those the ensemble benchmark below compiles (and the one-model step that
# of test_train.py and test_bench.py): the compile cache holds them for whichever test comes second.
@pytest.mark.parametrize("compiled, group", [(False, 2), (True, None)], ids=["eager-2-steps-per-call", "compiled"])
def test_one_vmapped_step_equals_k_separate_steps(mnist, compiled, group):
    model, opt = mnistfx.get_model("tuned"), mnistfx.adam(1e-3)
    step = mnistfx.make_train_step(model, opt)
    if group:
        step = mnistfx.make_multi_step(step, group)
    ensemble = mnistfx.make_ensemble_step(step)
    if compiled:
        step, ensemble = mnistfx.compile_step(step, "cpu"), mnistfx.compile_step(ensemble, "cpu")
    k, n = 3, 64
    params = [model.init(i) for i in range(k)]
    idx = torch.arange(n)
    x, noise = mnistfx.batch_inputs(model, mnist.train_images, idx, aug_key=1, drop_key=2, members=k)
    y = mnist.train_labels[idx]
    together = ensemble(mnistfx.stack(params), {}, mnistfx.stack([opt.init(p) for p in params]), x, y, noise)
    for i, p in enumerate(params):
        alone = step(p, {}, opt.init(p), x, y, {name: v[i] for name, v in noise.items()})
        for name in p:  # Adam's first step is ±lr·g/(|g| + eps): where |g| is near eps, a tenth of a step
            torch.testing.assert_close(together[0][name][i], alone[0][name], rtol=1e-4, atol=1e-4)
            assert (together[0][name][i] - alone[0][name]).norm() <= 1e-5 * alone[0][name].norm()
        torch.testing.assert_close(together[3][i], alone[3], rtol=1e-5, atol=1e-6)
        assert torch.equal(together[2]["step"][i], alone[2]["step"])
    assert not torch.equal(together[0]["fc1.weight"][0], together[0]["fc1.weight"][1])  # own init and noise


def _small(**overrides):
    return mnistfx.recipe(
        "tuned",
        **{"epochs": 2, "train_size": 1600, "val_size": 500, "compile": False, "seed": 3, "ensemble": 3, **overrides},
    )


@pytest.fixture(scope="module")
def ensemble_run(mnist, tmp_path_factory):
    """A 3-member run with a checkpoint every 10 steps; copies of the folder at two of them."""
    root = tmp_path_factory.mktemp("ensemble")

    def keep(kind, **info):
        if kind == "checkpoint" and (info["epoch"], info["step"]) in {(1, 20), (1, 50)}:
            shutil.copytree(root / "run", root / f"at-{info['step']}")

    run = mnistfx.train(_small(), data=mnist, checkpoint_dir=root / "run", checkpoint_every=10, on_event=keep)
    mnistfx.save_run(run, root / "run")
    return run, root


def test_an_ensemble_run_reports_its_members_and_beats_their_mean(ensemble_run):
    run, _ = ensemble_run
    assert run.params["fc1.weight"].shape == (3, 512, 784) and len(run.member_test) == len(run.member_val) == 3
    accuracies = [m.accuracy for m in run.member_test]
    assert len(set(accuracies)) > 1 and min(accuracies) > 0.4  # 100 steps of 32 images
    assert run.test.accuracy > sum(accuracies) / 3  # averaging the members' probabilities helps


def test_an_ensemble_resumes_bit_for_bit(mnist, ensemble_run):
    run, root = ensemble_run
    for name in ("at-20", "at-50"):
        again = mnistfx.resume(root / name, data=mnist)
        assert same_bits(again.params, run.params)
        assert [m.accuracy for m in again.member_test] == [m.accuracy for m in run.member_test]


def test_one_weights_file_that_eval_predict_and_plot_read(mnist, ensemble_run, capsys, tmp_path):
    run, root = ensemble_run
    weights = mnistfx.load_model_weights(root / "run" / "weights.safetensors")
    assert weights.members == 3 and same_bits(weights.params, run.params)
    assert weights.evaluate(mnist.test_images, mnist.test_labels).correct == run.test.correct
    code, out, _ = run_cli(capsys, "eval", str(root / "run" / "weights.safetensors"), "--json")
    result = json.loads(out)
    assert code == 0 and result["members"] == 3 and result["correct"] == run.test.correct
    assert result["member_accuracy"] == [m.accuracy for m in run.member_test]
    from torchvision.transforms.functional import to_pil_image

    paths = []
    for i in range(4):
        to_pil_image(mnist.test_images[i]).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    code, out, _ = run_cli(capsys, "predict", str(root / "run" / "weights.safetensors"), *paths, "--json")
    probs = weights.probabilities(mnistfx.read_digit_images(paths))
    assert code == 0 and [r["digit"] for r in json.loads(out)] == probs.argmax(1).tolist()
    code, _, err = run_cli(
        capsys, "export-notebook", str(root / "run" / "weights.safetensors"), "--out", str(tmp_path / "x.pth")
    )
    assert_one_line_error(code, err, "holds an ensemble of 3")
    pytest.importorskip("matplotlib")
    written = mnistfx.plot_run(root / "run", out=tmp_path, data=mnist)
    assert [p.name for p in written] == ["history.png", "confusion.png", "mistakes.png", "members.png"]
    assert (tmp_path / "members.png").stat().st_size > 5000


def test_a_checkpoint_of_another_ensemble_size_is_refused(ensemble_run, tmp_path):
    _, root = ensemble_run
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(root / "at-20" / "checkpoint.safetensors", "pt") as f:
        meta = f.metadata()
    tensors = load_file(root / "at-20" / "checkpoint.safetensors")
    config = json.loads(meta["config"])
    meta["config"] = json.dumps({**config, "ensemble": 2})
    (tmp_path / "run").mkdir()
    save_file(tensors, tmp_path / "run" / "checkpoint.safetensors", metadata=meta)
    with pytest.raises(mnistfx.WeightsError, match=r"expects \(2, 8, 1, 3, 3\)"):
        mnistfx.load_checkpoint(tmp_path / "run")


def test_ensemble_benchmark_measures_both_ways(mnist):
    # the graphs test_one_vmapped_step_equals_k_separate_steps[compiled] compiles: 3 members, 64 images
    (result,) = mnistfx.benchmark_ensemble(members=(3,), batch_size=64, seconds=0.05, repeats=1, data=mnist)
    assert result["members"] == 3 and all(
        result[k] > 0 for k in ("separate", "vmapped", "step_separate", "step_vmapped")
    )
    with pytest.raises(ValueError, match="members must be"):
        mnistfx.benchmark_ensemble(members=(1,), data=mnist)
