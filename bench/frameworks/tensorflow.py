"""TensorFlow 2 in its own idiom: the three tasks of TASKS.md as tf.Module models, tf.nn ops and a
tf.GradientTape training step inside tf.function.

The sections of bench/frameworks/pytorch.py, with its names:
  1. framework and device: init_device, set_seed, synchronize, versions, data_format,
     count_params, conventions, numerics, get_weights, set_weights, peak_device_memory
  2. CNN (build_cnn, train_cnn_epoch, predict_cnn)  3. RNN (build_rnn, train_rnn_epoch,
     predict_rnn)  4. ResNet-50 (build_resnet50, extract_features)

Since TensorFlow 2.16 tf.keras is Keras 3, whose row is keras-tensorflow (keras_multi.py). This
row is TensorFlow below Keras, as the original benchmark's TensorFlow notebooks were lower-level
than its Keras ones: the CNN and the GRU classifier are tf.Module subclasses holding tf.Variables
and computed with tf.nn ops (conv2d, bias_add, max_pool2d, stateless dropout, matmul); the GRU is
the cuDNN formulation, tf.raw_ops.CudnnRNNV3 (cuDNN's own kernel) on a GPU and a tf.scan over the
time steps on the CPU; the loss is tf.nn.sparse_softmax_cross_entropy_with_logits in float32;
each training step is one call of a tf.function (a tf.GradientTape, the gradients, the update);
the optimizers are written with tf ops in PyTorch's formulas (SGDMomentum, Adam below), the
reference `python -m bench equivalence` compares against. TensorFlow has no ResNet-50 outside
Keras applications: that task keeps tf.keras.applications.ResNet50, called inside a tf.function.

XLA, a stated convention (JIT_COMPILE): every tf.function here is XLA-compiled
(jit_compile=True) on a GPU, as Keras's jit_compile="auto" does there, except the GRU's step,
whose cuDNN op has no XLA kernel (a graph, as Keras's cuDNN GRU is too). On the CPU none is:
TensorFlow's graph (Grappler, oneDNN kernels) was measured faster there than XLA's CPU backend
for all three tasks (this project's 2-core x86 CPU, shared, so ranges: fp32 CNN training step
0.25-0.35 s graph against 0.8-1.4 s XLA and ResNet-50 batch of 32 2.6 s against 2.9 s, amp-bf16
ResNet-50 1.3-1.7 s against 2.3-2.7 s, each interleaved in one process; quick GRU epochs after
the first 1.4-1.8 s against 2.7-3.1 s), and Keras's jit_compile="auto" leaves XLA off on a
CPU-only machine too (keras/src/trainers/trainer.py, _resolve_auto_jit_compile).

Mode (bench/modes.py, init_device's mode): reference is the code described above; tuned adds what
TensorFlow's own performance documentation recommends for these models and this device beyond it.
XLA (tf.function(jit_compile=True), https://www.tensorflow.org/xla) is the reference's already on a
GPU, but for the GRU's cuDNN step (CudnnRNNV3 has no XLA kernel). On the CPU it was measured again
for tuned, per task (XLA_CPU_LEFT_OFF: steady epochs 3.4x slower for the CNN, 1.9x for the GRU, no
gain for ResNet-50, first epochs or batches 2.7-3.5x longer), and is left off there: tuned runs the
reference code on the CPU and conventions["mode"]["not_applied"] gives the figures.
TF_GPU_THREAD_MODE=gpu_private (https://www.tensorflow.org/guide/gpu_performance_analysis) is left
off: the guide ties it to a profile showing kernel launches delayed by a busy host, and TensorFlow
reads it once, when it creates the GPU device, so a later init_device could not take it back; not
measured on a GPU (none is lent to this project). Not the mode's business: mixed precision (the
precision axis), tf.data (the harness owns the batches).

Canonical weights (bench/canonical.py): the variables here are TensorFlow's layouts: conv
kernels HWIO (tf.nn.conv2d's filter), dense kernels (in, out) (x @ W), the CNN's first dense
kernel's rows in the order the model flattens its last feature map (h, w, c in NHWC, c, h, w in
NCHW), the GRU's kernel (E, 3H), recurrent kernel (H, 3H) and two bias vectors (3H,), gate
blocks in cuDNN's order (r, z, n). get_weights/set_weights transpose and permute.

Precision (bench/precisions.py), set in init_device:
  - TF32: tf.config.experimental.enable_tensor_float_32_execution, on in tf32 only (the amp
    modes keep it off: they differ from fp32 by the half compute alone).
  - amp-fp16 / amp-bf16 in the tf.Module models: the variables stay float32 (the optimizer's
    master weights); the forward pass casts each variable (tf.cast, inside the step, so the
    gradient flows back to the float32 variable) and the input to the compute dtype, computes
    in it, and casts the logits to float32 before the loss. amp-fp16 (GPU only) scales the loss
    dynamically with DynamicLossScale below (TensorFlow's LossScaleOptimizer defaults); the loss
    handed back is the unscaled one.
  - ResNet-50 (a Keras model): Keras's own mechanism, the global dtype policy
    (tf.keras.mixed_precision.set_global_policy: "float32", "mixed_float16", "mixed_bfloat16")
    set before it is built; its variables stay float32, its layers compute in the half type.
"""
from __future__ import annotations

import math
import os
import re

