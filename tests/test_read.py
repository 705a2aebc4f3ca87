"""`mnistfx read`: numbers composed from real MNIST test digits on noisy paper (tests/composed.py),
found and read digit by digit."""

import io
import json

import numpy as np
import pytest
import torch
from composed import compose, digit_errors
from helpers import assert_one_line_error, run_cli
from PIL import Image

import mnistfx
from mnistfx.trained.numbers import _components


@pytest.fixture(scope="module")
def weights(trained_tuned):
    return mnistfx.load_model_weights(trained_tuned)


def _overlap(a, b):
    """The intersection over union of two (x, y, w, h) boxes."""
    w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def test_six_digit_numbers_are_read(weights, mnist):
    rng = np.random.default_rng(6)
    numbers = [compose(rng, mnist.test_images, mnist.test_labels, 6, light_on_dark=k % 4 == 3) for k in range(200)]
    found = [mnistfx.find_digits(number.image) for number in numbers]
    # read_number is find_digits and one batch through the model: here one batch for all 200 numbers
    predicted = iter(
        weights.probabilities(torch.stack([f.image for digits in found for f in digits])).argmax(1).tolist()
    )
    texts = ["".join(str(next(predicted)) for _ in digits) for digits in found]
    assert [mnistfx.read_number(weights, n.image).text for n in numbers[:10]] == texts[:10]
    errors = sum(digit_errors(n.text, text) for n, text in zip(numbers, texts, strict=True))
    digit_accuracy = 1 - errors / (6 * len(numbers))
    string_accuracy = sum(n.text == text for n, text in zip(numbers, texts, strict=True)) / len(numbers)
    print(
        f"read {len(numbers)} six-digit numbers: {100 * digit_accuracy:.2f}% of digits, "
        f"{100 * string_accuracy:.1f}% of strings"
    )
    assert digit_accuracy >= 0.98 and string_accuracy >= 0.90


def test_the_boxes_are_the_digits_left_to_right(mnist):
    rng = np.random.default_rng(1)
    overlaps, miscounted = [], 0
    for k in range(60):
        n = 1 + k % 8
        number = compose(rng, mnist.test_images, mnist.test_labels, n, light_on_dark=k % 3 == 0)
        found = mnistfx.find_digits(number.image)
        miscounted += len(found) != n
        if len(found) == n:
            assert [f.box[0] for f in found] == sorted(f.box[0] for f in found)
            overlaps += [_overlap(f.box, true) for f, true in zip(found, number.boxes, strict=True)]
            assert all(f.image.shape == (28, 28) and f.image.dtype == torch.uint8 for f in found)
    assert miscounted <= 2  # MNIST holds digits in pieces side by side, and stray strokes
    assert np.median(overlaps) > 0.85 and np.percentile(overlaps, 2) > 0.5


def test_light_digits_on_a_dark_board_are_read_as_dark_on_light(weights, mnist):
    rng = np.random.default_rng(3)
    for _ in range(5):
        number = compose(rng, mnist.test_images, mnist.test_labels, 5, light_on_dark=True)
        auto = mnistfx.read_number(weights, number.image)
        assert auto == mnistfx.read_number(weights, number.image, invert=False)
        flipped = mnistfx.read_number(weights, 255 - number.image)  # the same digits, dark on light
        assert flipped.text == auto.text and [d.box for d in flipped.digits] == [d.box for d in auto.digits]
        assert digit_errors(number.text, auto.text) <= 1
    with pytest.raises(mnistfx.MnistfxError, match="shows no digits"):  # told the ink is dark, it finds none
        mnistfx.read_number(weights, number.image, invert=True)


