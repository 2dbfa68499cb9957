"""Host-to-device and device-to-host copy bandwidth from pinned host memory (GPU only: a CPU
has no such link, and its doc has no such entry)."""
from __future__ import annotations

from . import arrays

NAME = "host_copy"
DIRECTIONS = ("host_to_device", "device_to_host")
UNIT = "bytes_per_s"
COPY_BYTES = 256 * arrays.MIB   # tens of ms a copy on PCIe 4/5: far past the per-copy overhead
QUICK_BYTES = 4 * arrays.MIB


def cases(device: str, settings) -> list:
    if device != "gpu":
        return []
    return [{"name": d, "key": d, "precision": None, "unit": UNIT} for d in DIRECTIONS]


def measure(backend: arrays.Backend, case: dict, settings) -> dict:
    nbytes = settings.sizes.get("copy_bytes") or (QUICK_BYTES if settings.quick else COPY_BYTES)
    free = backend.free_bytes()
    if free:
        nbytes = min(nbytes, free // arrays.MEMORY_SHARE)
    op, text = backend.host_copy(nbytes, case["name"])
    rates, calls = arrays.best_of(backend, op, float(nbytes), settings.repeats, settings.min_repeat_s)
    return {"repeats": rates, "size": {"bytes": nbytes, "calls_per_repeat": calls},
            "method": f"{nbytes} bytes a copy, {text}"}
