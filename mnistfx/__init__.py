"""mnistfx: handwritten-digit recognition (MNIST) in PyTorch, written as pure functions.

The public API is the names below, each importable as ``mnistfx.NAME``; everything else is
internal. Names are loaded on first use, so ``import mnistfx`` (and the ``mnistfx`` command's
help) does not import torch.
"""

import importlib
from typing import TYPE_CHECKING

from .constants import VERSION as __version__

# Public name -> the module that holds it.
_PUBLIC = {
    # the data set
    "MNIST": "data.mnist",
    "load_mnist": "data.mnist",
    "verify_mnist": "data.mnist",
    "fetch_mnist": "data.fetch",
    "default_root": "data.idx",
    # models and their parts
    "MODELS": "constants",
    "Model": "models.model",
    "get_model": "models.registry",
    "register_model": "models.registry",
    "import_model": "models.registry",
    "model_names": "models.registry",
    "check_params": "models.model",
    "check_state": "models.model",
    "check_model": "models.model",
    "check_images": "models.model",
    "num_params": "models.model",
    "to_module": "models.torch_module",
    "random_affine": "data.augment",
    "as_generator": "rng",
    "fold_in": "rng",
    # optimisation
    "Optimizer": "training.optim",
    "adam": "training.optim",
    "adamw": "training.optim",
    "sgd": "training.optim",
    "lr_schedule": "training.optim",
    "make_train_step": "training.step",
    "make_multi_step": "training.step",
    "compile_step": "training.compiling",
    "batch_inputs": "training.batches",
    "augment_batch": "training.batches",
    # ensembles
    "stack": "models.ensemble",
    "unstack": "models.ensemble",
    "make_ensemble_step": "models.ensemble",
    "member_seed": "models.ensemble",
    # runs
    "TrainConfig": "training.config",
    "RECIPES": "training.config",
    "recipe": "training.config",
    "train": "training.loop",
    "resume": "training.loop",
    "train_val_split": "data.mnist",
    "Run": "training.runs",
    "save_run": "training.runs",
    "default_run_dir": "training.runs",
    "prepare_run_dir": "training.runs",
    "run_folder": "training.runs",
    "check_run_dir": "training.runs",
    "run_lock": "training.runs",
    "Checkpoint": "training.checkpoint",
    "load_checkpoint": "training.checkpoint",
    "save_checkpoint": "training.checkpoint",
    # evaluation, weights, images
    "Metrics": "models.evaluation",
    "evaluate": "models.evaluation",
    "evaluate_members": "models.evaluation",
    "logits": "models.evaluation",
    "probabilities": "models.evaluation",
    "predict": "models.evaluation",
    "metrics_from_predictions": "models.evaluation",
    "save_weights": "models.weights_file",
    "load_weights": "models.weights_file",
    "load_model_weights": "trained.weights",
    "Weights": "trained.weights",
    "import_notebook_checkpoint": "models.notebook_checkpoint",
    "export_notebook_checkpoint": "models.notebook_checkpoint",
    "read_digit_images": "data.digit_images",
    "prepare_digit": "data.digit_images",
    "decode_image": "data.digit_images",
    # numbers of several digits
    "read_number": "trained.numbers",
    "find_digits": "trained.numbers",
    "Reading": "trained.numbers",
    "ReadDigit": "trained.numbers",
    "FoundDigit": "trained.numbers",
    # other runtimes (ONNX: the optional "export" extra)
    "export_onnx": "trained.export",
    "export_program": "trained.export",
    "load_program": "trained.export",
    # the drawing page and its API
    "make_server": "trained.server",
    "DigitServer": "trained.server",
    # where it runs, and how fast
    "resolve_device": "runtime.device",
    "use_compile_cache": "training.compiling",
    "environment": "runtime.device",
    "cpu_description": "runtime.cpu",
    "benchmark": "bench",
    "benchmark_ensemble": "bench",
    "keep_freed_memory": "runtime.device",
    "to_json": "_io",
    # pictures (matplotlib, the optional "plot" extra)
    "plot_run": "trained.plots",
    "plot_history": "trained.plots",
    "plot_confusion": "trained.plots",
    "plot_mistakes": "trained.plots",
    "plot_members": "trained.plots",
    # errors
    "MnistfxError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "WeightsError": "errors",
    "ModelError": "errors",
    "RunFolderError": "errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mnistfx' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from ._io import to_json
    from .bench import benchmark, benchmark_ensemble
    from .constants import MODELS
    from .data.augment import random_affine
    from .data.digit_images import decode_image, prepare_digit, read_digit_images
    from .data.fetch import fetch_mnist
    from .data.idx import default_root
    from .data.mnist import MNIST, load_mnist, train_val_split, verify_mnist
    from .errors import ConfigError, DataError, MnistfxError, ModelError, RunFolderError, WeightsError
    from .models.ensemble import make_ensemble_step, member_seed, stack, unstack
    from .models.evaluation import (
        Metrics,
        evaluate,
        evaluate_members,
        logits,
        metrics_from_predictions,
        predict,
        probabilities,
    )
    from .models.model import Model, check_images, check_model, check_params, check_state, num_params
    from .models.notebook_checkpoint import export_notebook_checkpoint, import_notebook_checkpoint
    from .models.registry import get_model, import_model, model_names, register_model
    from .models.torch_module import to_module
    from .models.weights_file import load_weights, save_weights
    from .rng import as_generator, fold_in
    from .runtime.cpu import cpu_description
    from .runtime.device import environment, keep_freed_memory, resolve_device
    from .trained.export import export_onnx, export_program, load_program
    from .trained.numbers import FoundDigit, ReadDigit, Reading, find_digits, read_number
    from .trained.plots import plot_confusion, plot_history, plot_members, plot_mistakes, plot_run
    from .trained.server import DigitServer, make_server
    from .trained.weights import Weights, load_model_weights
    from .training.batches import augment_batch, batch_inputs
    from .training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .training.compiling import compile_step, use_compile_cache
    from .training.config import RECIPES, TrainConfig, recipe
    from .training.loop import resume, train
    from .training.optim import Optimizer, adam, adamw, lr_schedule, sgd
    from .training.runs import Run, check_run_dir, default_run_dir, prepare_run_dir, run_folder, run_lock, save_run
    from .training.step import make_multi_step, make_train_step
