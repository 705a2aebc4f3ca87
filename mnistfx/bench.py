"""Throughput of the train step and of inference, eager and compiled, at several batch sizes.

The train step is measured as :func:`mnistfx.train` runs it: a batch gathered from the
uint8 training images resident on the device, augmented, its dropout noise drawn, then the
step (forward, loss, gradients, Adam). Inference is preprocessing and the eval forward under
``torch.inference_mode``. Each timed block starts after warm-up steps and a device
synchronisation; on CUDA it is timed with CUDA events. Eager and compiled blocks alternate, so
a noisy machine affects both alike, and the median block is reported. Compile time (the first
compiled call) is reported apart and never counted in throughput.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable

import torch

from ._checks import check_choice, check_positive, check_whole, is_whole
from .constants import (BENCH_BATCH_SIZES, BENCH_KINDS, BENCH_MAX_REPEATS, BENCH_MAX_SECONDS, MAX_BATCH_SIZE,
                        PRECISIONS)
from .contract import blaming
from .data import MNIST, load_mnist
from .errors import ConfigError
from .registry import get_model
from .optim import adam
from .runtime import resolve_device
from .step import batch_inputs, check_trainable, compile_step, make_train_step


class _Timer:
    """Seconds between ``start()`` and ``stop()``, with the device's work finished at both ends."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.begin = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def start(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.begin.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            return self.begin.elapsed_time(self.end) / 1000.0
        return time.perf_counter() - self.t0


def _workload(kind: str, model, images, labels, batch: int, device, precision: str) -> tuple[Callable, Callable]:
    """``(make, run)``: ``make(compiled)`` builds a fresh state, ``run(state, i)`` does step ``i``
    and returns a tensor whose value depends on it."""
    n = images.shape[0]
    g_idx = torch.Generator(device=device).manual_seed(0)
    order = torch.randperm(n, generator=g_idx, device=device)
    init = {k: v.to(device) for k, v in model.init(0).items()}

    def indices(i):
        start = (i * batch) % (n - batch + 1)
        return order[start:start + batch]

    if kind == "train":
        def make(compiled):
            opt = adam(1e-3)
            step = make_train_step(model, opt, precision=precision)
            step = compile_step(step, device) if compiled else step
            gens = [torch.Generator(device=device).manual_seed(s) for s in (1, 2)]
            return {"step": step, "params": init, "state": model.init_state(init), "opt_state": opt.init(init),
                    "gens": gens}

        def run(state, i):
            idx = indices(i)
            x, noise = batch_inputs(model, images, idx, aug_key=state["gens"][0], drop_key=state["gens"][1])
            state["params"], state["state"], state["opt_state"], loss, _ = state["step"](
                state["params"], state["state"], state["opt_state"], x, labels[idx], noise)
            return loss
    else:
        def make(compiled):
            model_state = model.init_state(init)

            def forward(params, x8):
                return model.forward(params, model_state, model.preprocess(x8))[0]
            forward = compile_step(forward, device) if compiled else forward
            return {"forward": forward, "params": init}

        def run(state, i):
            return state["forward"](state["params"], images[indices(i)])
    return make, run


def benchmark(model: str = "tuned", *, device: str = "cpu", batch_sizes=BENCH_BATCH_SIZES, kinds=BENCH_KINDS,
              precision: str = "fp32", seconds: float = 1.0, repeats: int = 3, data: MNIST | None = None,
              on_result: Callable | None = None) -> list[dict]:
    """Measure images per second, eager and compiled, for each kind and batch size.

    Arguments:
        model: one of :data:`mnistfx.MODELS`.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_sizes: the batch sizes to measure.
        kinds: ``"train"`` (the whole train step with its batch preparation) and/or ``"infer"``.
        precision: ``"fp32"`` or ``"bf16"`` (autocast of the training forward pass;
            inference is always float32, as :func:`mnistfx.evaluate` runs it).
        seconds: about how long each timed block runs.
        repeats: timed blocks per mode; the median is reported.
        data: MNIST already loaded (default: :func:`load_mnist`).
        on_result: called with each result as it is measured.

    Returns:
        One dict per (kind, batch size): ``kind``, ``batch_size``, ``eager`` and ``compiled``
        (img/s), ``speedup`` (compiled / eager) and ``compile_seconds``.
    """
    m = get_model(model)
    check_choice("precision", precision, PRECISIONS)
    if not batch_sizes or any(not is_whole(b) or not 1 <= b <= MAX_BATCH_SIZE for b in batch_sizes):
        raise ConfigError(f"batch sizes must be whole numbers from 1 to {MAX_BATCH_SIZE}, not {list(batch_sizes)!r}")
    if not kinds or set(kinds) - set(BENCH_KINDS):
        raise ConfigError(f"kinds must be some of {', '.join(BENCH_KINDS)}, not {list(kinds)!r}")
    check_timing(seconds, repeats)
    dev = resolve_device(device)
    data = data or load_mnist()
    # CUDA events and synchronize() act on the current device: make it the one measured.
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        return _measure(m, data, dev, batch_sizes, kinds, precision, seconds, repeats, on_result)


