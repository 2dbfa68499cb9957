"""Chainer 7.8 (CuPy on GPU): the three tasks of TASKS.md.

Same sections as bench/frameworks/pytorch.py:
  1. framework and device: init_device, set_seed, synchronize, versions, data_format,
     count_params, conventions, numerics
  2. CNN  3. RNN  4. ResNet-50

Precision (bench/precisions.py) through Chainer's own mechanism, set in init_device:
  - fp32: float32 everywhere; on a GPU TF32 off: CUPY_TF32=0 (CuPy's cuBLAS compute type for
    float32, fixed at its first matmul) and NVIDIA_TF32_OVERRIDE=0 (cuBLAS and cuDNN; the harness
    sets it before the framework is imported). tf32 (GPU 8.0+): CUPY_TF32=1, no override.
  - amp-fp16 (GPU only): chainer.global_config.dtype = chainer.mixed16, so links hold float16
    weights (BatchNormalization float32, Chainer's mixed16 rule) and compute in float16; the
    optimizers keep float32 master weights (optimizer.use_fp32_update()) and scale the loss
    dynamically (optimizer.loss_scaling()); the logits are cast to float32 before the loss.
    ResNet-50 (no optimizer) keeps float32 weights and computes with a mixed16 copy of them.
  - amp-bf16: not possible: NumPy and CuPy have no bfloat16 dtype, so neither has Chainer.
  So on a CPU Chainer runs fp32 only; the other three precisions are skipped with the reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from chainer import optimizers

from bench import precisions
from bench.errors import DeviceUnavailable, UnsupportedPrecision
from bench.runner import batches_of

NAME = "chainer"
# What cuBLAS and cuDNN see: NVIDIA_TF32_OVERRIDE as it was when CuPy loaded them (the harness
# sets it before this file is imported); a later change is not assumed to reach them.
_TF32_OVERRIDE_AT_IMPORT = os.environ.get(precisions.TF32_OVERRIDE_VARIABLE)
CUPY_TF32 = "CUPY_TF32"  # CuPy: 1 lets cuBLAS use TF32 for float32 matmuls (GPU 8.0+)
# One process runs one precision: what init_device set, for build_*, training and numerics.
_run = {"precision": precisions.DEFAULT, "mixed16": False, "capability": None}


@dataclass
class Model:
    net: chainer.Chain
    optimizer: chainer.Optimizer | None
    device: chainer.backend.Device
    frozen: tuple = ()  # parameter names that feature extraction does not train or use
    compute: chainer.Chain | None = None  # amp-fp16 ResNet-50: the mixed16 copy that computes


# ---------------------------------------------------------------- 1. framework and device

def _capability() -> tuple:
    """The GPU's compute capability (major, minor), as CuPy reports it ("80" for 8.0)."""
    digits = str(chainer.backends.cuda.cupy.cuda.Device(0).compute_capability)
    return int(digits[:-1]), int(digits[-1])


def init_device(device: str, precision: str) -> chainer.backend.Device:
    if device == "gpu" and not chainer.backends.cuda.available:
        raise DeviceUnavailable(
            f"no GPU found: CuPy is missing or sees no CUDA device (chainer {chainer.__version__}; "
            "GPU images install cupy-cudaXXx); check the driver and nvidia-smi, or run with "
            "--device cpu")
    capability = _capability() if device == "gpu" else None
    reason = precisions.skip_reason(precision, device, capability, NAME)
    if reason:
        raise UnsupportedPrecision(reason)
    if precision == "amp-bf16":
        raise UnsupportedPrecision(
            f"{NAME} {chainer.__version__}: no bfloat16 dtype (NumPy {np.__version__} and CuPy have "
            f"none, so Chainer's links, functions and mixed16 mode cannot hold bf16) on the {device}; "
            "run fp32" + (" or amp-fp16" if device == "gpu" else ""))
    if device == "gpu":
        if precision == "tf32" and _TF32_OVERRIDE_AT_IMPORT == "0":
            raise UnsupportedPrecision(
                f"{NAME}: {precisions.TF32_OVERRIDE_VARIABLE}=0 was set when CuPy loaded cuBLAS and "
                "cuDNN: it forbids TF32 whatever CuPy asks; unset it for a tf32 run")
        # Read by CuPy at its first float32 matmul (cupy._core._routines_linalg.get_compute_type).
        os.environ[CUPY_TF32] = "1" if precision == "tf32" else "0"
        dev = chainer.get_device("@cupy:0")
        dev.use()
        chainer.config.autotune = True  # cuDNN autotune, as TASKS.md asks
        chainer.config.use_cudnn = "always"
    else:
        dev = chainer.get_device("@numpy")
    if precision == "amp-fp16":
        chainer.global_config.dtype = chainer.mixed16  # before any link is built
    _run.update(precision=precision, mixed16=precision == "amp-fp16", capability=capability)
    return dev


