"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is one safetensors file (no pickle) holding the parameters, the optimiser
state, the states of the run's random generators, the current epoch's shuffled order and
its running loss, with the config, position (epoch, step) and history as JSON metadata. It
is written atomically, so a kill during a save leaves the previous checkpoint intact, and it
is checked whole when read: a position that cannot belong to its run is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._checks import check_whole, is_finite
from .._types import StrPath
from ..constants import OPTIMIZERS
from ..errors import ConfigError, MnistfxError, WeightsError
from ..models.model import check_finite, check_params, check_state, check_state_usable
from ..models.registry import get_model
from ..models.weights_file import WEIGHTS_MAX_BYTES, parse_weights, read_weights, save_weights
from .config import TrainConfig
from .optim import Optimizer, config_optimizer

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "mnistfx-checkpoint/2"  # 2: the optimiser state holds its hyperparameters; the optimiser is recorded
GENERATORS = ("shuffle", "augment", "dropout", "gaussian")
_RESTART = "start the run again with `train(config)`"
_HISTORY_KEYS = {"epoch", "train_loss", "val_loss", "val_accuracy", "seconds", "img_per_s"}
_OPTIONAL_HISTORY_KEYS = {"epsilon"}  # a private run's privacy spent so far
_VAL_KEYS = {"val_loss", "val_accuracy"}  # None when the run holds out no validation images
_CPU_RNG_BYTES = torch.Generator().get_state().numel()


@dataclass
class Checkpoint:
    """A run's state between two steps.

    Attributes:
        config: the run's :class:`~mnistfx.TrainConfig`.
        epoch: the epoch in progress (from 1).
        step: steps of that epoch done; ``config.steps_per_epoch`` when it is finished
            (validated and in ``history``).
        params: the parameters (an ensemble's stacked on a leading member axis).
        state: the model's state (``{}`` for a model without state).
        opt_state: the optimiser state (``step``, ``hyper`` and its buffers, e.g. Adam's ``mu`` and ``nu``).
        rng: the state of each generator in ``GENERATORS``, as uint8 tensors.
        perm: the epoch's order of training images (while the epoch is unfinished).
        loss_sum: the sum of the epoch's step losses so far.
        history: the finished epochs' history entries.
        compile_seconds: the time the first step of the run took to compile.
        optimizer: what the optimiser was (:meth:`~mnistfx.Optimizer.describe`); a run continues only with
            the same one.
        own_step: whether the run trains with a step of its own (``train``'s ``step``): it continues only
            with one again.
    """

    config: TrainConfig
    epoch: int
    step: int
    params: dict
    state: dict
    opt_state: dict
    rng: dict
    perm: torch.Tensor | None
    loss_sum: torch.Tensor
    history: list
    compile_seconds: float = 0.0
    optimizer: dict = field(default_factory=dict)
    own_step: bool = False

    @property
    def finished(self) -> bool:
        """Whether the run's last epoch is done (nothing is left to resume)."""
        return self.epoch >= self.config.epochs and self.step >= self.config.steps_per_epoch


