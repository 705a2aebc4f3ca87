"""mnistfx: handwritten-digit recognition (MNIST) in PyTorch, written as pure functions.

The public API is what this file imports; everything else is internal.
"""

__version__ = "0.1.0"

from .augment import random_affine
from .bench import benchmark
from .checkpoint import Checkpoint, load_checkpoint
from .data import MNIST, default_root, fetch_mnist, load_mnist, verify_mnist
from .images import read_digit_images
from .errors import DataError, MnistfxError, WeightsError
from .metrics import Metrics, evaluate, logits, predict
from .models import MODELS, Model, get_model, num_params
from .optim import Optimizer, adam
from .rng import as_generator, fold_in
from .train import RECIPES, Run, TrainConfig, batch_inputs, make_train_step, recipe, resume, save_run, train
from .weights import import_notebook_checkpoint, load_model_weights, load_weights, save_weights

__all__ = [
    "MNIST", "MODELS", "RECIPES", "Checkpoint", "DataError", "Metrics", "MnistfxError", "Model", "Optimizer",
    "Run", "TrainConfig", "WeightsError", "adam", "as_generator", "batch_inputs", "benchmark",
    "default_root", "evaluate",
    "fetch_mnist", "fold_in", "get_model", "import_notebook_checkpoint", "load_checkpoint", "load_mnist",
    "load_model_weights", "load_weights", "logits", "make_train_step", "num_params", "predict",
    "read_digit_images",
    "random_affine", "recipe", "resume", "save_run", "save_weights", "train", "verify_mnist",
]
