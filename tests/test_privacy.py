"""DP-SGD (mnistfx.training.privacy): the private step against a loop over examples, clipping, the
built-in DP models, and the privacy accounting against published values."""

import sys

import pytest
import torch
from torch.nn import functional as F

import mnistfx
from mnistfx.errors import ConfigError, MnistfxError
from mnistfx.models.dp_cnn import DPConvNet
from mnistfx.training.compiling import compile_step
from mnistfx.training.privacy import make_private_step, noise_for_epsilon, privacy_spent
from mnistfx.training.step import make_multi_step, make_train_step

EPS32 = torch.finfo(torch.float32).eps


class Capture:
    """An "optimiser" whose update returns the gradient it is given as the new parameters."""

    def init(self, params):
        return {}

    def update(self, grads, state, params):
        return dict(grads), state


def _batch(mnist, model, n, start=0):
    x = model.preprocess(mnist.train_images[start : start + n])
    return x, mnist.train_labels[start : start + n]


def _gaussian(size, seed=0):
    return torch.randn(size, generator=torch.Generator().manual_seed(seed))


def _naive(model, params, x, y, *, clip, sigma, z, noise=None):
    """DP-SGD's gradient by a loop over the examples: each gradient by autograd on a copy, clipped, summed,
    the noise added (split by sorted name), divided by the batch size. Also returns each example's norm."""
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    norms = []
    for i in range(x.shape[0]):
        p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        row = None if noise is None else {k: v[i : i + 1] for k, v in noise.items()}
        logits = model.apply(p, x[i : i + 1], train=noise is not None, noise=row)
        g = torch.autograd.grad(F.cross_entropy(logits, y[i : i + 1]), list(p.values()))
        g = dict(zip(p, g, strict=True))
        norm = torch.sqrt(sum(v.double().pow(2).sum() for v in g.values())).item()
        norms.append(norm)
        for k in total:
            total[k] += g[k] * min(1.0, clip / norm)
    offset = 0
    for k in sorted(params):
        size = params[k].numel()
        total[k] = (total[k] + sigma * clip * z[offset : offset + size].view(params[k].shape)) / x.shape[0]
        offset += size
    return total, torch.tensor(norms)


def _tolerance(n, clip, sigma, z):
    """How far two float32 computations of the noisy mean gradient may differ (vmap's batched kernels
    against autograd one example at a time). No coordinate of it can exceed ``clip + sigma * clip *
    max|z| / n`` (each clipped gradient is at most ``clip`` long); each is a sum of ``n`` clipped
    coordinates, each a few float32 reductions deep: 64 eps of that bound is far beyond their rounding
    (measured: 1 to 2 ulp, about 1000x inside) and far below any error in the clipping (a factor)."""
    return 64 * EPS32 * (clip + sigma * clip * z.abs().max().item() / n)


@pytest.mark.parametrize("name", ["dpcnn", "dpcnn_tanh"])
def test_private_step_matches_a_loop_over_examples(mnist, name):
    """16 real digits, a clip at the median norm (half the examples clipped), σ 1.1: the gradient the
    optimiser gets equals the naive loop's, and aux["clipped"] is the fraction clipped."""
    model = mnistfx.get_model(name)
    params = model.init(1)
    x, y = _batch(mnist, model, 16)
    _, norms = _naive(model, params, x, y, clip=1.0, sigma=0.0, z=torch.zeros(26010))
    clip = norms.median().item()
    step = make_private_step(model, Capture(), clip=clip, noise_multiplier=1.1)
    assert step.gaussian_size == sum(v.numel() for v in params.values()) == 26010
    z = _gaussian(step.gaussian_size)
    grads, state, _, loss, aux = step(params, {}, {}, x, y, {"gaussian": z})
    ref, norms = _naive(model, params, x, y, clip=clip, sigma=1.1, z=z)
    tol = _tolerance(16, clip, 1.1, z)
    for k in params:
        torch.testing.assert_close(grads[k], ref[k], rtol=0, atol=tol, msg=k)
    assert state == {}
    assert aux["clipped"].item() == pytest.approx((norms > clip).float().mean().item())
    with torch.no_grad():
        assert loss.item() == pytest.approx(F.cross_entropy(model.apply(params, x), y).item(), rel=1e-5)


