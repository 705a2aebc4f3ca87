"""Refused: image files given to predict: of any claimed size, cut off, without ink, of odd formats.

Each case (its id is its name) must end in one line, ``error: ...``, that names the problem, a non-zero
exit, no traceback, and no file created or changed. Fixtures come from conftest.py.
"""

import numpy as np
from refusals import Cases

case = Cases()


def _png(tmp_path, array, mode=None, name="digit.png"):
    from PIL import Image

    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path)
    return path


def _predict(weights, *paths):
    return ["predict", str(weights), *map(str, paths)]


def _png_claiming(tmp_path, width, height):
    """A PNG of a few dozen bytes whose header claims width × height pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path = tmp_path / "huge.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


@case("not an image file")
def predict_on_a_file_that_is_not_an_image(tmp_path, weights):
    (tmp_path / "digit.png").write_text("not a png")
    return ["predict", str(weights), str(tmp_path / "digit.png")]


@case("claims 4,294,836,225 pixels", "images of up to 40,000,000 pixels")
def png_header_claiming_65535_squared(tmp_path, weights):
    return _predict(weights, _png_claiming(tmp_path, 65535, 65535))


@case("claims 400,000,000 pixels")
def png_header_claiming_20000_squared(tmp_path, weights):
    return _predict(weights, _png_claiming(tmp_path, 20000, 20000))


@case("claims 170,000,000 pixels", "at most 100 times as long as wide")
def png_strip_one_pixel_wide(tmp_path, weights):
    return _predict(weights, _png_claiming(tmp_path, 1, 170_000_000))


@case("claims 2×6000 pixels", "at most 100 times")
def png_strip_just_over_the_aspect_limit(tmp_path, weights):

    return _predict(weights, _png(tmp_path, np.zeros((6000, 2), np.uint8)))


@case("image", "is 60,000,000 bytes, more than any image mnistfx reads (20,971,520)")
def image_file_too_large_to_read(tmp_path, weights):
    path = tmp_path / "big.png"
    with open(path, "wb") as f:
        f.truncate(60_000_000)  # sparse: nothing is written
    return _predict(weights, path)


@case("is not a regular file")
def image_that_is_a_fifo(tmp_path, weights):
    import os

    os.mkfifo(tmp_path / "pipe.png")  # opening it would wait for a writer for ever
    return _predict(weights, tmp_path / "pipe.png")


@case("shows no digit", "nothing stands out from its background")
def image_with_no_ink(tmp_path, weights):

    return _predict(weights, _png(tmp_path, np.full((40, 40), 200, np.uint8)))


@case("shows no digit")
def transparent_image_with_nothing_opaque(tmp_path, weights):

    return _predict(weights, _png(tmp_path, np.zeros((28, 28, 4), np.uint8), "RGBA"))


@case("not an image file", "that can be decoded")
def png_cut_off_in_its_pixel_data(tmp_path, weights):

    path = _png(tmp_path, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    path.write_bytes(path.read_bytes()[:200])
    return _predict(weights, path)


@case("is a JPEG of 76 scans", "at most a dozen of each")
def progressive_jpeg_with_a_scan_repeated(tmp_path, weights):
    from PIL import Image

    path = tmp_path / "scans.jpg"
    Image.new("L", (64, 64), 128).save(path, progressive=True)
    data = path.read_bytes()
    last = data.rindex(b"\xff\xda")  # each copy of the last scan is one more full decoding pass
    path.write_bytes(data[:-2] + data[last:-2] * 70 + data[-2:])
    return _predict(weights, path)


@case("is not an image file (PNG, JPEG, BMP, GIF, WEBP, PPM)")
def icon_file_holding_images(tmp_path, weights):
    from PIL import Image

    Image.new("L", (64, 64), 255).save(tmp_path / "digit.ico")
    return _predict(weights, tmp_path / "digit.ico")


@case("is a JPEG of 1 scans and 301 metadata segments")
def jpeg_of_many_metadata_segments(tmp_path, weights):
    from PIL import Image

    Image.new("L", (32, 32), 100).save(tmp_path / "digit.jpg", progressive=False)
    data = (tmp_path / "digit.jpg").read_bytes()
    (tmp_path / "digit.jpg").write_bytes(data[:2] + b"\xff\xe5\x00\x02" * 300 + data[2:])
    return _predict(weights, tmp_path / "digit.jpg")


@case("is a PNG of more than 10,000 chunks")
def png_of_many_chunks(tmp_path, weights):

    path = _png(tmp_path, np.zeros((8, 8), np.uint8))
    data = path.read_bytes()
    empty = b"\x00\x00\x00\x00prIv\x00\x00\x00\x00"  # length 0, a private chunk type, a CRC
    path.write_bytes(data[:33] + empty * 10_001 + data[33:])
    return _predict(weights, path)


@case("is a PBM/PGM/PPM/PFM whose header is not its sizes within 4,096 bytes")
def pgm_with_a_long_comment_in_its_header(tmp_path, weights):
    (tmp_path / "digit.pgm").write_bytes(b"P5\n28 28\n#" + b"x" * 1_000_000 + b"\n255\n" + bytes(784))
    return _predict(weights, tmp_path / "digit.pgm")


@case("plain-text PBM/PGM/PPM with comments among its pixels")
def pbm_with_comments_among_its_pixels(tmp_path, weights):
    (tmp_path / "digit.pbm").write_bytes(b"P1\n28 28\n" + b"0 " * 784 + b"#\n" * 1_000_000)  # 23 s for Pillow
    return _predict(weights, tmp_path / "digit.pbm")


@case("shows no digit, only a mark 1 pixels across")
def predict_of_one_lit_pixel(tmp_path, weights):

    image = np.zeros((2, 2), np.uint8)
    image[0, 0] = 255
    return _predict(weights, _png(tmp_path, image))


test_refused = case.test()
