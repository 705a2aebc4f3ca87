"""Shared fixtures: the real MNIST (fetched once into one shared data folder) and small slices."""

import pytest
import torch

import mnistfx


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
