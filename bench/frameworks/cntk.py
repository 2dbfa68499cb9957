"""CNTK 2.7 (cntk-gpu, CUDA 10.0 / cuDNN 7): the three tasks of TASKS.md, as the original
Rosetta Stone used CNTK (momentum_sgd with unit_gain=False, optimized_rnnstack GRU).

Same sections as bench/frameworks/pytorch.py:
  1. framework and device: init_device, set_seed, synchronize, versions, data_format,
     count_params, conventions, numerics, peak_device_memory
  2. CNN  3. RNN  4. ResNet-50
Container only: CNTK has wheels for Python 3.5-3.7 alone. This file stays valid Python 3.6
(tests/test_cntk_static.py checks it), the harness needs 3.7, so docker/cntk uses 3.7.

Precision (bench/precisions.py): CNTK 2.7 runs fp32 alone, and says why for the others.
- fp32: float32 inputs and parameters (CNTK's default dtype); no TF32 exists for it to turn
  off: cntk-gpu 2.7 is built for CUDA 10.0 / cuDNN 7, which predate TF32.
- tf32: skipped for the same reason, on every GPU.
- amp-fp16: skipped. CNTK's fp16 path (C.default_options(dtype=np.float16), inputs and loss
  cast with C.cast) has no loss scaling at all, dynamic or static, and Trainer.train_minibatch
  applies the update with no way to skip a step whose fp16 gradients overflowed; its learners
  keep fp32 master weights for float16 parameters in momentum_sgd, nesterov and adadelta
  (Learner.cpp), but adam, the RNN's optimizer, has no float16 path (microsoft/CNTK#2941).
  A hand-written scaler would not be CNTK's mechanism.
- amp-bf16: skipped: CNTK has no bfloat16 data type (Float, Double and Float16 only).

Mode (bench/modes.py): tuned switches nothing on and runs the reference code, on every task and
device; conventions["mode"] lists each fast path CNTK 2.7 documents and why it is not a switch
here (NOT_APPLIED). Its cuDNN engine already autotunes every convolution (cudnnFind* at the first
minibatch of each shape) and, with Convolution's max_temp_mem_size_in_samples=0 (the default),
limits no workspace (Source/Math/CuDnnConvolutionEngine.cu, FindBestForwardAlgo); the network is
already a static graph CNTK compiles itself; optimized_rnnstack (the cuDNN GRU) is the reference's
GPU path and has no CPU kernel; half precision is the precision axis, not the mode. Nothing
measured: CNTK does not run here.
"""
import os

import cntk as C
import numpy as np
from cntk.logging import graph as cntk_graph

from bench import modes, precisions
from bench.data import to_one_hot
from bench.errors import DeviceUnavailable, UnsupportedPrecision
from bench.runner import batches_of

NAME = "cntk"
# cntk-gpu 2.7's build: CUDA 10.0 and cuDNN 7 (CNTK does not report them itself)
CUDA_BUILD, CUDNN_BUILD = "10.0", "7"
_run = {"precision": precisions.DEFAULT, "mode": modes.DEFAULT}  # what init_device set last
# Mode "tuned": CNTK's documented fast paths and why none is a switch beyond the reference.
NOT_APPLIED = {
    "cuDNN autotune and workspace": "always on in CNTK: its cuDNN convolution engine runs "
                                    "cudnnFind* for each new shape and, with C.layers.Convolution2D's "
                                    "max_temp_mem_size_in_samples=0 (the default), limits no workspace "
                                    "(Source/Math/CuDnnConvolutionEngine.cu)",
    "graph compilation": "a CNTK network is a static graph that CNTK compiles itself in the reference "
                         "too; there is nothing further to switch on",
    "C.optimized_rnnstack (cuDNN GRU)": "the reference's GPU path already; CNTK has no CPU kernel for "
                                        "it, so the CPU runs C.layers.GRU",
    "C.default_options(dtype=np.float16)": "half precision is the precision axis (--precision), "
                                           "not a mode switch",
}


class Model(object):
    """The network's output function, its inputs and (for training) its Trainer."""

    def __init__(self, z, x, y=None, trainer=None, sparse_tokens=None):
        self.z, self.x, self.y, self.trainer = z, x, y, trainer
        self.sparse_tokens = sparse_tokens  # RNN: the vocabulary size of the one-hot input


