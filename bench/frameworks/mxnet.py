"""MXNet 1.9 through Gluon, hybridized: the three tasks of TASKS.md.

Same sections as bench/frameworks/pytorch.py:
  1. framework and device: init_device, set_seed, synchronize, versions, data_format,
     count_params, conventions, numerics, get_weights, set_weights, peak_device_memory
  2. CNN  3. RNN  4. ResNet-50

The canonical weights (bench/canonical.py; `python -m bench equivalence`): MXNet's layouts are
the canonical ones, so get_weights and set_weights copy arrays by name: Conv2D weights OIHW,
Dense weights (out, in) after Flatten of NCHW ((c, h, w) order), gluon.rnn.GRU's l0_i2h_weight
(3H, E), l0_h2h_weight (3H, H), l0_i2h_bias, l0_h2h_bias with the gates in cuDNN's order (r, z, n:
rnn_impl.h indexes r, z, n at 0, H, 2H), batch norm gamma/beta/running_mean/running_var. The
zoo's ResNet-50 names are mapped to torchvision's by structure (stage, block, conv, downsample);
its 1x1 bottleneck conv biases are set to zero and must read back as zero.

Precision (bench/precisions.py): amp-fp16 (GPU) and amp-bf16 (CPU, oneDNN) are MXNet's AMP,
amp.init(target_dtype) before any network is built: its operator lists cast the inputs of
Convolution and FullyConnected (fp16: also RNN; bf16 keeps RNN in float32) to the half type,
leave dtype-neutral operators in the dtype they get and every parameter in float32, which the
Trainer updates; amp-fp16 adds AMP's dynamic loss scaler (amp.init_trainer, amp.scale_loss).
MXNet 1.9 has no TF32 switch of its own: cuBLAS and cuDNN use TF32 for float32 on a GPU of
compute capability 8.0+ unless NVIDIA_TF32_OVERRIDE=0, which the harness sets for every
precision but tf32 (runner.prepare_environment).

Mode (bench/modes.py): the reference already hybridizes with static_alloc and static_shape, uses
the fused RNN operator (cuDNN on a GPU) and MXNet's defaults (cuDNN autotune 1, GPU pointwise
fusion, bulk execution). Tuned adds, from MXNet's "Environment Variables" page (api/faq/env_var)
and its performance guide (api/faq/perf):
- CPU, ResNet-50 in fp32: hybridize(backend='MKLDNN'), the oneDNN subgraph fusion the guide
  recommends for inference on CPUs (measured x0.93 CPU time, x0.67 wall time per timed batch);
  not under amp-bf16, where it moved the features 8 % from fp32's (the reference's bf16: 0.4 %);
- GPU: for the CNN, MXNET_OPTIMIZER_AGGREGATION_SIZE=12, SGD's aggregated update of all 12
  tensors in one call (optimizer.SGD's docstring: "may lead to improved performance"; x1.03 CPU
  time on this CPU, so left off here); for the CNN and ResNet-50, MXNET_CUDNN_AUTOTUNE_DEFAULT=2
  (the fastest convolution algorithm, no workspace limit); MXNET_GPU_WORKER_NSTREAMS=2 (cuDNN
  convolutions compute their data and weight gradients in parallel; read once per process, so
  the first GPU init_device decides). None of these is measured on a GPU: none is lent here.
Left off, with the reasons in conventions()["mode"]["not_applied"]: the oneDNN fusion for training
(inference only), aggregation for Adam (SGD only), NHWC convolutions (not checkable here).
Measured 2026-12-01, quick sizes, one process alternating modes with fresh models, on 2 CPU
cores shared under heavy load (process CPU time compared).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from mxnet.contrib import amp
from mxnet.gluon import nn, rnn
from mxnet.gluon.model_zoo import vision

from bench import canonical, modes, precisions
from bench.errors import DeviceUnavailable, UnsupportedPrecision
from bench.runner import batches_of

NAME = "mxnet"

AMP_TARGET = {"amp-fp16": "float16", "amp-bf16": "bfloat16"}  # amp.init(target_dtype=...)
# MXNet's name for "implicitly convert float32 data to float16 for tensor cores" (RNN, Convolution):
# off (its default), so that float32 and tf32 never compute in float16.
CONVERSION_VARIABLE = "MXNET_CUDA_TENSOR_OP_MATH_ALLOW_CONVERSION"
TENSOR_CORE_VARIABLE = "MXNET_CUDA_ALLOW_TENSOR_CORE"  # left at MXNet's default (1): fp16 tensor cores
COMPUTE_OPS = ("Convolution", "FullyConnected", "RNN")  # the operators whose dtype is the compute dtype
BFLOAT16 = np.dtype([("bfloat16", np.uint16)])  # MXNet 1.x's bfloat16 (mxnet.contrib.amp.amp.bfloat16)
# Array creators (no input): amp's symbol wrapper casts an operator's inputs and fails on an
# operator that has none (TypeError: 'NoneType' object is not iterable); MXNet 1.9.1's bfloat16
# list of float32 operators holds them, and `_zeros` makes the GRU's begin state in a hybridized
# graph. Unwrapped they make float32 arrays just as wrapped, so they leave that list
# (amp.init(fp32_ops=...), AMP's documented override of the list).
_CREATION_OPS = ("zeros", "zeros_without_dtype", "ones", "full", "arange", "linspace", "eye")

# What init_device set; one process runs one precision (amp.init cannot be undone). build_* read it.
_PRECISION = {"name": precisions.DEFAULT, "amp": None, "capability": None}
_MODE = {"name": modes.DEFAULT, "gpu_streams": None}  # gpu_streams: fixed by the first GPU init

# Tuned mode (module docstring, "Mode").
SUBGRAPH_BACKEND = "MKLDNN"  # hybridize(backend=...): oneDNN's fused inference operators (CPU)
AGGREGATION_VARIABLE = "MXNET_OPTIMIZER_AGGREGATION_SIZE"  # SGD: weights per multi-update call
AUTOTUNE_VARIABLE = "MXNET_CUDNN_AUTOTUNE_DEFAULT"  # read by each cuDNN convolution as it is set up
STREAMS_VARIABLE = "MXNET_GPU_WORKER_NSTREAMS"  # read once, when the engine's GPU worker starts
CNN_TENSORS = 12  # the CNN's trainable tensors: conv1..conv4, fc1, fc2, weight and bias each
_TUNED_OFF: set = set()  # switches the scratch measurements turn off


@dataclass
class Model:
    net: gluon.HybridBlock
    trainer: gluon.Trainer | None
    ctx: mx.Context
    loss_scaling: bool = False  # AMP's dynamic loss scaler on the trainer (amp-fp16)


# ---------------------------------------------------------------- 1. framework and device

def init_device(device: str, precision: str, mode: str = modes.DEFAULT) -> mx.Context:
    global _PRECISION
    modes.check_name(mode)
    capability = None
    if device == "gpu":
        if mx.context.num_gpus() == 0:
            cuda = mx.runtime.Features().is_enabled("CUDA")
            raise DeviceUnavailable(
                f"no GPU found: mx.context.num_gpus() is 0 (mxnet {mx.__version__}, "
                f"{'built with' if cuda else 'built without'} CUDA; GPU images install "
                "mxnet-cuXXX); check the driver and nvidia-smi, or run with --device cpu")
        ctx = mx.gpu(0)
        capability = _capability(ctx)
    else:
        ctx = mx.cpu()
    reason = precisions.skip_reason(precision, device, capability, NAME) or _mxnet_reason(precision, device)
    if reason:
        raise UnsupportedPrecision(reason)
    target = AMP_TARGET.get(precision)
    if _PRECISION["amp"] is not None and _PRECISION["amp"] != target:
        raise RuntimeError(f"{NAME}: amp.init(target_dtype={_PRECISION['amp']!r}) already ran in this "
                           f"process and cannot be undone; run {precision} in a process of its own")
    os.environ[CONVERSION_VARIABLE] = "0"  # read by MXNet's CUDA operators as they set up, after this
    if target == "bfloat16":
        amp.init(target_dtype=target, fp32_ops=[op for op in amp.list_fp32_ops(BFLOAT16)
                                                if op.lstrip("_") not in _CREATION_OPS])
    elif target:
        amp.init(target_dtype=target)
    _PRECISION = {"name": precision, "amp": target, "capability": capability}
    _MODE["name"] = mode
    if device == "gpu":
        _set_gpu_variables(mode)
    return ctx


_SAVED_AUTOTUNE = []  # the value before tuned mode set it, restored for the reference


def _set_gpu_variables(mode: str) -> None:
    """Tuned on a GPU: cuDNN autotune without the workspace limit (each convolution reads it as
    it is set up, so every build after this call gets it) and two GPU worker streams (read once,
    by the first GPU operation of the process)."""
    tuned = _tuned_on("gpu")
    if tuned.get("autotune"):
        if not _SAVED_AUTOTUNE:
            _SAVED_AUTOTUNE.append(os.environ.get(AUTOTUNE_VARIABLE))
        os.environ[AUTOTUNE_VARIABLE] = "2"
    elif _SAVED_AUTOTUNE:  # back to what the reference ran with
        old = _SAVED_AUTOTUNE.pop()
        if old is None:
            os.environ.pop(AUTOTUNE_VARIABLE, None)
        else:
            os.environ[AUTOTUNE_VARIABLE] = old
    if _MODE["gpu_streams"] is None:  # no GPU work yet in this process: this init decides
        if tuned.get("streams"):
            os.environ[STREAMS_VARIABLE] = "2"
        _MODE["gpu_streams"] = os.environ.get(STREAMS_VARIABLE, "1")


def _tuned_on(device_type: str) -> dict:
    """The switches tuned mode turns on, by device type; {} in the reference."""
    if _MODE["name"] != "tuned":
        return {}
    # amp-bf16: the fused bf16 convolutions moved ResNet-50's features 8 % (mean) from fp32's, the
    # reference's bf16 0.4 % (2026-12-01): not the same arithmetic, so fp32 only.
    # aggregation: no gain on this CPU (module docstring); on a GPU it saves kernel launches.
    on = {"subgraph": device_type == "cpu" and _PRECISION["amp"] is None, "aggregation": device_type == "gpu",
          "autotune": device_type == "gpu", "streams": device_type == "gpu"}
    return {k: v for k, v in on.items() if v and k not in _TUNED_OFF}


def _capability(ctx: mx.Context):
    """MXNet's own query (mx.util.get_cuda_compute_capability: 80 for sm_80) as (major, minor)."""
    try:
        value = mx.util.get_cuda_compute_capability(ctx)
    except (OSError, RuntimeError):  # no libcuda to ask: unknown
        return None
    return value // 10, value % 10


