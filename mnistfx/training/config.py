"""A run's configuration: :class:`TrainConfig`, checked where it is made, and the named recipes.

Importable without torch, so the command line can show the recipes' values in its help.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._checks import check_choice, check_fraction, check_positive, check_whole, is_whole
from ..constants import (
    MAX_BATCH_SIZE,
    MAX_ENSEMBLE,
    MAX_EPOCHS,
    MAX_SEED,
    MAX_STEPS_PER_CALL,
    MNIST_TRAIN_SIZE,
    MODEL_NAME,
    MODELS,
    OPTIMIZERS,
    PRECISIONS,
)
from ..errors import ConfigError
from ..runtime.cpu import has_native_bf16


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; stored with the weights it produces.

    Every field is checked when the config is made (also by ``dataclasses.replace``): a value
    no run can use raises :class:`~mnistfx.ConfigError`. Whether the model exists and the device
    is available is checked when training starts.

    Attributes:
        model: the model's name (``"tuned"``, ``"cnn"``, or one registered with
            :func:`~mnistfx.register_model`).
        epochs: passes over the training split.
        batch_size: images per step (the last partial batch of each epoch is dropped).
        lr: the optimiser's (peak) learning rate.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (with momentum).
        weight_decay: AdamW's decoupled weight decay (default 0.01, below 1), or SGD's L2 penalty
            (default 0); Adam has none.
        momentum: SGD's momentum (other optimisers ignore it).
        warmup: the fraction of steps, at the start, over which the learning rate rises
            linearly from ``lr / 25`` to ``lr`` (0: none).
        decay: the fraction of steps, at the end, over which the learning rate falls
            linearly to 0 (0: constant, as the notebook). ``warmup=0.2, decay=0.8`` is a
            one-cycle schedule.
        label_smoothing: cross-entropy label smoothing (0: none).
        augment: random rotation ±15°, shift ±10 %, scale 0.9-1.1 on every training batch.
        clean_epochs: the last this many epochs train on unaugmented images.
        faithful_fill: warp as the notebook did, rotation then normalise then affine, so
            the affine's fill is mid-grey for ``tuned``; default: one warp, background fill.
        precision: ``"fp32"``, or ``"bf16"`` to run the training forward pass under bf16
            autocast (weights, gradients and Adam stay float32; evaluation is float32).
        val_size: training images held out for validation (chosen by the seed).
        train_size: use only this many of the remaining training images (default: all).
        seed: the root of all randomness: split, init, shuffling, augmentation, dropout.
        ensemble: train this many members at once (1: a single model); each has its own
            initialisation and dropout noise, from seeds derived from ``seed``.
        compile: compile the train step with ``torch.compile``.
        steps_per_call: compiled runs do this many steps per call of the compiled function
            (its per-call overhead, about 0.5 ms on a 2-core CPU, is then paid once per group);
            each epoch's step count is rounded down to a multiple of it.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        data_root: the MNIST folder (default: ``$MNISTFX_DATA`` or the user cache).
        recipe: the name of the recipe the config started from (informational).
    """

    model: str = "tuned"
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup: float = 0.0
    decay: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = True
    clean_epochs: int = 0
    faithful_fill: bool = False
    precision: str = "fp32"
    val_size: int = 5000
    train_size: int | None = None
    seed: int = 0
    ensemble: int = 1
    compile: bool = True
    steps_per_call: int = 1
    device: str = "cpu"
    data_root: str | None = None
    recipe: str = "default"

    def __post_init__(self):
        for name in ("model", "device", "recipe", "optimizer"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a name (str), not {getattr(self, name)!r}")
        for name in ("augment", "faithful_fill", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, not {getattr(self, name)!r}")
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ConfigError(f"data_root must be a folder name (str) or None, not {self.data_root!r}")
        if not MODEL_NAME.fullmatch(self.model):
            raise ConfigError(
                f"{self.model!r} is not a model name: choose one of {', '.join(MODELS)} or register yours"
            )
        fix = functools.partial(object.__setattr__, self)  # numpy numbers become plain ones (JSON, repr)
        fix("seed", check_whole("seed", self.seed, -MAX_SEED, MAX_SEED))
        fix("epochs", check_whole("epochs", self.epochs, 1, MAX_EPOCHS))
        fix("batch_size", check_whole("batch-size", self.batch_size, 1, MAX_BATCH_SIZE))
        fix(
            "clean_epochs",
            check_whole("clean-epochs", self.clean_epochs, 0, self.epochs, hi_name=f"epochs ({self.epochs})"),
        )
        for name in ("warmup", "decay", "label_smoothing"):
            fix(name, check_fraction(name.replace("_", "-"), getattr(self, name)))
        if self.warmup + self.decay > 1:
            raise ConfigError(
                f"warmup ({self.warmup}) and decay ({self.decay}) together exceed all the steps: "
                "make their sum at most 1"
            )
        check_choice("precision", self.precision, PRECISIONS)
        fix("lr", check_positive("lr", self.lr))
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.weight_decay is not None:
            fix("weight_decay", check_fraction("weight-decay", self.weight_decay))
            if self.optimizer == "adamw" and self.weight_decay >= 1:
                raise ConfigError("adamw's weight-decay must be below 1 (each step shrinks by lr times it)")
        fix("momentum", check_fraction("momentum", self.momentum))
        if self.momentum >= 1:
            raise ConfigError(f"momentum must be below 1, not {self.momentum}")
        if self.weight_decay and self.optimizer == "adam":
            raise ConfigError("adam has no weight decay: use --optimizer adamw (decoupled) or sgd")
        fix("ensemble", check_whole("ensemble", self.ensemble, 1, MAX_ENSEMBLE))
        if not is_whole(self.val_size) or not 0 < self.val_size < MNIST_TRAIN_SIZE:
            raise ConfigError(f"val-size must be between 1 and {MNIST_TRAIN_SIZE - 1}, not {self.val_size!r}")
        fix("val_size", int(self.val_size))
        most = MNIST_TRAIN_SIZE - self.val_size
        if self.train_size is not None:
            if not is_whole(self.train_size) or not 0 < self.train_size <= most:
                raise ConfigError(f"train-size must be between 1 and {most}, not {self.train_size!r}")
            fix("train_size", int(self.train_size))
        if self.batch_size > self.n_train:
            raise ConfigError(f"batch-size {self.batch_size} is larger than the {self.n_train} training images")
        fix(
            "steps_per_call",
            check_whole(
                "steps-per-call",
                self.steps_per_call,
                1,
                MAX_STEPS_PER_CALL,
                why=" (compiling more steps at once takes minutes)",
            ),
        )
        if self.compile and self.steps_per_call * self.batch_size > self.n_train:
            raise ConfigError(
                f"steps-per-call {self.steps_per_call} batches of {self.batch_size} are more than the "
                f"{self.n_train} training images"
            )

    @property
    def n_train(self) -> int:
        """The number of training images (after the validation split and ``train_size``)."""
        return MNIST_TRAIN_SIZE - self.val_size if self.train_size is None else self.train_size

    @property
    def group(self) -> int:
        """Steps per call of the step function: ``steps_per_call`` when compiled, else 1 (eager
        runs give the same numbers either way)."""
        return self.steps_per_call if self.compile else 1

    @property
    def steps_per_epoch(self) -> int:
        """Steps in each epoch: full batches only, rounded down to a multiple of :attr:`group`."""
        return self.n_train // self.batch_size // self.group * self.group

    def to_dict(self) -> dict:
        """The config as plain values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A config from :meth:`to_dict`'s values; unknown or malformed fields raise :class:`ConfigError`."""
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a dict of fields, not {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)}, key=str)
        if unknown:
            raise ConfigError(f"a config has no field {unknown[0]!r}")
        return cls(**values)


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}

