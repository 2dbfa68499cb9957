"""A test double of a framework file, in NumPy, to test the harness's own logic.

FAKE_MODE (environment) picks a behaviour: ok, nan, raise-rnn, oom, wrong-params,
wrong-shape, fp16-features (ResNet-50 features in float16), lie-precision (reports fp32
numerics whatever precision it was asked for), lie-mode (reports the reference mode whatever
mode it was asked for). Precisions: fp32 and amp-bf16 run on the CPU,
the others are skipped with bench.precisions' reasons. The models are not real; the harness
tests do not measure them.
"""
from __future__ import annotations

import os

import numpy as np

from bench import modes, precisions
from bench.errors import DeviceUnavailable, UnsupportedPrecision

NAME = "fake"
SEEDS = []  # every set_seed call, in order
_precision = {"name": "fp32", "mode": modes.DEFAULT}


def _mode() -> str:
    return os.environ.get("FAKE_MODE", "ok")


def init_device(device, precision, mode=modes.DEFAULT):
    modes.check_name(mode)
    if device == "gpu":
        raise DeviceUnavailable("no GPU found: the fake framework has none")
    reason = precisions.skip_reason(precision, device, None, NAME)
    if reason:
        raise UnsupportedPrecision(reason)
    _precision.update(name=precision, mode=mode)
    return "cpu"


def set_seed(seed):
    SEEDS.append(seed)


def numerics(task, model, dev):
    name = "fp32" if _mode() == "lie-precision" else _precision["name"]
    return precisions.state(name, tf32=False, compute_dtype=precisions.COMPUTE_DTYPE[name],
                            param_dtype="float32", loss_scaling=precisions.LOSS_SCALING[name],
                            mechanism=f"fake {name}", read_back=[], switches={"fake.tf32": False})


def synchronize(dev):
    pass


def versions(dev):
    return {"framework_version": "0.0-fake", "cuda": None, "cudnn": None, "gpu": None}


def data_format(dev):
    return "NCHW"


class _Model:
    def __init__(self, spec):
        self.spec, self.steps = spec, 0


def count_params(model):
    if _mode() == "wrong-params":
        return 12345
    return model.spec.expected_params[0]


def conventions(task, dev):
    mode = modes.DEFAULT if _mode() == "lie-mode" else _precision["mode"]
    tuned = mode == "tuned"
    return {"fake": True, "mode": modes.state(
        mode, switches=["fake.fast (the fake's tuned switch)"] if tuned else [],
        not_applied={"fake.gpu_only": "GPU only; this is a CPU"} if tuned else {})}


def build_cnn(spec, dev):
    return _Model(spec)


def train_cnn_epoch(model, batches, spec):
    return _train(model, batches)


def predict_cnn(model, x, spec):
    classes = 3 if _mode() == "wrong-shape" else spec.classes
    return np.tile(np.arange(classes, dtype=np.float32), (len(x), 1))


def build_rnn(spec, dev):
    if _mode() == "raise-rnn":
        raise RuntimeError("the fake RNN refuses to build")
    return _Model(spec)


def train_rnn_epoch(model, batches, spec):
    return _train(model, batches)


def predict_rnn(model, x, spec):
    return np.zeros((len(x), spec.classes), dtype=np.float32)


def build_resnet50(spec, dev):
    if _mode() == "oom":
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return _Model(spec)


def extract_features(model, x):
    dtype = np.float16 if _mode() == "fp16-features" else np.float32
    return np.zeros((len(x), model.spec.features), dtype=dtype)


def _train(model, batches):
    seen = 0
    for x, y in batches:
        assert len(x) == batches.batch_size == len(y)
        seen += 1
    model.steps += seen
    return float("nan") if _mode() == "nan" else 1.0 / model.steps
