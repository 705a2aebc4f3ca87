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
    x = mnistfx.read_digit_images(deep, prepare=False)
    assert torch.equal(x, mnistfx.read_digit_images(plain, prepare=False))
    assert (x.int() - digits.int()).abs().max() <= 1  # gray as RGB luma: 255 reads as 254, as it always did


def test_a_dark_digit_on_a_transparent_background_is_the_digit(digits, tmp_path):
    paths = []
    for i, d in enumerate(digits):
        rgba = np.zeros((28, 28, 4), np.uint8)  # black strokes, transparent elsewhere
        rgba[..., 3] = d.numpy()
        Image.fromarray(rgba, "RGBA").save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    # Transparent is background; the dark strokes say it is a dark digit, and the digit comes back.
    assert (mnistfx.read_digit_images(paths, prepare=False).int() - digits.int()).abs().max() <= 1
    assert (mnistfx.read_digit_images(paths, invert=True, prepare=False).int() - digits.int()).abs().max() <= 1


def test_a_large_photo_is_shrunk_while_decoding_and_still_read(digits, tmp_path):
    big = np.kron(255 - digits[0].numpy(), np.ones((150, 150), np.uint8))  # 4200×4200, dark on light
    Image.fromarray(big).convert("RGB").save(tmp_path / "photo.jpg", quality=85)
    (x,) = mnistfx.read_digit_images([tmp_path / "photo.jpg"], prepare=False)  # dark on light: found from the border
    assert (x.float() - digits[0].float()).abs().mean() < 12  # the same digit, up to resampling


def test_strict_json_has_no_nan():
    assert mnistfx.to_json({"loss": float("nan"), "x": [1.5, float("inf")]}) == '{"loss": null, "x": [1.5, null]}'


@pytest.mark.parametrize(
    "pred, labels, message",
    [
        (torch.tensor([10, 3]), torch.tensor([0, 3]), "pred must hold digits 0-9"),
        (torch.tensor([1, 2]), torch.tensor([1]), "got 2 predictions but 1 labels"),
        (torch.tensor([1.0]), torch.tensor([1]), "pred must be a 1-D int64 tensor"),
    ],
)
def test_metrics_from_predictions_checks_its_inputs(pred, labels, message):
    with pytest.raises(ValueError, match=message):
        mnistfx.metrics_from_predictions(pred, labels)


def test_exif_orientation_is_applied(digits, tmp_path):
    upright = 255 - digits[0].numpy()  # dark on light, as a photo
    stored = Image.fromarray(np.rot90(upright, k=-1).copy())  # stored turned; EXIF says to turn it back
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90° counter-clockwise to display"
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    (x,) = mnistfx.read_digit_images([tmp_path / "photo.jpg"], invert=True, prepare=False)
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
    with pytest.raises(mnistfx.MnistfxError, match="torch.compile failed .*`compile=False`") as e:
        step(torch.ones(3))
    assert "\n" not in str(e.value)


def _photographed(mnist, indices, tmp_path, rng):
    """Real test digits as photos: large, dark on light, off-centre, with noise and blur (JPEG)."""
    from PIL import ImageFilter

    paths = []
    for i in indices:
        digit = Image.fromarray(255 - mnist.test_images[i].numpy()).resize((224, 224), Image.BILINEAR)
        canvas = Image.new("L", (500, 400), 235)
        canvas.paste(digit, (int(rng.integers(0, 270)), int(rng.integers(0, 170))))
        noisy = np.asarray(canvas, np.float32) + rng.normal(0, 8, (400, 500))
        photo = Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))
        paths.append(tmp_path / f"{i}.jpg")
        photo.save(paths[-1], quality=90)
    return paths


@pytest.fixture(scope="module")
def photos(mnist, tmp_path_factory):
    indices = list(range(0, 2000, 20))
    paths = _photographed(mnist, indices, tmp_path_factory.mktemp("photos"), np.random.default_rng(0))
    return indices, paths, mnistfx.read_digit_images(paths)  # inverted by itself: the border is light


def test_photos_of_digits_are_prepared_as_mnist_was(mnist, photos):
    indices, _, prepared = photos
    original = mnist.test_images[indices].float()
    similar = torch.nn.functional.cosine_similarity(prepared.float().flatten(1), original.flatten(1))
    assert (similar > 0.8).float().mean() >= 0.95 and similar.median() > 0.93
    centre = (prepared.float() * torch.arange(28.0)[:, None]).sum((1, 2)) / prepared.float().sum((1, 2))
    assert (centre - 14).abs().max() < 0.6  # centred by mass, as MNIST's digits are


