"""The training loop open at every seam: schedules, composed and user-written optimisers, hyperparameters
per ensemble member, a step of one's own, training on all 60,000 images, and the per-epoch hook."""

import math

import pytest
import torch
from helpers import optimiser_trajectories, train_and_resume_from_step_4
from torch.nn import functional as F

import mnistfx
from mnistfx.training.optim import Transform


def _factors(schedule, steps):
    return [float(schedule(torch.tensor(float(t)))) for t in range(1, steps + 1)]


def _torch_factors(make_scheduler, steps):
    """The rate torch's scheduler gives each of ``steps`` updates (stepped once per update), over lr 1."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = make_scheduler(opt)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: mnistfx.cosine(100), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=100)),
        (
            lambda: mnistfx.one_cycle(100, rise=0.3),
            lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=100, pct_start=0.3),
        ),
        (lambda: mnistfx.step_decay(30, 0.7), lambda o: torch.optim.lr_scheduler.StepLR(o, 30, gamma=0.7)),
        (lambda: mnistfx.constant(), lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0)),
    ],
    ids=["cosine", "one-cycle", "step", "constant"],
)
@pytest.mark.fast
def test_schedules_match_torch_lr_schedulers(ours, theirs):
    # float32 arithmetic on factors of order 1 against torch's float64: a few ulps of float32
    got, want = _factors(ours(), 100), _torch_factors(theirs, 100)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.fast
def test_the_default_schedule_is_unchanged_and_schedules_describe_themselves():
    shape = mnistfx.warmup_linear_decay(100, 80, 20)
    old = mnistfx.lr_schedule(5e-3, 100, 80, 20)
    for t in (1, 10, 20, 21, 50, 100):
        step = torch.tensor(float(t))
        assert float(old(step)) == pytest.approx(5e-3 * float(shape(step)), rel=1e-6)
    assert float(shape(torch.tensor(1.0))) == pytest.approx(0.04 + 0.96 / 20)
    assert float(shape(torch.tensor(100.0))) == pytest.approx(1 / 80)
    assert mnistfx.cosine(50, 5).describe() == {"name": "cosine", "total_steps": 50, "warmup_steps": 5, "final": 0.0}
    with pytest.raises(ValueError, match="`gamma` must be above 0"):
        mnistfx.step_decay(10, 0.0)
    with pytest.raises(ValueError, match="exceed `total_steps`"):
        mnistfx.warmup_linear_decay(10, 8, 5)


def _trajectories(data, opt, torch_opt, steps, before_torch_step=None):
    """Parameters of `tuned` after ``steps`` updates from the same gradients of real batches: ours, torch's."""
    ours, theirs, _ = optimiser_trajectories(data, opt, torch_opt, steps, before_torch_step)
    return ours, theirs


def _assert_close(ours, theirs, rel):
    for k, p in ours.items():
        assert (p - theirs[k]).norm() <= rel * theirs[k].norm(), k


def _adadelta(lr=1.0, rho=0.9, eps=1e-6):
    """Adadelta written by a user as one transform (the arithmetic of torch.optim.Adadelta)."""

    def apply(updates, buffers, params, hyper, step):
        square = {k: buffers["square"][k] * rho + (1 - rho) * g * g for k, g in updates.items()}
        delta = {k: torch.sqrt(buffers["delta"][k] + eps) / torch.sqrt(square[k] + eps) * g for k, g in updates.items()}
        acc = {k: buffers["delta"][k] * rho + (1 - rho) * d * d for k, d in delta.items()}
        return delta, {"square": square, "delta": acc}

    return mnistfx.chain("adadelta", Transform("adadelta", apply, ("square", "delta"), settings={"rho": rho}), lr=lr)


@pytest.mark.fast
def test_composed_and_user_written_optimisers_match_torch_optim(synthetic):
    # clipping then momentum: torch.nn.utils.clip_grad_norm_ then torch.optim.SGD
    clipped = mnistfx.chain("clipped-sgd", mnistfx.clip_by_global_norm(0.5), mnistfx.trace(0.9), lr=0.05)
    ours, theirs = _trajectories(
        synthetic,
        clipped,
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        60,
        lambda p: torch.nn.utils.clip_grad_norm_(p, 0.5),
    )
    _assert_close(ours, theirs, 2e-6)
    # a user's Adadelta, 100 steps
    ours, theirs = _trajectories(synthetic, _adadelta(), lambda p: torch.optim.Adadelta(p, lr=1.0), 100)
    _assert_close(ours, theirs, 2e-6)