import numpy as np
import tensorflow as tf

from bench import modes, precisions
from bench.errors import DeviceUnavailable, UnsupportedPrecision

NAME = "tensorflow"

COMPUTE = {"fp32": tf.float32, "tf32": tf.float32, "amp-fp16": tf.float16, "amp-bf16": tf.bfloat16}
KERAS_POLICY = {"fp32": "float32", "tf32": "float32", "amp-fp16": "mixed_float16",
                "amp-bf16": "mixed_bfloat16"}  # ResNet-50 only: the one Keras model here
# jit_compile of every tf.function, per device (the module docstring says why); the GRU's cuDNN
# step on a GPU is a graph whatever this says.
JIT_COMPILE = {"cpu": False, "gpu": True}
# The tuned mode's XLA on the CPU, per task: measured slower than the graph (CNN, GRU) or no faster
# (ResNet-50) on this CPU, so left off (XLA_CPU_LEFT_OFF).
TUNED_CPU_XLA = {"cnn": False, "rnn": False, "resnet50": False}
# What init_device and set_seed set, for build_*, conventions and numerics.
_run = {"precision": precisions.DEFAULT, "seed": 0, "mode": modes.DEFAULT}


# ---------------------------------------------------------------- 1. framework and device

def init_device(device: str, precision: str, mode: str = modes.DEFAULT) -> str:
    modes.check_name(mode)
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise DeviceUnavailable(
            f"no GPU found: tf.config.list_physical_devices('GPU') is empty (tensorflow "
            f"{tf.__version__}, built with CUDA "
            f"{tf.sysconfig.get_build_info().get('cuda_version', 'none')}); "
            "check the driver and nvidia-smi, or run with --device cpu")
    capability = None
    if device == "gpu":
        for gpu in gpus:  # before anything initialises the GPUs
            tf.config.experimental.set_memory_growth(gpu, True)
        found = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        capability = tuple(int(v) for v in found) if found else None
    reason = precisions.skip_reason(precision, device, capability, NAME)
    if reason:
        raise UnsupportedPrecision(reason)
    if device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")  # --device cpu means the CPU alone
    # TF32 off explicitly but in tf32 (the amp modes too: they differ from fp32 by the half compute).
    tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
    # ResNet-50 is Keras applications': its data format and dtype policy are Keras's settings.
    tf.keras.backend.set_image_data_format("channels_first" if device == "gpu" else "channels_last")
    tf.keras.mixed_precision.set_global_policy(KERAS_POLICY[precision])
    _run["precision"], _run["mode"] = precision, mode
    return device


def set_seed(seed: int) -> None:
    """build_cnn and build_rnn draw their weights from a tf.random.Generator made from this seed
    (Philox, on the CPU: the same weights on every device and in every precision); ResNet-50's
    Keras initializers draw from Keras's seed generator, seeded by keras.utils.set_random_seed
    (which seeds TensorFlow's global generator, NumPy's and Python's too)."""
    _run["seed"] = int(seed)
    tf.keras.utils.set_random_seed(seed)


def synchronize(dev: str) -> None:
    if dev == "gpu":
        tf.test.experimental.sync_devices()


def versions(dev: str) -> dict:
    build = tf.sysconfig.get_build_info()
    gpu = None
    if dev == "gpu":
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        gpu = details.get("device_name")
    return {"framework_version": tf.__version__, "cuda": build.get("cuda_version"),
            "cudnn": build.get("cudnn_version"), "gpu": gpu}


def data_format(dev: str) -> str:
    return "NCHW" if dev == "gpu" else "NHWC"  # NCHW on NVIDIA GPUs; TF's CPU kernels want NHWC


