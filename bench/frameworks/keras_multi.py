"""Keras 3 on JAX, PyTorch or TensorFlow (KERAS_BACKEND), fit / predict: the three tasks.

Same sections as bench/frameworks/pytorch.py:
  1. framework and device: init_device, set_seed, synchronize, versions, data_format,
     count_params, conventions, numerics, get_weights, set_weights, peak_device_memory
  2. CNN  3. RNN  4. ResNet-50
The matrix entries keras-jax, keras-torch and keras-tensorflow share this file; the
environment variable KERAS_BACKEND, set by the registry before import, picks the engine.

Precision (bench/precisions.py) through Keras's own mechanism, the same on every backend: a
global dtype policy (keras.mixed_precision.set_global_policy) set in init_device before any
model is built: "float32" for fp32 and tf32, "mixed_float16" for amp-fp16, "mixed_bfloat16"
for amp-bf16 (variables, hence the optimizer's master weights, stay float32; layers compute in
the half type; BatchNormalization computes in float32 whatever the policy, Keras's own rule).
The output Dense is float32 in every precision (the Keras mixed-precision guide's rule), so the
logits, the softmax inside the cross-entropy and the loss are float32. amp-fp16 wraps the
optimizer in keras.mixed_precision.LossScaleOptimizer (dynamic loss scaling; fit() reports the
unscaled loss). TF32 is the backend's business, each through its own switch, on in tf32 only:
tf.config.experimental.enable_tensor_float_32_execution (tensorflow), torch.backends' fp32
precision of cuBLAS matmuls and cuDNN convolutions and RNNs (torch), the XLA default precision
of dots and convolutions, jax_default_matmul_precision (jax).

Mode (bench/modes.py, init_device's mode): reference compiles with Keras's default
jit_compile="auto"; tuned adds what Model.compile's documentation
(https://keras.io/api/models/model_training_apis/#compile-method) offers beyond it, per backend:
  - jit_compile=True. JAX: "auto" is XLA (jax.jit) already on every device: nothing to add.
    TensorFlow: "auto" is XLA where TensorFlow lists a GPU and off on a CPU-only machine
    (keras/src/trainers/trainer.py, _resolve_auto_jit_compile); on the CPU XLA was measured slower
    for the CNN and ResNet-50 and no faster for the GRU (JIT_CPU_LEFT_OFF), and tuned leaves it off.
    torch: "auto" is eager and True is torch.compile with the inductor backend, for fit()'s train
    step and predict() (ResNet-50: predict_on_batch, through the jit_compile attribute compile()
    sets). On a GPU tuned turns it on for the CNN and ResNet-50 (torch.compile's documented gains,
    fused kernels and less Python overhead per step, https://pytorch.org/docs/stable/torch.compiler.html,
    are a GPU's), not for the GRU: under torch.compile Keras's torch GRU leaves cuDNN for its
    Python-loop fallback (keras/src/backend/torch/rnn.py, gru()). On the CPU it is off:
    the CNN's steady epochs were 1.3x slower (first epochs 23x, inductor's C++ compile), and the
    GRU's and ResNet-50's compiles did not finish in the time measured (JIT_CPU_LEFT_OFF). TUNED_JIT
    holds the choice per backend, device and task.
  - steps_per_execution > 1, documented for TPUs and small models with a large Python overhead
    (not supported on torch): left off. Keras reads that many batches per execution whatever is
    left of the epoch (keras/src/trainers/epoch_iterator.py), so unless it divides the epoch's
    batch count an execution takes the next epoch's first batches: the harness's per-epoch clock
    and batch order (runner.Epochs) would break.
Measured on this project's shared 2-core CPU on 2026-12-01 (one process, reference and tuned
alternating, fresh models, medians; 5-batch epochs and quick ResNet-50, under other work's load);
nothing here was measured on a GPU (none is lent to this project).
"""
from __future__ import annotations

import os

import numpy as np

import keras
from bench import canonical, modes, precisions
from bench.errors import DeviceUnavailable, UnsupportedPrecision

BACKEND = keras.backend.backend()
NAME = f"keras-{BACKEND}"
POLICY = {"fp32": "float32", "tf32": "float32", "amp-fp16": "mixed_float16", "amp-bf16": "mixed_bfloat16"}
OUTPUT = "logits"  # the output Dense: float32 in every precision
_run = {"precision": precisions.DEFAULT, "mode": modes.DEFAULT}  # set by init_device
# The tuned mode's jit_compile=True per backend, device and task where the reference's "auto" does
# not compile already (the "Mode" paragraph of the docstring says what was measured).
TUNED_JIT = {
    "torch": {"cpu": {"cnn": False, "rnn": False, "resnet50": False},
              "gpu": {"cnn": True, "rnn": False, "resnet50": True}},
    "tensorflow": {"cpu": {"cnn": False, "rnn": False, "resnet50": False}},
}
_device_scope = None  # keras.device(...) entered for the whole run


# ---------------------------------------------------------------- 1. framework and device

