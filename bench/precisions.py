"""The precision vocabulary (docs/tasks.md, "Precision") and its rules, shared by every framework.

This module imports no framework. A framework file sets its precision in init_device(device,
precision), through its own mechanism, raises UnsupportedPrecision(skip_reason(...)) for a
precision it cannot run on the device, and reports what it set through numerics(task, model, dev),
built with state(): the harness checks that report against the precision asked for (check_state)
before any figure is kept, so a run can never be labelled with a precision it did not use.
"""
from __future__ import annotations

PRECISIONS = ("fp32", "tf32", "amp-fp16", "amp-bf16")
DEFAULT = "fp32"

DESCRIPTIONS = {
    "fp32": "IEEE fp32 everywhere; TF32 turned off explicitly",
    "tf32": "fp32 storage, TF32 tensor-core matmuls and convolutions allowed (GPU, compute capability 8.0+)",
    "amp-fp16": "automatic mixed precision: fp16 compute, fp32 master weights, dynamic loss scaling (GPU)",
    "amp-bf16": "mixed precision: bf16 compute, fp32 master weights, no loss scaling (GPU 8.0+, CPU)",
}

# Names of earlier versions (and common guesses), each with the name to use instead.
RENAMED = {"fp16": "amp-fp16", "bf16": "amp-bf16", "amp": "amp-fp16", "mixed_float16": "amp-fp16",
           "mixed_bfloat16": "amp-bf16", "float32": "fp32", "float16": "amp-fp16", "bfloat16": "amp-bf16"}

COMPUTE_DTYPE = {"fp32": "float32", "tf32": "float32", "amp-fp16": "float16", "amp-bf16": "bfloat16"}
LOSS_SCALING = {"fp32": "none", "tf32": "none", "amp-fp16": "dynamic", "amp-bf16": "none"}
TF32_MIN_CAPABILITY = (8, 0)   # Ampere: TF32 tensor cores
BF16_MIN_CAPABILITY = (8, 0)   # Ampere: bf16 tensor cores
LOSS_SCALING_KINDS = ("none", "dynamic", "static")

# The environment variable NVIDIA's libraries (cuBLAS, cuDNN) read: 0 forbids TF32 whatever a
# framework asks for. The harness sets it before a framework is imported for every precision
# but tf32 (runner.prepare_environment), beside each framework's own switch.
TF32_OVERRIDE_VARIABLE = "NVIDIA_TF32_OVERRIDE"


class UnknownPrecision(ValueError):
    def __str__(self) -> str:
        name = self.args[0]
        hint = f" ({name!r} is now {RENAMED[name]!r})" if name in RENAMED else ""
        return f"unknown precision {name!r}{hint}; use one of {', '.join(PRECISIONS)}"


def check_name(name: str) -> str:
    if name not in PRECISIONS:
        raise UnknownPrecision(name)
    return name


def parse_list(text: str) -> list:
    """"fp32,amp-bf16" -> ["fp32", "amp-bf16"]; ValueError (UnknownPrecision) naming a bad one."""
    names = [x.strip() for x in str(text).split(",") if x.strip()]
    if not names:
        raise ValueError("expected one or more of " + ", ".join(PRECISIONS))
    return [check_name(name) for name in dict.fromkeys(names)]


def _capability_text(capability) -> str:
    return f"{capability[0]}.{capability[1]}"


def skip_reason(precision: str, device: str, capability=None, framework: str = "") -> str | None:
    """Why `precision` cannot run on `device` whatever the framework (None: it can, as far as the
    device goes). capability: the GPU's compute capability (major, minor), None when unknown.
    Each framework adds its own reasons (a framework with no bf16 path) to these."""
    check_name(precision)
    who = f"{framework}: " if framework else ""
    if precision == "tf32":
        if device != "gpu":
            return (f"{who}tf32 is a GPU precision (tensor cores of compute capability 8.0 or newer); "
                    "a CPU has no TF32: run fp32 or amp-bf16 on the CPU")
        if capability is not None and tuple(capability) < TF32_MIN_CAPABILITY:
            return (f"{who}tf32 needs a GPU of compute capability 8.0 or newer; "
                    f"this GPU is {_capability_text(capability)}")
    if precision == "amp-fp16" and device != "gpu":
        return (f"{who}amp-fp16 is a GPU precision: fp16 arithmetic on a CPU is emulated and its loss "
                "scaling meaningless for a benchmark; run amp-bf16 on the CPU")
    if precision == "amp-bf16" and device == "gpu" and capability is not None \
            and tuple(capability) < BF16_MIN_CAPABILITY:
        return (f"{who}amp-bf16 needs a GPU of compute capability 8.0 or newer; "
                f"this GPU is {_capability_text(capability)} (run amp-fp16)")
    return None


def state(precision: str, *, tf32: bool, compute_dtype: str, param_dtype: str, loss_scaling: str,
          mechanism: str, read_back, switches: dict | None = None, loss_scaler: str | None = None) -> dict:
    """What a framework set for `precision`, for the result's conventions["precision"].

    tf32: whether TF32 may be used (False on a CPU: there is none); compute_dtype: the dtype
    the layers compute in; param_dtype: the dtype of the weights the optimizer updates (the
    master weights); loss_scaling: "none", "dynamic" or "static"; mechanism: the framework's
    own words for what was set (e.g. "torch.autocast(cpu, bfloat16)"); read_back: the names of
    the fields read back from the framework (the rest are stated by the file); switches: each
    framework switch set and its value as read back; loss_scaler: the class that scales.
    """
    check_name(precision)
    if loss_scaling not in LOSS_SCALING_KINDS:
        raise ValueError(f"loss_scaling must be one of {LOSS_SCALING_KINDS}, got {loss_scaling!r}")
    read_back = sorted(read_back)
    fields = ("tf32", "compute_dtype", "param_dtype", "loss_scaling")
    unknown = [name for name in read_back if name not in fields]
    if unknown:
        raise ValueError(f"read_back names fields that do not exist: {unknown}; fields: {fields}")
    return {
        "name": precision, "tf32": bool(tf32), "compute_dtype": str(compute_dtype),
        "param_dtype": str(param_dtype), "loss_scaling": loss_scaling, "loss_scaler": loss_scaler,
        "mechanism": str(mechanism), "read_back": read_back,
        "switches": {str(k): v for k, v in (switches or {}).items()},
    }


def check_state(precision: str, device: str, reported: dict) -> list:
    """The ways a framework's reported state differs from `precision` (empty: it is that precision)."""
    if not isinstance(reported, dict):
        return [f"no precision state reported (got {type(reported).__name__})"]
    problems = []
    expected = {
        "name": precision,
        "compute_dtype": COMPUTE_DTYPE[precision],
        "param_dtype": "float32",
        "loss_scaling": LOSS_SCALING[precision],
        "tf32": precision == "tf32",
    }
    for key, want in expected.items():
        got = reported.get(key)
        if got != want:
            problems.append(f"{key} is {got!r}, {precision} means {want!r}")
    if device != "gpu" and reported.get("tf32"):
        problems.append("tf32 reported on for a CPU run")
    return problems