def count_params(model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


EPOCH_TIMING = ("the harness's clock around each train_<task>_epoch call (one Python loop over "
                "the harness's batches, one tf.function call per step), device synchronised; the "
                "steps' losses summed on the device and read once, at the epoch's end")


def _jit(task: str, dev: str) -> bool:
    """jit_compile of the task's tf.functions in this run's mode (the GRU's cuDNN step aside)."""
    tuned_cpu = _run["mode"] == "tuned" and dev == "cpu" and TUNED_CPU_XLA[task]
    return JIT_COMPILE[dev] or tuned_cpu


def _xla(dev: str, task: str = "cnn") -> str:
    return "XLA (jit_compile=True)" if _jit(task, dev) else "TensorFlow graph (jit_compile=False)"


# XLA on this project's 2-core CPU, 2026-12-01: one process, reference and tuned alternating, fresh
# models, 3 rounds, medians; 5-batch epochs (2 epochs) and quick ResNet-50, under a load of 15-20
# from other work on the 2 cores (absolute times inflated; the ratios are the figures).
XLA_CPU_LEFT_OFF = {
    "cnn": "measured slower: steady epoch 72.0 s against the graph's 21.4 s (tuned / reference 3.4; "
           "per round 3.2, 3.1, 3.4), first epoch 120.6 s against 34.8 s (2026-12-01, this shared 2-core CPU)",
    "rnn": "measured slower: steady epoch 10.6 s against the graph's 5.7 s (tuned / reference 1.9; per "
           "round 1.4, 2.9, 1.9), first epoch 41.1 s against 15.3 s (2026-12-01, this shared 2-core CPU)",
    "resnet50": "no gain measured: steady batch 28.4 s against the graph's 29.2 s (tuned / reference 0.97; "
                "per round 0.86, 1.15, 0.97: within this shared CPU's noise), first batch 86.8 s against "
                "28.9 s (2026-12-01, 2-core CPU); the docstring's earlier interleaved figures had XLA slower",
}
XLA_DOC = "https://www.tensorflow.org/xla (tf.function(jit_compile=True))"
GPU_THREAD_MODE = ("TF_GPU_THREAD_MODE=gpu_private (tensorflow.org/guide/gpu_performance_analysis)")


def _mode_state(task: str, dev: str) -> dict:
    """conventions["mode"]: what the tuned mode turns on beyond the reference, and what not."""
    mode = _run["mode"]
    if mode == "reference":
        return modes.state(mode)
    switches, not_applied = [], {}
    xla = f"XLA: tf.function(jit_compile=True) of the {'feature extraction' if task == 'resnet50' else 'training step and prediction'}"
    if dev == "cpu":
        if TUNED_CPU_XLA[task]:
            switches.append(f"{xla} on the CPU ({XLA_DOC})")
        else:
            not_applied[f"{xla} on the CPU"] = (
                f"{XLA_CPU_LEFT_OFF[task]}; the reference's graph (Grappler, oneDNN kernels) stays")
    elif task == "rnn":
        not_applied[f"{xla} (the GRU's step)"] = (
            "tf.raw_ops.CudnnRNNV3, the cuDNN GRU, has no XLA kernel: the step stays a graph, as in "
            "the reference (XLA compiles the CNN and ResNet-50 there already)")
    not_applied[GPU_THREAD_MODE] = (
        ("a GPU switch, and this run is on the CPU" if dev == "cpu" else
         "not set: the guide gives it for a profile showing kernel launches delayed by a busy host, not "
         "measured here (no GPU lent to this project); and it is read once, when TensorFlow creates "
         "the GPU device, so it could not follow the mode of a later init_device in the process"))
    return modes.state(mode, switches=switches, not_applied=not_applied)


def conventions(task: str, dev: str) -> dict:
    layout = data_format(dev)
    if task == "cnn":
        return {"layout": layout, "init": "glorot_uniform kernels, zero biases (tf.random.Generator)",
                "optimizer": SGDMomentum.FORMULA,
                "dropout": "tf.nn.experimental.stateless_dropout, seeds from the model's tf.random.Generator",
                "fast_path": [f"tf.function training step (tf.GradientTape): {_xla(dev, task)}",
                              f"tf.function prediction: {_xla(dev, task)}"],
                "epoch_timing": EPOCH_TIMING, "mode": _mode_state(task, dev)}
    if task == "rnn":
        cudnn = dev == "gpu"
        step = "TensorFlow graph (jit_compile=False: CudnnRNNV3 has no XLA kernel)" if cudnn else _xla(dev, task)
        return {"gru_bias": "two vectors per gate (cuDNN layout)", "gru_biases": 600,
                "gru_gates": "(r, z, n), n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) (cuDNN formulation)",
                "gru_kernel": ("cuDNN (tf.raw_ops.CudnnRNNV3, rnn_mode='gru')" if cudnn
                               else "tf.scan over the time steps (one recurrent matmul a step; the input "
                                    "projections of all steps in one matmul before the loop)"),
                "init": "glorot_uniform kernel, orthogonal recurrent kernel, zero biases, "
                        "embedding uniform(-0.05, 0.05) (Keras's GRU and Embedding defaults)",
                "optimizer": Adam.FORMULA, "adam_epsilon": "sqrt(v_hat) + eps (Kingma & Ba Algorithm 1)",
                # Trainable._train_step makes the embedding's tf.IndexedSlices dense (the occurrences
                # of a token summed) before Adam squares it
                "adam_embedding_v": "square of the row's gradient (dense)",
                "fast_path": [f"tf.function training step (tf.GradientTape): {step}"]
                             + (["cuDNN GRU kernel"] if cudnn else []),
                "epoch_timing": EPOCH_TIMING, "mode": _mode_state(task, dev)}
    # keras/src/applications/resnet.py, residual_block_v1: the stride of a stage's first block on
    # its first 1x1 conv (_1_conv, and the _0_conv shortcut), padding="SAME" 3x3 convs, every
    # BatchNormalization epsilon=1.001e-5; pool1 is ZeroPadding2D(1) then a 3x3/2 max pool of the
    # ReLU's output (>= 0), so the zero padding is the canonical -inf padding 1.
    return {"resnet_conv_bias": True, "resnet_stride": "1x1 (original paper, v1)", "bn_epsilon": 1.001e-5,
            "pool1": "max 3x3, stride 2, padding 1",
            "weights": "random", "layout": layout,
            "source": "tf.keras.applications.ResNet50(weights=None, include_top=False, pooling='avg')",
            "fast_path": [f"model(x, training=False) inside a tf.function: {_xla(dev, task)}"],
            "mode": _mode_state(task, dev)}


def _dtype_name(dtypes) -> str:
    """One dtype's name, or mixed(a, b) when the values do not agree."""
    names = sorted({tf.as_dtype(d).name for d in dtypes})
    return names[0] if len(names) == 1 else "mixed(" + ", ".join(names) + ")"


def numerics(task: str, model, dev: str) -> dict:
    """What is set for this model, read back from TensorFlow: the TF32 switch, the dtype the
    network's hidden activations come out in (a probe through its forward pass; ResNet-50: its
    Keras layers' compute dtype), the trainable variables' dtype (the master weights) and the
    loss scale the training step carries."""
    precision = _run["precision"]
    tf32_switch = bool(tf.config.experimental.tensor_float_32_execution_enabled())
    variables = _dtype_name(v.dtype for v in model.trainable_variables)
    switches = {"tf.config.experimental.tensor_float_32_execution_enabled()": tf32_switch,
                precisions.TF32_OVERRIDE_VARIABLE: os.environ.get(precisions.TF32_OVERRIDE_VARIABLE),
                "trainable variables dtype": variables}
    read_back = ["tf32", "compute_dtype", "param_dtype"]
    if task == "resnet50":
        convs = [layer for layer in model.net.layers if isinstance(layer, tf.keras.layers.Conv2D)]
        compute = _dtype_name(layer.compute_dtype for layer in convs)
        switches["tf.keras.mixed_precision.global_policy()"] = tf.keras.mixed_precision.global_policy().name
        switches["model.dtype_policy"] = model.net.dtype_policy.name
        switches["Conv2D layers' compute_dtype"] = compute
        mechanism = [f"tf.keras.mixed_precision.set_global_policy({KERAS_POLICY[precision]!r}) before "
                     "the Keras ResNet50 is built (float32 variables; BatchNormalization computes in "
                     "float32, Keras's rule); features cast to float32", "inference only: no loss to scale"]
        loss_scaling, loss_scaler = precisions.LOSS_SCALING[precision], None
    else:
        compute = model.net.features(model.net.probe(), training=False).dtype.name
        switches["hidden activations dtype (probe of the forward pass)"] = compute
        switches["model.net.compute_dtype"] = model.net.compute_dtype.name
        read_back.append("loss_scaling")
        scaled = isinstance(model.loss_scale, DynamicLossScale)
        loss_scaling = "dynamic" if scaled else "none"
        loss_scaler = f"{__name__}.DynamicLossScale" if scaled else None
        switches["model.optimizer"] = type(model.optimizer).__name__
        if compute == "float32":
            mechanism = ["float32 variables and compute"]
        else:
            mechanism = [f"float32 tf.Variables (master weights) cast to {compute} by tf.cast inside the "
                         f"tf.function step; activations in {compute}; logits cast to float32 before "
                         "tf.nn.sparse_softmax_cross_entropy_with_logits"]
        if scaled:
            switches["DynamicLossScale.scale"] = float(model.loss_scale.scale.numpy())
            switches["DynamicLossScale.growth_steps"] = model.loss_scale.growth_steps
            mechanism.append(DynamicLossScale.MECHANISM)
    mechanism.append(f"tf.config.experimental.enable_tensor_float_32_execution({precision == 'tf32'})")
    return precisions.state(
        precision, tf32=tf32_switch and dev == "gpu",  # a CPU has no TF32 whatever the switch says
        compute_dtype=compute, param_dtype=variables, loss_scaling=loss_scaling, loss_scaler=loss_scaler,
        mechanism="; ".join(mechanism), read_back=read_back, switches=switches)


def get_weights(model, task: str) -> dict:
    """The model's weights in bench/canonical.py's layout of task, as float32 NumPy arrays."""
    return {"cnn": _cnn_weights, "rnn": _rnn_weights, "resnet50": _resnet50_weights}[task](model)


def set_weights(model, task: str, weights: dict) -> None:
    """Load canonical weights into the model (transposes and permutations only, so get_weights
    gives them back bit for bit); the optimizer's slots and step count and the loss scale start
    afresh."""
    load = {"cnn": _set_cnn_weights, "rnn": _set_rnn_weights, "resnet50": _set_resnet50_weights}[task]
    load(model, weights)
    if getattr(model, "optimizer", None) is not None:
        model.optimizer.reset()
    if getattr(model, "loss_scale", None) is not None:
        model.loss_scale.reset()


def peak_device_memory(dev: str) -> dict | None:
    """The peak of TensorFlow's GPU allocator since the last call (reset on each call); None on a CPU."""
    if dev != "gpu":
        return None
    peak = int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    tf.config.experimental.reset_memory_stats("GPU:0")
    return {"peak_bytes": peak, "counter": "tf.config.experimental.get_memory_info('GPU:0')['peak']",
            "scope": "since the last call"}


def _load(variable: tf.Variable, value) -> None:
    value = np.asarray(value, dtype=np.float32)
    if tuple(value.shape) != tuple(variable.shape):
        raise ValueError(f"{NAME} set_weights: {variable.name} is {tuple(variable.shape)}, "
                         f"the weights give {tuple(value.shape)}")
    variable.assign(value)


# Initial weights: the distributions Keras's defaults draw (the previous tf.keras file's), drawn
# here with tf.random ops from a tf.random.Generator on the CPU.

def _generator() -> tf.random.Generator:
    with tf.device("CPU:0"):
        return tf.random.Generator.from_seed(_run["seed"], alg="philox")


def _glorot_uniform(rng: tf.random.Generator, shape) -> tf.Tensor:
    """U(-a, a), a = sqrt(6 / (fan_in + fan_out)); a conv kernel's fans count its window."""
    window = int(np.prod(shape[:-2]))
    limit = math.sqrt(6.0 / ((shape[-2] + shape[-1]) * window))
    with tf.device("CPU:0"):
        return rng.uniform(shape, -limit, limit)


def _orthogonal(rng: tf.random.Generator, shape) -> tf.Tensor:
    """Keras's Orthogonal (gain 1): the QR decomposition of a normal matrix, sign-corrected."""
    rows, cols = shape
    with tf.device("CPU:0"):
        q, r = tf.linalg.qr(rng.normal((max(rows, cols), min(rows, cols))))
        q *= tf.sign(tf.linalg.diag_part(r))
        return tf.transpose(q) if rows < cols else q


# Training: optimizers and loss scaling written with tf ops (tf.Modules holding their slots), and
# the tf.function training step that ties them to a network.

class SGDMomentum(tf.Module):
    FORMULA = "SGD with classic momentum, torch.optim.SGD's form: v = momentum * v + g; w -= lr * v"

    def __init__(self, variables, lr: float, momentum: float):
        super().__init__(name="sgd_momentum")
        self.lr, self.momentum = lr, momentum
        self.velocity = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]

    def apply(self, grads, variables) -> None:
        for g, w, v in zip(grads, variables, self.velocity):
            velocity = self.momentum * v + g
            v.assign(velocity)
            w.assign_sub(self.lr * velocity)

    def reset(self) -> None:
        for v in self.velocity:
            v.assign(tf.zeros_like(v))


