"""Keras 3 on JAX, PyTorch or TensorFlow (KERAS_BACKEND), fit / predict: the three tasks.

Same sections as bench/frameworks/pytorch.py:
  1. framework and device  2. CNN  3. RNN  4. ResNet-50
The matrix entries keras-jax, keras-torch and keras-tensorflow share this file; the
environment variable KERAS_BACKEND, set by the registry before import, picks the engine.
"""
from __future__ import annotations

import numpy as np

import keras
from bench.errors import DeviceUnavailable, UnsupportedPrecision

BACKEND = keras.backend.backend()
NAME = f"keras-{BACKEND}"
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


def init_device(device: str, precision: str) -> str:
    global _device_scope
    if precision != "fp32":
        raise UnsupportedPrecision(f"{NAME} runs fp32 only (asked for {precision})")
    if device == "gpu" and _backend_gpus() == 0:
        raise DeviceUnavailable(
            f"no GPU found: Keras {keras.__version__}'s {BACKEND} backend sees no GPU; check the "
            "driver and nvidia-smi, or run with --device cpu")
    if BACKEND == "tensorflow" and device == "cpu":
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")  # --device cpu means the CPU alone
    # NCHW on NVIDIA GPUs (TASKS.md); TensorFlow's CPU kernels need NHWC.
    keras.config.set_image_data_format("channels_first" if device == "gpu" else "channels_last")
    # Torch's backend wants a bare "cpu": "cpu:0" turns its parameters into plain tensors.
    index = "" if BACKEND == "torch" else ":0"
    _device_scope = keras.device(("gpu" if device == "gpu" else "cpu") + index)
    _device_scope.__enter__()  # every tensor of the run lives on that device
    return device


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


def conventions(task: str, dev: str) -> dict:
    layout = data_format(dev)
    fit = f"keras fit on {BACKEND} (jit_compile=auto)"
    if task == "cnn":
        return {"layout": layout, "init": "glorot_uniform weights, zero biases (Keras defaults)",
                "fast_path": [fit], "epoch_timing": EPOCH_TIMING}
    if task == "rnn":
        return {"gru_bias": "two vectors per gate (reset_after=True, cuDNN layout)", "gru_biases": 600,
                "gru_kernel": f"Keras GRU on {BACKEND} (cuDNN where the backend offers it)",
                "fast_path": [fit], "epoch_timing": EPOCH_TIMING}
    return {"resnet_conv_bias": True, "weights": "random", "layout": layout,
            "source": "keras.applications.ResNet50(include_top=False, pooling='avg')",
            "fast_path": ["predict_on_batch"]}


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
        layers.Dense(spec.classes),
    ])
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=spec.lr, momentum=spec.momentum),
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
        layers.GRU(spec.gru_units),  # cuDNN kernel where the backend has one; last time step
        layers.Dense(spec.classes),
    ])
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=spec.lr, beta_1=spec.beta1,
                                        beta_2=spec.beta2, epsilon=spec.epsilon),
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
    return np.asarray(model.predict_on_batch(x))
