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


def test_a_dark_digit_on_a_transparent_background_needs_invert(digits, tmp_path):
    paths = []
    for i, d in enumerate(digits):
        rgba = np.zeros((28, 28, 4), np.uint8)  # black strokes, transparent elsewhere
        rgba[..., 3] = d.numpy()
        Image.fromarray(rgba, "RGBA").save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    # Transparent is background: white for a dark digit (--invert), and the digit comes back.
    assert (mnistfx.read_digit_images(paths, invert=True).int() - digits.int()).abs().max() <= 1
    with pytest.raises(mnistfx.MnistfxError, match="shows no digit .*needs --invert"):
        mnistfx.read_digit_images(paths)  # black on black: refused with the fix, not guessed at


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


def test_exif_orientation_is_applied(digits, tmp_path):
    upright = 255 - digits[0].numpy()  # dark on light, as a photo
    stored = Image.fromarray(np.rot90(upright, k=-1).copy())  # stored turned; EXIF says to turn it back
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90° counter-clockwise to display"
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    (x,) = mnistfx.read_digit_images([tmp_path / "photo.jpg"], invert=True)
    assert (x.float() - digits[0].float()).abs().mean() < 6


def test_brackets_and_newlines_in_paths_are_printed_as_they_are(tuned_weights, tmp_path, capsys):
    import shutil

    from helpers import run_cli

    (tmp_path / "[").mkdir()
    odd = tmp_path / "[" / "x][red]w.safetensors"  # "[/x]" closes a tag rich never opened; "[red]" would vanish
    shutil.copy(tuned_weights, odd)
    code, out, err = run_cli(capsys, "eval", str(odd))
    assert code == 0 and f"from {odd}: test accuracy" in out, err
    digit = tmp_path / "a\nb.png"
    Image.fromarray(np.kron(np.eye(4, dtype=np.uint8) * 255, np.ones((7, 7), np.uint8))).save(digit)
    code, out, _ = run_cli(capsys, "predict", str(tuned_weights), str(digit))
    assert code == 0 and out.count("\n") == 1 and "a\\nb.png" in out


def test_a_failed_compile_is_one_line():
    def graph_break(x):
        return x + 1 if x.sum() > 0 else x  # data-dependent branch: fullgraph cannot capture it

    step = mnistfx.compile_step(graph_break, "cpu")
    with pytest.raises(mnistfx.MnistfxError, match="torch.compile failed .*--no-compile") as e:
        step(torch.ones(3))
    assert "\n" not in str(e.value)
