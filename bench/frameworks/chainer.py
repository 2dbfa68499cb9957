"""Chainer 7.8 (CuPy on GPU): the three tasks of TASKS.md.

Same sections as bench/frameworks/pytorch.py:
  1. framework and device: init_device, set_seed, synchronize, versions, data_format,
     count_params, conventions, numerics, get_weights, set_weights, peak_device_memory
  2. CNN  3. RNN  4. ResNet-50

Canonical weights (bench/canonical.py, `python -m bench equivalence`), read in Chainer 7.8's source:
  - L.Convolution2D W is OIHW, L.Linear W is (out, in) and flattens NCHW in (c, h, w) order: the
    canonical layouts as they are.
  - L.NStepGRU holds six W and six b per layer (links/rnn/n_step_rnn.py: w0..w5 (out, in),
    b0..b5); functions/rnn/n_step_gru.py: r = sigmoid(W0 x + W3 h + b0 + b3),
    z = sigmoid(W1 x + W4 h + b1 + b4), h' = tanh(W2 x + b2 + r * (W5 h + b5)),
    h = (1 - z) h' + z h: the cuDNN formulation, gates (r, z, n), so weight_ih = [w0; w1; w2],
    weight_hh = [w3; w4; w5], bias_ih = [b0; b1; b2], bias_hh = [b3; b4; b5].
  - L.ResNet50Layers (links/model/vision/resnet.py): res2..res5 are torchvision's layer1..layer4,
    bottleneck a/b1/b2.. its blocks 0/1/2.., conv1..conv3/bn1..bn3 the same, conv4/bn4 the
    downsample; only the stem conv1 carries a bias (the bottlenecks' convs are nobias=True), held
    at zero. It is another function than torchvision's by design: the stride 2 of a stage's first
    bottleneck on the 1x1 conv1 (downsample_fb=False, the MSRA original), BatchNormalization's
    eps 2e-5, and pool1 a 3x3/2 max pooling with no padding and cover_all (windows start at 0).

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

Mode (bench/modes.py), set in init_device, from Chainer's "Performance Best Practices"
(docs.chainer.org/en/stable/performance.html); conventions()["mode"] names each switch and each
documented one left off, with why:
  - tuned: chainer.config.type_check = False around the model's calls ("Fine-Tune
    Configuration": skip the input checks of every function, for well-tested code; the fidelity
    suite and the equivalence check are that test), for every task on a GPU and for the RNN on
    this CPU (TYPE_CHECK_OFF: the CNN measured slower here, ResNet-50 not measured). The
    reference keeps it as imported (on).
  - tuned on a GPU: chainer.backends.cuda.set_max_workspace_size(1 GiB) ("Workspace Size": a larger
    limit lets the autotuner, on in the reference, choose faster algorithms); not measured on a GPU.
  - left off: iDeep (chainer.config.use_ideep, the CPU acceleration): ideep4py has no wheel for
    this Python; cudnn_fast_batch_normalization: no batch norm in the CNN or the RNN, and ResNet-50
    runs inference, where Chainer does not use it; the other GPU-only switches on a CPU.
  Measured on this CPU, 2026-12-01 (one process, modes alternating, fresh models, one batch an
  epoch, 2 epochs, the steady epoch; 3 rounds, medians): RNN tuned/reference 0.89x (35.1 s against
  39.3 s a batch; paired 0.37x, 0.92x, 0.89x), CNN 1.36x (25.0 s against 18.4 s; paired 1.96x,
  1.36x, 1.03x). The shared 2-core machine ran at a load of 15-20: the tasks' times moved far more
  than the switch can. What it saves, timed alone: about 60 of 490 us per function call (F.relu
  on a 2x3 array, type_check on against off), under 1 % of an RNN batch here (a few thousand
  calls) and less for the CNN and ResNet-50. It cannot add work (the check is skipped); its
  reason, Python overhead per call, weighs more on a GPU, where kernels are short; not measured
  on a GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from chainer import optimizers

from bench import modes, precisions
from bench.errors import DeviceUnavailable, UnsupportedPrecision
from bench.runner import batches_of

NAME = "chainer"
# What cuBLAS and cuDNN see: NVIDIA_TF32_OVERRIDE as it was when CuPy loaded them (the harness
# sets it before this file is imported); a later change is not assumed to reach them.
_TF32_OVERRIDE_AT_IMPORT = os.environ.get(precisions.TF32_OVERRIDE_VARIABLE)
CUPY_TF32 = "CUPY_TF32"  # CuPy: 1 lets cuBLAS use TF32 for float32 matmuls (GPU 8.0+)
# What init_device set last (precision and mode), for build_*, training and numerics.
_run = {"precision": precisions.DEFAULT, "mixed16": False, "capability": None, "mode": modes.DEFAULT}
_TYPE_CHECK_AT_IMPORT = chainer.global_config.type_check  # CHAINER_TYPE_CHECK, default on
# tuned: the tasks whose functions run with chainer.config.type_check False, by device (measured
# on this CPU: the module docstring; the CNN measured slower, ResNet-50 not measured)
TYPE_CHECK_OFF = {"cpu": ("rnn",), "gpu": ("cnn", "rnn", "resnet50")}
# tuned on a GPU: cuDNN's workspace limit (Chainer's default 8 MiB) raised so that the
# autotuner may pick the faster, memory-hungry convolution algorithms (Performance Best Practices)
TUNED_WORKSPACE_BYTES = 1 << 30


@dataclass
class Model:
    net: chainer.Chain
    optimizer: chainer.Optimizer | None
    device: chainer.backend.Device
    frozen: tuple = ()  # parameter names that feature extraction does not train or use
    compute: chainer.Chain | None = None  # amp-fp16 ResNet-50: the mixed16 copy that computes
    type_check: bool = True  # tuned: False, the functions' input checks skipped


# ---------------------------------------------------------------- 1. framework and device

def _capability() -> tuple:
    """The GPU's compute capability (major, minor), as CuPy reports it ("80" for 8.0)."""
    digits = str(chainer.backends.cuda.cupy.cuda.Device(0).compute_capability)
    return int(digits[:-1]), int(digits[-1])


