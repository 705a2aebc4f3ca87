"""DP-SGD steps per second: Opacus against mnistfx's private step, same model, batch, data and machine.

    python benchmarks/dp_opacus.py [--batch 256] [--rounds 7] [--steps 10] [--model dpcnn] [--bf16] [--layout]

Opacus (1.x): ``GradSampleModule`` of :class:`~mnistfx.models.dp_cnn.DPConvNet` (the JAX / TF Privacy /
Opacus example CNN) and ``DPOptimizer`` over ``torch.optim.SGD`` (lr 0.15, no momentum), σ 1.1, clip 1.0,
expected batch size ``--batch``. mnistfx: :func:`~mnistfx.training.privacy.make_private_step` of the
same model with ``mnistfx.sgd(0.15, momentum=0)``, eager and compiled (:func:`mnistfx.compile_step`),
and compiled with two steps per call (:func:`~mnistfx.training.step.make_multi_step`); ``--layout`` also
times it compiled with inductor's channels-last layout optimisation, which the private step turns off. Its
standard normal noise is drawn each step, inside the timing, as Opacus draws its own. Every variant trains on
the same real MNIST batches (the first ``8 x batch`` training images, cycled). One process; the
variants take turns for ``--rounds`` rounds of ``--steps`` steps each, after warm-up steps (and
compiling) that are not timed; the figure is the median round's img/s.
"""

import argparse
import datetime
import statistics
import time
import warnings

import torch
from torch.nn import functional as F

import mnistfx
from mnistfx.models.dp_cnn import DP_ARCHS, DPConvNet
from mnistfx.training.compiling import compile_step
from mnistfx.training.privacy import make_private_step
from mnistfx.training.step import make_multi_step

LR, SIGMA, CLIP = 0.15, 1.1, 1.0


def opacus_runner(name: str, batches, batch: int):
    """One Opacus step per call, on the next batch."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    with torch.random.fork_rng():
        net = GradSampleModule(DPConvNet(name))
    opt = DPOptimizer(
        torch.optim.SGD(net.parameters(), lr=LR),
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        expected_batch_size=batch,
        generator=torch.Generator().manual_seed(1),
    )
    it = iter(range(10**9))

    def run():
        x, y = batches[next(it) % len(batches)]
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        return 1

    return run


def mnistfx_runner(
    name: str, batches, *, compiled: bool, k: int = 1, precision: str = "fp32", layout: bool | None = None
):
    """``k`` private steps per call (one call of the pure step), on the next ``k`` batches; ``layout``
    overrides the step's ``layout_optimization``."""
    model = mnistfx.get_model(name)
    opt = mnistfx.sgd(LR, momentum=0.0)
    step = make_private_step(model, opt, clip=CLIP, noise_multiplier=SIGMA, precision=precision)
    size = step.gaussian_size
    fn = make_multi_step(step, k) if k > 1 else step
    layout = step.layout_optimization if layout is None else layout
    fn = compile_step(fn, torch.device("cpu"), layout_optimization=layout) if compiled else fn
    params = model.init(0)
    carry = [params, {}, opt.init(params)]
    g = torch.Generator().manual_seed(2)
    joined = [
        (torch.cat([batches[(i + j) % len(batches)][0] for j in range(k)]),
         torch.cat([batches[(i + j) % len(batches)][1] for j in range(k)]))
        for i in range(0, len(batches), k)
    ]  # fmt: skip
    it = iter(range(10**9))

    def run():
        x, y = joined[next(it) % len(joined)]
        z = torch.randn(k * size, generator=g)
        carry[:] = fn(*carry, x, y, {"gaussian": z})[:3]
        return k

    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dpcnn", choices=tuple(DP_ARCHS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--bf16", action="store_true", help="also time the compiled step with a bf16 forward pass")
    ap.add_argument("--layout", action="store_true", help="also time the step compiled with channels-last layout")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="(Full backward hook|Secure RNG|Optimal order)")  # Opacus's notes
    data = mnistfx.load_mnist()
    model = mnistfx.get_model(args.model)
    b = args.batch
    batches = [
        (model.preprocess(data.train_images[i * b : (i + 1) * b]), data.train_labels[i * b : (i + 1) * b])
        for i in range(8)
    ]
    runners = {"Opacus GradSampleModule + DPOptimizer": opacus_runner(args.model, batches, b)}
    runners["mnistfx eager"] = mnistfx_runner(args.model, batches, compiled=False)
    runners["mnistfx compiled"] = mnistfx_runner(args.model, batches, compiled=True)
    runners["mnistfx compiled, 2 steps per call"] = mnistfx_runner(args.model, batches, compiled=True, k=2)
    if args.layout:
        runners["mnistfx compiled, channels-last"] = mnistfx_runner(args.model, batches, compiled=True, layout=True)
    if args.bf16:
        runners["mnistfx compiled, bf16 forward"] = mnistfx_runner(args.model, batches, compiled=True, precision="bf16")
    for run in runners.values():  # warm-up, compiling included
        for _ in range(3):
            run()
    rates: dict[str, list[float]] = {name: [] for name in runners}
    cpu_rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            t0, c0, done = time.perf_counter(), time.process_time(), 0
            while done < args.steps:
                done += run()
            rates[name].append(done * b / (time.perf_counter() - t0))
            cpu_rates[name].append(done * b / (time.process_time() - c0))
    import opacus

    print(f"DP-SGD, {args.model}, batch {b}, σ {SIGMA}, clip {CLIP}, SGD lr {LR}; median of {args.rounds} rounds")
    print(f"{mnistfx.cpu_description()}, {torch.get_num_threads()} threads; torch {torch.__version__}, "
          f"opacus {opacus.__version__}; {datetime.date.today()}")  # fmt: skip
    opacus_name = "Opacus GradSampleModule + DPOptimizer"
    base, cpu_base = statistics.median(rates[opacus_name]), statistics.median(cpu_rates[opacus_name])
    print(f"{'':40s} {'img/s':>7s} {'vs Opacus':>9s} {'rounds':>12s} {'img/CPU-s':>10s} {'vs Opacus':>9s}")
    for name, r in rates.items():
        m, c = statistics.median(r), statistics.median(cpu_rates[name])
        span = f"{min(r):.0f}-{max(r):.0f}"
        print(f"{name:40s} {m:7.0f} {m / base:8.2f}x {span:>12s} {c:10.0f} {c / cpu_base:8.2f}x")
    print(
        "img/CPU-s: images per second of this process's CPU time (all its threads): steadier than img/s "
        "where other work shares the cores"
    )


if __name__ == "__main__":
    main()
