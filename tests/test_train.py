import json
import os

import pytest
import torch

import mnistfx
from mnistfx import augment_batch, compile_step, make_train_step, train_val_split


def _small(**overrides):
    """A few hundred eager steps on a 6,400-image slice."""
    return mnistfx.recipe("tuned", **{"epochs": 2, "train_size": 6400, "compile": False, **overrides})


@pytest.fixture(scope="module")
def small_run(mnist):
    losses = []

    def on_event(kind, **info):
        if kind == "step":
            losses.append(info["loss"])

    run = mnistfx.train(_small(), data=mnist, on_event=on_event)
    return run, losses


def test_training_on_a_slice_learns(small_run):
    run, losses = small_run
    assert len(run.history) == 2 and [h["epoch"] for h in run.history] == [1, 2]
    assert run.history[1]["train_loss"] < run.history[0]["train_loss"]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert run.test.n == 10000 and run.test.accuracy > 0.90  # chance is 0.10
    assert run.val.n == 5000 and run.val.accuracy > 0.90


def test_same_seed_same_weights(small_run, mnist):
    run, _ = small_run
    again = mnistfx.train(_small(epochs=1, train_size=640), data=mnist)
    twice = mnistfx.train(_small(epochs=1, train_size=640), data=mnist)
    other = mnistfx.train(_small(epochs=1, train_size=640, seed=1), data=mnist)
    assert all(torch.equal(again.params[k], twice.params[k]) for k in again.params)
    assert not torch.equal(again.params["fc1.weight"], other.params["fc1.weight"])


def test_validation_split_is_fixed_by_the_seed_and_disjoint():
    train_a, val_a = train_val_split(0, 5000)
    train_b, val_b = train_val_split(0, 5000)
    _, val_c = train_val_split(1, 5000)
    assert torch.equal(val_a, val_b) and not torch.equal(val_a, val_c)
    assert len(val_a) == 5000 and len(train_a) == 55000
    assert len(set(train_a.tolist()) | set(val_a.tolist())) == 60000


def test_save_run_writes_weights_and_history(small_run, tmp_path):
    run, _ = small_run
    paths = mnistfx.save_run(run, tmp_path / "out")
    w = mnistfx.load_model_weights(paths["weights"])
    model, params, meta = w.model, w.params, w.metadata
    assert model.name == "tuned" and meta["seed"] == 0 and meta["epochs"] == 2 and w.members is None
    assert meta["config"] == run.config.to_dict() and meta["test_accuracy"] == run.test.accuracy
    assert meta["torch_version"] == torch.__version__ and meta["mnistfx_version"] == mnistfx.__version__
    assert all(torch.equal(params[k], run.params[k]) for k in params)
    history = json.loads(paths["history"].read_text())
    assert history["history"] == run.history and history["test"]["accuracy"] == run.test.accuracy
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["history.json", "weights.safetensors"]


def test_augmentation_fills_with_the_background(test_slice):
    model = mnistfx.get_model("tuned")
    x = test_slice[0][:512].unsqueeze(1).float() / 255
    out = augment_batch(model, x, key=0)
    assert out.shape == x.shape and out.min() == -1.0 and out.max() <= 1.0
    assert (out == 0.0).float().mean() < 0.001  # no mid-grey border (test images have almost none either)
    faithful = augment_batch(model, x, key=0, faithful_fill=True)
    assert (faithful == 0.0).float().mean() > 0.01  # the notebook's mid-grey fill
    assert not torch.equal(out, augment_batch(model, x, key=1))
    assert torch.equal(out, augment_batch(model, x, key=0))


def test_identity_warp_is_exact(test_slice):
    x = test_slice[0][:64].unsqueeze(1).float() / 255
    same = mnistfx.random_affine(x, key=0, degrees=0.0, translate=0.0, scale=(1.0, 1.0))
    assert torch.equal(same, x)
    shifted = mnistfx.random_affine(x, key=0, degrees=0.0, translate=0.1, scale=(1.0, 1.0))
    # whole-pixel shifts only move pixels: every output value is an input value of its image, or 0
    for a, b in zip(shifted[:8], x[:8], strict=True):
        assert set(a.unique().tolist()) <= set(b.unique().tolist()) | {0.0}


