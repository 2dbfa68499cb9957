"""TensorFlow 2 through tf.keras (fit / predict): the three tasks of TASKS.md.

Same sections as bench/frameworks/pytorch.py:
  1. framework and device  2. CNN  3. RNN  4. ResNet-50
Since TensorFlow 2.16 tf.keras is Keras 3 on the TensorFlow backend.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from bench.errors import DeviceUnavailable, UnsupportedPrecision

keras = tf.keras
NAME = "tensorflow"


# ---------------------------------------------------------------- 1. framework and device

def init_device(device: str, precision: str) -> str:
    if precision != "fp32":
        raise UnsupportedPrecision(f"{NAME} runs fp32 only (asked for {precision})")
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu":
        if not gpus:
            raise DeviceUnavailable(
                f"no GPU found: tf.config.list_physical_devices('GPU') is empty (tensorflow "
                f"{tf.__version__}, built with CUDA "
                f"{tf.sysconfig.get_build_info().get('cuda_version', 'none')}); "
                "check the driver and nvidia-smi, or run with --device cpu")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        keras.backend.set_image_data_format("channels_first")  # NCHW on NVIDIA GPUs
        return "gpu"
    if gpus:
        tf.config.set_visible_devices([], "GPU")  # --device cpu means the CPU alone
    keras.backend.set_image_data_format("channels_last")  # TF's CPU kernels want NHWC
    return "cpu"


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
        layers.GRU(spec.gru_units),  # cuDNN kernel on GPU; returns the last time step
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
    return model.predict_on_batch(x)
