"""Shared fixtures: the real MNIST (fetched once into one shared data folder) and small slices."""

from pathlib import Path

import pytest
import torch

import mnistfx

# One compile cache for this process and the commands the tests run (which choose it themselves): a graph
# compiled in one is found by the other instead of compiled again, cold, in every subprocess.
mnistfx.use_compile_cache()


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST, from $MNISTFX_DATA or the user cache; fetched there if absent."""
    return mnistfx.load_mnist()


@pytest.fixture(scope="session")
def test_slice(mnist):
    """The first 1,000 test images and labels."""
    return mnist.test_images[:1000], mnist.test_labels[:1000]


@pytest.fixture(autouse=True)
def _global_rng_untouched():
    """The library never reads or writes the global RNG: every test checks it."""
    before = torch.get_rng_state()
    yield
    assert torch.equal(before, torch.get_rng_state()), "the global RNG state changed"


@pytest.fixture(scope="session")
def notebook_ckpt():
    """The original notebook's published `tuned` checkpoint, in shared/ beside the repository."""
    path = Path(__file__).resolve().parents[2] / "shared" / "notebook" / "handwritten_digit_classfier_tuned.pth"
    if not path.is_file():
        pytest.skip(f"the notebook checkpoint is not at {path}")
    return path


@pytest.fixture(scope="session")
def tuned_weights(tmp_path_factory):
    """A freshly initialised `tuned` weights file."""
    path = tmp_path_factory.mktemp("weights") / "tuned.safetensors"
    mnistfx.save_weights(path, mnistfx.get_model("tuned").init(0), {"model": "tuned"})
    return path


@pytest.fixture(scope="session")
def trained_tuned(mnist, tmp_path_factory):
    """`tuned` trained with the fast recipe (seed 0, about 99.1 % on the test set; a minute or two, in
    float32 where the CPU has no bf16), saved as a run folder; the weights file's path."""
    run = mnistfx.train(mnistfx.recipe("tuned", "fast", seed=0), data=mnist, test=False)
    return mnistfx.save_run(run, tmp_path_factory.mktemp("trained") / "tuned-fast")["weights"]