@pytest.fixture(scope="session")
def compiled_step():
    model = mnistfx.get_model("tuned")
    step = make_train_step(model, mnistfx.adam(1e-3))
    return model, step, compile_step(step, "cpu")


def test_compiled_step_matches_eager(compiled_step, test_slice):
    """Compiled and eager differ only in float rounding (another summation order, fused kernels, another
    vector width on another CPU), so each is held to what float32 arithmetic guarantees, against the same
    step in float64: the loss and the gradients as accurate as eager's own, each update exactly Adam's
    arithmetic on that step's own moments, and the parameters equal where the update is well conditioned."""
    model, eager, compiled = compiled_step
    lr, adam_eps, u = 1e-3, 1e-8, torch.finfo(torch.float32).eps  # u: the spacing of float32 at 1
    params = model.init(0)
    opt_state = mnistfx.adam(lr).init(params)
    x = model.preprocess(test_slice[0][:64])
    y = test_slice[1][:64]
    noise = model.dropout_noise(64, key=0)
    p1, _, s1, l1, _ = eager(params, {}, opt_state, x, y, noise)
    p2, _, s2, l2, _ = compiled(params, {}, opt_state, x, y, noise)
    double = {k: v.double() for k, v in params.items()}
    p0, _, s0, l0, _ = eager(
        double, {}, mnistfx.adam(lr).init(double), x.double(), y, {k: v.double() for k, v in noise.items()}
    )
    assert s1["step"].item() == s2["step"].item() == 1

    def within_eagers_rounding(fp32_eager, fp32_compiled, exact):
        # compiled is as accurate as eager (a real error would be of the gradient's own size, not rounding's),
        # with a floor of a few units of the last place in case eager happens to be exact
        eager_err = (fp32_eager.double() - exact).abs().max()
        compiled_err = (fp32_compiled.double() - exact).abs().max()
        assert compiled_err <= 8 * eager_err + 16 * u * exact.abs().max(), (compiled_err, eager_err)

    within_eagers_rounding(l1, l2, l0)
    for k in params:  # after one step Adam's first moment is (1 - beta1) * grad: the gradients themselves
        within_eagers_rounding(s1["mu"][k], s2["mu"][k], s0["mu"][k])
    for new, state in ((p1, s1), (p2, s2)):
        for k, p in params.items():
            # given its moments, the first step p - lr * m/(1 - b1) / (sqrt(v/(1 - b2)) + eps) is well conditioned:
            # a few roundings of the update (at most lr) and one of the subtraction
            mu, nu = state["mu"][k].double(), state["nu"][k].double()
            want = p.double() - lr * (mu / 0.1) / ((nu / 1e-3).sqrt() + adam_eps)
            assert ((new[k].double() - want).abs() <= 8 * u * (p.double().abs() + lr)).all(), k
    for k, p in params.items():
        # where |grad| >> eps both take p - lr * sign(grad) * (1 - e) with 0 <= e <= eps/|grad|; nearer eps a
        # grad's rounding moves the update by a large part of lr (the 2.5 % on one element)
        grad = s0["mu"][k] / 0.1
        steady = grad.abs() > 1000 * adam_eps
        bound = 8 * u * (p.double().abs() + lr) + 2 * lr * adam_eps / grad.abs()
        assert ((p1[k].double() - p2[k].double()).abs() <= bound)[steady].all(), k


@pytest.mark.slow
def test_one_epoch_of_tuned_on_the_full_training_set(mnist):
    run = mnistfx.train(mnistfx.recipe("tuned", epochs=1), data=mnist)
    assert run.test.accuracy >= 0.97


def test_lr_schedule_decays_linearly_over_the_last_steps():
    from mnistfx import lr_schedule

    assert lr_schedule(1e-3, 100, 0) == 1e-3
    sched = lr_schedule(1e-3, 100, 20)
    lrs = [sched(torch.tensor(float(s))).item() for s in (1, 80, 81, 90, 100)]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 0.55e-3, 0.05e-3])


def test_one_cycle_schedule_warms_up_then_decays():
    from mnistfx import lr_schedule

    sched = lr_schedule(5e-3, 100, 80, 20)  # the fast recipe's shape: 20 % up, 80 % down
    lrs = [sched(torch.tensor(float(s))).item() for s in (1, 10, 20, 21, 60, 100)]
    assert lrs == pytest.approx([0.44e-3, 2.6e-3, 5e-3, 5e-3, 2.5625e-3, 0.0625e-3])