class Adam(tf.Module):
    FORMULA = ("Adam, torch.optim.Adam's form: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, "
               "w -= lr * m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t) "
               "(epsilon outside the bias-corrected root, not Keras's epsilon-hat form); dense updates, "
               "the embedding's included")

    def __init__(self, variables, lr: float, beta1: float, beta2: float, epsilon: float):
        super().__init__(name="adam")
        self.lr, self.beta1, self.beta2, self.epsilon = lr, beta1, beta2, epsilon
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]

    def apply(self, grads, variables) -> None:
        t = tf.cast(self.step.assign_add(1), tf.float32)
        step_size = self.lr / (1.0 - tf.pow(self.beta1, t))
        root_correction = tf.sqrt(1.0 - tf.pow(self.beta2, t))
        for g, w, m, v in zip(grads, variables, self.m, self.v):
            first = self.beta1 * m + (1.0 - self.beta1) * g
            second = self.beta2 * v + (1.0 - self.beta2) * tf.square(g)
            m.assign(first)
            v.assign(second)
            w.assign_sub(step_size * first / (tf.sqrt(second) / root_correction + self.epsilon))

    def reset(self) -> None:
        self.step.assign(0)
        for slot in self.m + self.v:
            slot.assign(tf.zeros_like(slot))


class DynamicLossScale(tf.Module):
    """amp-fp16's dynamic loss scaling, with tf.keras.mixed_precision.LossScaleOptimizer's
    defaults: the loss is multiplied by the scale before the gradients are taken and the gradients
    divided by it; a step whose gradients are all finite is applied and counted, and 2,000 such
    steps in a row double the scale; a step with a non-finite gradient is skipped and halves it
    (not below 1)."""
    MECHANISM = ("dynamic loss scaling (DynamicLossScale: initial scale 2**15, doubled after 2,000 "
                 "finite steps in a row, halved and the step skipped on a non-finite gradient); the "
                 "loss returned is the unscaled loss")

    def __init__(self, initial_scale: float = 2.0 ** 15, growth_steps: int = 2000):
        super().__init__(name="dynamic_loss_scale")
        self.initial_scale, self.growth_steps = initial_scale, growth_steps
        self.scale = tf.Variable(initial_scale, dtype=tf.float32, trainable=False)
        self.finite_steps = tf.Variable(0, dtype=tf.int64, trainable=False)

    def apply(self, optimizer, scaled_grads, variables) -> tf.Tensor:
        grads = [g / self.scale for g in scaled_grads]
        finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads]))

        def applied():
            optimizer.apply(grads, variables)
            grow = self.finite_steps + 1 >= self.growth_steps
            self.scale.assign(tf.where(grow, self.scale * 2.0, self.scale))
            self.finite_steps.assign(tf.where(grow, tf.constant(0, tf.int64), self.finite_steps + 1))
            return tf.constant(True)

        def skipped():
            self.scale.assign(tf.maximum(self.scale / 2.0, 1.0))
            self.finite_steps.assign(0)
            return tf.constant(False)

        return tf.cond(finite, applied, skipped)

    def reset(self) -> None:
        self.scale.assign(self.initial_scale)
        self.finite_steps.assign(0)


