"""Names and limits shared by the library and the command line, importable without torch.

The ``mnistfx`` command builds its options from these before torch loads, so ``mnistfx --help``
stays fast; the library checks values against the same tuples.
"""

import re
from importlib import metadata

try:
    VERSION = metadata.version("mnistfx")  # the one source is pyproject.toml
except metadata.PackageNotFoundError:  # a source tree that was never installed
    VERSION = "0+unknown"

NOTEBOOK_MODELS = ("tuned", "cnn")  # the notebook's two models, as mnistfx.models.notebook_cnns defines them
MODELS = (*NOTEBOOK_MODELS, "resnet", "dpcnn", "dpcnn_tanh", "smallcnn", "madrycnn")  # built-in: mnistfx.models.*
MODEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")  # what a model may be called
OPTIMIZERS = ("adam", "adamw", "sgd")  # as mnistfx.training.optim defines them
OWN_OPTIMIZER = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # an optimiser of one's own, as MODULE:ATTR
OPTIMIZER_NAME = re.compile(r"[A-Za-z_][\w.-]{0,63}")  # what an optimiser passed to train() may be called
SCHEDULES = ("linear", "cosine", "one-cycle", "step")  # the schedules a TrainConfig names
# MNIST-C's 15 corruptions (Mu & Gilmer 2019), in its order and spelling: mnistfx.data.corruptions makes them
CORRUPTIONS = (
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "shear",
    "scale",
    "rotate",
    "brightness",
    "translate",
    "stripe",
    "fog",
    "spatter",
    "dotted_line",
    "zigzag",
    "canny_edges",
)
ATTACKS = ("fgsm", "pgd")  # what `mnistfx robustness` attacks with (mnistfx.models.attacks)
MAX_ADV_STEPS = 100  # adversarial training's attack steps: each is unrolled into the compiled graph
PER_MEMBER = ("lr", "weight_decay", "momentum", "label_smoothing")  # may differ between an ensemble's members
PRECISIONS = ("fp32", "bf16")  # of the training forward pass
MAX_ENSEMBLE = 64  # members trained in one step
MAX_NPROC = 256  # data-parallel processes --nproc starts on one machine
MAX_STEPS_PER_CALL = 8  # compiling more steps into one graph takes minutes
MAX_EPOCHS = 10_000  # bounds that keep a mistyped number from running for ever
MAX_BATCH_SIZE = 8192  # a batch's activations and gradients stay within a few GB
MAX_SEED = 2**63 - 1
MAX_CHECKPOINT_EVERY = 10**9
BENCH_MAX_SECONDS = 60.0  # per timed block
BENCH_MAX_REPEATS = 100
DATA_SOURCES = ("torchvision", "registry")
BENCH_KINDS = ("train", "infer")
BENCH_BATCH_SIZES = (32, 256, 512)
MNIST_TRAIN_SIZE = 60000  # images in MNIST's training set (validation comes from it)
DEVICES_HINT = "cpu, cuda or cuda:N"
