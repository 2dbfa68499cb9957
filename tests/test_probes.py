"""The ceiling probes: the CPU path for real at tiny sizes, the GPU path through a fake backend
(every branch: below a floor, a skipped precision, a failed probe, the PCIe link), the command's
exit codes, and the probe doc's schema and loaders."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import types

import pytest

from bench import cli, frameworks, probe, probes, results, venvs
from bench.probes import arrays
from conftest import REPO, run_bench

H100 = "NVIDIA H100 80GB HBM3"
H100_PCI = "0x2330"
TINY = {"gemm_n": 32, "triad_elements": 4096}


class FakeOp:
    """An operation whose time the fake device knows: work / rate seconds a call."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.calls = 0

    def __call__(self):
        self.calls += 1


class FakeGpu(arrays.Backend):
    """A GPU backend with set rates per probe key; no device needed."""

    device = "gpu"
    element_bytes = 4

    def __init__(self, rates=None, unsupported=None, failing=(), link="full", zero_timer=False):
        self.rates = {"gemm_fp32": 60e12, "gemm_tf32": 450e12, "gemm_fp16": 750e12, "gemm_bf16": 750e12,
                      "memory_bandwidth": 3.0e12, "host_to_device": 52e9, "device_to_host": 50e9}
        self.rates.update(rates or {})
        self.unsupported = dict(unsupported or {})
        self.failing = set(failing)
        self.link = {"gen": 5, "gen_max": 5, "width": 16, "width_max": 16} if link == "full" else link
        self.zero_timer = zero_timer
        self.made = []
        self.released = 0

    def library(self):
        return {"name": "torch", "version": "0.0+fake", "blas": "cuBLAS (fake)"}

    def identity(self):
        return {"device_name": H100, "pci_device_id": H100_PCI, "nvml_index": 0}

    def _op(self, key, work, size):
        self.made.append((key, size))
        if key in self.unsupported:
            raise arrays.Unsupported(self.unsupported[key])
        if key in self.failing:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore text")
        return FakeOp(work / self.rates[key]), f"fake {key}"

    def gemm(self, n, precision):
        return self._op(f"gemm_{precision}", 2.0 * n ** 3, n)

    def triad(self, elements):
        return self._op("memory_bandwidth", 3.0 * self.element_bytes * elements, elements)

    def host_copy(self, nbytes, direction):
        return self._op(direction, float(nbytes), nbytes)

    def time(self, op, calls):
        return 0.0 if self.zero_timer else op.seconds * calls

    def free_bytes(self):
        return 80 << 30

    def pcie_link(self):
        return self.link

    def release(self):
        self.released += 1


FLOORS = {
    "gemm_fp32": {"floor": 40e12, "unit": "flops_per_s", "source": "test table", "rule": "75 % of measured"},
    "gemm_tf32": {"floor": 300e12, "unit": "flops_per_s", "source": "test table", "rule": "r"},
    "gemm_fp16": {"floor": 500e12, "unit": "flops_per_s", "source": "test table", "rule": "r"},
    "gemm_bf16": {"floor": 500e12, "unit": "flops_per_s", "source": "test table", "rule": "r"},
    "memory_bandwidth": {"floor": 2.5e12, "unit": "bytes_per_s", "source": "DCGM memory_bandwidth", "rule": ""},
    "host_to_device": {"floor": 40e9, "unit": "bytes_per_s", "source": "DCGM pcie", "rule": ""},
    "device_to_host": {"floor": 40e9, "unit": "bytes_per_s", "source": "DCGM pcie", "rule": ""},
}
PEAKS = {"gemm_fp32": {"value": 67e12, "unit": "flops_per_s", "source": "H100 datasheet"},
         "gemm_fp16": {"value": 989.4e12, "unit": "flops_per_s", "source": "H100 datasheet"},
         "memory_bandwidth": {"value": 3.35e12, "unit": "bytes_per_s", "source": "H100 datasheet"}}