@pytest.mark.fast
def test_hyperparameters_live_in_the_state_and_are_checked():
    opt = mnistfx.sgd(0.1, 0.9, weight_decay=1e-4)
    params = {"w": torch.ones(3)}
    state = opt.init(params, lr=0.5, momentum=0.0)
    want = {"lr": 0.5, "weight_decay": 1e-4, "momentum": 0.0}
    assert {k: float(v) for k, v in state["hyper"].items()} == pytest.approx(want, rel=1e-7)  # float32
    new, _ = opt.update({"w": torch.ones(3)}, state, params)
    assert torch.allclose(new["w"], torch.full((3,), 1 - 0.5 * (1 + 1e-4)))
    with pytest.raises(mnistfx.ConfigError, match="adam has no hyperparameter `momentum`"):
        mnistfx.adam().init(params, momentum=0.9)
    with pytest.raises(mnistfx.ConfigError, match="`lr` must be a finite number"):
        opt.init(params, lr=float("nan"))
    with pytest.raises(mnistfx.ConfigError, match="`lr` has 3 values for 4 member"):
        mnistfx.recipe("tuned", ensemble=4, lr=(1e-3, 2e-3, 3e-3))
    with pytest.raises(mnistfx.ConfigError, match="`lr` has 2 values for 1 member"):
        mnistfx.recipe("tuned", lr=(1e-3, 2e-3))
    with pytest.raises(TypeError, match="chain takes Transforms"):
        mnistfx.chain("bad", "clip")
    with pytest.raises(TypeError, match="make_train_step"):
        mnistfx.make_ensemble_step("not a step")


def test_members_with_rates_of_their_own_equal_separate_runs(mnist):
    """One vmapped step over 4 members with 4 learning rates (and momenta) = 4 separate steps, 30 times."""
    model = mnistfx.get_model("tuned")
    lrs, momenta = (1e-3, 3e-3, 1e-2, 5e-3), (0.0, 0.5, 0.9, 0.8)  # rates that stay stable
    opt = mnistfx.sgd(0.05, 0.9)
    step = mnistfx.make_train_step(model, opt)
    members = [model.init(i) for i in range(4)]
    opt_states = [opt.init(p, lr=lr, momentum=m) for p, lr, m in zip(members, lrs, momenta, strict=True)]
    separate = [(p, s) for p, s in zip(members, opt_states, strict=True)]
    params, opt_state = mnistfx.stack(members), mnistfx.stack(opt_states)
    ensemble = mnistfx.make_ensemble_step(step)
    g = torch.Generator().manual_seed(0)
    for i in range(30):
        idx = torch.arange(32 * i, 32 * (i + 1))
        x, noise = mnistfx.batch_inputs(model, mnist.train_images, idx, aug_key=g, drop_key=g, members=4)
        y = mnist.train_labels[idx]
        params, _, opt_state, _, _ = ensemble(params, {}, opt_state, x, y, noise)
        for j, (p, s) in enumerate(separate):
            p, _, s, _, _ = step(p, {}, s, x, y, {k: v[j] for k, v in noise.items()})
            separate[j] = (p, s)
    for j, (p, _) in enumerate(separate):
        mine = mnistfx.unstack(params)[j]
        for k in p:
            # vmapped and single convolutions round differently: measured about 3e-7 (a few float32 ulps
            # per step, not amplified at these rates; at lr 2e-2, momentum 0.8 they grow chaotically)
            assert (mine[k] - p[k]).norm() <= 1e-5 * p[k].norm(), (j, k)
    assert len({round(float(p["fc2.weight"].norm()), 3) for p, _ in separate}) == 4  # they did differ


def test_an_own_optimiser_trains_records_and_resumes_only_with_itself(mnist, tmp_path):
    import shutil

    cfg = mnistfx.recipe("tuned", epochs=2, train_size=960, val_size=0, compile=False)
    seen = []

    def keep(kind, **info):
        if kind == "checkpoint" and info["epoch"] == 1:
            shutil.copytree(tmp_path / "run", tmp_path / "after-1")

    run = mnistfx.train(
        cfg,
        data=mnist,
        optimizer=_adadelta(lr=0.5),
        checkpoint_dir=tmp_path / "run",
        on_event=keep,
        on_epoch=lambda state, metrics: seen.append((state.epoch, state.opt_state["step"].item(), metrics)),
        test=False,
    )
    assert run.config.optimizer == "adadelta" and run.config.lr == 0.5
    assert run.optimizer["name"] == "adadelta" and run.optimizer["hyper"] == {"lr": 0.5}
    assert run.val is None and run.history[0]["val_accuracy"] is None  # all training images, no validation
    assert [(e, s) for e, s, _ in seen] == [(1, 30.0), (2, 60.0)]
    assert seen[-1][2]["train_loss"] < seen[0][2]["train_loss"]
    # the run continues only with the optimiser it started with, and then as if never stopped
    with pytest.raises(mnistfx.ConfigError, match="trained with an optimiser of its own \\(adadelta\\)"):
        mnistfx.resume(tmp_path / "after-1", data=mnist)
    with pytest.raises(
        mnistfx.ConfigError, match="trained with adadelta \\(lr 0.5, schedule constant\\), not adadelta"
    ):
        mnistfx.resume(tmp_path / "after-1", data=mnist, optimizer=_adadelta(lr=0.4))
    with pytest.raises(mnistfx.ConfigError, match="trained with adadelta .*not adam"):
        mnistfx.resume(tmp_path / "after-1", data=mnist, optimizer=mnistfx.adam())
    again = mnistfx.resume(tmp_path / "after-1", data=mnist, optimizer=_adadelta(lr=0.5), test=False)
    assert all(torch.equal(again.params[k], run.params[k]) for k in run.params)