def test_private_step_gives_each_example_its_own_dropout_noise(mnist):
    """`tuned` has dropout: example i is run with row i of the model's noise, as the loop does."""
    model = mnistfx.get_model("tuned")
    params = model.init(2)
    x, y = _batch(mnist, model, 8)
    noise = model.dropout_noise(8, key=torch.Generator().manual_seed(3))
    step = make_private_step(model, Capture(), clip=0.5, noise_multiplier=0.7)
    z = _gaussian(step.gaussian_size, 4)
    grads = step(params, {}, {}, x, y, {**noise, "gaussian": z})[0]
    ref, _ = _naive(model, params, x, y, clip=0.5, sigma=0.7, z=z, noise=noise)
    for k in params:
        torch.testing.assert_close(grads[k], ref[k], rtol=0, atol=_tolerance(8, 0.5, 0.7, z), msg=k)


def test_without_noise_or_clipping_it_is_the_plain_train_step(mnist):
    """σ 0 and a clip no gradient reaches: the same update (SGD with momentum, two steps) as make_train_step."""
    model = mnistfx.get_model("dpcnn")
    params = model.init(5)
    opt = mnistfx.sgd(0.1, momentum=0.9)
    private = make_private_step(model, opt, clip=1e6, noise_multiplier=0.0)
    plain = make_train_step(model, opt)
    a = b = (params, {}, opt.init(params))
    for i in range(2):
        x, y = _batch(mnist, model, 64, 64 * i)
        *a, loss_a, aux = private(*a, x, y, {"gaussian": _gaussian(private.gaussian_size, i)})
        *b, loss_b, _ = plain(*b, x, y, {})
        assert aux["clipped"].item() == 0.0
        torch.testing.assert_close(loss_a, loss_b)
    for k in params:
        # two SGD steps of lr 0.1 on gradients of size ~1 that agree to ~1e-6 relative
        torch.testing.assert_close(a[0][k], b[0][k], rtol=0, atol=1e-6, msg=k)
        assert not torch.equal(a[0][k], params[k])


def test_average_hook_sees_the_clipped_mean_and_the_noise_comes_after(mnist):
    """With `average` (here one process: its mean is itself, recorded) the hook gets the clipped mean
    without noise, and the step's gradient is what it returns plus the noise over `batch_size`."""
    model = mnistfx.get_model("dpcnn")
    params = model.init(13)
    x, y = _batch(mnist, model, 16)
    seen = []

    def average(grads, loss, state):
        seen.append(grads)
        return grads, loss, state

    z = _gaussian(26010, 14)
    step = make_private_step(model, Capture(), clip=0.5, noise_multiplier=1.3, average=average, batch_size=16)
    grads = step(params, {}, {}, x, y, {"gaussian": z})[0]
    alone = make_private_step(model, Capture(), clip=0.5, noise_multiplier=1.3)(params, {}, {}, x, y, {"gaussian": z})
    clean = make_private_step(model, Capture(), clip=0.5, noise_multiplier=0.0)(params, {}, {}, x, y, {"gaussian": z})
    for k in params:
        torch.testing.assert_close(grads[k], alone[0][k], rtol=0, atol=1e-7)
        torch.testing.assert_close(seen[0][k], clean[0][k], rtol=0, atol=1e-7)


def test_clipping_bounds_what_one_example_can_change(mnist):
    """The sensitivity DP-SGD's privacy rests on: removing one example moves the (un-noised) sum of the
    clipped gradients by at most `clip`, and a batch of one has a gradient no longer than `clip`."""
    model = mnistfx.get_model("dpcnn")
    params = model.init(6)
    clip = 1e-3  # far below every example's gradient norm: every one is clipped
    step = make_private_step(model, Capture(), clip=clip, noise_multiplier=0.0, batch_size=1)  # the sum itself
    x, y = _batch(mnist, model, 16)
    z = torch.zeros(step.gaussian_size)
    whole = step(params, {}, {}, x, y, {"gaussian": z})[0]
    without = step(params, {}, {}, x[1:], y[1:], {"gaussian": z})[0]
    one = step(params, {}, {}, x[:1], y[:1], {"gaussian": z})[0]

    def norm(g):
        return torch.sqrt(sum(v.double().pow(2).sum() for v in g.values())).item()

    assert norm({k: whole[k] - without[k] for k in whole}) == pytest.approx(clip, rel=1e-4)
    assert norm(one) == pytest.approx(clip, rel=1e-4)
    assert norm(whole) <= 16 * clip * (1 + 1e-4)