def init_device(device: str, precision: str, mode: str = modes.DEFAULT) -> chainer.backend.Device:
    modes.check_name(mode)
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
        _run.setdefault("reference_workspace", chainer.backends.cuda.get_max_workspace_size())
        chainer.backends.cuda.set_max_workspace_size(
            TUNED_WORKSPACE_BYTES if mode == "tuned" else _run["reference_workspace"])
    else:
        dev = chainer.get_device("@numpy")
    if precision == "amp-fp16":
        chainer.global_config.dtype = chainer.mixed16  # before any link is built
    _run.update(precision=precision, mixed16=precision == "amp-fp16", capability=capability, mode=mode)
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


def _type_check(task: str, dev: chainer.backend.Device) -> bool:
    """chainer.config.type_check for this task's functions: off where tuned turns it off."""
    off = _run["mode"] == "tuned" and task in TYPE_CHECK_OFF["cpu" if dev.xp is np else "gpu"]
    return bool(_TYPE_CHECK_AT_IMPORT) and not off


def _checks(model: Model):
    return chainer.using_config("type_check", model.type_check)


def _mode_state(task: str, on_gpu: bool) -> dict:
    """What tuned turns on beyond the reference, and the documented switches it leaves off, why."""
    if _run["mode"] != "tuned":
        return modes.state(_run["mode"])
    switches, off = [], {}
    if task in TYPE_CHECK_OFF["gpu" if on_gpu else "cpu"]:
        switches.append("chainer.config.type_check = False: Chainer skips its type checks of every "
                        "function's inputs (Performance Best Practices, Fine-Tune Configuration)")
    elif task == "cnn":
        off["chainer.config.type_check"] = (
            "False measured slower on this CPU (2026-12-01): steady epoch 1.36x the reference "
            "(median of 3; a load of 15-20 on 2 cores, far noisier than the switch); kept on a GPU")
    else:
        off["chainer.config.type_check"] = (
            "False not measured on this CPU (a ResNet-50 batch took about 6 minutes here under load); "
            "kept on a GPU")
    off["chainer.static_graph"] = ("static subgraph optimization: documented as experimental and not "
                                   "among the Performance Best Practices; not tried")
    if task == "resnet50":
        off["chainer.config.cudnn_fast_batch_normalization"] = (
            "used only in training (batch_normalization.py: not inference); the task is inference")
    else:
        off["chainer.config.cudnn_fast_batch_normalization"] = "no batch normalization in the model"
    if on_gpu:
        switches.append(f"chainer.backends.cuda.set_max_workspace_size({TUNED_WORKSPACE_BYTES}) "
                        "(1 GiB; Chainer's default 8 MiB): the autotuner may pick convolution "
                        "algorithms that need more workspace (Performance Best Practices, Workspace "
                        "Size); not measured on a GPU")
        off["chainer.config.use_ideep"] = "iDeep: CPU only"
    else:
        off["chainer.config.use_ideep"] = (
            "iDeep: ideep4py's last release (2.0.0.post3, 2019) has wheels for CPython up to 3.7 and "
            "no source distribution; this environment is Python 3.11")
        off["chainer.backends.cuda.set_max_workspace_size"] = "cuDNN workspace: GPU only"
        off["chainer.config.autotune"] = "cuDNN autotune: GPU only (the reference sets it on a GPU)"
        off["MKL-linked NumPy"] = ("the environment's NumPy, not the framework file's code: this NumPy "
                                   "links OpenBLAS")
    return modes.state("tuned", switches=switches, not_applied=off)