# ---------------------------------------------------------------- 1. framework and device

def _capability(gpu):
    """The GPU's compute capability (major, minor) from CNTK's GPUProperties (versionMajor,
    versionMinor in the C++ API); None where the binding does not give it."""
    try:
        props = C.device.get_gpu_properties(gpu)
    except (AttributeError, RuntimeError, ValueError):
        return None
    major = getattr(props, "version_major", getattr(props, "versionMajor", None))
    minor = getattr(props, "version_minor", getattr(props, "versionMinor", None))
    return None if major is None or minor is None else (int(major), int(minor))


def _no_path(precision, device):
    """CNTK 2.7's own reasons (after the device's, bench/precisions.skip_reason)."""
    who = "{} {} on the {}".format(NAME, C.__version__, device.upper())
    if precision == "tf32":
        return ("{}: no tf32: cntk-gpu 2.7 is built for CUDA {} / cuDNN {}, which predate TF32 "
                "(CUDA 11 and cuDNN 8 on compute capability 8.0+); run fp32").format(
                    who, CUDA_BUILD, CUDNN_BUILD)
    if precision == "amp-fp16":
        return ("{}: no amp-fp16: CNTK has no loss scaling (dynamic or static) and "
                "Trainer.train_minibatch applies each update with no way to skip a step whose fp16 "
                "gradients overflowed; its fp16 path (C.default_options(dtype=np.float16)) keeps fp32 "
                "master weights only in momentum_sgd, nesterov and adadelta, and adam (the RNN's "
                "optimizer) has no float16 path (microsoft/CNTK issue 2941); run fp32").format(who)
    if precision == "amp-bf16":
        return ("{}: no amp-bf16: CNTK has no bfloat16 data type (its DataType is Float, Double "
                "or Float16); run fp32").format(who)
    return None


def init_device(device, precision, mode=modes.DEFAULT):
    if device == "gpu":
        gpus = [d for d in C.device.all_devices() if d.type() == C.device.DeviceKind.GPU]
        if not gpus:
            raise DeviceUnavailable(
                "no GPU found: CNTK {} lists no GPU device (cntk-gpu needs CUDA 10.0 and "
                "cuDNN 7); check the driver and nvidia-smi, or run with --device cpu".format(
                    C.__version__))
        gpu = C.device.gpu(gpus[0].id())
        C.device.try_set_default_device(gpu)
        # only a precision other than fp32 needs the capability, for its skip reason
        capability = _capability(gpu) if precision != "fp32" else None
    else:
        C.device.try_set_default_device(C.device.cpu())
        capability = None
    modes.check_name(mode)
    reason = precisions.skip_reason(precision, device, capability, NAME) or _no_path(precision, device)
    if reason:
        raise UnsupportedPrecision(reason)
    _run.update(precision=precision, mode=mode)
    return device


def set_seed(seed):
    """CNTK's initializers (glorot_uniform, he_normal) and dropout take their seeds from CNTK's
    process-wide counter, one seed per parameter: reset here before each build, so the same seed
    gives the same weights in every process (CNTK's tests: reset_random_seed(2) twice gives the
    same values, set_fixed_random_seed would give every parameter the same seed). CNTK's counter
    starts at 1, so seed s starts it at s + 1. NumPy's generator is seeded too (this file draws
    nothing from it)."""
    C.cntk_py.reset_random_seed(int(seed) + 1)
    np.random.seed(int(seed))


def synchronize(dev):
    # CNTK's train_minibatch and eval return once the device is done (losses and outputs
    # come back to the host), so there is nothing left in flight to wait for.
    return None


def versions(dev):
    # CNTK does not report its CUDA/cuDNN; cntk-gpu 2.7 is built against CUDA 10.0, cuDNN 7.
    return {
        "framework_version": C.__version__,
        "cuda": CUDA_BUILD if dev == "gpu" else None,
        "cudnn": CUDNN_BUILD if dev == "gpu" else None,
        "gpu": "gpu({})".format(C.device.use_default_device().id()) if dev == "gpu" else None,
    }


def data_format(dev):
    return "NCHW"


def count_params(model):
    return int(sum(np.prod(p.shape) for p in model.z.parameters))


def _mode_state():
    if _run["mode"] != "tuned":
        return modes.state(_run["mode"])
    return modes.state("tuned", switches=[], not_applied=NOT_APPLIED)


