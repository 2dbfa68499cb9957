"""What an image holds, written once at build time (the harness step of docker/*/Dockerfile):

    python3 -m bench.imagemanifest > /opt/bench/image.json

Every result run in the image copies it into env.container_image (bench/envinfo.py). It reads
package metadata only: importing the frameworks at build time would cost minutes and could
need a GPU. A container cannot learn its own image id, so the id comes from whoever starts it
(BENCH_IMAGE_DIGEST) and `build_id` tells two builds of one tag apart when it does not.
"""
from __future__ import annotations

import datetime
import json
import platform
import re
import shutil
import subprocess
import sys
import uuid

# The frameworks and what they run on; the CUDA/cuDNN wheels are recognised by name below.
PACKAGES = ("torch", "torchvision", "tensorflow", "keras", "jax", "jaxlib", "flax", "optax", "mxnet",
            "chainer", "cupy", "cntk", "cntk-gpu", "numpy")
CUDA_RUNTIME = re.compile(r"^nvidia-cuda-runtime(-cu\d+)?$")
CUDNN = re.compile(r"^nvidia-cudnn(-cu\d+)?$")
# Wheels named for their CUDA: mxnet-cu117, cupy-cuda12x, jax-cuda12-plugin.
CUDA_IN_NAME = re.compile(r"^(mxnet-cu|cupy-cuda|jax-cuda|jaxlib-cuda)(\d+)")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def cuda_of_name(name: str) -> str | None:
    """'mxnet-cu117' -> '11.7', 'cupy-cuda12x' -> '12', 'jax-cuda12-plugin' -> '12'."""
    match = CUDA_IN_NAME.match(name)
    if not match:
        return None
    digits = match.group(2)
    return f"{digits[:-1]}.{digits[-1]}" if len(digits) == 3 else digits


def installed() -> dict:
    """{name: version} of this interpreter's packages; pkg_resources below Python 3.8 (the CNTK
    image's Python 3.6 has no importlib.metadata)."""
    try:
        from importlib import metadata  # novm: the ImportError below is the fallback
    except ImportError:
        import pkg_resources

        return {_normal(d.project_name): d.version for d in pkg_resources.working_set}
    return {_normal(d.metadata["Name"] or ""): d.version for d in metadata.distributions()}


def manifest(dists=None, tools=None) -> dict:
    """dists: {name: version} (default: this interpreter's); tools: {tool: version line}."""
    if dists is None:
        dists = installed()
    else:
        dists = {_normal(k): v for k, v in dists.items()}
    packages = {n: v for n, v in sorted(dists.items())
                if n in PACKAGES or CUDA_RUNTIME.match(n) or CUDNN.match(n) or cuda_of_name(n)}
    cuda = next((v for n, v in packages.items() if CUDA_RUNTIME.match(n)), None)
    cuda = cuda or next((cuda_of_name(n) for n in packages if cuda_of_name(n)), None)
    cudnn = next((v for n, v in packages.items() if CUDNN.match(n)), None)
    return {
        "packages": packages,
        "cuda_wheels": cuda,    # None: CPU wheels, or CUDA from the base image only
        "cudnn_wheels": cudnn,
        "python": platform.python_version(),
        "tools": tool_versions() if tools is None else tools,
        "built_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build_id": uuid.uuid4().hex,
    }


def tool_versions() -> dict:
    """R and Julia, for the images that run them."""
    found = {}
    for tool in ("R", "julia"):
        if shutil.which(tool):
            proc = subprocess.run([tool, "--version"], capture_output=True, text=True)
            lines = (proc.stdout or proc.stderr).splitlines()
            found[tool] = lines[0].strip() if lines else None
    return found


if __name__ == "__main__":
    json.dump(manifest(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
