"""PyTorch: the three tasks of TASKS.md.

Every framework file has these sections, in this order, with these names:
  1. framework and device: init_device, set_seed, synchronize, versions, data_format,
     count_params, conventions, numerics, get_weights, set_weights, peak_device_memory
  2. CNN: build_cnn, train_cnn_epoch, predict_cnn
  3. RNN: build_rnn, train_rnn_epoch, predict_rnn
  4. ResNet-50: build_resnet50, extract_features
Hyperparameters come from the spec; data, batching, timing and results are the harness's.

Canonical weights (bench/canonical.py, `python -m bench equivalence`): the canonical layout is
PyTorch's, so get_weights/set_weights only rename: Conv2d weights OIHW, Linear (out, in), the
CNN's Flatten of NCHW in (c, h, w) order, nn.GRU's weight_ih_l0/weight_hh_l0/bias_ih_l0/bias_hh_l0
with gates (r, z, n) (torch.nn.GRU docs), torchvision's resnet50 state_dict without fc and
num_batches_tracked. torchvision's Bottleneck puts a stage's stride 2 on the 3x3 conv (v1.5) and
its BatchNorm2d eps is 1e-5.

Precision (bench/precisions.py) through PyTorch's own mechanism, set in init_device:
  - TF32: torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 and
    torch.set_float32_matmul_precision ("highest": IEEE fp32; "high": TF32 allowed), on in tf32
    only (the amp modes keep it off: they differ from fp32 by the half compute alone).
  - amp-fp16 / amp-bf16: torch.autocast(device_type, dtype) around the forward pass and the loss;
    the parameters (the optimizer's master weights) stay float32; the logits are cast to float32
    before F.cross_entropy. amp-fp16 (GPU only) scales the loss with torch.amp.GradScaler
    (dynamic); the loss handed back is the unscaled one. Prediction and features run under the
    same autocast and come back as float32.
  - The GRU: on a CPU aten::gru is not on autocast's list; its ATen decomposition runs the gate
    matmuls in bf16 (linear/addmm are on the list) and carries the hidden state in float32. On a
    GPU autocast's cuDNN RNN wrapper casts to float16 whatever the autocast dtype
    (aten/src/ATen/cudnn/AutocastRNN.cpp), so under amp-bf16 the GRU runs outside autocast, in
    float32, rather than in fp16 under a bf16 label.

Mode (bench/modes.py), set in init_device; TUNED says which switches are on per task and device,
conventions()["mode"] names them and each documented one left off, with why (NOT_APPLIED):
  - channels_last (CNN, ResNet-50): weights and inputs in torch.channels_last ("Channels Last
    Memory Format in PyTorch", docs.pytorch.org/tutorials/intermediate/memory_format_tutorial.html;
    Performance Tuning Guide, "Enable channels_last memory format for computer vision models").
    On the CPU, every task with a convolution; on a GPU only in tf32 and the amp precisions: the
    guide pairs it with AMP on Tensor Cores.
  - torch.compile, inductor, default mode (the guide's "Fuse operations"; torch.compile docs): of
    ResNet-50's feature extractor (CPU and GPU) and, on a GPU, of the module the CNN's training
    step calls (on this CPU measured slower for the CNN: NOT_APPLIED). Model.net stays the plain
    module (get_weights/set_weights, the parameter count); the compiled wrapper shares its
    parameters and compiles at its first call, in the first epoch or the warm-up batch, which the
    harness times apart.
  - The GRU: dynamo does not trace nn.GRU (torch._dynamo.config.allow_rnn False);
    torch._dynamo.explain(GRUClassifier) finds 0 graphs: the RNN gets no compile anywhere.
  - fused=True optimizers (torch.optim docs: fused is the fastest implementation, foreach the
    default on CUDA): on a GPU, the CNN's SGD and the RNN's Adam; not measured on this CPU.
  - cudnn.benchmark is the reference's already; CUDA graphs (mode="reduce-overhead") are left off.
  Nothing here has been measured on a GPU: no GPU is lent to this project.
  Measured on this CPU, 2026-12-01 (one process, variants in rotated order, fresh models each
  round, medians; the quick sizes cut further, as the shared 2-core machine ran at a load of
  15-20 and timed everything 5-10x slower than idle):
  - CNN, steady epoch of 5 batches (epochs 2-3), 3 rounds: reference 58.0 s, channels_last
    35.3 s (0.61x), channels_last + compile 36.2 s (0.62x; slower than channels_last alone in each
    round; its first epoch about 240 s more, compilation, later models reusing it).
  - ResNet-50, steady batch of 32 (2 timed after the warm-up), 2 rounds: reference 77.6 s,
    channels_last 60.9 s (0.78x), channels_last + compile 29.1 s (0.38x; 0.39x and 0.36x paired),
    its warm-up batch about 250 s more (compilation; a later model in the process reuses it).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from bench import modes, precisions
from bench.errors import DeviceUnavailable, UnsupportedPrecision
from bench.runner import batches_of

NAME = "pytorch"

AUTOCAST_DTYPE = {"amp-fp16": torch.float16, "amp-bf16": torch.bfloat16}
# What init_device set last (precision and mode), for build_*, the training step and numerics.
_run = {"precision": precisions.DEFAULT, "autocast": None, "loss_scaling": False,
        "gru_outside_autocast": False, "mode": modes.DEFAULT}

# Mode "tuned": the switches on, per (task, device type); measured on this CPU (module docstring).
TUNED = {
    ("cnn", "cpu"): ("channels_last",),
    ("rnn", "cpu"): (),
    ("resnet50", "cpu"): ("channels_last", "compile"),
    ("cnn", "cuda"): ("channels_last", "compile", "fused_optimizer"),
    ("rnn", "cuda"): ("fused_optimizer",),
    ("resnet50", "cuda"): ("channels_last", "compile"),
}


@dataclass
class Model:
    net: nn.Module
    optimizer: torch.optim.Optimizer | None
    device: torch.device
    scaler: torch.amp.GradScaler | None = None  # amp-fp16: dynamic loss scaling
    compiled: nn.Module | None = None  # tuned: torch.compile(net), sharing net's parameters
    channels_last: bool = False  # tuned: inputs (and net's conv weights) in torch.channels_last


# ---------------------------------------------------------------- 1. framework and device

def init_device(device: str, precision: str, mode: str = modes.DEFAULT) -> torch.device:
    modes.check_name(mode)
    if device == "gpu":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                "no GPU found: torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "check the driver and nvidia-smi, or run with --device cpu")
    capability = tuple(torch.cuda.get_device_capability()) if device == "gpu" else None
    reason = precisions.skip_reason(precision, device, capability, NAME)
    if reason:
        raise UnsupportedPrecision(reason)
    if (precision == "amp-bf16" and device == "gpu"
            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        raise UnsupportedPrecision(
            f"{NAME} {torch.__version__}: torch.cuda.is_bf16_supported() is False on "
            f"{torch.cuda.get_device_name()} (compute capability {capability[0]}.{capability[1]}); "
            "run amp-fp16")
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    _run.update(precision=precision, autocast=AUTOCAST_DTYPE.get(precision),
                loss_scaling=precision == "amp-fp16",
                gru_outside_autocast=precision == "amp-bf16" and device == "gpu", mode=mode)
    if device == "gpu":
        torch.backends.cudnn.benchmark = True  # cuDNN autotune, as TASKS.md asks
        return torch.device("cuda")
    return torch.device("cpu")


def set_seed(seed: int) -> None:
    """Every build_* draws its initial weights from torch's generator (CPU and CUDA alike)."""
    torch.manual_seed(seed)


def synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def versions(dev: torch.device) -> dict:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "framework_version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _dotted(cudnn) if cudnn else None,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
    }


def _dotted(cudnn: int) -> str:
    # cuDNN 9 reports 90100 for 9.1.0; cuDNN 8 reports 8902 for 8.9.2.
    major = cudnn // 10000 if cudnn >= 90000 else cudnn // 1000
    rest = cudnn - major * (10000 if cudnn >= 90000 else 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def data_format(dev: torch.device) -> str:
    return "NCHW"


def count_params(model: Model) -> int:
    return sum(p.numel() for p in model.net.parameters() if p.requires_grad)


SWITCHES = {  # what each tuned switch is, in words naming the API
    "channels_last": "channels_last memory format (torch.channels_last) for the inputs and the "
                     "convolution weights (net.to(memory_format=torch.channels_last)); the canonical "
                     "weights keep their logical OIHW shape",
    "compile": {"cnn": "torch.compile (inductor, default mode) of the module the training step calls "
                       "(forward and, through AOTAutograd, backward); Model.net stays the plain module, "
                       "whose parameters the compiled one shares; prediction (untimed) runs the plain module",
                "rnn": "torch.compile (inductor, default mode) of the module the training step calls",
                "resnet50": "torch.compile (inductor, default mode) of the feature extractor "
                            "(compiled at the untimed warm-up batch)"},
    "fused_optimizer": {"cnn": "torch.optim.SGD(..., fused=True): one fused update kernel",
                        "rnn": "torch.optim.Adam(..., fused=True): one fused update kernel"},
}
# Documented switches left off, and why, by (task, device type). MEASURED: tuned / reference
# steady-epoch (or steady-batch) time on this project's shared 2-core CPU (module docstring).
_FUSED_CPU = ("fused=True optimizer: not measured on this CPU (too small to time on this shared "
              "machine); torch.optim defaults to foreach, and only on CUDA")
_GRU_NO_TRACE = ("dynamo does not trace nn.GRU (torch._dynamo.config.allow_rnn is False), nearly "
                 "all of the RNN's time")
NOT_APPLIED = {
    ("cnn", "cpu"): {"compile": ("torch.compile: measured slower on this CPU (2026-12-01): on top of "
                                 "channels_last its steady epoch took 1.02x channels_last's alone "
                                 "(median of 3; slower in each of the 3 paired rounds), and the first "
                                 "epoch about 240 s more (compilation); kept on a GPU, where fusing the "
                                 "elementwise kernels is what the docs give it for"),
                     "fused_optimizer": _FUSED_CPU,
                     "torch.compile(mode='reduce-overhead')": "CUDA graphs: GPU only"},
    ("rnn", "cpu"): {"compile": ("torch.compile: " + _GRU_NO_TRACE + "; torch._dynamo.explain(GRUClassifier) "
                                "finds 0 graphs on this CPU (2026-12-01): compiling changes nothing"),
                     "fused_optimizer": _FUSED_CPU,
                     "channels_last": "no 4-D tensor in the model"},
    ("resnet50", "cpu"): {"fused_optimizer": "inference: no optimizer",
                          "torch.compile(mode='reduce-overhead')": "CUDA graphs: GPU only"},
    ("cnn", "cuda"): {"torch.compile(mode='reduce-overhead')": "CUDA graphs: not measured on a GPU"},
    ("rnn", "cuda"): {"compile": "torch.compile: " + _GRU_NO_TRACE + " (cuDNN)",
                      "channels_last": "no 4-D tensor in the model"},
    ("resnet50", "cuda"): {"fused_optimizer": "inference: no optimizer",
                           "torch.compile(mode='reduce-overhead')": "CUDA graphs: not measured on a GPU"},
}
# On a GPU channels_last is for Tensor Cores (the tuning guide: "meant to be used in conjunction
# with AMP"): the precisions that use them.
TENSOR_CORE_PRECISIONS = ("tf32", "amp-fp16", "amp-bf16")


def _tuned(task: str, dev: torch.device) -> tuple:
    """The switches this mode turns on for this task on this device (none in the reference)."""
    if _run["mode"] != "tuned":
        return ()
    switches = TUNED[(task, dev.type)]
    if dev.type == "cuda" and _run["precision"] not in TENSOR_CORE_PRECISIONS:
        switches = tuple(s for s in switches if s != "channels_last")
    return switches


def _mode_state(task: str, dev: torch.device) -> dict:
    if _run["mode"] != "tuned":
        return modes.state(_run["mode"])
    on = _tuned(task, dev)
    words = [SWITCHES[s] if isinstance(SWITCHES[s], str) else SWITCHES[s][task] for s in on]
    off = {k: v for k, v in NOT_APPLIED[(task, dev.type)].items() if k not in on}
    if dev.type == "cuda" and "channels_last" in TUNED[(task, dev.type)] and "channels_last" not in on:
        off["channels_last"] = (f"{_run['precision']} uses no Tensor Cores; the tuning guide pairs "
                                "channels_last with AMP on Tensor Cores")
    return modes.state("tuned", switches=words, not_applied=off)


def conventions(task: str, dev: torch.device) -> dict:
    fast = ["cudnn.benchmark"] if dev.type == "cuda" else []
    mode = _mode_state(task, dev)
    if task == "cnn":
        return {"layout": "NCHW", "init": "xavier_uniform weights, zero biases", "fast_path": fast,
                "mode": mode}
    if task == "rnn":
        return {"gru_bias": "two vectors per gate (cuDNN layout)", "gru_biases": 600,
                "gru_kernel": "cuDNN" if dev.type == "cuda" else "ATen CPU",
                "adam_epsilon": "sqrt(v_hat) + eps (Kingma & Ba Algorithm 1)",  # torch.optim.Adam
                "adam_embedding_v": "square of the row's gradient (dense)",
                "fast_path": fast, "mode": mode}
    return {"resnet_conv_bias": False, "weights": "random", "source": "torchvision.models.resnet50",
            # torchvision/models/resnet.py, Bottleneck: conv2 = conv3x3(width, width, stride): the
            # stride on the 3x3 conv; norm_layer nn.BatchNorm2d with its default eps; maxpool
            # nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            "resnet_stride": "3x3 (torchvision, v1.5)", "bn_epsilon": 1e-5,
            "pool1": "max 3x3, stride 2, padding 1", "fast_path": fast, "mode": mode}


def _autocast(dev: torch.device):
    """The context the forward pass and the loss run in: torch.autocast in the amp modes."""
    dtype = _run["autocast"]
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _half_ops(task: str, dev: torch.device) -> str:
    """What computes in the half type and what does not, for this task on this device."""
    half = {torch.float16: "float16", torch.bfloat16: "bfloat16"}[_run["autocast"]]
    if task == "cnn":
        return (f"conv2d and linear in {half} (autocast's lower-precision list); relu, max_pool2d "
                f"and dropout on the {half} activations")
    if task == "resnet50":
        return (f"conv2d and linear in {half}; batch_norm (not on autocast's list) normalises the "
                f"{half} activations with float32 weights and running statistics; relu, pooling and "
                f"the residual adds on {half}; features cast to float32")
    if dev.type == "cpu":
        return (f"embedding lookup float32 (not on autocast's list); nn.GRU: aten::gru is not on the "
                f"CPU autocast list and runs its ATen CPU decomposition, whose per-step gate matmuls "
                f"(linear/addmm) autocast to {half} and whose sigmoid/tanh gates run on those {half} "
                f"results, the hidden state carried in float32 (the GRU's output is float32); "
                f"output Linear in {half}")
    if _run["gru_outside_autocast"]:
        return ("embedding lookup float32; nn.GRU (cuDNN) in float32, outside autocast "
                "(torch.autocast('cuda', enabled=False)): autocast's cuDNN RNN wrapper would cast it "
                "to float16 whatever the autocast dtype; output Linear in bfloat16")
    return (f"embedding lookup float32; nn.GRU: cuDNN GRU cast to {half} by autocast's _cudnn_rnn "
            f"wrapper (weights re-flattened in {half}); output Linear in {half}")


def numerics(task: str, model: Model, dev: torch.device) -> dict:
    """What is set for this model, read back from PyTorch: the TF32 flags, the dtype a matmul
    computes in inside the context the model runs in, the parameters' dtype (the master
    weights) and the gradient scaler."""
    precision = _run["precision"]
    matmul_tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    cudnn_tf32 = bool(torch.backends.cudnn.allow_tf32)
    matmul_precision = torch.get_float32_matmul_precision()
    with _autocast(dev):
        enabled = torch.is_autocast_enabled(dev.type)
        autocast_dtype = str(torch.get_autocast_dtype(dev.type)).replace("torch.", "") if enabled else None
        probe = torch.ones(2, 2, device=dev)
        compute_dtype = str(torch.mm(probe, probe).dtype).replace("torch.", "")
    param_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.net.parameters()})
    switches = {
        "torch.backends.cuda.matmul.allow_tf32": matmul_tf32,
        "torch.backends.cudnn.allow_tf32": cudnn_tf32,
        "torch.get_float32_matmul_precision()": matmul_precision,
        "torch.is_autocast_enabled (in the model's context)": enabled,
        "torch.get_autocast_dtype (in the model's context)": autocast_dtype,
        "parameter dtypes": param_dtypes,
        precisions.TF32_OVERRIDE_VARIABLE: os.environ.get(precisions.TF32_OVERRIDE_VARIABLE),
    }
    if dev.type == "cpu":
        switches["torch.backends.cpu.get_cpu_capability()"] = torch.backends.cpu.get_cpu_capability()
        if _run["autocast"] is torch.bfloat16:
            switches["torch.ops.mkldnn._is_mkldnn_bf16_supported()"] = bool(
                torch.ops.mkldnn._is_mkldnn_bf16_supported())
    else:
        switches["torch.cuda.get_device_capability()"] = list(torch.cuda.get_device_capability(dev))
    mechanism = []
    if _run["autocast"] is not None:
        where = ("the forward pass and the loss, and in predict; logits cast to float32 before "
                 "F.cross_entropy" if model.optimizer is not None else "the forward pass")
        mechanism.append(f"torch.autocast({dev.type!r}, dtype={_run['autocast']}) around {where}; "
                         f"float32 parameters; {_half_ops(task, dev)}")
    else:
        mechanism.append("no autocast: float32 parameters and compute")
    read_back = ["tf32", "compute_dtype", "param_dtype"]
    if model.optimizer is not None:
        read_back.append("loss_scaling")
        scaled = model.scaler is not None and model.scaler.is_enabled()
        loss_scaling = "dynamic" if scaled else "none"
        loss_scaler = "torch.amp.GradScaler" if scaled else None
        if scaled:
            switches["GradScaler.is_enabled()"] = True
            switches["GradScaler.get_scale()"] = float(model.scaler.get_scale())
            switches["GradScaler.get_growth_interval()"] = int(model.scaler.get_growth_interval())
            switches["GradScaler.get_backoff_factor()"] = float(model.scaler.get_backoff_factor())
            mechanism.append("torch.amp.GradScaler (dynamic): scaler.scale(loss).backward(), "
                             "scaler.step(optimizer) (skips a step whose gradients overflow), "
                             "scaler.update(); the loss returned is the unscaled loss")
    else:  # ResNet-50 features: inference, no loss and no optimizer; the precision's rule stated
        loss_scaling, loss_scaler = precisions.LOSS_SCALING[precision], None
        mechanism.append("inference only: no loss to scale")
    mechanism.append(f"torch.backends.cuda.matmul.allow_tf32={matmul_tf32}; "
                     f"torch.backends.cudnn.allow_tf32={cudnn_tf32}; "
                     f"torch.set_float32_matmul_precision({matmul_precision!r})")
    return precisions.state(
        precision, tf32=dev.type == "cuda" and (matmul_tf32 or cudnn_tf32),  # a CPU has no TF32
        compute_dtype=compute_dtype,
        param_dtype=param_dtypes[0] if len(param_dtypes) == 1 else f"mixed({', '.join(param_dtypes)})",
        loss_scaling=loss_scaling, loss_scaler=loss_scaler, mechanism="; ".join(mechanism),
        read_back=read_back, switches=switches)