def test_several_steps_take_their_noise_in_order(mnist):
    """make_multi_step of the private step: k * gaussian_size numbers, the j-th block for the j-th step."""
    model = mnistfx.get_model("dpcnn")
    params = model.init(7)
    opt = mnistfx.sgd(0.1, momentum=0.0)
    step = make_private_step(model, opt, clip=1.0, noise_multiplier=1.1)
    x, y = _batch(mnist, model, 32)
    z = _gaussian(2 * step.gaussian_size, 8)
    multi = make_multi_step(step, 2)(params, {}, opt.init(params), x, y, {"gaussian": z})
    one = step(params, {}, opt.init(params), x[:16], y[:16], {"gaussian": z[: step.gaussian_size]})
    two = step(*one[:3], x[16:], y[16:], {"gaussian": z[step.gaussian_size :]})
    for k in params:
        torch.testing.assert_close(multi[0][k], two[0][k], rtol=0, atol=1e-7)
    assert multi[3].shape == (2,) and multi[4]["clipped"].shape == (2,)


def test_compiled_private_step_matches_eager(mnist):
    model = mnistfx.get_model("dpcnn")
    params = model.init(9)
    opt = mnistfx.sgd(0.15, momentum=0.0)
    step = make_private_step(model, opt, clip=1.0, noise_multiplier=1.1)
    x, y = _batch(mnist, model, 64)
    args = (params, {}, opt.init(params), x, y, {"gaussian": _gaussian(step.gaussian_size, 10)})
    eager = step(*args)
    assert step.layout_optimization is False  # compiled as train compiles it: without channels-last
    compiled = compile_step(step, torch.device("cpu"), layout_optimization=step.layout_optimization)(*args)
    for k in params:
        torch.testing.assert_close(compiled[0][k], eager[0][k], rtol=0, atol=1e-6, msg=k)
    torch.testing.assert_close(compiled[4]["clipped"], eager[4]["clipped"])


@pytest.mark.fast
@pytest.mark.parametrize("name", ["dpcnn", "dpcnn_tanh"])
def test_dp_models_equal_their_modules(name):
    """The built-in DP CNNs equal their nn.Module (as Opacus trains it) given the same parameters."""
    model = mnistfx.get_model(name)
    params = model.init(11)
    with torch.random.fork_rng():  # the module's own initialisation draws from the global generator
        net = DPConvNet(name)
    net.load_state_dict(params)
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        torch.testing.assert_close(model.apply(params, x), net(x), rtol=1e-5, atol=1e-6)
    assert name in mnistfx.MODELS


@pytest.mark.fast
def test_private_step_refusals():
    dpcnn, opt = mnistfx.get_model("dpcnn"), mnistfx.sgd(0.1)
    with pytest.raises(ConfigError, match="resnet has state"):
        make_private_step(mnistfx.get_model("resnet"), opt, clip=1.0, noise_multiplier=1.0)
    for clip in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ConfigError, match="`clip`"):
            make_private_step(dpcnn, opt, clip=clip, noise_multiplier=1.0)
    for sigma in (-0.1, float("nan"), float("inf"), None):
        with pytest.raises(ConfigError, match="`noise_multiplier`"):
            make_private_step(dpcnn, opt, clip=1.0, noise_multiplier=sigma)
    with pytest.raises(ConfigError, match="`precision`"):
        make_private_step(dpcnn, opt, clip=1.0, noise_multiplier=1.0, precision="fp16")
    with pytest.raises(ConfigError, match="`batch_size`"):
        make_private_step(dpcnn, opt, clip=1.0, noise_multiplier=1.0, average=lambda g, loss, s: (g, loss, s))
    with pytest.raises(ConfigError, match="`batch_size`"):
        make_private_step(dpcnn, opt, clip=1.0, noise_multiplier=1.0, batch_size=0)
    with pytest.raises(TypeError, match="opt must be an optimiser"):
        make_private_step(dpcnn, "sgd", clip=1.0, noise_multiplier=1.0)
    step = make_private_step(dpcnn, Capture(), clip=1.0, noise_multiplier=1.0)
    x, y = torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)
    for noise in ({}, {"gaussian": torch.zeros(26009)}, {"gaussian": torch.zeros(2, 26010)}):
        with pytest.raises(ValueError, match=r"noise\[.gaussian.\] must be 26010 standard normal numbers"):
            step(dpcnn.init(0), {}, {}, x, y, noise)
    with pytest.raises(TypeError, match="mnistfx.Model"):
        make_private_step("dpcnn", opt, clip=1.0, noise_multiplier=1.0)