def _backend_gpus() -> int:
    if BACKEND == "torch":
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if BACKEND == "jax":
        import jax

        try:
            return len(jax.devices("gpu"))
        except RuntimeError:  # no GPU backend at all
            return 0
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def _capability() -> tuple | None:
    """The first GPU's compute capability (major, minor), from the backend's own query."""
    if BACKEND == "torch":
        import torch

        return tuple(torch.cuda.get_device_capability(0))
    if BACKEND == "jax":
        import jax

        capability = getattr(jax.devices("gpu")[0], "compute_capability", None)  # e.g. "9.0"
        return tuple(int(part) for part in str(capability).split(".")[:2]) if capability else None
    import tensorflow as tf

    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    capability = details.get("compute_capability")
    return tuple(int(v) for v in capability) if capability else None


# torch's fp32 precision switches (the API of torch 2.9 and later; older torch: allow_tf32 and
# set_float32_matmul_precision). The two APIs must not be mixed: torch refuses to read a flag
# set through the other one.
_TORCH_FP32_SWITCHES = ("cuda.matmul", "cudnn.conv", "cudnn.rnn")


def _torch_backend(path: str):
    import torch

    module = torch.backends
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set_tf32(allowed: bool) -> None:
    """TF32 on (tf32) or off (every other precision), through the backend's own switch."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(allowed)
    elif BACKEND == "torch":
        import torch

        if hasattr(torch.backends, "fp32_precision"):
            torch.backends.fp32_precision = "ieee"  # every backend's default, the CPU's included
            for path in _TORCH_FP32_SWITCHES:
                _torch_backend(path).fp32_precision = "tf32" if allowed else "ieee"
        else:
            torch.backends.cuda.matmul.allow_tf32 = allowed
            torch.backends.cudnn.allow_tf32 = allowed
            torch.set_float32_matmul_precision("high" if allowed else "highest")
    else:
        import jax

        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if allowed else "highest")


def _tf32_switches() -> dict:
    """Each TF32 switch of the backend and its value, read back."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return {"tf.config.experimental.tensor_float_32_execution_enabled()":
                bool(tf.config.experimental.tensor_float_32_execution_enabled())}
    if BACKEND == "torch":
        import torch

        if hasattr(torch.backends, "fp32_precision"):
            switches = {"torch.backends.fp32_precision": torch.backends.fp32_precision}
            for path in _TORCH_FP32_SWITCHES + ("mkldnn.matmul", "mkldnn.conv"):
                switches[f"torch.backends.{path}.fp32_precision"] = _torch_backend(path).fp32_precision
            return switches
        return {"torch.backends.cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                "torch.backends.cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision()}
    import jax

    return {"jax.config.jax_default_matmul_precision": jax.config.jax_default_matmul_precision}


def _tf32_on(switches: dict) -> dict:
    """Whether each read-back switch lets TF32 be used on the GPU."""
    on = {}
    for key, value in switches.items():
        if key.endswith("fp32_precision"):
            if key.split(".")[2] in ("cuda", "cudnn"):  # mkldnn is the CPU's: no TF32 there
                on[key] = value == "tf32"
        elif key.endswith("get_float32_matmul_precision()"):
            on[key] = value in ("high", "medium")
        elif key.endswith("jax_default_matmul_precision"):
            on[key] = value not in ("highest", "float32", "F32_F32_F32")
        else:
            on[key] = bool(value)
    return on


def init_device(device: str, precision: str, mode: str = modes.DEFAULT) -> str:
    global _device_scope
    modes.check_name(mode)
    if device == "gpu" and _backend_gpus() == 0:
        raise DeviceUnavailable(
            f"no GPU found: Keras {keras.__version__}'s {BACKEND} backend sees no GPU; check the "
            "driver and nvidia-smi, or run with --device cpu")
    reason = precisions.skip_reason(precision, device, _capability() if device == "gpu" else None, NAME)
    if reason:
        raise UnsupportedPrecision(reason)
    if BACKEND == "tensorflow" and device == "cpu":
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")  # --device cpu means the CPU alone
    # NCHW on NVIDIA GPUs (TASKS.md); TensorFlow's CPU kernels need NHWC.
    keras.config.set_image_data_format("channels_first" if device == "gpu" else "channels_last")
    # TF32 off explicitly but in tf32 (the amp modes too: they differ from fp32 by the half compute).
    _set_tf32(precision == "tf32")
    keras.mixed_precision.set_global_policy(POLICY[precision])  # before any model is built
    _run["precision"], _run["mode"] = precision, mode
    # Torch's backend wants a bare "cpu": "cpu:0" turns its parameters into plain tensors.
    index = "" if BACKEND == "torch" else ":0"
    _device_scope = keras.device(("gpu" if device == "gpu" else "cpu") + index)
    _device_scope.__enter__()  # every tensor of the run lives on that device
    return device


def set_seed(seed: int) -> None:
    """Keras's initializers draw from its global seed generator (and Python's and NumPy's), all
    seeded by keras.utils.set_random_seed, on every backend (JAX: keys derived from it); the
    same seed gives the same float32 weights in every precision."""
    keras.utils.set_random_seed(seed)