def check_timing(seconds: float, repeats: int) -> None:
    """Timed blocks of at most :data:`BENCH_MAX_SECONDS`, at most :data:`BENCH_MAX_REPEATS` of them."""
    check_positive("seconds", seconds)
    if seconds > BENCH_MAX_SECONDS:
        raise ConfigError(f"seconds must be at most {BENCH_MAX_SECONDS:g} (per timed block), not {seconds!r}")
    check_whole("repeats", repeats, 1, BENCH_MAX_REPEATS)


def training_data(model, data: MNIST, dev) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's training images and labels on ``dev``, once ``model`` passed one eager batch of them."""
    images, labels = data.train_images.to(dev), data.train_labels.to(dev)
    params = {k: v.to(dev) for k, v in model.init(0).items()}
    check_trainable(model, params, model.init_state(params), images, labels)
    return images, labels


def _measure(m, data, dev, batch_sizes, kinds, precision, seconds, repeats, on_result) -> list[dict]:
    images, labels = training_data(m, data, dev)
    results = []
    for kind in kinds:
        for batch in batch_sizes:
            with torch.inference_mode(kind == "infer"), blaming(m, f"{kind} step at batch {batch}"):
                result = {"kind": kind, "batch_size": batch,
                          **_compare(*_workload(kind, m, images, labels, batch, dev, precision), dev, batch,
                                     seconds, repeats)}
            results.append(result)
            if on_result:
                on_result(result)
    return results


def _compare(make, run, dev, batch, seconds, repeats) -> dict:
    """Eager against compiled for one workload: img/s of each, and the compile time."""
    states = {"eager": make(False), "compiled": make(True)}
    t0 = time.perf_counter()  # host time: compiling is CPU work even for CUDA
    run(states["compiled"], 0).sum().item()
    compile_seconds = time.perf_counter() - t0
    rates = race(states, run, dev, batch, seconds, repeats)
    eager, compiled = rates["eager"], rates["compiled"]
    return {"eager": round(eager, 1), "compiled": round(compiled, 1), "speedup": round(compiled / eager, 3),
            "compile_seconds": round(compile_seconds, 2)}


def race(states: dict, run: Callable, dev, images: int, seconds: float, repeats: int) -> dict[str, float]:
    """Images per second of each mode: ``run(states[mode], i)`` does call ``i`` on ``images`` images.

    After warm-up, blocks of about ``seconds`` alternate between the modes (so a noisy machine
    affects them alike), ``repeats`` blocks each; the median block counts.
    """
    timer = _Timer(dev)
    steps = {}
    for mode, state in states.items():  # warm up, then size the blocks to `seconds`
        for i in range(3):
            run(state, i)
        timer.start()
        for i in range(5):
            out = run(state, i)
        out.sum().item()
        steps[mode] = max(5, round(5 * seconds / max(timer.stop(), 1e-9)))
    rates = {mode: [] for mode in states}
    for _ in range(repeats):
        for mode, state in states.items():
            timer.start()
            for i in range(steps[mode]):
                out = run(state, i)
            out.sum().item()
            rates[mode].append(steps[mode] * images / timer.stop())
    return {mode: statistics.median(r) for mode, r in rates.items()}