class Trainable(tf.Module):
    """A network, its optimizer, the loss scale of amp-fp16 and the compiled functions that use
    them: train_step(x, y) -> the step's unscaled loss, logits(x) -> float32 logits."""

    def __init__(self, net: tf.Module, optimizer: tf.Module, jit_compile: bool):
        super().__init__(name=f"{net.name}_trainable")
        self.net, self.optimizer = net, optimizer
        self.loss_scale = DynamicLossScale() if _run["precision"] == "amp-fp16" else None
        self.train_step = tf.function(self._train_step, jit_compile=jit_compile)
        self.logits = tf.function(lambda x: self.net(x, training=False), jit_compile=jit_compile)

    @property
    def trainable_variables(self):
        return self.net.trainable_variables

    def _train_step(self, x, y):
        variables = self.net.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.net(x, training=True)  # float32
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.cast(y, tf.int32), logits=logits))
            target = loss if self.loss_scale is None else loss * self.loss_scale.scale
        # The embedding's gradient comes as tf.IndexedSlices: made dense, as PyTorch's is.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(target, variables)]
        if self.loss_scale is None:
            self.optimizer.apply(grads, variables)
        else:
            self.loss_scale.apply(self.optimizer, grads, variables)
        return loss


def _dense(x, kernel: tf.Variable, bias: tf.Variable):
    """x @ kernel + bias, the float32 variables cast to x's dtype (the compute dtype)."""
    return tf.matmul(x, tf.cast(kernel, x.dtype)) + tf.cast(bias, x.dtype)