def conventions(task, dev):
    mode = _mode_state()
    if task == "cnn":
        return {"layout": "NCHW", "init": "glorot_uniform weights, zero biases",
                "fast_path": ["momentum_sgd unit_gain=False (classic momentum)"], "mode": mode}
    if task == "rnn":
        if dev == "gpu":
            return {"gru_bias": "two vectors per gate (optimized_rnnstack, cuDNN layout)",
                    "gru_biases": 600, "gru_kernel": "cuDNN (optimized_rnnstack)", "fast_path": [],
                    "mode": mode}
        return {"gru_bias": "one vector per gate (C.layers.GRU, optimized_rnnstack is GPU only)",
                "gru_biases": 300, "gru_kernel": "C.layers.Recurrence(GRU) on the CPU", "fast_path": [],
                "mode": mode}
    return {"resnet_conv_bias": False, "weights": "random (he_normal)",
            "source": "ResNet-50 written with CNTK layers (torchvision layout)", "fast_path": [],
            "mode": mode}


def _dtype_name(dtype):
    return np.dtype(dtype).name


def _one(dtypes):
    """The dtype a set of variables share ("mixed(...)" when they do not)."""
    names = sorted({_dtype_name(d) for d in dtypes})
    return names[0] if len(names) == 1 else "mixed({})".format(", ".join(names))


def numerics(task, model, dev):
    """What is set for this model, read back from the CNTK graph: the dtype of every function's
    outputs (the compute dtype) and of the parameters (the weights the learner updates). TF32 is
    stated False: CUDA 10.0 / cuDNN 7 have none. CNTK has no loss scaler."""
    precision = _run["precision"]
    functions = cntk_graph.depth_first_search(
        model.z, lambda node: isinstance(node, C.cntk_py.Function))
    outputs = [output for function in functions for output in function.outputs] or [model.z.output]
    switches = {
        "model output dtype": _dtype_name(model.z.output.dtype),
        "input dtype": _dtype_name(model.x.dtype),
        precisions.TF32_OVERRIDE_VARIABLE: os.environ.get(precisions.TF32_OVERRIDE_VARIABLE),
    }
    if model.trainer is not None:
        switches["loss dtype"] = _dtype_name(model.trainer.loss_function.output.dtype)
    mechanism = ("float32 graph: inputs and parameters in CNTK's default dtype (no "
                 "C.default_options(dtype=...)); no TF32: cntk-gpu 2.7 is built for CUDA {} / "
                 "cuDNN {}; no loss scaler").format(CUDA_BUILD, CUDNN_BUILD)
    return precisions.state(
        precision, tf32=False, compute_dtype=_one(o.dtype for o in outputs),
        param_dtype=_one(p.dtype for p in model.z.parameters),
        loss_scaling=precisions.LOSS_SCALING[precision], loss_scaler=None, mechanism=mechanism,
        read_back=["compute_dtype", "param_dtype"], switches=switches)


def peak_device_memory(dev):
    """CNTK 2.7 has no device memory counter (the telemetry's NVML figure for this run's
    processes, run_memory_bytes_max, stands in); None on a CPU."""
    if dev != "gpu":
        return None
    return {"peak_bytes": None, "counter": None, "scope": None,
            "note": "CNTK {} exposes no device memory counter".format(C.__version__)}


# ---------------------------------------------------------------- 2. CNN

def build_cnn(spec, dev):
    c1, c2, c3, c4 = spec.conv_channels
    k = (spec.kernel_size, spec.kernel_size)
    x = C.input_variable(spec.image_shape)
    y = C.input_variable(spec.classes)
    with C.layers.default_options(init=C.glorot_uniform(), activation=None, pad=True):
        z = C.layers.Sequential([
            C.layers.Convolution2D(k, c1), C.relu,
            C.layers.Convolution2D(k, c2), C.layers.MaxPooling((2, 2), strides=(2, 2), pad=False), C.relu,
            C.layers.Dropout(spec.conv_dropout),
            C.layers.Convolution2D(k, c3), C.relu,
            C.layers.Convolution2D(k, c4), C.layers.MaxPooling((2, 2), strides=(2, 2), pad=False), C.relu,
            C.layers.Dropout(spec.conv_dropout),
            C.layers.Dense(spec.dense_units), C.relu,  # Dense maps all of (100, 8, 8)
            C.layers.Dropout(spec.dense_dropout),
            C.layers.Dense(spec.classes),
        ])(x)
    loss = C.cross_entropy_with_softmax(z, y)
    learner = C.momentum_sgd(z.parameters, lr=C.learning_parameter_schedule(spec.lr),
                             momentum=C.momentum_schedule(spec.momentum), unit_gain=False)
    trainer = C.Trainer(z, (loss, C.classification_error(z, y)), [learner])
    return Model(z, x, y, trainer)