def save_checkpoint(path: StrPath, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically."""
    tensors = {f"params/{k}": v for k, v in ckpt.params.items()}
    tensors.update({f"state/{k}": v for k, v in ckpt.state.items()})
    tensors["opt/step"] = ckpt.opt_state["step"]
    for part, values in ckpt.opt_state.items():
        if part != "step":
            tensors.update({f"opt/{part}/{k}": v for k, v in values.items()})
    tensors.update({f"rng/{k}": v for k, v in ckpt.rng.items()})
    tensors["loss_sum"] = ckpt.loss_sum
    if ckpt.perm is not None:
        tensors["perm"] = ckpt.perm
    meta = {
        "format": FORMAT,
        "config": ckpt.config.to_dict(),
        "epoch": ckpt.epoch,
        "step": ckpt.step,
        "history": ckpt.history,
        "compile_seconds": ckpt.compile_seconds,
        "optimizer": ckpt.optimizer,
        "own_step": ckpt.own_step,
        "torch_version": torch.__version__,
    }
    save_weights(path, tensors, meta)


def check_checkpoint_size(model, config: TrainConfig, opt: Optimizer) -> None:
    """Refuse, before any work, a run whose checkpoint would be larger than mnistfx reads back."""
    n = sum(math.prod(shape) for shape in model.shapes().values())
    state = sum(math.prod(shape) for shape in model.state_shapes().values())
    size = 4 * config.ensemble * (n * (1 + len(opt.buffers)) + state)
    if size > WEIGHTS_MAX_BYTES:
        raise ConfigError(
            f"the checkpoint of {config.ensemble} {config.model} would be {size:,} bytes, more than "
            f"mnistfx reads back ({WEIGHTS_MAX_BYTES:,}): train fewer members at once"
        )


def checkpoint_file(path) -> Path:
    """The checkpoint file ``path`` names: itself, or ``checkpoint.safetensors`` in the folder it names."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        if not (path / CHECKPOINT_FILE).is_file():
            raise MnistfxError(
                f"no checkpoint in {path}: resume takes the folder of a run that "
                f"`mnistfx train` wrote (it holds {CHECKPOINT_FILE})"
            )
        path = path / CHECKPOINT_FILE
    elif path.name != CHECKPOINT_FILE:
        raise MnistfxError(
            f"{path} is not a run's {CHECKPOINT_FILE}: resume takes the folder of a run that "
            "`mnistfx train` wrote, or the checkpoint in it"
        )
    return path


def load_checkpoint(path: StrPath, *, data: bytes | None = None, optimizer: Optimizer | None = None) -> Checkpoint:
    """Read and check a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Arguments:
        path: the checkpoint file, or the run folder that holds ``checkpoint.safetensors``.
        data: the file's bytes, already read (data-parallel ranks check those rank 0 read);
            ``path`` then only names it in errors.
        optimizer: the optimiser the run trained with, when it was not the config's own (``train``'s
            ``optimizer``): it must be the one the checkpoint records, and its state must fit.

    Raises:
        MnistfxError: there is no checkpoint there.
        WeightsError: the file is damaged, not an mnistfx checkpoint, or its tensors or
            position do not fit its run.
    """
    path = checkpoint_file(path) if data is None else Path(path)
    try:
        tensors, meta = parse_weights(read_weights(path) if data is None else data, path)
    except WeightsError as e:
        reason = str(e).split(": pass")[0]
        raise WeightsError(f"cannot resume from {path}: {reason}; {_RESTART}") from None
    if meta.get("format") == "mnistfx-checkpoint/1":
        raise WeightsError(
            f"{path} was written by mnistfx 0.1, whose optimiser state this version does not continue: {_RESTART}"
        )
    if meta.get("format") != FORMAT:
        raise WeightsError(
            f"{path} is not an mnistfx training checkpoint: pass the folder of a run that `mnistfx train` wrote"
        )
    try:
        ckpt = Checkpoint(
            config=TrainConfig.from_dict(meta["config"]),
            epoch=check_whole("epoch", meta["epoch"], 1),
            step=check_whole("step", meta["step"], 0),
            params=_take(tensors, "params/"),
            state=_take(tensors, "state/"),
            opt_state={"step": tensors.pop("opt/step")},
            rng={k: tensors.pop(f"rng/{k}") for k in GENERATORS},
            perm=tensors.pop("perm", None),
            loss_sum=tensors.pop("loss_sum"),
            history=meta["history"],
            compile_seconds=_seconds(meta.get("compile_seconds", 0.0)),
            optimizer=meta["optimizer"],
            own_step=meta["own_step"],
        )
        if not isinstance(ckpt.own_step, bool):
            raise TypeError("own_step must be true or false")
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise WeightsError(
            f"checkpoint {path} is incomplete or damaged ({type(e).__name__}: {e}): {_RESTART}"
        ) from None
    cfg = ckpt.config
    model = get_model(cfg.model)
    members = cfg.ensemble if cfg.ensemble > 1 else None
    opt = _optimizer_of(path, ckpt, optimizer)
    parts = ("hyper", *opt.buffers) if opt is not None else {k.split("/")[1] for k in tensors if k.startswith("opt/")}
    for part in parts:
        ckpt.opt_state[part] = _take(tensors, f"opt/{part}/")
    if tensors:
        raise WeightsError(f"checkpoint {path} has an unexpected tensor {next(iter(tensors))}: {_RESTART}")
    source = f"checkpoint {path}"
    hyper = ckpt.opt_state.pop("hyper")
    check_params(model, ckpt.params, source=source, dtype=torch.float32, members=members)
    check_state(model, ckpt.state, source=source, members=members)
    for part, values in ckpt.opt_state.items():
        if part != "step":
            check_params(
                model, values, source=f"{source} ({cfg.optimizer} {part})", dtype=torch.float32, members=members
            )
    for part in (ckpt.params, ckpt.state, *(v for k, v in ckpt.opt_state.items() if k != "step")):
        check_finite(part, source=source, fix=f"the file is damaged; {_RESTART}")
    hyper_shape = (cfg.ensemble,) if members else ()
    own = set(hyper) - {"label_smoothing"} | {"lr"} if opt is None else set(opt.hyper)  # None: any optimiser's
    if (
        set(hyper) != own | ({"label_smoothing"} if "label_smoothing" in cfg.per_member else set())
        or any(
            v.dtype != torch.float32
            or tuple(v.shape) != hyper_shape
            or not bool(torch.isfinite(v).all())
            or (v < 0).any()
            for v in hyper.values()
        )
        or not bool((hyper["lr"] > 0).all())
    ):
        raise WeightsError(f"checkpoint {path} holds other hyperparameters than its optimiser's: {_RESTART}")
    ckpt.opt_state["hyper"] = hyper
    check_state_usable(model, ckpt.state, source=source, fix=f"the file is damaged; {_RESTART}")
    problem = _position_problem(ckpt) or _state_problem(ckpt)
    if problem:
        raise WeightsError(f"checkpoint {path} does not fit its run ({problem}): the file is damaged; {_RESTART}")
    _in_fresh_order(ckpt, model, opt)
    return ckpt


def _in_fresh_order(ckpt: Checkpoint, model, opt: Optimizer | None) -> None:
    """Put the checkpoint's dicts in the order a fresh run's state has them (``Trainer.init_state``).

    safetensors reads a file's tensors in an order of its own, another in each process, and the compiled step
    traces its input dicts in their order: in the file's order a resumed run compiled a graph of its own in
    every process (the compile cache never found it), and compiled again after the first call, whose outputs
    (in the step's order) failed the first graph's guards. The keys were checked above."""
    order = list(model.shapes())
    ckpt.params = {k: ckpt.params[k] for k in order}
    ckpt.state = {k: ckpt.state[k] for k in model.state_shapes()}
    hyper = ckpt.opt_state["hyper"]
    first = [*opt.hyper, "label_smoothing"] if opt is not None else []  # init's order; a per-member smoothing last
    hyper_order = [k for k in first if k in hyper] + sorted(set(hyper) - set(first))
    buffers = opt.buffers if opt is not None else sorted(set(ckpt.opt_state) - {"step", "hyper"})
    ckpt.opt_state = {
        "step": ckpt.opt_state["step"],
        "hyper": {k: hyper[k] for k in hyper_order},
        **{part: {k: ckpt.opt_state[part][k] for k in order} for part in buffers},
    }


def _optimizer_of(path: Path, ckpt: Checkpoint, given: Optimizer | None) -> Optimizer | None:
    """The optimiser the checkpoint's run continues with: ``given``, or its config's; refused unless it is the
    one the checkpoint records. ``None`` for a run with an optimiser of its own read by :func:`read_position`."""
    cfg = ckpt.config
    if given is _ANY:
        return None if cfg.optimizer not in OPTIMIZERS else config_optimizer(cfg)
    if given is None and cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"the run in {path.parent} trained with an optimiser of its own ({cfg.optimizer}): pass it again, as "
            "`optimizer`"
        )
    opt = config_optimizer(cfg) if given is None else given
    if not isinstance(opt, Optimizer):
        raise TypeError(f"optimizer must be a mnistfx.Optimizer (see mnistfx.chain), not {type(opt).__name__}")
    recorded = ckpt.optimizer
    if json.loads(json.dumps(opt.describe())) != recorded:
        have = f"{opt.describe()['name']} ({_short(opt.describe())})"
        was = f"{recorded.get('name')} ({_short(recorded)})" if isinstance(recorded, dict) else repr(recorded)[:80]
        raise ConfigError(
            f"the run in {path.parent} trained with {was}, not {have}: resume it with the optimiser it started with"
        )
    return opt


