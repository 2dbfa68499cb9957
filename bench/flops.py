"""FLOPs per sample of the three tasks (docs/tasks.md, "FLOPs"), and the record's achieved rate.

Counted: 2 FLOPs per multiply-add of the convolutions, the dense layers and the GRU's gate matmuls,
from the spec's shapes. Not counted: bias adds, elementwise ops, activations, pooling, BatchNorm,
dropout, the softmax and loss, the embedding lookup and the optimizer. This is the rule of
torch.utils.flop_counter.FlopCounterMode, and tests/test_flops.py checks the numbers against it.
Training = forward + backward; the backward of a layer computes its weight gradient (as many
multiply-adds as its forward) and its input gradient (as many again), except where the input
needs none: the data fed to the first convolution, and the GRU's initial (zero) hidden state.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

from . import tasks

BASIS_TRAINING = "training (forward + backward)"
BASIS_FORWARD = "forward"


class Layer(NamedTuple):
    """One matmul-bearing layer, per sample: multiply-adds of its forward pass and of its input
    gradient (its weight gradient has as many as its forward pass)."""

    name: str
    forward_macs: int
    input_grad_macs: int


def _positive_int(spec, field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{type(spec).__name__}.{field} must be a positive integer, got {value!r}")
    return value


def _ints(spec, field: str, length: int) -> tuple:
    value = getattr(spec, field, None)
    if not isinstance(value, (tuple, list)) or len(value) != length:
        raise ValueError(f"{type(spec).__name__}.{field} must hold {length} positive integers, "
                         f"got {value!r}")
    return tuple(_positive_int(spec, field, v) for v in value)


def _conv(name: str, c_in: int, c_out: int, k: int, out_h: int, out_w: int,
          input_grad: bool = True) -> Layer:
    macs = out_h * out_w * c_out * c_in * k * k
    return Layer(name, macs, macs if input_grad else 0)


def _dense(name: str, n_in: int, n_out: int) -> Layer:
    return Layer(name, n_in * n_out, n_in * n_out)


def _out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def cnn_layers(spec) -> list:
    c1, c2, c3, c4 = _ints(spec, "conv_channels", 4)
    channels, h, w = _ints(spec, "image_shape", 3)
    k = _positive_int(spec, "kernel_size", spec.kernel_size)
    units = _positive_int(spec, "dense_units", spec.dense_units)
    classes = _positive_int(spec, "classes", spec.classes)
    if h < 4 or w < 4:
        raise ValueError(f"CNNSpec.image_shape {spec.image_shape!r}: two 2x2 poolings need 4x4 or more")
    # "same" padding keeps the size; each 2x2 max-pool (stride 2) halves it, rounding down.
    h2, w2 = h // 2, w // 2
    return [
        _conv("conv1", channels, c1, k, h, w, input_grad=False),  # its input is the data
        _conv("conv2", c1, c2, k, h, w),
        _conv("conv3", c2, c3, k, h2, w2),
        _conv("conv4", c3, c4, k, h2, w2),
        _dense("dense1", c4 * (h2 // 2) * (w2 // 2), units),
        _dense("dense2", units, classes),
    ]


def rnn_layers(spec) -> list:
    steps = _positive_int(spec, "seq_len", spec.seq_len)
    embedding = _positive_int(spec, "embedding_dim", spec.embedding_dim)
    units = _positive_int(spec, "gru_units", spec.gru_units)
    classes = _positive_int(spec, "classes", spec.classes)
    gates = 3 * units  # r, z, n
    return [
        # The embedding is trained, so its output (the GRU's input) needs a gradient.
        Layer("gru input matmuls (W_ih x)", steps * embedding * gates, steps * embedding * gates),
        # h_0 is zeros and needs no gradient: the first step's W_hh h_0 has no input gradient.
        Layer("gru hidden matmuls (W_hh h)", steps * units * gates, (steps - 1) * units * gates),
        _dense("dense", units, classes),
    ]


RESNET50_STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))  # blocks, width, stride
RESNET_EXPANSION = 4


def resnet50_layers(spec) -> list:
    channels, h, w = _ints(spec, "image_shape", 3)
    if h < 32 or w < 32:
        raise ValueError(f"ResNet50Spec.image_shape {spec.image_shape!r}: ResNet-50 needs 32x32 or more")
    h, w = _out(h, 7, 2, 3), _out(w, 7, 2, 3)
    layers = [_conv("conv1 7x7/2", channels, 64, 7, h, w, input_grad=False)]  # its input is the data
    h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)  # max-pool 3x3/2
    c_in = 64
    for stage, (blocks, width, stride) in enumerate(RESNET50_STAGES, 1):
        c_out = width * RESNET_EXPANSION
        for block in range(blocks):
            s = stride if block == 0 else 1
            name = f"layer{stage}.{block}"
            oh, ow = _out(h, 3, s, 1), _out(w, 3, s, 1)  # torchvision v1.5: the stride on the 3x3
            layers += [
                _conv(f"{name}.conv1 1x1", c_in, width, 1, h, w),
                _conv(f"{name}.conv2 3x3/{s}", width, width, 3, oh, ow),
                _conv(f"{name}.conv3 1x1", width, c_out, 1, oh, ow),
            ]
            if block == 0:  # the projection shortcut
                layers.append(_conv(f"{name}.downsample 1x1/{s}", c_in, c_out, 1,
                                    _out(h, 1, s, 0), _out(w, 1, s, 0)))
            c_in, h, w = c_out, oh, ow
    return layers  # then global average pooling: no matmul; fc is cut


LAYERS = {"cnn": cnn_layers, "rnn": rnn_layers, "resnet50": resnet50_layers}
SPEC_TYPES = {"cnn": tasks.CNNSpec, "rnn": tasks.RNNSpec, "resnet50": tasks.ResNet50Spec}


def layers(task: str, spec=None) -> list:
    """The task's matmul-bearing layers with their multiply-adds per sample (spec: the task's
    spec from bench/tasks.py; None: the default)."""
    if task not in LAYERS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(tasks.TASK_NAMES)}")
    if spec is None:
        spec = tasks.SPECS[task]
    if not isinstance(spec, SPEC_TYPES[task]):
        raise ValueError(f"{task}: expected a {SPEC_TYPES[task].__name__}, got {type(spec).__name__}")
    return LAYERS[task](spec)


def per_sample(task: str, spec=None) -> dict:
    """FLOPs per sample: {"forward": int, "training": int}, training = forward + backward."""
    rows = layers(task, spec)
    forward = sum(2 * layer.forward_macs for layer in rows)
    backward = sum(2 * (layer.forward_macs + layer.input_grad_macs) for layer in rows)
    return {"forward": forward, "training": forward + backward}


def spec_from_hyperparameters(task: str, hyperparameters) -> object:
    """The task's spec rebuilt from a record's "hyperparameters" (tasks.hyperparameters: tuples
    became lists); keys that are not fields of the spec are ignored."""
    if task not in SPEC_TYPES:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(tasks.TASK_NAMES)}")
    if hyperparameters is None:
        hyperparameters = {}
    if not isinstance(hyperparameters, dict):
        raise ValueError(f"{task}: hyperparameters must be an object, got {type(hyperparameters).__name__}")
    fields = {f.name for f in dataclasses.fields(SPEC_TYPES[task])}
    changes = {key: tuple(value) if isinstance(value, list) else value
               for key, value in hyperparameters.items() if key in fields}
    return dataclasses.replace(tasks.SPECS[task], **changes)


def _finite_positive(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


def annotate(record: dict, peak) -> dict:
    """Add record["flops"] to an ok record (in place; the record is returned): FLOPs per sample on
    the task's basis, the samples the timed section covers, the achieved FLOP/s and, given the
    peak (hardware.peak_flops: (FLOP/s or None, its source or why unknown)), the MFU.
    A record whose status is not "ok" is returned untouched; an ok record that lacks what the
    figures need raises ValueError."""
    if not isinstance(record, dict):
        raise ValueError(f"flops.annotate: a record must be a dict, got {type(record).__name__}")
    if record.get("status") != "ok":
        return record
    task = record.get("task")
    what = f"{record.get('framework', '?')} {task}"
    spec = spec_from_hyperparameters(task, record.get("hyperparameters"))
    training = task != "resnet50"
    counts = per_sample(task, spec)
    flops = counts["training"] if training else counts["forward"]
    samples = (record.get("samples") or {}).get("train" if training else "images")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"{what}: an ok record with samples {record.get('samples')!r}; "
                         f"FLOP/s needs a positive {'train' if training else 'images'} count")
    seconds = _finite_positive(record.get("time_total_s"))
    if seconds is None:
        raise ValueError(f"{what}: an ok record with time_total_s {record.get('time_total_s')!r}; "
                         "FLOP/s needs a positive finite time")
    achieved = flops * samples / seconds
    if not math.isfinite(achieved):
        raise ValueError(f"{what}: {flops} FLOPs x {samples} samples / {seconds} s is not finite")
    if not isinstance(peak, (tuple, list)) or len(peak) != 2:
        raise ValueError(f"flops.annotate: peak must be (FLOP/s or None, source), got {peak!r}")
    peak_value, peak_source = peak
    peak_source = str(peak_source) if peak_source is not None else ""
    peak_flops = _finite_positive(peak_value)
    if peak_flops is None and peak_value is not None:
        peak_source = f"{peak_source} (peak {peak_value!r} is not a positive finite number: unknown)"
    mfu = achieved / peak_flops if peak_flops is not None else None
    record["flops"] = {
        "per_sample": float(flops),
        "basis": BASIS_TRAINING if training else BASIS_FORWARD,
        "samples": samples,
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s": peak_flops,
        "peak_source": peak_source,
        "mfu": mfu if mfu is None or math.isfinite(mfu) else None,
    }
    return record


__all__ = ["Layer", "layers", "per_sample", "annotate", "spec_from_hyperparameters",
           "BASIS_TRAINING", "BASIS_FORWARD"]
