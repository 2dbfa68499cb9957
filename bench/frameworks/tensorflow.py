"""TensorFlow 2 through tf.keras (fit / predict): the three tasks of TASKS.md.

Same sections as bench/frameworks/pytorch.py:
  1. framework and device: init_device, set_seed, synchronize, versions, data_format,
     count_params, conventions, numerics
  2. CNN  3. RNN  4. ResNet-50
Since TensorFlow 2.16 tf.keras is Keras 3 on the TensorFlow backend.

Precision (bench/precisions.py) through Keras's own mechanism: a global dtype policy
(keras.mixed_precision.set_global_policy), set in init_device before any model is built:
"float32" for fp32 and tf32, "mixed_float16" for amp-fp16, "mixed_bfloat16" for amp-bf16
(variables, hence the optimizer's master weights, stay float32; layers compute in the half
type; BatchNormalization computes in float32 whatever the policy, Keras's own rule). The
output Dense is float32 in every precision (the Keras mixed-precision guide's rule), so the
logits, the softmax inside the cross-entropy and the loss are float32. amp-fp16 wraps the
optimizer in keras.mixed_precision.LossScaleOptimizer (dynamic loss scaling; fit() reports the
unscaled loss). TF32: tf.config.experimental.enable_tensor_float_32_execution, on in tf32 only.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from bench import precisions
from bench.errors import DeviceUnavailable, UnsupportedPrecision

keras = tf.keras
NAME = "tensorflow"

POLICY = {"fp32": "float32", "tf32": "float32", "amp-fp16": "mixed_float16", "amp-bf16": "mixed_bfloat16"}
OUTPUT = "logits"  # the output Dense: float32 in every precision
_run = {"precision": precisions.DEFAULT}  # one process runs one precision


# ---------------------------------------------------------------- 1. framework and device

def _capability(gpu) -> tuple | None:
    """The GPU's compute capability (major, minor), as TensorFlow reports it."""
    capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
    return tuple(int(v) for v in capability) if capability else None


def init_device(device: str, precision: str) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu":
        if not gpus:
            raise DeviceUnavailable(
                f"no GPU found: tf.config.list_physical_devices('GPU') is empty (tensorflow "
                f"{tf.__version__}, built with CUDA "
                f"{tf.sysconfig.get_build_info().get('cuda_version', 'none')}); "
                "check the driver and nvidia-smi, or run with --device cpu")
        for gpu in gpus:  # before anything initialises the GPUs
            tf.config.experimental.set_memory_growth(gpu, True)
    capability = _capability(gpus[0]) if device == "gpu" else None
    reason = precisions.skip_reason(precision, device, capability, NAME)
    if reason:
        raise UnsupportedPrecision(reason)
    if device == "gpu":
        keras.backend.set_image_data_format("channels_first")  # NCHW on NVIDIA GPUs
    else:
        if gpus:
            tf.config.set_visible_devices([], "GPU")  # --device cpu means the CPU alone
        keras.backend.set_image_data_format("channels_last")  # TF's CPU kernels want NHWC
    # TF32 off explicitly but in tf32 (the amp modes too: they differ from fp32 by the half compute).
    tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
    keras.mixed_precision.set_global_policy(POLICY[precision])  # before any model is built
    _run["precision"] = precision
    return device


def set_seed(seed: int) -> None:
    """Keras's initializers draw from Python's, NumPy's and TensorFlow's generators through
    keras.utils.set_random_seed; the same seed gives the same float32 weights in every precision."""
    keras.utils.set_random_seed(seed)
    tf.random.set_seed(seed)


def synchronize(dev: str) -> None:
    if dev == "gpu":
        tf.test.experimental.sync_devices()


def versions(dev: str) -> dict:
    build = tf.sysconfig.get_build_info()
    gpu = None
    if dev == "gpu":
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        gpu = details.get("device_name")
    return {
        "framework_version": tf.__version__,
        "cuda": build.get("cuda_version"),
        "cudnn": build.get("cudnn_version"),
        "gpu": gpu,
    }


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


