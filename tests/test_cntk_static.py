"""CNTK cannot be installed here (no wheel for Python 3.11): check its file statically."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import frameworks, precisions, runner
from bench.errors import DeviceUnavailable, UnsupportedPrecision
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


# ---------------------------------------------------------------- precision (issue 10)

SECTION_1 = ("init_device", "set_seed", "synchronize", "versions", "data_format", "count_params",
             "conventions", "numerics")


def _functions(tree):
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]


def test_cntk_section_1_has_the_precision_api_in_order_and_no_fp32_only_refusal():
    text = CNTK_FILE.read_text()
    tree = ast.parse(text)
    names = _functions(tree)
    assert [n for n in names if n in SECTION_1] == list(SECTION_1)
    assert names.index("numerics") < names.index("build_cnn")
    assert "init_device, set_seed, synchronize, versions, data_format,\n     count_params, conventions, numerics" \
        in ast.get_docstring(tree)
    assert "runs fp32 only" not in text  # the old refusal of every other precision
    init = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "init_device")
    assert "device" in ast.unparse(init.body[0].test)  # the GPU check first, then the precision
    for name in ("set_seed", "numerics"):  # real bodies, not a stub
        body = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name).body
        assert len(body) >= 2 and not any(isinstance(n, (ast.Pass, ast.Raise)) for n in body)
    assert "reset_random_seed" in text and "np.random.seed" in text and "precisions.state(" in text


def test_cntk_imports_no_other_harness_module_than_allowed():
    tree = ast.parse(CNTK_FILE.read_text())
    bench_imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bench":
            bench_imports |= {node.module if node.module != "bench" else f"bench.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "bench" for a in node.names)
    assert bench_imports == {"bench.modes", "bench.precisions", "bench.errors", "bench.data", "bench.runner"}, bench_imports


class _Var:
    def __init__(self, dtype):
        self.dtype = dtype


class _FakeFunction:
    def __init__(self, *dtypes):
        self.outputs = tuple(_Var(d) for d in dtypes)


def _fake_cntk(gpus=0, capability=(9, 0), seeds=None):
    """Just enough of CNTK's Python API for the precision code of bench/frameworks/cntk.py."""
    import types

    cntk = types.ModuleType("cntk")
    cntk.__version__ = "2.7"

    class _Device:
        def __init__(self, kind, ident):
            self.kind, self.ident = kind, ident

        def type(self):
            return self.kind

        def id(self):
            return self.ident

    kinds = types.SimpleNamespace(CPU=0, GPU=1)
    props = types.SimpleNamespace(version_major=capability[0], version_minor=capability[1])
    cntk.device = types.SimpleNamespace(
        DeviceKind=kinds, all_devices=lambda: [_Device(0, 0)] + [_Device(1, i) for i in range(gpus)],
        gpu=lambda i: _Device(1, i), cpu=lambda: _Device(0, 0), try_set_default_device=lambda d: True,
        get_gpu_properties=lambda d: props, use_default_device=lambda: _Device(1, 0))
    cntk.cntk_py = types.SimpleNamespace(Function=_FakeFunction,
                                         reset_random_seed=lambda s: seeds.append(s))
    graph = types.ModuleType("cntk.logging.graph")
    graph.depth_first_search = lambda root, visitor: [n for n in root.nodes if visitor(n)]
    logging = types.ModuleType("cntk.logging")
    logging.graph = graph
    cntk.logging = logging
    return {"cntk": cntk, "cntk.logging": logging, "cntk.logging.graph": graph}


def _load_with(monkeypatch, fake):
    import importlib

    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "bench.frameworks.cntk", raising=False)
    monkeypatch.setattr(frameworks, "cntk", None, raising=False)  # the package attribute, undone too
    module = importlib.import_module("bench.frameworks.cntk")
    monkeypatch.setitem(sys.modules, "bench.frameworks.cntk", module)  # removed again after the test
    return module


def test_cntk_precisions_on_the_cpu_with_a_fake_cntk(monkeypatch):
    seeds = []
    cntk = _load_with(monkeypatch, _fake_cntk(seeds=seeds))
    assert cntk.init_device("cpu", "fp32") == "cpu"
    for name in ("tf32", "amp-fp16"):  # the device's reasons, word for word
        with pytest.raises(UnsupportedPrecision) as info:
            cntk.init_device("cpu", name)
        assert str(info.value) == precisions.skip_reason(name, "cpu", None, "cntk")
    with pytest.raises(UnsupportedPrecision, match=r"^cntk 2\.7 on the CPU: no amp-bf16: .*bfloat16"):
        cntk.init_device("cpu", "amp-bf16")
    cntk.set_seed(0)
    cntk.set_seed(41)
    assert seeds == [1, 42]  # CNTK's counter starts at 1

    cntk.init_device("cpu", "fp32")
    z = type("Z", (), {})()
    z.nodes = [_FakeFunction(np.float32), _Var(np.float32), _FakeFunction(np.float32, np.float32)]
    z.parameters = [_Var(np.float32), _Var(np.float32)]
    z.output = _Var(np.float32)
    trainer = type("T", (), {"loss_function": type("L", (), {"output": _Var(np.float32)})()})()
    state = cntk.numerics("cnn", cntk.Model(z, _Var(np.float32), trainer=trainer), "cpu")
    assert precisions.check_state("fp32", "cpu", state) == []
    assert state["read_back"] == ["compute_dtype", "param_dtype"] and state["tf32"] is False
    assert state["switches"]["loss dtype"] == "float32"
    z.nodes.append(_FakeFunction(np.float16))  # a half op in the graph is reported, never hidden
    state = cntk.numerics("resnet50", cntk.Model(z, _Var(np.float32)), "cpu")
    assert state["compute_dtype"] == "mixed(float16, float32)"
    assert precisions.check_state("fp32", "cpu", state)


def test_cntk_precisions_on_a_gpu_with_a_fake_cntk(monkeypatch):
    cntk = _load_with(monkeypatch, _fake_cntk(gpus=1, capability=(9, 0)))
    assert cntk.init_device("gpu", "fp32") == "gpu"
    for name, words in (("tf32", "CUDA 10.0 / cuDNN 7"), ("amp-fp16", "no loss scaling"),
                        ("amp-bf16", "no bfloat16")):
        with pytest.raises(UnsupportedPrecision) as info:
            cntk.init_device("gpu", name)
        assert str(info.value).startswith(f"cntk 2.7 on the GPU: no {name}: ") and words in str(info.value)
        assert str(info.value).endswith("run fp32")
    cntk = _load_with(monkeypatch, _fake_cntk(gpus=1, capability=(7, 0)))
    for name in ("tf32", "amp-bf16"):  # an older GPU: the device's reason comes first
        with pytest.raises(UnsupportedPrecision) as info:
            cntk.init_device("gpu", name)
        assert str(info.value) == precisions.skip_reason(name, "gpu", (7, 0), "cntk")
    cntk = _load_with(monkeypatch, _fake_cntk(gpus=0))
    with pytest.raises(DeviceUnavailable):  # the GPU check comes before the precision
        cntk.init_device("gpu", "amp-bf16")
