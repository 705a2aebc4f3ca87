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
    "MNIST": "data", "load_mnist": "data", "verify_mnist": "data", "fetch_mnist": "fetch",
    "default_root": "idx",
    # models and their parts
    "MODELS": "constants", "Model": "models", "get_model": "registry", "register_model": "registry",
    "import_model": "registry", "model_names": "registry", "check_params": "contract", "check_state": "contract", "check_model": "contract",
    "check_images": "models",
    "num_params": "models", "to_module": "modules", "random_affine": "augment", "as_generator": "rng", "fold_in": "rng",
    # optimisation
    "Optimizer": "optim", "adam": "optim", "adamw": "optim", "sgd": "optim", "lr_schedule": "optim",
    "make_train_step": "step", "make_multi_step": "step", "compile_step": "step", "batch_inputs": "step",
    "augment_batch": "step",
    # ensembles
    "stack": "ensemble", "unstack": "ensemble", "make_ensemble_step": "ensemble", "member_seed": "ensemble",
    # runs
    "TrainConfig": "config", "RECIPES": "config", "recipe": "config",
    "train": "training", "resume": "training", "train_val_split": "data",
    "Run": "runs", "save_run": "runs", "default_run_dir": "runs", "prepare_run_dir": "runs",
    "run_folder": "runs", "check_run_dir": "runs", "run_lock": "runs",
    "Checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    # evaluation, weights, images
    "Metrics": "metrics", "evaluate": "metrics", "evaluate_members": "metrics", "logits": "metrics",
    "probabilities": "metrics", "predict": "metrics", "metrics_from_predictions": "metrics",
    "save_weights": "weights", "load_weights": "weights", "load_model_weights": "weights", "Weights": "weights",
    "import_notebook_checkpoint": "pth", "export_notebook_checkpoint": "pth",
    "read_digit_images": "images", "prepare_digit": "images", "decode_image": "images",
    # numbers of several digits
    "read_number": "reading", "find_digits": "reading", "Reading": "reading", "ReadDigit": "reading",
    "FoundDigit": "reading",
    # other runtimes (ONNX: the optional "export" extra)
    "export_onnx": "export", "export_program": "export", "load_program": "export",
    # the drawing page and its API
    "make_server": "server", "DigitServer": "server",
    # where it runs, and how fast
    "resolve_device": "runtime", "use_compile_cache": "runtime", "environment": "runtime",
    "cpu_description": "runtime", "benchmark": "bench", "benchmark_ensemble": "bench_ensemble", "keep_freed_memory": "runtime", "to_json": "_io",
    # pictures (matplotlib, the optional "plot" extra)
    "plot_run": "plots", "plot_history": "plots", "plot_confusion": "plots", "plot_mistakes": "plots", "plot_members": "plots",
    # errors
    "MnistfxError": "errors", "ConfigError": "errors", "DataError": "errors", "WeightsError": "errors", "ModelError": "errors",
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
    from .augment import random_affine
    from .bench import benchmark
    from .bench_ensemble import benchmark_ensemble
    from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .config import RECIPES, TrainConfig, recipe
    from .constants import MODELS
    from .data import MNIST, load_mnist, train_val_split, verify_mnist
    from .errors import ConfigError, DataError, MnistfxError, ModelError, RunFolderError, WeightsError
    from .export import export_onnx, export_program, load_program
    from .fetch import fetch_mnist
    from .idx import default_root
    from .images import decode_image, prepare_digit, read_digit_images
    from .ensemble import make_ensemble_step, member_seed, stack, unstack
    from .metrics import (Metrics, evaluate, evaluate_members, logits, metrics_from_predictions, predict,
                          probabilities)
    from .contract import check_model, check_params, check_state
    from .models import Model, check_images, num_params
    from .modules import to_module
    from .optim import Optimizer, adam, adamw, lr_schedule, sgd
    from .pth import export_notebook_checkpoint, import_notebook_checkpoint
    from .registry import get_model, import_model, model_names, register_model
    from .plots import plot_confusion, plot_history, plot_members, plot_mistakes, plot_run
    from .rng import as_generator, fold_in
    from .reading import FoundDigit, ReadDigit, Reading, find_digits, read_number
    from .server import DigitServer, make_server
    from .runs import Run, check_run_dir, default_run_dir, prepare_run_dir, run_folder, run_lock, save_run
    from .runtime import cpu_description, environment, keep_freed_memory, resolve_device, use_compile_cache
    from .step import augment_batch, batch_inputs, compile_step, make_multi_step, make_train_step
    from .training import resume, train
    from .weights import Weights, load_model_weights, load_weights, save_weights