def _mxnet_reason(precision: str, device: str) -> str | None:
    """MXNet 1.9's own limits, beside the device's (precisions.skip_reason)."""
    if precision == "amp-bf16" and device == "gpu":
        return (f"{NAME} {mx.__version__}: amp-bf16 runs on the CPU only: MXNet 1.9's bfloat16 is "
                "oneDNN's (amp casts arrays to bfloat16 on a CPU context only) and its CUDA operators "
                "have no bfloat16 kernels; run amp-fp16 on the GPU or amp-bf16 with --device cpu")
    if precision == "amp-bf16" and not mx.runtime.Features().is_enabled("MKLDNN"):
        return (f"{NAME} {mx.__version__}: amp-bf16 on the CPU needs MXNet built with MKLDNN (oneDNN), "
                "which holds MXNet's only bfloat16 kernels; this build has it off "
                "(mx.runtime.Features): run fp32")
    return None


def set_seed(seed: int) -> None:
    mx.random.seed(seed)  # the initializers (Xavier, Uniform) and Dropout draw from MXNet's RNG
    np.random.seed(seed)  # Orthogonal and other NumPy-based initializers


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
    mode = _mode_state(task, ctx.device_type)
    if task == "cnn":
        return {"layout": "NCHW", "init": "Xavier uniform (Glorot) weights, zero biases", "fast_path": fast,
                "mode": mode}
    if task == "rnn":
        return {"gru_bias": "two vectors per gate (i2h and h2h, cuDNN layout)", "gru_biases": 600,
                "gru_kernel": "cuDNN (fused RNN op)" if ctx.device_type == "gpu" else "fused RNN op (CPU)",
                # optimizer.Adam folds the bias corrections into lr, then adam_update adds eps to sqrt(v)
                "adam_epsilon": "sqrt(v) + eps, bias correction in the step size (Kingma & Ba epsilon hat)",
                "adam_embedding_v": "square of the row's gradient (dense)",
                "fast_path": fast, "mode": mode}
    return {"resnet_conv_bias": False, "weights": "random",
            "source": "gluon.model_zoo.vision.resnet50_v1 features + Flatten; the zoo's 1x1 "
                      "bottleneck conv biases held at zero and frozen",
            # BottleneckV1 (gluon/model_zoo/vision/resnet.py) strides its first 1x1 conv (and the
            # downsample); gluon.nn.BatchNorm's default epsilon, which the zoo keeps, is 1e-5.
            "resnet_stride": "1x1 (original paper, v1)", "bn_epsilon": 1e-5,
            "pool1": "max 3x3, stride 2, padding 1", "fast_path": fast, "mode": mode}


