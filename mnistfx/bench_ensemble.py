"""Throughput of an ensemble's training: K members in one vmapped compiled step against K separate
compiled steps, in one process.

Both modes are measured twice: the steps alone, on the same prepared inputs (what the vmapped step
itself gains), and as training runs them, with each call's batch preparation (the ensemble
gathers and augments one batch for all members and draws K members' dropout noise; K separate
runs each prepare their own batch). Throughput counts member-images: K x batch per step.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch

from ._checks import check_choice, check_whole
from .bench import check_timing, race, training_data
from .constants import MAX_BATCH_SIZE, MAX_ENSEMBLE, PRECISIONS
from .contract import blaming
from .data import MNIST, load_mnist
from .ensemble import make_ensemble_step, stack
from .errors import ConfigError
from .optim import adam
from .registry import get_model
from .runtime import keep_freed_memory, resolve_device
from .step import batch_inputs, compile_step, make_train_step


def benchmark_ensemble(model: str = "tuned", *, members=(2, 4, 8), batch_size: int = 32, device: str = "cpu",
                       precision: str = "fp32", seconds: float = 1.0, repeats: int = 3, data: MNIST | None = None,
                       on_result: Callable | None = None) -> list[dict]:
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
    check_whole("batch-size", batch_size, 1, MAX_BATCH_SIZE)
    check_timing(seconds, repeats)
    dev = resolve_device(device)
    data = data or load_mnist()
    if dev.type == "cpu":
        keep_freed_memory()  # as train() does for ensembles; both modes run under it
    images, labels = training_data(m, data, dev)
    results = []
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
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
    order = torch.randperm(images.shape[0], generator=torch.Generator(device=dev).manual_seed(0), device=dev)

    def indices(i):
        start = (i * batch) % (images.shape[0] - batch + 1)
        return order[start:start + batch]

    def gens(seed):
        return [torch.Generator(device=dev).manual_seed(seed + j) for j in range(2)]

    def fresh():
        return {"params": params, "states": [model.init_state(p) for p in params],
                "opt": [opt.init(p) for p in params], "gens": [gens(10 * j) for j in range(k)], "all": gens(1)}

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
            s["params"][j], s["states"][j], s["opt"][j], loss, _ = single(s["params"][j], s["states"][j],
                                                                          s["opt"][j], x, y, noise)
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
        return {**s, "params": stack(s["params"]), "states": stack(s["states"]) if s["states"][0] else {},
                "opt": stack(s["opt"])}

    modes = {"step_separate": {**fresh(), "run": run_separate, "prepare": False},
             "step_vmapped": {**stacked(), "run": run_vmapped, "prepare": False},
             "separate": {**fresh(), "run": run_separate, "prepare": True},
             "vmapped": {**stacked(), "run": run_vmapped, "prepare": True}}
    run_separate(fresh(), 0, False)  # compile the single step
    t0 = time.perf_counter()
    run_vmapped(stacked(), 0, False).sum().item()
    compile_seconds = time.perf_counter() - t0
    rates = race(modes, lambda s, i: s["run"](s, i, s["prepare"]), dev, k * batch, seconds, repeats)
    return {"members": k, "batch_size": batch, **{mode: round(r, 1) for mode, r in rates.items()},
            "speedup": round(rates["vmapped"] / rates["separate"], 3),
            "step_speedup": round(rates["step_vmapped"] / rates["step_separate"], 3),
            "compile_seconds": round(compile_seconds, 2)}
