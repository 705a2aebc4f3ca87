"""Throughput of the train step and of inference, eager and compiled, at several batch sizes.

The train step is measured as :func:`mnistfx.train` runs it: a batch gathered from the
uint8 training images resident on the device, augmented, its dropout noise drawn, then the
step (forward, loss, gradients, Adam). Inference is preprocessing and the eval forward under
``torch.inference_mode``. Each timed block starts after warm-up steps and a device
synchronisation; on CUDA it is timed with CUDA events. Eager and compiled blocks alternate, so
a noisy machine affects both alike, and the median block is reported. Compile time (the first
compiled call) is reported apart and never counted in throughput.

:func:`benchmark_ensemble` measures an ensemble's training: K members in one vmapped compiled step against K separate
compiled steps, in one process.

Both modes are measured twice: the steps alone, on the same prepared inputs (what the vmapped step
itself gains), and as training runs them, with each call's batch preparation (the ensemble
gathers and augments one batch for all members and draws K members' dropout noise; K separate
runs each prepare their own batch). Throughput counts member-images: K x batch per step.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from ._checks import check_choice, check_positive, check_whole, is_whole
from .constants import (
    BENCH_BATCH_SIZES,
    BENCH_KINDS,
    BENCH_MAX_REPEATS,
    BENCH_MAX_SECONDS,
    MAX_BATCH_SIZE,
    MAX_ENSEMBLE,
    PRECISIONS,
)
from .data.mnist import MNIST, load_mnist
from .errors import ConfigError
from .models.ensemble import make_ensemble_step, stack
from .models.model import blaming
from .models.registry import get_model
from .runtime.device import keep_freed_memory, resolve_device
from .training.batches import batch_inputs
from .training.compiling import compile_step
from .training.optim import adam
from .training.step import check_trainable, make_train_step


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
    indices = _batch_indices(images.shape[0], batch, device)
    init = {k: v.to(device) for k, v in model.init(0).items()}

    if kind == "train":

        def make(compiled):
            opt = adam(1e-3)
            step = make_train_step(model, opt, precision=precision)
            step = compile_step(step, device) if compiled else step
            gens = [torch.Generator(device=device).manual_seed(s) for s in (1, 2)]
            return {
                "step": step,
                "params": init,
                "state": model.init_state(init),
                "opt_state": opt.init(init),
                "gens": gens,
            }

        def run(state, i):
            idx = indices(i)
            x, noise = batch_inputs(model, images, idx, aug_key=state["gens"][0], drop_key=state["gens"][1])
            state["params"], state["state"], state["opt_state"], loss, _ = state["step"](
                state["params"], state["state"], state["opt_state"], x, labels[idx], noise
            )
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


def benchmark(
    model: str = "tuned",
    *,
    device: str = "cpu",
    batch_sizes: Sequence[int] = BENCH_BATCH_SIZES,
    kinds: Sequence[str] = BENCH_KINDS,
    precision: str = "fp32",
    seconds: float = 1.0,
    repeats: int = 3,
    data: MNIST | None = None,
    on_result: Callable | None = None,
) -> list[dict]:
    """Measure images per second, eager and compiled, for each kind and batch size.

    Arguments:
        model: the name of a built-in model (:data:`mnistfx.MODELS`) or of a registered one.
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
    with _current(dev):
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
                result = {
                    "kind": kind,
                    "batch_size": batch,
                    **_compare(
                        *_workload(kind, m, images, labels, batch, dev, precision), dev, batch, seconds, repeats
                    ),
                }
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
    return {
        "eager": round(eager, 1),
        "compiled": round(compiled, 1),
        "speedup": round(compiled / eager, 3),
        "compile_seconds": round(compile_seconds, 2),
    }


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
    rates: dict[str, list[float]] = {mode: [] for mode in states}
    for _ in range(repeats):
        for mode, state in states.items():
            timer.start()
            for i in range(steps[mode]):
                out = run(state, i)
            out.sum().item()
            rates[mode].append(steps[mode] * images / timer.stop())
    return {mode: statistics.median(r) for mode, r in rates.items()}