def _mode_state(task: str, device_type: str) -> dict:
    """conventions()["mode"]: what tuned turns on for this task on this device, and what not, why."""
    if _MODE["name"] != "tuned":
        return modes.state(_MODE["name"])
    on, gpu = _tuned_on(device_type), device_type == "gpu"
    switches, off = [], {}
    if task == "resnet50":
        if on.get("subgraph"):
            switches.append(f"hybridize(backend={SUBGRAPH_BACKEND!r}): oneDNN's subgraph fusion of each "
                            "convolution with its batch norm, ReLU and residual add (inference)")
        elif not gpu:
            off[f"hybridize(backend={SUBGRAPH_BACKEND!r})"] = (
                "under amp-bf16 its fused bf16 convolutions moved the features 8 % (mean) from fp32's, "
                "the reference's bf16 0.4 % (measured 2026-12-01): another arithmetic, so fp32 only")
    else:
        off[f"hybridize(backend={SUBGRAPH_BACKEND!r})"] = (
            "oneDNN's fusion passes are for inference only (MXNet's MKLDNN backend guide: unset it for "
            "training)" if not gpu else "a CPU (oneDNN) backend")
    if task == "cnn" and on.get("aggregation"):
        switches.append(f"{AGGREGATION_VARIABLE}={CNN_TENSORS}: SGD updates all the CNN's weights in "
                        "one multi_sgd_mom_update call (MXNet's default aggregates 4)")
    elif task == "cnn":
        off[f"{AGGREGATION_VARIABLE}={CNN_TENSORS}"] = (
            "measured slower on this CPU (x1.03 CPU time per steady epoch, 2 rounds, 2026-12-01); on a "
            "GPU, where one call saves kernel launches, tuned sets it (not measured on a GPU)")
    elif task == "rnn":
        off[AGGREGATION_VARIABLE] = "aggregated updates are SGD's only in MXNet 1.9; the GRU trains with Adam"
    if gpu:
        if task != "rnn" and on.get("autotune"):
            switches.append(f"{AUTOTUNE_VARIABLE}=2: cuDNN autotune picks the fastest convolution algorithm "
                            "without the workspace limit (the default 1 limits it)")
        streams = _MODE["gpu_streams"]
        if streams == "2":
            switches.append(f"{STREAMS_VARIABLE}=2 for the process: two streams per GPU worker, so cuDNN "
                            "convolutions compute their data and weight gradients in parallel"
                            + ("" if task == "cnn" else " (this task has no convolution backward)"))
        elif task == "cnn":
            off[STREAMS_VARIABLE + "=2"] = (f"read once per process by MXNet's engine, and this process's "
                                            f"first GPU work ran with {streams}")
        if task == "cnn":
            off["Conv2D(layout='NHWC')"] = (
                "changes the model's tensors (OHWI weights, an (h, w, c) flatten) and cannot be checked "
                "here: MXNet 1.9.1's CPU (oneDNN) convolution rejects layout='NHWC'; NVIDIA's reason for "
                "NHWC is Tensor Core convolutions in fp16")
        off["MXNET_USE_FUSION"] = "MXNet's GPU pointwise fusion is on by default (1) in the reference too"
    else:
        off[f"{AUTOTUNE_VARIABLE}=2, {STREAMS_VARIABLE}=2"] = "cuDNN and GPU stream settings: this is a CPU"
    return modes.state("tuned", switches=switches, not_applied=off)