def get_weights(model: Model, task: str) -> dict:
    """The model's weights in the canonical layout of bench/canonical.py (PyTorch's own: only
    the names change), as float32 NumPy arrays copied off the device."""
    return {name: tensor.detach().to("cpu", torch.float32).numpy().copy()
            for name, tensor in _WEIGHTS[task](model.net).items()}


def set_weights(model: Model, task: str, weights: dict) -> None:
    """Load canonical weights (bench/canonical.py) into the model; the optimizer's state (momentum,
    Adam's moments and step) is cleared, so training starts from these weights afresh."""
    tensors = _WEIGHTS[task](model.net)
    missing = [name for name in tensors if name not in weights]
    extra = sorted(set(weights) - set(tensors))
    if missing or extra:
        raise ValueError(f"{NAME} set_weights({task!r}): missing {missing[:5]}, "
                         f"not in the layout {extra[:5]}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            value = torch.from_numpy(np.array(weights[name], dtype=np.float32))  # a writable copy
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f"{NAME} set_weights({task!r}): {name} has shape {tuple(value.shape)}, "
                                 f"the model's is {tuple(tensor.shape)}")
            tensor.copy_(value)
    if model.optimizer is not None:
        model.optimizer.state.clear()  # no momentum buffer, no Adam moments or step count


