"""Device memory bandwidth: a STREAM-like triad a = b + s * c over arrays far larger than the
caches, counted as STREAM counts it (3 arrays x element size x n bytes a pass: b and c read,
a written; write-allocate traffic not counted)."""
from __future__ import annotations

from . import arrays

NAME = "memory_bandwidth"
KEY = "memory_bandwidth"
UNIT = "bytes_per_s"
# STREAM's rule: each array at least 4 times the caches; never under 128 MiB on a CPU.
CACHE_FACTOR = 4
CPU_MIN_ARRAY = 128 * arrays.MIB
CPU_CACHE_UNKNOWN = 64 * arrays.MIB   # assumed when sysfs does not say
GPU_ARRAY = arrays.GIB                # > 4 x the L2 of any current GPU (H100 50 MiB, B200 126 MiB)
QUICK_ELEMENTS = 1 << 16
ARRAYS = 3


def cases(device: str, settings) -> list:
    return [{"name": NAME, "key": KEY, "precision": None, "unit": UNIT}]


def array_bytes(backend: arrays.Backend) -> int:
    if backend.device == "cpu":
        cache = backend.last_level_cache_bytes() or CPU_CACHE_UNKNOWN
        wanted = max(CACHE_FACTOR * cache, CPU_MIN_ARRAY)
    else:
        wanted = GPU_ARRAY
    free = backend.free_bytes()
    if free:  # the three arrays take at most a quarter of the free memory
        wanted = min(wanted, free // (4 * ARRAYS))
    return int(wanted)


def measure(backend: arrays.Backend, case: dict, settings) -> dict:
    elements = settings.sizes.get("triad_elements") or (
        QUICK_ELEMENTS if settings.quick else array_bytes(backend) // backend.element_bytes)
    op, text = backend.triad(elements)
    moved = float(ARRAYS * backend.element_bytes * elements)
    rates, calls = arrays.best_of(backend, op, moved, settings.repeats, settings.min_repeat_s)
    return {"repeats": rates,
            "size": {"elements": elements, "element_bytes": backend.element_bytes, "arrays": ARRAYS,
                     "bytes_per_call": moved, "calls_per_repeat": calls},
            "method": f"triad {text}; counted as STREAM does: {ARRAYS} arrays x "
                      f"{backend.element_bytes} bytes x {elements} elements a pass"}
