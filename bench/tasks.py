"""The three tasks of TASKS.md: every hyperparameter lives here, once.

Framework files read these specs; they never repeat a number.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Union

TASK_NAMES = ("cnn", "rnn", "resnet50")


@dataclass(frozen=True)
class CNNSpec:
    """VGG-style CNN on CIFAR-10."""

    name: str = "cnn"
    conv_channels: tuple = (50, 50, 100, 100)
    kernel_size: int = 3
    image_shape: tuple = (3, 32, 32)  # channels, height, width
    dense_units: int = 512
    classes: int = 10
    conv_dropout: float = 0.25
    dense_dropout: float = 0.5
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    epochs: int = 10
    expected_params: tuple = (3_441_592,)
    # Sizes: None means the whole data set.
    train_batches: int | None = None
    test_batches: int | None = None

    @property
    def flat_features(self) -> int:
        return self.conv_channels[-1] * (self.image_shape[1] // 4) * (self.image_shape[2] // 4)


@dataclass(frozen=True)
class RNNSpec:
    """GRU sentiment classifier on IMDB."""

    name: str = "rnn"
    max_features: int = 30_000
    seq_len: int = 150
    embedding_dim: int = 125
    gru_units: int = 100
    classes: int = 2
    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    batch_size: int = 64
    epochs: int = 3
    # 3,818,002 with one bias vector per gate, 3,818,302 with two (cuDNN layout).
    expected_params: tuple = (3_818_002, 3_818_302)
    train_batches: int | None = None
    test_batches: int | None = None


@dataclass(frozen=True)
class ResNet50Spec:
    """ResNet-50 feature extraction (inference), random seeded images."""

    name: str = "resnet50"
    image_shape: tuple = (3, 224, 224)
    features: int = 2048
    batch_size: int = 32
    batches_gpu: int = 40
    batches_cpu: int = 8
    warmup_batches: int = 1
    # 23,508,032 without conv biases (torchvision), 23,534,592 with (Keras applications).
    expected_params: tuple = (23_508_032, 23_534_592)
    batches: int | None = None  # set by sized(); None until the device is known


TaskSpec = Union[CNNSpec, RNNSpec, ResNet50Spec]

SPECS = {"cnn": CNNSpec(), "rnn": RNNSpec(), "resnet50": ResNet50Spec()}

# --quick: small enough that all three tasks of one framework run in minutes on 2 CPU cores.
QUICK = {
    "cnn": dict(epochs=1, train_batches=40, test_batches=10),
    "rnn": dict(epochs=1, train_batches=20, test_batches=10),
    "resnet50": dict(batches_gpu=10, batches_cpu=2),
}


def sized(task: str, device: str, quick: bool = False, epochs: int | None = None) -> TaskSpec:
    """The spec of one task at the size this run uses."""
    if task not in SPECS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASK_NAMES)}")
    spec = SPECS[task]
    if quick:
        spec = replace(spec, **QUICK[task])
    if epochs is not None:
        if task == "resnet50":
            pass  # inference: no epochs
        elif epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {epochs}")
        else:
            spec = replace(spec, epochs=epochs)
    if task == "resnet50":
        spec = replace(spec, batches=spec.batches_gpu if device == "gpu" else spec.batches_cpu)
    return spec


def hyperparameters(spec: TaskSpec) -> dict:
    """The spec as a JSON-ready dict, for the result record."""
    out = {}
    for key, value in asdict(spec).items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def parse_tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in SPECS]
    if unknown:
        raise ValueError(
            f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASK_NAMES)} "
            "(comma-separated, e.g. --tasks cnn,rnn)"
        )
    if not tasks:
        raise ValueError(f"no task given; choose from {', '.join(TASK_NAMES)}")
    return tasks


__all__ = [
    "CNNSpec", "RNNSpec", "ResNet50Spec", "SPECS", "QUICK", "TASK_NAMES",
    "sized", "hyperparameters", "parse_tasks",
]