def numerics(task: str, model: Model, ctx: mx.Context) -> dict:
    precision, target = _PRECISION["name"], _PRECISION["amp"]
    op_dtypes = _op_dtypes(model.net)
    low = sorted({d for dtypes in op_dtypes.values() for d in dtypes} - {"float32"})
    compute = low[0] if len(low) == 1 else ("mixed (" + ", ".join(low) + ")" if low else "float32")
    params = sorted({_dtype_name(p.data().dtype) for p in model.net.collect_params().values()})
    param_dtype = params[0] if len(params) == 1 else "mixed (" + ", ".join(params) + ")"
    override = mx.util.getenv(precisions.TF32_OVERRIDE_VARIABLE)  # the C runtime's, as cuBLAS reads it
    conversion = mx.util.getenv(CONVERSION_VARIABLE)
    capability = _PRECISION["capability"]
    # MXNet's own rule (mxnet.test_utils.effective_dtype): float32 gemms and convolutions use
    # TF32 on a GPU of compute capability 8.0+ unless NVIDIA_TF32_OVERRIDE=0.
    tf32 = (ctx.device_type == "gpu" and capability is not None and tuple(capability) >= (8, 0)
            and override != "0")
    switches = {precisions.TF32_OVERRIDE_VARIABLE: override, CONVERSION_VARIABLE: conversion,
                TENSOR_CORE_VARIABLE: mx.util.getenv(TENSOR_CORE_VARIABLE),
                "amp.init target_dtype": target,
                "operator dtypes": {op: ", ".join(sorted(d)) for op, d in sorted(op_dtypes.items())}}
    read_back = ["tf32", "compute_dtype", "param_dtype"]
    if target:
        low_ops = [op for op, dtypes in sorted(op_dtypes.items()) if target in dtypes]
        kept = [op for op, dtypes in sorted(op_dtypes.items()) if "float32" in dtypes]
        mechanism = (f"mxnet.contrib.amp.init(target_dtype={target!r}): "
                     f"{', '.join(low_ops) or 'no operator'} computing in {target} (amp_cast of the inputs)")
        if kept:
            mechanism += f", {', '.join(kept)} kept in float32 by AMP's operator lists"
        mechanism += "; float32 parameters"
    else:
        mechanism = "float32 parameters and operators (no AMP)"
    mechanism += (", logits cast to float32 before the loss" if model.trainer is not None
                  else ", features float32")
    if ctx.device_type == "gpu":
        mechanism += (f"; TF32 by cuBLAS/cuDNN unless {precisions.TF32_OVERRIDE_VARIABLE}=0 "
                      f"(now {override!r}), {CONVERSION_VARIABLE}={conversion!r}")
    scaler = None
    if model.trainer is None:  # inference (ResNet-50): no loss to scale, the precision's rule stands
        loss_scaling = precisions.LOSS_SCALING[precision]
        mechanism += "; inference: no loss, so no loss scaler"
    else:
        found = getattr(model.trainer, "_amp_loss_scaler", None)  # set by amp.init_trainer
        loss_scaling = "dynamic" if found is not None else "none"
        read_back.append("loss_scaling")
        if found is not None:
            scaler = f"{type(found).__module__}.{type(found).__name__}"
            switches["loss_scale"] = float(found.loss_scale)
            mechanism += "; amp.init_trainer + amp.scale_loss: AMP's dynamic loss scaler"
    return precisions.state(precision, tf32=tf32, compute_dtype=compute, param_dtype=param_dtype,
                            loss_scaling=loss_scaling, mechanism=mechanism, read_back=read_back,
                            switches=switches, loss_scaler=scaler)


