"""The environment record: host, CPU, GPU, driver, container and code identity.

Framework-neutral: CUDA and cuDNN as the framework reports them are added by the runner.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], timeout: float = 10) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def nvidia_gpus() -> list[dict]:
    """GPUs as nvidia-smi lists them; empty where there is no NVIDIA driver."""
    if not shutil.which("nvidia-smi"):
        return []
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                "--format=csv,noheader,nounits"])
    gpus = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            name, mem_mib, driver = parts
            try:
                mem = round(float(mem_mib) / 1024, 1)
            except ValueError:
                mem = None
            gpus.append({"name": name, "memory_gib": mem, "driver": driver})
    return gpus


def git_commit() -> str | None:
    """The project's commit: baked into images as BENCH_GIT_COMMIT, else asked of git."""
    if os.environ.get("BENCH_GIT_COMMIT"):
        return os.environ["BENCH_GIT_COMMIT"]
    if not (REPO_ROOT / ".git").exists():
        return None
    commit = _run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"])
    if commit and _run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"]):
        commit += "-dirty"
    return commit


IMAGE_MANIFEST = "/opt/bench/image.json"  # written at build time by bench/imagemanifest.py


def container_image() -> dict | None:
    """Set by the image build (docker/<framework>/Dockerfile); None outside containers.
    The digest (the image id) comes from whoever starts the container: BENCH_IMAGE_DIGEST."""
    name = os.environ.get("BENCH_IMAGE")
    if not name:
        return None
    image = {
        "name": name,
        "tag": os.environ.get("BENCH_IMAGE_TAG"),
        "variant": os.environ.get("BENCH_CUDA_VARIANT"),
        "base_image": os.environ.get("BENCH_BASE_IMAGE"),
        "digest": os.environ.get("BENCH_IMAGE_DIGEST") or None,
    }
    path = Path(os.environ.get("BENCH_IMAGE_MANIFEST") or IMAGE_MANIFEST)
    try:
        built = json.loads(path.read_text())
        if not isinstance(built, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        image["manifest_error"] = f"{path} not found (an image built before bench/imagemanifest.py)"
    except (OSError, ValueError) as exc:
        image["manifest_error"] = f"{path} unreadable: {exc}"
    else:
        image.update({k: built.get(k) for k in ("packages", "cuda_wheels", "cudnn_wheels", "tools",
                                                 "built_at", "build_id")})
    return image


def container_gpu_problem(dev: Path = Path("/dev")) -> str | None:
    """Inside an image asked for a GPU: why it cannot have one, before any framework loads."""
    if any(dev.glob("nvidia[0-9]*")):
        return None
    service = f"{os.environ.get('BENCH_IMAGE') or 'bench-<framework>'}-cpu"
    return ("this container sees no NVIDIA GPU (no /dev/nvidia0): the host has no NVIDIA driver and "
            "NVIDIA Container Toolkit, or the container was started without a GPU "
            "(`python -m bench.images preflight --gpu` checks the host). Without a GPU run the CPU "
            f"service instead: docker compose run --rm {service}")


def capture() -> dict:
    gpus = nvidia_gpus()
    return {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": memory_gib(),
        "gpu": gpus[0]["name"] if gpus else None,
        "gpu_memory_gib": gpus[0]["memory_gib"] if gpus else None,
        "gpu_count": len(gpus),
        "driver": gpus[0]["driver"] if gpus else None,
        "cuda": None,
        "cudnn": None,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "container_image": container_image(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "cpus_usable": cpus_usable(),
        "thread_settings": thread_settings(),
    }


# Variables that set how many threads the math libraries use: a run under OMP_NUM_THREADS=1 is
# another machine as far as its figures go, so the record says so (bench compare lists it).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                    "TF_NUM_INTEROP_THREADS", "XLA_FLAGS")


def thread_settings(environ=None) -> dict:
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in THREAD_VARIABLES if name in environ}


def cpus_usable():
    """CPUs this process may run on (its affinity mask: taskset, cgroups' cpusets), else the count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()