def benchmark_ensemble(
    model: str = "tuned",
    *,
    members: Sequence[int] = (2, 4, 8),
    batch_size: int = 32,
    device: str = "cpu",
    precision: str = "fp32",
    seconds: float = 1.0,
    repeats: int = 3,
    data: MNIST | None = None,
    on_result: Callable | None = None,
) -> list[dict]:
    """Member-images per second of K members in one vmapped compiled step and in K separate ones.

    Arguments:
        model: a model name (built in or registered).
        members: the ensemble sizes K to measure.
        batch_size: images per member per step.
        device, precision, seconds, repeats, data, on_result: as :func:`~mnistfx.benchmark`.

    Returns:
        One dict per K: ``members``, ``batch_size``; ``separate`` and ``vmapped`` (member-img/s, with
        batch preparation) and their ``speedup``; ``step_separate``, ``step_vmapped`` and
        ``step_speedup`` (the steps alone); ``compile_seconds`` of the vmapped step.
    """
    m = get_model(model)
    check_choice("precision", precision, PRECISIONS)
    if not members:
        raise ConfigError("members must list at least one ensemble size")
    for k in members:
        check_whole("members", k, 2, MAX_ENSEMBLE)
    check_whole("`batch_size`", batch_size, 1, MAX_BATCH_SIZE)
    check_timing(seconds, repeats)
    dev = resolve_device(device)
    data = data or load_mnist()
    if dev.type == "cpu":
        keep_freed_memory()  # as train() does for ensembles; both modes run under it
    images, labels = training_data(m, data, dev)
    results = []
    with _current(dev):
        for k in members:
            with blaming(m, f"ensemble step of {k} members"):
                result = _compare_ensemble(m, images, labels, k, batch_size, dev, precision, seconds, repeats)
            results.append(result)
            if on_result:
                on_result(result)
    return results


def _compare_ensemble(model, images, labels, k, batch, dev, precision, seconds, repeats) -> dict:
    opt = adam(1e-3)
    step = make_train_step(model, opt, precision=precision)
    single, vmapped = compile_step(step, dev), compile_step(make_ensemble_step(step), dev)
    params = [{n: t.to(dev) for n, t in model.init(i).items()} for i in range(k)]
    indices = _batch_indices(images.shape[0], batch, dev)

    def gens(seed):
        return [torch.Generator(device=dev).manual_seed(seed + j) for j in range(2)]

    def fresh():
        return {
            "params": params,
            "states": [model.init_state(p) for p in params],
            "opt": [opt.init(p) for p in params],
            "gens": [gens(10 * j) for j in range(k)],
            "all": gens(1),
        }

    prepared = []
    for i in range(4):  # a few batches ready-made, for the steps-alone modes
        x, noise = batch_inputs(model, images, indices(i), aug_key=i, drop_key=100 + i, members=k)
        prepared.append((x, labels[indices(i)], noise))

    def run_separate(s, i, prepare):
        for j in range(k):
            if prepare:
                idx = indices(i)
                x, noise = batch_inputs(model, images, idx, aug_key=s["gens"][j][0], drop_key=s["gens"][j][1])
                y = labels[idx]
            else:
                x, y, noise = prepared[i % 4]
                noise = {n: v[j] for n, v in noise.items()}
            s["params"][j], s["states"][j], s["opt"][j], loss, _ = single(
                s["params"][j], s["states"][j], s["opt"][j], x, y, noise
            )
        return loss

    def run_vmapped(s, i, prepare):
        if prepare:
            idx = indices(i)
            x, noise = batch_inputs(model, images, idx, aug_key=s["all"][0], drop_key=s["all"][1], members=k)
            y = labels[idx]
        else:
            x, y, noise = prepared[i % 4]
        s["params"], s["states"], s["opt"], loss, _ = vmapped(s["params"], s["states"], s["opt"], x, y, noise)
        return loss

    def stacked():
        s = fresh()
        return {
            **s,
            "params": stack(s["params"]),
            "states": stack(s["states"]) if s["states"][0] else {},
            "opt": stack(s["opt"]),
        }

    modes = {
        "step_separate": {**fresh(), "run": run_separate, "prepare": False},
        "step_vmapped": {**stacked(), "run": run_vmapped, "prepare": False},
        "separate": {**fresh(), "run": run_separate, "prepare": True},
        "vmapped": {**stacked(), "run": run_vmapped, "prepare": True},
    }
    run_separate(fresh(), 0, False)  # compile the single step
    t0 = time.perf_counter()
    run_vmapped(stacked(), 0, False).sum().item()
    compile_seconds = time.perf_counter() - t0
    rates = race(modes, lambda s, i: s["run"](s, i, s["prepare"]), dev, k * batch, seconds, repeats)
    return {
        "members": k,
        "batch_size": batch,
        **{mode: round(r, 1) for mode, r in rates.items()},
        "speedup": round(rates["vmapped"] / rates["separate"], 3),
        "step_speedup": round(rates["step_vmapped"] / rates["step_separate"], 3),
        "compile_seconds": round(compile_seconds, 2),
    }


def _current(dev: torch.device):
    """CUDA events and ``synchronize()`` act on the current device: make ``dev`` the one measured."""
    return torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()


def _batch_indices(n: int, batch: int, device) -> Callable:
    """``indices(i)``: the ``i``-th batch of a fixed shuffle of ``n`` images, wrapping around."""
    order = torch.randperm(n, generator=torch.Generator(device=device).manual_seed(0), device=device)

    def indices(i):
        start = (i * batch) % (n - batch + 1)
        return order[start : start + batch]

    return indices