CPU_PEAK = {"fp32": {"flops_per_s": 166.1e9, "how": "2 cores x 2.596 GHz x 32 FLOP/cycle (Zen 4)"},
            "bf16": {"flops_per_s": None, "unknown": "no sourced bf16 figure for Zen 4"}}


def fake_hardware(floors=None, peaks=None, cpu_peak=None):
    calls = []

    def floors_fn(device, name, pci=None):
        calls.append(("floors", device, name, pci))
        return dict(floors or {})

    def peaks_fn(device, name, pci=None):
        calls.append(("peaks", device, name, pci))
        return dict(peaks or {})

    return types.SimpleNamespace(floors=floors_fn, peaks=peaks_fn, cpu_peak=lambda info=None: cpu_peak,
                                 calls=calls)


@pytest.fixture
def hardware(monkeypatch):
    """Installs a fake bench.hardware; returns a function to set its tables."""
    def use(floors=None, peaks=None, cpu_peak=None):
        hw = fake_hardware(floors, peaks, cpu_peak)
        monkeypatch.setattr(probes, "_hardware", lambda: hw)
        return hw
    return use


def by_key(doc):
    return {e["key"]: e for e in doc["probes"]}


def gpu_doc(backend, **kw):
    lines = []
    doc = probes.run_probes("gpu", backend=backend, log=lines.append, **kw)
    return doc, lines


# ---------------------------------------------------------------- GPU through the fake

def test_gpu_probes_reach_their_floors_and_the_doc_says_healthy(hardware):
    hw = hardware(FLOORS, PEAKS)
    backend = FakeGpu()
    doc, lines = gpu_doc(backend)
    assert probes.validation_errors(doc) == []
    assert [e["key"] for e in doc["probes"]] == ["gemm_fp32", "gemm_tf32", "gemm_fp16", "gemm_bf16",
                                                 "memory_bandwidth", "host_to_device", "device_to_host"]
    got = by_key(doc)
    for key, rate in backend.rates.items():
        assert got[key]["status"] == "ok"
        assert got[key]["value"] == pytest.approx(rate)
        assert len(got[key]["repeats"]) == probes.REPEATS
    # Full sizes: 8192 matrices, 1 GiB arrays, 256 MiB copies; each repeat at least 0.2 s.
    assert got["gemm_fp16"]["size"]["n"] == 8192
    assert got["memory_bandwidth"]["size"]["elements"] == (1 << 30) // 4
    assert got["host_to_device"]["size"]["bytes"] == 256 << 20
    calls = got["gemm_fp16"]["size"]["calls_per_repeat"]
    assert calls * 2 * 8192 ** 3 / backend.rates["gemm_fp16"] >= probes.MIN_REPEAT_S
    assert got["gemm_fp16"]["fraction_of_peak"] == pytest.approx(750 / 989.4, abs=1e-4)
    assert got["gemm_fp16"]["fraction_of_floor"] == pytest.approx(1.5)
    assert got["gemm_tf32"]["peak"] is None and "no datasheet peak" in got["gemm_tf32"]["peak_source"]
    assert got["memory_bandwidth"]["floor_source"] == "DCGM memory_bandwidth"
    assert doc["healthy"] is True and doc["findings"] == []
    assert doc["pcie"] == {"gen": 5, "gen_max": 5, "width": 16, "width_max": 16, "under_load": True}
    assert doc["device_name"] == H100 and doc["pci_device_id"] == H100_PCI and doc["cpu_peak"] is None
    assert ("floors", "gpu", H100, H100_PCI) in hw.calls and ("peaks", "gpu", H100, H100_PCI) in hw.calls
    assert backend.released == 7  # every probe's memory handed back
    assert "gemm fp16: 750.0 TFLOP/s best of 5 (peak 989.4 TFLOP/s: 76 %; floor 500.0 TFLOP/s: 150 % ok)" in lines
    assert "memory bandwidth (triad): 3.0 TB/s best of 5 (peak 3.4 TB/s: 90 %; floor 2.5 TB/s: 120 % ok)" in lines
    assert lines[-1].startswith("healthy")