def test_a_digit_cut_in_two_is_read_as_one(weights, mnist):
    # Zeros, sixes and eights cut across their middle: two pieces each, one above the other.
    picks = [int(i) for i in np.nonzero(np.isin(mnist.test_labels.numpy(), (0, 6, 8)))[0][:30]]
    cut = mnist.test_images.clone()
    for i in picks:
        rows = np.nonzero(cut[i].numpy().any(1))[0]
        middle = (rows[0] + rows[-1]) // 2
        cut[i, middle - 1 : middle + 2] = 0
        assert len(set(_components(cut[i].numpy() > 0, "a cut digit")[3])) >= 2
    rng = np.random.default_rng(4)
    read = ""
    for k in range(0, 30, 3):
        number = compose(rng, cut, mnist.test_labels, 3, indices=picks[k : k + 3], scale=(2.5, 4.0))
        reading = mnistfx.read_number(weights, number.image)
        assert len(reading.digits) == 3, (number.text, reading.text)
        for digit, (_, y, _, height) in zip(reading.digits, number.boxes, strict=True):
            # one box around both pieces: the whole digit's height (one piece alone has about half of it)
            assert abs(digit.box[1] - y) <= 0.1 * height and digit.box[3] >= 0.85 * height, (digit.box, y, height)
        read += reading.text
    # Cut, some are other digits to the model even as 28×28 images: the pieces read as the whole cut digit. The
    # composed number resamples each digit (scaled up, then prepared down to 20×20 again), which can move a digit
    # the model is unsure of to its second choice; one it is sure of stays (top probabilities here: 0.21-0.50 for
    # 9 of the cut digits, 0.69-0.92 for the others).
    probs = weights.probabilities(cut[picks])
    sure = probs.max(1).values >= 0.6
    assert sure.sum() >= 15
    assert all(str(int(s)) == r for r, s, k in zip(read, probs.argmax(1), sure.tolist(), strict=True) if k), read


def test_a_single_digit_is_a_number(weights, mnist):
    rng = np.random.default_rng(5)
    number = compose(rng, mnist.test_images, mnist.test_labels, 1, indices=[0], grain=(5, 6))
    assert mnistfx.read_number(weights, number.image).text == str(int(mnist.test_labels[0]))


