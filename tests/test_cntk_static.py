"""CNTK cannot be installed here (no wheel for Python 3.11): check its file statically."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench import frameworks, runner
from conftest import REPO

CNTK_FILE = REPO / "bench" / "frameworks" / "cntk.py"


def _tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[test]'"
    return found


def test_cntk_file_is_valid_python_3_6():
    proc = subprocess.run([_tool("vermin"), "--no-tips", "--violations", "-t=3.6-", str(CNTK_FILE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cntk_file_defines_the_whole_framework_api():
    tree = ast.parse(CNTK_FILE.read_text())
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    defined |= {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    assert set(runner.REQUIRED_API) <= defined, set(runner.REQUIRED_API) - defined
    for name in ("build_cnn", "train_cnn_epoch", "build_rnn", "build_resnet50", "extract_features"):
        body = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name).body
        assert len(body) >= 1 and not (len(body) == 1 and isinstance(body[0], (ast.Pass, ast.Raise)))


def test_cntk_file_has_no_undefined_names_and_no_placeholder():
    proc = subprocess.run([_tool("pyflakes"), str(CNTK_FILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = CNTK_FILE.read_text()
    assert not re.search(r"TODO|FIXME|XXX|placeholder|NotImplementedError", text)


def test_cntk_uses_the_original_benchmark_idioms():
    text = CNTK_FILE.read_text()
    assert "unit_gain=False" in text and 'recurrent_op="gru"' in text and "optimized_rnnstack" in text


def test_cntk_is_marked_container_only():
    fw = frameworks.get("cntk")
    assert not fw.runs_here and "container only" in fw.note
    proc = subprocess.run([sys.executable, "-m", "bench", "list"], cwd=REPO, capture_output=True,
                          text=True)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("cntk "))
    assert "container only, not run here" in line