def test_prepared_photos_are_read_right_and_plain_resizes_are_not(mnist, photos, notebook_ckpt):
    indices, paths, prepared = photos
    w = mnistfx.load_model_weights(notebook_ckpt)
    model, params = w.model, w.params
    labels = mnist.test_labels[indices]
    assert (mnistfx.predict(model, params, prepared) == labels).float().mean() >= 0.95
    plain = mnistfx.read_digit_images(paths, prepare=False)
    assert (mnistfx.predict(model, params, plain) == labels).float().mean() < 0.6


def test_prepare_digit_refuses_an_image_with_no_ink():
    with pytest.raises(mnistfx.MnistfxError, match="shows no digit"):
        mnistfx.prepare_digit(np.full((50, 50), 200, np.uint8))


def test_a_speck_or_a_tap_of_the_pen_is_no_digit(digits):
    tiny = np.zeros((2, 2), np.uint8)
    tiny[0, 0] = 255
    tap = np.zeros((280, 280), np.uint8)  # the drawing page's pen: 20 pixels wide on a 280-pixel canvas
    yy, xx = np.mgrid[:280, :280]
    tap[(yy - 140) ** 2 + (xx - 140) ** 2 <= 100] = 255
    for image, across in ((tiny, 1), (tap, 19)):
        with pytest.raises(mnistfx.MnistfxError, match=f"shows no digit, only a mark {across} pixels across"):
            mnistfx.prepare_digit(image)
    short_one = np.zeros((280, 280), np.uint8)
    short_one[100:130, 135:145] = 255  # a stroke 30 pixels tall on the page's canvas is a digit (a 1)
    strip = np.zeros((280, 2800), np.uint8)
    strip[:, 1400:1420] = 255  # a 1 the height of a long strip
    page = np.zeros((2000, 2000), np.uint8)
    page[900:1100, 980:1020] = 255  # a 1 of 200 pixels on a page
    for image in (short_one, strip, page):
        assert mnistfx.prepare_digit(image).shape == (28, 28)
    for d in digits:  # MNIST's own digits, and copies of them in a corner of a larger image, are digits
        corner = np.zeros((84, 84), np.uint8)
        corner[:28, :28] = d.numpy()
        assert mnistfx.prepare_digit(d).shape == mnistfx.prepare_digit(corner).shape == (28, 28)


def test_a_float_image_is_scaled_as_it_is_stored(digits, tmp_path):
    """A PFM holds floats in 0-1: read as the same digit's 8-bit PNG is."""
    floats, plain = [], []
    for i, d in enumerate(digits):
        floats.append(tmp_path / f"{i}.pfm")
        Image.fromarray(d.numpy().astype(np.float32) / 255, "F").save(floats[-1])
        plain.append(tmp_path / f"{i}.png")
        Image.fromarray(d.numpy()).save(plain[-1])
    assert torch.equal(mnistfx.read_digit_images(floats), mnistfx.read_digit_images(plain))
    nan = np.full((28, 28), np.nan, np.float32)
    Image.fromarray(nan, "F").save(tmp_path / "nan.pfm")
    with pytest.raises(mnistfx.MnistfxError, match="nan.pfm holds NaN or infinite values"):
        mnistfx.read_digit_images([tmp_path / "nan.pfm"])


def _plain_pgm(width: int, height: int) -> bytes:
    rows = np.zeros((height, width), np.uint8)
    rows[height // 4 : 3 * height // 4, width // 2 - 2 : width // 2 + 2] = 255  # a 1
    return f"P2\n{width} {height}\n255\n".encode() + " ".join(map(str, rows.ravel().tolist())).encode()


def _rle8_bmp(width: int, height: int) -> bytes:
    """A run-length BMP (RLE8) of ``width`` × ``height``: 2 bytes a run of 255 pixels."""
    import struct

    line = b"".join(bytes((min(255, width - x), 0)) for x in range(0, width, 255)) + b"\x00\x00"
    data = line * height + b"\x00\x01"
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    return (
        b"BM"
        + struct.pack("<IHHI", offset + len(data), 0, 0, offset)
        + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
        + palette
        + data
    )


def test_files_decoded_in_python_are_bounded_by_pixels(tmp_path):
    """Pillow decodes run-length BMPs and plain-text PGMs in Python: such files are read only up to
    a megapixel (a few kB of RLE can claim 40), refused from their header before decoding."""
    (tmp_path / "small.pgm").write_bytes(_plain_pgm(60, 60))
    assert mnistfx.read_digit_images([tmp_path / "small.pgm"]).shape == (1, 28, 28)
    for name, data in (("big.pgm", _plain_pgm(1100, 1000)), ("big.bmp", _rle8_bmp(5000, 4000))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(
            mnistfx.MnistfxError, match=f"{name} is a .* pixels stored in a way that is decoded slowly.*save it as PNG"
        ):
            mnistfx.read_digit_images([tmp_path / name])
    assert len(_rle8_bmp(5000, 4000)) < 200_000
