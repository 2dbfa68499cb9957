"""Data for every framework: download with checksum, load into NumPy, batch, shuffle.

One loader per data set; framework files receive NumPy arrays and never read files.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(RuntimeError):
    """A data set is missing, unreachable or corrupt; the message says how to fix it."""


class ChecksumError(DataError):
    pass


@dataclass(frozen=True)
class RemoteFile:
    filename: str
    url: str
    algorithm: str  # "md5" or "sha256"
    digest: str


CIFAR10 = RemoteFile(
    "cifar-10-python.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "md5",
    "c58f30108f718f92721af3b95e74349a",
)
IMDB = RemoteFile(
    "imdb.npz",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/imdb.npz",
    "sha256",
    "69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f",
)

DATA_MODES = ("auto", "real", "synthetic")
DOWNLOAD_TIMEOUT_S = 60


def data_dir() -> Path:
    """The cache folder: $BENCH_DATA_DIR, else ~/.cache/bench/data."""
    env = os.environ.get("BENCH_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "bench" / "data"


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, remote: RemoteFile) -> None:
    actual = file_digest(path, remote.algorithm)
    if actual != remote.digest:
        raise ChecksumError(
            f"checksum mismatch for {path}: {remote.algorithm} is {actual}, expected "
            f"{remote.digest} (truncated or corrupt download?). Delete the file and run "
            f"again to re-download, or put a good copy from {remote.url} there."
        )


def download(remote: RemoteFile, folder: Path) -> Path:
    """Fetch into folder atomically: a partial download never takes the real name."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.filename
    fd, tmp_name = tempfile.mkstemp(prefix=remote.filename + ".", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
            remote.url, timeout=DOWNLOAD_TIMEOUT_S
        ) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
        verify(tmp, remote)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def fetch(remote: RemoteFile, folder: Path | None = None, allow_download: bool | None = None) -> Path:
    """The verified local path of a data file, downloading it if it is not cached.

    BENCH_OFFLINE=1 turns downloads off (air-gapped machines: no waiting on a dead network).
    """
    folder = folder or data_dir()
    if allow_download is None:
        allow_download = not os.environ.get("BENCH_OFFLINE")
    path = folder / remote.filename
    if path.exists():
        verify(path, remote)
        return path
    if not allow_download:
        raise DataError(_missing_message(remote, folder, "downloads are off (BENCH_OFFLINE)"))
    try:
        return download(remote, folder)
    except ChecksumError:
        raise
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DataError(_missing_message(remote, folder, f"download failed: {exc}")) from exc


def _missing_message(remote: RemoteFile, folder: Path, why: str) -> str:
    return (
        f"{remote.filename} is not in the data cache {folder} and {why}. "
        f"Download it from {remote.url} on a machine with internet access and put it at "
        f"{folder / remote.filename} (or set BENCH_DATA_DIR to the folder that holds it), "
        "or use --data synthetic."
    )


# ---------------------------------------------------------------- CIFAR-10