def test_a_gemm_below_its_floor_is_a_finding_and_unhealthy(hardware):
    hardware(FLOORS, PEAKS)
    doc, lines = gpu_doc(FakeGpu(rates={"gemm_bf16": 305e12}))
    bf16 = by_key(doc)["gemm_bf16"]
    assert bf16["status"] == "below floor" and bf16["fraction_of_floor"] == pytest.approx(0.61)
    assert doc["healthy"] is False
    assert doc["findings"] == ["gemm bf16 at 61 % of the floor for this model (305.0 TFLOP/s of "
                               "500.0 TFLOP/s; floor: test table; r)"]
    assert any(line.endswith("61 % BELOW FLOOR)") for line in lines)
    assert lines[-1].startswith("NOT healthy: gemm bf16 at 61 %")


def test_a_rate_above_the_stated_peak_is_a_finding_but_no_health_problem(hardware):
    hardware(FLOORS, PEAKS)
    doc, _ = gpu_doc(FakeGpu(rates={"gemm_fp32": 80e12}))
    assert by_key(doc)["gemm_fp32"]["fraction_of_peak"] == pytest.approx(80 / 67, abs=1e-4)
    assert doc["findings"] == ["gemm fp32 at 119 % of the stated peak: the peak figure is too low "
                               "(a clock below the boost clock?) or the probe counts work it did not do"]
    assert doc["healthy"] is True


def test_a_precision_the_gpu_lacks_is_skipped_with_the_reason(hardware):
    hardware(FLOORS)
    why = "tf32 needs compute capability 8.0 (Ampere) or newer; this GPU is 7.0"
    doc, lines = gpu_doc(FakeGpu(unsupported={"gemm_tf32": why}))
    tf32 = by_key(doc)["gemm_tf32"]
    assert tf32["status"] == "skipped" and tf32["reason"] == why
    assert tf32["value"] is None and tf32["repeats"] == [] and tf32["fraction_of_floor"] is None
    assert doc["healthy"] is True and doc["findings"] == []
    assert f"gemm tf32: skipped ({why})" in lines


def test_only_the_precisions_asked_for_run(hardware):
    hardware(FLOORS)
    backend = FakeGpu()
    doc, _ = gpu_doc(backend, precisions=["bf16", "fp32"])
    assert [e["key"] for e in doc["probes"] if e["name"] == "gemm"] == ["gemm_fp32", "gemm_bf16"]
    assert not any(key in ("gemm_tf32", "gemm_fp16") for key, _ in backend.made)


