"""The canonical weight layout of the three tasks: one set of names and shapes every framework
file converts to (get_weights) and from (set_weights), so the same weights can be loaded into
every framework and what comes out compared (`python -m bench equivalence`).

The layout is PyTorch's (docs/tasks.md, "Canonical weights"):
- convolutions OIHW (out, in, height, width); dense layers (out, in);
- the CNN's first dense layer takes the last convolution's output flattened in C, H, W order
  (NCHW), whatever layout the framework computes in;
- the GRU in the cuDNN formulation, gates in the order (r, z, n): weight_ih (3H, E),
  weight_hh (3H, H), bias_ih (3H), bias_hh (3H), with
    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr), z = sigmoid(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h;
- ResNet-50 as torchvision's resnet50 without its fc layer: its state_dict names, batch-norm
  running statistics included (num_batches_tracked left out). A framework whose convolutions
  carry biases (the Keras applications' layout) sets them to zero and reports them as zero.
This module imports no framework.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from . import tasks

GRU_GATES = ("r", "z", "n")

# Conventions where frameworks compute another function by design, each framework stating one
# of these values in its conventions (bench/equivalence.py compares only equal ones).
DESIGN_CONVENTIONS = {
    # rnn: where Adam adds epsilon. Algorithm 1 of Kingma & Ba: w -= lr * m_hat / (sqrt(v_hat) + eps);
    # their section 2's "epsilon hat": w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps),
    # which is Algorithm 1 with eps / sqrt(1 - b2^t) in place of eps.
    "adam_epsilon": ("sqrt(v_hat) + eps (Kingma & Ba Algorithm 1)",
                     "sqrt(v) + eps, bias correction in the step size (Kingma & Ba epsilon hat)"),
    # rnn: Adam's second moment of an embedding row: the square of the row's summed gradient (a
    # dense gradient), or the sum of each occurrence's square (Keras on TensorFlow: the gradient
    # is a tf.IndexedSlices with one row per token occurrence, squared before it is summed)
    "adam_embedding_v": ("square of the row's gradient (dense)",
                         "sum of each occurrence's squared gradient (tf.IndexedSlices)"),
    # resnet50: the stride 2 of a stage's first bottleneck, on the 3x3 or on the first 1x1 convolution
    "resnet_stride": ("3x3 (torchvision, v1.5)", "1x1 (original paper, v1)"),
    # resnet50: the max pooling after the stem
    "pool1": ("max 3x3, stride 2, padding 1", "max 3x3, stride 2, padding 0, cover_all"),
}
RESNET_BLOCKS = (3, 4, 6, 3)  # bottlenecks per stage
RESNET_EXPANSION = 4


def cnn_layout(spec) -> "OrderedDict[str, tuple]":
    c1, c2, c3, c4 = spec.conv_channels
    k, channels = spec.kernel_size, spec.image_shape[0]
    out = OrderedDict()
    for name, (o, i) in zip(("conv1", "conv2", "conv3", "conv4"), ((c1, channels), (c2, c1), (c3, c2), (c4, c3))):
        out[f"{name}.weight"] = (o, i, k, k)
        out[f"{name}.bias"] = (o,)
    out["fc1.weight"] = (spec.dense_units, spec.flat_features)
    out["fc1.bias"] = (spec.dense_units,)
    out["fc2.weight"] = (spec.classes, spec.dense_units)
    out["fc2.bias"] = (spec.classes,)
    return out


def rnn_layout(spec) -> "OrderedDict[str, tuple]":
    h, e = spec.gru_units, spec.embedding_dim
    return OrderedDict([
        ("embedding.weight", (spec.max_features, e)),
        ("gru.weight_ih", (3 * h, e)),
        ("gru.weight_hh", (3 * h, h)),
        ("gru.bias_ih", (3 * h,)),
        ("gru.bias_hh", (3 * h,)),
        ("fc.weight", (spec.classes, h)),
        ("fc.bias", (spec.classes,)),
    ])


def _bn(out: OrderedDict, name: str, channels: int) -> None:
    for part in ("weight", "bias", "running_mean", "running_var"):
        out[f"{name}.{part}"] = (channels,)


def resnet50_layout(spec=None) -> "OrderedDict[str, tuple]":
    out = OrderedDict()
    out["conv1.weight"] = (64, 3, 7, 7)
    _bn(out, "bn1", 64)
    inplanes = 64
    for stage, blocks in enumerate(RESNET_BLOCKS, 1):
        width = 64 * 2 ** (stage - 1)
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            out[f"{p}.conv1.weight"] = (width, inplanes, 1, 1)
            _bn(out, f"{p}.bn1", width)
            out[f"{p}.conv2.weight"] = (width, width, 3, 3)
            _bn(out, f"{p}.bn2", width)
            out[f"{p}.conv3.weight"] = (width * RESNET_EXPANSION, width, 1, 1)
            _bn(out, f"{p}.bn3", width * RESNET_EXPANSION)
            if b == 0:
                out[f"{p}.downsample.0.weight"] = (width * RESNET_EXPANSION, inplanes, 1, 1)
                _bn(out, f"{p}.downsample.1", width * RESNET_EXPANSION)
            inplanes = width * RESNET_EXPANSION
    return out


LAYOUTS = {"cnn": cnn_layout, "rnn": rnn_layout, "resnet50": resnet50_layout}


def layout(task: str, spec=None) -> "OrderedDict[str, tuple]":
    return LAYOUTS[task](spec or tasks.SPECS[task])


def trainable(task: str, name: str) -> bool:
    """Running statistics are state, not parameters: they are not counted or trained."""
    return not name.endswith(("running_mean", "running_var"))


class LayoutError(ValueError):
    """Weights that are not the canonical layout of the task (a name missing, extra, or misshapen)."""


def check(task: str, weights: dict, spec=None, who: str = "weights") -> "OrderedDict[str, np.ndarray]":
    """The weights in canonical order as float32 arrays; LayoutError naming every difference."""
    want = layout(task, spec)
    problems = []
    missing = [n for n in want if n not in weights]
    extra = sorted(n for n in weights if n not in want)
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} ({len(missing)})")
    if extra:
        problems.append(f"not in the layout: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''} ({len(extra)})")
    out = OrderedDict()
    for name, shape in want.items():
        if name not in weights:
            continue
        value = np.asarray(weights[name])
        if tuple(value.shape) != tuple(shape):
            problems.append(f"{name} has shape {tuple(value.shape)}, the layout says {tuple(shape)}")
            continue
        value = value.astype(np.float32)
        if not np.all(np.isfinite(value)):
            problems.append(f"{name} holds a value that is not finite")
        out[name] = value
    if problems:
        raise LayoutError(f"{who} for {task}: " + "; ".join(problems))
    return out


def random_weights(task: str, seed: int, spec=None) -> "OrderedDict[str, np.ndarray]":
    """Seeded weights in the canonical layout, scaled so activations stay of order one (each
    weight uniform in +-sqrt(3 / fan_in), biases small, batch-norm statistics near identity)."""
    rng = np.random.default_rng(seed)
    out = OrderedDict()
    for name, shape in layout(task, spec).items():
        if name.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_mean"):
            value = rng.normal(0.0, 0.1, shape)
        elif ".bn" in name or "downsample.1" in name or name.startswith("bn1"):
            value = rng.uniform(0.5, 1.5, shape) if name.endswith("weight") else rng.normal(0.0, 0.1, shape)
        elif name.endswith("bias") or name.startswith("gru.bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif name == "embedding.weight":
            value = rng.normal(0.0, 1.0, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            bound = np.sqrt(3.0 / fan_in)
            value = rng.uniform(-bound, bound, shape)
        out[name] = value.astype(np.float32)
    return out


def save(path: Path, weights: dict) -> None:
    np.savez(path, **weights)


def load(path: Path, task: str, spec=None) -> "OrderedDict[str, np.ndarray]":
    with np.load(path, allow_pickle=False) as data:
        return check(task, {name: data[name] for name in data.files}, spec, who=str(path))