def conventions(task: str, dev: chainer.backend.Device) -> dict:
    on_gpu = dev.xp is not np
    fast = ["cuDNN autotune"] if on_gpu else []
    mode = _mode_state(task, on_gpu)
    if task == "cnn":
        return {"layout": "NCHW", "init": "GlorotUniform weights, zero biases", "fast_path": fast,
                "mode": mode}
    if task == "rnn":
        return {"gru_bias": "two vectors per gate (NStepGRU, cuDNN layout)", "gru_biases": 600,
                "gru_kernel": "cuDNN" if on_gpu else "NStepGRU on NumPy",
                # optimizers/adam.py: alpha_t carries the bias corrections, eps is added to sqrt(v)
                "adam_epsilon": "sqrt(v) + eps, bias correction in the step size (Kingma & Ba epsilon hat)",
                "adam_embedding_v": "square of the row's gradient (dense)",
                "fast_path": fast, "mode": mode}
    return {"resnet_conv_bias": False, "weights": "random (HeNormal)",
            "source": "chainer.links.ResNet50Layers(pretrained_model=None), features at pool5; "
                      "fc6 unused and conv1's bias held at zero",
            # links/model/vision/resnet.py: BottleneckA(downsample_fb=False) puts the stride on
            # conv1 (1x1); BatchNormalization(eps=2e-5); pool1 max_pooling_2d(ksize=3, stride=2)
            # (pad 0, cover_all=True)
            "resnet_stride": "1x1 (original paper, v1)", "bn_epsilon": 2e-5,
            "pool1": "max 3x3, stride 2, padding 0, cover_all", "fast_path": fast, "mode": mode}


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


def get_weights(model: Model, task: str) -> dict:
    """The model's weights in the canonical layout of bench/canonical.py, float32 NumPy arrays
    (a float16 parameter's float32 master copy where the optimizer keeps one)."""
    return {name: np.asarray(value, dtype=np.float32)
            for name, value in _WEIGHTS[task][0](model.net).items()}


def set_weights(model: Model, task: str, weights: dict) -> None:
    """Load canonical weights (bench/canonical.py) into the model (and its mixed16 copy); the
    optimizer's state (momentum, Adam's moments and step count, float32 masters) is cleared, so
    training starts from these weights afresh."""
    targets = _WEIGHTS[task][1](model.net)  # [(canonical name, the array written, the conversion)]
    names = {name for name, _, _ in targets}
    missing = sorted(names - set(weights))
    extra = sorted(set(weights) - names)
    if missing or extra:
        raise ValueError(f"{NAME} set_weights({task!r}): missing {missing[:5]}, "
                         f"not in the layout {extra[:5]}")
    for name, array, convert in targets:
        value = convert(np.asarray(weights[name], dtype=np.float32))
        if value.shape != array.shape:
            raise ValueError(f"{NAME} set_weights({task!r}): {name} gives shape {value.shape}, "
                             f"the model's is {array.shape}")
        array[...] = model.device.send(value.astype(array.dtype))
    if task == "resnet50":
        for _, conv, _, _, _ in _resnet50_layers(model.net):
            if conv.b is not None:
                conv.b.array[...] = 0  # the canonical ResNet-50 has no conv bias
        if model.compute is not None:
            model.compute.copyparams(model.net)  # the mixed16 copy that computes
    if model.optimizer is not None:
        model.optimizer.t = 0
        for param in model.net.params():
            rule = param.update_rule
            if rule is not None:
                rule._state, rule.t, rule._fp32_param = None, 0, None  # remade at the next update