def peak_device_memory(dev: torch.device) -> dict | None:
    """The most memory torch's tensors held on the GPU since the last call (the peak counter is
    reset on each call; torch's caching allocator may hold more); None on a CPU."""
    if dev.type != "cuda":
        return None
    peak = int(torch.cuda.max_memory_allocated(dev))
    torch.cuda.reset_peak_memory_stats(dev)
    return {"peak_bytes": peak, "counter": "torch.cuda.max_memory_allocated", "scope": "since the last call"}


def _scaler(dev: torch.device) -> torch.amp.GradScaler | None:
    """amp-fp16: PyTorch's dynamic loss scaling (its defaults: initial scale 2**16, doubled after
    2,000 steps without overflow, halved on an overflow)."""
    return torch.amp.GradScaler(dev.type) if _run["loss_scaling"] else None


# ---------------------------------------------------------------- 2. CNN

def build_cnn(spec, dev: torch.device) -> Model:
    c1, c2, c3, c4 = spec.conv_channels
    k, channels = spec.kernel_size, spec.image_shape[0]
    net = nn.Sequential(
        nn.Conv2d(channels, c1, k, padding="same"), nn.ReLU(),
        nn.Conv2d(c1, c2, k, padding="same"), nn.MaxPool2d(2, 2), nn.ReLU(),
        nn.Dropout(spec.conv_dropout),
        nn.Conv2d(c2, c3, k, padding="same"), nn.ReLU(),
        nn.Conv2d(c3, c4, k, padding="same"), nn.MaxPool2d(2, 2), nn.ReLU(),
        nn.Dropout(spec.conv_dropout),
        nn.Flatten(),
        nn.Linear(spec.flat_features, spec.dense_units), nn.ReLU(),
        nn.Dropout(spec.dense_dropout),
        nn.Linear(spec.dense_units, spec.classes),
    )
    for layer in net:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    net = net.to(dev)
    on = _tuned("cnn", dev)
    optimizer = torch.optim.SGD(net.parameters(), lr=spec.lr, momentum=spec.momentum,
                                **_fused(on))
    return _tuned_model(Model(net, optimizer, dev, _scaler(dev)), on)