def synchronize(dev: str) -> None:
    if dev != "gpu":
        return
    if BACKEND == "torch":
        import torch

        torch.cuda.synchronize()
    elif BACKEND == "jax":
        import jax

        jax.effects_barrier()
    else:
        import tensorflow as tf

        tf.test.experimental.sync_devices()


def versions(dev: str) -> dict:
    cuda = cudnn = gpu = None
    if BACKEND == "torch":
        import torch as engine

        cuda = engine.version.cuda
        cudnn = str(engine.backends.cudnn.version()) if engine.backends.cudnn.is_available() else None
        gpu = engine.cuda.get_device_name(0) if dev == "gpu" else None
    elif BACKEND == "jax":
        import jax as engine

        gpu = engine.devices("gpu")[0].device_kind if dev == "gpu" else None
    else:
        import tensorflow as engine

        build = engine.sysconfig.get_build_info()
        cuda, cudnn = build.get("cuda_version"), build.get("cudnn_version")
    return {"framework_version": f"{keras.__version__} ({BACKEND} {engine.__version__})",
            "cuda": cuda, "cudnn": cudnn, "gpu": gpu}


def data_format(dev: str) -> str:
    return "NCHW" if dev == "gpu" else "NHWC"


def count_params(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


# How epochs are timed (issue 17). fit() once per epoch put fit()'s per-call setup, its handling
# of the whole arrays and its end into every epoch, and on TensorFlow a new input iterator per
# epoch, whose start paused some epochs by up to a second with no CPU in use (bimodal epochs).
# _train_epochs makes one fit() over all epochs, on one endless _HarnessBatches cut into epochs
# by steps_per_epoch, so that one input iterator serves every epoch. Inside epoch e's clock
# (on_epoch_begin to on_epoch_end): Keras's epoch loop, each batch's conversion from the harness's
# views to tensors, the compiled train steps, the per-step logs Keras reads itself, the epoch's
# mean loss, and the next epoch's first batch or two that TensorFlow reads ahead. Outside:
# fit()'s setup (data adapter, the batches Keras reads to learn their shapes, callbacks), its end
# after the last epoch, and the harness's shuffle (an epoch's copy, made between epochs). Epoch 1
# still carries tracing and compilation. Chosen by benchmarks/keras_epoch_timing.py: this way's
# warm epochs were within the noise of a bare train_on_batch loop over the same batches, on every
# backend, and not bimodal (fit() once per epoch was, on TensorFlow). A train_on_batch loop was
# not chosen: it is not how Keras is driven, and it waits for every step's loss (on a GPU, a
# synchronisation per step that fit() on JAX and torch does not make).
EPOCH_TIMING = ("one fit() over all epochs (one input iterator, steps_per_epoch); per-epoch times "
                "at epoch boundaries (on_epoch_begin to on_epoch_end), device synchronised; the "
                "harness's per-epoch shuffled batches through a PyDataset, in order")


def _jit(task: str, dev: str):
    """compile()'s jit_compile for the task in this run's mode: the reference's "auto", or True."""
    if _run["mode"] == "tuned" and TUNED_JIT.get(BACKEND, {}).get(dev, {}).get(task):
        if not (BACKEND == "tensorflow" and _backend_gpus()):  # there "auto" is XLA already
            return True
    return "auto"


# jit_compile=True on this project's 2-core CPU, 2026-12-01: one process, reference and tuned
# alternating, fresh models, medians; 5-batch epochs (2 epochs) and quick ResNet-50, under a load of
# 15-20 from other work on the 2 cores (absolute times inflated; the ratios are the figures).
JIT_CPU_LEFT_OFF = {
    "tensorflow": {
        "cnn": "measured slower: steady epoch 81.2 s against 19.6 s (tuned / reference 4.2; per round 4.2, "
               "3.2, 2.6), first epoch 144.0 s against 34.5 s (2026-12-01, this shared 2-core CPU)",
        "rnn": "no gain measured: steady epoch 13.4 s against 11.2 s (per round 0.99, 1.2, 0.65: within "
               "this shared CPU's noise), first epoch 76.5 s against 43.1 s (2026-12-01, 2-core CPU)",
        "resnet50": "measured slower: steady batch 29.8 s against 18.1 s (tuned / reference 1.65; per round "
                    "1.75, 1.51, 1.65), first batch 59.3 s against 25.2 s (2026-12-01, this shared 2-core CPU)"},
    "torch": {
        "cnn": "measured slower: steady epoch 24.7 s against 18.8 s eager (tuned / reference 1.3; per round "
               "0.76, 2.86, 1.23), first epoch (inductor's C++ compile) 344 s against 14.9 s (2026-12-01, "
               "this shared 2-core CPU); on on a GPU",
        "rnn": "not measured to its end: dynamo unrolls the fallback GRU's 150-step Python loop (no cuDNN on "
               "a CPU), forward and backward, for inductor's C++ compile, and the eager reference's "
               "5-batch epoch alone took 6 min on this shared 2-core CPU (2026-12-01): no gain shown, left off",
        "resnet50": "not measured: inductor's C++ compile of the CNN's step alone took 25 min on this shared "
                    "2-core CPU (2026-12-01) and ResNet-50's did not fit the session: no gain shown, left off "
                    "(on a GPU: on)"},
}
_WHAT = {"cnn": "the fit() train step and predict()", "rnn": "the fit() train step and predict()",
         "resnet50": "predict_on_batch"}
_JIT_WORDS = {"torch": "torch.compile (inductor backend)", "tensorflow": "XLA", "jax": "XLA (jax.jit)"}
STEPS_PER_EXECUTION = "steps_per_execution > 1 (Model.compile)"


def _mode_state(task: str, dev: str) -> dict:
    """conventions["mode"]: what the tuned mode turns on beyond the reference, and what not."""
    mode = _run["mode"]
    if mode == "reference":
        return modes.state(mode)
    switches, not_applied = [], {}
    jit = f"jit_compile=True (Model.compile): {_JIT_WORDS[BACKEND]} of {_WHAT[task]}"
    if _jit(task, dev) is True:
        switches.append(jit)
    elif BACKEND == "torch" and task == "rnn" and dev == "gpu":
        not_applied[jit] = (
            "under torch.compile Keras's torch GRU leaves cuDNN for its fallback loop (keras/src/backend/"
            "torch/rnn.py, gru(): no cuDNN while torch.compiler.is_compiling()), and TASKS.md asks for "
            "the cuDNN GRU where one exists")
    elif BACKEND == "jax":
        not_applied[jit] = "already on in the reference: jit_compile='auto' is XLA on the JAX backend on every device"
    elif BACKEND == "tensorflow" and (dev == "gpu" or _backend_gpus()):  # --device cpu on a GPU machine too
        not_applied[jit] = "already on in the reference: jit_compile='auto' is XLA where TensorFlow lists a GPU"
    else:
        not_applied[jit] = JIT_CPU_LEFT_OFF[BACKEND][task]
    if task != "resnet50":
        not_applied[STEPS_PER_EXECUTION] = (
            "not supported with the PyTorch backend (compile()'s docs)" if BACKEND == "torch" else
            "Keras reads steps_per_execution batches per execution whatever is left of the epoch "
            "(keras/src/trainers/epoch_iterator.py): unless it divides the epoch's batch count (CNN "
            "781 = 11 x 71, GRU 390), an execution takes the next epoch's first batches, which breaks "
            "the harness's per-epoch clock and batch order")
    return modes.state(mode, switches=switches, not_applied=not_applied)


def conventions(task: str, dev: str) -> dict:
    layout = data_format(dev)
    fit = f"keras fit on {BACKEND} (jit_compile=auto)"
    if task == "cnn":
        return {"layout": layout, "init": "glorot_uniform weights, zero biases (Keras defaults)",
                "fast_path": [fit], "epoch_timing": EPOCH_TIMING, "mode": _mode_state(task, dev)}
    if task == "rnn":
        # keras/src/optimizers/adam.py update_step: alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t),
        # variable -= alpha * m / (sqrt(v) + epsilon): epsilon on the uncorrected sqrt(v).
        out = {"gru_bias": "two vectors per gate (reset_after=True, cuDNN layout)", "gru_biases": 600,
               "gru_kernel": f"Keras GRU on {BACKEND} (cuDNN where the backend offers it)",
               "adam_epsilon": "sqrt(v) + eps, bias correction in the step size (Kingma & Ba epsilon hat)",
               "fast_path": [fit], "epoch_timing": EPOCH_TIMING, "mode": _mode_state(task, dev)}
        if BACKEND == "tensorflow":
            # The Embedding's gradient is a tf.IndexedSlices, one row per token occurrence; Adam's
            # ops.square squares each occurrence (keras/src/backend/tensorflow/sparse.py,
            # elementwise_unary) before v's update sums them per row: v gets the sum of squares of
            # a row's occurrences, not the square of its summed gradient (JAX, torch: dense).
            out["adam_embedding_v"] = "sum of each occurrence's squared gradient (tf.IndexedSlices)"
        else:
            out["adam_embedding_v"] = "square of the row's gradient (dense)"
        return out
    # keras/src/applications/resnet.py, residual_block_v1: the stage's stride on the block's
    # first 1x1 conv (and its shortcut), every BatchNormalization with epsilon=1.001e-5; pool1 is
    # ZeroPadding2D(1) then MaxPooling2D(3, strides=2) after the stem's ReLU, so the zeros pad
    # values >= 0: torchvision's max pooling with padding 1.
    return {"resnet_conv_bias": True, "weights": "random", "layout": layout,
            "source": "keras.applications.ResNet50(include_top=False, pooling='avg')",
            "resnet_stride": "1x1 (original paper, v1)", "bn_epsilon": 1.001e-5,
            "pool1": "max 3x3, stride 2, padding 1", "fast_path": ["predict_on_batch"],
            "mode": _mode_state(task, dev)}


def _one(dtypes) -> str:
    """The dtype a set of layers or variables share ("mixed(...)" when they do not)."""
    names = sorted({keras.backend.standardize_dtype(d) for d in dtypes})
    return names[0] if len(names) == 1 else f"mixed({', '.join(names)})"


def numerics(task: str, model, dev: str) -> dict:
    """What is set for this model, read back from Keras and the backend: the layers' compute
    dtype (all but the float32 output Dense), the trainable variables' dtype (the master
    weights), the optimizer's class (LossScaleOptimizer: Keras 3's is dynamic only) and the
    backend's TF32 switches."""
    precision = _run["precision"]
    tf32_switches = _tf32_switches()
    on = _tf32_on(tf32_switches).values()
    # tf32 asks for every switch on; any other precision for every switch off.
    tf32 = (all(on) if precision == "tf32" else any(on)) and dev == "gpu"  # a CPU has no TF32
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    body = [layer for layer in layers if layer.name != OUTPUT]
    head = [layer for layer in layers if layer.name == OUTPUT]
    optimizer = getattr(model, "optimizer", None)
    read_back = ["tf32", "compute_dtype", "param_dtype"]
    switches = dict(tf32_switches)
    switches.update({
        "keras.mixed_precision.global_policy()": keras.mixed_precision.global_policy().name,
        "model.dtype_policy": model.dtype_policy.name,
        "model.weights dtype": _one(v.dtype for v in model.weights),
        precisions.TF32_OVERRIDE_VARIABLE: os.environ.get(precisions.TF32_OVERRIDE_VARIABLE),
    })
    mechanism = [f"keras.mixed_precision.set_global_policy({POLICY[precision]!r}) on {BACKEND}"]
    if head:
        switches[f"{OUTPUT} (output Dense) dtype_policy"] = head[0].dtype_policy.name
        mechanism.append("output Dense dtype='float32'")
    if optimizer is not None:
        scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
        loss_scaling = "dynamic" if scaled else "none"
        loss_scaler = (f"keras.mixed_precision.LossScaleOptimizer"
                       f"({type(optimizer.inner_optimizer).__name__})") if scaled else None
        read_back.append("loss_scaling")
        switches["model.optimizer"] = type(optimizer).__name__
        switches["model.loss dtype"] = getattr(model.loss, "dtype", None)
        if scaled:
            switches["LossScaleOptimizer.initial_scale"] = float(optimizer.initial_scale)
            switches["LossScaleOptimizer.dynamic_growth_steps"] = int(optimizer.dynamic_growth_steps)
            mechanism.append("keras.mixed_precision.LossScaleOptimizer (dynamic)")
    else:  # ResNet-50 features: inference, no loss and no optimizer; the precision's rule stated
        loss_scaling, loss_scaler = precisions.LOSS_SCALING[precision], None
        mechanism.append("inference only: no loss to scale")
    mechanism.append(("TF32 allowed: " if precision == "tf32" else "TF32 off: ")
                     + ", ".join(f"{k} = {v!r}" for k, v in tf32_switches.items()))
    return precisions.state(
        precision, tf32=tf32, compute_dtype=_one(layer.compute_dtype for layer in body),
        param_dtype=_one(v.dtype for v in model.trainable_weights),
        loss_scaling=loss_scaling, loss_scaler=loss_scaler, mechanism="; ".join(mechanism),
        read_back=read_back, switches=switches)


# The canonical weight exchange (bench/canonical.py; `python -m bench equivalence`). Keras's
# layouts, the same on every backend (a Keras variable has one shape whatever the engine): Conv2D
# kernels HWIO (kh, kw, in, out) in either data format, Dense kernels (in, out), Embedding
# (vocab, E), GRU(reset_after=True) kernel (E, 3H), recurrent_kernel (H, 3H) and bias (2, 3H)
# with the gates in the order (z, r, h) (keras/src/layers/rnn/gru.py: x_z = kernel[:, :units],
# x_r = kernel[:, units:2 units], x_h = kernel[:, 2 units:]; h = z * h_tm1 + (1 - z) * hh, the
# canonical formula). Each task's conversion is in its own section.

def get_weights(model, task: str) -> dict:
    """The model's weights in the canonical layout of task (float32 numpy arrays)."""
    return _WEIGHTS[task][0](model)


def set_weights(model, task: str, weights: dict) -> None:
    """Loads canonical weights into the model; an optimizer that already holds state (slots
    built by a training step) is reset, so that training starts from these weights alone."""
    _WEIGHTS[task][1](model, weights)
    _reset_optimizer(model)


def peak_device_memory(dev: str) -> dict | None:
    """The backend's own peak counter on the GPU (reset on each call where the backend can:
    torch and TensorFlow; JAX's counts from the process's start); None on a CPU."""
    if dev != "gpu":
        return None
    if BACKEND == "torch":
        import torch

        peak = int(torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
        return {"peak_bytes": peak, "counter": "torch.cuda.max_memory_allocated", "scope": "since the last call"}
    if BACKEND == "jax":
        import jax

        peak = (jax.devices("gpu")[0].memory_stats() or {}).get("peak_bytes_in_use")
        return {"peak_bytes": None if peak is None else int(peak),
                "counter": "jax.Device.memory_stats()['peak_bytes_in_use']", "scope": "since the process began"}
    import tensorflow as tf

    peak = int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    tf.config.experimental.reset_memory_stats("GPU:0")
    return {"peak_bytes": peak, "counter": "tf.config.experimental.get_memory_info('GPU:0')['peak']",
            "scope": "since the last call"}


def _numpy(variable) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)


def _assign(variable, value: np.ndarray) -> None:
    value = np.ascontiguousarray(value, dtype=np.float32)
    if tuple(variable.shape) != value.shape:
        raise ValueError(f"{variable.path}: shape {tuple(variable.shape)}, the weights give {value.shape}")
    variable.assign(value)


def _reset_optimizer(model) -> None:
    """Every optimizer variable but the learning rate back to zero (the step count included),
    if the optimizer was built; an unbuilt one builds its zero slots at the first step."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not optimizer.built:
        return
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer: its scale stays
    learning_rate = getattr(inner, "_learning_rate", None)
    for variable in inner.variables:
        if variable is not learning_rate:
            variable.assign(np.zeros(tuple(variable.shape), keras.backend.standardize_dtype(variable.dtype)))


def _layers(model, kind) -> list:
    return [layer for layer in model.layers if isinstance(layer, kind)]


def _optimizer(optimizer):
    """amp-fp16: the optimizer wrapped in Keras's dynamic loss scaling (compile() would wrap it
    itself under mixed_float16; done here so that it is explicit)."""
    if _run["precision"] == "amp-fp16":
        return keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


class _Progress(keras.callbacks.Callback):
    """Hands Keras's batch count to the harness's progress line."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_train_batch_end(self, batch, logs=None):
        self.batches.batch_done(batch + 1)