_ANY: Optimizer = object()  # type: ignore[assignment]  # read_position's "whatever the optimiser"


def read_position(path: StrPath) -> Checkpoint:
    """A checkpoint read and checked as :func:`load_checkpoint` does, but for any optimiser, also one of the
    run's own that is not at hand: for where a run stands (its epoch, whether it finished), not to resume."""
    return load_checkpoint(path, optimizer=_ANY)


def _short(description: dict) -> str:
    """An optimiser's hyperparameters and schedule, in a few words."""
    hyper = description.get("hyper", {})
    words = [f"{k} {v:g}" for k, v in hyper.items() if isinstance(v, (int, float))] if isinstance(hyper, dict) else []
    schedule = description.get("schedule", {})
    return ", ".join([*words, f"schedule {schedule.get('name') if isinstance(schedule, dict) else '?'}"])


def _seconds(value) -> float:
    if not (is_finite(value) and value >= 0):
        raise ValueError("compile_seconds must be a number of seconds")
    return float(value)


def _position_problem(ckpt: Checkpoint) -> str | None:
    """Why the checkpoint's position cannot be a point of its run, if it cannot."""
    cfg = ckpt.config
    n_steps = cfg.steps_per_epoch
    mid_epoch = ckpt.step < n_steps
    if not (ckpt.epoch <= cfg.epochs and ckpt.step <= n_steps and ckpt.step % cfg.group == 0):
        return f"position epoch {ckpt.epoch}, step {ckpt.step}"
    if not isinstance(ckpt.history, list) or len(ckpt.history) != ckpt.epoch - mid_epoch:
        return f"position epoch {ckpt.epoch}, step {ckpt.step} with the wrong number of history entries"
    if mid_epoch:
        perm = ckpt.perm
        if perm is None or perm.dtype != torch.int64 or tuple(perm.shape) != (cfg.n_train,):
            return f"position epoch {ckpt.epoch}, step {ckpt.step} without the epoch's order"
        if not torch.equal(perm.sort().values, torch.arange(cfg.n_train)):
            return "an order of training images that is not a permutation"
    elif ckpt.perm is not None:
        return "an order of training images after the epoch ended"
    return None