# Named recipes, by recipe then model.
# "default": the notebook's recipe (Adam 1e-3, batch 32, augmented) plus one change: the
# learning rate decays linearly to 0 over the last fifth of the steps. Measured on `tuned`
# (seeds 0-2, one step per compiled call): constant lr 99.06 / 99.08 / 99.10 % test accuracy,
# with the decay 99.11 / 99.25 / 99.15 %. `decay=0` gives the notebook's constant rate. `tuned`
# does two steps per compiled call (17 % more img/s at batch 32 on a 2-core CPU; its random
# streams then serve 64 images at a time): 99.20 / 99.22 / 99.16 %.
# "fast": the fewest seconds to >= 99.10 % for `tuned`: batch 256, a one-cycle schedule to a
# peak of 5e-3, label smoothing 0.1, the last epoch unaugmented, bf16 autocast forward.
# Measured (seeds 0-2): 10 epochs 99.21 / 99.12 / 99.06 % (mean 99.13), 12 epochs 99.18 / 99.09 /
# 99.17 % (mean 99.15); 12 keep a margin over 99.10 for about 4 s more.
# "default" for `resnet`: SGD (momentum 0.9, L2 5e-4) at batch 128, a one-cycle schedule to a peak of
# 0.1, label smoothing 0.1, the last epoch unaugmented, bf16 autocast forward. Chosen on the
# validation split of seed 0 (--no-test): 10 epochs 99.50 % (with each block's last BN scale
# starting at 0, which learned slowly), 15 epochs 99.64 %.
# bf16 in both rests on the CPU kind they were chosen on (an AMD EPYC with AVX-512 BF16): there it
# made the compiled step 1.3x (`tuned`, batch 256) and 2.1x (`resnet`) faster; on a newer EPYC kind,
# also with AVX-512 BF16, it made no difference for `tuned`; where bf16 is emulated (AVX2 only) it was
# 6.6x slower, so recipe() trains in float32 on a CPU without bf16 in hardware.
RECIPES = {
    "default": {
        "tuned": TrainConfig(model="tuned", epochs=15, decay=0.2, steps_per_call=2),
        "cnn": TrainConfig(model="cnn", epochs=10, decay=0.2),
        "resnet": TrainConfig(
            model="resnet",
            epochs=15,
            batch_size=128,
            lr=0.1,
            optimizer="sgd",
            weight_decay=5e-4,
            warmup=0.2,
            decay=0.8,
            label_smoothing=0.1,
            clean_epochs=1,
            precision="bf16",
        ),
    },
    "fast": {
        "tuned": TrainConfig(
            model="tuned",
            epochs=12,
            batch_size=256,
            lr=5e-3,
            warmup=0.2,
            decay=0.8,
            label_smoothing=0.1,
            clean_epochs=1,
            precision="bf16",
            recipe="fast",
        ),
    },
}