class _HarnessBatches(keras.utils.PyDataset):
    """The harness's batches, epoch after epoch, in its order (it shuffled them): item k is batch
    k % n of epoch k // n. Endless, so that fit() keeps one input iterator for every epoch
    (steps_per_epoch cuts the stream into epochs); one worker, no multiprocessing: in order."""

    def __init__(self, epochs):
        super().__init__(workers=1, use_multiprocessing=False)
        self.epochs = epochs

    @property
    def num_batches(self):
        return None  # endless

    def __getitem__(self, index):
        return self.epochs.batch(index % self.epochs.num_batches)


class _EpochClock(keras.callbacks.Callback):
    """Keras's epoch boundaries to the harness's clock, with the epoch's mean loss."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.begin(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.end(epoch, logs["loss"])


# ---------------------------------------------------------------- 2. CNN

def build_cnn(spec, dev: str):
    c1, c2, c3, c4 = spec.conv_channels
    k = spec.kernel_size
    channels, height, width = spec.image_shape
    shape = (channels, height, width) if dev == "gpu" else (height, width, channels)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input(shape=shape),
        layers.Conv2D(c1, k, padding="same"), layers.Activation("relu"),
        layers.Conv2D(c2, k, padding="same"), layers.MaxPooling2D(2, 2), layers.Activation("relu"),
        layers.Dropout(spec.conv_dropout),
        layers.Conv2D(c3, k, padding="same"), layers.Activation("relu"),
        layers.Conv2D(c4, k, padding="same"), layers.MaxPooling2D(2, 2), layers.Activation("relu"),
        layers.Dropout(spec.conv_dropout),
        layers.Flatten(),
        layers.Dense(spec.dense_units), layers.Activation("relu"),
        layers.Dropout(spec.dense_dropout),
        layers.Dense(spec.classes, dtype="float32", name=OUTPUT),  # float32 logits in every precision
    ])
    model.compile(
        optimizer=_optimizer(keras.optimizers.SGD(learning_rate=spec.lr, momentum=spec.momentum)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=_jit("cnn", dev),
    )
    return model


def train_cnn_epoch(model, batches, spec) -> float:
    return _train_epoch(model, batches, spec)


def train_cnn_epochs(model, epochs, spec) -> None:
    _train_epochs(model, epochs, spec)


def predict_cnn(model, x: np.ndarray, spec) -> np.ndarray:
    return model.predict(x, batch_size=spec.batch_size, verbose=0)


def _train_epoch(model, batches, spec) -> float:
    """One epoch per fit() call, for callers that drive one epoch at a time (bench.fidelity's
    loss curve); `bench run` times _train_epochs instead (see EPOCH_TIMING)."""
    history = model.fit(batches.x, batches.y, batch_size=spec.batch_size, epochs=1,
                        shuffle=False, verbose=0, callbacks=[_Progress(batches)])
    return history.history["loss"][-1]


def _train_epochs(model, epochs, spec) -> None:
    """All epochs in one fit(), as Keras is meant to be driven; the harness times each epoch
    from on_epoch_begin to on_epoch_end (EPOCH_TIMING says what that clock holds, and why)."""
    # shuffle=False: the harness has shuffled. No per-batch callback: none makes Keras wait for
    # a step's loss.
    model.fit(_HarnessBatches(epochs), epochs=epochs.count, steps_per_epoch=epochs.num_batches,
              shuffle=False, verbose=0, callbacks=[_EpochClock(epochs)])


def _flatten_order(model) -> np.ndarray:
    """order[j]: the canonical (c, h, w) column of fc1 that the Keras Flatten's output j holds.
    Read from the model's own Flatten on an index image laid out as its last convolution's data
    format: Keras 3's Flatten moves channels last before flattening even in channels_first
    (keras/src/layers/reshaping/flatten.py), so both formats flatten (h, w, c) today; the probe
    follows whatever the layer does."""
    conv = _layers(model, keras.layers.Conv2D)[-1]
    flatten = _layers(model, keras.layers.Flatten)[0]
    fc1 = _layers(model, keras.layers.Dense)[0]
    channels = int(conv.filters)
    hw = int(fc1.kernel.shape[0]) // channels  # the pooled image's height x width
    side = int(round(hw ** 0.5))
    # integers: a float index would be cast to the layer's compute dtype (inexact in bfloat16)
    index = np.arange(channels * side * side, dtype=np.int32).reshape(1, channels, side, side)
    if conv.data_format == "channels_last":
        index = index.transpose(0, 2, 3, 1)
    return np.asarray(keras.ops.convert_to_numpy(flatten(index)))[0].astype(np.int64)


def _cnn_weights(model) -> dict:
    out = {}
    for i, conv in enumerate(_layers(model, keras.layers.Conv2D), 1):
        out[f"conv{i}.weight"] = _numpy(conv.kernel).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        out[f"conv{i}.bias"] = _numpy(conv.bias)
    fc1, fc2 = _layers(model, keras.layers.Dense)
    kernel = _numpy(fc1.kernel)  # (in, out), rows in the Flatten's order
    weight = np.empty(kernel.T.shape, np.float32)
    weight[:, _flatten_order(model)] = kernel.T  # columns in the canonical (c, h, w) order
    out["fc1.weight"], out["fc1.bias"] = weight, _numpy(fc1.bias)
    out["fc2.weight"], out["fc2.bias"] = _numpy(fc2.kernel).T, _numpy(fc2.bias)
    return out


def _set_cnn_weights(model, w: dict) -> None:
    for i, conv in enumerate(_layers(model, keras.layers.Conv2D), 1):
        _assign(conv.kernel, w[f"conv{i}.weight"].transpose(2, 3, 1, 0))  # OIHW -> HWIO
        _assign(conv.bias, w[f"conv{i}.bias"])
    fc1, fc2 = _layers(model, keras.layers.Dense)
    _assign(fc1.kernel, w["fc1.weight"][:, _flatten_order(model)].T)
    _assign(fc1.bias, w["fc1.bias"])
    _assign(fc2.kernel, w["fc2.weight"].T)
    _assign(fc2.bias, w["fc2.bias"])


# ---------------------------------------------------------------- 3. RNN

def build_rnn(spec, dev: str):
    layers = keras.layers
    model = keras.Sequential([
        keras.Input(shape=(spec.seq_len,), dtype="int32"),
        layers.Embedding(spec.max_features, spec.embedding_dim),
        layers.GRU(spec.gru_units),  # cuDNN kernel where the backend has one; last time step
        layers.Dense(spec.classes, dtype="float32", name=OUTPUT),  # float32 logits in every precision
    ])
    model.compile(
        optimizer=_optimizer(keras.optimizers.Adam(learning_rate=spec.lr, beta_1=spec.beta1,
                                                   beta_2=spec.beta2, epsilon=spec.epsilon)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=_jit("rnn", dev),
    )
    return model


def train_rnn_epoch(model, batches, spec) -> float:
    return _train_epoch(model, batches, spec)


def train_rnn_epochs(model, epochs, spec) -> None:
    _train_epochs(model, epochs, spec)


def predict_rnn(model, x: np.ndarray, spec) -> np.ndarray:
    return model.predict(x, batch_size=spec.batch_size, verbose=0)


# Keras's gate blocks (z, r, h) against the canonical (r, z, n): the same permutation both ways.
_GRU_TO_KERAS = (1, 0, 2)


def _gates(matrix: np.ndarray, axis: int) -> np.ndarray:
    """The three gate blocks along axis swapped between Keras's (z, r, h) and (r, z, n)."""
    blocks = np.split(matrix, 3, axis=axis)
    return np.concatenate([blocks[g] for g in _GRU_TO_KERAS], axis=axis)