def _fused(on: tuple) -> dict:
    return {"fused": True} if "fused_optimizer" in on else {}


def _tuned_model(model: Model, on: tuple) -> Model:
    """The tuned switches on a built model: channels_last weights, the compiled wrapper."""
    if "channels_last" in on:
        model.net = model.net.to(memory_format=torch.channels_last)  # in place: the same parameters
        model.channels_last = True
    if "compile" in on:
        model.compiled = torch.compile(model.net)  # lazy: compiles at its first call
    return model


def _runs(model: Model) -> nn.Module:
    """The module the training step or the feature extraction calls (an nn.Module's truth is its
    len(), so no `or`)."""
    return model.compiled if model.compiled is not None else model.net


def _input(model: Model, x: np.ndarray) -> torch.Tensor:
    if model.channels_last:
        return torch.from_numpy(x).to(model.device, memory_format=torch.channels_last)
    return torch.from_numpy(x).to(model.device)


def _cnn_weights(net: nn.Sequential) -> dict:
    """Canonical name -> the parameter: the four Conv2d (OIHW) and the two Linear (out, in), in
    order; Flatten flattens NCHW in (c, h, w) order, the canonical fc1 column order."""
    convs = [layer for layer in net if isinstance(layer, nn.Conv2d)]
    denses = [layer for layer in net if isinstance(layer, nn.Linear)]
    names = [f"conv{i}" for i in range(1, len(convs) + 1)] + [f"fc{i}" for i in range(1, len(denses) + 1)]
    out = {}
    for name, layer in zip(names, convs + denses):
        out[f"{name}.weight"], out[f"{name}.bias"] = layer.weight, layer.bias
    return out


