"""Train-step throughput of mnistfx, eager vs torch.compile, measured in one process.

    python benchmarks/train_step.py [--model tuned] [--batch-size 32 --batch-size 256] [--steps 200]

Prints images per second for each (mode, batch size) and the compiled/eager ratio. Compile
time is reported apart and never counted in throughput. CPU only (see `mnistfx bench` for CUDA).
"""

import argparse
import statistics
import time

import torch

import mnistfx
from mnistfx.train import augment_batch, make_train_step


def measure(step, model, params, opt_state, x8, y, steps, repeats=3):
    """Median img/s over ``repeats`` timed blocks of ``steps`` steps (augmentation included)."""
    g_aug, g_drop = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    n = x8.shape[0]
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            x = augment_batch(model, x8.unsqueeze(1).float() / 255, key=g_aug)
            noise = model.dropout_noise(n, key=g_drop)
            params, opt_state, loss = step(params, opt_state, x, y, noise)
        loss.item()
        rates.append(steps * n / (time.perf_counter() - t0))
    return statistics.median(rates)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tuned", choices=mnistfx.MODELS)
    ap.add_argument("--batch-size", type=int, action="append")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    data = mnistfx.load_mnist()
    model = mnistfx.get_model(args.model)
    print(f"{args.model} on CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'batch':>6} {'eager img/s':>12} {'compiled img/s':>15} {'ratio':>6} {'compile s':>10}")
    for batch in args.batch_size or [32, 256]:
        params = model.init(0)
        opt = mnistfx.adam(1e-3)
        step = make_train_step(model, opt)
        compiled = torch.compile(step, fullgraph=True, dynamic=False)
        x8, y = data.train_images[:batch], data.train_labels[:batch]
        noise = model.dropout_noise(batch, key=0)
        t0 = time.perf_counter()
        compiled(params, opt.init(params), model.preprocess(x8), y, noise)
        compile_s = time.perf_counter() - t0
        eager = measure(step, model, params, opt.init(params), x8, y, args.steps)
        fast = measure(compiled, model, params, opt.init(params), x8, y, args.steps)
        print(f"{batch:>6} {eager:>12,.0f} {fast:>15,.0f} {fast / eager:>5.1f}x {compile_s:>10.1f}")


if __name__ == "__main__":
    main()
