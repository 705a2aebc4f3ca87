"""MNIST-C's corruptions (`mnistfx.corrupt`): each against its definition in MNIST-C's corruptions.py, or
against the library operation MNIST-C calls, on the same images; the contract every one keeps.

A reference here that needs the random numbers a corruption drew draws them again from the same per-image
streams (`_streams`), in the order the corruption documents, and then follows MNIST-C's definition one image,
one pixel or one swap at a time, as MNIST-C's loops do.
"""

import math
import sys

import numpy as np
import pytest
import torch
from synthetic import synthetic_digits

import mnistfx
from mnistfx.data.corruptions import _streams

DRAW_NOTHING = ("scale", "brightness", "stripe", "canny_edges")
RANDOM = tuple(name for name in mnistfx.CORRUPTIONS if name not in DRAW_NOTHING)


@pytest.fixture(autouse=True)
def _numpy_global_rng_untouched():
    """NumPy's global generator is neither read nor written either (conftest checks torch's)."""
    before = np.random.get_state()
    yield
    after = np.random.get_state()
    assert np.array_equal(before[1], after[1]) and before[2:] == after[2:], "NumPy's global RNG state changed"


@pytest.fixture(scope="module")
def digits():
    """48 synthetic digits, for the fast tier."""
    return synthetic_digits(48, seed=3)[0]


@pytest.fixture(scope="module")
def real(test_slice):
    """64 real MNIST test digits."""
    return test_slice[0][:64]


def _rounded(values):
    """MNIST-C's float32 result in [0, 255] as the uint8 it stores (nearest, halves to even)."""
    return np.clip(np.round(np.asarray(values).astype(np.float32)), 0, 255).astype(np.uint8)


# The contract


@pytest.mark.fast
def test_the_names_are_mnist_cs_fifteen_in_its_order():
    # MNIST-C's CORRUPTIONS, less 'identity' (the uncorrupted images)
    assert mnistfx.CORRUPTIONS == (
        "shot_noise",
        "impulse_noise",
        "glass_blur",
        "motion_blur",
        "shear",
        "scale",
        "rotate",
        "brightness",
        "translate",
        "stripe",
        "fog",
        "spatter",
        "dotted_line",
        "zigzag",
        "canny_edges",
    )


@pytest.mark.fast
@pytest.mark.parametrize("name", mnistfx.CORRUPTIONS)
def test_a_corruption_gives_uint8_digits_the_same_bytes_for_the_same_seed(name, digits):
    out = mnistfx.corrupt(digits, name, seed=1)
    assert out.dtype == torch.uint8 and out.shape == digits.shape and out.device == digits.device
    assert not torch.equal(out, digits)
    assert torch.equal(mnistfx.corrupt(digits, name, seed=1), out)
    other = mnistfx.corrupt(digits, name, seed=2)
    assert torch.equal(other, out) == (name in DRAW_NOTHING)
    assert torch.equal(digits, synthetic_digits(48, seed=3)[0])  # the input is left as it was


@pytest.mark.fast
@pytest.mark.parametrize("name", RANDOM)
def test_an_image_is_corrupted_the_same_whatever_else_is_in_its_batch(name, digits):
    whole = mnistfx.corrupt(digits, name, seed=5)
    assert torch.equal(mnistfx.corrupt(digits[10:20], name, seed=5, start=10), whole[10:20])
    assert not torch.equal(mnistfx.corrupt(digits[10:20], name, seed=5), whole[10:20])  # its position counts
    changed = digits.clone()
    changed[:10] = 255 - changed[:10]
    assert torch.equal(mnistfx.corrupt(changed, name, seed=5)[10:], whole[10:])


@pytest.mark.fast
def test_an_empty_batch_gives_an_empty_batch():
    empty = torch.zeros(0, 28, 28, dtype=torch.uint8)
    out = mnistfx.corrupt(empty, "fog", seed=0)
    assert out.shape == (0, 28, 28) and out.dtype == torch.uint8


@pytest.mark.fast
@pytest.mark.parametrize(
    ("name", "module", "library"),
    [
        ("glass_blur", "scipy.ndimage", "SciPy"),
        ("spatter", "scipy.ndimage", "SciPy"),
        ("canny_edges", "skimage.feature", "scikit-image"),
    ],
)
def test_without_the_robustness_extra_a_corruption_that_needs_it_says_how_to_install_it(
    name, module, library, digits, monkeypatch
):
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(mnistfx.MnistfxError) as e:
        mnistfx.corrupt(digits, name, seed=0)
    assert str(e.value) == f"{name} needs {library}: pip install 'mnistfx[robustness]'"
    assert mnistfx.corrupt(digits, "motion_blur", seed=0).shape == digits.shape  # the others need neither


