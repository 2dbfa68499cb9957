"""Container images from matrix.yaml's variant table: build arguments, builds, compose.yml,
and the checks that run before any long build or run.

    python -m bench.images args FRAMEWORK VARIANT        # the --build-arg list
    python -m bench.images build FRAMEWORK VARIANT [--engine docker|podman] [-- EXTRA...]
    python -m bench.images compose > compose.yml         # regenerate compose.yml
    python -m bench.images preflight [--gpu] [--results DIR]
    python -m bench.images standin cntk|knet --out FILE   # the steps a stand-in base can run
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
                "BENCH_MODE": "${BENCH_MODE:-reference}",
                # The image id, recorded in each result when the caller knows it (a container
                # cannot see its own): BENCH_IMAGE_DIGEST=$(docker image inspect -f '{{.Id}}' IMAGE)
                "BENCH_IMAGE_DIGEST": "${BENCH_IMAGE_DIGEST:-}",
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
# BENCH_TASKS, BENCH_QUICK=1, BENCH_DATA, BENCH_PRECISION (fp32 | tf32 | amp-fp16 | amp-bf16),
# BENCH_MODE (default reference) and BENCH_RESULTS_DIR (default ./results) select the run;
# BENCH_UID=$(id -u) BENCH_GID=$(id -g) make the results yours; BENCH_IMAGE_DIGEST records the image id.
# Without an NVIDIA GPU and Container Toolkit a GPU service stops at once and names its -cpu service;
# `python -m bench.images preflight --gpu` checks the host before any build.
"""


def compose_text(m) -> str:
    return COMPOSE_HEADER + yaml.safe_dump(compose_document(m), sort_keys=False, width=120)


# ---------------------------------------------------------------- stand-in builds

# The images whose base cannot be pulled here, built on the stand-in base (Debian bookworm,
# Python 3.11) as far as their steps allow: (text in a RUN step, why it is dropped) and
# (text, replacement, why).
STANDIN = {
    "cntk": {
        "drop": [("docker/cntk/requirements.txt",
                  "cntk-gpu 2.7 has wheels for Python 3.5-3.7 only, and needs CUDA 10.0 and cuDNN 7")],
        "replace": [("python3.7", "python3", "Debian bookworm has Python 3.11, not 3.7")],
    },
    "knet": {
        "drop": [("Pkg.instantiate",
                  "the stand-in base has no Julia, and Julia's package servers cannot be reached here")],
        "replace": [],
    },
}


def instructions(text: str) -> list[str]:
    """A Dockerfile's lines, with each continued instruction joined into one entry."""
    out, current = [], []
    for line in text.splitlines():
        current.append(line)
        if not line.rstrip().endswith("\\"):
            out.append("\n".join(current))
            current = []
    if current:
        out.append("\n".join(current))
    return out


def standin_dockerfile(framework: str) -> tuple[str, list[str]]:
    """The framework's Dockerfile without what the stand-in base cannot run, and what changed."""
    if framework not in STANDIN:
        raise ImageError(f"{framework} needs no stand-in: its base image is reachable or replaceable "
                         f"with --base-image; stand-ins exist for {', '.join(STANDIN)}")
    rules = STANDIN[framework]
    kept, changes = [], []
    for step in instructions(dockerfile(framework).read_text()):
        why = next((why for marker, why in rules["drop"]
                    if step.startswith("RUN ") and marker in step), None)
        if why:
            changes.append(f"skipped: {' '.join(step.split())[:160]} ({why})")
            kept.append(f"# stand-in: step skipped ({why})")
            continue
        for old, new, why in rules["replace"]:
            if old in step and not step.startswith("#"):
                changes.append(f"changed: {old} -> {new} in {' '.join(step.split())[:100]} ({why})")
                step = step.replace(old, new)
        kept.append(step)
    missing = [marker for marker, _ in rules["drop"] if not any(marker in c for c in changes)]
    if missing:
        raise ImageError(f"{dockerfile(framework)} has no RUN step with {missing[0]!r}: update STANDIN")
    return "\n".join(kept) + "\n", changes


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
    p = sub.add_parser("standin", help="the Dockerfile of an image whose base is out of reach, "
                                       "without the steps that need that base")
    p.add_argument("framework")
    p.add_argument("--out", type=Path, required=True)
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
        if args.command == "standin":
            frameworks.get(args.framework)
            text, changes = standin_dockerfile(args.framework)
            try:
                args.out.write_text(text)
            except OSError as exc:
                raise ImageError(f"cannot write {args.out}: {exc.strerror or exc}") from None
            for change in changes:
                print(f"{args.framework} stand-in {change}")
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
