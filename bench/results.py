"""The result record: one JSON document per run, schema-validated, written atomically."""
from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schema" / f"result-v{SCHEMA_VERSION}.schema.json"
STATUSES = ("ok", "failed", "oom", "skipped")


class ResultSchemaError(ValueError):
    """A document is not a valid result of this schema version."""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    cls = jsonschema.validators.validator_for(schema())
    return cls(schema(), format_checker=cls.FORMAT_CHECKER)


def validation_errors(record: dict) -> list[str]:
    """Every way record breaks the schema, as 'path: message' lines (empty if valid)."""
    errors = sorted(_validator().iter_errors(record), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def validate(record: dict) -> None:
    errors = validation_errors(record)
    if errors:
        raise ResultSchemaError("result does not match the schema: " + "; ".join(errors[:5]))


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside path, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for everyone to read
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def folder_problem(path: Path) -> str | None:
    """Why results cannot be written into path (created if missing), or None if they can."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        return f"results folder {path} is not writable: {exc}"
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def result_filename(record: dict) -> str:
    stamp = record["started_at"].replace(":", "").replace("-", "")
    size = "-quick" if record.get("quick") else ""
    return (f"{record['framework']}-{record['task']}-{record['device']}-"
            f"{record['precision']}{size}-{stamp}.json")


def write_result(record: dict, out_dir: Path, filename: str | None = None) -> Path:
    validate(record)
    path = Path(out_dir) / (filename or result_filename(record))
    if filename is None and path.exists():
        # Two runs in the same second: never overwrite an earlier result.
        stem, n = path.stem, 1
        while path.exists():
            path = path.with_name(f"{stem}-{n}.json")
            n += 1
    write_atomic(path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def load_result(path: Path) -> dict:
    """A result file, validated; ResultSchemaError says what is wrong with it."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultSchemaError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(record, dict) or "schema_version" not in record:
        raise ResultSchemaError(f"{path}: not a bench result (no schema_version)")
    if record["schema_version"] != SCHEMA_VERSION:
        raise ResultSchemaError(
            f"{path}: schema_version {record['schema_version']!r} is not supported "
            f"(this harness reads version {SCHEMA_VERSION})"
        )
    errors = validation_errors(record)
    if errors:
        raise ResultSchemaError(f"{path}: " + "; ".join(errors[:5]))
    return record
