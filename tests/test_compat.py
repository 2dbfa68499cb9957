"""The harness runs in every framework's image, the CNTK one included (Python 3.7)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

HARNESS = sorted(str(p) for p in (REPO / "bench").rglob("*.py") if "frameworks" not in p.parts)
HARNESS.append(str(REPO / "bench" / "frameworks" / "__init__.py"))


def test_harness_parses_as_python_3_7():
    # vermin has no __main__: use its script beside this interpreter, else the one on PATH.
    vermin = Path(sys.executable).with_name("vermin")
    vermin = str(vermin) if vermin.exists() else shutil.which("vermin")
    assert vermin, "vermin is not installed: pip install -e '.[test]'"
    proc = subprocess.run([vermin, "--no-tips", "--violations", "-t=3.7-", *HARNESS],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