# Each corruption against its definition (fast: small arrays made here)


def _poisson_pmf(lam: float, k: int) -> float:
    return math.exp(-lam) * lam**k / math.factorial(k)


@pytest.mark.fast
@pytest.mark.parametrize("value", [255, 20])
def test_shot_noise_is_poisson_of_three_times_the_pixel_over_three_clipped(value):
    # shot_noise(severity=5): c = 3; out = clip(Poisson(3x) / 3, 0, 1) for x in [0, 1]: k of 0, 1, 2, 3+ gives
    # 0, 85, 170, 255
    images = torch.full((40, 28, 28), value, dtype=torch.uint8)
    images[:, :, :4] = 0  # a black pixel's λ is 0: it stays black
    out = mnistfx.corrupt(images, "shot_noise", seed=0).numpy()
    assert (out[:, :, :4] == 0).all()
    lit = out[:, :, 4:].ravel()
    lam = 3 * value / 255
    probs = [_poisson_pmf(lam, k) for k in range(3)]
    probs.append(1 - sum(probs))
    for k, p in enumerate(probs):
        share = float(np.mean(lit == 85 * k))
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / lit.size) + 1e-12, (k, share, p)
    assert np.isin(lit, [0, 85, 170, 255]).all()


@pytest.mark.fast
def test_impulse_noise_turns_17_percent_of_the_pixels_to_black_or_white_in_even_shares(digits):
    # impulse_noise(severity=4): skimage's random_noise(mode='s&p', amount=0.17), salt_vs_pepper 0.5
    images = torch.full((40, 28, 28), 100, dtype=torch.uint8)
    out = mnistfx.corrupt(images, "impulse_noise", seed=0).numpy().ravel()
    for value, p in ((255, 0.085), (0, 0.085), (100, 0.83)):
        share = float(np.mean(out == value))
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / out.size), (value, share)
    d = digits.numpy()
    hit = mnistfx.corrupt(digits, "impulse_noise", seed=0).numpy()
    assert ((hit == d) | (hit == 0) | (hit == 255)).all()


@pytest.mark.fast
def test_brightness_is_skimages_hsv_value_plus_half():
    # brightness(severity=5): c = 0.5 added to V of the HSV image, through skimage.color, back to gray
    from skimage import color

    images = torch.arange(28 * 28).reshape(1, 28, 28).remainder(256).to(torch.uint8)  # every value 0-255
    out = mnistfx.corrupt(images, "brightness", seed=0).numpy()[0]
    hsv = color.rgb2hsv(color.gray2rgb(images.numpy()[0] / 255.0))
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + 0.5, 0, 1)
    expected = np.clip(color.rgb2gray(color.hsv2rgb(hsv)), 0, 1) * 255
    assert np.array_equal(out, _rounded(expected))
    x = images.numpy()[0].astype(int)
    assert np.array_equal(out, np.where(x >= 128, 255, x + 128 - (x % 2)))  # x + 127.5, halves to even


@pytest.mark.fast
def test_stripe_inverts_the_seven_columns_at_each_side(digits):
    out = mnistfx.corrupt(digits, "stripe", seed=0).numpy().astype(int)
    d = digits.numpy().astype(int)
    assert np.array_equal(out[:, :, :7], 255 - d[:, :, :7]) and np.array_equal(out[:, :, 21:], 255 - d[:, :, 21:])
    assert np.array_equal(out[:, :, 7:21], d[:, :, 7:21])


# Each corruption against the library operation MNIST-C calls, or its definition, on real digits


def _warp(image, matrix):
    from skimage import transform

    return transform.warp(image / 255.0, inverse_map=transform.AffineTransform(matrix=matrix))


def _centred(a):
    """MNIST-C's map of linear part ``a`` with the translation that keeps (13.5, 13.5) in place."""
    return np.array(
        [
            [a[0][0], a[0][1], 13.5 * (1 - a[0][0] - a[0][1])],
            [a[1][0], a[1][1], 13.5 * (1 - a[1][0] - a[1][1])],
            [0, 0, 1],
        ]
    )


def _one_of(out, image, matrices):
    """The indices of the maps whose skimage warp of ``image`` is ``out``."""
    return [i for i, m in enumerate(matrices) if np.array_equal(out, _rounded(np.clip(_warp(image, m), 0, 1) * 255))]