def test_a_probe_that_raises_fails_alone_and_the_doc_is_not_judged_healthy(hardware):
    hardware(FLOORS)
    doc, lines = gpu_doc(FakeGpu(failing={"host_to_device"}))
    h2d = by_key(doc)["host_to_device"]
    assert h2d["status"] == "failed"
    assert h2d["reason"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert by_key(doc)["device_to_host"]["status"] == "ok"  # the next probe still ran
    assert doc["healthy"] is None
    assert "host to device (pinned) failed: RuntimeError: CUDA error" in doc["findings"][0]
    assert lines[-1].startswith("not judged: host to device (pinned) failed")


def test_a_timer_that_measures_nothing_fails_the_probes_and_no_infinity_is_written(hardware, tmp_path):
    hardware(FLOORS)
    doc, _ = gpu_doc(FakeGpu(zero_timer=True))
    assert {e["status"] for e in doc["probes"]} == {"failed"}
    assert all("the timer gave" in e["reason"] for e in doc["probes"])
    assert results.non_finite_paths(doc) == []
    path = probe.write_probe(doc, tmp_path)
    assert probe.load_probe(path)["healthy"] is None


def test_a_pcie_link_narrower_than_its_max_is_a_finding(hardware):
    hardware(FLOORS)
    doc, lines = gpu_doc(FakeGpu(link={"gen": 5, "gen_max": 5, "width": 8, "width_max": 16}))
    assert doc["findings"] == ["PCIe link x8 of x16"]
    assert doc["pcie"]["width"] == 8
    assert doc["healthy"] is True  # no PCIe floor: reported, not judged
    assert "pcie: gen 5 of 5, x8 of x16 (right after the host copies)" in lines


def test_a_pcie_link_below_the_models_floor_is_unhealthy(hardware):
    hardware(dict(FLOORS, pcie_width={"floor": 16, "unit": "lanes", "source": "DCGM", "rule": ""}))
    doc, _ = gpu_doc(FakeGpu(link={"gen": 5, "gen_max": 5, "width": 8, "width_max": 16}))
    assert doc["healthy"] is False
    assert doc["findings"] == ["PCIe link x8 of x16, below the floor x16 for this model"]


def test_the_pcie_gen_is_judged_only_right_after_the_host_copies(hardware):
    hardware(FLOORS)
    slow_link = {"gen": 3, "gen_max": 5, "width": 16, "width_max": 16}
    doc, _ = gpu_doc(FakeGpu(link=dict(slow_link)))
    assert doc["findings"] == ["PCIe gen 3 of 5 right after the host copies"]
    # No copy ran: the link may be idling at a low gen, which says nothing.
    doc, lines = gpu_doc(FakeGpu(link=dict(slow_link), unsupported={
        "host_to_device": "no", "device_to_host": "no"}))
    assert doc["findings"] == [] and doc["pcie"]["under_load"] is False
    assert any("at idle: the gen is not judged" in line for line in lines)


def test_no_nvml_leaves_pcie_null(hardware):
    hardware(FLOORS)
    doc, lines = gpu_doc(FakeGpu(link=None))
    assert doc["pcie"] is None and doc["healthy"] is True
    assert any(line.startswith("pcie: no NVML") for line in lines)
    doc, _ = gpu_doc(FakeGpu(link={"gen": None, "gen_max": None, "width": None, "width_max": None}))
    assert doc["pcie"] is None
    # What NVML does not give (or gives malformed) is null and judges nothing; the rest still counts.
    doc, lines = gpu_doc(FakeGpu(link={"gen": "5", "gen_max": None, "width": 8, "width_max": 16}))
    assert doc["pcie"] == {"gen": None, "gen_max": None, "width": 8, "width_max": 16, "under_load": True}
    assert doc["findings"] == ["PCIe link x8 of x16"]
    assert "pcie: gen ? of ?, x8 of x16 (right after the host copies)" in lines


def test_no_floors_known_means_not_judged(hardware):
    hardware()
    doc, lines = gpu_doc(FakeGpu())
    assert doc["healthy"] is None
    assert by_key(doc)["gemm_fp32"]["floor_source"] == f"no floor for {H100}"
    assert lines[-1] == f"not judged: no floors known for {H100}"


def test_a_floor_in_another_unit_or_not_finite_is_not_compared(hardware):
    hardware({"gemm_fp32": {"floor": 99e12, "unit": "bytes_per_s", "source": "s", "rule": ""},
              "gemm_fp16": {"floor": float("inf"), "unit": "flops_per_s", "source": "s", "rule": ""}})
    doc, _ = gpu_doc(FakeGpu())
    assert by_key(doc)["gemm_fp32"]["status"] == "ok" and by_key(doc)["gemm_fp32"]["floor"] is None
    assert by_key(doc)["gemm_fp16"]["floor"] is None and doc["healthy"] is None


def test_without_bench_hardware_there_are_no_reference_figures(monkeypatch):
    monkeypatch.setattr(probes, "_hardware", lambda: None)
    doc, _ = gpu_doc(FakeGpu())
    assert all("bench/hardware.py cannot be imported" in e["floor_source"] for e in doc["probes"])
    assert doc["healthy"] is None


def test_quick_gpu_sizes_are_small(hardware):
    hardware()
    doc, _ = gpu_doc(FakeGpu(), quick=True)
    got = by_key(doc)
    assert doc["quick"] is True
    assert got["gemm_fp32"]["size"]["n"] == 1024 and got["host_to_device"]["size"]["bytes"] == 4 << 20
    assert len(got["gemm_fp32"]["repeats"]) == probes.QUICK_REPEATS


# ---------------------------------------------------------------- the command, with the fake GPU

@pytest.mark.parametrize("rates, link, code", [
    ({}, "full", 0),
    ({"gemm_fp16": 100e12}, "full", 1),
    ({}, {"gen": 5, "gen_max": 5, "width": 8, "width_max": 16}, 0),
])
def test_probe_command_exit_code_follows_the_floors(hardware, monkeypatch, tmp_path, capsys, rates, link, code):
    hardware(FLOORS, PEAKS)
    monkeypatch.setattr(arrays, "open_backend", lambda device: FakeGpu(rates=rates, link=link))
    monkeypatch.setattr(probe, "_gpu_python", lambda: None)
    assert cli.main(["probe", "--device", "gpu", "--out", str(tmp_path)]) == code
    out = capsys.readouterr().out
    written = sorted(tmp_path.glob("probe-gpu-*.json"))
    assert len(written) == 1 and f"wrote {written[0]}" in out
    doc = probe.load_probe(written[0])
    assert doc["healthy"] is (code == 0)
    assert "gemm fp16: " in out


def test_probe_command_exits_1_when_a_probe_failed(hardware, monkeypatch, tmp_path):
    hardware()
    monkeypatch.setattr(arrays, "open_backend", lambda device: FakeGpu(failing={"gemm_fp32"}))
    monkeypatch.setattr(probe, "_gpu_python", lambda: None)
    assert cli.main(["probe", "--device", "gpu", "--out", str(tmp_path)]) == 1


def test_gpu_asked_for_and_absent_is_exit_3_and_never_the_cpu(tmp_path, monkeypatch, capsys):
    # The real path: no torch or cupy here (or none that sees a GPU), no NVIDIA driver.
    monkeypatch.setenv("BENCH_NO_VENV", "1")
    monkeypatch.setattr("bench.envinfo.nvidia_gpus", lambda: [])
    if arrays.gpu_library_importable():
        pytest.skip("torch or cupy imports in this Python")
    assert cli.main(["probe", "--device", "gpu", "--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "no GPU" in err and "never falls back to the CPU" in err
    assert list(tmp_path.iterdir()) == []


def test_gpu_absent_through_the_pytorch_environment_is_exit_3(tmp_path):
    fw = frameworks.get("pytorch")
    if venvs.state(fw) not in ("ready", "stale") or arrays.gpu_library_importable():
        pytest.skip("needs .venvs/pytorch and a harness Python without torch")
    env = {k: v for k, v in os.environ.items() if k != "BENCH_NO_VENV"}
    proc = run_bench("probe", "--device", "gpu", "--out", str(tmp_path), env=env, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "running in" in proc.stdout and str(frameworks.venv_python(fw)) in proc.stdout
    assert "torch" in proc.stderr and "never falls back to the CPU" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_gpu_without_an_array_library_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr("bench.envinfo.nvidia_gpus", lambda: [{"name": H100, "memory_gib": 80, "driver": "1"}])
    with pytest.raises(arrays.NoLibrary, match="python -m bench setup pytorch"):
        arrays.open_backend("gpu")
    monkeypatch.setattr("bench.envinfo.nvidia_gpus", lambda: [])
    with pytest.raises(arrays.NoDevice, match="nvidia-smi lists none"):
        arrays.open_backend("gpu")


def test_a_library_that_sees_no_gpu_is_no_device(monkeypatch):
    fake_torch = types.SimpleNamespace(__version__="9.9", cuda=types.SimpleNamespace(
        is_available=lambda: False, device_count=lambda: 0))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(arrays.NoDevice, match=r"torch 9.9 sees no CUDA device"):
        arrays.open_backend("gpu")


@pytest.mark.parametrize("value, message", [
    ("fp8", "unknown precision 'fp8'; use one or more of fp32, tf32, fp16, bf16"),
    ("amp-bf16", "the probe's name for 'amp-bf16' is 'bf16'"),
    (",", "expected one or more of fp32, tf32, fp16, bf16"),
])
def test_a_bad_precision_is_a_usage_error_listing_the_names(tmp_path, capsys, value, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["probe", "--precision", value, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_out_folder_is_refused_before_any_probe(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["probe", "--out", str(blocker / "probes")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "is not writable" in err and "gemm" not in err


# ---------------------------------------------------------------- the CPU, for real

def test_cpu_probes_run_for_real_at_tiny_sizes(hardware):
    hardware(peaks={}, cpu_peak=CPU_PEAK)
    lines = []
    doc = probes.run_probes("cpu", precisions=["fp32", "tf32", "bf16"], log=lines.append, sizes=TINY, repeats=2)
    assert probes.validation_errors(doc) == []
    got = by_key(doc)
    assert set(got) == {"gemm_fp32", "gemm_tf32", "gemm_bf16", "memory_bandwidth"}  # no host copies
    fp32 = got["gemm_fp32"]
    assert fp32["status"] == "ok" and fp32["value"] > 0 and len(fp32["repeats"]) == 2
    assert fp32["value"] == max(fp32["repeats"]) and fp32["size"]["n"] == 32
    assert fp32["peak"] == 166.1e9 and fp32["fraction_of_peak"] == pytest.approx(fp32["value"] / 166.1e9, abs=1e-4)
    assert fp32["peak_source"].startswith("2 cores x 2.596 GHz") and fp32["floor"] is None
    assert got["gemm_tf32"]["status"] == "skipped" and "no CPU has it" in got["gemm_tf32"]["reason"]
    bf16 = got["gemm_bf16"]
    if importlib.util.find_spec("torch") is None:
        assert bf16["status"] == "skipped" and "torch is not importable" in bf16["reason"]
    assert bf16["peak"] is None and bf16["peak_source"] == "no sourced bf16 figure for Zen 4"
    triad = got["memory_bandwidth"]
    assert triad["status"] == "ok" and triad["value"] > 0
    assert triad["size"]["bytes_per_call"] == 3 * 8 * 4096 and "STREAM" in triad["method"]
    assert doc["library"]["name"] == "numpy" and doc["cpu_peak"] == CPU_PEAK and doc["pcie"] is None
    assert doc["healthy"] is None and doc["findings"] == []
    [fp32_line] = [line for line in lines if line.startswith("gemm fp32: ")]
    assert " best of 2 (peak 166.1 GFLOP/s: " in fp32_line and fp32_line.endswith(" %; no floor for this CPU)")
    assert lines[-1] == f"not judged: no floors known for {doc['device_name']}"


def test_cpu_probe_command_writes_a_valid_doc(hardware, tmp_path, capsys):
    hardware()
    assert cli.main(["probe", "--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    [path] = tmp_path.glob("probe-cpu-quick-*.json")
    doc = probe.load_probe(path)
    assert doc["quick"] is True and doc["device"] == "cpu"
    assert "gemm fp32: " in out and "best of 3" in out and "memory bandwidth (triad): " in out


def test_cpu_below_a_floor_exits_1(hardware, tmp_path, capsys):
    hardware({"gemm_fp32": {"floor": 1e18, "unit": "flops_per_s", "source": "impossible", "rule": ""}})
    assert cli.main(["probe", "--device", "cpu", "--quick", "--precision", "fp32", "--out", str(tmp_path)]) == 1
    assert "BELOW FLOOR" in capsys.readouterr().out


@pytest.mark.parametrize("cores", [1, 3])
def test_the_numpy_triad_computes_a_equals_b_plus_s_c(monkeypatch, cores):
    monkeypatch.setattr(arrays, "usable_cores", lambda: cores)
    backend = arrays.NumpyBackend()
    n = 3 * arrays.TRIAD_CHUNK + 7  # chunks and threads that do not divide the length
    op, text = backend.triad(n)
    try:
        a = op()
    finally:
        backend.release()
    assert a.shape == (n,) and a.min() == a.max() == 1.0 + arrays.TRIAD_SCALAR * 2.0
    assert f"{cores} thread(s)" in text


def test_the_pytorch_environment_runs_the_cpu_bf16_gemm(tmp_path):
    fw = frameworks.get("pytorch")
    if venvs.state(fw) not in ("ready", "stale"):
        pytest.skip("needs .venvs/pytorch")
    if not any(flag in arrays.cpu_flags() for flag in arrays.BF16_FLAGS):
        pytest.skip("this CPU has no bf16 instructions")
    import subprocess

    proc = subprocess.run([str(frameworks.venv_python(fw)), "-m", "bench", "probe", "--device", "cpu",
                           "--quick", "--precision", "bf16", "--out", str(tmp_path)],
                          cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [path] = tmp_path.glob("probe-cpu-*.json")
    [bf16] = probe.load_probe(path)["probes"][:1]
    assert bf16["key"] == "gemm_bf16" and bf16["status"] == "ok" and bf16["value"] > 0
    assert "torch" in bf16["method"] and "bfloat16" in bf16["method"]


def test_the_real_reference_table_fits_the_doc():
    if probes._hardware() is None:
        pytest.skip("bench/hardware.py is not here yet")
    doc = probes.run_probes("cpu", log=lambda m: None, sizes=TINY, repeats=1)
    assert probes.validation_errors(doc) == []
    assert isinstance(doc["cpu_peak"], dict)


# ---------------------------------------------------------------- host facts

def test_last_level_cache_counts_each_shared_cache_once(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    for cpu, shared in ((0, "0-1"), (1, "0-1"), (2, "2")):
        for index, size in (("index0", "32K"), ("index3", "32768K")):
            folder = tmp_path / f"cpu{cpu}" / "cache" / index
            folder.mkdir(parents=True)
            (folder / "size").write_text(size + "\n")
            (folder / "shared_cpu_list").write_text(shared + "\n")
    assert arrays.last_level_cache_bytes(tmp_path) == 2 * 32 << 20
    assert arrays.last_level_cache_bytes(tmp_path / "absent") is None


def test_nvidia_smi_identity_matches_the_bus_id_whatever_its_spelling(monkeypatch):
    out = ("0, 00000000:1B:00.0, 0x233010DE\n"
           "1, 00000000:3B:00.0, 0x20B010DE\n")
    monkeypatch.setattr(arrays.subprocess, "run", lambda *a, **k: types.SimpleNamespace(stdout=out))
    assert arrays.nvidia_smi_identity("0000:3b:00.0") == {"nvml_index": 1, "pci_device_id": "0x20B0"}
    assert arrays.nvidia_smi_identity("0000:99:00.0") == {}
    assert arrays.nvidia_smi_identity(None) == {}


def test_the_memory_arrays_are_sized_against_the_caches_and_the_free_memory():
    class Cpu(arrays.NumpyBackend):
        def __init__(self, cache, free):
            super().__init__()
            self.cache, self.free = cache, free

        def last_level_cache_bytes(self):
            return self.cache

        def free_bytes(self):
            return self.free

    from bench.probes import memory_bandwidth as mb

    assert mb.array_bytes(Cpu(32 << 20, 64 << 30)) == 128 << 20    # max(4 x 32 MiB, 128 MiB)
    assert mb.array_bytes(Cpu(256 << 20, 64 << 30)) == 1 << 30     # 4 x the caches
    assert mb.array_bytes(Cpu(256 << 20, 1 << 30)) == (1 << 30) // 12  # a quarter of the free memory
    assert mb.array_bytes(Cpu(None, None)) == 256 << 20              # caches unknown: 4 x 64 MiB


# ---------------------------------------------------------------- arguments of run_probes

@pytest.mark.parametrize("kwargs, message", [
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"device": "cpu", "precisions": ["fp64"]}, "unknown precision 'fp64'"),
    ({"device": "cpu", "precisions": []}, "expected one or more"),
    ({"device": "cpu", "sizes": {"gemm_n": 0}}, "at least 1"),
    ({"device": "cpu", "sizes": {"matrix": 4}}, "unknown size 'matrix'"),
    ({"device": "cpu", "repeats": 0}, "at least 1"),
    ({"device": "cpu", "backend": FakeGpu()}, "a gpu backend cannot probe the cpu"),
])
def test_run_probes_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        probes.run_probes(log=lambda m: None, **kwargs)


def test_precision_lists_are_parsed_once_each():
    assert probes.parse_precisions("bf16, fp32,bf16") == ["bf16", "fp32"]
    assert probes.parse_precisions(["fp16"]) == ["fp16"]


# ---------------------------------------------------------------- the doc and its loaders

def _doc(hardware_fixture, **rates):
    hardware_fixture(FLOORS)
    return probes.run_probes("gpu", backend=FakeGpu(rates=rates), log=lambda m: None, quick=True)


@pytest.mark.parametrize("change, where", [
    (lambda d: d["probes"][0].update(status="great"), "probes/0/status"),
    (lambda d: d["probes"][0].update(value=None), "probes/0/value"),
    (lambda d: d["probes"][0].update(status="skipped"), "probes/0"),
    (lambda d: d["probes"][0].update(value=d["probes"][0]["value"] * 2), "probes/0/value"),
    (lambda d: d["probes"][4].update(precision="fp32"), "probes/4"),
    (lambda d: d.update(healthy="yes"), "healthy"),
    (lambda d: d.pop("findings"), "(top)"),
    (lambda d: d["probes"][0].update(value=math.nan), "probes/0/value"),
])
def test_the_schema_refuses_bad_docs(hardware, change, where):
    doc = _doc(hardware)
    change(doc)
    errors = probes.validation_errors(doc)
    assert errors and any(e.startswith(where) for e in errors), errors
    with pytest.raises(probes.ProbeDocError):
        probes.validate(doc)


def test_write_probe_never_overwrites_and_reads_back(hardware, tmp_path):
    doc = _doc(hardware)
    first, second = probe.write_probe(doc, tmp_path), probe.write_probe(doc, tmp_path)
    assert first != second and first.name.startswith("probe-gpu-quick-")
    assert probe.load_probe(second) == doc
    doc["probes"][0]["status"] = "great"
    with pytest.raises(probes.ProbeDocError):
        probe.write_probe(doc, tmp_path / "other")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("text, message", [
    ("{not json", "not readable JSON"),
    ('{"format": "bench-probe-1", "healthy": NaN}', "not readable JSON"),
    ('{"schema_version": 1}', "not a probe doc"),
    ('[1, 2]', "not a probe doc"),
])
def test_load_probe_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        probe.load_probe(path)
    assert str(path) in str(info.value)


def _result_record():
    from test_results import _record

    return _record()


def test_results_folders_hold_probes_beside_results(hardware, tmp_path):
    doc = _doc(hardware)
    probe_path = probe.write_probe(doc, tmp_path)
    results.write_result(_result_record(), tmp_path)
    bad = dict(doc, healthy="yes")
    (tmp_path / "probe-broken.json").write_text(json.dumps(bad))
    (tmp_path / "copies").mkdir()
    (tmp_path / "copies" / probe_path.name).write_text(probe_path.read_text())
    warnings = []
    records = results.load_results([tmp_path], warnings.append)
    assert len(records) == 1 and records[0]["framework"] == "pytorch"
    assert warnings == []  # probe docs, valid or not, are no results and no warning
    found = results.load_probes([tmp_path], warnings.append)
    assert found == [doc]
    assert len(warnings) == 2
    assert any("probe-broken.json" in w and "healthy" in w for w in warnings)
    assert any("a copy of" in w for w in warnings)
    with pytest.raises(FileNotFoundError):
        results.load_probes([tmp_path / "absent"], warnings.append)


def test_load_results_still_warns_about_foreign_json(tmp_path):
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    warnings = []
    assert results.load_results([tmp_path], warnings.append) == []
    assert len(warnings) == 1 and "other.json" in warnings[0]