def _rnn_layers(model):
    embedding = _layers(model, keras.layers.Embedding)[0]
    gru = _layers(model, keras.layers.GRU)[0]
    if not gru.cell.reset_after:
        raise ValueError(f"{gru.name}: reset_after=False is not the canonical (cuDNN) GRU")
    return embedding, gru.cell, _layers(model, keras.layers.Dense)[0]


def _rnn_weights(model) -> dict:
    embedding, cell, fc = _rnn_layers(model)
    bias = _numpy(cell.bias)  # (2, 3H): input bias, recurrent bias
    return {
        "embedding.weight": _numpy(embedding.embeddings),
        "gru.weight_ih": _gates(_numpy(cell.kernel).T, 0),
        "gru.weight_hh": _gates(_numpy(cell.recurrent_kernel).T, 0),
        "gru.bias_ih": _gates(bias[0], 0),
        "gru.bias_hh": _gates(bias[1], 0),
        "fc.weight": _numpy(fc.kernel).T,
        "fc.bias": _numpy(fc.bias),
    }


def _set_rnn_weights(model, w: dict) -> None:
    embedding, cell, fc = _rnn_layers(model)
    _assign(embedding.embeddings, w["embedding.weight"])
    _assign(cell.kernel, _gates(w["gru.weight_ih"], 0).T)
    _assign(cell.recurrent_kernel, _gates(w["gru.weight_hh"], 0).T)
    _assign(cell.bias, np.stack([_gates(w["gru.bias_ih"], 0), _gates(w["gru.bias_hh"], 0)]))
    _assign(fc.kernel, w["fc.weight"].T)
    _assign(fc.bias, w["fc.bias"])


