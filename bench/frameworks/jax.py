"""JAX with Flax (linen) and Optax, jitted train steps: the three tasks of TASKS.md.

Same sections as bench/frameworks/pytorch.py:
  1. framework and device: init_device, set_seed, synchronize, versions, data_format,
     count_params, conventions, numerics
  2. CNN  3. RNN  4. ResNet-50
Flax ships no model zoo, so ResNet-50 is written here (torchvision's layout, NHWC).

Precision (bench/precisions.py): every module computes in the compute dtype of the precision
(Flax's `dtype`) and keeps float32 parameters (`param_dtype`), which Optax updates (the fp32
master weights); logits are cast to float32 before the loss. TF32 is JAX's
jax_default_matmul_precision ('highest' forbids it, 'tensorfloat32' allows it). amp-fp16 scales
the loss dynamically with the scaler written below (JAX, Flax and Optax have none of their own).
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import precisions
from bench.errors import DeviceUnavailable, UnsupportedPrecision
from bench.runner import batches_of

NAME = "jax"

# What init_device set; one process runs one precision. build_* read it.
_PRECISION = {"name": precisions.DEFAULT, "dtype": jnp.float32, "loss_scaling": False}
_SEED = 0  # set_seed: the PRNG keys of build_* (initial weights, dropout) derive from it

COMPUTE_DTYPES = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}
MATMUL_PRECISION = {"tf32": "tensorfloat32"}  # every other precision: "highest" (no TF32)

# Dynamic loss scaling (amp-fp16), the rules of jmp.DynamicLossScale (DeepMind's mixed-precision
# library for JAX, not among the pins): the loss is multiplied by the scale before the gradient
# and the gradients divided by it after; a step whose gradients are not all finite is skipped
# (parameters and optimizer state kept) and the scale halved; after LOSS_SCALE_PERIOD finite
# steps in a row the scale doubles. The loss returned is the unscaled one, NaN or not.
LOSS_SCALE_INITIAL = 2.0 ** 15
LOSS_SCALE_PERIOD = 2000
LOSS_SCALE_FACTOR = 2.0
LOSS_SCALE_MIN, LOSS_SCALE_MAX = 1.0, 2.0 ** 24
LOSS_SCALER = "bench.frameworks.jax dynamic loss scale (jmp.DynamicLossScale rules)"


class Model:
    """A Flax module with its variables, optimizer state and jitted functions."""

    def __init__(self, module, variables, dev, tx=None, seed: int = 0, example=None):
        self.module, self.dev, self.tx, self.example = module, dev, tx, example
        self.params = jax.device_put(variables["params"], dev)
        self.batch_stats = jax.device_put(variables.get("batch_stats"), dev)
        training = tx is not None
        self.opt_state = jax.device_put(tx.init(self.params), dev) if training else None
        self.loss_scale = (jax.device_put(_initial_loss_scale(), dev)
                           if training and _PRECISION["loss_scaling"] else None)
        self.key = jax.random.PRNGKey(seed)
        self.step = _make_train_step(module, tx, dev, self.loss_scale is not None) if training else None
        # Outputs (logits, features) in float32 whatever the compute dtype.
        self.apply = jax.jit(lambda variables, x: module.apply(variables, x, train=False).astype(jnp.float32))


# ---------------------------------------------------------------- 1. framework and device

def init_device(device: str, precision: str):
    global _PRECISION
    capability = None
    if device == "gpu":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:  # no GPU backend at all
            gpus = []
        if not gpus:
            raise DeviceUnavailable(
                f"no GPU found: jax.devices('gpu') is empty (jax {jax.__version__}; GPU images "
                "install jax[cuda12]); check the driver and nvidia-smi, or run with --device cpu")
        dev = gpus[0]
        capability = _capability(dev)
    else:
        dev = jax.devices("cpu")[0]
    reason = precisions.skip_reason(precision, device, capability, NAME)
    if reason:
        raise UnsupportedPrecision(reason)
    # TF32 off ("highest": full fp32 matmuls and convolutions on 32-bit inputs) but in tf32;
    # in amp-* the half-precision layers are not affected by it.
    jax.config.update("jax_default_matmul_precision", MATMUL_PRECISION.get(precision, "highest"))
    _PRECISION = {"name": precision, "dtype": COMPUTE_DTYPES[precisions.COMPUTE_DTYPE[precision]],
                  "loss_scaling": precisions.LOSS_SCALING[precision] == "dynamic"}
    return dev


def _capability(dev):
    """The GPU's compute capability as (major, minor), from jax's device ('8.0'); None if unknown."""
    text = getattr(dev, "compute_capability", None)
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def set_seed(seed: int) -> None:
    global _SEED
    _SEED = int(seed)


def synchronize(dev) -> None:
    # Every timed function returns host values (a float loss, NumPy features), which waits
    # for the device; this also flushes pending effects.
    jax.effects_barrier()


def versions(dev) -> dict:
    cuda = cudnn = None
    if dev.platform == "gpu":
        try:
            from jax._src.lib import cuda_versions  # not a public API: best effort

            cuda = str(cuda_versions.cuda_runtime_get_version())
            cudnn = str(cuda_versions.cudnn_get_version())
        except (ImportError, AttributeError):
            pass
    return {
        "framework_version": f"{jax.__version__} (flax {flax.__version__})",
        "cuda": cuda,
        "cudnn": cudnn,
        "gpu": dev.device_kind if dev.platform == "gpu" else None,
    }


def data_format(dev) -> str:
    return "NHWC"  # Flax's native layout; XLA picks its own on the GPU


def count_params(model: Model) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(model.params))


def conventions(task: str, dev) -> dict:
    fast = ["jax.jit train step and prediction"]
    if task == "cnn":
        return {"layout": "NHWC", "init": "glorot_uniform kernels, zero biases", "fast_path": fast}
    if task == "rnn":
        return {"gru_bias": "two vectors per gate (input and hidden, cuDNN layout), GRU written "
                            "with lax.scan (Flax's GRUCell has a third layout)",
                "gru_biases": 600, "gru_kernel": "XLA (lax.scan)", "fast_path": fast}
    return {"resnet_conv_bias": False, "weights": "random", "layout": "NHWC",
            "source": "ResNet-50 written in Flax (torchvision layout, stride on the 3x3 conv)",
            "fast_path": fast}


def numerics(task: str, model: Model, dev) -> dict:
    precision = _PRECISION["name"]
    matmul = jax.config.jax_default_matmul_precision  # read back
    variables = {"params": model.params}
    if model.batch_stats is not None:
        variables["batch_stats"] = model.batch_stats
    # The dtype the layers compute in: the module's raw output, traced (jax.eval_shape: no work).
    out = jax.eval_shape(lambda v, x: model.module.apply(v, x, train=False), variables, model.example)
    compute = jnp.dtype(out.dtype).name
    leaves = sorted({jnp.dtype(leaf.dtype).name for leaf in jax.tree_util.tree_leaves(model.params)})
    param_dtype = leaves[0] if len(leaves) == 1 else "mixed (" + ", ".join(leaves) + ")"
    # A GPU computes 32-bit matmuls and convolutions in TF32 unless the precision is the full one.
    tf32 = dev.platform == "gpu" and str(matmul) not in ("highest", "float32", "F32_F32_F32")
    switches = {"jax_default_matmul_precision": matmul,
                "module.dtype": jnp.dtype(model.module.dtype).name,
                precisions.TF32_OVERRIDE_VARIABLE: os.environ.get(precisions.TF32_OVERRIDE_VARIABLE)}
    mechanism = f"flax modules dtype={compute}, param_dtype={param_dtype}"
    if model.tx is not None:
        mechanism += " (optax updates the float32 params), logits cast to float32 before the loss"
    else:
        mechanism += ", features cast to float32"
    mechanism += f"; jax_default_matmul_precision={matmul!r}"
    scaler = None
    if model.loss_scale is not None:
        loss_scaling, scaler = "dynamic", LOSS_SCALER
        switches["loss_scale"] = float(model.loss_scale["scale"])
        mechanism += (f"; dynamic loss scaling (initial {LOSS_SCALE_INITIAL:g}, x{LOSS_SCALE_FACTOR:g} "
                      f"after {LOSS_SCALE_PERIOD} finite steps, /{LOSS_SCALE_FACTOR:g} and the step "
                      "skipped on a non-finite gradient)")
    elif model.tx is None:  # inference (ResNet-50): no loss to scale, the precision's rule stands
        loss_scaling = precisions.LOSS_SCALING[precision]
        mechanism += "; inference: no loss, so no loss scaler"
    else:
        loss_scaling = "none"
    return precisions.state(precision, tf32=tf32, compute_dtype=compute, param_dtype=param_dtype,
                            loss_scaling=loss_scaling, mechanism=mechanism,
                            read_back=["tf32", "compute_dtype", "param_dtype"], switches=switches,
                            loss_scaler=scaler)


def _initial_loss_scale() -> dict:
    return {"scale": jnp.asarray(LOSS_SCALE_INITIAL, jnp.float32), "good_steps": jnp.zeros((), jnp.int32)}


def _next_loss_scale(state: dict, finite) -> dict:
    grow = finite & (state["good_steps"] + 1 >= LOSS_SCALE_PERIOD)
    scale = jnp.where(finite, jnp.where(grow, state["scale"] * LOSS_SCALE_FACTOR, state["scale"]),
                      state["scale"] / LOSS_SCALE_FACTOR)
    good_steps = jnp.where(finite & ~grow, state["good_steps"] + 1, 0).astype(jnp.int32)
    return {"scale": jnp.clip(scale, LOSS_SCALE_MIN, LOSS_SCALE_MAX), "good_steps": good_steps}


def _make_train_step(module, tx, dev, loss_scaling: bool):
    donate = (0, 1) if dev.platform == "gpu" else ()  # the CPU backend cannot donate buffers

    def loss_fn(params, x, y, key):
        logits = module.apply({"params": params}, x, train=True, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()

    @partial(jax.jit, donate_argnums=donate)
    def step(params, opt_state, x, y, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @partial(jax.jit, donate_argnums=donate)
    def scaled_step(params, opt_state, loss_scale, x, y, key):
        scale = loss_scale["scale"]

        def scaled_loss(p):
            loss = loss_fn(p, x, y, key)
            return loss * scale, loss

        grads, loss = jax.grad(scaled_loss, has_aux=True)(params)  # float32: the params' dtype
        grads = jax.tree_util.tree_map(lambda g: g / scale, grads)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)

        def keep(new, old):  # a step with a non-finite gradient is skipped
            return jnp.where(finite, new, old)

        params = jax.tree_util.tree_map(keep, new_params, params)
        opt_state = jax.tree_util.tree_map(keep, new_opt_state, opt_state)
        return params, opt_state, _next_loss_scale(loss_scale, finite), loss

    return scaled_step if loss_scaling else step


# ---------------------------------------------------------------- 2. CNN

class CNN(nn.Module):
    spec: object
    dtype: Any = jnp.float32  # compute dtype; parameters are float32 (param_dtype)

    @nn.compact
    def __call__(self, x, train: bool = False):
        s = self.spec
        c1, c2, c3, c4 = s.conv_channels
        kernel = (s.kernel_size, s.kernel_size)
        glorot = nn.initializers.glorot_uniform()
        dense = partial(nn.Dense, kernel_init=glorot, dtype=self.dtype, param_dtype=jnp.float32)

        def conv(channels):  # zero bias
            return nn.Conv(channels, kernel, padding="SAME", kernel_init=glorot, dtype=self.dtype,
                           param_dtype=jnp.float32)

        x = nn.relu(conv(c1)(x))
        x = nn.relu(nn.max_pool(conv(c2)(x), (2, 2), strides=(2, 2)))
        x = nn.Dropout(s.conv_dropout, deterministic=not train)(x)
        x = nn.relu(conv(c3)(x))
        x = nn.relu(nn.max_pool(conv(c4)(x), (2, 2), strides=(2, 2)))
        x = nn.Dropout(s.conv_dropout, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(dense(s.dense_units)(x))
        x = nn.Dropout(s.dense_dropout, deterministic=not train)(x)
        return dense(s.classes)(x)


def build_cnn(spec, dev) -> Model:
    module = CNN(spec, dtype=_PRECISION["dtype"])
    channels, height, width = spec.image_shape
    example = jnp.zeros((1, height, width, channels))
    variables = module.init(jax.random.PRNGKey(_SEED), example)
    return Model(module, variables, dev, optax.sgd(spec.lr, momentum=spec.momentum), _SEED, example)


def train_cnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_cnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


def _train_epoch(model: Model, batches) -> float:
    total = jnp.zeros(())
    for x, y in batches:
        model.key, dropout_key = jax.random.split(model.key)
        x, y = jax.device_put(x, model.dev), jax.device_put(y, model.dev)
        if model.loss_scale is None:
            model.params, model.opt_state, loss = model.step(model.params, model.opt_state, x, y, dropout_key)
        else:
            model.params, model.opt_state, model.loss_scale, loss = model.step(
                model.params, model.opt_state, model.loss_scale, x, y, dropout_key)
        total = total + loss  # stays on the device: no sync per step
    return float(total) / len(batches)


def _predict(model: Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    variables = {"params": model.params}
    logits = [np.asarray(model.apply(variables, jax.device_put(xb, model.dev)))
              for xb in batches_of(x, batch_size)]
    return np.concatenate(logits)


# ---------------------------------------------------------------- 3. RNN

class GRU(nn.Module):
    """One GRU layer in the cuDNN/PyTorch formulation: input and hidden biases per gate.

    Flax's own rule for its GRUCell under a compute dtype: the matmuls and gates in that dtype,
    the carried state float32 (its blend with the float32 state promotes), parameters float32."""

    units: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h_units, dtype = self.units, self.dtype
        # every step's input projection at once
        x_proj = nn.Dense(3 * h_units, name="input", dtype=dtype, param_dtype=jnp.float32)(x)
        w_hidden = self.param("hidden_kernel", nn.initializers.orthogonal(), (h_units, 3 * h_units),
                              jnp.float32).astype(dtype)
        b_hidden = self.param("hidden_bias", nn.initializers.zeros, (3 * h_units,), jnp.float32).astype(dtype)

        def step(h, x_t):
            xr, xz, xn = jnp.split(x_t, 3, axis=-1)
            hr, hz, hn = jnp.split(h.astype(dtype) @ w_hidden + b_hidden, 3, axis=-1)
            r, z = nn.sigmoid(xr + hr), nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = (1.0 - z) * n + z * h
            return h, h

        h0 = jnp.zeros((x.shape[0], h_units), jnp.float32)
        _, outputs = jax.lax.scan(step, h0, jnp.swapaxes(x_proj, 0, 1))
        return jnp.swapaxes(outputs, 0, 1)


class GRUClassifier(nn.Module):
    spec: object
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        s = self.spec
        embed = nn.Embed(s.max_features, s.embedding_dim, dtype=self.dtype, param_dtype=jnp.float32)
        outputs = GRU(s.gru_units, dtype=self.dtype)(embed(tokens))
        # the last time step
        return nn.Dense(s.classes, dtype=self.dtype, param_dtype=jnp.float32)(outputs[:, -1])


def build_rnn(spec, dev) -> Model:
    module = GRUClassifier(spec, dtype=_PRECISION["dtype"])
    example = jnp.zeros((1, spec.seq_len), jnp.int32)
    variables = module.init(jax.random.PRNGKey(_SEED), example)
    tx = optax.adam(spec.lr, b1=spec.beta1, b2=spec.beta2, eps=spec.epsilon)
    return Model(module, variables, dev, tx, _SEED, example)


def train_rnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_rnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


# ---------------------------------------------------------------- 4. ResNet-50

class Bottleneck(nn.Module):
    filters: int
    strides: int
    project: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        # Flax's BatchNorm under a compute dtype: statistics in float32, output in the dtype.
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       dtype=self.dtype, param_dtype=jnp.float32)
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)
        stride = (self.strides, self.strides)
        y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
        y = nn.relu(norm()(conv(self.filters, (3, 3), strides=stride, padding=((1, 1), (1, 1)))(y)))
        y = norm()(conv(4 * self.filters, (1, 1))(y))
        shortcut = norm()(conv(4 * self.filters, (1, 1), strides=stride)(x)) if self.project else x
        return nn.relu(y + shortcut)


class ResNet50(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                    dtype=self.dtype, param_dtype=jnp.float32)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype, param_dtype=jnp.float32)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, (blocks, filters) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = Bottleneck(filters, strides, project=block == 0, dtype=self.dtype)(x, train)
        return jnp.mean(x, axis=(1, 2))  # global average pooling: 2,048 features


def build_resnet50(spec, dev) -> Model:
    module = ResNet50(dtype=_PRECISION["dtype"])
    channels, height, width = spec.image_shape
    example = jnp.zeros((1, height, width, channels))
    variables = module.init(jax.random.PRNGKey(_SEED), example)
    return Model(module, variables, dev, seed=_SEED, example=example)


def extract_features(model: Model, x: np.ndarray) -> np.ndarray:
    variables = {"params": model.params, "batch_stats": model.batch_stats}  # running statistics
    return np.asarray(model.apply(variables, jax.device_put(x, model.dev)))  # float32