def peak_device_memory(dev: chainer.backend.Device) -> dict | None:
    """CuPy keeps no peak: the bytes its memory pool holds (in use and cached; the pool gives
    nothing back unless told), which is at least the peak in use since the process began. None
    on a CPU."""
    if dev.xp is np:
        return None
    import cupy

    return {"peak_bytes": int(cupy.get_default_memory_pool().total_bytes()),
            "counter": "cupy.get_default_memory_pool().total_bytes()",
            "scope": "since the process began (the pool's held bytes)"}


def _host(array) -> np.ndarray:
    return np.array(chainer.backends.cuda.to_cpu(array))  # a copy on the host


def _value(param: chainer.Parameter) -> np.ndarray:
    """A parameter's value on the host: its float32 master where the optimizer keeps one."""
    rule = getattr(param, "update_rule", None)
    master = getattr(rule, "_fp32_param", None) if rule is not None else None
    return _host((master if master is not None else param).array)


def _same(value: np.ndarray) -> np.ndarray:
    return value


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
    return Model(net, optimizer, dev, type_check=_type_check("cnn", dev))


def _cnn_params(net: CNN) -> dict:
    """Canonical name -> the parameter: Convolution2D W is OIHW, Linear W (out, in), and fc1
    flattens the NCHW conv output in (c, h, w) order, as the canonical layout does."""
    out = {}
    for name in ("conv1", "conv2", "conv3", "conv4", "fc1", "fc2"):
        layer = getattr(net, name)
        out[f"{name}.weight"], out[f"{name}.bias"] = layer.W, layer.b
    return out


def _cnn_weights(net: CNN) -> dict:
    return {name: _value(param) for name, param in _cnn_params(net).items()}


def _set_cnn_weights(net: CNN) -> list:
    """[(canonical name, the array it is written into, canonical -> Chainer layout)]."""
    return [(name, param.array, _same) for name, param in _cnn_params(net).items()]


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
        with _checks(model):
            model.optimizer.update(lossfun)
        total = total + losses[0]  # a device array: no sync per step
    return float(total) / len(batches)