def recipe(model: str, name: str = "default", /, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of recipe ``name`` for ``model``, with some fields replaced.

    Arguments:
        model: a model name (see :data:`mnistfx.MODELS`); a model of your own gets the "default"
            recipe's values of :class:`TrainConfig`.
        name: a key of :data:`RECIPES`.
        overrides: fields to replace (checked like any config's). A recipe whose forward pass is bf16
            trains in float32 on a CPU without bf16 in hardware (see :func:`mnistfx.cpu_description`),
            unless ``precision`` is given.

    Returns:
        A new, checked :class:`TrainConfig`.
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    base = RECIPES[name].get(model)
    if base is None:
        have = [r for r in RECIPES if model in RECIPES[r]]
        if have:
            raise ConfigError(f"there is no {name!r} recipe for {model}: use one of {', '.join(have)}")
        if name != "default":
            raise ConfigError(
                f"the {name!r} recipe is for {', '.join(RECIPES[name])}: a model of your own takes "
                "the default recipe's values, with the options you give"
            )
        base = TrainConfig(model=model)  # a model of one's own (checked when training starts)
    unknown = sorted(set(overrides) - _FIELDS - {"recipe"}) or sorted({"model", "recipe"} & set(overrides))
    if unknown:
        raise ConfigError(
            f"recipe() cannot set {unknown[0]!r}: it sets the fields of TrainConfig except model and "
            f"recipe, which are its first two arguments"
        )
    device = overrides.get("device", base.device)
    if (
        base.precision == "bf16"
        and "precision" not in overrides
        and isinstance(device, str)
        and device.startswith("cpu")
        and not has_native_bf16()
    ):
        overrides = {**overrides, "precision": "fp32"}  # emulated bf16 is several times slower than float32
    return dataclasses.replace(base, **{"recipe": name, **overrides})
