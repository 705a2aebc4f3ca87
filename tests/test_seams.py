"""The everyday seams: float images wherever a user evaluates, a run's folder and history, the most
confident mistakes, and models to and from ``nn.Module`` (pickled, and made of pytorch/examples' MNIST
``Net``). Everything on real MNIST slices."""

import json
import pickle

import numpy as np
import pytest
import torch
from helpers import same_bits
from own_models import bn_mlp, mlp
from torch import nn
from torch.nn import functional as F

import mnistfx
from mnistfx.trained import plots


@pytest.fixture(scope="module")
def tuned(tuned_weights):
    return mnistfx.load_model_weights(tuned_weights)


@pytest.fixture(scope="module")
def u8(mnist):
    return mnist.test_images[:500]


# ---- float images ---------------------------------------------------------------------------------
# uint8 images are divided by 255 in float32; float images are made float32 and used as they are. So
# float32 images made the same way (u8.float() / 255) are the same model input, bit for bit, and so are
# float64 ones (u8.double() / 255): the quotient u/255 (u = 1..254) repeats the 8 bits of u in binary,
# so rounded to float64 it is never exactly halfway between two float32 numbers, and rounding it on to
# float32 gives float32's correctly rounded quotient. The logits must then be identical, not close.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (784,)])
def test_float_images_in_0_1_give_the_uint8_results_bit_for_bit(tuned, u8, mnist, dtype, shape):
    x = (u8.to(dtype) / 255).reshape(-1, *shape)
    labels = mnist.test_labels[:500]
    model, params = tuned.model, tuned.params
    assert torch.equal(mnistfx.logits(model, params, x), mnistfx.logits(model, params, u8))
    assert torch.equal(mnistfx.probabilities(model, params, x), tuned.probabilities(u8))
    assert torch.equal(tuned.probabilities(x), tuned.probabilities(u8))
    assert torch.equal(mnistfx.predict(model, params, x), mnistfx.predict(model, params, u8))
    a, b = mnistfx.evaluate(model, params, x, labels), tuned.evaluate(u8, labels)
    assert a.loss == b.loss and torch.equal(a.confusion, b.confusion)
    assert torch.equal(model.preprocess(x), model.preprocess(u8))


def test_float_images_of_an_ensemble_and_of_each_member(tuned, u8, mnist):
    model = tuned.model
    stacked = mnistfx.stack([model.init(1), model.init(2)])
    x, labels = u8.float() / 255, mnist.test_labels[:500]
    assert torch.equal(
        mnistfx.probabilities(model, stacked, x, members=2), mnistfx.probabilities(model, stacked, u8, members=2)
    )
    for a, b in zip(
        mnistfx.evaluate_members(model, stacked, x, labels, members=2),
        mnistfx.evaluate_members(model, stacked, u8, labels, members=2),
        strict=True,
    ):
        assert a.loss == b.loss and torch.equal(a.confusion, b.confusion)


def test_half_precision_images_are_widened_exactly(tuned, u8):
    for dtype in (torch.bfloat16, torch.float16):
        x = u8.to(dtype) / 255  # rounded to 8 (11) bits: other values than u/255, which widen exactly
        assert torch.equal(tuned.logits(x), tuned.logits(x.float()))


def test_a_perturbation_of_a_tenth_of_a_grey_level_reaches_the_logits(tuned, u8):
    x = u8[:64].float() / 255
    sign = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.5, -1.0, 1.0)
    adversarial = (x + 0.1 / 255 * sign).clamp(0, 1)
    # rounded to 256 levels, as a uint8-only path would, the perturbation is gone ...
    assert torch.equal((adversarial * 255).round().to(torch.uint8), u8[:64])
    # ... and as floats it reaches every image's logits
    moved = (tuned.logits(adversarial) - tuned.logits(u8[:64])).abs().amax(1)
    assert bool((moved > 0).all()) and float(moved.max()) < 0.05


