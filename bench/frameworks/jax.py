"""JAX with Flax (linen) and Optax, jitted train steps: the three tasks of TASKS.md.

Same sections as bench/frameworks/pytorch.py:
  1. framework and device: init_device, set_seed, synchronize, versions, data_format,
     count_params, conventions, numerics, get_weights, set_weights, peak_device_memory
  2. CNN  3. RNN  4. ResNet-50
Flax ships no model zoo, so ResNet-50 is written here (torchvision's layout, NHWC).

The canonical weights (bench/canonical.py; `python -m bench equivalence`): get_weights and
set_weights convert Flax's layouts to and from the canonical one by transposes and reshapes only:
Conv kernels HWIO <-> OIHW, Dense kernels (in, out) <-> (out, in), the CNN's first Dense kernel's
rows from this file's NHWC flatten (h, w, c) <-> canonical (c, h, w), the GRU's fused kernels
(gates r, z, n, the order of this file's jnp.split) transposed, batch norm scale/bias and
batch_stats mean/var <-> weight/bias/running_mean/running_var.

Precision (bench/precisions.py): every module computes in the compute dtype of the precision
(Flax's `dtype`) and keeps float32 parameters (`param_dtype`), which Optax updates (the fp32
master weights); logits are cast to float32 before the loss. TF32 is JAX's
jax_default_matmul_precision ('highest' forbids it, 'tensorfloat32' allows it). amp-fp16 scales
the loss dynamically with the scaler written below (JAX, Flax and Optax have none of their own).

Mode (bench/modes.py): the reference already jits the train step and the prediction and donates
the parameters' and optimizer state's buffers on a GPU; Flax's layout is NHWC already. Tuned adds,
on the CPU, buffer donation (JAX FAQ, "Buffer donation"; this CPU backend can donate) for the CNN,
where it measured faster (x0.96 CPU time per steady epoch, one round); on a GPU nothing beyond.
Left off, with the reasons in conventions()["mode"]["not_applied"]: donation for the GRU on the CPU
(measured x1.11 slower), lax.scan(unroll=10) for the GRU (jax.lax.scan docs; x1.12 slower here, no
GPU reason given, not measured on a GPU: no GPU is lent to this project), the GPU XLA flags of
JAX's "GPU performance tips" (docs.jax.dev/en/latest/gpu_performance_tips.html), a cuDNN GRU
(jax.experimental.rnn has an LSTM only), the persistent compilation cache (it would hide the
compile time the harness measures). Measured 2026-12-01, quick sizes, one process alternating
modes with fresh models, on 2 shared CPU cores under heavy load (process CPU time compared).
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

from bench import canonical, modes, precisions
from bench.errors import DeviceUnavailable, UnsupportedPrecision
from bench.runner import batches_of

NAME = "jax"

# What init_device set; one process runs one precision. build_* read it.
_PRECISION = {"name": precisions.DEFAULT, "dtype": jnp.float32, "loss_scaling": False}
_SEED = 0  # set_seed: the PRNG keys of build_* (initial weights, dropout) derive from it
_MODE = {"name": modes.DEFAULT}  # init_device's mode; build_* and conventions read it
GRU_UNROLL = 10  # the lax.scan(unroll=...) measured for tuned mode and left off (module docstring)

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

    def __init__(self, module, variables, dev, tx=None, seed: int = 0, example=None, mode=modes.DEFAULT,
                 task: str = ""):
        self.module, self.dev, self.tx, self.example = module, dev, tx, example
        self.params = jax.device_put(variables["params"], dev)
        self.batch_stats = jax.device_put(variables.get("batch_stats"), dev)
        training = tx is not None
        self.opt_state = jax.device_put(tx.init(self.params), dev) if training else None
        self.loss_scale = (jax.device_put(_initial_loss_scale(), dev)
                           if training and _PRECISION["loss_scaling"] else None)
        self.key = jax.random.PRNGKey(seed)
        tuned = _tuned_switches(dev.platform, task) if mode == "tuned" else {}
        # The reference donates on a GPU only (it was written when the CPU backend could not).
        donate = dev.platform == "gpu" or bool(tuned.get("donate"))
        self.step = (_make_train_step(module, tx, dev, self.loss_scale is not None, donate)
                     if training else None)
        # Outputs (logits, features) in float32 whatever the compute dtype.
        self.apply = jax.jit(lambda variables, x: module.apply(variables, x, train=False).astype(jnp.float32))


# ---------------------------------------------------------------- 1. framework and device

def init_device(device: str, precision: str, mode: str = modes.DEFAULT):
    global _PRECISION
    modes.check_name(mode)
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
    _MODE["name"] = mode
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
    mode = _mode_state(task, dev)
    if task == "cnn":
        return {"layout": "NHWC", "init": "glorot_uniform kernels, zero biases", "fast_path": fast,
                "mode": mode}
    if task == "rnn":
        return {"gru_bias": "two vectors per gate (input and hidden, cuDNN layout), GRU written "
                            "with lax.scan (Flax's GRUCell has a third layout)",
                "gru_biases": 600, "gru_kernel": "XLA (lax.scan)",
                "adam_epsilon": "sqrt(v_hat) + eps (Kingma & Ba Algorithm 1)",  # optax.scale_by_adam
                "adam_embedding_v": "square of the row's gradient (dense)",
                "fast_path": fast, "mode": mode}
    return {"resnet_conv_bias": False, "weights": "random", "layout": "NHWC",
            "source": "ResNet-50 written in Flax (torchvision layout, stride on the 3x3 conv)",
            # Bottleneck below: the stride-2 of a stage's first block is on its 3x3 conv (and the
            # projection shortcut), as torchvision's; every nn.BatchNorm has epsilon=1e-5.
            "resnet_stride": "3x3 (torchvision, v1.5)", "bn_epsilon": 1e-5,
            "pool1": "max 3x3, stride 2, padding 1", "fast_path": fast, "mode": mode}


# Tuned mode: which switch on which task and platform (module docstring, "Mode"). The CPU
# figures are steady-epoch process CPU time, tuned / reference, quick sizes, 2026-12-01.
_TUNED_OFF: set = set()  # switches the scratch measurements turn off


def _tuned_switches(platform: str, task: str) -> dict:
    on = {"donate": platform == "cpu" and task == "cnn"}
    return {k: v and k not in _TUNED_OFF for k, v in on.items()}


_NOT_APPLIED = {
    "donate": ("jax.jit(donate_argnums=(params, opt_state)) on the CPU: measured slower here "
               "(x1.11 CPU time per steady epoch, 2026-12-01); the reference donates on a GPU already"),
    "gru_unroll": (f"jax.lax.scan(unroll={GRU_UNROLL}) of the GRU: measured slower on this CPU (x1.12 CPU "
                   "time per steady epoch, first-epoch compile twice as long, 2026-12-01); lax.scan's "
                   "documentation gives no GPU reason for it, not measured on a GPU"),
    "triton_gemm": ("XLA_FLAGS=--xla_gpu_triton_gemm_any=True (JAX's GPU performance tips): a GPU flag, "
                    "read once when XLA's backend starts, before init_device sees the mode; its GEMMs under "
                    "jax_default_matmul_precision='highest' are not checked here (no GPU lent)"),
    "latency_hiding": ("--xla_gpu_enable_latency_hiding_scheduler (JAX's GPU performance tips): overlaps "
                       "collectives with compute; one device has none"),
    "cudnn_rnn": "a cuDNN GRU: JAX's only cuDNN RNN (jax.experimental.rnn) is an LSTM",
    "resnet_donate": ("buffer donation: inference reuses the weights every batch, and no output has the "
                      "input batch's shape"),
    "cache": ("jax_compilation_cache_dir (persistent compilation cache): it hides compile time across "
              "processes, which the harness measures apart (cold_start)"),
}


def _mode_state(task: str, dev) -> dict:
    """conventions()["mode"]: the switches tuned turns on beyond the reference, and those left off."""
    if _MODE["name"] != "tuned":
        return modes.state(_MODE["name"])
    cpu = dev.platform == "cpu"
    on = _tuned_switches(dev.platform, task)
    switches, off = [], {}
    if task == "cnn" and on["donate"]:
        switches.append("jax.jit(donate_argnums=(params, opt_state)) on the CPU too: XLA writes the new "
                        "parameters and optimizer state into the old ones' buffers (the reference donates "
                        "on a GPU only)")
    if task == "rnn":
        if cpu:
            off["buffer donation on the CPU"] = _NOT_APPLIED["donate"]
        off["lax.scan unroll"] = _NOT_APPLIED["gru_unroll"]
        off["cuDNN GRU"] = _NOT_APPLIED["cudnn_rnn"]
    if task == "resnet50":
        off["buffer donation"] = _NOT_APPLIED["resnet_donate"]
    off["--xla_gpu_triton_gemm_any"] = _NOT_APPLIED["triton_gemm"]
    off["--xla_gpu_enable_latency_hiding_scheduler"] = _NOT_APPLIED["latency_hiding"]
    off["persistent compilation cache"] = _NOT_APPLIED["cache"]
    return modes.state("tuned", switches=switches, not_applied=off)


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


# The canonical weight exchange. Each task's section has a table of rows (canonical name, path
# of the Flax variable: collection first, converter); a converter is a pair of functions
# (Flax array -> canonical array, canonical array -> Flax array), transposes and reshapes only,
# so set_weights then get_weights gives the same bits back.
_SAME = (lambda a: a, lambda a: a)
_CONV = (lambda k: k.transpose(3, 2, 0, 1), lambda w: w.transpose(2, 3, 1, 0))  # HWIO <-> OIHW
_DENSE = (lambda k: k.T, lambda w: w.T)  # (in, out) <-> (out, in)


def get_weights(model: Model, task: str) -> dict:
    """The model's weights in the canonical layout of `task` (bench/canonical.py): float32 NumPy
    arrays under the canonical names, in the canonical order."""
    variables = _flat_variables(model)
    return {name: np.ascontiguousarray(to_canonical(np.asarray(variables[path], dtype=np.float32)))
            for name, path, (to_canonical, _) in _weight_table(model, task)}


def set_weights(model: Model, task: str, weights: dict) -> None:
    """Load canonical weights of `task` (exactly the canonical names and shapes) into the model;
    the optimizer state (and the loss scale) start again as a fresh build's."""
    table = _weight_table(model, task)
    weights = canonical.check(task, weights, getattr(model.module, "spec", None), who=f"{NAME}.set_weights")
    variables = _flat_variables(model)
    for name, path, (_, from_canonical) in table:
        value = np.ascontiguousarray(from_canonical(weights[name]))
        if value.shape != tuple(variables[path].shape):
            raise ValueError(f"{NAME}.set_weights: {name} {weights[name].shape} becomes {value.shape}, "
                             f"but {'/'.join(path)} is {tuple(variables[path].shape)}")
        variables[path] = value
    collections = flax.traverse_util.unflatten_dict(variables)
    model.params = jax.device_put(collections["params"], model.dev)
    if model.batch_stats is not None:
        model.batch_stats = jax.device_put(collections["batch_stats"], model.dev)
    if model.tx is not None:  # Optax's slots (momentum, Adam's moments and count) from zero
        model.opt_state = jax.device_put(model.tx.init(model.params), model.dev)
        if model.loss_scale is not None:
            model.loss_scale = jax.device_put(_initial_loss_scale(), model.dev)


