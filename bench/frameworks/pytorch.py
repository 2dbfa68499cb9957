"""PyTorch: the three tasks of TASKS.md.

Every framework file has these sections, in this order, with these names:
  1. framework and device: init_device, synchronize, versions, data_format,
     count_params, conventions
  2. CNN: build_cnn, train_cnn_epoch, predict_cnn
  3. RNN: build_rnn, train_rnn_epoch, predict_rnn
  4. ResNet-50: build_resnet50, extract_features
Hyperparameters come from the spec; data, batching, timing and results are the harness's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from bench.errors import DeviceUnavailable, UnsupportedPrecision
from bench.runner import batches_of

NAME = "pytorch"


@dataclass
class Model:
    net: nn.Module
    optimizer: torch.optim.Optimizer | None
    device: torch.device


# ---------------------------------------------------------------- 1. framework and device

def init_device(device: str, precision: str) -> torch.device:
    if precision != "fp32":
        raise UnsupportedPrecision(f"{NAME} runs fp32 only (asked for {precision})")
    if device == "gpu":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                "no GPU found: torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "check the driver and nvidia-smi, or run with --device cpu")
        torch.backends.cudnn.benchmark = True  # cuDNN autotune, as TASKS.md asks
        return torch.device("cuda")
    return torch.device("cpu")


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


def conventions(task: str, dev: torch.device) -> dict:
    fast = ["cudnn.benchmark"] if dev.type == "cuda" else []
    if task == "cnn":
        return {"layout": "NCHW", "init": "xavier_uniform weights, zero biases", "fast_path": fast}
    if task == "rnn":
        return {"gru_bias": "two vectors per gate (cuDNN layout)", "gru_biases": 600,
                "gru_kernel": "cuDNN" if dev.type == "cuda" else "ATen CPU", "fast_path": fast}
    return {"resnet_conv_bias": False, "weights": "random", "source": "torchvision.models.resnet50",
            "fast_path": fast}


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
    optimizer = torch.optim.SGD(net.parameters(), lr=spec.lr, momentum=spec.momentum)
    return Model(net, optimizer, dev)


def train_cnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_cnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


def _train_epoch(model: Model, batches) -> float:
    model.net.train()
    total = torch.zeros((), device=model.device)
    for x, y in batches:
        x = torch.from_numpy(x).to(model.device)
        y = torch.from_numpy(y).to(model.device, dtype=torch.long)
        model.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model.net(x), y)
        loss.backward()
        model.optimizer.step()
        total += loss.detach()  # summed on the device: no sync per step
    return (total / len(batches)).item()


@torch.inference_mode()
def _predict(model: Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    model.net.eval()
    logits = [model.net(torch.from_numpy(xb).to(model.device)).cpu() for xb in batches_of(x, batch_size)]
    return torch.cat(logits).numpy()


# ---------------------------------------------------------------- 3. RNN

class GRUClassifier(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.embedding = nn.Embedding(spec.max_features, spec.embedding_dim)
        self.gru = nn.GRU(spec.embedding_dim, spec.gru_units, batch_first=True)  # cuDNN on GPU
        self.dense = nn.Linear(spec.gru_units, spec.classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.gru(self.embedding(tokens))
        return self.dense(outputs[:, -1])  # the last time step


def build_rnn(spec, dev: torch.device) -> Model:
    net = GRUClassifier(spec).to(dev)
    optimizer = torch.optim.Adam(net.parameters(), lr=spec.lr, betas=(spec.beta1, spec.beta2),
                                 eps=spec.epsilon)
    return Model(net, optimizer, dev)


def train_rnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_rnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


# ---------------------------------------------------------------- 4. ResNet-50

def build_resnet50(spec, dev: torch.device) -> Model:
    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Identity()  # cut after global average pooling: 2,048 features
    return Model(net.to(dev).eval(), None, dev)


@torch.inference_mode()
def extract_features(model: Model, x: np.ndarray) -> np.ndarray:
    return model.net(torch.from_numpy(x).to(model.device)).cpu().numpy()
