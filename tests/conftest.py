"""Shared fixtures: tiny data files in the real formats, and the framework environments."""
from __future__ import annotations

import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bench import data, frameworks, venvs  # noqa: E402


def make_cifar_tarball(path: Path, n_per_batch: int = 20, seed: int = 0) -> Path:
    """A CIFAR-10 python tarball in the real layout: 5 data batches and a test batch."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {
                b"batch_label": name.encode(),
                b"labels": rng.integers(0, 10, n_per_batch).tolist(),
                b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                b"filenames": [f"{name}_{i}.png".encode() for i in range(n_per_batch)],
            }
            blob = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        meta = pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    return path


def make_imdb_npz(path: Path, n: int = 12, seed: int = 0) -> Path:
    """A Keras imdb.npz: object arrays of word-rank lists of varying length, labels 0/1."""
    rng = np.random.default_rng(seed)

    def reviews(count):
        out = np.empty(count, dtype=object)
        for i in range(count):
            out[i] = rng.integers(1, 40_000, size=int(rng.integers(5, 300))).tolist()
        return out

    with open(path, "wb") as f:
        np.savez(f, x_train=reviews(n), y_train=rng.integers(0, 2, n),
                 x_test=reviews(n), y_test=rng.integers(0, 2, n))
    return path


def remote_for(path: Path, real: data.RemoteFile, url: str | None = None) -> data.RemoteFile:
    digest = hashlib.new(real.algorithm, path.read_bytes()).hexdigest()
    return data.RemoteFile(path.name, url or real.url, real.algorithm, digest)


@pytest.fixture
def cifar_file(tmp_path):
    return make_cifar_tarball(tmp_path / "cifar-10-python.tar.gz")


@pytest.fixture
def imdb_file(tmp_path):
    return make_imdb_npz(tmp_path / "imdb.npz")


def installed_frameworks(language: str = "python") -> list:
    """Frameworks whose environment `bench setup` made here (others are skipped, with reason)."""
    return [fw for fw in frameworks.FRAMEWORKS.values() if fw.language == language]


def require_env(fw) -> Path:
    if venvs.state(fw) not in ("ready", "stale"):
        pytest.skip(f"{fw.name}: no environment here (run `python -m bench setup {fw.name}`)")
    return frameworks.venv_python(fw)


def run_bench(*args, env=None, timeout=1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def fake_program_on_path(tmp_path: Path, name: str, text: str, **env) -> dict:
    """An environment whose PATH finds `name` first: an executable tmp_path/bin/name holding text."""
    import os
    import stat

    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    program = folder / name
    program.write_text(text)
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    return dict(os.environ, PATH=f"{folder}{os.pathsep}{os.environ['PATH']}", **env)