def set_seed(seed: int) -> None:
    """Chainer's initializers draw from NumPy's global generator (every link is built on the
    host, then sent to the device); CuPy's is seeded too for anything drawn on a GPU."""
    np.random.seed(seed)
    if chainer.backends.cuda.available:
        chainer.backends.cuda.cupy.random.seed(seed)


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


def _one(dtypes) -> str:
    """The dtype a set of arrays share ("mixed(...)" when they do not)."""
    names = sorted({np.dtype(d).name for d in dtypes})
    return names[0] if len(names) == 1 else f"mixed({', '.join(names)})"


def _cublas_float32_compute_type():
    """CuPy's cuBLAS compute type for float32 matmuls, as CuPy reports it (None on a CPU or when
    this CuPy has no such report)."""
    try:
        from cupy._core import _routines_linalg
        return str(_routines_linalg.compute_type_to_str(_routines_linalg.get_compute_type(np.float32)))
    except (ImportError, AttributeError):
        return None


def numerics(task: str, model: Model, dev: chainer.backend.Device) -> dict:
    """What is set for this model, read back from Chainer (and CuPy on a GPU): the dtype of the
    weights the layers compute with, the master weights the optimizer updates (a float16
    parameter's update rule with use_fp32_update keeps a float32 copy), the optimizer's loss
    scaling and, on a GPU, CuPy's cuBLAS compute type and the TF32 override."""
    precision = _run["precision"]
    used = [(name, p) for name, p in (model.compute or model.net).namedparams()
            if not any(name.startswith(f) for f in model.frozen)]
    compute_dtype = _one(p.dtype for name, p in used if not name.endswith(("/gamma", "/beta")))
    masters = []
    for name, p in model.net.namedparams():
        if any(name.startswith(f) for f in model.frozen):
            continue
        rule = getattr(p, "update_rule", None)
        fp32_update = rule is not None and getattr(rule, "_use_fp32_update", False)
        masters.append(np.float32 if p.dtype == np.float16 and fp32_update else p.dtype)
    norm = [p.dtype for name, p in used if name.endswith(("/gamma", "/beta"))]
    switches = {
        "chainer.config.dtype": repr(chainer.config.dtype),
        "compute weights dtype (all but BatchNormalization)": compute_dtype,
        "BatchNormalization gamma/beta dtype": _one(norm) if norm else None,
    }
    read_back = ["compute_dtype", "param_dtype"]
    mechanism = []
    if _run["mixed16"]:
        mechanism.append("chainer.global_config.dtype = chainer.mixed16: float16 weights and compute "
                         "(BatchNormalization float32)" + ("; logits cast to float32 before the loss"
                                                          if model.optimizer is not None else ""))
    else:
        mechanism.append("chainer.config.dtype float32: float32 weights and compute")
    if model.optimizer is not None:
        opt = model.optimizer
        dynamic = bool(getattr(opt, "_loss_scaling_is_dynamic", False))
        scale = getattr(opt, "_loss_scale", None)
        loss_scaling = "dynamic" if dynamic else ("static" if scale is not None else "none")
        loss_scaler = (f"chainer.optimizers.{type(opt).__name__}.loss_scaling()"
                       if loss_scaling != "none" else None)
        read_back.append("loss_scaling")
        switches["optimizer"] = type(opt).__name__
        switches["optimizer loss scale (dynamic)" if dynamic else "optimizer loss scale"] = scale
        switches["update_rule.use_fp32_update"] = sorted(
            {bool(getattr(p.update_rule, "_use_fp32_update", False)) for p in model.net.params()})
        if _run["mixed16"]:
            mechanism.append("optimizer.use_fp32_update() (float32 master weights, made from the float16 "
                             "initial weights at the first update); optimizer.loss_scaling() (dynamic: "
                             "starts at 1, doubles each step until gradients overflow, then halves on an "
                             "overflow and grows by 2**(1/1000) a step; a step whose gradients are not "
                             "finite is skipped); the loss returned is the unscaled loss")
    else:  # ResNet-50 features: inference, no loss and no optimizer; the precision's rule stated
        loss_scaling, loss_scaler = precisions.LOSS_SCALING[precision], None
        mechanism.append("inference only: no loss to scale")
        if model.compute is not None:
            mechanism.append("float32 weights (model.net) copied into a mixed16 copy that computes "
                             "(Link.copyparams), features cast to float32")
    tf32 = False  # a CPU has no TF32
    if dev.xp is not np:
        compute_type = _cublas_float32_compute_type()
        cudnn_may_tf32 = _TF32_OVERRIDE_AT_IMPORT != "0"
        switches["cupy cuBLAS float32 compute type"] = compute_type
        switches[CUPY_TF32] = os.environ.get(CUPY_TF32)
        switches[f"{precisions.TF32_OVERRIDE_VARIABLE} (when CuPy was imported)"] = _TF32_OVERRIDE_AT_IMPORT
        switches["compute capability"] = list(_run["capability"])
        ampere = tuple(_run["capability"]) >= precisions.TF32_MIN_CAPABILITY
        tf32 = ampere and (compute_type == "COMPUTE_TYPE_TF32" or cudnn_may_tf32)
        if compute_type is not None:
            read_back.append("tf32")
        mechanism.append(f"{CUPY_TF32}={os.environ.get(CUPY_TF32)} (cuBLAS: {compute_type}); "
                         f"{precisions.TF32_OVERRIDE_VARIABLE}={_TF32_OVERRIDE_AT_IMPORT} for cuBLAS "
                         "and cuDNN (convolutions and RNNs)")
    return precisions.state(
        precision, tf32=tf32, compute_dtype=compute_dtype, param_dtype=_one(masters),
        loss_scaling=loss_scaling, loss_scaler=loss_scaler, mechanism="; ".join(mechanism),
        read_back=read_back, switches=switches)