def get_weights(model: Model, task: str) -> dict:
    """The model's weights in the canonical layout of `task` (bench/canonical.py): float32 NumPy
    arrays under the canonical names, in the canonical order."""
    rows, zero = _weight_table(model, task)
    for where, param in zero:  # conv biases the canonical function does not have
        value = param.data().asnumpy()
        if np.any(value != 0):
            raise ValueError(f"{NAME}.get_weights({task}): the conv bias of {where} ({param.name}) is not zero "
                             f"(largest |b| {float(np.max(np.abs(value))):.3g}): not the canonical function")
    return {name: param.data().asnumpy().astype(np.float32, copy=False) for name, param in rows}


def set_weights(model: Model, task: str, weights: dict) -> None:
    """Load canonical weights of `task` (exactly the canonical names and shapes) into the model,
    the extra conv biases to zero; a trainer that has already stepped forgets its state."""
    rows, zero = _weight_table(model, task)
    names = [name for name, _ in rows]
    missing, extra = [n for n in names if n not in weights], sorted(set(weights) - set(names))
    if missing or extra:
        raise canonical.LayoutError(f"{NAME}.set_weights for {task}: missing {missing[:5]} ({len(missing)}), "
                                    f"not in the layout {extra[:5]} ({len(extra)})")
    for name, param in rows:
        value = np.asarray(weights[name], dtype=np.float32)
        if tuple(param.shape) != value.shape:
            raise canonical.LayoutError(f"{NAME}.set_weights: {name} is {value.shape}, "
                                        f"{param.name} is {tuple(param.shape)}")
        param.set_data(nd.array(value, ctx=model.ctx, dtype="float32"))
    for _, param in zero:
        param.set_data(nd.zeros(param.shape, ctx=model.ctx, dtype="float32"))
    _reset_trainer(model.trainer)


