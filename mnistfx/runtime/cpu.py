"""What CPU this is, read from ``/proc/cpuinfo`` without torch (the recipes consult it before torch loads):
its model and the vector features that decide its speed."""

from __future__ import annotations

import functools
import os
import platform

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo's names for bf16 arithmetic in hardware


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and instruction-set flags (Linux; elsewhere ``("", frozenset())``)."""
    model, flags = "", frozenset[str]()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:  # a few kB per core
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = " ".join(value.split())
                elif key.strip() == "flags" and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware (AVX-512 BF16 or AMX), so that a bf16 forward
    pass can pay. Elsewhere torch emulates bf16: on an AMD EPYC with AVX2 only, bf16 autocast made
    `tuned`'s compiled train step 6.6× slower than float32 (998 against 6,554 img/s at batch 256,
    2026-12-02). Unknown (not Linux): ``False``."""
    return bool(cpu_info()[1] & BF16_FLAGS)


def cpu_description() -> str:
    """The CPU's model and the vector features that decide its speed with torch, e.g. ``"AMD EPYC, 2 cores:
    AVX2, AVX-512, BF16 (no AMX)"``: figures measured on one CPU kind need not hold on another."""
    model, flags = cpu_info()
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    if flags:
        features = {"AVX2": {"avx2"}, "AVX-512": {"avx512f"}, "BF16": BF16_FLAGS, "AMX": {"amx_tile"}}
        have = [name for name, names in features.items() if flags & names]
        lacks = [name for name in features if name not in have]
        vector = ", ".join(have) or "none of AVX2, AVX-512, BF16, AMX"
        if have and lacks:
            vector += f" (no {', '.join(lacks)})"
    else:  # not Linux: what torch dispatches its kernels for
        import torch

        vector = torch.backends.cpu.get_cpu_capability()
    return f"{model}, {os.cpu_count() or '?'} cores: {vector}"
