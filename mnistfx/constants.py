"""Names and limits shared by the library and the command line, importable without torch.

The ``mnistfx`` command builds its options from these before torch loads, so ``mnistfx --help``
stays fast; the library checks values against the same tuples.
"""

from importlib import metadata

try:
    VERSION = metadata.version("mnistfx")  # the one source is pyproject.toml
except metadata.PackageNotFoundError:  # a source tree that was never installed
    VERSION = "0+unknown"

MODELS = ("tuned", "cnn")               # the built-in models, as mnistfx.models defines them
PRECISIONS = ("fp32", "bf16")           # of the training forward pass
MAX_STEPS_PER_CALL = 8                  # compiling more steps into one graph takes minutes
DATA_SOURCES = ("torchvision", "registry")
BENCH_KINDS = ("train", "infer")
BENCH_BATCH_SIZES = (32, 256, 512)
MNIST_TRAIN_SIZE = 60000                # images in MNIST's training set (validation comes from it)
DEVICES_HINT = "cpu, cuda or cuda:N"
