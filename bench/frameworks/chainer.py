"""Chainer 7.8 (CuPy on GPU): the three tasks of TASKS.md.

Same sections as bench/frameworks/pytorch.py:
  1. framework and device  2. CNN  3. RNN  4. ResNet-50
"""
from __future__ import annotations

from dataclasses import dataclass

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from chainer import optimizers

from bench.errors import DeviceUnavailable, UnsupportedPrecision
from bench.runner import batches_of

NAME = "chainer"


@dataclass
class Model:
    net: chainer.Chain
    optimizer: chainer.Optimizer | None
    device: chainer.backend.Device
    frozen: tuple = ()  # parameter names that feature extraction does not train or use


# ---------------------------------------------------------------- 1. framework and device

def init_device(device: str, precision: str) -> chainer.backend.Device:
    if precision != "fp32":
        raise UnsupportedPrecision(f"{NAME} runs fp32 only (asked for {precision})")
    if device == "gpu":
        if not chainer.backends.cuda.available:
            raise DeviceUnavailable(
                f"no GPU found: CuPy is missing or sees no CUDA device (chainer {chainer.__version__}; "
                "GPU images install cupy-cudaXXx); check the driver and nvidia-smi, or run with "
                "--device cpu")
        dev = chainer.get_device("@cupy:0")
        dev.use()
        chainer.config.autotune = True  # cuDNN autotune, as TASKS.md asks
        chainer.config.use_cudnn = "always"
        return dev
    return chainer.get_device("@numpy")


def synchronize(dev: chainer.backend.Device) -> None:
    if dev.xp is not np:
        dev.device.synchronize()


def versions(dev: chainer.backend.Device) -> dict:
    cuda = cudnn = gpu = None
    if dev.xp is not np:
        import cupy

        runtime = cupy.cuda.runtime.runtimeGetVersion()
        cuda = f"{runtime // 1000}.{runtime % 1000 // 10}"
        cudnn = str(cupy.cuda.cudnn.getVersion())
        gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return {"framework_version": chainer.__version__, "cuda": cuda, "cudnn": cudnn, "gpu": gpu}


def data_format(dev: chainer.backend.Device) -> str:
    return "NCHW"


def count_params(model: Model) -> int:
    return sum(p.size for name, p in model.net.namedparams()
               if not any(name.startswith(f) for f in model.frozen))


def conventions(task: str, dev: chainer.backend.Device) -> dict:
    on_gpu = dev.xp is not np
    fast = ["cuDNN autotune"] if on_gpu else []
    if task == "cnn":
        return {"layout": "NCHW", "init": "GlorotUniform weights, zero biases", "fast_path": fast}
    if task == "rnn":
        return {"gru_bias": "two vectors per gate (NStepGRU, cuDNN layout)", "gru_biases": 600,
                "gru_kernel": "cuDNN" if on_gpu else "NStepGRU on NumPy", "fast_path": fast}
    return {"resnet_conv_bias": False, "weights": "random (HeNormal)",
            "source": "chainer.links.ResNet50Layers(pretrained_model=None), features at pool5; "
                      "fc6 unused and conv1's bias held at zero",
            "fast_path": fast}


# ---------------------------------------------------------------- 2. CNN

class CNN(chainer.Chain):
    def __init__(self, spec):
        super().__init__()
        c1, c2, c3, c4 = spec.conv_channels
        k, channels = spec.kernel_size, spec.image_shape[0]
        self.spec = spec
        glorot = chainer.initializers.GlorotUniform()
        with self.init_scope():  # biases start at zero (Chainer's default)
            self.conv1 = L.Convolution2D(channels, c1, k, pad=k // 2, initialW=glorot)
            self.conv2 = L.Convolution2D(c1, c2, k, pad=k // 2, initialW=glorot)
            self.conv3 = L.Convolution2D(c2, c3, k, pad=k // 2, initialW=glorot)
            self.conv4 = L.Convolution2D(c3, c4, k, pad=k // 2, initialW=glorot)
            self.fc1 = L.Linear(spec.flat_features, spec.dense_units, initialW=glorot)
            self.fc2 = L.Linear(spec.dense_units, spec.classes, initialW=glorot)

    def forward(self, x):
        s = self.spec
        h = F.relu(self.conv1(x))
        h = F.relu(F.max_pooling_2d(self.conv2(h), 2, 2, cover_all=False))
        h = F.dropout(h, s.conv_dropout)  # active only while chainer.config.train is True
        h = F.relu(self.conv3(h))
        h = F.relu(F.max_pooling_2d(self.conv4(h), 2, 2, cover_all=False))
        h = F.dropout(h, s.conv_dropout)
        h = F.relu(self.fc1(h))  # Linear flattens (N, 100, 8, 8) to (N, 6400)
        h = F.dropout(h, s.dense_dropout)
        return self.fc2(h)


def build_cnn(spec, dev: chainer.backend.Device) -> Model:
    net = CNN(spec)
    net.to_device(dev)
    optimizer = optimizers.MomentumSGD(lr=spec.lr, momentum=spec.momentum)
    optimizer.setup(net)
    return Model(net, optimizer, dev)


def train_cnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_cnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


def _train_epoch(model: Model, batches) -> float:
    total = 0.0
    for x, y in batches:
        loss = F.softmax_cross_entropy(model.net(model.device.send(x)), model.device.send(y))
        model.net.cleargrads()
        loss.backward()
        model.optimizer.update()
        total = total + loss.array  # a device array: no sync per step
    return float(total) / len(batches)


def _predict(model: Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        logits = [chainer.backends.cuda.to_cpu(model.net(model.device.send(xb)).array)
                  for xb in batches_of(x, batch_size)]
    return np.concatenate(logits)


# ---------------------------------------------------------------- 3. RNN

class GRUClassifier(chainer.Chain):
    def __init__(self, spec):
        super().__init__()
        with self.init_scope():
            self.embedding = L.EmbedID(spec.max_features, spec.embedding_dim)
            self.gru = L.NStepGRU(1, spec.embedding_dim, spec.gru_units, dropout=0.0)  # cuDNN on GPU
            self.dense = L.Linear(spec.gru_units, spec.classes)

    def forward(self, tokens):
        embedded = self.embedding(tokens)
        last_hidden, _ = self.gru(None, F.separate(embedded, axis=0))
        return self.dense(last_hidden[-1])  # the final hidden state: the last time step's output


def build_rnn(spec, dev: chainer.backend.Device) -> Model:
    net = GRUClassifier(spec)
    net.to_device(dev)
    optimizer = optimizers.Adam(alpha=spec.lr, beta1=spec.beta1, beta2=spec.beta2, eps=spec.epsilon)
    optimizer.setup(net)
    return Model(net, optimizer, dev)


def train_rnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_rnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


# ---------------------------------------------------------------- 4. ResNet-50

def build_resnet50(spec, dev: chainer.backend.Device) -> Model:
    net = L.ResNet50Layers(pretrained_model=None)
    # conv1 carries a bias in Chainer's layout: held at zero it is the no-bias ImageNet layout.
    net.conv1.b.array[...] = 0
    net.to_device(dev)
    return Model(net, None, dev, frozen=("/fc6/", "/conv1/b"))


def extract_features(model: Model, x: np.ndarray) -> np.ndarray:
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        features = model.net.forward(model.device.send(x), layers=["pool5"])["pool5"]
    return chainer.backends.cuda.to_cpu(features.array)