def test_plot_mistakes_draws_float_images_as_it_draws_uint8_ones(tuned, u8, mnist, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from PIL import Image

    labels, probs = mnist.test_labels[:500], tuned.probabilities(u8)
    titles = []
    save = plots._save
    tiles = []

    def keep(fig, path):
        titles.append(fig._suptitle.get_text())
        tiles.append([ax.get_title() for ax in fig.axes if ax.get_title()])
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    a = mnistfx.plot_mistakes(u8, labels, probs, tmp_path / "u8.png", most=16)
    b = mnistfx.plot_mistakes(u8.double() / 255, labels, probs, tmp_path / "f.png", most=16, data_name="PGD images")
    pixels = [np.asarray(Image.open(p).convert("L"), dtype=np.int16) for p in (a, b)]
    assert pixels[0].shape == pixels[1].shape
    # the same tiles (the titles differ: compare the drawing below the title), not black ones
    body = slice(pixels[0].shape[0] // 8, None)
    assert np.abs(pixels[0][body] - pixels[1][body]).max() <= 1
    assert (pixels[1][body] > 200).sum() > 1000  # white ink on the tiles, not all-black tiles
    assert "on the test set" in titles[0] and "on the PGD images (500 images)" in titles[1]
    # each tile says true→predicted and the probability given to the prediction, most confident first
    conf, pred = probs.max(1)
    wrong = sorted((i for i in range(500) if pred[i] != labels[i]), key=lambda i: -float(conf[i]))[:16]
    assert tiles[0] == tiles[1] == [f"{labels[i]}→{pred[i]} {100 * float(conf[i]):.0f}%" for i in wrong]


def test_top_mistakes_are_the_most_confident_wrong_predictions(tuned, u8, mnist):
    labels = mnist.test_labels[:500]
    probs = tuned.probabilities(u8)
    found = mnistfx.top_mistakes(probs, labels, 10)
    conf, pred = probs.max(1)
    wrong = sorted((i for i in range(500) if pred[i] != labels[i]), key=lambda i: (-float(conf[i]), i))
    assert found.total == len(wrong) and found.indices.tolist() == wrong[:10]
    assert found.predicted.tolist() == pred[wrong[:10]].tolist() and found.true.tolist() == labels[wrong[:10]].tolist()
    assert torch.equal(found.confidence, conf[wrong[:10]])
    assert mnistfx.top_mistakes(probs, labels, 0).indices.numel() == 0
    assert len(mnistfx.top_mistakes(probs, labels, 10**6).indices) == len(wrong)
    indices, predicted, true, confidence, total = found  # a tuple too
    assert total == len(wrong)


# ---- runs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_run(mnist, tmp_path_factory):
    """A short run trained into its folder, then saved beside its checkpoint (as `mnistfx train` does)."""
    folder = tmp_path_factory.mktemp("seams") / "run"
    config = mnistfx.recipe("tuned", epochs=2, train_size=640, val_size=500, compile=False, seed=3)
    run = mnistfx.train(config, data=mnist, checkpoint_dir=folder, test=False)
    mnistfx.save_run(run, folder)  # beside the checkpoint train wrote: no result there yet
    return run, folder


def test_save_run_refuses_a_folder_that_holds_a_run_unless_told(saved_run, tmp_path):
    run, folder = saved_run
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(mnistfx.RunFolderError, match=r"holds a finished run .*`overwrite=True`") as e:
        mnistfx.save_run(run, folder)
    assert "\n" not in str(e.value) and {p.name: p.read_bytes() for p in folder.iterdir()} == before
    other = mnistfx.Run(run.config, {k: v + 1 for k, v in run.params.items()}, history=run.history)
    mnistfx.save_run(other, folder, overwrite=True)
    assert torch.equal(
        mnistfx.load_model_weights(folder / "weights.safetensors").params["fc4.bias"], other.params["fc4.bias"]
    )
    mnistfx.save_run(run, folder, overwrite=True)  # as it was
    assert same_bits(mnistfx.load_model_weights(folder / "weights.safetensors").params, run.params)


def test_load_history_reads_what_save_run_wrote(saved_run):
    run, folder = saved_run
    for where in (folder, folder / "weights.safetensors", folder / "history.json", str(folder)):
        assert mnistfx.load_history(where) == run.history
    assert [h["epoch"] for h in run.history] == [1, 2]


def test_plot_run_takes_the_folder_or_a_file_in_it(saved_run, mnist, tmp_path):
    pytest.importorskip("matplotlib")
    _, folder = saved_run
    data = mnistfx.MNIST(
        mnist.train_images[:10], mnist.train_labels[:10], mnist.test_images[:300], mnist.test_labels[:300], mnist.root
    )
    paths = mnistfx.plot_run(folder / "weights.safetensors", out=tmp_path, data=data)
    assert sorted(p.name for p in paths) == ["confusion.png", "history.png", "mistakes.png"]
    with pytest.raises(mnistfx.MnistfxError) as e:
        mnistfx.plot_run(tmp_path / "gone" / "weights.safetensors", data=data)
    assert str(e.value).count("weights.safetensors") == 1 and "does not exist" in str(e.value)


# ---- to and from nn.Module -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tuned", "resnet", "own_mlp", "own_bn_mlp"])
def test_to_module_pickles_and_gives_the_same_outputs_after(name, mnist):
    model = {"own_mlp": mlp, "own_bn_mlp": bn_mlp}.get(name) or mnistfx.get_model(name)
    params = model.init(7)
    state = model.init_state(params)
    module = mnistfx.to_module(model, params, state)
    loaded = pickle.loads(pickle.dumps(module))  # what multiprocessing and torch.save do with it
    x = model.preprocess(mnist.test_images[:16])
    with torch.no_grad():
        assert not loaded.training and loaded.mnistfx_model.name == model.name
        assert torch.equal(loaded(x), module(x))


def test_a_module_of_a_model_with_local_functions_says_why_it_cannot_be_pickled():
    def init(g):
        return {"w": torch.randn(784, 10, generator=g)}

    local = mnistfx.Model("local_model", init, lambda params, x: x.flatten(1) @ params["w"])
    with pytest.raises(pickle.PicklingError, match="'local_model' is not registered and its functions cannot be"):
        pickle.dumps(mnistfx.to_module(local, local.init(0)))


def test_weights_to_module_of_one_model_and_of_an_ensemble_member(tuned, u8):
    module = tuned.to_module()
    with torch.no_grad():
        torch.testing.assert_close(module(tuned.model.preprocess(u8)), tuned.logits(u8), rtol=0, atol=0)
    model = tuned.model
    ensemble = mnistfx.Weights(model, mnistfx.stack([model.init(1), model.init(2)]), {}, {}, members=2)
    with torch.no_grad():
        second = ensemble.to_module(member=1)(model.preprocess(u8))
    assert torch.equal(second, mnistfx.logits(model, model.init(2), u8))


class Net(nn.Module):
    """pytorch/examples' MNIST network, as its users write it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


def _port_apply(params, x, *, train=False, noise=None):
    """Net by hand, as a mnistfx model: dropout from the noise, a unit kept where its noise is ≥ p."""
    x = F.relu(F.conv2d(x, params["conv1.weight"], params["conv1.bias"]))
    x = F.max_pool2d(F.relu(F.conv2d(x, params["conv2.weight"], params["conv2.bias"])), 2)
    if train:
        x = x * (noise["dropout1"] >= 0.25) * (1 / 0.75)  # scaled as mnistfx's own models scale
    x = F.relu(F.linear(x.flatten(1), params["fc1.weight"], params["fc1.bias"]))
    if train:
        x = x * (noise["dropout2"] >= 0.5) * (1 / 0.5)
    return F.log_softmax(F.linear(x, params["fc2.weight"], params["fc2.bias"]), dim=1)


def _port_noise(n, g, device):
    return {
        "dropout1": torch.rand(n, 64, 12, 12, generator=g, device=device),
        "dropout2": torch.rand(n, 128, generator=g, device=device),
    }


@pytest.fixture(scope="module")
def net():
    with torch.random.fork_rng():  # Net() draws its parameters from the global generator
        module = Net()
    return module


def test_from_module_runs_pytorch_examples_net_as_its_hand_port(net, mnist):
    model = mnistfx.from_module(net, normalize=(0.1307, 0.3081))
    port = mnistfx.Model("net_port", lambda g: model.init(g), _port_apply, noise=_port_noise, normalize=model.normalize)
    params = model.init(0)
    assert model.name == "net" and not model.has_state and model.shapes() == port.shapes()
    assert all(torch.equal(params[k], v) for k, v in model.init(0).items())  # a function of the key
    assert not torch.equal(params["fc1.weight"], model.init(1)["fc1.weight"])
    x = model.preprocess(mnist.test_images[:32])
    torch.testing.assert_close(model.apply(params, x), port.apply(params, x), rtol=0, atol=0)
    noise = model.dropout_noise(32, key=5)
    assert {k: v.shape for k, v in noise.items()} == {k: v.shape for k, v in port.dropout_noise(32, key=5).items()}
    torch.testing.assert_close(
        model.apply(params, x, train=True, noise=noise), port.apply(params, x, train=True, noise=noise), rtol=0, atol=0
    )
    assert not torch.equal(model.apply(params, x, train=True, noise=noise), model.apply(params, x))
    # the module itself, given the same parameters, agrees in eval mode; it was not changed
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.random.fork_rng():
        own = Net()
    own.load_state_dict(params)
    with torch.no_grad():
        torch.testing.assert_close(own.eval()(x), model.apply(params, x), rtol=0, atol=0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # and its current values are a params dict
    current = {k: v.detach().float() for k, v in net.named_parameters()}
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), model.apply(current, x), rtol=0, atol=0)


def test_a_model_from_a_module_trains(net, mnist):
    model = mnistfx.register_model(
        mnistfx.from_module(net, name="examples_net", normalize=(0.1307, 0.3081)), replace=True
    )
    config = mnistfx.recipe("examples_net", epochs=1, train_size=1280, val_size=500, compile=False, seed=1)
    run = mnistfx.train(config, data=mnist, test=False)
    assert run.val.accuracy > 0.6, run.val.accuracy  # 40 steps from PyTorch's default init: 76 %
    assert model is mnistfx.get_model("examples_net")


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout2d(0.3)
        self.fc = nn.Linear(8 * 13 * 13, 10)

    def forward(self, x):
        return self.fc(self.drop(F.relu(self.bn(self.conv(x)))).flatten(1))


def test_batch_norm_statistics_are_the_model_state(mnist):
    with torch.random.fork_rng():
        module = BNNet()
    model = mnistfx.from_module(module)
    params = model.init(0)
    state = model.init_state(params)
    assert set(state) == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert model._noise_shapes == {"drop": (8, 1, 1)}  # one number per channel
    x = model.preprocess(mnist.test_images[:64])
    keep = {"drop": torch.ones(64, 8, 1, 1)}  # keep every channel (scaled by 1 / 0.7)
    logits, new_state = model.forward(params, state, x, train=True, noise=keep)
    with torch.random.fork_rng():
        reference = BNNet()
    reference.load_state_dict({**params, **state})
    reference.train()
    h = F.relu(reference.bn(reference.conv(x))) * (1 / 0.7)  # the module's training pass, all channels kept
    torch.testing.assert_close(logits, reference.fc(h.flatten(1)), rtol=1e-6, atol=1e-6)
    for k, v in reference.state_dict().items():
        if k in new_state:
            torch.testing.assert_close(new_state[k], v, rtol=1e-6, atol=1e-7)
    assert int(new_state["bn.num_batches_tracked"]) == 1 and int(state["bn.num_batches_tracked"]) == 0  # a new state
    with torch.no_grad():
        torch.testing.assert_close(model.apply(params, x, state=new_state), reference.eval()(x), rtol=1e-6, atol=1e-6)


def test_a_saved_history_with_extra_fields_and_no_validation_is_read(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 0.5, "val_loss": None, "val_accuracy": None, "seconds": 1.0, "epsilon": 0.4},
        {"epoch": 2, "train_loss": 0.3, "member_val_accuracy": [0.9, 0.91], "optimizer": "sgd"},
    ]
    (tmp_path / "history.json").write_text(json.dumps({"history": history}))
    assert mnistfx.load_history(tmp_path) == history