@pytest.mark.parametrize("name", ["rotate", "shear"])
def test_rotate_and_shear_are_skimages_warp_by_plus_or_minus_0_4(name, real):
    # rotate(severity=2), shear(severity=2): c = 0.4, its sign at random; AffineTransform(rotation=c) or
    # AffineTransform(shear=c) of 2019's scikit-image ([[1, -sin c], [0, cos c]]), centre kept, warp order 1
    from skimage import transform

    out = mnistfx.corrupt(real, name, seed=0).numpy()
    matrices = []
    for c in (0.4, -0.4):
        if name == "rotate":
            linear = transform.AffineTransform(rotation=c).params[:2, :2]
        else:
            linear = np.array([[1, -math.sin(c)], [0, math.cos(c)]])
        matrices.append(_centred(linear))
    signs = [_one_of(o, x, matrices) for o, x in zip(out, real.numpy(), strict=True)]
    assert all(len(s) == 1 for s in signs)
    assert {s[0] for s in signs} == {0, 1}  # both directions occur


def test_scale_is_skimages_warp_by_1_over_0_7_and_shrinks_the_digit(real):
    # scale(severity=3): c = (1/0.7, 1/0.7), the centre kept: the inverse map reads 1/0.7 times farther out
    out = mnistfx.corrupt(real, "scale", seed=0).numpy()
    matrix = _centred(np.diag([1 / 0.7, 1 / 0.7]))
    assert all(_one_of(o, x, [matrix]) == [0] for o, x in zip(out, real.numpy(), strict=True))
    ys, xs = np.mgrid[:28, :28]

    def spread(images):  # the ink's RMS distance from the centre
        w = images.astype(np.float64)
        return np.sqrt((w * ((ys - 13.5) ** 2 + (xs - 13.5) ** 2)).sum((1, 2)) / w.sum((1, 2)))

    before = spread(real.numpy())
    # shrunk by 0.7 about the centre; bilinear interpolation spreads each pixel over a tent, of variance 1/6 px²
    # on each axis, which shrinks with it: the RMS radius r becomes 0.7 * sqrt(r² + 1/3). Sampling the result
    # at whole pixels adds an error of either sign, about a percent on one digit, far less on the median.
    expected = 0.7 * np.sqrt(before**2 + 1 / 3) / before
    error = spread(out) / before - expected
    assert abs(float(np.median(error))) < 0.005 and float(np.abs(error).max()) < 0.03, error


def test_translate_moves_the_digit_3_pixels_on_each_axis(real):
    # translate(severity=3): c = 3, (dx, dy) = 3 * (±1, ±1); warp reads (col + dx, row + dy): the ink moves by -(dx, dy)
    out = mnistfx.corrupt(real, "translate", seed=0).numpy().astype(np.float64)
    x = real.numpy().astype(np.float64)
    matrices = [np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]]) for dx in (3, -3) for dy in (3, -3)]
    chosen = [_one_of(o, i, matrices) for o, i in zip(out, x, strict=True)]
    assert all(len(c) == 1 for c in chosen) and {c[0] for c in chosen} == {0, 1, 2, 3}
    ys, xs = np.mgrid[:28, :28]
    frame = np.ones((28, 28), bool)
    frame[3:25, 3:25] = False
    inside = ~(x[:, frame] > 0).any(axis=1)  # no ink within 3 pixels of the edge: none is pushed off
    assert inside.sum() >= 16
    for o, i in zip(out[inside], x[inside], strict=True):
        shift = [(o * g).sum() / o.sum() - (i * g).sum() / i.sum() for g in (xs, ys)]
        assert np.allclose(np.abs(shift), 3, atol=1e-9), shift


def test_canny_edges_are_skimages_canny(real):
    # canny_edges: feature.canny(x / 255.) with its defaults (sigma 1, thresholds 0.1 and 0.2), times 255
    from skimage import feature

    out = mnistfx.corrupt(real, "canny_edges", seed=0).numpy()
    expected = np.stack([feature.canny(x / 255.0) for x in real.numpy()]).astype(np.uint8) * 255
    assert np.array_equal(out, expected) and out.any()


def test_glass_blur_is_mnist_cs_blur_swap_blur(real):
    # glass_blur(severity=1): (sigma, max_delta, iterations) = (0.7, 1, 2); skimage's gaussian(multichannel=True)
    # on a 2-D image blurs along axis 0 only (channel_axis=-1 in today's scikit-image)
    from skimage.filters import gaussian

    images = real[:8]
    out = mnistfx.corrupt(images, "glass_blur", seed=4).numpy()
    for image, g, got in zip(images.numpy(), _streams(4, "glass_blur", 0, len(images)), out, strict=True):
        swaps = g.random((2, 26, 26)) < 0.5
        shifts = g.integers(-1, 1, size=(2, 26, 26, 2))
        y = (gaussian(image / 255.0, sigma=0.7, channel_axis=-1) * 255).astype(np.uint8)
        for it in range(2):
            for a, h in enumerate(range(27, 1, -1)):
                for b, w in enumerate(range(27, 1, -1)):
                    if swaps[it, a, b]:
                        dx, dy = shifts[it, a, b]
                        y[h, w], y[h + dy, w + dx] = y[h + dy, w + dx], y[h, w]
        expected = np.clip(gaussian(y / 255.0, sigma=0.7, channel_axis=-1), 0, 1) * 255
        assert np.array_equal(got, _rounded(expected))


