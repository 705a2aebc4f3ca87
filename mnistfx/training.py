"""Training: :func:`train` runs a config from scratch, :func:`resume` continues a run from its
checkpoint; both end with the validation and full test-set metrics in a :class:`~mnistfx.Run`.
The loop itself is :class:`mnistfx.loop.Loop`.
"""

from __future__ import annotations

from typing import Callable

from . import distributed
from .checkpoint import checkpoint_file, load_checkpoint
from .config import TrainConfig
from .data import MNIST
from .errors import ConfigError
from .loop import Loop
from .runs import Run, run_folder
from .runtime import resolve_device
from .weights import read_weights


def train(config: TrainConfig, *, data: MNIST | None = None, on_event: Callable | None = None,
          checkpoint_dir=None, checkpoint_every: int = 0, overwrite: bool = False, loss: Callable | None = None,
          test: bool = True, parallel: distributed.Parallel | None = None) -> Run:
    """Train a model from scratch as ``config`` says, then evaluate it on the full test set.

    Everything that can be checked is checked before any work: the device, the model, the
    checkpoint folder (created if needed; one that holds a run is refused unless ``overwrite``,
    and so is one another process is writing into). A run whose loss stops being finite is
    stopped (checked at each progress report and checkpoint, so without a wait per step), and
    nothing of it is saved from that point.

    Arguments:
        config: the run's :class:`~mnistfx.TrainConfig`.
        data: MNIST already loaded (default: :func:`~mnistfx.load_mnist` on ``config.data_root``).
        on_event: called as ``on_event(kind, **info)`` for progress: ``"config"`` (the config,
            once the checks passed), ``"loading"`` (before MNIST is loaded), ``"start"`` (steps
            per epoch, and the epoch and step it starts from), ``"compiling"``, ``"step"`` (every
            few steps: epoch, step, loss, img/s), ``"checkpoint"``, ``"epoch"`` (the history
            entry) and ``"test"``.
        checkpoint_dir: if given, a checkpoint (``checkpoint.safetensors``) is written there
            atomically after every epoch, from which :func:`resume` continues the run.
        checkpoint_every: also write it every this many steps (0: only after epochs).
        overwrite: replace the run (finished or not) that ``checkpoint_dir`` holds.
        loss: the loss function of :func:`~mnistfx.make_train_step` (default: cross-entropy with the
            config's label smoothing); pass the same one to :func:`resume`.
        test: evaluate on the test set at the end (``False`` for sweeps, which must not look at it).
        parallel: train data-parallel as this rank (see :mod:`mnistfx.distributed`; the process group
            must be started): rank 0 alone writes ``checkpoint_dir``, reports and evaluates, and the
            other ranks' :class:`Run` has no metrics.

    Returns:
        A :class:`~mnistfx.Run` with the parameters (and state), per-epoch history and validation /
        test metrics; for an ensemble also each member's.

    Raises:
        RunFolderError: ``checkpoint_dir`` holds a run, or another process is writing into it.
        MnistfxError: ``torch.compile`` failed (e.g. its cache folder cannot be written).
        MnistfxError: the loss stopped being finite, or a checkpoint could not be written.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig (see mnistfx.recipe), not {type(config).__name__}")
    if not isinstance(test, bool):
        raise TypeError(f"test must be True or False, not {test!r}")
    if parallel is not None:
        distributed.check_started(parallel)
        distributed.check_same_work(parallel, False)
    return Loop(config, None, data, on_event, checkpoint_dir, checkpoint_every, overwrite=overwrite, loss=loss,
                 test=test, parallel=parallel).run()


def resume(run_dir, *, data: MNIST | None = None, on_event: Callable | None = None,
           checkpoint_every: int = 0, data_root=None, loss: Callable | None = None, test: bool = True,
           parallel: distributed.Parallel | None = None) -> Run:
    """Continue the run whose checkpoint is in ``run_dir``, as :func:`train` would have gone on.

    On the CPU the result is bit-identical to the uninterrupted run's. Checkpoints keep being
    written to ``run_dir`` (a folder, or the checkpoint file in it). Every field of the checkpoint
    is checked as untrusted input, and no path is taken from it: MNIST is read from ``data_root``
    (default: :func:`~mnistfx.default_root`), not from the folder the run was started with.
    Other arguments as for :func:`train`; with ``parallel``, rank 0 reads the checkpoint and sends it to
    the other ranks, which check it as their own.
    """
    if parallel is None:
        ckpt = load_checkpoint(run_dir)
    else:
        distributed.check_started(parallel)
        distributed.check_same_work(parallel, True)
        raw = distributed.on_main(parallel, lambda: read_weights(checkpoint_file(run_dir)))
        ckpt = load_checkpoint(checkpoint_file(run_dir) if parallel.main else run_dir,
                               data=distributed.share_bytes(parallel, raw))
    run_dir = run_folder(run_dir)
    try:
        resolve_device(ckpt.config.device)
    except ConfigError:
        raise ConfigError(f"{run_dir} was trained on {ckpt.config.device}, which is not available here: resume it "
                          "where that device is (its checkpoint holds that device's random state)") from None
    return Loop(ckpt.config, ckpt, data, on_event, run_dir, checkpoint_every, data_root=data_root, loss=loss,
                 test=test, parallel=parallel).run()