def load_cifar10(path: Path, channel_first: bool = True, one_hot: bool = False):
    """(x_train, y_train, x_test, y_test): float32 in [0, 1], int32 labels."""
    train_x, train_y, test_x, test_y = [], [], [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                base = os.path.basename(member.name)
                if not (base.startswith("data_batch_") or base == "test_batch"):
                    continue
                batch = pickle.load(tar.extractfile(member), encoding="bytes")
                xs, ys = (test_x, test_y) if base == "test_batch" else (train_x, train_y)
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8))
                ys.append(np.asarray(batch[b"labels"], dtype=np.int32))
    except (tarfile.TarError, pickle.UnpicklingError, EOFError, KeyError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python tarball: {exc}") from exc
    if not train_x or not test_x:
        raise DataError(f"{path} holds no data_batch_* or no test_batch member")
    x_train = _cifar_images(np.concatenate(train_x), channel_first)
    x_test = _cifar_images(np.concatenate(test_x), channel_first)
    y_train, y_test = np.concatenate(train_y), np.concatenate(test_y)
    if one_hot:
        y_train, y_test = to_one_hot(y_train, 10), to_one_hot(y_test, 10)
    return x_train, y_train, x_test, y_test


def _cifar_images(rows: np.ndarray, channel_first: bool) -> np.ndarray:
    images = rows.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return images if channel_first else np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def to_one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


# ---------------------------------------------------------------- IMDB

def load_imdb(path: Path, max_features: int, seq_len: int, start_char: int = 1,
              oov_char: int = 2, index_from: int = 3):
    """(x_train, y_train, x_test, y_test) with the Keras conventions: int32 (N, seq_len)."""
    try:
        with np.load(path, allow_pickle=True) as f:
            raw = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(f"{path} is not a Keras imdb.npz: {exc}") from exc

    def encode(reviews):
        out = np.zeros((len(reviews), seq_len), dtype=np.int32)
        for i, review in enumerate(reviews):
            ids = np.asarray(review, dtype=np.int64) + index_from
            ids = np.concatenate([[start_char], ids])
            ids[ids >= max_features] = oov_char
            tail = ids[-seq_len:]  # keep the LAST tokens; zero padding goes in front
            out[i, seq_len - len(tail):] = tail
        return out

    return (encode(raw["x_train"]), raw["y_train"].astype(np.int32),
            encode(raw["x_test"]), raw["y_test"].astype(np.int32))


# ---------------------------------------------------------------- synthetic data

def synthetic_cifar10(n_train: int, n_test: int, seed: int = 0, channel_first: bool = True):
    """Seeded images of CIFAR's shape whose class is learnable (a coarse per-class pattern)."""
    rng = np.random.default_rng(seed)
    # 4x4 blocks of 8x8 pixels: coarse enough that a CNN learns it in a few dozen steps.
    coarse = rng.uniform(0.0, 1.0, size=(10, 3, 4, 4)).astype(np.float32)
    patterns = coarse.repeat(8, axis=2).repeat(8, axis=3)

    def make(n):
        y = rng.integers(0, 10, size=n, dtype=np.int32)
        noise = rng.uniform(0.0, 1.0, size=(n, 3, 32, 32)).astype(np.float32)
        x = 0.5 * noise + 0.5 * patterns[y]
        if not channel_first:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return x, y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return x_train, y_train, x_test, y_test


def synthetic_imdb(n_train: int, n_test: int, max_features: int, seq_len: int, seed: int = 0):
    """Seeded token sequences; every third token is one of ten marker words of the label's class."""
    rng = np.random.default_rng(seed)
    marker_words = np.arange(4, 24, dtype=np.int32).reshape(2, 10)  # class 0: 4-13, class 1: 14-23

    def make(n):
        y = rng.integers(0, 2, size=n, dtype=np.int32)
        x = rng.integers(24, max_features, size=(n, seq_len), dtype=np.int32)
        slots = x[:, ::3].shape[1]
        x[:, ::3] = marker_words[y[:, None], rng.integers(0, 10, size=(n, slots))]
        return x, y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return x_train, y_train, x_test, y_test


def random_images(n: int, shape: tuple, seed: int = 0, channel_first: bool = True) -> np.ndarray:
    """Seeded random float32 images for ResNet-50 (the time does not depend on values)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(size=(n, *shape), dtype=np.float32)
    return x if channel_first else np.ascontiguousarray(x.transpose(0, 2, 3, 1))


# ---------------------------------------------------------------- mini-batches

def complete_batches(n: int, batch_size: int, limit: int | None = None) -> int:
    """How many whole batches n samples give (incomplete last batch dropped)."""
    batches = n // batch_size
    return batches if limit is None else min(batches, limit)


def trim(x: np.ndarray, y: np.ndarray, batch_size: int, limit: int | None = None):
    """Keep only complete batches (at most limit of them)."""
    n = complete_batches(len(x), batch_size, limit) * batch_size
    if n == 0:
        raise DataError(f"{len(x)} samples make no complete batch of {batch_size}")
    return x[:n], y[:n]


def shuffled(x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
    """One epoch's order: a fresh permutation per epoch from the seeded generator."""
    order = rng.permutation(len(x))
    return x[order], y[order]


def minibatches(x: np.ndarray, y: np.ndarray, batch_size: int):
    """Consecutive complete batches (views, no copy), as every framework consumes them."""
    for start in range(0, len(x) - batch_size + 1, batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


# ---------------------------------------------------------------- one task's data

@dataclass
class TaskData:
    x_train: np.ndarray | None
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    kind: str  # "real" or "synthetic"
    source: str


def task_data(spec, mode: str, channel_first: bool = True, seed: int = 0,
              folder: Path | None = None, log=print) -> TaskData:
    """The arrays one task needs, real or synthetic as mode says, trimmed to complete batches."""
    if mode not in DATA_MODES:
        raise ValueError(f"--data must be one of {', '.join(DATA_MODES)}, got {mode!r}")
    if spec.name == "resnet50":
        n = (spec.batches + spec.warmup_batches) * spec.batch_size
        x = random_images(n, spec.image_shape, seed, channel_first)
        return TaskData(None, None, x, None, "synthetic", "random seeded images (as TASKS.md)")

    remote = CIFAR10 if spec.name == "cnn" else IMDB
    path = None
    if mode in ("auto", "real"):
        try:
            path = fetch(remote, folder)
        except ChecksumError:
            raise
        except DataError as exc:
            if mode == "real":
                raise
            log(f"[data] {remote.filename} unavailable ({_first_clause(exc)}); using synthetic data")
    if path is not None:
        if spec.name == "cnn":
            arrays = load_cifar10(path, channel_first=channel_first)
        else:
            arrays = load_imdb(path, spec.max_features, spec.seq_len)
        kind, source = "real", str(path)
    else:
        need_train = (spec.train_batches or 10**9) * spec.batch_size
        need_test = (spec.test_batches or 10**9) * spec.batch_size
        n_train, n_test = (50_000, 10_000) if spec.name == "cnn" else (25_000, 25_000)
        n_train, n_test = min(n_train, need_train), min(n_test, need_test)
        if spec.name == "cnn":
            arrays = synthetic_cifar10(n_train, n_test, seed, channel_first)
        else:
            arrays = synthetic_imdb(n_train, n_test, spec.max_features, spec.seq_len, seed)
        kind, source = "synthetic", f"seeded synthetic, seed {seed}"
    x_train, y_train, x_test, y_test = arrays
    x_train, y_train = trim(x_train, y_train, spec.batch_size, spec.train_batches)
    x_test, y_test = trim(x_test, y_test, spec.batch_size, spec.test_batches)
    return TaskData(x_train, y_train, x_test, y_test, kind, source)


def _first_clause(exc: Exception) -> str:
    return str(exc).split(". ")[0]