def _motion_blur_reference(image, angle_degrees, radius=10.0, sigma=3.0):
    """ImageMagick's MotionBlurImage (MagickCore/effect.c) of an 8-bit gray image in a Q16 build, pixel by pixel,
    as the 8-bit PNG it writes."""
    width = int(2 * math.ceil(radius) + 1)
    weights = [math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(width)]
    weights = [w / sum(weights) for w in weights]
    a = math.pi * angle_degrees / 180
    px, py = width * math.sin(a), width * math.cos(a)
    offsets = [
        (math.ceil(i * py / math.hypot(px, py) - 0.5), math.ceil(i * px / math.hypot(px, py) - 0.5))
        for i in range(width)
    ]
    out = np.zeros((28, 28), np.uint8)
    for y in range(28):
        for x in range(28):
            total = 0.0
            for w, (ox, oy) in zip(weights, offsets, strict=True):
                total += w * 257.0 * float(image[min(max(y + oy, 0), 27), min(max(x + ox, 0), 27)])  # edge pixels
            q = 0 if total <= 0 else 65535 if total >= 65535 else int(total + 0.5)  # ClampToQuantum
            out[y, x] = q // 257  # the 8-bit PNG ImageMagick writes (test_..._imagemagicks_own below)
    return out


def test_motion_blur_is_imagemagicks_motion_blur_at_a_random_angle(real):
    # motion_blur(severity=1): radius 10, sigma 3, angle ~ U(-45, 45) degrees
    images = real[:4]
    out = mnistfx.corrupt(images, "motion_blur", seed=2).numpy()
    for image, g, got in zip(images.numpy(), _streams(2, "motion_blur", 0, len(images)), out, strict=True):
        angle = g.uniform(-45, 45)
        assert np.array_equal(got, _motion_blur_reference(image, angle))


def test_motion_blur_is_imagemagicks_own_where_it_is_installed(real, tmp_path):
    # MNIST-C saves the image as PNG, blurs it with ImageMagick (through Wand) and reads the PNG it writes
    import shutil
    import subprocess

    from PIL import Image

    convert = shutil.which("convert-im6.q16")  # Debian's ImageMagick 6, 16-bit quanta, no HDRI
    if convert is None:
        pytest.skip("ImageMagick 6 (Q16) is not installed: apt-get install imagemagick")
    images = real[:16]
    out = mnistfx.corrupt(images, "motion_blur", seed=9).numpy()
    for i, (image, g) in enumerate(zip(images.numpy(), _streams(9, "motion_blur", 0, len(images)), strict=True)):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        blur = f"10x3{g.uniform(-45, 45):+.17g}"  # radius x sigma + angle, the angle to the last bit
        subprocess.run([convert, tmp_path / f"{i}.png", "-motion-blur", blur, tmp_path / f"{i}b.png"], check=True)
        assert np.array_equal(out[i], np.asarray(Image.open(tmp_path / f"{i}b.png").convert("L"))), i


