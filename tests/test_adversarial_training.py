"""Adversarial training: the step is FGSM (or PGD) from a random start, then an ordinary update; it trains
through the loop, resumes bit for bit, and makes a model that withstands PGD far better than clean training."""

import math

import pytest
import torch
from helpers import assert_one_line_error, run_cli, train_and_resume_from_step_4

import mnistfx
from mnistfx.models.attacks import project


def test_one_step_is_an_attack_from_a_random_start_then_an_update(mnist):
    model = mnistfx.get_model("smallcnn")
    params = model.init(0)
    opt = mnistfx.adam(lr=1e-3)
    opt_state = opt.init(params)
    x = model.preprocess(mnist.train_images[:64])
    y = mnist.train_labels[:64]
    z = torch.randn(64 * 784, generator=torch.Generator().manual_seed(1))
    for steps, size in ((1, 0.375), (3, 0.1)):
        step = mnistfx.make_adversarial_step(model, opt, eps=0.3, batch_size=64, steps=steps, step_size=size)
        assert step.gaussian_size == 64 * 784
        got = step(params, {}, opt_state, x, y, {"gaussian": z})
        start = torch.special.erf(z / math.sqrt(2)).reshape(x.shape)  # uniform in [-1, 1]
        xa = project(x + 0.3 * start, x, 0.3)
        attack = mnistfx.make_attack_step(model)
        for _ in range(steps):
            xa, _ = attack(params, {}, xa, x, y, torch.tensor(0.3), torch.tensor(size))
        want = mnistfx.make_train_step(model, opt)(params, {}, opt_state, xa, y, {})
        for k in params:
            torch.testing.assert_close(got[0][k], want[0][k], rtol=0, atol=0)
        assert got[3] == want[3]
    u = torch.special.erf(z / math.sqrt(2))  # 50,176 numbers: mean 0 and variance 1/3 within 5 standard errors
    assert abs(u.mean()) < 5 * math.sqrt(1 / 3 / u.numel()) and abs(u.var() - 1 / 3) < 5 * math.sqrt(4 / 45 / u.numel())


def test_adversarial_training_withstands_pgd_where_clean_training_does_not(mnist):
    """Two short runs of smallcnn on 6,000 images (the adversarial recipe's schedule, eager), one clean and one
    FGSM-trained at ε 0.1: PGD-20 at ε 0.1 on 500 validation images breaks half of the first and a sixth of
    the second (measured: 50 % and 83 % left)."""
    base = dict(epochs=2, train_size=6000, adv_steps=1, adv_warmup=0.0, compile=False)
    clean = mnistfx.train(mnistfx.recipe("smallcnn", "adversarial", adv_eps=None, **base), data=mnist, test=False)
    robust = mnistfx.train(mnistfx.recipe("smallcnn", "adversarial", adv_eps=0.1, **base), data=mnist, test=False)
    assert robust.config.adv_eps == 0.1 and robust.history[-1]["val_accuracy"] > 0.9
    _, val = mnistfx.train_val_split(0, 5000)
    x, y = mnist.train_images[val[:500]], mnist.train_labels[val[:500]]
    model = mnistfx.get_model("smallcnn")

    def under_pgd(run):
        adv = mnistfx.pgd(model, run.params, x, y, eps=0.1, steps=20, step_size=0.01)
        return mnistfx.evaluate(model, run.params, adv, y).accuracy

    assert under_pgd(clean) < 0.65 and under_pgd(robust) > 0.75


def test_the_radius_ramps_up_over_the_first_steps(mnist):
    """With ``ramp_steps=4`` the attack's radius at the optimiser's step t is ε (t + 1) / 4 until it reaches ε:
    the adversarial images of step 0 stay within ε / 4 (seen through the update: the same step on images
    attacked within ε / 4 by hand)."""
    model = mnistfx.get_model("smallcnn")
    params = model.init(0)
    opt = mnistfx.sgd(lr=0.1, momentum=0.0)
    x, y = model.preprocess(mnist.train_images[:32]), mnist.train_labels[:32]
    z = torch.randn(32 * 784, generator=torch.Generator().manual_seed(2))
    ramped = mnistfx.make_adversarial_step(model, opt, eps=0.4, batch_size=32, ramp_steps=4)
    for t, radius in ((0, 0.1), (1, 0.2), (3, 0.4), (9, 0.4)):
        state = {**opt.init(params), "step": torch.tensor(float(t))}
        plain = mnistfx.make_adversarial_step(model, opt, eps=radius, batch_size=32, step_size=1.25 * radius)
        got, want = ramped(params, {}, state, x, y, {"gaussian": z}), plain(params, {}, state, x, y, {"gaussian": z})
        for k in params:
            torch.testing.assert_close(got[0][k], want[0][k], rtol=1e-6, atol=1e-7)


def test_an_adversarial_run_resumes_bit_for_bit(mnist, tmp_path):
    cfg = mnistfx.recipe(
        "smallcnn", epochs=1, train_size=1200, val_size=500, batch_size=100, adv_eps=0.2, adv_steps=2, compile=False
    )
    full, again = train_and_resume_from_step_4(cfg, mnist, tmp_path)
    assert all(torch.equal(again.params[k], full.params[k]) for k in full.params)


@pytest.mark.fast
@pytest.mark.parametrize(
    "fields, words",
    [
        ({"adv_eps": 0.0}, "`adv_eps` must be a radius above 0"),
        ({"adv_eps": 1.5}, "`adv_eps` must be a radius above 0"),
        ({"adv_eps": float("nan")}, "`adv_eps` must be a radius above 0"),
        (
            {"adv_steps": 3},
            "`adv_steps`, `adv_step_size` and `adv_warmup` belong to adversarial training: set `adv_eps`",
        ),
        ({"adv_eps": 0.3, "adv_steps": 0}, "`adv_steps` must be a whole number from 1 to 100"),
        ({"adv_eps": 0.3, "adv_step_size": 2.0}, "`adv_step_size` must be above 0 and at most 1"),
        ({"adv_eps": 0.3, "dp_noise": 1.0}, "DP-SGD (`dp_noise`) or adversarially (`adv_eps`), not both"),
    ],
)
def test_bad_adversarial_settings_are_refused(fields, words):
    with pytest.raises(mnistfx.ConfigError, match=None) as e:
        mnistfx.recipe("smallcnn", **fields)
    assert words in str(e.value)


@pytest.mark.fast
def test_adversarial_training_refuses_a_step_or_loss_of_ones_own(synthetic):
    cfg = mnistfx.recipe("smallcnn", adv_eps=0.3, epochs=1, compile=False, train_size=640, val_size=500)
    with pytest.raises(mnistfx.ConfigError, match="not a loss function of your own"):
        mnistfx.train(cfg, data=synthetic, loss=lambda logits, y: logits.sum())
    step = mnistfx.make_train_step(mnistfx.get_model("smallcnn"), mnistfx.adam(lr=1e-3))
    with pytest.raises(mnistfx.ConfigError, match="leave out `step`"):
        mnistfx.train(cfg, data=synthetic, step=step)


@pytest.mark.fast
def test_the_command_line_names_its_flags(capsys):
    code, _, err = run_cli(capsys, "train", "smallcnn", "--adv-steps", "3")
    assert_one_line_error(
        code, err, "--adv-steps, --adv-step-size and --adv-warmup belong to adversarial training: set --adv-eps"
    )
