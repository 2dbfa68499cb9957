"""The registry of frameworks: where each one's code, pins, image and environment live.

This file imports no framework. Each entry names its framework file (Python) or its
launcher (other languages), its pin files under docker/, and its virtual environment.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class Framework:
    name: str                       # matrix name, e.g. "keras-jax"
    display: str                    # how the report shows it
    language: str = "python"        # "python", "julia" or "r"
    module: str | None = None       # framework file, for Python frameworks
    import_name: str | None = None  # the package whose presence means "installed"
    docker_dir: str | None = None   # docker/<docker_dir>/ holds the Dockerfile and pins
    venv: str | None = None         # .venvs/<venv>
    # pip steps for `bench setup`, each a list of pip-install arguments; paths are
    # relative to the repository root. The Dockerfile runs the same files.
    pip_steps: tuple = ()
    env: dict = field(default_factory=dict)  # variables set before the framework is imported
    runs_here: bool = True          # False: container only (no wheel or toolchain here)
    note: str = ""

    @property
    def docker_path(self) -> Path:
        return REPO_ROOT / "docker" / (self.docker_dir or self.name)


def _python(name, display, import_name, *, docker_dir=None, pip_steps=None, env=None,
            runs_here=True, note="", module=None):
    docker_dir = docker_dir or name
    if pip_steps is None:
        pip_steps = (("-r", f"docker/{docker_dir}/requirements.txt"),)
    return Framework(
        name=name, display=display, language="python",
        module=module or f"bench.frameworks.{name.replace('-', '_')}",
        import_name=import_name, docker_dir=docker_dir, venv=name,
        pip_steps=tuple(tuple(s) for s in pip_steps), env=env or {},
        runs_here=runs_here, note=note,
    )


FRAMEWORKS: dict[str, Framework] = {
    fw.name: fw
    for fw in (
        _python("pytorch", "PyTorch", "torch"),
        _python("tensorflow", "TensorFlow (tf.Module, GradientTape)", "tensorflow",
                env={"TF_CPP_MIN_LOG_LEVEL": "2"}),
        _python("mxnet", "MXNet (Gluon)", "mxnet"),
        _python("chainer", "Chainer", "chainer", pip_steps=(
            ("-r", "docker/chainer/requirements-build.txt"),
            ("--no-build-isolation", "-r", "docker/chainer/requirements.txt"),
        )),
        _python("cntk", "CNTK", "cntk", runs_here=False,
                note="container only, not run here: CNTK 2.7 has no wheel for Python 3.11"),
        _python("jax", "JAX (Flax)", "flax"),
        _python("keras-jax", "Keras 3 (JAX)", "keras", module="bench.frameworks.keras_multi",
                docker_dir="keras", pip_steps=(("-r", "docker/keras/requirements-jax.txt"),),
                env={"KERAS_BACKEND": "jax"}),
        _python("keras-torch", "Keras 3 (PyTorch)", "keras", module="bench.frameworks.keras_multi",
                docker_dir="keras", pip_steps=(("-r", "docker/keras/requirements-torch.txt"),),
                env={"KERAS_BACKEND": "torch"}),
        _python("keras-tensorflow", "Keras 3 (TensorFlow)", "keras",
                module="bench.frameworks.keras_multi", docker_dir="keras",
                pip_steps=(("-r", "docker/keras/requirements-tensorflow.txt"),),
                env={"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}),
        Framework(name="r-keras", display="R: Keras (TensorFlow) through reticulate", language="r",
                  docker_dir="r-keras", pip_steps=(("-r", "docker/tensorflow/requirements.txt"),),
                  note="r/bench.R; runs TensorFlow's environment (.venvs/tensorflow) through reticulate"),
        Framework(name="knet", display="Julia: Knet", language="julia", docker_dir="knet", runs_here=False,
                  note="julia/bench.jl; container only, not run here: Julia cannot be installed on this machine"),
    )
}


class UnknownFramework(KeyError):
    def __str__(self) -> str:
        return (f"unknown framework {self.args[0]!r}; known: {', '.join(sorted(FRAMEWORKS))} "
                "(see `python -m bench list`)")


def get(name: str) -> Framework:
    try:
        return FRAMEWORKS[name]
    except KeyError:
        raise UnknownFramework(name) from None


def venv_root() -> Path:
    """Where `bench setup` puts environments: $BENCH_VENV_DIR, else <repo>/.venvs."""
    return Path(os.environ.get("BENCH_VENV_DIR") or REPO_ROOT / ".venvs")


def venv_path(fw: Framework) -> Path:
    return venv_root() / (fw.venv or fw.name)


def venv_python(fw: Framework) -> Path:
    return venv_path(fw) / "bin" / "python"


def importable_here(fw: Framework) -> bool:
    return bool(fw.import_name) and importlib.util.find_spec(fw.import_name) is not None