def _state_problem(ckpt: Checkpoint) -> str | None:
    """Why the optimiser step, loss sum, generator states or history cannot be right, if they cannot."""
    cfg, step, loss_sum = ckpt.config, ckpt.opt_state["step"], ckpt.loss_sum
    done = (ckpt.epoch - 1) * cfg.steps_per_epoch + ckpt.step
    shape = (cfg.ensemble,) if cfg.ensemble > 1 else ()
    if step.dtype != torch.float32 or tuple(step.shape) != shape or not bool((step == done).all()):
        return f"an optimiser step count that is not {done}"
    if loss_sum.dtype != torch.float32 or loss_sum.dim() != 0 or not math.isfinite(loss_sum.item()):
        return "a loss sum that is not one finite float32"
    for name, state in ckpt.rng.items():
        if state.dtype != torch.uint8 or state.dim() != 1:
            return f"a {name} generator state that is not a uint8 vector"
        if cfg.device == "cpu" and state.numel() != _CPU_RNG_BYTES:
            return f"a {name} generator state of {state.numel()} bytes, not a CPU generator's {_CPU_RNG_BYTES}"
    if any(bool((nu < 0).any()) for nu in ckpt.opt_state.get("nu", {}).values()):
        return "an Adam second moment below zero"
    for entry in ckpt.history:
        if (
            not isinstance(entry, dict)
            or not _HISTORY_KEYS <= set(entry) <= _HISTORY_KEYS | _OPTIONAL_HISTORY_KEYS
            or not all(is_finite(v) or (v is None and k in _VAL_KEYS and not cfg.val_size) for k, v in entry.items())
        ):
            return "a history entry that is not an epoch's numbers"
    return None


def _take(tensors: dict, prefix: str) -> dict:
    """Remove and return the tensors whose names start with ``prefix``, without it."""
    keys = [k for k in tensors if k.startswith(prefix)]
    return {k[len(prefix) :]: tensors.pop(k) for k in keys}