# ---------------------------------------------------------------- 4. ResNet-50

def build_resnet50(spec, dev: str):
    channels, height, width = spec.image_shape
    shape = (channels, height, width) if dev == "gpu" else (height, width, channels)
    model = keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape,
                                        pooling="avg")
    if _jit("resnet50", dev) is True:
        # the attribute compile(jit_compile=...) sets; compile() itself would add an optimizer
        model.jit_compile = True
    return model


def extract_features(model, x: np.ndarray) -> np.ndarray:
    # float32 features whatever the compute dtype (under mixed_bfloat16 the pooled output is bf16)
    return np.asarray(model.predict_on_batch(x), dtype=np.float32)


# keras.applications' ResNet50 (keras/src/applications/resnet.py): stem conv1_conv / conv1_bn;
# stage s (torchvision layer s) is conv{s+1}, its block b (from 0) conv{s+1}_block{b+1}, with
# _1_conv 1x1, _2_conv 3x3, _3_conv 1x1 (torchvision conv1, conv2, conv3) and, in the first
# block, the projection shortcut _0_conv / _0_bn (torchvision downsample.0 / downsample.1).
# Every Conv2D has a bias there; the canonical function has none: they are set to zero.
def _resnet50_pairs():
    """(canonical conv, Keras conv layer, canonical batch norm, Keras batch-norm layer)."""
    yield "conv1", "conv1_conv", "bn1", "conv1_bn"
    for stage, blocks in enumerate(canonical.RESNET_BLOCKS, 1):
        for b in range(blocks):
            ours, theirs = f"layer{stage}.{b}", f"conv{stage + 1}_block{b + 1}"
            for i in (1, 2, 3):
                yield f"{ours}.conv{i}", f"{theirs}_{i}_conv", f"{ours}.bn{i}", f"{theirs}_{i}_bn"
            if b == 0:
                yield f"{ours}.downsample.0", f"{theirs}_0_conv", f"{ours}.downsample.1", f"{theirs}_0_bn"