def peak_device_memory(ctx: mx.Context) -> dict | None:
    """MXNet 1.9 has no peak counter: the GPU's memory in use (cudaMemGetInfo) after the run. Its
    pooled storage keeps every block it allocated, so this is the pool's high-water mark, plus
    the CUDA context and any other process on the GPU. None on a CPU."""
    if ctx.device_type != "gpu":
        return None
    free, total = mx.context.gpu_memory_info(ctx.device_id)
    return {"peak_bytes": int(total - free), "counter": "mx.context.gpu_memory_info(): total - free",
            "scope": "since the process began (the whole GPU's memory in use)"}


def _weight_table(model: Model, task: str) -> tuple:
    """([(canonical name, gluon Parameter)], [(where, conv bias Parameter held at zero)])."""
    tables = {"cnn": _cnn_table, "rnn": _rnn_table, "resnet50": _resnet50_table}
    if task not in tables:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(tables)}")
    return tables[task](model.net)


def _reset_trainer(trainer) -> None:
    """The optimizer state of a trainer that has stepped (momentum, Adam's moments and its step
    count t) from zero again, as a fresh Trainer's: nothing to do before the first step."""
    if trainer is None or not any(updater.states for updater in trainer._updaters):
        return
    for updater in trainer._updaters:
        updater.states.clear()
        updater.states_synced.clear()
    optimizer = trainer._optimizer
    optimizer.num_update = optimizer.begin_num_update
    optimizer._all_index_update_counts = {0: {}}
    optimizer._index_update_count = optimizer._all_index_update_counts[0]
    if trainer._kv_initialized and trainer._update_on_kvstore:
        trainer._reset_kvstore()  # its states live in the kvstore