def peak_device_memory(dev) -> dict | None:
    """The peak of XLA's GPU allocator; JAX cannot reset it, so it counts from the process's
    start. None on a CPU."""
    if dev.platform != "gpu":
        return None
    stats = dev.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return {"peak_bytes": None if peak is None else int(peak),
            "counter": "jax.Device.memory_stats()['peak_bytes_in_use']", "scope": "since the process began"}


def _flat_variables(model: Model) -> dict:
    """{(collection, module, ..., leaf): array} of the model's params and batch_stats."""
    variables = {"params": model.params}
    if model.batch_stats is not None:
        variables["batch_stats"] = model.batch_stats
    return dict(flax.traverse_util.flatten_dict(variables))


def _weight_table(model: Model, task: str) -> list:
    tables = {"cnn": _cnn_table, "rnn": _rnn_table, "resnet50": _resnet50_table}
    if task not in tables:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(tables)}")
    return tables[task](model)


def _initial_loss_scale() -> dict:
    return {"scale": jnp.asarray(LOSS_SCALE_INITIAL, jnp.float32), "good_steps": jnp.zeros((), jnp.int32)}


def _next_loss_scale(state: dict, finite) -> dict:
    grow = finite & (state["good_steps"] + 1 >= LOSS_SCALE_PERIOD)
    scale = jnp.where(finite, jnp.where(grow, state["scale"] * LOSS_SCALE_FACTOR, state["scale"]),
                      state["scale"] / LOSS_SCALE_FACTOR)
    good_steps = jnp.where(finite & ~grow, state["good_steps"] + 1, 0).astype(jnp.int32)
    return {"scale": jnp.clip(scale, LOSS_SCALE_MIN, LOSS_SCALE_MAX), "good_steps": good_steps}