def train_cnn_epoch(model, batches, spec):
    return _train_epoch(model, batches, spec)


def predict_cnn(model, x, spec):
    return _predict(model, x, spec.batch_size)


def _feed(model, x):
    if model.sparse_tokens:  # token ids -> one sparse one-hot sequence per review
        return C.Value.one_hot(x.tolist(), model.sparse_tokens)
    return x


def _train_epoch(model, batches, spec):
    total = 0.0
    for x, y in batches:
        model.trainer.train_minibatch({model.x: _feed(model, x), model.y: to_one_hot(y, spec.classes)})
        total += model.trainer.previous_minibatch_loss_average
    return total / len(batches)


def _predict(model, x, batch_size):
    logits = [np.asarray(model.z.eval({model.x: _feed(model, xb)})).reshape(len(xb), -1)
              for xb in batches_of(x, batch_size)]
    return np.concatenate(logits)


# ---------------------------------------------------------------- 3. RNN

def build_rnn(spec, dev):
    x = C.sequence.input_variable(spec.max_features, is_sparse=True)
    y = C.input_variable(spec.classes)
    embedded = C.layers.Embedding(spec.embedding_dim)(x)
    if dev == "gpu":
        weights = C.parameter((C.InferredDimension, spec.embedding_dim), init=C.glorot_uniform())
        outputs = C.optimized_rnnstack(embedded, weights, spec.gru_units, 1, recurrent_op="gru")
    else:
        outputs = C.layers.Recurrence(C.layers.GRU(spec.gru_units))(embedded)
    z = C.layers.Dense(spec.classes)(C.sequence.last(outputs))  # the last time step
    loss = C.cross_entropy_with_softmax(z, y)
    learner = C.adam(z.parameters, lr=C.learning_parameter_schedule(spec.lr),
                     momentum=C.momentum_schedule(spec.beta1), unit_gain=True,
                     variance_momentum=C.momentum_schedule(spec.beta2), epsilon=spec.epsilon)
    trainer = C.Trainer(z, (loss, C.classification_error(z, y)), [learner])
    return Model(z, x, y, trainer, sparse_tokens=spec.max_features)


def train_rnn_epoch(model, batches, spec):
    return _train_epoch(model, batches, spec)


def predict_rnn(model, x, spec):
    return _predict(model, x, spec.batch_size)


# ---------------------------------------------------------------- 4. ResNet-50

def _conv_bn(x, filters, kernel, strides=(1, 1), relu=True):
    h = C.layers.Convolution2D(kernel, filters, strides=strides, pad=True, bias=False,
                               init=C.he_normal())(x)
    h = C.layers.BatchNormalization(map_rank=1)(h)
    return C.relu(h) if relu else h


def _bottleneck(x, filters, strides, project):
    h = _conv_bn(x, filters, (1, 1))
    h = _conv_bn(h, filters, (3, 3), strides)  # stride on the 3x3 conv, as torchvision
    h = _conv_bn(h, 4 * filters, (1, 1), relu=False)
    shortcut = _conv_bn(x, 4 * filters, (1, 1), strides, relu=False) if project else x
    return C.relu(h + shortcut)


def build_resnet50(spec, dev):
    x = C.input_variable(spec.image_shape)
    h = _conv_bn(x, 64, (7, 7), (2, 2))
    h = C.layers.MaxPooling((3, 3), strides=(2, 2), pad=True)(h)
    for stage, (blocks, filters) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for block in range(blocks):
            strides = (2, 2) if stage > 0 and block == 0 else (1, 1)
            h = _bottleneck(h, filters, strides, project=block == 0)
    z = C.reshape(C.layers.GlobalAveragePooling()(h), (4 * 512,))  # 2,048 features
    return Model(z, x)


def extract_features(model, x):
    return np.asarray(model.z.eval({model.x: x}), dtype=np.float32)  # float32 features (TASKS.md)
