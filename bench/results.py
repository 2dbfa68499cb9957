"""The result record: one JSON document per run, schema-validated, written atomically."""
from __future__ import annotations

import copy
import datetime as dt
import errno
import json
import math
import os
import re
import stat
import tempfile
from functools import lru_cache
from pathlib import Path

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schema" / f"result-v{SCHEMA_VERSION}.schema.json"
STATUSES = ("ok", "failed", "oom", "timeout", "skipped")
NOT_OK = ("failed", "oom", "timeout")  # a run that should have worked and did not
# The variant of a run outside any container image (a `bench setup` environment, or this
# Python): the same name in sweep cell ids, reports and baselines.
NO_IMAGE_VARIANT = "venv"
# A result is a few kB; anything far larger is not one (and is never read whole).
MAX_RESULT_BYTES = 4 << 20
# The "format" of a ceiling-probe doc (bench/probes): it lives in results folders beside the
# results, and load_results passes it by without a word.
PROBE_FORMAT = "bench-probe-1"


class ResultSchemaError(ValueError):
    """A document is not a valid result of this schema version."""


class OutputError(OSError):
    """An output file cannot be written; the message names it and says why."""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


# RFC 3339 date-time, as the schema's "date-time" format means it.
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _is_date_time(value) -> bool:
    if not isinstance(value, str):
        return True  # the type is the schema's "type" to check
    if not _DATE_TIME.match(value):
        return False
    try:
        dt.datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return False
    return True


def schema_validator(doc: dict):
    """A jsonschema validator for one of the project's schemas (results, baselines, matrix)
    that checks the formats it declares."""
    import jsonschema

    cls = jsonschema.validators.validator_for(doc)
    checker = cls.FORMAT_CHECKER
    # jsonschema checks "date-time" only when rfc3339-validator is installed (a dependency of
    # this package, absent from environments made before it was); never let it pass silently.
    if "date-time" not in checker.checkers:
        checker = copy.deepcopy(checker)
        checker.checks("date-time")(_is_date_time)
    return cls(doc, format_checker=checker)


@lru_cache(maxsize=1)
def _validator():
    return schema_validator(schema())


