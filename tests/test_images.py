"""Digit images read from files: 16-bit and transparent images are read as a person sees them."""

import numpy as np
import pytest
import torch
from PIL import Image

import mnistfx


@pytest.fixture
def digits(mnist):
    return mnist.test_images[:4]


def test_16_bit_pngs_are_scaled_not_clipped(digits, tmp_path):
    deep, plain = [], []
    for i, d in enumerate(digits):
        deep.append(tmp_path / f"{i}-16.png")
        Image.fromarray(d.numpy().astype(np.uint16) * 257).save(deep[-1])  # the same digit, 16 bits deep
        with Image.open(deep[-1]) as im:
            assert im.mode.startswith("I")
        plain.append(tmp_path / f"{i}-8.png")
        Image.fromarray(d.numpy()).save(plain[-1])
    x = mnistfx.read_digit_images(deep)
    assert torch.equal(x, mnistfx.read_digit_images(plain))
    assert (x.int() - digits.int()).abs().max() <= 1  # gray as RGB luma: 255 reads as 254, as it always did


def test_a_dark_digit_on_a_transparent_background_is_the_digit(digits, tmp_path):
    paths = []
    for i, d in enumerate(digits):
        rgba = np.zeros((28, 28, 4), np.uint8)  # black strokes, transparent elsewhere
        rgba[..., 3] = d.numpy()
        Image.fromarray(rgba, "RGBA").save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    assert torch.equal(mnistfx.read_digit_images(paths), digits)
    assert torch.equal(mnistfx.read_digit_images(paths, invert=True), digits)  # the opaque strokes are the digit


def test_a_large_photo_is_shrunk_while_decoding_and_still_read(digits, tmp_path):
    big = np.kron(255 - digits[0].numpy(), np.ones((150, 150), np.uint8))  # 4200×4200, dark on light
    Image.fromarray(big).convert("RGB").save(tmp_path / "photo.jpg", quality=85)
    (x,) = mnistfx.read_digit_images([tmp_path / "photo.jpg"], invert=True)
    assert (x.float() - digits[0].float()).abs().mean() < 12  # the same digit, up to resampling


def test_strict_json_has_no_nan():
    assert mnistfx.to_json({"loss": float("nan"), "x": [1.5, float("inf")]}) == '{"loss": null, "x": [1.5, null]}'


@pytest.mark.parametrize("pred, labels, message", [
    (torch.tensor([10, 3]), torch.tensor([0, 3]), "pred must hold digits 0-9"),
    (torch.tensor([1, 2]), torch.tensor([1]), "got 2 predictions but 1 labels"),
    (torch.tensor([1.0]), torch.tensor([1]), "pred must be a 1-D int64 tensor"),
])
def test_metrics_from_predictions_checks_its_inputs(pred, labels, message):
    with pytest.raises(ValueError, match=message):
        mnistfx.metrics_from_predictions(pred, labels)
