"""Shared fixtures: the real MNIST (fetched once into one shared data folder) and small slices."""

import os
from pathlib import Path

import pytest
import torch
from filelock import FileLock

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


def _shared(tmp_path_factory) -> Path:
    """A folder all workers of this session share (each worker's own temp folder is inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


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