def conventions(task: str, dev: str) -> dict:
    layout = data_format(dev)
    if task == "cnn":
        return {"layout": layout, "init": "glorot_uniform weights, zero biases (Keras defaults)",
                "fast_path": ["keras fit (compiled train step, jit_compile=auto)"],
                "epoch_timing": EPOCH_TIMING}
    if task == "rnn":
        return {"gru_bias": "two vectors per gate (reset_after=True, cuDNN layout)",
                "gru_biases": 600, "gru_kernel": "cuDNN" if dev == "gpu" else "TF CPU",
                "fast_path": ["keras fit (compiled train step)"], "epoch_timing": EPOCH_TIMING}
    return {"resnet_conv_bias": True, "weights": "random", "layout": layout,
            "source": "tf.keras.applications.ResNet50(include_top=False, pooling='avg')",
            "fast_path": ["predict_on_batch (compiled)"]}


def _one(dtypes) -> str:
    """The dtype a set of layers or variables share ("mixed(...)" when they do not)."""
    names = sorted({keras.backend.standardize_dtype(d) for d in dtypes})
    return names[0] if len(names) == 1 else f"mixed({', '.join(names)})"


def numerics(task: str, model, dev: str) -> dict:
    """What is set for this model, read back from Keras and TensorFlow: the layers' compute dtype
    (all but the float32 output Dense), the trainable variables' dtype (the master weights), the
    optimizer's class (LossScaleOptimizer: Keras 3's is dynamic only) and the TF32 switch."""
    precision = _run["precision"]
    tf32_switch = bool(tf.config.experimental.tensor_float_32_execution_enabled())
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    body = [layer for layer in layers if layer.name != OUTPUT]
    head = [layer for layer in layers if layer.name == OUTPUT]
    optimizer = getattr(model, "optimizer", None)
    read_back = ["tf32", "compute_dtype", "param_dtype"]
    switches = {
        "tf.config.experimental.tensor_float_32_execution_enabled()": tf32_switch,
        "keras.mixed_precision.global_policy()": keras.mixed_precision.global_policy().name,
        "model.dtype_policy": model.dtype_policy.name,
        "model.weights dtype": _one(v.dtype for v in model.weights),
        precisions.TF32_OVERRIDE_VARIABLE: os.environ.get(precisions.TF32_OVERRIDE_VARIABLE),
    }
    mechanism = [f"keras.mixed_precision.set_global_policy({POLICY[precision]!r})"]
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
    mechanism.append(f"tf.config.experimental.enable_tensor_float_32_execution({precision == 'tf32'})")
    return precisions.state(
        precision, tf32=tf32_switch and dev == "gpu",  # a CPU has no TF32 whatever the switch says
        compute_dtype=_one(layer.compute_dtype for layer in body),
        param_dtype=_one(v.dtype for v in model.trainable_weights),
        loss_scaling=loss_scaling, loss_scaler=loss_scaler, mechanism="; ".join(mechanism),
        read_back=read_back, switches=switches)


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


# ---------------------------------------------------------------- 3. RNN

def build_rnn(spec, dev: str):
    layers = keras.layers
    model = keras.Sequential([
        keras.Input(shape=(spec.seq_len,), dtype="int32"),
        layers.Embedding(spec.max_features, spec.embedding_dim),
        layers.GRU(spec.gru_units),  # cuDNN kernel on GPU; returns the last time step
        layers.Dense(spec.classes, dtype="float32", name=OUTPUT),  # float32 logits in every precision
    ])
    model.compile(
        optimizer=_optimizer(keras.optimizers.Adam(learning_rate=spec.lr, beta_1=spec.beta1,
                                                   beta_2=spec.beta2, epsilon=spec.epsilon)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def train_rnn_epoch(model, batches, spec) -> float:
    return _train_epoch(model, batches, spec)


def train_rnn_epochs(model, epochs, spec) -> None:
    _train_epochs(model, epochs, spec)


def predict_rnn(model, x: np.ndarray, spec) -> np.ndarray:
    return model.predict(x, batch_size=spec.batch_size, verbose=0)


# ---------------------------------------------------------------- 4. ResNet-50

def build_resnet50(spec, dev: str):
    channels, height, width = spec.image_shape
    shape = (channels, height, width) if dev == "gpu" else (height, width, channels)
    return keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape,
                                       pooling="avg")


def extract_features(model, x: np.ndarray) -> np.ndarray:
    # float32 features whatever the compute dtype (under mixed_bfloat16 the pooled output is bf16)
    return np.asarray(model.predict_on_batch(x), dtype=np.float32)