def _train_epoch(model: Trainable, batches) -> float:
    total = tf.zeros([], tf.float32)
    for x, y in batches:
        total += model.train_step(tf.convert_to_tensor(x), tf.convert_to_tensor(y))
    return float(total.numpy()) / len(batches)  # the one read of the device per epoch


def _predict(model: Trainable, x: np.ndarray, batch_size: int) -> np.ndarray:
    logits = [model.logits(tf.convert_to_tensor(x[start:start + batch_size])).numpy()
              for start in range(0, len(x), batch_size)]
    return np.concatenate(logits).astype(np.float32, copy=False)


# ---------------------------------------------------------------- 2. CNN

class ConvNet(tf.Module):
    """TASKS.md's CNN: four 3x3 'same' convolutions (a 2x2 max pool after the second and the
    fourth, then ReLU and dropout), dense 512 with ReLU and dropout, dense 10 (the logits)."""

    def __init__(self, spec, layout: str, rng: tf.random.Generator):
        super().__init__(name="cnn")
        self.layout, self.compute_dtype = layout, COMPUTE[_run["precision"]]
        self.image_shape, self.rates = spec.image_shape, (spec.conv_dropout, spec.dense_dropout)
        k, widths = spec.kernel_size, (spec.image_shape[0],) + tuple(spec.conv_channels)
        shapes = {f"conv{i}": (k, k, widths[i - 1], widths[i]) for i in range(1, 5)}  # HWIO
        shapes["fc1"] = (spec.flat_features, spec.dense_units)  # rows in this layout's flatten order
        shapes["fc2"] = (spec.dense_units, spec.classes)
        self.kernel = {name: tf.Variable(_glorot_uniform(rng, shape), name=f"{name}/kernel")
                       for name, shape in shapes.items()}
        self.bias = {name: tf.Variable(tf.zeros([shape[-1]]), name=f"{name}/bias")
                     for name, shape in shapes.items()}
        self.noise = rng.split(1)[0]  # outside the CPU scope: on the device the step runs on

    def probe(self) -> tf.Tensor:
        c, h, w = self.image_shape
        return tf.zeros((1, c, h, w) if self.layout == "NCHW" else (1, h, w, c))

    def _dropout(self, x, rate: float, training: bool):
        if not training or rate == 0.0:
            return x
        return tf.nn.experimental.stateless_dropout(x, rate, seed=self.noise.make_seeds(1)[:, 0])

    def features(self, x, training: bool):
        """The dense 512's activations after ReLU and dropout, in the compute dtype."""
        dtype, layout = self.compute_dtype, self.layout
        x = tf.cast(x, dtype)
        for i in range(1, 5):
            name = f"conv{i}"
            x = tf.nn.conv2d(x, tf.cast(self.kernel[name], dtype), 1, "SAME", data_format=layout)
            x = tf.nn.bias_add(x, tf.cast(self.bias[name], dtype), data_format=layout)
            if i % 2 == 0:
                x = tf.nn.max_pool2d(x, 2, 2, "VALID", data_format=layout)
            x = tf.nn.relu(x)  # after the pool: the same values, fewer of them
            if i % 2 == 0:
                x = self._dropout(x, self.rates[0], training)
        x = tf.reshape(x, (tf.shape(x)[0], -1))
        x = tf.nn.relu(_dense(x, self.kernel["fc1"], self.bias["fc1"]))
        return self._dropout(x, self.rates[1], training)

    def __call__(self, x, training: bool = False):
        return tf.cast(_dense(self.features(x, training), self.kernel["fc2"], self.bias["fc2"]), tf.float32)

    def flatten_rows(self) -> np.ndarray:
        """rows[j]: the row of fc1's kernel that meets the canonical (c, h, w) feature j."""
        c, h, w = self.kernel["conv4"].shape[-1], self.image_shape[1] // 4, self.image_shape[2] // 4
        if self.layout == "NCHW":
            return np.arange(c * h * w)
        return np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)  # (h, w, c) rows


def build_cnn(spec, dev: str) -> Trainable:
    net = ConvNet(spec, data_format(dev), _generator())
    optimizer = SGDMomentum(net.trainable_variables, spec.lr, spec.momentum)
    return Trainable(net, optimizer, _jit("cnn", dev))