def test_recipes_by_name():
    fast = mnistfx.recipe("tuned", "fast", seed=3)
    assert mnistfx.recipe("tuned").recipe == "default" and fast.recipe == "fast"
    assert (fast.batch_size, fast.recipe, fast.seed) == (256, "fast", 3)
    assert fast.warmup + fast.decay == 1 and fast.clean_epochs == 1 and fast.label_smoothing > 0
    assert mnistfx.recipe("tuned") == mnistfx.RECIPES["default"]["tuned"]
    with pytest.raises(mnistfx.MnistfxError, match="no 'fast' recipe for cnn: use one of default"):
        mnistfx.recipe("cnn", "fast")
    with pytest.raises(mnistfx.MnistfxError, match="unknown recipe 'slow'"):
        mnistfx.recipe("tuned", "slow")


def test_a_bf16_recipe_trains_in_float32_where_the_cpu_would_emulate_bf16():
    from mnistfx.runtime.cpu import has_native_bf16

    assert mnistfx.RECIPES["fast"]["tuned"].precision == mnistfx.RECIPES["default"]["resnet"].precision == "bf16"
    on_this_cpu = "bf16" if has_native_bf16() else "fp32"
    assert mnistfx.recipe("tuned", "fast").precision == mnistfx.recipe("resnet").precision == on_this_cpu
    assert mnistfx.recipe("tuned", "fast", precision="bf16").precision == "bf16"  # asked for: kept
    assert mnistfx.recipe("tuned", "fast", device="cuda").precision == "bf16"  # GPUs: the recipe's own choice
    assert mnistfx.recipe("tuned").precision == "fp32"


def test_clean_epochs_are_the_last_ones(mnist):
    last_clean = mnistfx.train(_small(train_size=640, clean_epochs=1), data=mnist)
    augmented = mnistfx.train(_small(train_size=640), data=mnist)
    plain = mnistfx.train(_small(train_size=640, augment=False), data=mnist)
    # Epoch 1 is augmented, exactly as in the augmented run; epoch 2 is not.
    assert last_clean.history[0]["train_loss"] == augmented.history[0]["train_loss"]
    assert last_clean.history[1]["train_loss"] != augmented.history[1]["train_loss"]
    assert last_clean.history[0]["train_loss"] != plain.history[0]["train_loss"]
    # With every epoch clean, the run is the unaugmented one, bit for bit.
    all_clean = mnistfx.train(_small(train_size=640, clean_epochs=2), data=mnist)
    assert all(torch.equal(all_clean.params[k], plain.params[k]) for k in plain.params)


def test_bf16_learns_as_well_as_fp32(mnist):
    bf16 = mnistfx.train(_small(precision="bf16", label_smoothing=0.1), data=mnist)
    fp32 = mnistfx.train(_small(label_smoothing=0.1), data=mnist)
    # The same seed's two runs part ways within a few steps (other rounding), so they differ as two seeds do:
    # this run's test accuracy over fp32 seeds 0-3 was 90.2, 91.7, 91.1, 89.6 % (std 1.0 %, so 1.4 % for a
    # difference of two runs); 4 % is three of those. Broken bf16 arithmetic does not learn at all.
    assert bf16.test.accuracy > 0.88 and abs(bf16.test.accuracy - fp32.test.accuracy) < 0.04


def test_the_step_uses_label_smoothing(test_slice):
    model, opt = mnistfx.get_model("tuned"), mnistfx.adam(1e-3)
    params = model.init(0)
    x, y = model.preprocess(test_slice[0][:64]), test_slice[1][:64]
    noise = model.dropout_noise(64, key=0)
    logits = model.apply(params, x, train=True, noise=noise)
    loss = make_train_step(model, opt, label_smoothing=0.1)(params, {}, opt.init(params), x, y, noise)[3]
    assert loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-6
    )
    assert loss.item() != pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-3)