# The accounting. Anchors, all at δ = 1e-5 on MNIST's 60,000 training images: TF Privacy's tutorial and
# JAX's example (σ 1.1, batch 256, 60 epochs of 234 steps) print ε = 3.01, and Opacus's example (σ 1.1,
# sample rate 0.004, 60 epochs) ε = 2.91. Both convert Rényi DP to (ε, δ) by Mironov's 2017 bound
# (ε = RDP(α) + log(1/δ) / (α - 1)); dp-accounting uses Balle et al.'s tighter 2020 conversion, which
# gives 2.594 and 2.503 for the same RDP curves (Opacus 1.6's own RDPAccountant agrees to 1e-8; the old
# conversion of dp-accounting's curve gives 3.006 and 2.905, the published values). PLD accounting is
# tighter still (2.380).
TF = {"noise_multiplier": 1.1, "sample_rate": 256 / 60000, "steps": 60 * 234, "delta": 1e-5}


@pytest.mark.fast
def test_privacy_spent_matches_the_published_accounting():
    pytest.importorskip("dp_accounting")
    eps = privacy_spent(**TF)
    # the tolerance: dp-accounting's grid of Rényi orders (steps of 0.1 below 11, then 1) decides the
    # third digit; a change of grid moves ε by less than 0.5 %
    assert eps == pytest.approx(2.594, rel=5e-3)
    assert eps < 3.01  # the tighter conversion never gives more than the published bound
    assert privacy_spent(noise_multiplier=1.1, sample_rate=0.004, steps=15000, delta=1e-5) == pytest.approx(
        2.503, rel=5e-3
    )
    pld = privacy_spent(**TF, accountant="pld")
    assert pld == pytest.approx(2.380, rel=1e-2) and pld < eps
    assert privacy_spent(**{**TF, "steps": 234}) < eps < privacy_spent(**{**TF, "noise_multiplier": 0.9})
    assert privacy_spent(**{**TF, "noise_multiplier": 0}) == float("inf")


@pytest.mark.fast
def test_noise_for_epsilon_inverts_privacy_spent():
    pytest.importorskip("dp_accounting")
    rest = {k: v for k, v in TF.items() if k != "noise_multiplier"}
    sigma = noise_for_epsilon(epsilon=privacy_spent(**TF), **rest)
    assert sigma == pytest.approx(1.1, rel=2e-4)
    for epsilon in (0.5, 3.0, 8.0):
        sigma = noise_for_epsilon(epsilon=epsilon, **rest)
        assert privacy_spent(noise_multiplier=sigma, **rest) <= epsilon
        assert privacy_spent(noise_multiplier=sigma * (1 - 1e-3), **rest) > epsilon  # the smallest, to 1e-3


@pytest.mark.fast
def test_accounting_refusals(monkeypatch):
    pytest.importorskip("dp_accounting")
    rest = {"delta": 1e-5, "sample_rate": 0.01, "steps": 100}
    for epsilon in (0, -1.0, float("nan"), float("inf"), "3"):
        with pytest.raises(ConfigError, match="`epsilon`"):
            noise_for_epsilon(epsilon=epsilon, **rest)
    with pytest.raises(ConfigError, match="`epsilon` 1e-06 cannot be reached"):
        noise_for_epsilon(epsilon=1e-6, **rest)
    for delta in (0, 1, 1.5, -1e-5, float("nan")):
        with pytest.raises(ConfigError, match="`delta`"):
            privacy_spent(noise_multiplier=1.0, **{**rest, "delta": delta})
    for rate in (0, 1.01, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="`sample_rate`"):
            noise_for_epsilon(epsilon=1.0, **{**rest, "sample_rate": rate})
    for steps in (0, 1.5, True, "10"):
        with pytest.raises(ConfigError, match="`steps`"):
            privacy_spent(noise_multiplier=1.0, **{**rest, "steps": steps})
    with pytest.raises(ConfigError, match="`noise_multiplier`"):
        privacy_spent(noise_multiplier=-1.0, **rest)
    with pytest.raises(ConfigError, match="`accountant`"):
        privacy_spent(noise_multiplier=1.0, **rest, accountant="prv")
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # as if it were not installed
    with pytest.raises(MnistfxError, match=r"pip install 'mnistfx\[privacy\]'"):
        privacy_spent(noise_multiplier=1.0, **rest)