_BN_PARTS = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
             ("running_var", "moving_variance"))


def _resnet50_weights(model) -> dict:
    out = {}
    for conv, conv_layer, bn, bn_layer in _resnet50_pairs():
        layer = model.get_layer(conv_layer)
        if layer.use_bias and np.any(_numpy(layer.bias) != 0):
            raise ValueError(f"{conv_layer}: its convolution bias is not zero, so this is not the "
                             "canonical (bias-free) ResNet-50")
        out[f"{conv}.weight"] = _numpy(layer.kernel).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        layer = model.get_layer(bn_layer)
        for ours, theirs in _BN_PARTS:
            out[f"{bn}.{ours}"] = _numpy(getattr(layer, theirs))
    return out


def _set_resnet50_weights(model, w: dict) -> None:
    for conv, conv_layer, bn, bn_layer in _resnet50_pairs():
        layer = model.get_layer(conv_layer)
        _assign(layer.kernel, w[f"{conv}.weight"].transpose(2, 3, 1, 0))  # OIHW -> HWIO
        if layer.use_bias:
            _assign(layer.bias, np.zeros(tuple(layer.bias.shape), np.float32))
        layer = model.get_layer(bn_layer)
        for ours, theirs in _BN_PARTS:
            _assign(getattr(layer, theirs), w[f"{bn}.{ours}"])


_WEIGHTS = {"cnn": (_cnn_weights, _set_cnn_weights), "rnn": (_rnn_weights, _set_rnn_weights),
            "resnet50": (_resnet50_weights, _set_resnet50_weights)}
