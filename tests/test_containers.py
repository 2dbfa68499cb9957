"""The images: hadolint, one variant table, compose.yml, preflight errors, and a real build
and compose run through podman (scripts/container-smoke)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from bench import frameworks, images, matrix
from conftest import REPO

DOCKERFILES = sorted((REPO / "docker").glob("*/Dockerfile"))
MATRIX = matrix.load(REPO / "matrix.yaml")


def _tool(name):
    from pathlib import Path

    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[test]'"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_is_clean(dockerfile):
    proc = subprocess.run([_tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in dockerfile.read_text().splitlines():
        if "hadolint ignore=" in line:  # every ignored rule is justified just above
            text = dockerfile.read_text()
            above = text[:text.index(line)].rstrip().splitlines()[-1]
            assert above.startswith("#") and len(above) > 20, f"unjustified: {line}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_the_commit_argument_comes_after_every_run_step(dockerfile):
    # A build argument invalidates the cache of every RUN after its ARG: declared early, each
    # new commit would reinstall gigabytes of CUDA wheels.
    lines = dockerfile.read_text().splitlines()
    arg_line = next(i for i, line in enumerate(lines) if line.startswith("ARG GIT_COMMIT"))
    last_run = max(i for i, line in enumerate(lines) if line.startswith("RUN "))
    assert arg_line > last_run, f"{dockerfile}: ARG GIT_COMMIT on line {arg_line + 1}, a RUN on line {last_run + 1}"


def test_every_python_framework_has_an_image_that_uses_its_pins():
    for fw in frameworks.FRAMEWORKS.values():
        dockerfile = fw.docker_path / "Dockerfile"
        assert dockerfile.exists(), f"{fw.name}: {dockerfile} missing"
        text = dockerfile.read_text()
        for step in fw.pip_steps:
            for i, arg in enumerate(step):
                if arg == "-r":
                    pin = step[i + 1]
                    assert pin in text or f"{os.path.dirname(pin)}/" in text, f"{fw.name}: {pin} not used"
        assert 'ENTRYPOINT ["python' in text and "-m\", \"bench\", \"run\"]" in text
        assert "USER 1000" in text and "BENCH_NO_VENV=1" in text


def test_dockerfile_defaults_are_the_matrix_baseline_variants():
    for name in MATRIX.frameworks:
        text = frameworks.get(name).docker_path.joinpath("Dockerfile").read_text()
        baseline = MATRIX.frameworks[name]["baseline_variant"]
        if frameworks.get(name).docker_dir != name:
            continue  # a shared Dockerfile (keras-*) defaults to one of its entries
        default = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
        assert default == MATRIX.variants(name)[baseline]["base_image"], name
        assert f"ARG CUDA_VARIANT={baseline}" in text, name


def test_compose_is_generated_from_the_matrix_and_valid():
    text = (REPO / "compose.yml").read_text()
    assert text == images.compose_text(MATRIX), "compose.yml is stale: python -m bench.images compose > compose.yml"
    doc = yaml.safe_load(text)
    assert "version" not in doc
    schema = json.loads((REPO / "docker" / "compose-spec.schema.json").read_text())
    jsonschema.validate(doc, schema)
    for name in MATRIX.frameworks:
        gpu, cpu = doc["services"][f"bench-{name}"], doc["services"][f"bench-{name}-cpu"]
        [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
        assert "deploy" not in cpu and cpu["profiles"] == ["cpu"] and cpu["environment"]["BENCH_DEVICE"] == "cpu"
        assert "bench-data:/data" in gpu["volumes"] and "${BENCH_RESULTS_DIR:-./results}:/results" in gpu["volumes"]
    assert "bench-data" in doc["volumes"]


def test_docker_compose_accepts_the_file():
    compose = _tool("docker-compose")
    proc = subprocess.run([compose, "-f", str(REPO / "compose.yml"), "config", "-q"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_unknown_variant_is_refused_before_any_build():
    proc = subprocess.run([sys.executable, "-m", "bench.images", "build", "pytorch", "cu999"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown CUDA variant 'cu999' for pytorch" in proc.stderr and "cu126, cu128, cu130" in proc.stderr
    assert "+ docker build" not in proc.stdout


def test_preflight_refuses_a_gpu_run_without_the_nvidia_runtime(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver")
    proc = subprocess.run([sys.executable, "-m", "bench.images", "preflight", "--gpu", "--results",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "no NVIDIA driver" in proc.stderr and "-cpu" in proc.stderr


def test_preflight_refuses_an_unwritable_results_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-m", "bench.images", "preflight", "--results",
                           str(blocker / "results")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "is not writable" in proc.stderr


def test_build_command_carries_the_variant(tmp_path):
    cmd = images.build_command(MATRIX, "mxnet", "cu112", "podman")
    assert cmd[:2] == ["podman", "build"] and "bench-mxnet:cu112" in cmd
    assert "GPU_PACKAGES=mxnet-cu112==1.9.1" in cmd
    assert "BASE_IMAGE=nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04" in cmd
    keras = images.build_command(MATRIX, "keras-torch", "cu130")
    assert "KERAS_BACKEND=torch" in keras and str(REPO / "docker/keras/Dockerfile") in keras


def test_every_service_passes_the_mode_and_the_image_id():
    doc = yaml.safe_load((REPO / "compose.yml").read_text())
    for name, service in doc["services"].items():
        assert service["environment"]["BENCH_MODE"] == "${BENCH_MODE:-reference}", name
        assert service["environment"]["BENCH_IMAGE_DIGEST"] == "${BENCH_IMAGE_DIGEST:-}", name
    assert "BENCH_MODE" in images.COMPOSE_HEADER


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_image_writes_its_manifest(dockerfile):
    text = dockerfile.read_text()
    assert "python3 -m bench.imagemanifest > /opt/bench/image.json" in text
    harness = text.index("pip install ${PIP_OPTIONS} /opt/bench")
    assert text.index("imagemanifest") > harness  # after the harness it runs


def test_the_manifest_names_the_frameworks_and_their_cuda_wheels():
    from bench import imagemanifest

    built = imagemanifest.manifest({"torch": "2.14.1", "nvidia-cuda-runtime-cu13": "13.0.96",
                                    "nvidia_cudnn_cu13": "9.13.0.50", "requests": "2.0"}, tools={})
    assert built["packages"] == {"nvidia-cuda-runtime-cu13": "13.0.96", "nvidia-cudnn-cu13": "9.13.0.50",
                                 "torch": "2.14.1"}
    assert (built["cuda_wheels"], built["cudnn_wheels"]) == ("13.0.96", "9.13.0.50")
    assert len(built["build_id"]) == 32 and built["built_at"].endswith("Z")
    mx = imagemanifest.manifest({"mxnet-cu117": "1.9.1", "numpy": "1.23.5"}, tools={})
    assert mx["cuda_wheels"] == "11.7" and mx["cudnn_wheels"] is None
    assert imagemanifest.cuda_of_name("cupy-cuda12x") == "12"
    cpu = imagemanifest.manifest({"jax": "0.10.2", "jaxlib": "0.10.2"}, tools={})
    assert cpu["cuda_wheels"] is None and cpu["packages"] == {"jax": "0.10.2", "jaxlib": "0.10.2"}


def test_results_carry_the_image_manifest_and_name_a_broken_one(tmp_path, monkeypatch):
    from bench import envinfo

    monkeypatch.setenv("BENCH_IMAGE", "bench-jax")
    monkeypatch.setenv("BENCH_IMAGE_DIGEST", "")
    manifest = tmp_path / "image.json"
    monkeypatch.setenv("BENCH_IMAGE_MANIFEST", str(manifest))
    manifest.write_text(json.dumps({"packages": {"jax": "0.10.2"}, "cuda_wheels": None, "build_id": "ab"}))
    image = envinfo.container_image()
    assert image["packages"] == {"jax": "0.10.2"} and image["build_id"] == "ab" and image["digest"] is None
    assert "manifest_error" not in image
    manifest.write_text("[1, 2")
    assert "unreadable" in envinfo.container_image()["manifest_error"]
    manifest.unlink()
    assert "not found" in envinfo.container_image()["manifest_error"]
    monkeypatch.setenv("BENCH_IMAGE_DIGEST", "sha256:0123")
    assert envinfo.container_image()["digest"] == "sha256:0123"


def test_a_container_without_a_gpu_names_its_cpu_service(tmp_path, monkeypatch):
    from bench import envinfo

    monkeypatch.setenv("BENCH_IMAGE", "bench-mxnet")
    problem = envinfo.container_gpu_problem(tmp_path)
    assert "no NVIDIA GPU" in problem and "docker compose run --rm bench-mxnet-cpu" in problem
    (tmp_path / "nvidiactl").touch()  # the control device alone is no GPU
    assert envinfo.container_gpu_problem(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert envinfo.container_gpu_problem(tmp_path) is None


def test_a_gpu_run_in_an_image_without_a_gpu_stops_before_any_framework(tmp_path):
    if list(Path("/dev").glob("nvidia[0-9]*")):
        pytest.skip("this machine has an NVIDIA GPU")
    env = dict(os.environ, BENCH_IMAGE="bench-r-keras", BENCH_NO_VENV="1")
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--framework", "r-keras", "--device", "gpu",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "docker compose run --rm bench-r-keras-cpu" in proc.stderr and not list(tmp_path.iterdir())


@pytest.mark.parametrize("name,skipped,gone", [("cntk", "cntk/requirements.txt", "python3.7"),
                                                ("knet", "Pkg.instantiate", "julia --project")])
def test_standin_dockerfiles_drop_only_what_the_base_lacks(name, skipped, gone):
    text, changes = images.standin_dockerfile(name)
    original = images.dockerfile(name).read_text()
    assert skipped in original and gone in original and gone not in text
    assert any(c.startswith("skipped:") and skipped in c for c in changes)
    for kept in ("pip install ${PIP_OPTIONS} /opt/bench", "USER 1000:1000", "ENTRYPOINT", "ARG GIT_COMMIT"):
        assert kept in text
    assert text.count("\nRUN ") == original.count("\nRUN ") - 1


def test_standin_refuses_an_image_with_a_reachable_base(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.images", "standin", "pytorch", "--out",
                           str(tmp_path / "f")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "needs no stand-in" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "bench.images", "standin", "knet", "--out",
                           str(tmp_path / "no" / "f")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot write" in proc.stderr


@pytest.mark.slow
def test_image_builds_and_runs_through_compose_and_the_docker_executor(tmp_path):
    """The JAX image (CPU jaxlib) fits a CI machine's disk; `--full` adds PyTorch and TensorFlow,
    `--all` every image (README "Containers"): too big for CI, run by hand."""
    if not shutil.which("podman") and not os.environ.get("CI"):
        pytest.skip("podman is not installed here (scripts/install.d/40-containers.sh installs it)")
    proc = subprocess.run([str(REPO / "scripts" / "container-smoke")], cwd=REPO, capture_output=True,
                          text=True, timeout=2400, env=dict(os.environ, BENCH_SMOKE_DIR=str(tmp_path)))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    ok_lines = [line for line in proc.stdout.splitlines() if line.startswith("ok  jax ")]
    assert len(ok_lines) == 4, proc.stdout[-3000:]  # 3 tasks through compose, 1 sweep cell
    assert all("image bench-jax:cuda12" in line and "jax 0.10.2" in line for line in ok_lines)
    for name in MATRIX.frameworks:
        assert f"ok  bench-{name}: docker compose config reserves an NVIDIA GPU" in proc.stdout
    if not shutil.which("nvidia-smi"):
        assert "ok  bench-jax without a GPU: exit 2" in proc.stdout
    assert "bench sweep --executor docker" in proc.stdout and "container smoke test passed" in proc.stdout


def test_the_manifest_reads_packages_without_importlib_metadata(monkeypatch):
    """The CNTK image's Python 3.6 has no importlib.metadata: pkg_resources answers the same."""
    import sys

    from bench import imagemanifest

    pytest.importorskip("pkg_resources")
    expected = imagemanifest.installed()
    monkeypatch.setitem(sys.modules, "importlib.metadata", None)  # its import now raises ImportError
    monkeypatch.delattr("importlib.metadata", raising=False)
    assert imagemanifest.installed().get("numpy") == expected.get("numpy") is not None
