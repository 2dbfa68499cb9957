"""Container images from matrix.yaml's variant table: build arguments, builds, compose.yml,
and the checks that run before any long build or run.

    python -m bench.images args FRAMEWORK VARIANT        # the --build-arg list
    python -m bench.images build FRAMEWORK VARIANT [--engine docker|podman] [-- EXTRA...]
    python -m bench.images compose > compose.yml         # regenerate compose.yml
    python -m bench.images preflight [--gpu] [--results DIR]
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from . import envinfo, frameworks, matrix as matrix_mod, results

REPO_ROOT = Path(__file__).resolve().parent.parent
MATRIX = REPO_ROOT / "matrix.yaml"


class ImageError(ValueError):
    """A request that cannot build or run; the message says how to fix it."""


def image_name(framework: str) -> str:
    return f"bench-{framework}"


def dockerfile(framework: str) -> Path:
    return frameworks.get(framework).docker_path / "Dockerfile"


def build_args(m, framework: str, variant: str, base_image: str | None = None) -> dict:
    variants = m.variants(framework) if framework in m.frameworks else {}
    if variant not in variants:
        known = ", ".join(variants) or "none"
        raise ImageError(f"unknown CUDA variant {variant!r} for {framework}; matrix.yaml "
                         f"({m.path}) lists: {known}")
    spec = variants[variant]
    args = {
        "BASE_IMAGE": base_image or spec["base_image"],
        "CUDA_VARIANT": variant,
        "IMAGE_NAME": image_name(framework),
        "GIT_COMMIT": envinfo.git_commit() or "unknown",
        "PIP_INDEX": spec.get("pip_index", ""),
        "PIP_EXTRA": spec.get("pip_extra", ""),
        "GPU_PACKAGES": spec.get("packages", ""),
    }
    if spec.get("julia_cuda"):
        args["JULIA_CUDA_VERSION"] = spec["julia_cuda"]
    fw = frameworks.get(framework)
    if fw.env.get("KERAS_BACKEND"):
        args["KERAS_BACKEND"] = fw.env["KERAS_BACKEND"]
    return args


def build_command(m, framework: str, variant: str, engine: str = "docker",
                  base_image: str | None = None, extra=()) -> list[str]:
    args = build_args(m, framework, variant, base_image)
    cmd = [engine, "build", "-f", str(dockerfile(framework)), "-t", f"{image_name(framework)}:{variant}"]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    return cmd + list(extra) + [str(REPO_ROOT)]


def compose_document(m) -> dict:
    """compose.yml: bench-<framework> on the GPU, bench-<framework>-cpu (profile cpu) without."""
    services = {}
    for name in m.frameworks:
        fw = frameworks.get(name)
        baseline = m.frameworks[name].get("baseline_variant") or next(iter(m.variants(name)))
        args = build_args(m, name, baseline)
        args["GIT_COMMIT"] = "${BENCH_GIT_COMMIT:-unknown}"
        gpu = {
            "image": f"{image_name(name)}:{baseline}",
            "build": {"context": ".", "dockerfile": str(fw.docker_path.relative_to(REPO_ROOT) / "Dockerfile"),
                      "args": args},
            "environment": {
                "BENCH_DEVICE": "gpu",
                "BENCH_TASKS": "${BENCH_TASKS:-cnn,rnn,resnet50}",
                "BENCH_QUICK": "${BENCH_QUICK:-0}",
                "BENCH_DATA": "${BENCH_DATA:-auto}",
                "BENCH_PRECISION": "${BENCH_PRECISION:-fp32}",
            },
            "volumes": ["bench-data:/data", "${BENCH_RESULTS_DIR:-./results}:/results"],
            # Results belong to the host user: BENCH_UID=$(id -u) BENCH_GID=$(id -g).
            "user": "${BENCH_UID:-1000}:${BENCH_GID:-1000}",
            "deploy": {"resources": {"reservations": {"devices": [
                {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}}},
        }
        cpu = copy.deepcopy({k: v for k, v in gpu.items() if k != "deploy"})  # no YAML anchors
        cpu["environment"] = dict(gpu["environment"], BENCH_DEVICE="cpu")
        cpu["profiles"] = ["cpu"]
        services[f"bench-{name}"] = gpu
        services[f"bench-{name}-cpu"] = cpu
    return {"name": "bench", "services": services, "volumes": {"bench-data": {}}}


COMPOSE_HEADER = """\
# Generated from matrix.yaml by `python -m bench.images compose > compose.yml`; do not edit.
# GPU:  docker compose run --rm bench-pytorch           (needs the NVIDIA Container Toolkit)
# CPU:  docker compose run --rm bench-pytorch-cpu       (profile "cpu": no GPU reservation)
# BENCH_TASKS, BENCH_QUICK=1, BENCH_DATA, BENCH_PRECISION (fp32 | tf32 | amp-fp16 | amp-bf16) and
# BENCH_RESULTS_DIR (default ./results) select the run.
"""


def compose_text(m) -> str:
    return COMPOSE_HEADER + yaml.safe_dump(compose_document(m), sort_keys=False, width=120)


# ---------------------------------------------------------------- preflight

def nvidia_runtime_problem(engine: str = "docker") -> str | None:
    """Why a GPU container would fail here, or None when the NVIDIA runtime looks present."""
    if not shutil.which("nvidia-smi"):
        return ("no NVIDIA driver on this host (nvidia-smi not found): the GPU services need a GPU, "
                "its driver and the NVIDIA Container Toolkit; on this machine use the CPU services: "
                "`docker compose run --rm bench-<framework>-cpu`")
    if shutil.which(engine):
        info = subprocess.run([engine, "info", "--format", "{{json .Runtimes}}"], capture_output=True,
                              text=True)
        if info.returncode == 0 and "nvidia" not in info.stdout and engine == "docker":
            return ("Docker has no nvidia runtime: install the NVIDIA Container Toolkit and run "
                    "`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`")
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.images")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("args", "build"):
        p = sub.add_parser(name)
        p.add_argument("framework")
        p.add_argument("variant")
        p.add_argument("--engine", default="docker", choices=("docker", "podman"))
        p.add_argument("--base-image", help="replace the variant's base image (offline builds)")
    sub.add_parser("compose")
    p = sub.add_parser("preflight")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--results", type=Path, default=Path(os.environ.get("BENCH_RESULTS_DIR", "results")))
    p.add_argument("--engine", default="docker")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # more build options, after --
    args = parser.parse_args(argv[:len(argv) - len(extra) - (1 if extra or "--" in argv else 0)])
    try:
        m = matrix_mod.load(MATRIX)
        if args.command == "compose":
            sys.stdout.write(compose_text(m))
            return 0
        if args.command == "preflight":
            problems = [p for p in (results.folder_problem(args.results),
                                    nvidia_runtime_problem(args.engine) if args.gpu else None) if p]
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            return 2 if problems else 0
        frameworks.get(args.framework)
        cmd = build_command(m, args.framework, args.variant, args.engine, args.base_image, extra)
    except (ImageError, matrix_mod.MatrixError, frameworks.UnknownFramework) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "args":
        print(" ".join(cmd))
        return 0
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