def _predict(model: Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    with chainer.using_config("train", False), chainer.no_backprop_mode(), _checks(model):
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
    return Model(net, optimizer, dev, type_check=_type_check("rnn", dev))


def _rnn_weights(net: GRUClassifier) -> dict:
    """NStepGRU's six W (H, in) and six b (H,) of its one layer stacked into cuDNN's (r, z, n)
    blocks: w0..w2 / b0..b2 act on the input, w3..w5 / b3..b5 on the hidden state."""
    w = [_value(p) for p in net.gru.ws[0]]
    b = [_value(p) for p in net.gru.bs[0]]
    return {"embedding.weight": _value(net.embedding.W),
            "gru.weight_ih": np.concatenate(w[0:3]), "gru.weight_hh": np.concatenate(w[3:6]),
            "gru.bias_ih": np.concatenate(b[0:3]), "gru.bias_hh": np.concatenate(b[3:6]),
            "fc.weight": _value(net.dense.W), "fc.bias": _value(net.dense.b)}


def _gate(index: int):
    """Canonical (3H, ...) -> the index-th gate's (H, ...) block (0 r, 1 z, 2 n)."""
    return lambda value: value.reshape((3, -1) + value.shape[1:])[index]


def _set_rnn_weights(net: GRUClassifier) -> list:
    """[(canonical name, the array written, the conversion)]: each canonical GRU array split by
    gate into NStepGRU's w0..w5 / b0..b5."""
    out = [("embedding.weight", net.embedding.W.array, _same),
           ("fc.weight", net.dense.W.array, _same), ("fc.bias", net.dense.b.array, _same)]
    for kind, first in (("ih", 0), ("hh", 3)):
        for gate in range(3):
            out.append((f"gru.weight_{kind}", net.gru.ws[0][first + gate].array, _gate(gate)))
            out.append((f"gru.bias_{kind}", net.gru.bs[0][first + gate].array, _gate(gate)))
    return out


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
    return Model(net, None, dev, frozen=("/fc6/", "/conv1/b"), compute=compute,
                 type_check=_type_check("resnet50", dev))


def _resnet50_layers(net: L.ResNet50Layers) -> list:
    """[(torchvision conv name, Convolution2D, torchvision batch-norm name, BatchNormalization,
    Chainer's path of the conv)] by structure: conv1/bn1, then res2..res5 = layer1..layer4,
    whose bottlenecks a, b1, b2, ... are blocks 0, 1, 2, ...; a bottleneck's conv1..conv3 and
    bn1..bn3 keep their names and BottleneckA's shortcut conv4/bn4 is the downsample (.0 the
    conv, .1 the batch norm)."""
    out = [("conv1", net.conv1, "bn1", net.bn1, "/conv1")]
    for stage in range(1, 5):
        block = getattr(net, f"res{stage + 1}")
        for index, name in enumerate(block._forward):  # ["a", "b1", "b2", ...], the order it runs
            bottleneck = getattr(block, name)
            prefix, path = f"layer{stage}.{index}", f"/res{stage + 1}/{name}"
            for i in (1, 2, 3):
                out.append((f"{prefix}.conv{i}", getattr(bottleneck, f"conv{i}"),
                            f"{prefix}.bn{i}", getattr(bottleneck, f"bn{i}"), f"{path}/conv{i}"))
            if hasattr(bottleneck, "conv4"):
                out.append((f"{prefix}.downsample.0", bottleneck.conv4,
                            f"{prefix}.downsample.1", bottleneck.bn4, f"{path}/conv4"))
    return out


def _resnet50_weights(net: L.ResNet50Layers) -> dict:
    """Canonical (torchvision) name -> value; ValueError when a conv bias is not zero (Chainer's
    conv1 has one: only at zero is it the canonical function)."""
    out = {}
    for conv_name, conv, bn_name, bn, path in _resnet50_layers(net):
        if conv.b is not None:
            bias = _host(conv.b.array)
            if np.any(bias != 0):
                raise ValueError(f"{NAME} ResNet-50 {conv_name} (Chainer's {path}/b) has a conv "
                                 f"bias that is not zero (largest |b| {float(np.max(np.abs(bias))):.3g}): "
                                 "not the canonical function, which has no conv bias")
        out[f"{conv_name}.weight"] = _value(conv.W)
        out[f"{bn_name}.weight"], out[f"{bn_name}.bias"] = _value(bn.gamma), _value(bn.beta)
        out[f"{bn_name}.running_mean"] = _host(bn.avg_mean)
        out[f"{bn_name}.running_var"] = _host(bn.avg_var)
    return out


def _set_resnet50_weights(net: L.ResNet50Layers) -> list:
    """[(canonical name, the array written, the conversion)]: Convolution2D W is OIHW as in
    torchvision; BatchNormalization gamma, beta, avg_mean, avg_var are weight, bias,
    running_mean, running_var."""
    out = []
    for conv_name, conv, bn_name, bn, _ in _resnet50_layers(net):
        out += [(f"{conv_name}.weight", conv.W.array, _same),
                (f"{bn_name}.weight", bn.gamma.array, _same), (f"{bn_name}.bias", bn.beta.array, _same),
                (f"{bn_name}.running_mean", bn.avg_mean, _same),
                (f"{bn_name}.running_var", bn.avg_var, _same)]
    return out


# task -> (get: the canonical weights, set: where each canonical array goes)
_WEIGHTS = {"cnn": (_cnn_weights, _set_cnn_weights), "rnn": (_rnn_weights, _set_rnn_weights),
            "resnet50": (_resnet50_weights, _set_resnet50_weights)}


def extract_features(model: Model, x: np.ndarray) -> np.ndarray:
    net = model.compute or model.net
    with chainer.using_config("train", False), chainer.no_backprop_mode(), _checks(model):
        features = net.forward(model.device.send(x.astype(net.conv1.W.dtype, copy=False)),
                               layers=["pool5"])["pool5"]
        features = _float32(features)  # float32 whatever the compute dtype
    return chainer.backends.cuda.to_cpu(features.array)
