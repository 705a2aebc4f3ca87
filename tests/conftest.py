"""Shared fixtures: the real MNIST (fetched once into one shared data folder) and small slices."""

import os
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from synthetic import synthetic_mnist

import mnistfx

# One compile cache for this process and the commands the tests run (which choose it themselves): a graph
# compiled in one is found by the other instead of compiled again, cold, in every subprocess.
mnistfx.use_compile_cache()

# The suite runs in pytest-xdist workers (pyproject.toml: -n 2, a file to a worker): much of a test's time
# is torch.compile's Python, on one core, so two files at once fill two cores. Each worker, and each
# command it starts, gets its share of the cores rather than all of them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


# The files that take longest, longest first, with their CPU seconds on a cold compile cache (2 cores, one torch
# thread a worker; 2026-12-03). Each worker takes the next file when it is almost done with one (pytest-xdist 3.8
# with --no-loadscope-reorder, pyproject.toml: without it xdist orders the files by their number of tests, and
# this order is lost), so the long ones start first and the short ones fill in at the end. test_serve.py comes
# first: its first test trains `trained_tuned` while the other worker runs test_distributed.py, and the other
# files that use it (test_docs.py, test_export.py, test_read.py, test_serve_page.py) come after it and find it
# trained, instead of waiting for its lock with a core idle (85 s of the suite when test_docs.py came first).
_LONGEST_FIRST = (
    "test_serve.py",  # 92, of which trained_tuned 86
    "test_distributed.py",  # 178, two ranks at a time
    "test_resume.py",  # 107
    "test_resnet.py",  # 85
    "test_ensemble.py",  # 80
    "test_robustness.py",  # about 70
    "test_docs.py",  # 64
    "test_adversarial_training.py",  # about 45
    "test_open_training.py",  # 43
    "test_own_models.py",  # 31
    "test_train.py",  # 26
    "test_privacy.py",  # 12
    "test_serve_page.py",  # 5, in 20 s of a browser's time: not the last file
    "test_export.py",  # 9
    "test_seams.py",  # 9
    "test_cli.py",  # 8
    "test_optim.py",  # 7
)


def pytest_collection_modifyitems(items):
    """Run the longest files first (pytest-xdist hands files to workers in this order)."""
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def _shared(tmp_path_factory) -> Path:
    """A folder all workers of this session share (each worker's own temp folder is inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST, from $MNISTFX_DATA or the user cache; fetched there if absent."""
    return mnistfx.load_mnist()


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """MNIST-like digits made in the test (3,200 training, 500 test images; see synthetic.py): for tests
    that need digits, not the real MNIST."""
    return synthetic_mnist(tmp_path_factory.mktemp("synthetic"), n_train=3200, n_test=500)


_REAL_DATA = {"mnist", "test_slice", "trained_tuned", "checkpoint_parts"}


@pytest.fixture(autouse=True)
def _fast_tests_use_no_real_data(request):
    """The fast tier (``-m fast``, run by ``make check``) runs without the real MNIST and the network."""
    if request.node.get_closest_marker("fast"):
        used = _REAL_DATA & set(request.fixturenames)
        assert not used, f"a fast test uses {sorted(used)}: the real MNIST"


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
    """`tuned` trained with the fast recipe for 8 of its 12 epochs (seed 0; what the tests ask of it is a model
    that reads digits well, and the last 4 epochs add a tenth of a percent; in float32 where the CPU has no
    bf16), saved as a run folder; the weights file's path."""
    folder = _shared(tmp_path_factory) / "trained-tuned-fast"
    with FileLock(f"{folder}.lock"):  # trained once a session: a worker that needs it too waits, then reads it
        if not (folder / "weights.safetensors").is_file():
            run = mnistfx.train(mnistfx.recipe("tuned", "fast", seed=0, epochs=8), data=mnist, test=False)
            mnistfx.save_run(run, folder)
    return folder / "weights.safetensors"


@pytest.fixture(scope="session")
def weights(tuned_weights):
    """An untrained `tuned` weights file: what the refusal corpora give commands that need weights."""
    return tuned_weights


class _Stop(Exception):
    pass


@pytest.fixture(scope="session")
def checkpoint_parts(mnist, tmp_path_factory):
    """``parts() -> (tensors, metadata)``: fresh copies of a real mid-epoch checkpoint's tensors and decoded
    metadata (the checkpoint is made once a session), for tests that tamper with one."""
    import json

    from safetensors.torch import load_file, safe_open

    folder = tmp_path_factory.mktemp("checkpoint")

    def stop(kind, **info):
        if kind == "checkpoint":
            raise _Stop

    config = mnistfx.recipe("tuned", epochs=2, train_size=320, val_size=500, compile=False)
    with pytest.raises(_Stop):
        mnistfx.train(config, data=mnist, checkpoint_dir=folder / "run", checkpoint_every=4, on_event=stop)
    path = folder / "run" / "checkpoint.safetensors"
    with safe_open(path, "pt") as f:
        meta = json.dumps({k: json.loads(v) for k, v in f.metadata().items()})
    tensors = load_file(path)

    def parts():
        return {k: v.clone() for k, v in tensors.items()}, json.loads(meta)

    return parts
