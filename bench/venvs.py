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


def state(fw: Framework) -> str:
    """'ready', 'stale' (pins changed since setup), 'absent' or 'container-only'."""
    if not fw.runs_here:
        return "container-only"
    marker = venv_path(fw) / MARKER
    if not marker.exists() or not venv_python(fw).exists():
        return "absent"
    try:
        recorded = json.loads(marker.read_text()).get("pins_digest")
    except (OSError, json.JSONDecodeError):
        return "stale"
    return "ready" if recorded == pins_digest(fw) else "stale"


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
    if (path / MARKER).exists():
        (path / MARKER).unlink()
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
