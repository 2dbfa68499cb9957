"""Dense GEMM throughput per precision: C = A @ B on square matrices, 2 n^3 FLOP a call."""
from __future__ import annotations

from . import arrays

NAME = "gemm"
UNIT = "flops_per_s"
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
DEFAULT_PRECISIONS = {"cpu": ("fp32", "bf16"), "gpu": PRECISIONS}
GPU_N = 8192
# A CPU starts at 2048 and moves to 4096 when one call takes under CPU_GROW_S: many cores
# need the larger matrix to keep every core's tiles busy.
CPU_N, CPU_N_LARGE, CPU_GROW_S = 2048, 4096, 0.05
QUICK_N = {"cpu": 128, "gpu": 1024}


def cases(device: str, settings) -> list:
    chosen = settings.precisions or DEFAULT_PRECISIONS[device]
    return [{"name": NAME, "key": f"gemm_{p}", "precision": p, "unit": UNIT}
            for p in PRECISIONS if p in chosen]


def measure(backend: arrays.Backend, case: dict, settings) -> dict:
    precision = case["precision"]
    n = settings.sizes.get("gemm_n") or (QUICK_N if settings.quick else {"cpu": CPU_N, "gpu": GPU_N})[backend.device]
    op, text = backend.gemm(n, precision)
    if backend.device == "cpu" and not settings.quick and not settings.sizes.get("gemm_n"):
        op()
        if backend.time(op, 1) < CPU_GROW_S:
            del op
            backend.release()
            n = CPU_N_LARGE
            op, text = backend.gemm(n, precision)
    flop = 2.0 * n ** 3
    rates, calls = arrays.best_of(backend, op, flop, settings.repeats, settings.min_repeat_s)
    return {"repeats": rates, "size": {"n": n, "flop_per_call": flop, "calls_per_repeat": calls},
            "method": f"C = A @ B, {n} x {n}, {text}; 2 n^3 FLOP a call"}