def train_cnn_epoch(model: Trainable, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_cnn(model: Trainable, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


def _cnn_weights(model: Trainable) -> dict:
    net, out = model.net, {}
    for name, kernel in net.kernel.items():
        value = kernel.numpy()
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif name == "fc1":
            value = value[net.flatten_rows()].T  # (in, out), rows in the flatten order -> (out, c*h*w)
        else:
            value = value.T  # (in, out) -> (out, in)
        out[f"{name}.weight"] = value
        out[f"{name}.bias"] = net.bias[name].numpy()
    return out


def _set_cnn_weights(model: Trainable, weights: dict) -> None:
    net = model.net
    for name, kernel in net.kernel.items():
        value = np.asarray(weights[f"{name}.weight"], dtype=np.float32)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif name == "fc1":
            rows = np.empty_like(value.T)
            rows[net.flatten_rows()] = value.T
            value = rows
        else:
            value = value.T
        _load(kernel, value)
        _load(net.bias[name], weights[f"{name}.bias"])


# ---------------------------------------------------------------- 3. RNN

def _gru_scan(x, kernel, recurrent_kernel, input_bias, recurrent_bias):
    """The canonical GRU (cuDNN formulation, gates r, z, n) over batch-major x (B, T, E), one
    tf.scan step per time step; the last hidden state (B, H). The input projections of every
    time step are one matmul before the loop, time-major."""
    projected = tf.einsum("bte,eg->tbg", x, kernel) + input_bias

    def step(h, xp):
        hp = tf.matmul(h, recurrent_kernel) + recurrent_bias
        x_r, x_z, x_n = tf.split(xp, 3, axis=-1)
        h_r, h_z, h_n = tf.split(hp, 3, axis=-1)
        r = tf.sigmoid(x_r + h_r)
        z = tf.sigmoid(x_z + h_z)
        n = tf.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h

    h0 = tf.zeros((tf.shape(x)[0], recurrent_kernel.shape[0]), x.dtype)
    return tf.scan(step, projected, initializer=h0)[-1]


def _gru_cudnn(x, kernel, recurrent_kernel, input_bias, recurrent_bias, training: bool):
    """The same GRU through cuDNN's kernel (tf.raw_ops.CudnnRNNV3, rnn_mode "gru", whose n gate
    applies r to the recurrent projection with its bias: the canonical formula). Its params are
    one flat buffer: the input matrices W_r, W_z, W_n (each (H, E), row-major), the recurrent
    ones R_r, R_z, R_n, then the six bias vectors, input ones first (cuDNN's gate order r, z, n;
    keras/src/backend/tensorflow/rnn.py builds the same buffer)."""
    batch, steps = tf.shape(x)[0], tf.shape(x)[1]
    params = tf.concat([tf.reshape(tf.transpose(kernel), [-1]),
                        tf.reshape(tf.transpose(recurrent_kernel), [-1]), input_bias, recurrent_bias], axis=0)
    h0 = tf.zeros((batch, 1, recurrent_kernel.shape[0]), x.dtype)  # batch-major: (B, layers, H)
    _, h, _, _, _ = tf.raw_ops.CudnnRNNV3(
        input=x, input_h=h0, input_c=tf.zeros([], x.dtype), params=params,
        sequence_lengths=tf.fill([batch], steps), rnn_mode="gru", input_mode="linear_input",
        direction="unidirectional", is_training=training, time_major=False)
    return h[:, 0]


class GRUClassifier(tf.Module):
    """Embedding -> one GRU layer -> its last hidden state -> dense (the logits)."""

    def __init__(self, spec, cudnn: bool, rng: tf.random.Generator):
        super().__init__(name="rnn")
        self.cudnn, self.compute_dtype = cudnn, COMPUTE[_run["precision"]]
        h, e = spec.gru_units, spec.embedding_dim
        with tf.device("CPU:0"):
            embedding = rng.uniform((spec.max_features, e), -0.05, 0.05)
        self.embedding = tf.Variable(embedding, name="embedding")
        self.kernel = tf.Variable(_glorot_uniform(rng, (e, 3 * h)), name="gru/kernel")  # (r | z | n)
        self.recurrent_kernel = tf.Variable(_orthogonal(rng, (h, 3 * h)), name="gru/recurrent_kernel")
        self.input_bias = tf.Variable(tf.zeros([3 * h]), name="gru/input_bias")
        self.recurrent_bias = tf.Variable(tf.zeros([3 * h]), name="gru/recurrent_bias")
        self.dense_kernel = tf.Variable(_glorot_uniform(rng, (h, spec.classes)), name="fc/kernel")
        self.dense_bias = tf.Variable(tf.zeros([spec.classes]), name="fc/bias")

    def probe(self) -> tf.Tensor:
        return tf.zeros((1, 2), tf.int32)

    def features(self, tokens, training: bool):
        """The GRU's last hidden state, in the compute dtype."""
        dtype = self.compute_dtype
        x = tf.cast(tf.nn.embedding_lookup(self.embedding, tokens), dtype)  # the lookup in float32
        weights = [tf.cast(v, dtype) for v in (self.kernel, self.recurrent_kernel, self.input_bias,
                                                self.recurrent_bias)]
        return _gru_cudnn(x, *weights, training) if self.cudnn else _gru_scan(x, *weights)

    def __call__(self, tokens, training: bool = False):
        logits = _dense(self.features(tokens, training), self.dense_kernel, self.dense_bias)
        return tf.cast(logits, tf.float32)


def build_rnn(spec, dev: str) -> Trainable:
    net = GRUClassifier(spec, cudnn=dev == "gpu", rng=_generator())
    optimizer = Adam(net.trainable_variables, spec.lr, spec.beta1, spec.beta2, spec.epsilon)
    return Trainable(net, optimizer, _jit("rnn", dev) and not net.cudnn)  # CudnnRNNV3: no XLA kernel


def train_rnn_epoch(model: Trainable, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_rnn(model: Trainable, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


def _rnn_weights(model: Trainable) -> dict:
    net = model.net
    return {"embedding.weight": net.embedding.numpy(),
            "gru.weight_ih": net.kernel.numpy().T, "gru.weight_hh": net.recurrent_kernel.numpy().T,
            "gru.bias_ih": net.input_bias.numpy(), "gru.bias_hh": net.recurrent_bias.numpy(),
            "fc.weight": net.dense_kernel.numpy().T, "fc.bias": net.dense_bias.numpy()}


def _set_rnn_weights(model: Trainable, weights: dict) -> None:
    net = model.net
    _load(net.embedding, weights["embedding.weight"])
    _load(net.kernel, np.transpose(weights["gru.weight_ih"]))  # the same gate order: no reorder
    _load(net.recurrent_kernel, np.transpose(weights["gru.weight_hh"]))
    _load(net.input_bias, weights["gru.bias_ih"])
    _load(net.recurrent_bias, weights["gru.bias_hh"])
    _load(net.dense_kernel, np.transpose(weights["fc.weight"]))
    _load(net.dense_bias, weights["fc.bias"])


# ---------------------------------------------------------------- 4. ResNet-50

class FeatureExtractor:
    """The Keras applications ResNet50 and the tf.function that runs it in inference mode."""

    def __init__(self, net, jit_compile: bool):
        self.net = net
        self.features = tf.function(lambda x: tf.cast(net(x, training=False), tf.float32),
                                    jit_compile=jit_compile)

    @property
    def trainable_variables(self):
        return self.net.trainable_weights


def build_resnet50(spec, dev: str) -> FeatureExtractor:
    channels, height, width = spec.image_shape
    shape = (channels, height, width) if dev == "gpu" else (height, width, channels)
    net = tf.keras.applications.ResNet50(weights=None, include_top=False, input_shape=shape, pooling="avg")
    return FeatureExtractor(net, _jit("resnet50", dev))


def extract_features(model: FeatureExtractor, x: np.ndarray) -> np.ndarray:
    return model.features(tf.convert_to_tensor(x)).numpy()  # float32 whatever the compute dtype


# Keras applications' layer names, read as torchvision's: conv{s}_block{b}_{i}_{conv|bn} is stage
# s - 1 (layer1..layer4), bottleneck b - 1, its conv/bn i (1: the 1x1 in, 2: the 3x3, 3: the 1x1
# out) or, for i = 0, the projection shortcut (downsample.0 / downsample.1); conv1_conv and
# conv1_bn are the stem. Every Keras Conv2D here has a bias, held at zero (the canonical has none).
_KERAS_LAYER = re.compile(r"conv(?P<stage>[2-5])_block(?P<block>\d+)_(?P<i>[0-3])_(?P<kind>conv|bn)")
_BATCH_NORM = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
               "running_var": "moving_variance"}


def _torchvision_name(layer_name: str) -> str | None:
    if layer_name in ("conv1_conv", "conv1_bn"):
        return "conv1" if layer_name.endswith("conv") else "bn1"
    found = _KERAS_LAYER.fullmatch(layer_name)
    if found is None:
        return None  # padding, activations, pooling, adds: no weights
    where = f"layer{int(found['stage']) - 1}.{int(found['block']) - 1}"
    if found["i"] == "0":
        return f"{where}.downsample.{0 if found['kind'] == 'conv' else 1}"
    return f"{where}.{found['kind']}{found['i']}"


def _resnet_layers(model: FeatureExtractor):
    """(torchvision name, Keras layer) of every layer with weights."""
    for layer in model.net.layers:
        name = _torchvision_name(layer.name)
        if name is not None:
            yield name, layer


def _resnet50_weights(model: FeatureExtractor) -> dict:
    out = {}
    for name, layer in _resnet_layers(model):
        if isinstance(layer, tf.keras.layers.Conv2D):
            bias = layer.bias.numpy()
            if np.any(bias != 0):
                raise ValueError(f"{layer.name}: conv bias not zero (largest |b| "
                                 f"{np.max(np.abs(bias)):.3g}): not the canonical, bias-free ResNet-50")
            out[f"{name}.weight"] = layer.kernel.numpy().transpose(3, 2, 0, 1)  # HWIO -> OIHW
        else:
            out.update({f"{name}.{ours}": getattr(layer, keras_name).numpy()
                        for ours, keras_name in _BATCH_NORM.items()})
    return out


def _set_resnet50_weights(model: FeatureExtractor, weights: dict) -> None:
    for name, layer in _resnet_layers(model):
        if isinstance(layer, tf.keras.layers.Conv2D):
            layer.kernel.assign(np.asarray(weights[f"{name}.weight"], np.float32).transpose(2, 3, 1, 0))
            layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
        else:
            for ours, keras_name in _BATCH_NORM.items():
                getattr(layer, keras_name).assign(np.asarray(weights[f"{name}.{ours}"], np.float32))