def _optimizer(optimizer: chainer.Optimizer, net: chainer.Chain) -> chainer.Optimizer:
    optimizer.setup(net)
    if _run["mixed16"]:
        optimizer.use_fp32_update()  # float32 master weights for the float16 parameters
        optimizer.loss_scaling()  # dynamic loss scaling
    return optimizer


def _float32(logits):
    """The loss and its softmax in float32 whatever the compute dtype."""
    return F.cast(logits, np.float32) if logits.dtype != np.float32 else logits


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
        if _run["mixed16"]:
            x = F.cast(x, chainer.get_dtype())  # mixed16: the float16 compute dtype
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
    optimizer = _optimizer(optimizers.MomentumSGD(lr=spec.lr, momentum=spec.momentum), net)
    return Model(net, optimizer, dev)


def train_cnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_cnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


def _train_epoch(model: Model, batches) -> float:
    total = 0.0
    for x, y in batches:
        losses = []

        def lossfun():
            loss = F.softmax_cross_entropy(_float32(model.net(model.device.send(x))), model.device.send(y))
            losses.append(loss.array)  # the unscaled loss
            return loss

        # cleargrads, backward (with the optimizer's loss scale, if any), update: Chainer's own step
        model.optimizer.update(lossfun)
        total = total + losses[0]  # a device array: no sync per step
    return float(total) / len(batches)


def _predict(model: Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        logits = [chainer.backends.cuda.to_cpu(_float32(model.net(model.device.send(xb))).array)
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
    optimizer = _optimizer(optimizers.Adam(alpha=spec.lr, beta1=spec.beta1, beta2=spec.beta2,
                                           eps=spec.epsilon), net)
    return Model(net, optimizer, dev)


def train_rnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_rnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


# ---------------------------------------------------------------- 4. ResNet-50

def build_resnet50(spec, dev: chainer.backend.Device) -> Model:
    with chainer.using_config("dtype", np.dtype(np.float32)):  # float32 weights in every precision
        net = L.ResNet50Layers(pretrained_model=None)
    # conv1 carries a bias in Chainer's layout: held at zero it is the no-bias ImageNet layout.
    net.conv1.b.array[...] = 0
    compute = None
    if _run["mixed16"]:  # no optimizer to keep master weights: the mixed16 copy computes
        compute = L.ResNet50Layers(pretrained_model=None)  # float16 weights, float32 BatchNormalization
        compute.copyparams(net)
        compute.to_device(dev)
    net.to_device(dev)
    return Model(net, None, dev, frozen=("/fc6/", "/conv1/b"), compute=compute)


def extract_features(model: Model, x: np.ndarray) -> np.ndarray:
    net = model.compute or model.net
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        features = net.forward(model.device.send(x.astype(net.conv1.W.dtype, copy=False)),
                               layers=["pool5"])["pool5"]
        features = _float32(features)  # float32 whatever the compute dtype
    return chainer.backends.cuda.to_cpu(features.array)
