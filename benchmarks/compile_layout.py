"""Train steps compiled with and without inductor's channels-last layout optimisation, in one process.

    python benchmarks/compile_layout.py [MODEL[:RECIPE] ...]   (default: dpcnn:dp tuned tuned:fast resnet)

Each model's plain train step (:func:`mnistfx.make_train_step`, Adam, the recipe's batch size and
precision), as :func:`mnistfx.bench` runs it, compiled twice by :func:`mnistfx.compile_step`: with
``layout_optimization=True`` (inductor's default) and ``False``. The two alternate in timed blocks
(:func:`mnistfx.bench.race`) and the median block's img/s is printed with their ratio. Why the DP-SGD
step is compiled without (docs/benchmarks.md, "DP-SGD against Opacus") and the others with.
"""

import sys

import torch

import mnistfx
from mnistfx import bench
from mnistfx.training.compiling import compile_step


def main():
    specs = sys.argv[1:] or ["dpcnn:dp", "tuned", "tuned:fast", "resnet"]
    data = mnistfx.load_mnist()
    dev = torch.device("cpu")
    print(f"{mnistfx.cpu_description()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    for spec in specs:
        name, _, recipe = spec.partition(":")
        cfg = mnistfx.recipe(name, recipe or "default")
        model = mnistfx.get_model(name)
        images, labels = bench.training_data(model, data, dev)
        make, run = bench._workload("train", model, images, labels, cfg.batch_size, dev, cfg.precision)
        states = {}
        for layout in (True, False):
            bench.compile_step = lambda fn, device, layout=layout: compile_step(fn, device, layout_optimization=layout)
            try:
                states[layout] = make(True)
            finally:
                bench.compile_step = compile_step
        rates = bench.race(states, run, dev, cfg.batch_size, 1.0, 9)
        print(
            f"{spec:12s} batch {cfg.batch_size:4d} {cfg.precision:5s} channels-last {rates[True]:7.0f} img/s, "
            f"without {rates[False]:7.0f} img/s: {rates[False] / rates[True]:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