def train_cnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_cnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


def _train_epoch(model: Model, batches) -> float:
    model.net.train()
    net = _runs(model)
    total = torch.zeros((), device=model.device)
    for x, y in batches:
        x = _input(model, x)
        y = torch.from_numpy(y).to(model.device, dtype=torch.long)
        model.optimizer.zero_grad(set_to_none=True)
        with _autocast(model.device):
            loss = F.cross_entropy(net(x).float(), y)  # the loss in float32
        if model.scaler is not None:
            model.scaler.scale(loss).backward()
            model.scaler.step(model.optimizer)  # skipped when the scaled gradients overflowed
            model.scaler.update()
        else:
            loss.backward()
            model.optimizer.step()
        total += loss.detach()  # the unscaled loss, summed on the device: no sync per step
    return (total / len(batches)).item()


@torch.inference_mode()
def _predict(model: Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    model.net.eval()
    with _autocast(model.device):
        logits = [model.net(_input(model, xb)).float().cpu() for xb in batches_of(x, batch_size)]
    return torch.cat(logits).numpy()


# ---------------------------------------------------------------- 3. RNN

class GRUClassifier(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.embedding = nn.Embedding(spec.max_features, spec.embedding_dim)
        self.gru = nn.GRU(spec.embedding_dim, spec.gru_units, batch_first=True)  # cuDNN on GPU
        self.dense = nn.Linear(spec.gru_units, spec.classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(tokens)
        if _run["gru_outside_autocast"] and torch.is_autocast_enabled(embedded.device.type):
            with torch.autocast(embedded.device.type, enabled=False):  # float32, not fp16 (see above)
                outputs, _ = self.gru(embedded.float())
        else:
            outputs, _ = self.gru(embedded)
        return self.dense(outputs[:, -1])  # the last time step


def build_rnn(spec, dev: torch.device) -> Model:
    net = GRUClassifier(spec).to(dev)
    on = _tuned("rnn", dev)
    optimizer = torch.optim.Adam(net.parameters(), lr=spec.lr, betas=(spec.beta1, spec.beta2),
                                 eps=spec.epsilon, **_fused(on))
    return _tuned_model(Model(net, optimizer, dev, _scaler(dev)), on)


def _rnn_weights(net: GRUClassifier) -> dict:
    """Canonical name -> the parameter: nn.GRU is the canonical formulation (gates r, z, n)."""
    gru = net.gru
    return {"embedding.weight": net.embedding.weight,
            "gru.weight_ih": gru.weight_ih_l0, "gru.weight_hh": gru.weight_hh_l0,
            "gru.bias_ih": gru.bias_ih_l0, "gru.bias_hh": gru.bias_hh_l0,
            "fc.weight": net.dense.weight, "fc.bias": net.dense.bias}


def train_rnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_rnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


# ---------------------------------------------------------------- 4. ResNet-50

def build_resnet50(spec, dev: torch.device) -> Model:
    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Identity()  # cut after global average pooling: 2,048 features
    return _tuned_model(Model(net.to(dev).eval(), None, dev), _tuned("resnet50", dev))


def _resnet50_weights(net: nn.Module) -> dict:
    """Canonical name -> the parameter or buffer: torchvision's state_dict itself (fc is an
    Identity here), without the batch norms' num_batches_tracked."""
    return {name: tensor for name, tensor in net.state_dict(keep_vars=True).items()
            if not name.endswith("num_batches_tracked")}


_WEIGHTS = {"cnn": _cnn_weights, "rnn": _rnn_weights, "resnet50": _resnet50_weights}


@torch.inference_mode()
def extract_features(model: Model, x: np.ndarray) -> np.ndarray:
    with _autocast(model.device):
        features = _runs(model)(_input(model, x))
    return features.float().cpu().numpy()  # float32 whatever the compute dtype