def test_bf16_step_tracks_the_fp32_step(test_slice):
    model, opt = mnistfx.get_model("tuned"), mnistfx.adam(1e-3)
    params = model.init(0)
    x, y = model.preprocess(test_slice[0][:256]), test_slice[1][:256]
    noise = model.dropout_noise(256, key=0)
    l32 = make_train_step(model, opt)(params, {}, opt.init(params), x, y, noise)[3]
    l16 = make_train_step(model, opt, precision="bf16")(params, {}, opt.init(params), x, y, noise)[3]
    assert l16.dtype == torch.float32 and abs(l16.item() - l32.item()) < 0.02 * l32.item()
    assert l16.item() != l32.item()  # the forward really ran in bf16
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        make_train_step(model, opt, precision="fp16")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": 0}, "`epochs` must be a whole number"),
        ({"batch_size": 2.5}, "`batch_size` must be a whole number"),
        ({"lr": float("nan")}, "`lr` must be a positive number"),
        ({"decay": 1.5}, "`decay` must be a fraction"),
        ({"warmup": -0.1}, "`warmup` must be a fraction"),
        ({"warmup": 0.5, "decay": 0.6}, "make their sum at most 1"),
        ({"label_smoothing": 2}, "`label_smoothing` must be a fraction"),
        ({"clean_epochs": 16}, "`clean_epochs` must be a whole number from 0 to `epochs`"),
        ({"precision": "fp16"}, "`precision` must be one of fp32, bf16"),
        ({"steps_per_call": 0}, "`steps_per_call` must be a whole number from 1 to 8"),
        ({"steps_per_call": 9}, "`steps_per_call` must be a whole number from 1 to 8"),
        ({"steps_per_call": 8, "train_size": 200}, "`steps_per_call` 8 batches of 32 are more than the 200"),
        ({"val_size": 60000}, "`val_size` must be between"),
        ({"train_size": 64, "batch_size": 128}, "larger than the 64 training images"),
        ({"model": "lenet"}, "unknown model 'lenet'"),
        pytest.param(
            {"device": "cuda"},
            "no CUDA device is available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present"),
        ),
    ],
)
def test_bad_configs_are_refused_before_any_work(overrides, message, mnist):
    import dataclasses

    with pytest.raises(mnistfx.MnistfxError, match=message):  # where the config is made, or where training starts
        mnistfx.train(dataclasses.replace(mnistfx.recipe("tuned"), **overrides), data=mnist)


def test_a_config_is_checked_where_it_is_made():
    with pytest.raises(mnistfx.ConfigError, match="`epochs` must be a whole number from 1 to 10000, not 0"):
        mnistfx.TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="`batch_size` must be a whole number"):  # a ConfigError is a ValueError
        mnistfx.recipe("tuned", batch_size=True)
    cfg = mnistfx.recipe("tuned", "fast", seed=2)
    assert mnistfx.TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(mnistfx.ConfigError, match="no field 'color'"):
        mnistfx.TrainConfig.from_dict({**cfg.to_dict(), "color": "red"})
    assert cfg.steps_per_epoch == 55000 // 256 and mnistfx.recipe("tuned", train_size=3200).steps_per_epoch == 100


def test_the_compile_cache_is_opt_in_and_falls_back_to_inductors_own(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    wanted = tmp_path / "cache" / "inductor"
    assert mnistfx.use_compile_cache(wanted) == wanted and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(wanted)
    assert not wanted.exists()  # torch makes it when it first compiles
    assert mnistfx.use_compile_cache() == wanted  # a folder already chosen is kept
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    (tmp_path / "file").write_text("not a folder")
    assert mnistfx.use_compile_cache(tmp_path / "file" / "inductor") is None  # unusable: inductor's default
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnistfx.use_compile_cache() == tmp_path / "xdg" / "mnistfx" / "inductor"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mnistfx.use_compile_cache() == tmp_path / "home" / ".cache" / "mnistfx" / "inductor"


def test_the_environment_names_the_device_and_versions():
    env = mnistfx.environment("cpu")
    assert env["device"] == "cpu" and "threads" in env["device_name"]
    assert env["cpu"] == mnistfx.cpu_description() and f", {os.cpu_count()} cores: " in env["cpu"]
    assert env["torch"] == torch.__version__ and env["mnistfx"] == mnistfx.__version__
    with pytest.raises(mnistfx.ConfigError, match="unknown device 'tpu'"):
        mnistfx.environment("tpu")