def test_a_sweep_on_the_command_line_reports_each_member(mnist, tmp_path, capsys):
    from mnistfx_cli.main import main

    status = main(
        [
            "train",
            "tuned",
            "--ensemble",
            "2",
            "--lr",
            "1e-3,3e-3",
            "--label-smoothing",
            "0,0.1",
            "--epochs",
            "1",
            "--train-size",
            "640",
            "--val-size",
            "500",
            "--no-compile",
            "--no-test",
            "--out",
            str(tmp_path / "sweep"),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "member 0: lr 0.001  label_smoothing 0  val" in out and "member 1: lr 0.003  label_smoothing 0.1  val" in out
    weights = mnistfx.load_model_weights(tmp_path / "sweep" / "weights.safetensors")
    assert weights.metadata["config"]["lr"] == [1e-3, 3e-3]


def test_a_loop_of_ones_own_over_the_trainer_is_train_bit_for_bit(mnist):
    """train() is the trainer's functions of a state in a loop: the same loop written out gives its bits."""
    cfg = mnistfx.recipe("tuned", epochs=2, train_size=640, val_size=500, compile=False)
    run = mnistfx.train(cfg, data=mnist, test=False)
    trainer = mnistfx.make_trainer(cfg, data=mnist)
    state = trainer.init_state()
    history = []
    for _ in range(cfg.epochs):
        state, metrics = trainer.train_epoch(state)
        history.append(metrics["train_loss"])
    assert (state.epoch, state.step) == (2, cfg.steps_per_epoch)
    assert all(torch.equal(state.params[k], run.params[k]) for k in run.params)
    assert history == [e["train_loss"] for e in run.history]
    assert trainer.evaluate(state, trainer.val_x, trainer.val_y).accuracy == run.val.accuracy


def test_a_step_of_ones_own_trains_compiled_and_resumes(mnist, tmp_path):
    """A user's step (here: the built-in step with an aux of its own and a smaller loss scale) goes through the
    loop as the built-in one: compiled, checkpointed mid-epoch, resumed to the same bits."""
    import shutil

    cfg = mnistfx.recipe("tuned", epochs=1, train_size=640, val_size=500, steps_per_call=1)
    model = mnistfx.get_model("tuned")
    opt = mnistfx.config_optimizer(cfg)

    def loss(logits, y):
        value = F.cross_entropy(logits, y)
        return 0.5 * value, {"confidence": logits.softmax(-1).amax(-1).mean()}

    step = mnistfx.make_train_step(model, opt, loss=loss)

    def keep(kind, **info):
        if kind == "checkpoint" and info["step"] == 10:
            shutil.copytree(tmp_path / "run", tmp_path / "at-10")

    full = mnistfx.train(
        cfg, data=mnist, step=step, checkpoint_dir=tmp_path / "run", checkpoint_every=10, on_event=keep, test=False
    )
    with pytest.raises(mnistfx.ConfigError, match="trained with a step of its own: pass it again, as `step`"):
        mnistfx.resume(tmp_path / "at-10", data=mnist)
    again = mnistfx.resume(tmp_path / "at-10", data=mnist, step=step, test=False)
    assert all(torch.equal(again.params[k], full.params[k]) for k in full.params)
    # its own loss (half the cross-entropy, which starts near log 10 and barely moves in 20 steps) was used
    assert 0.4 * math.log(10) < full.history[0]["train_loss"] < 0.6 * math.log(10)


def test_private_training_reports_its_privacy_and_resumes_as_it_started(mnist, tmp_path):
    import json
    import subprocess
    import sys

    from mnistfx.training.privacy import privacy_spent

    args = ["--epochs", "2", "--train-size", "2560", "--val-size", "500", "--batch-size", "256"]
    dp = ["--dp-noise", "1.1", "--dp-clip", "1.0", "--optimizer", "sgd", "--momentum", "0", "--lr", "0.15"]
    out = tmp_path / "dp"
    done = subprocess.run(
        [sys.executable, "-m", "mnistfx", "train", "dpcnn", *args, *dp, "--no-augment", "--decay", "0"]
        + ["--no-test", "--json", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    epsilons = [e["epsilon"] for e in summary["history"]]
    want = [privacy_spent(noise_multiplier=1.1, sample_rate=0.1, steps=10 * e, delta=1e-5) for e in (1, 2)]
    assert epsilons == pytest.approx(want, rel=1e-9) and epsilons[0] < epsilons[1]
    first, last = summary["history"]
    # 20 noisy steps: learning, slowly, from about chance (log 10) for an untrained 10-way classifier
    assert last["train_loss"] < first["train_loss"] < math.log(10) + 0.05
    # a private run continues with the settings it started with
    refused = subprocess.run(
        [sys.executable, "-m", "mnistfx", "train", "--resume", str(out), "--dp-noise", "2"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1
    assert "--resume continues a run with the settings it was started with: drop --dp-noise" in refused.stderr
    # stopped mid-epoch, continued: the same bits (eager here; the compiled step ran above)
    cfg = mnistfx.recipe(
        "dpcnn",
        epochs=1,
        train_size=2560,
        val_size=500,
        batch_size=256,
        dp_noise=1.1,
        optimizer="sgd",
        momentum=0.0,
        lr=0.15,
        augment=False,
        decay=0.0,
        compile=False,
    )
    full, again = train_and_resume_from_step_4(cfg, mnist, tmp_path)
    assert all(torch.equal(again.params[k], full.params[k]) for k in full.params)
    assert again.history[-1]["epsilon"] == full.history[-1]["epsilon"]


def test_an_optimiser_or_step_of_ones_own_that_cannot_train_is_refused_in_one_line(mnist, tmp_path):
    cfg = mnistfx.recipe("tuned", epochs=1, train_size=640, val_size=500, compile=False)

    def narrow(updates, buffers, params, hyper, step):  # broadcasts into the parameters if not checked
        return {k: g[..., :1] for k, g in updates.items()}, {}

    def grows(updates, buffers, params, hyper, step):  # a buffer that is not shaped like its parameter
        return updates, {"acc": {k: v[None] for k, v in buffers["acc"].items()}}

    for bad, words in (
        (mnistfx.chain("narrow", Transform("narrow", narrow)), "narrow's transform narrow must return one update"),
        (mnistfx.chain("grows", Transform("grows", grows, ("acc",))), "returned state of other names, shapes"),
    ):
        with pytest.raises(mnistfx.ConfigError, match=words):
            mnistfx.train(cfg, data=mnist, optimizer=bad, checkpoint_dir=tmp_path / "run", test=False)
        assert not (tmp_path / "run").exists()  # refused before anything was written
    step = mnistfx.make_train_step(mnistfx.get_model("tuned"), mnistfx.config_optimizer(cfg))
    step.gaussian_size = 10**12  # would draw 4 TB of noise per step
    with pytest.raises(mnistfx.ConfigError, match="gaussian_size attribute must be a whole number from 0 to"):
        mnistfx.make_trainer(cfg, data=mnist, step=step)
    step.gaussian_size = 0
    step.layout_optimization = "no"
    with pytest.raises(mnistfx.ConfigError, match="layout_optimization attribute must be True or False, not 'no'"):
        mnistfx.make_trainer(cfg, data=mnist, step=step)
    with pytest.raises(TypeError, match="layout_optimization must be True or False, not 0"):
        mnistfx.compile_step(step, "cpu", layout_optimization=0)
    del step.layout_optimization
    private = mnistfx.recipe("dpcnn", epochs=1, train_size=640, val_size=500, dp_noise=1.1, compile=False)
    with pytest.raises(mnistfx.ConfigError, match="`dp_noise` trains with the built-in DP-SGD step"):
        mnistfx.make_trainer(private, data=mnist, step=step)
    with pytest.raises(TypeError, match="optimizer must be a mnistfx.Optimizer"):
        mnistfx.make_trainer(cfg, data=mnist, optimizer="adam")
    with pytest.raises(mnistfx.ConfigError, match="adam has no hyperparameter `momentum` to give each member"):
        mnistfx.train(mnistfx.recipe("tuned", ensemble=2, momentum=(0.5, 0.9), val_size=500), data=mnist)