def _children(block) -> list:
    return list(block._children.values())


def _op_dtypes(net) -> dict:
    """The dtypes each compute operator of the network computes in, read from the graph MXNet
    builds for it (with AMP's casts) through its own type inference."""
    graph = net(mx.sym.var("data"))
    internals = graph.get_internals()
    _, out_types, _ = internals.infer_type(data="float32")
    ops = {node["name"]: node["op"] for node in json.loads(graph.tojson())["nodes"]}
    found = {}
    for name, dtype in zip(internals.list_outputs(), out_types):
        op = ops.get(name.rsplit("_output", 1)[0])
        if op in COMPUTE_OPS:
            found.setdefault(op, set()).add(_dtype_name(dtype))
    return found


def _dtype_name(dtype) -> str:
    dtype = np.dtype(dtype)
    return dtype.names[0] if dtype.names else dtype.name  # MXNet 1.x's bfloat16 is a record dtype


def _forward_fp32(model: Model, data):
    return model.net(data).astype("float32", copy=False)  # fp32 whatever the compute dtype


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
    # MXNet's momentum buffer holds lr * g (sgd_mom_update: mom = m * mom - lr * g; w += mom),
    # PyTorch's g (v = m * v + g; w -= lr * v): the same steps at a constant learning rate.
    params = net.collect_params()
    aggregate = str(CNN_TENSORS) if _tuned_on(ctx.device_type).get("aggregation") else None
    with _environ(AGGREGATION_VARIABLE, aggregate):  # optimizer.SGD reads it as it is made
        trainer = gluon.Trainer(params, "sgd", {"learning_rate": spec.lr, "momentum": spec.momentum})
    return _trained(net, trainer, ctx)


class _environ:
    """Set one environment variable for a with block (None: leave it as it is), then restore it."""

    def __init__(self, name: str, value):
        self.name, self.value = name, value

    def __enter__(self):
        self.old = os.environ.get(self.name)
        if self.value is not None:
            os.environ[self.name] = self.value

    def __exit__(self, *exc):
        if self.value is not None:
            if self.old is None:
                os.environ.pop(self.name, None)
            else:
                os.environ[self.name] = self.old


def _cnn_table(net) -> tuple:
    """conv1..conv4 and fc1, fc2 in the order the HybridSequential holds them; the Dense layer
    after Flatten of NCHW takes (c, h, w) as canonical fc1.weight does."""
    convs = [b for b in _children(net) if isinstance(b, nn.Conv2D)]
    denses = [b for b in _children(net) if isinstance(b, nn.Dense)]
    rows = []
    for name, block in zip(("conv1", "conv2", "conv3", "conv4", "fc1", "fc2"), convs + denses):
        rows += [(f"{name}.weight", block.weight), (f"{name}.bias", block.bias)]
    return rows, []


def _trained(net, trainer, ctx) -> Model:
    """The model of a training task; under amp-fp16 the trainer gets AMP's dynamic loss scaler."""
    scaling = precisions.LOSS_SCALING[_PRECISION["name"]] == "dynamic"
    if scaling:
        amp.init_trainer(trainer)
    return Model(net, trainer, ctx, loss_scaling=scaling)


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
            loss = _loss(_forward_fp32(model, data), label)
            if model.loss_scaling:  # AMP: backward of the scaled loss; step() unscales, skips overflows
                with amp.scale_loss(loss, model.trainer) as scaled:
                    autograd.backward(scaled)
        if not model.loss_scaling:
            loss.backward()
        model.trainer.step(len(x))  # gradient of the batch mean
        total += loss.mean()  # the unscaled loss; stays on the device: no sync per step
    return float(total.asscalar()) / len(batches)


