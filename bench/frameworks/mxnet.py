"""MXNet 1.9 through Gluon, hybridized: the three tasks of TASKS.md.

Same sections as bench/frameworks/pytorch.py:
  1. framework and device  2. CNN  3. RNN  4. ResNet-50
"""
from __future__ import annotations

from dataclasses import dataclass

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn, rnn
from mxnet.gluon.model_zoo import vision

from bench.errors import DeviceUnavailable, UnsupportedPrecision
from bench.runner import batches_of

NAME = "mxnet"


@dataclass
class Model:
    net: gluon.HybridBlock
    trainer: gluon.Trainer | None
    ctx: mx.Context


# ---------------------------------------------------------------- 1. framework and device

def init_device(device: str, precision: str) -> mx.Context:
    if precision != "fp32":
        raise UnsupportedPrecision(f"{NAME} runs fp32 only (asked for {precision})")
    if device == "gpu":
        if mx.context.num_gpus() == 0:
            cuda = mx.runtime.Features().is_enabled("CUDA")
            raise DeviceUnavailable(
                f"no GPU found: mx.context.num_gpus() is 0 (mxnet {mx.__version__}, "
                f"{'built with' if cuda else 'built without'} CUDA; GPU images install "
                "mxnet-cuXXX); check the driver and nvidia-smi, or run with --device cpu")
        return mx.gpu(0)
    return mx.cpu()


def synchronize(ctx: mx.Context) -> None:
    nd.waitall()


def versions(ctx: mx.Context) -> dict:
    features = mx.runtime.Features()
    # MXNet exposes what it was built with, not the CUDA/cuDNN version numbers.
    return {
        "framework_version": mx.__version__,
        "cuda": "enabled" if features.is_enabled("CUDA") else None,
        "cudnn": "enabled" if features.is_enabled("CUDNN") else None,
        "gpu": f"gpu({ctx.device_id})" if ctx.device_type == "gpu" else None,
    }


def data_format(ctx: mx.Context) -> str:
    return "NCHW"


def count_params(model: Model) -> int:
    return sum(p.data().size for p in model.net.collect_params().values() if p.grad_req != "null")


def conventions(task: str, ctx: mx.Context) -> dict:
    fast = ["hybridize(static_alloc=True, static_shape=True)"]
    if task == "cnn":
        return {"layout": "NCHW", "init": "Xavier uniform (Glorot) weights, zero biases", "fast_path": fast}
    if task == "rnn":
        return {"gru_bias": "two vectors per gate (i2h and h2h, cuDNN layout)", "gru_biases": 600,
                "gru_kernel": "cuDNN (fused RNN op)" if ctx.device_type == "gpu" else "fused RNN op (CPU)",
                "fast_path": fast}
    return {"resnet_conv_bias": False, "weights": "random",
            "source": "gluon.model_zoo.vision.resnet50_v1 features + Flatten; the zoo's 1x1 "
                      "bottleneck conv biases held at zero and frozen", "fast_path": fast}


# ---------------------------------------------------------------- 2. CNN

def build_cnn(spec, ctx: mx.Context) -> Model:
    c1, c2, c3, c4 = spec.conv_channels
    k, channels = spec.kernel_size, spec.image_shape[0]
    same = k // 2
    net = nn.HybridSequential()
    net.add(
        nn.Conv2D(c1, k, padding=same, in_channels=channels), nn.Activation("relu"),
        nn.Conv2D(c2, k, padding=same, in_channels=c1), nn.MaxPool2D(2, 2), nn.Activation("relu"),
        nn.Dropout(spec.conv_dropout),
        nn.Conv2D(c3, k, padding=same, in_channels=c2), nn.Activation("relu"),
        nn.Conv2D(c4, k, padding=same, in_channels=c3), nn.MaxPool2D(2, 2), nn.Activation("relu"),
        nn.Dropout(spec.conv_dropout),
        nn.Flatten(),
        nn.Dense(spec.dense_units, in_units=spec.flat_features), nn.Activation("relu"),
        nn.Dropout(spec.dense_dropout),
        nn.Dense(spec.classes, in_units=spec.dense_units),
    )
    # Glorot uniform = Xavier uniform with the average fan and magnitude 3; biases start at zero.
    net.initialize(mx.init.Xavier(rnd_type="uniform", factor_type="avg", magnitude=3), ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd",
                            {"learning_rate": spec.lr, "momentum": spec.momentum})
    return Model(net, trainer, ctx)


def train_cnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_cnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


_loss = gluon.loss.SoftmaxCrossEntropyLoss()


def _train_epoch(model: Model, batches) -> float:
    total = nd.zeros((1,), ctx=model.ctx)
    for x, y in batches:
        data = nd.array(x, ctx=model.ctx)
        label = nd.array(y, ctx=model.ctx)
        with autograd.record():  # training mode: dropout active
            loss = _loss(model.net(data), label)
        loss.backward()
        model.trainer.step(len(x))  # gradient of the batch mean
        total += loss.mean()  # stays on the device: no sync per step
    return float(total.asscalar()) / len(batches)


def _predict(model: Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    logits = [model.net(nd.array(xb, ctx=model.ctx)).asnumpy() for xb in batches_of(x, batch_size)]
    return np.concatenate(logits)


# ---------------------------------------------------------------- 3. RNN

class GRUClassifier(gluon.HybridBlock):
    def __init__(self, spec):
        super().__init__()
        self.embedding = nn.Embedding(spec.max_features, spec.embedding_dim)
        self.gru = rnn.GRU(spec.gru_units, layout="NTC", input_size=spec.embedding_dim)  # fused/cuDNN
        self.dense = nn.Dense(spec.classes, in_units=spec.gru_units)

    def hybrid_forward(self, F, tokens):
        outputs = self.gru(self.embedding(tokens))
        # The last time step: slice_axis, since SequenceLast after a transpose crashed backward.
        last = F.slice_axis(outputs, axis=1, begin=-1, end=None)
        return self.dense(F.reshape(last, shape=(0, -1)))


def build_rnn(spec, ctx: mx.Context) -> Model:
    net = GRUClassifier(spec)
    net.initialize(ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "adam",
                            {"learning_rate": spec.lr, "beta1": spec.beta1, "beta2": spec.beta2,
                             "epsilon": spec.epsilon})
    return Model(net, trainer, ctx)


def train_rnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_rnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


# ---------------------------------------------------------------- 4. ResNet-50

def build_resnet50(spec, ctx: mx.Context) -> Model:
    zoo = vision.resnet50_v1(pretrained=False)
    net = nn.HybridSequential()
    net.add(zoo.features, nn.Flatten())  # cut after global average pooling: 2,048 features
    net.initialize(ctx=ctx)
    net(nd.zeros((1, *spec.image_shape), ctx=ctx))  # settle deferred shapes
    # The zoo's bottlenecks give their 1x1 convolutions biases (18,880 values); held at zero
    # and frozen, the network is the standard no-bias ImageNet layout of TASKS.md.
    for name, param in net.collect_params().items():
        if name.endswith("bias") and "conv" in name:
            param.set_data(nd.zeros(param.shape, ctx=ctx))
            param.grad_req = "null"
    net.hybridize(static_alloc=True, static_shape=True)
    return Model(net, None, ctx)


def extract_features(model: Model, x: np.ndarray) -> np.ndarray:
    return model.net(nd.array(x, ctx=model.ctx)).asnumpy()