def test_the_command_prints_the_number_and_json_with_boxes_in_the_files_pixels(trained_tuned, mnist, tmp_path, capsys):
    rng = np.random.default_rng(7)
    number = compose(rng, mnist.test_images, mnist.test_labels, 4, indices=[0, 1, 2, 3], grain=(4, 5))
    big = Image.fromarray(number.image).resize((number.image.shape[1] * 4, number.image.shape[0] * 4))
    big.save(tmp_path / "number.jpg", quality=90)  # wider than 1024 px: read shrunk, boxes in the file's pixels
    code, out, _ = run_cli(capsys, "read", str(trained_tuned), str(tmp_path / "number.jpg"))
    assert code == 0
    assert out.startswith(number.text + "  (") and out.count("%") == 4
    code, out, _ = run_cli(capsys, "read", str(trained_tuned), str(tmp_path / "number.jpg"), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["text"] == number.text and result["image"] == str(tmp_path / "number.jpg")
    for digit, true in zip(result["digits"], number.boxes, strict=True):
        assert set(digit) == {"digit", "probability", "probabilities", "box"}
        assert len(digit["probabilities"]) == 10 and abs(sum(digit["probabilities"]) - 1) < 1e-4
        assert digit["probability"] == max(digit["probabilities"])
        box = digit["box"]
        assert _overlap((box["x"], box["y"], box["width"], box["height"]), [4 * v for v in true]) > 0.7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["number.jpg"]


def _blank_paper(tmp_path):
    rng = np.random.default_rng(8)
    paper = np.clip(200 + rng.normal(0, 8, (200, 600)) + np.linspace(0, 30, 600), 0, 255).astype(np.uint8)
    Image.fromarray(paper).save(tmp_path / "blank.png")
    return tmp_path / "blank.png"


def _many_marks(tmp_path):
    marks = np.full((60, 2440), 230, np.uint8)
    for x in range(20, 2420, 20):
        marks[20:40, x : x + 10] = 20  # 120 bars the size of a "1", in a row
    Image.fromarray(marks).save(tmp_path / "marks.png")
    return tmp_path / "marks.png"


def _huge(tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = tmp_path / "huge.png"
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def _speck_on_blank_paper(tmp_path):
    paper = np.asarray(Image.open(_blank_paper(tmp_path))).copy()
    paper[100:103, 300:303] = 20  # one dark 3×3 speck: the largest mark, and no digit
    Image.fromarray(paper).save(tmp_path / "speck.png")
    (tmp_path / "blank.png").unlink()
    return tmp_path / "speck.png"


def _not_an_image(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    return tmp_path / "x.png"


def _unknown_model(tmp_path):
    mnistfx.save_weights(tmp_path / "lenet.safetensors", mnistfx.get_model("tuned").init(0), {"model": "lenet"})
    return tmp_path / "lenet.safetensors"


@pytest.mark.parametrize(
    "make, weights_from, fragments",
    [
        (_blank_paper, None, ("blank.png shows no digits", "nothing stands out from the paper")),
        (_speck_on_blank_paper, None, ("speck.png shows no digits", "only specks", "a digit is at least 6 tall")),
        (_many_marks, None, ("marks.png shows 120 marks the size of digits", "at most 100")),
        (_huge, None, ("claims 400,000,000 pixels", "images of up to 40,000,000 pixels")),
        (lambda tmp_path: tmp_path / "missing.png", None, ("missing.png", "No such file")),
        (_not_an_image, None, ("x.png is not an image file", "pass a photo or scan of a handwritten number")),
        (_blank_paper, _unknown_model, ("is for model 'lenet', which is not built in",)),
    ],
)
def test_bad_input_is_one_line(make, weights_from, fragments, tuned_weights, tmp_path, capsys):
    image = make(tmp_path)
    weights = weights_from(tmp_path) if weights_from else tuned_weights
    before = sorted(tmp_path.iterdir())
    code, out, err = run_cli(capsys, "read", str(weights), str(image))
    assert_one_line_error(code, err, *fragments)
    assert out == "" and sorted(tmp_path.iterdir()) == before


def test_decode_image_reads_bytes_as_files_are_read(mnist, tmp_path):
    digit = 255 - mnist.test_images[0].numpy()
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, "PNG")
    gray, alpha = mnistfx.decode_image(buffer.getvalue(), "upload.png")
    assert alpha is None and np.abs(gray.astype(int) - digit).max() <= 1  # gray as RGB luma: 255 reads as 254
    with pytest.raises(mnistfx.MnistfxError, match=r"^upload.png is not an image file .*: pass an image"):
        mnistfx.decode_image(b"GIF89a" + bytes(20), "upload.png")


def test_arrays_are_checked():
    with pytest.raises(ValueError, match="2-D array of gray values"):
        mnistfx.find_digits(np.zeros((3, 20, 20)))
    with pytest.raises(mnistfx.MnistfxError, match="NaN or infinite"):
        mnistfx.find_digits(np.full((20, 20), np.nan))
    with pytest.raises(TypeError, match="not list"):
        mnistfx.find_digits([[0, 1]])


def test_an_underline_is_not_a_digit_and_joins_none(weights, mnist):
    rng = np.random.default_rng(9)
    for _ in range(3):
        number = compose(rng, mnist.test_images, mnist.test_labels, 5, grain=(3, 4))
        underlined = number.image.copy()
        bottom = max(y + h for _, y, _, h in number.boxes)
        underlined[bottom + 3 : bottom + 7, 5:-5] = 30  # a ruled line under every digit, sharing their columns
        plain, lined = mnistfx.read_number(weights, number.image), mnistfx.read_number(weights, underlined)
        assert lined.text == plain.text and len(plain.text) == 5
        assert all(_overlap(a.box, b.box) > 0.9 for a, b in zip(lined.digits, plain.digits, strict=True))


def test_clean_pen_strokes_on_white_are_read(weights):
    """A drawing app's PNG: no paper noise, so the dark ink and the light gaps between strokes stand out alike."""
    from PIL import ImageDraw

    for width in (2, 4, 5, 6, 10):
        img = Image.new("L", (600, 200), 255)
        pen = ImageDraw.Draw(img)
        pen.line([(80, 40), (80, 160)], fill=0, width=width)  # 1
        pen.line([(160, 40), (230, 40), (180, 160)], fill=0, width=width)  # 7
        pen.ellipse([(280, 40), (350, 160)], outline=0, width=width)  # 0
        pen.line([(450, 40), (410, 120), (480, 120)], fill=0, width=width)  # 4
        pen.line([(460, 80), (460, 160)], fill=0, width=width)
        assert mnistfx.read_number(weights, np.asarray(img)).text == "1704", width