def _plasma_reference(g, mapsize=256, wibbledecay=1.4):
    """MNIST-C's plasma_fractal (diamond-square on one 256x256 map), drawing its 65,535 numbers from ``g``."""
    u = np.empty(mapsize * mapsize - 1, np.float32)
    g.random(dtype=np.float32, out=u)
    u = u.astype(np.float64) * 2 - 1
    used = 0

    def wibbled(total, wibble):  # the mean of the four, plus wibble * U(-wibble, wibble)
        nonlocal used
        noise = u[used : used + total.size].reshape(total.shape)
        used += total.size
        return total / 4 + wibble * wibble * noise

    heights = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2
        corners = heights[0::step, 0::step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        heights[half::step, half::step] = wibbled(square, wibble)
        centres, corners = heights[half::step, half::step], heights[0::step, 0::step]
        top = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        heights[0::step, half::step] = wibbled(top, wibble)
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        heights[half::step, 0::step] = wibbled(left, wibble)
        step, wibble = half, wibble / wibbledecay
    heights -= heights.min()
    return heights / heights.max()


def test_fog_adds_three_times_a_plasma_fractal_and_rescales(real):
    # fog(severity=5): c = (3.0, 1.4): x + 3 * plasma_fractal(wibbledecay=1.4)[:28, :28], times max / (max + 3)
    images = real[:6]
    out = mnistfx.corrupt(images, "fog", seed=7).numpy().astype(int)
    for image, g, got in zip(images.numpy(), _streams(7, "fog", 0, len(images)), out, strict=True):
        x = image / 255.0
        top = x.max()
        expected = _rounded(np.clip((x + 3 * _plasma_reference(g)[:28, :28]) * top / (top + 3), 0, 1) * 255)
        # the library makes the map in float32 (the reference in float64): a rounding may differ by one
        diff = np.abs(got - expected.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_spatter_is_mnist_cs_mud(real):
    # spatter(severity=4): (0.65, 0.3, 1, 0.65, 1.5, mud) with skimage's gaussian (mode 'nearest')
    from skimage.filters import gaussian

    images = real[:16]
    out = mnistfx.corrupt(images, "spatter", seed=3).numpy()
    for image, g, got in zip(images.numpy(), _streams(3, "spatter", 0, len(images)), out, strict=True):
        liquid = gaussian(g.normal(0.65, 0.3, (28, 28)), sigma=1)
        liquid[liquid < 0.65] = 0
        mask = gaussian(np.where(liquid > 0.65, 1, 0).astype(np.float32), sigma=1.5)
        mask[mask < 0.8] = 0
        x = image.astype(np.float32) / 255.0
        assert np.array_equal(got, _rounded(np.clip(x * (1 - mask) + 63 / 255.0 * mask, 0, 1) * 255))


def _line_reference(c0, r0, c1, r1):
    """MNIST-C's line_from_points, written out: 1 + log(1 - d / 2.3) of the vertical distance d to the line."""
    out = np.zeros((28, 28))
    if c1 == c0:
        return out
    for row in range(28):
        for col in range(math.floor(c0), math.ceil(c1)):
            d = min(abs(row - ((r1 - r0) / (c1 - c0) * (col - c0) + r0)), 2.3 - 1e-10)
            out[row, col] = min(max(math.log(1 - d / 2.3) + 1, 0), 1)
    return out


def test_dotted_line_is_mnist_cs_dotted_line(real):
    # dotted_line: line_from_points(0, r0, 27, r1), r0, r1 in 0..26, every other pair of columns blanked from 0
    images = real[:16]
    out = mnistfx.corrupt(images, "dotted_line", seed=6).numpy()
    for image, g, got in zip(images.numpy(), _streams(6, "dotted_line", 0, len(images)), out, strict=True):
        r0, r1 = g.integers(0, 27, size=2)
        line = _line_reference(0, r0, 27, r1)
        for start in range(0, 28, 4):
            line[:, start : start + 2] = 0
        assert np.array_equal(got, _rounded(np.clip(image / 255.0 + line, 0, 1) * 255))
        added = got.astype(int) > image
        assert not added[:, (np.arange(28) // 2) % 2 == 0].any() and not added[:, 27].any()


def test_zigzag_is_mnist_cs_zigzag(real):
    # zigzag: teeth a = b = 2 from (2, r0) towards (25, r0 + U{-5..4}), each segment's line added and clipped
    images = real[:16]
    out = mnistfx.corrupt(images, "zigzag", seed=8).numpy()
    for image, g, got in zip(images.numpy(), _streams(8, "zigzag", 0, len(images)), out, strict=True):
        r0 = int(g.integers(0, 27))
        r1 = r0 + int(g.integers(-5, 5))
        theta = math.atan((r1 - r0) / 23)
        d = 23 / math.cos(theta)
        points, r = [(0.0, 0.0)], 0.0
        for i in range(int((d - 2) // 4) + 1):
            r = (-1) ** i * 2.0
            points.append(((2 * i + 1) * 2.0, r))
        if d != 4 * (d // 4):
            points.append((d, r / (2 * (d - 4 * (d // 4)))))
        cs = [2 + math.cos(theta) * c - math.sin(theta) * r for c, r in points]
        rs = [r0 + math.sin(theta) * c + math.cos(theta) * r for c, r in points]
        x = image / 255.0
        for i in range(1, len(points)):
            x = np.clip(x + _line_reference(cs[i - 1], rs[i - 1], cs[i], rs[i]), 0, 1)
        # the library adds the segments first and clips once (the same, as no line is negative); the sums'
        # order may round one value the other way
        diff = np.abs(got.astype(int) - _rounded(x * 255).astype(int))
        assert diff.max() <= 1 and (diff > 0).sum() <= 2