def _predict(model: Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    logits = [_forward_fp32(model, nd.array(xb, ctx=model.ctx)).asnumpy() for xb in batches_of(x, batch_size)]
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


def _rnn_table(net) -> tuple:
    gru = net.gru
    return [("embedding.weight", net.embedding.weight),
            ("gru.weight_ih", gru.l0_i2h_weight), ("gru.weight_hh", gru.l0_h2h_weight),
            ("gru.bias_ih", gru.l0_i2h_bias), ("gru.bias_hh", gru.l0_h2h_bias),
            ("fc.weight", net.dense.weight), ("fc.bias", net.dense.bias)], []


def build_rnn(spec, ctx: mx.Context) -> Model:
    net = GRUClassifier(spec)
    net.initialize(ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    # MXNet 1.9's Adam (optimizer.Adam.update) folds the bias corrections into the learning rate,
    # lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t), w -= lr_t * m / (sqrt(v) + epsilon): PyTorch's
    # and Optax's m_hat / (sqrt(v_hat) + epsilon) with epsilon / sqrt(1 - beta2^t) in its place
    # (3.2e-7 at t=1 for 1e-8), which damps the steps of weights whose gradients are that small.
    trainer = gluon.Trainer(net.collect_params(), "adam",
                            {"learning_rate": spec.lr, "beta1": spec.beta1, "beta2": spec.beta2,
                             "epsilon": spec.epsilon})
    return _trained(net, trainer, ctx)


def train_rnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_rnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


# ---------------------------------------------------------------- 4. ResNet-50

def _resnet50_table(net) -> tuple:
    """torchvision's names from the zoo's structure: features = [Conv2D, BatchNorm, relu, max
    pool, stage1..stage4 (BottleneckV1s), global pool]; a BottleneckV1's body = [1x1 conv, bn,
    relu, 3x3 conv, bn, relu, 1x1 conv, bn] and, in a stage's first block, downsample = [1x1
    conv, bn]. The body's two 1x1 convs carry biases (use_bias defaults to True there)."""
    def bn(name, block):
        return [(f"{name}.weight", block.gamma), (f"{name}.bias", block.beta),
                (f"{name}.running_mean", block.running_mean), (f"{name}.running_var", block.running_var)]

    features = _children(net)[0]
    layers = _children(features)
    rows, zero = [("conv1.weight", layers[0].weight)] + bn("bn1", layers[1]), []
    stages = [b for b in layers if isinstance(b, nn.HybridSequential)]
    if [len(stage) for stage in stages] != list(canonical.RESNET_BLOCKS):
        raise ValueError(f"{NAME}: the zoo's stages hold {[len(s) for s in stages]} blocks, "
                         f"not {list(canonical.RESNET_BLOCKS)}")
    for stage_index, stage in enumerate(stages, 1):
        for b, block in enumerate(_children(stage)):
            prefix = f"layer{stage_index}.{b}"
            body = _children(block.body)
            convs = [x for x in body if isinstance(x, nn.Conv2D)]
            norms = [x for x in body if isinstance(x, nn.BatchNorm)]
            for i, (conv, norm) in enumerate(zip(convs, norms), 1):
                rows.append((f"{prefix}.conv{i}.weight", conv.weight))
                rows += bn(f"{prefix}.bn{i}", norm)
                if conv.bias is not None:
                    zero.append((f"{prefix}.conv{i}", conv.bias))
            if block.downsample is not None:
                conv, norm = _children(block.downsample)
                rows.append((f"{prefix}.downsample.0.weight", conv.weight))
                rows += bn(f"{prefix}.downsample.1", norm)
                if conv.bias is not None:
                    zero.append((f"{prefix}.downsample.0", conv.bias))
    return rows, zero


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
    backend = SUBGRAPH_BACKEND if _tuned_on(ctx.device_type).get("subgraph") else None
    net.hybridize(static_alloc=True, static_shape=True, backend=backend)  # partitioned at the first call
    return Model(net, None, ctx)


def extract_features(model: Model, x: np.ndarray) -> np.ndarray:
    return _forward_fp32(model, nd.array(x, ctx=model.ctx)).asnumpy()  # float32 features
