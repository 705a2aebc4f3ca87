"""mnistfx: handwritten-digit recognition (MNIST) in PyTorch, written as pure functions.

The public API is the names below, each importable as ``mnistfx.NAME``; everything else, every
module of the subpackages included, is internal (import the names from ``mnistfx``). Names are
loaded on first use, so ``import mnistfx`` (and the ``mnistfx`` command's help) does not import torch.
"""

import importlib
from typing import TYPE_CHECKING

from .constants import VERSION as __version__

# The module that holds each public name, lowest layer first (docs/design.md, Layout).
# fmt: off
_MODULES = {
    "data.idx": "default_root",
    "data.fetch": "fetch_mnist",
    "data.mnist": "load_mnist MNIST train_val_split verify_mnist",
    "data.augment": "Augmentation random_affine",
    "data.digit_images": "decode_image prepare_digit read_digit_images",
    "data.corruptions": "corrupt",
    "data.mnist_c": "load_mnist_c",
    "constants": "CORRUPTIONS MODELS",
    "rng": "as_generator fold_in",
    "models.model": "check_images check_model check_params check_state Model num_params",
    "models.registry": "get_model import_model model_names register_model",
    "models.ensemble": "make_ensemble_step member_seed stack unstack",
    "models.torch_module": "from_module to_module",
    "models.notebook_checkpoint": "export_notebook_checkpoint import_notebook_checkpoint",
    "models.weights_file": "load_weights save_weights",
    "models.attacks": "fgsm make_attack_step pgd",
    "models.evaluation": "evaluate evaluate_members logits Metrics metrics_from_predictions Mistakes predict "
    "probabilities top_mistakes",
    "training.config": "recipe RECIPES TrainConfig",
    "training.schedules": "constant cosine one_cycle Schedule step_decay warmup_linear_decay",
    "training.optim": "adam adamw add_decayed_weights chain clip_by_global_norm config_optimizer lr_schedule "
    "import_optimizer Optimizer scale_by_adam sgd trace Transform",
    "training.state": "TrainState",
    "training.adversarial": "make_adversarial_step",
    "training.privacy": "make_private_step noise_for_epsilon privacy_spent",
    "training.step": "make_multi_step make_train_step",
    "training.batches": "augment_batch batch_inputs",
    "training.compiling": "compile_step use_compile_cache",
    "training.distributed": "Parallel start_parallel",
    "training.trainer": "make_trainer Trainer",
    "training.loop": "resume train",
    "training.checkpoint": "Checkpoint load_checkpoint save_checkpoint",
    "training.runs": "check_run_dir default_run_dir load_history prepare_run_dir Run run_folder run_lock save_run",
    "trained.weights": "load_model_weights Weights",
    "trained.numbers": "find_digits FoundDigit read_number ReadDigit Reading",
    "trained.export": "export_onnx export_program load_program",
    "trained.server": "DigitServer make_server",
    "trained.robustness": "robustness Robustness",
    "trained.plots": "plot_confusion plot_corruptions plot_history plot_members plot_mistakes plot_robustness plot_run",
    "runtime.device": "environment keep_freed_memory resolve_device",
    "runtime.cpu": "cpu_description",
    "bench": "benchmark benchmark_ensemble",
    "_io": "to_json",
    "errors": "ConfigError DataError MnistfxError ModelError RunFolderError WeightsError",
}
# fmt: on
_PUBLIC = {name: module for module, names in _MODULES.items() for name in names.split()}

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
    from .constants import CORRUPTIONS, MODELS
    from .data.augment import Augmentation, random_affine
    from .data.corruptions import corrupt
    from .data.digit_images import decode_image, prepare_digit, read_digit_images
    from .data.fetch import fetch_mnist
    from .data.idx import default_root
    from .data.mnist import MNIST, load_mnist, train_val_split, verify_mnist
    from .data.mnist_c import load_mnist_c
    from .errors import ConfigError, DataError, MnistfxError, ModelError, RunFolderError, WeightsError
    from .models.attacks import fgsm, make_attack_step, pgd
    from .models.ensemble import make_ensemble_step, member_seed, stack, unstack
    from .models.evaluation import (
        Metrics,
        Mistakes,
        evaluate,
        evaluate_members,
        logits,
        metrics_from_predictions,
        predict,
        probabilities,
        top_mistakes,
    )
    from .models.model import Model, check_images, check_model, check_params, check_state, num_params
    from .models.notebook_checkpoint import export_notebook_checkpoint, import_notebook_checkpoint
    from .models.registry import get_model, import_model, model_names, register_model
    from .models.torch_module import from_module, to_module
    from .models.weights_file import load_weights, save_weights
    from .rng import as_generator, fold_in
    from .runtime.cpu import cpu_description
    from .runtime.device import environment, keep_freed_memory, resolve_device
    from .trained.export import export_onnx, export_program, load_program
    from .trained.numbers import FoundDigit, ReadDigit, Reading, find_digits, read_number
    from .trained.plots import (
        plot_confusion,
        plot_corruptions,
        plot_history,
        plot_members,
        plot_mistakes,
        plot_robustness,
        plot_run,
    )
    from .trained.robustness import Robustness, robustness
    from .trained.server import DigitServer, make_server
    from .trained.weights import Weights, load_model_weights
    from .training.adversarial import make_adversarial_step
    from .training.batches import augment_batch, batch_inputs
    from .training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .training.compiling import compile_step, use_compile_cache
    from .training.config import RECIPES, TrainConfig, recipe
    from .training.distributed import Parallel, start_parallel
    from .training.loop import resume, train
    from .training.optim import (
        Optimizer,
        Transform,
        adam,
        adamw,
        add_decayed_weights,
        chain,
        clip_by_global_norm,
        config_optimizer,
        import_optimizer,
        lr_schedule,
        scale_by_adam,
        sgd,
        trace,
    )
    from .training.privacy import make_private_step, noise_for_epsilon, privacy_spent
    from .training.runs import (
        Run,
        check_run_dir,
        default_run_dir,
        load_history,
        prepare_run_dir,
        run_folder,
        run_lock,
        save_run,
    )
    from .training.schedules import Schedule, constant, cosine, one_cycle, step_decay, warmup_linear_decay
    from .training.state import TrainState
    from .training.step import make_multi_step, make_train_step
    from .training.trainer import Trainer, make_trainer