def _make_train_step(module, tx, dev, loss_scaling: bool, donate: bool):
    donate_argnums = (0, 1) if donate else ()  # params, opt_state: their buffers hold the new ones

    def loss_fn(params, x, y, key):
        logits = module.apply({"params": params}, x, train=True, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()

    def step(params, opt_state, x, y, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

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

    return jax.jit(scaled_step if loss_scaling else step, donate_argnums=donate_argnums)


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


def _cnn_table(model: Model) -> list:
    """Flax's auto-names: Conv_0..Conv_3, Dense_0 (fc1), Dense_1 (fc2). fc1's kernel rows follow
    the flatten of NHWC (h, w, c); canonical fc1.weight's columns are (c, h, w)."""
    s = model.module.spec
    rows = []
    for i in range(4):
        rows += [(f"conv{i + 1}.weight", ("params", f"Conv_{i}", "kernel"), _CONV),
                 (f"conv{i + 1}.bias", ("params", f"Conv_{i}", "bias"), _SAME)]
    channels, height, width = s.conv_channels[-1], s.image_shape[1] // 4, s.image_shape[2] // 4
    units = s.dense_units
    fc1 = (lambda k: k.reshape(height, width, channels, units).transpose(3, 2, 0, 1).reshape(units, -1),
           lambda w: w.reshape(units, channels, height, width).transpose(2, 3, 1, 0).reshape(-1, units))
    rows += [("fc1.weight", ("params", "Dense_0", "kernel"), fc1),
             ("fc1.bias", ("params", "Dense_0", "bias"), _SAME),
             ("fc2.weight", ("params", "Dense_1", "kernel"), _DENSE),
             ("fc2.bias", ("params", "Dense_1", "bias"), _SAME)]
    return rows


def build_cnn(spec, dev) -> Model:
    module = CNN(spec, dtype=_PRECISION["dtype"])
    channels, height, width = spec.image_shape
    example = jnp.zeros((1, height, width, channels))
    variables = module.init(jax.random.PRNGKey(_SEED), example)
    return Model(module, variables, dev, optax.sgd(spec.lr, momentum=spec.momentum), _SEED, example,
                 _MODE["name"], "cnn")


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


def _rnn_table(model: Model) -> list:
    """Embed_0, GRU_0 (its "input" Dense: kernel (E, 3H) and the input biases; hidden_kernel
    (H, 3H), hidden_bias), Dense_0. Both kernels' columns are the gates (r, z, n), the order
    GRU.step splits them in: canonical weight_ih/weight_hh are their transposes."""
    return [("embedding.weight", ("params", "Embed_0", "embedding"), _SAME),
            ("gru.weight_ih", ("params", "GRU_0", "input", "kernel"), _DENSE),
            ("gru.weight_hh", ("params", "GRU_0", "hidden_kernel"), _DENSE),
            ("gru.bias_ih", ("params", "GRU_0", "input", "bias"), _SAME),
            ("gru.bias_hh", ("params", "GRU_0", "hidden_bias"), _SAME),
            ("fc.weight", ("params", "Dense_0", "kernel"), _DENSE),
            ("fc.bias", ("params", "Dense_0", "bias"), _SAME)]


def build_rnn(spec, dev) -> Model:
    module = GRUClassifier(spec, dtype=_PRECISION["dtype"])
    example = jnp.zeros((1, spec.seq_len), jnp.int32)
    variables = module.init(jax.random.PRNGKey(_SEED), example)
    tx = optax.adam(spec.lr, b1=spec.beta1, b2=spec.beta2, eps=spec.epsilon)
    return Model(module, variables, dev, tx, _SEED, example, _MODE["name"], "rnn")


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


def _resnet50_table(model: Model) -> list:
    """torchvision's names from this file's structure: the stem Conv_0/BatchNorm_0, then
    Bottleneck_0..15 stage by stage, each with Conv_0..2/BatchNorm_0..2 (1x1, 3x3, 1x1) and, in
    a stage's first block, the projection Conv_3/BatchNorm_3 (torchvision's downsample.0/.1)."""
    def bn(name, *path):
        return [(f"{name}.weight", ("params", *path, "scale"), _SAME),
                (f"{name}.bias", ("params", *path, "bias"), _SAME),
                (f"{name}.running_mean", ("batch_stats", *path, "mean"), _SAME),
                (f"{name}.running_var", ("batch_stats", *path, "var"), _SAME)]

    rows = [("conv1.weight", ("params", "Conv_0", "kernel"), _CONV)] + bn("bn1", "BatchNorm_0")
    index = 0
    for stage, blocks in enumerate(canonical.RESNET_BLOCKS, 1):
        for b in range(blocks):
            prefix, block = f"layer{stage}.{b}", f"Bottleneck_{index}"
            for i in range(3):
                rows.append((f"{prefix}.conv{i + 1}.weight", ("params", block, f"Conv_{i}", "kernel"), _CONV))
                rows += bn(f"{prefix}.bn{i + 1}", block, f"BatchNorm_{i}")
            if b == 0:
                rows.append((f"{prefix}.downsample.0.weight", ("params", block, "Conv_3", "kernel"), _CONV))
                rows += bn(f"{prefix}.downsample.1", block, "BatchNorm_3")
            index += 1
    return rows


def build_resnet50(spec, dev) -> Model:
    module = ResNet50(dtype=_PRECISION["dtype"])
    channels, height, width = spec.image_shape
    example = jnp.zeros((1, height, width, channels))
    variables = module.init(jax.random.PRNGKey(_SEED), example)
    return Model(module, variables, dev, seed=_SEED, example=example, mode=_MODE["name"], task="resnet50")


def extract_features(model: Model, x: np.ndarray) -> np.ndarray:
    variables = {"params": model.params, "batch_stats": model.batch_stats}  # running statistics
    return np.asarray(model.apply(variables, jax.device_put(x, model.dev)))  # float32
