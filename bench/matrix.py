"""matrix.yaml: load, validate (errors name the key and its line), expand into cells."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from . import frameworks, tasks

EXECUTORS = ("local", "docker", "slurm")
SLURM_RUNNERS = ("venv", "podman", "apptainer", "pyxis")
TOP_KEYS = {"version", "tasks", "precisions", "repeats", "quick", "data", "timeout_s",
            "frameworks", "gpus", "executors"}
FRAMEWORK_KEYS = {"baseline_variant", "variants"}
VARIANT_KEYS = {"base_image", "pip_index", "pip_extra", "packages", "julia_cuda", "note"}
GPU_KEYS = {"device", "gres", "constraint", "docker_device_ids", "note"}
EXECUTOR_KEYS = {
    "local": {"python"},
    "docker": {"base_url", "data_volume", "image_prefix"},
    "slurm": {"runner", "partition", "time", "extra_args", "poll_s", "shared_dir", "image_prefix",
              "python"},
}


class MatrixError(ValueError):
    """matrix.yaml is wrong; the message names the key (and its line)."""


@dataclass(frozen=True)
class Cell:
    framework: str
    variant: str
    gpu: str
    device: str
    task: str
    precision: str
    repeat: int
    quick: bool

    @property
    def id(self) -> str:
        return (f"{self.framework}__{self.variant}__{self.gpu}__{self.task}__{self.precision}"
                f"__r{self.repeat}{'__quick' if self.quick else ''}")


class Matrix:
    def __init__(self, doc: dict, path: Path, lines: dict):
        self.doc, self.path, self._lines = doc, path, lines

    # -- the validated content
    @property
    def frameworks(self) -> dict:
        return self.doc["frameworks"]

    @property
    def gpus(self) -> dict:
        return self.doc["gpus"]

    def executor(self, name: str) -> dict:
        return (self.doc.get("executors") or {}).get(name) or {}

    def variants(self, framework: str) -> dict:
        return self.frameworks[framework].get("variants") or {}

    def cells(self, executor: str, only_frameworks=None, only_variants=None, only_gpus=None,
              only_tasks=None, quick=None) -> list[Cell]:
        doc = self.doc
        chosen_frameworks = only_frameworks or list(self.frameworks)
        for name in chosen_frameworks:
            if name not in self.frameworks:
                raise MatrixError(f"--frameworks: {name!r} is not in {self.path} "
                                  f"(it has {', '.join(self.frameworks)})")
        chosen_gpus = only_gpus or list(self.gpus)
        for name in chosen_gpus:
            if name not in self.gpus:
                raise MatrixError(f"--gpus: {name!r} is not in {self.path} (it has {', '.join(self.gpus)})")
        quick = doc.get("quick", False) if quick is None else quick
        out = []
        for fw in chosen_frameworks:
            # Local runs use the framework's virtual environment: there is no image variant.
            if executor == "local" or (executor == "slurm" and self.executor("slurm").get("runner", "venv") == "venv"):
                variants = ["venv"]
            else:
                variants = list(self.variants(fw))
                if only_variants:
                    variants = [v for v in variants if v in only_variants]
            for variant in variants:
                for gpu in chosen_gpus:
                    for task in only_tasks or doc.get("tasks", list(tasks.TASK_NAMES)):
                        for precision in doc.get("precisions", ["fp32"]):
                            for repeat in range(doc.get("repeats", 1)):
                                out.append(Cell(fw, variant, gpu, self.gpus[gpu]["device"], task,
                                                precision, repeat, bool(quick)))
        if only_variants and executor != "local" and not out:
            raise MatrixError(f"--variants {','.join(only_variants)} matches no variant of the chosen frameworks")
        return out

    # -- errors with line numbers
    def line(self, *path) -> str:
        found = self._lines.get(tuple(path))
        return f" (line {found})" if found else ""


def _lines(node, prefix=()) -> dict:
    """(key, key, ...) -> 1-based line of that key in the YAML source."""
    out = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, key_node.value)
            out[key] = key_node.start_mark.line + 1
            out.update(_lines(value_node, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*prefix, i)] = item.start_mark.line + 1
            out.update(_lines(item, (*prefix, i)))
    return out


def load(path) -> Matrix:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MatrixError(f"cannot read {path}: {exc}") from exc
    try:
        node = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MatrixError(f"{path} is not valid YAML: {exc}") from exc
    matrix = Matrix(doc if isinstance(doc, dict) else {}, path, _lines(node) if node else {})
    validate(matrix, doc)
    return matrix


def _unknown(keys, allowed, where, matrix, *path):
    for key in keys:
        if key not in allowed:
            raise MatrixError(f"{matrix.path}: unknown key {'.'.join(map(str, (*path, key)))!r}"
                              f"{matrix.line(*path, key)}; allowed here: {', '.join(sorted(allowed))}")


def validate(matrix: Matrix, doc) -> None:
    p = matrix.path
    if not isinstance(doc, dict):
        raise MatrixError(f"{p}: the top level must be a mapping (frameworks:, gpus:, ...)")
    _unknown(doc, TOP_KEYS, "top", matrix)
    if doc.get("version") != 1:
        raise MatrixError(f"{p}: version must be 1{matrix.line('version')}")
    for key in ("frameworks", "gpus"):
        if not isinstance(doc.get(key), dict) or not doc[key]:
            raise MatrixError(f"{p}: {key!r} must be a non-empty mapping{matrix.line(key)}")
    for task in doc.get("tasks", []):
        if task not in tasks.SPECS:
            raise MatrixError(f"{p}: unknown task {task!r} in tasks{matrix.line('tasks')}; "
                              f"choose from {', '.join(tasks.TASK_NAMES)}")
    for precision in doc.get("precisions", []):
        if precision not in ("fp32", "fp16", "bf16", "amp"):
            raise MatrixError(f"{p}: unknown precision {precision!r}{matrix.line('precisions')}")
    if not isinstance(doc.get("repeats", 1), int) or doc.get("repeats", 1) < 1:
        raise MatrixError(f"{p}: repeats must be a whole number >= 1{matrix.line('repeats')}")
    if doc.get("data", "auto") not in ("auto", "real", "synthetic"):
        raise MatrixError(f"{p}: data must be auto, real or synthetic{matrix.line('data')}")
    for name, entry in doc["frameworks"].items():
        if name not in frameworks.FRAMEWORKS:
            raise MatrixError(f"{p}: framework {name!r}{matrix.line('frameworks', name)} has no "
                              f"implementation; known: {', '.join(sorted(frameworks.FRAMEWORKS))}")
        entry = entry or {}
        if not isinstance(entry, dict):
            raise MatrixError(f"{p}: frameworks.{name} must be a mapping{matrix.line('frameworks', name)}")
        doc["frameworks"][name] = entry
        _unknown(entry, FRAMEWORK_KEYS, "framework", matrix, "frameworks", name)
        for variant, spec in (entry.get("variants") or {}).items():
            spec = spec or {}
            _unknown(spec, VARIANT_KEYS, "variant", matrix, "frameworks", name, "variants", variant)
            if not spec.get("base_image"):
                raise MatrixError(f"{p}: variant frameworks.{name}.variants.{variant}"
                                  f"{matrix.line('frameworks', name, 'variants', variant)} has no "
                                  "image: give it a base_image")
        baseline = entry.get("baseline_variant")
        if baseline is not None and baseline not in (entry.get("variants") or {}):
            raise MatrixError(f"{p}: frameworks.{name}.baseline_variant {baseline!r}"
                              f"{matrix.line('frameworks', name, 'baseline_variant')} is not one of its variants")
    for name, gpu in doc["gpus"].items():
        gpu = gpu or {}
        _unknown(gpu, GPU_KEYS, "gpu", matrix, "gpus", name)
        if gpu.get("device") not in ("cpu", "gpu"):
            raise MatrixError(f"{p}: GPU type {name!r}{matrix.line('gpus', name)} has no mapping: "
                              "give it device: gpu (with gres: or constraint: for Slurm) or device: cpu")
    for name, conf in (doc.get("executors") or {}).items():
        if name not in EXECUTORS:
            raise MatrixError(f"{p}: unknown executor {name!r}{matrix.line('executors', name)}; "
                              f"choose from {', '.join(EXECUTORS)}")
        _unknown(conf or {}, EXECUTOR_KEYS[name], "executor", matrix, "executors", name)
    runner = matrix.executor("slurm").get("runner", "venv")
    if runner not in SLURM_RUNNERS:
        raise MatrixError(f"{p}: executors.slurm.runner {runner!r}{matrix.line('executors', 'slurm', 'runner')} "
                          f"must be one of {', '.join(SLURM_RUNNERS)}")
