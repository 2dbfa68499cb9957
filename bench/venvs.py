"""Per-framework virtual environments: `bench setup NAME` and running inside them."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

from .frameworks import REPO_ROOT, Framework, importable_here, venv_path, venv_python

MARKER = ".bench-setup.json"
MAX_MARKER_BYTES = 64 << 10  # setup writes about 100 bytes


class SetupError(RuntimeError):
    pass


def pin_files(fw: Framework) -> list[Path]:
    files = []
    for step in fw.pip_steps:
        for i, arg in enumerate(step):
            if arg in ("-r", "-c") and i + 1 < len(step):
                files.append(REPO_ROOT / step[i + 1])
    return files


def pins_digest(fw: Framework) -> str:
    h = hashlib.sha256()
    for step in fw.pip_steps:
        h.update(json.dumps(step).encode())
    for path in pin_files(fw):
        h.update(path.read_bytes() if path.exists() else b"<missing>")
    return h.hexdigest()[:16]


def read_marker(fw: Framework) -> dict | None:
    """The environment's setup marker as setup wrote it (a JSON object), or None when it is
    missing or unreadable: not a regular file, too large, not UTF-8, not JSON, not an object."""
    marker = venv_path(fw) / MARKER
    try:
        if not marker.is_file():  # a FIFO or a folder of that name is never opened
            return None
        with open(marker, "rb") as f:
            raw = f.read(MAX_MARKER_BYTES + 1)
        if len(raw) > MAX_MARKER_BYTES:
            return None
        doc = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return doc if isinstance(doc, dict) else None


def marker_unreadable(fw: Framework) -> bool:
    """The marker exists but says nothing usable (garbage, a list, a string, ...)."""
    return os.path.lexists(venv_path(fw) / MARKER) and read_marker(fw) is None


def state(fw: Framework) -> str:
    """'ready', 'stale' (pins changed since setup, or the marker is unreadable: which pins it
    was made with is unknown), 'absent' or 'container-only'."""
    if not fw.runs_here:
        return "container-only"
    marker = venv_path(fw) / MARKER
    if not os.path.lexists(marker) or not venv_python(fw).exists():
        return "absent"
    recorded = read_marker(fw)
    if recorded is None:
        return "stale"
    return "ready" if recorded.get("pins_digest") == pins_digest(fw) else "stale"


def setup(fw: Framework, recreate: bool = False, log=print) -> Path:
    """Create .venvs/NAME with the framework's pinned requirements plus the harness."""
    if fw.language != "python":
        raise SetupError(f"{fw.name} is not a Python framework; {fw.note or 'see README.md'}")
    if not fw.runs_here:
        raise SetupError(f"{fw.name} cannot be installed on this machine: {fw.note}")
    missing = [str(p) for p in pin_files(fw) if not p.exists()]
    if missing:
        raise SetupError(f"pin file(s) missing: {', '.join(missing)}")
    path = venv_path(fw)
    if recreate and path.exists():
        import shutil

        shutil.rmtree(path)
    if not venv_python(fw).exists():
        log(f"[setup {fw.name}] creating {path}")
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
    marker = path / MARKER
    if marker.is_dir() and not marker.is_symlink():  # a folder of that name: never a marker
        import shutil

        shutil.rmtree(marker)
    elif os.path.lexists(marker):
        marker.unlink()
    python = str(venv_python(fw))
    steps = list(fw.pip_steps) + [("-e", str(REPO_ROOT))]
    for step in steps:
        cmd = [python, "-m", "pip", "install", "--disable-pip-version-check", *step]
        log(f"[setup {fw.name}] {' '.join(cmd[1:])}")
        proc = subprocess.run(cmd, cwd=REPO_ROOT)
        if proc.returncode != 0:
            raise SetupError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}; "
                             f"{path} is left incomplete (re-run setup after fixing)")
    (path / MARKER).write_text(json.dumps({"framework": fw.name, "pins_digest": pins_digest(fw)}))
    log(f"[setup {fw.name}] ready: {path}")
    return path


def in_venv_of(fw: Framework) -> bool:
    try:
        return Path(sys.prefix).resolve() == venv_path(fw).resolve()
    except OSError:
        return False


def interpreter_for(fw: Framework) -> Path | None:
    """The Python to run fw in: None means this process; raises SetupError if none fits."""
    if os.environ.get("BENCH_NO_VENV") or in_venv_of(fw):
        return None
    if state(fw) in ("ready", "stale"):
        return venv_python(fw)
    if importable_here(fw):
        return None
    raise SetupError(
        f"{fw.name} is not installed: no environment at {venv_path(fw)} and "
        f"`import {fw.import_name}` fails in {sys.executable}. Run `python -m bench setup "
        f"{fw.name}` first (it installs docker/{fw.docker_dir}/ pins into {venv_path(fw)}), "
        f"or use the container: `docker compose run bench-{fw.name}`."
    )
