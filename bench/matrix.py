"""matrix.yaml: load safely, validate against its JSON Schema (errors name the key and its
line), expand into cells.

Whatever the file holds, `load` either returns a Matrix or raises MatrixError with a message
that says what is wrong, where, and how to fix it; never a traceback, never a quietly
different sweep. In order: at most MAX_BYTES bytes, strict UTF-8, YAML composed into nodes
(at most MAX_DEPTH levels, no scalar over MAX_SCALAR characters, no duplicate key in any
mapping, no recursive alias, at most MAX_NODES nodes once aliases are expanded: counted on
the node graph, never by expanding it), then constructed, then validated against
bench/schema/matrix-v1.schema.json, then the checks that need the framework registry or
cross-references. `Matrix.cells` counts the cells before it builds any (MAX_CELLS).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from . import frameworks, modes, results, tasks

EXECUTORS = ("local", "docker", "slurm")
SLURM_RUNNERS = ("venv", "podman", "apptainer", "pyxis")
TOP_KEYS = {"version", "tasks", "precisions", "modes", "repeats", "quick", "data", "timeout_s",
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

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schema" / f"matrix-v{SCHEMA_VERSION}.schema.json"

MAX_BYTES = 1024 * 1024     # the file
MAX_NODES = 100_000         # YAML nodes once aliases are expanded ("billion laughs")
MAX_DEPTH = 32              # nesting, aliases expanded (matrix.yaml itself needs 5)
MAX_SCALAR = 4096           # characters in one key or value
MAX_CELLS = 10_000          # cells of one sweep
MAX_REPEATS = 100           # repeats of one figure (the schema's maximum too)

# A name that becomes part of file names, cell ids (joined by "__") and job names: letters
# and digits, single . _ - between them, 1 to 64 characters. \A and \Z (not ^ and $, which
# let a trailing newline through): .match, .search and .fullmatch all check the whole name.
SAFE_NAME = re.compile(r"\A(?=.{1,64}\Z)[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*\Z")
SAFE_NAME_RULE = ("is not a safe name: use letters, digits and single . _ - between them, at most "
                  "64 characters (it becomes part of file names and job names)")


class MatrixError(ValueError):
    """matrix.yaml is wrong; the message names the key (and its line)."""


def check_safe_name(what: str, value: str) -> None:
    """Raise MatrixError unless value is a safe name (SAFE_NAME); what says where it came from,
    e.g. "--gpus"."""
    if not isinstance(value, str) or not SAFE_NAME.match(value):
        raise MatrixError(f"{what}: {value!r} {SAFE_NAME_RULE}")


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
    mode: str = modes.DEFAULT

    @property
    def id(self) -> str:
        """framework__variant__gpu__task__precision[__tuned]__rN[__quick]. The reference mode
        adds nothing: the ids (result files, logs, job names) of every folder swept before the
        mode axis stay those of its reference cells, so such a folder resumes without running
        them again, and a tuned cell never finds a reference result under its own id."""
        mode = "" if self.mode == modes.DEFAULT else f"__{self.mode}"
        return (f"{self.framework}__{self.variant}__{self.gpu}__{self.task}__{self.precision}{mode}"
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
              only_tasks=None, quick=None, only_precisions=None, repeats=None, only_modes=None) -> list[Cell]:
        doc = self.doc
        for flag, names in (("--frameworks", only_frameworks), ("--variants", only_variants),
                            ("--gpus", only_gpus), ("--tasks", only_tasks)):
            for name in names or ():
                check_safe_name(flag, name)
        chosen_frameworks = list(only_frameworks or self.frameworks)
        for name in chosen_frameworks:
            if name not in self.frameworks:
                raise MatrixError(f"--frameworks: {name!r} is not in {self.path} "
                                  f"(it has {', '.join(self.frameworks)})")
        chosen_gpus = list(only_gpus or self.gpus)
        for name in chosen_gpus:
            if name not in self.gpus:
                raise MatrixError(f"--gpus: {name!r} is not in {self.path} (it has {', '.join(self.gpus)})")
        quick = doc.get("quick", False) if quick is None else quick
        chosen_tasks = list(only_tasks or doc.get("tasks", list(tasks.TASK_NAMES)))
        # --precisions chooses among the four names, whatever the matrix lists (a precision A/B
        # on a matrix written for fp32 needs no edit of the file).
        precisions = list(only_precisions or doc.get("precisions", ["fp32"]))
        # --modes likewise: a mode A/B of a matrix that lists only the reference needs no edit.
        for name in only_modes or ():
            if name not in modes.MODES:
                raise MatrixError(f"--modes: {str(modes.UnknownMode(name))}")
        mode_names = list(dict.fromkeys(only_modes or doc.get("modes", [modes.DEFAULT])))
        repeats = doc.get("repeats", 1) if repeats is None else repeats
        # Local runs use the framework's virtual environment: there is no image variant.
        venv = executor == "local" or (executor == "slurm"
                                       and self.executor("slurm").get("runner", "venv") == "venv")
        plan = []
        for fw in chosen_frameworks:
            if venv:
                variants = ["venv"]
            else:
                variants = list(self.variants(fw))
                if only_variants:
                    variants = [v for v in variants if v in only_variants]
            plan.append((fw, variants))
        pairs = sum(len(variants) for _, variants in plan)
        count = pairs * len(chosen_gpus) * len(chosen_tasks) * len(precisions) * len(mode_names) * repeats
        if count > MAX_CELLS:  # counted, not built: a huge matrix fails before it takes memory
            raise MatrixError(
                f"{self.path}: (frameworks x variants) x gpus x tasks x precisions x modes x repeats = "
                f"{pairs} x {len(chosen_gpus)} x {len(chosen_tasks)} x {len(precisions)} x {len(mode_names)} "
                f"x {repeats} = {count} cells; at most {MAX_CELLS}; narrow the matrix or use "
                "--frameworks/--variants/--gpus/--tasks/--modes")
        # Repeats outermost: r0 of every cell, then r1, ...: a drift of a shared machine over the
        # sweep then falls on every side of a comparison alike (bench compare --by), instead of
        # on whichever cells ran back to back. Modes innermost: the reference and the tuned run
        # of one figure run back to back, as the precisions of one task do.
        out = []
        for repeat in range(repeats):
            for fw, variants in plan:
                for variant in variants:
                    for gpu in chosen_gpus:
                        for task in chosen_tasks:
                            for precision in precisions:
                                for mode in mode_names:
                                    out.append(Cell(fw, variant, gpu, self.gpus[gpu]["device"], task,
                                                    precision, repeat, bool(quick), mode))
        if only_variants and executor != "local" and not out:
            raise MatrixError(f"--variants {','.join(only_variants)} matches no variant of the chosen frameworks")
        return out

    # -- errors with line numbers
    def line(self, *path) -> str:
        found = self._lines.get(tuple(path))
        return f" (line {found})" if found else ""

    def where(self, path) -> str:
        """'frameworks.pytorch.variants (line 12)': the dotted key and the line of it, or of
        the nearest enclosing key the file has."""
        path = tuple(path)
        for end in range(len(path), 0, -1):
            found = self._lines.get(path[:end])
            if found:
                return f"{_dotted(path)} (line {found})"
        return _dotted(path) or "the top level"


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _lines(node, prefix=()) -> dict:
    """(key, key, ...) -> 1-based line of that key in the YAML source."""
    out = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = (*prefix, key_node.value)
            out[key] = key_node.start_mark.line + 1
            out.update(_lines(value_node, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*prefix, i)] = item.start_mark.line + 1
            out.update(_lines(item, (*prefix, i)))
    return out


# ---------------------------------------------------------------- safe YAML

class _Loader(yaml.SafeLoader):
    """SafeLoader that bounds nesting while it composes, remembers anchors' names, and turns a
    constructor's stray ValueError (a timestamp such as 2024-13-45) into a marked YAML error."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = self._nodes = 0
        self.anchor_names = {}  # id(node) -> its &anchor

    def compose_node(self, parent, index):
        event = self.peek_event()
        if self._depth >= MAX_DEPTH:
            raise MatrixError(f"{self.name}: line {event.start_mark.line + 1}: the file nests more "
                              f"than {MAX_DEPTH} levels deep (a matrix needs 5)")
        self._nodes += 1
        if self._nodes > MAX_NODES:  # without aliases; _check_graph counts them expanded
            raise MatrixError(f"{self.name}: line {event.start_mark.line + 1}: the file has more than "
                              f"{MAX_NODES} YAML nodes (a matrix has a few hundred)")
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if not isinstance(event, yaml.AliasEvent) and event.anchor is not None:
            self.anchor_names[id(node)] = event.anchor
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {exc}", node.start_mark) from exc


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise MatrixError(f"cannot read {path}: {exc}") from exc
    if len(data) > MAX_BYTES:
        raise MatrixError(f"{path} is larger than {MAX_BYTES // 1024 // 1024} MiB ({MAX_BYTES} bytes); "
                          "a matrix file is a few kilobytes: is this the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[start:exc.start].decode("utf-8")) + 1
        raise MatrixError(f"{path}: line {line}, column {column}: byte 0x{data[exc.start]:02x} is not "
                          "UTF-8; save the file as UTF-8") from None


def _compose(path: Path, text: str):
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, e.g. NUL
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise MatrixError(f"{path}: line {line}, column {column}: the character U+{exc.character:04X} "
                          "is not allowed in YAML (a control character); remove it") from None
    loader.name = str(path)  # marks say 'in "matrix.yaml", line 3' rather than '<unicode string>'
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_graph(path, node, loader.anchor_names)
            doc = loader.construct_document(node)
        else:
            doc = None
    except yaml.YAMLError as exc:
        raise MatrixError(f"{path} is not valid YAML: {exc}") from None
    except RecursionError:  # not reached within MAX_DEPTH; a clear message all the same
        raise MatrixError(f"{path}: the file nests too deeply") from None
    finally:
        loader.dispose()
    return node, doc


def _children(node, where=()) -> list:
    """The nodes directly under node, each with the key path it stands at."""
    if isinstance(node, yaml.MappingNode):
        out = []
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            out += [(key_node, where), (value_node, (*where, key))]
        return out
    if isinstance(node, yaml.SequenceNode):
        return [(item, (*where, i)) for i, item in enumerate(node.value)]
    return []


def _check_graph(path: Path, root, anchor_names: dict) -> None:
    """One walk of the composed node graph, each node once (aliases share nodes): no scalar
    over MAX_SCALAR, no duplicate key, no recursive alias, and at most MAX_NODES nodes and
    MAX_DEPTH levels were every alias expanded. Iterative, so a long alias chain cannot
    exhaust Python's stack."""
    size, depth = {}, {}     # id(node) -> expanded node count, expanded depth (done nodes)
    active = set()           # ids of the nodes on the current path
    _enter(path, root, (), active)
    stack = [(root, iter(_children(root)))]
    while stack:
        node, kids = stack[-1]
        child, where = next(kids, (None, None))
        if child is None:
            stack.pop()
            active.discard(id(node))
            children = [c for c, _ in _children(node)]
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            depth[id(node)] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[id(node)] > MAX_NODES or depth[id(node)] > MAX_DEPTH:
                name = anchor_names.get(id(node))
                what = (f"more than {MAX_NODES} nodes" if size[id(node)] > MAX_NODES
                        else f"more than {MAX_DEPTH} levels deep")
                raise MatrixError(
                    f"{path}: the file expands to {what} through YAML aliases (&anchor / *alias)"
                    f"{f', at &{name}' if name else ''} (line {node.start_mark.line + 1}); "
                    "write the values out or use fewer aliases")
            continue
        if id(child) in size:
            continue
        if id(child) in active:
            name = anchor_names.get(id(child))
            raise MatrixError(
                f"{path}: recursive alias: {f'&{name}' if name else 'a node'} (line "
                f"{child.start_mark.line + 1}) contains an alias to itself; an alias may only "
                "refer to a node outside it")
        _enter(path, child, where, active)
        stack.append((child, iter(_children(child, where))))


def _enter(path: Path, node, where: tuple, active: set) -> None:
    active.add(id(node))
    if isinstance(node, yaml.ScalarNode) and len(node.value) > MAX_SCALAR:
        raise MatrixError(f"{path}: line {node.start_mark.line + 1}: a value of {len(node.value)} "
                          f"characters; at most {MAX_SCALAR}")
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = (key_node.tag, key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise MatrixError(
                    f"{path}: duplicate key {_dotted((*where, key_node.value))!r} (lines {seen[key]} "
                    f"and {line}): a key may appear once in a mapping (YAML would keep the last "
                    "silently); remove or rename one")
            seen[key] = line


# ---------------------------------------------------------------- validation

@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator():
    return results.schema_validator(schema())


def load(path) -> Matrix:
    path = Path(path)
    node, doc = _compose(path, _read(path))
    # Lines after construction: merge keys (<<) have been flattened into their mappings.
    matrix = Matrix(doc if isinstance(doc, dict) else {}, path, _lines(node) if node else {})
    validate(matrix, doc)
    return matrix


def _plain(matrix: Matrix, value, where=()) -> None:
    """Keys are text, numbers finite: what the schema cannot say (JSON has neither a NaN nor a
    key that is not a string)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise MatrixError(f"{matrix.path}: key {key!r} under {matrix.where(where)} is "
                                  f"{_kind(key)}, not text; put it in quotes")
            _plain(matrix, item, (*where, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _plain(matrix, item, (*where, i))
    elif isinstance(value, float) and not math.isfinite(value):
        raise MatrixError(f"{matrix.path}: {matrix.where(where)} is {value!r}; it must be a finite number")


def validate(matrix: Matrix, doc) -> None:
    p = matrix.path
    if not isinstance(doc, dict):
        raise MatrixError(f"{p}: the top level must be a mapping (version: 1, frameworks:, gpus:, ...), "
                          f"not {_kind(doc)}")
    _plain(matrix, doc)
    errors = list(_validator().iter_errors(doc))
    if errors:
        raise MatrixError(_best_message(matrix, errors))
    # What the schema cannot know: the framework registry and cross-references.
    for name, entry in doc["frameworks"].items():
        if name not in frameworks.FRAMEWORKS:
            raise MatrixError(f"{p}: framework {name!r}{matrix.line('frameworks', name)} has no "
                              f"implementation; known: {', '.join(sorted(frameworks.FRAMEWORKS))}")
        entry = doc["frameworks"][name] = entry or {}
        variants = entry.get("variants") or {}
        for variant, spec in variants.items():
            if not spec:
                raise MatrixError(_no_image(matrix, name, variant))
        baseline = entry.get("baseline_variant")
        if baseline is not None and baseline not in variants:
            raise MatrixError(f"{p}: frameworks.{name}.baseline_variant {baseline!r}"
                              f"{matrix.line('frameworks', name, 'baseline_variant')} is not one of its variants"
                              f" ({', '.join(variants) or 'it has none'})")
    for name, gpu in doc["gpus"].items():
        if not gpu:
            raise MatrixError(_no_mapping(matrix, name))
        ids = gpu.get("docker_device_ids")
        if ids:
            gpu["docker_device_ids"] = [int(i) if isinstance(i, float) else i for i in ids]
    if isinstance(doc.get("repeats"), float):  # the schema's "integer" takes 2.0
        doc["repeats"] = int(doc["repeats"])


def _no_image(matrix: Matrix, framework: str, variant: str) -> str:
    return (f"{matrix.path}: variant frameworks.{framework}.variants.{variant}"
            f"{matrix.line('frameworks', framework, 'variants', variant)} has no image: give it a "
            "base_image")


def _no_mapping(matrix: Matrix, gpu: str) -> str:
    return (f"{matrix.path}: GPU type {gpu!r}{matrix.line('gpus', gpu)} has no mapping: give it "
            "device: gpu (with gres: or constraint: for Slurm) or device: cpu")


_TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "text", "boolean": "true or false",
               "integer": "a whole number", "number": "a number", "null": "empty"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _kind(value) -> str:
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bytes):
        return "binary data (!!binary)"
    return f"a {type(value).__name__} ({value!s})"


def _location(matrix: Matrix, error):
    """(line or None, path) where the error is: an unknown key or a bad name at its own line."""
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        extra = [k for k in error.instance if k not in allowed]
        if extra:
            path = (*path, extra[0])
    elif "propertyNames" in error.absolute_schema_path and isinstance(error.instance, str):
        path = (*path, error.instance)
    for end in range(len(path), -1, -1):
        found = matrix._lines.get(path[:end])
        if found:
            return found, path
    return None, path


def _best_message(matrix: Matrix, errors) -> str:
    """The first problem in the file (by line), the innermost where several share a line."""
    def rank(error):
        line, path = _location(matrix, error)
        return (line if line is not None else 0, -len(path))
    return _message(matrix, min(errors, key=rank))


def _message(matrix: Matrix, error) -> str:
    p, schema_, value, kw = matrix.path, error.schema, error.instance, error.validator
    path = tuple(error.absolute_path)
    where = matrix.where(path)
    expected = schema_.get("description")

    if "propertyNames" in error.absolute_schema_path:
        name = value
        if not isinstance(name, str):
            return f"{p}: {where}: key {name!r} is not text; put it in quotes"
        return f"{p}: {_dotted(path)}: {name!r}{matrix.line(*path, name)} {SAFE_NAME_RULE}"
    if kw == "additionalProperties":
        allowed = sorted(schema_.get("properties", {}))
        extra = [k for k in value if k not in allowed]
        key = (*path, extra[0])
        return (f"{p}: unknown key {_dotted(key)!r}{matrix.line(*key)}; allowed here: "
                f"{', '.join(allowed)}")
    if kw == "required":
        missing = [k for k in error.validator_value if k not in value]
        key = missing[0] if missing else "?"
        if len(path) == 2 and path[0] == "gpus" and key == "device":
            return _no_mapping(matrix, path[1])
        if len(path) == 4 and path[0] == "frameworks" and path[2] == "variants" and key == "base_image":
            return _no_image(matrix, path[1], path[3])
        wanted = schema_.get("properties", {}).get(key, {})
        if "$ref" in wanted:
            wanted = _validator().schema["$defs"].get(wanted["$ref"].rsplit("/", 1)[-1], {})
        hint = f": {key} must be {wanted['description']}" if wanted.get("description") else ""
        return f"{p}: {where} has no {key!r}; add it{hint}"
    if kw == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        want = expected or " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        hint = ""
        if "boolean" in types and isinstance(value, str) and value.lower() in (
                "true", "false", "yes", "no", "on", "off"):
            hint = " (write true or false without quotes)"
        elif "string" in types and (isinstance(value, (int, float)) or hasattr(value, "isoformat")):
            hint = " (put it in quotes)"
        return f"{p}: {where} must be {want}, not {_kind(value)}{hint}"
    if kw == "not" and isinstance(value, str) and _CONTROL.search(value):
        char = _CONTROL.search(value).group()
        return (f"{p}: {where} is {value!r}, with the control character {char!r} in it; it must be "
                f"{expected or 'text without control characters'}")
    if kw == "uniqueItems" and isinstance(value, list):
        dup = next((v for i, v in enumerate(value) if v in value[:i]), None)
        return f"{p}: {where} lists {dup!r} more than once; list each once"
    if kw in ("minProperties", "minItems") and not value:
        return f"{p}: {where} is empty; it must be {expected or error.message}"
    if kw == "const":
        return f"{p}: {where} is {value!r}; it must be {expected or repr(error.validator_value)}"
    if kw == "enum":
        return f"{p}: {where} is {value!r}; choose from {', '.join(map(str, error.validator_value))}"
    if kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern", "not",
              "minLength", "maxLength"):
        shown = value if not isinstance(value, str) or len(value) <= 80 else value[:77] + "..."
        return f"{p}: {where} is {shown!r}; it must be {expected or error.message}"
    return f"{p}: {where}: {error.message}" + (f"; it must be {expected}" if expected else "")
