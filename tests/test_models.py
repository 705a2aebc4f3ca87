import math

import pytest
import torch

import mnistfx
from mnistfx.constants import NOTEBOOK_MODELS
from mnistfx.models.notebook_checkpoint import to_notebook_state_dict
from mnistfx.models.notebook_cnns import NotebookNet


@pytest.mark.parametrize("name, count", [("tuned", 477_738), ("cnn", 2_624_669)])
@pytest.mark.fast
def test_parameter_counts(name, count):
    params = mnistfx.get_model(name).init(0)
    assert mnistfx.num_params(params) == count
    assert list(params) == [
        f"{layer}.{kind}" for layer in ("conv1", "conv2", "fc1", "fc2", "fc3", "fc4") for kind in ("weight", "bias")
    ]
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params.values())


@pytest.mark.parametrize("name", NOTEBOOK_MODELS)
@pytest.mark.fast
def test_init_statistics(name):
    params = mnistfx.get_model(name).init(123)
    for key, p in params.items():
        layer, kind = key.split(".")
        fan_in = math.prod(params[f"{layer}.weight"].shape[1:])
        bound = 1 / math.sqrt(fan_in)
        if layer.startswith("fc") and kind == "weight":  # Normal(0, 1/sqrt(fan_in))
            assert abs(p.std().item() / bound - 1) < 0.05 + 3 / math.sqrt(p.numel()), key
            assert abs(p.mean().item()) < 4 * bound / math.sqrt(p.numel()), key
        elif layer.startswith("fc"):
            assert torch.count_nonzero(p) == 0, key
        else:  # PyTorch's default for convolutions: Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
            assert p.abs().max() <= bound, key
            if p.numel() > 100:
                assert abs(p.std().item() / (bound / math.sqrt(3)) - 1) < 0.15, key


@pytest.mark.fast
def test_init_is_a_function_of_the_key():
    model = mnistfx.get_model("tuned")
    a, b, c = model.init(7), model.init(7), model.init(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])
    g = torch.Generator().manual_seed(7)
    assert torch.equal(model.init(g)["fc1.weight"], a["fc1.weight"])


@pytest.mark.parametrize("name", NOTEBOOK_MODELS)
@pytest.mark.fast
def test_apply_matches_the_notebook_module(name, synthetic):
    model = mnistfx.get_model(name)
    params = model.init(3)
    with torch.random.fork_rng():  # nn.Linear's own init draws from the global RNG
        net = NotebookNet(name).eval()
    net.load_state_dict(to_notebook_state_dict(params))
    x = model.preprocess(synthetic.test_images[:64])
    with torch.no_grad():
        torch.testing.assert_close(model.apply(params, x), net(x), rtol=1e-5, atol=1e-5)


def test_notebook_checkpoint_scores_9905_on_the_full_test_set(mnist, notebook_ckpt):
    w = mnistfx.load_model_weights(notebook_ckpt)
    assert w.model.name == "tuned" and mnistfx.num_params(w.params) == 477_738 and w.members is None
    m = w.evaluate(mnist.test_images, mnist.test_labels)
    assert m.correct == 9905 and m.n == 10000


@pytest.mark.fast
def test_dropout_is_keyed_and_drops_at_its_rate(synthetic):
    model = mnistfx.get_model("tuned")
    params = model.init(0)
    x = model.preprocess(synthetic.test_images[:256])
    with torch.no_grad():
        eval_out = model.apply(params, x)
        a = model.apply(params, x, train=True, key=5)
        b = model.apply(params, x, train=True, key=5)
        c = model.apply(params, x, train=True, key=6)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, eval_out)
    noise = model.dropout_noise(20000, key=1)
    assert set(noise) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    assert abs((noise["fc1"] < 0.5).float().mean().item() - 0.5) < 0.01
    with pytest.raises(ValueError, match="needs a key"):
        model.apply(params, x, train=True)


@pytest.mark.fast
def test_unknown_model_is_a_clear_error():
    with pytest.raises(
        ValueError,
        match="unknown model .lenet.: choose one of tuned, cnn, resnet, dpcnn, dpcnn_tanh, smallcnn, madrycnn",
    ):
        mnistfx.get_model("lenet")


@pytest.mark.fast
def test_padded_chunks_give_the_same_logits(synthetic):
    model = mnistfx.get_model("tuned")
    params = model.init(0)
    images = synthetic.test_images[:250]
    plain = mnistfx.logits(model, params, images, batch_size=100)
    padded = mnistfx.logits(model, params, images, batch_size=100, forward=lambda p, x: model.apply(p, x))
    assert plain.shape == padded.shape == (250, 10)
    torch.testing.assert_close(plain, padded)


@pytest.mark.fast
def test_bad_images_are_a_clear_error():
    model = mnistfx.get_model("tuned")
    params = model.init(0)
    with pytest.raises(TypeError, match=r"must be uint8 \(0-255\) or float in \[0, 1\], not torch.int64"):
        mnistfx.predict(model, params, torch.zeros(2, 28, 28, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"float images must hold values in \[0, 1\], not 0..255"):
        mnistfx.predict(model, params, torch.arange(2 * 784.0).reshape(2, 28, 28) % 256)
    assert mnistfx.predict(model, params, torch.zeros(2, 28, 28)).shape == (2,)  # float images in [0, 1]
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28\)"):
        mnistfx.predict(model, params, torch.zeros(2, 32, 32, dtype=torch.uint8))