def non_finite_paths(node, path: str = "") -> list[str]:
    """Where a NaN or an infinity sits in a decoded document ('repeats/0/time_total_s')."""
    if isinstance(node, float):
        return [] if math.isfinite(node) else [path or "(top)"]
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in non_finite_paths(v, f"{path}/{k}" if path else str(k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in non_finite_paths(v, f"{path}/{i}" if path else str(i))]
    return []


def validation_errors(record: dict) -> list[str]:
    """Every way record breaks the schema, as 'path: message' lines (empty if valid)."""
    bad = [f"{p}: not a finite number (NaN and infinities are never results)"
           for p in non_finite_paths(record)]
    if bad:  # a non-finite figure is refused before anything compares or ranks it
        return bad
    errors = sorted(_validator().iter_errors(record), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def validate(record: dict) -> None:
    errors = validation_errors(record)
    if errors:
        raise ResultSchemaError("result does not match the schema: " + "; ".join(errors[:5]))


def printable(path) -> str:
    """A path as text that can always be printed and written (undecodable bytes escaped)."""
    return os.fsencode(str(path) if not isinstance(path, bytes) else path).decode("utf-8", "backslashreplace")


def output_error(path: Path, exc: OSError) -> OutputError:
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.EISDIR: "it is a directory",
           errno.ENOTDIR: "a part of the path is a file, not a folder"}.get(exc.errno, exc.strerror or str(exc))
    return OutputError(exc.errno, f"cannot write {printable(path)}: {why}; choose another path "
                                  "or free the space, then run again")


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside path, then rename: a crash never leaves half a file.
    Raises OutputError (an OSError) naming the file and the reason."""
    path = Path(path)
    if path.is_dir():
        raise output_error(path, IsADirectoryError(errno.EISDIR, "is a directory"))
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for everyone to read
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as exc:
        _remove_quietly(tmp)
        raise output_error(path, exc) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path) -> None:
    if path and os.path.exists(path):
        try:
            os.unlink(path)
        except OSError:
            pass


def folder_problem(path: Path) -> str | None:
    """Why results cannot be written into path (created if missing), or None if they can."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        return f"results folder {printable(path)} is not writable: {exc.strerror or exc}"
    return None


def output_problem(path: Path) -> str | None:
    """Why a file cannot be written at path, checked before long work; None if it can."""
    path = Path(path)
    if path.is_dir():
        return f"cannot write {printable(path)}: it is a directory; give a file name"
    if path.exists() and not os.access(path, os.W_OK):
        return f"cannot write {printable(path)}: permission denied"
    return folder_problem(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def result_filename(record: dict) -> str:
    stamp = record["started_at"].replace(":", "").replace("-", "")
    size = "-quick" if record.get("quick") else ""
    tuned = "-tuned" if record.get("mode") == "tuned" else ""
    return (f"{record['framework']}-{record['task']}-{record['device']}-"
            f"{record['precision']}{tuned}{size}-{stamp}.json")


def dumps(record: dict) -> str:
    """JSON text of a record; a NaN or infinity is an error, never written."""
    return json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_result(record: dict, out_dir: Path, filename: str | None = None) -> Path:
    validate(record)
    out_dir = Path(out_dir)
    path = out_dir / (filename or result_filename(record))
    if path.parent != out_dir or path.name.startswith("."):
        raise ValueError(f"result file name {filename!r} would leave {printable(out_dir)}")
    if filename is None and path.exists():
        # Two runs in the same second: never overwrite an earlier result.
        stem, n = path.stem, 1
        while path.exists():
            path = path.with_name(f"{stem}-{n}.json")
            n += 1
    write_atomic(path, dumps(record))
    return path


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number a result can hold")


def _read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file (links followed) of at most limit bytes. A FIFO, a device
    or a socket is refused without blocking on it."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ResultSchemaError(f"{printable(path)}: not a regular file (a FIFO, device or "
                                    "socket named like a result); not opened")
        if info.st_size > limit:
            raise ResultSchemaError(f"{printable(path)}: {info.st_size:,} bytes, more than any result "
                                    f"({limit:,} at most); not read")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)
    finally:
        os.close(fd)


def load_result(path: Path) -> dict:
    """A result file, validated; ResultSchemaError says what is wrong with it."""
    name = printable(path)
    try:
        raw = _read_regular_file(Path(path), MAX_RESULT_BYTES)
        record = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except ResultSchemaError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResultSchemaError(f"{name}: not readable JSON: {exc}") from exc
    except RecursionError as exc:
        raise ResultSchemaError(f"{name}: nested too deeply to be a result") from exc
    if not isinstance(record, dict) or "schema_version" not in record:
        raise ResultSchemaError(f"{name}: not a bench result (no schema_version)")
    if record["schema_version"] != SCHEMA_VERSION:
        raise ResultSchemaError(
            f"{name}: schema_version {record['schema_version']!r} is not supported "
            f"(this harness reads version {SCHEMA_VERSION})"
        )
    try:
        errors = validation_errors(record)
    except RecursionError as exc:
        raise ResultSchemaError(f"{name}: nested too deeply to be a result") from exc
    if errors:
        raise ResultSchemaError(f"{name}: " + "; ".join(errors[:5]))
    return record


# ---------------------------------------------------------------- folders of results

def variant_of(record: dict) -> str:
    """The CUDA variant: the sweep's cell, else the image's, else NO_IMAGE_VARIANT."""
    cell = record.get("cell") or {}
    image = (record.get("env") or {}).get("container_image") or {}
    return cell.get("variant") or image.get("variant") or NO_IMAGE_VARIANT


def identity(record: dict) -> tuple:
    """What makes two result files the same measurement: a sweep cell on one host (a re-run
    of the cell replaces its earlier run), else identical content (copies of one file)."""
    cell = record.get("cell") or {}
    if cell.get("id"):
        return ("cell", (record.get("env") or {}).get("hostname"), cell["id"])
    return ("copy", json.dumps(record, sort_keys=True))


def _preference(record: dict) -> tuple:
    # An ok result wins over a failed attempt of the same cell (as the sweep keeps it), then
    # the one that finished last.
    return (record["status"] == "ok", record["finished_at"], record["started_at"])


def result_files(folder: Path, warn):
    """Every *.json under folder, sorted, without descending into hidden or temporary folders
    (a sweep's running cells write there) and with every unreadable folder named."""
    def on_error(exc: OSError) -> None:
        warn(f"warning: skipped folder {printable(exc.filename or folder)}: {exc.strerror or exc}")

    found = []
    for root, dirs, files in os.walk(folder, onerror=on_error, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in files if f.endswith(".json") and not f.startswith("."))
    return sorted(found)


def load_results(folders, warn) -> list[dict]:
    """Every valid result under the folders, each measurement once. Anything else is skipped
    with a warning naming it: invalid or foreign files, special files, unreadable folders,
    and duplicates (the kept one is named)."""
    chosen: dict = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"results folder {printable(folder)} does not exist")
        for path in result_files(folder, warn):
            try:
                record = load_result(path)
            except ResultSchemaError as exc:
                if not is_probe_doc(path):
                    warn(f"warning: skipped {exc}")
                continue
            key = identity(record)
            if key in chosen:
                kept_path, kept = chosen[key]
                if _preference(record) > _preference(kept):
                    chosen[key] = (path, record)
                    kept_path, path = path, kept_path
                warn(f"warning: skipped {printable(path)}: the same measurement as "
                     f"{printable(kept_path)} (one result per cell: an ok result over a failed one, "
                     "then the latest)")
            else:
                chosen[key] = (path, record)
    return [record for _, record in chosen.values()]


def is_probe_doc(path: Path) -> bool:
    """Whether path holds a JSON object whose "format" is a probe doc's (valid or not)."""
    try:
        doc = json.loads(_read_regular_file(Path(path), MAX_RESULT_BYTES).decode("utf-8"),
                         parse_constant=_refuse_constant)
    except (OSError, ValueError, RecursionError):  # ResultSchemaError is a ValueError
        return False
    return isinstance(doc, dict) and doc.get("format") == PROBE_FORMAT


def load_probes(folders, warn) -> list[dict]:
    """Every valid probe doc (bench/probes) under the folders, in path order, each copy once.
    Results are passed by silently; an invalid probe doc is skipped with a warning naming it."""
    from .probe import load_probe

    found, seen = [], {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"results folder {printable(folder)} does not exist")
        for path in result_files(folder, warn):
            if not is_probe_doc(path):
                continue
            try:
                doc = load_probe(path)
            except ValueError as exc:
                warn(f"warning: skipped {exc}")
                continue
            key = json.dumps(doc, sort_keys=True)
            if key in seen:
                warn(f"warning: skipped {printable(path)}: a copy of {printable(seen[key])}")
                continue
            seen[key] = path
            found.append(doc)
    return found
