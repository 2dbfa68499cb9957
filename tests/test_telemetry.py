"""Telemetry (bench/telemetry.py) and NVML's interface (bench/nvml.py), driven through every branch
with a stand-in pynvml (fake_nvml) and a stand-in host, each sample taken by the test at a time
of its choosing; then the real psutil host, the runner's and the external launcher's wiring."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import psutil
import pytest

import fake_epochs_framework
import fake_framework
from bench import data as data_mod
from bench import frameworks, nvml, results, runner, tasks, telemetry
from conftest import REPO, fake_program_on_path, require_env, run_bench
from fake_nvml import FakeGPU, FakeNVML

GIB = 2 ** 30
OWN = 1000  # this run's PID, as the stand-in host knows it


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


class FakeHost:
    """What the telemetry asks the host, as the test sets it: RSS now, the machine's and the
    run's CPU seconds, which PIDs are this run's (mine), others' (others: pid -> name), the rest
    not visible here."""

    def __init__(self):
        self.rss, self.busy, self.run = 100 * 2 ** 20, 0.0, 0.0
        self.mine, self.others = {OWN}, {}
        self.watched = None

    def watch(self, pid):
        self.watched = pid

    def memory_bytes(self, refresh=False):
        return self.rss

    def run_cpu_seconds(self, refresh=False):
        return self.run

    def busy_cpu_seconds(self):
        return self.busy

    def in_run(self, pid):
        return True if pid in self.mine else (False if pid in self.others else None)

    def name(self, pid):
        return self.others.get(pid)


class Rig:
    """A telemetry on one fake GPU, a fake host and a clock the test moves."""

    def __init__(self, gpu=None, host=None, gpus=None, **kwargs):
        self.gpu = gpu or FakeGPU(processes={OWN: 2 * GIB})
        self.lib = FakeNVML(gpus or [self.gpu])
        self.host, self.clock = host or FakeHost(), Clock()
        device = nvml.open_device(index=(gpus or [self.gpu]).index(self.gpu), lib=self.lib)
        self.tele = telemetry.Telemetry("gpu", host=self.host, gpu=device, clock=self.clock,
                                        thread=False, **kwargs)

    def advance(self, seconds):
        """Time passes at the GPU's power now: its energy counter (if it has one) goes up."""
        self.clock.t += seconds
        if self.gpu.energy_mj is not None and self.gpu.power_w is not None:
            self.gpu.energy_mj += round(self.gpu.power_w * seconds * 1000)

    def section(self, seconds, steps=4, each=None):
        """One timed section: begin, steps - 1 samples inside, end; each(i) before sample i."""
        if each:
            each(0)
        self.tele.begin()
        for i in range(1, steps + 1):
            self.advance(seconds / steps)
            if each:
                each(i)
            if i < steps:
                self.tele.sample()
        self.tele.end()

    def finish(self):
        record = self.tele.finish()
        json.loads(results.dumps(record))  # never a NaN or infinity
        return record


def _kinds(record):
    return [f["kind"] for f in record["flags"]]


def _valid_record(tele: dict) -> dict:
    spec = tasks.sized("cnn", "gpu", True)
    record = runner.base_record("fake", "cnn", "gpu", "fp32", True, spec, runner.envinfo.capture())
    record.update(error="RuntimeError: x", telemetry=tele)
    results.validate(record)
    return record


# ---------------------------------------------------------------- settings

@pytest.mark.parametrize("environ, expected", [
    ({}, (True, 0.5)), ({"BENCH_TELEMETRY": "0"}, (False, 0.5)), ({"BENCH_TELEMETRY": "Off"}, (False, 0.5)),
    ({"BENCH_TELEMETRY": ""}, (True, 0.5)), ({"BENCH_TELEMETRY": "yes", "BENCH_TELEMETRY_INTERVAL_S": "0.2"}, (True, 0.2)),
])
def test_settings(environ, expected):
    assert telemetry.settings(environ) == expected


@pytest.mark.parametrize("environ, text", [
    ({"BENCH_TELEMETRY": "maybe"}, "$BENCH_TELEMETRY='maybe' is not allowed"),
    ({"BENCH_TELEMETRY_INTERVAL_S": "fast"}, "$BENCH_TELEMETRY_INTERVAL_S='fast' is not allowed"),
    ({"BENCH_TELEMETRY_INTERVAL_S": "nan"}, "seconds from 0.01 to 60.0"),
    ({"BENCH_TELEMETRY_INTERVAL_S": "0"}, "seconds from 0.01 to 60.0"),
    ({"BENCH_TELEMETRY_INTERVAL_S": "inf"}, "seconds from 0.01 to 60.0"),
])
def test_bad_settings_are_clear_errors(environ, text):
    with pytest.raises(telemetry.TelemetryError) as info:
        telemetry.settings(environ)
    assert text in str(info.value)


# ---------------------------------------------------------------- the GPU

def test_energy_from_the_counter_over_the_timed_sections_only():
    rig = Rig(FakeGPU(power_w=300.0, processes={OWN: GIB}))
    rig.section(2.0)
    rig.gpu.power_w = 400.0  # between the sections: neither its energy nor its power counts
    rig.advance(5.0)
    rig.tele.sample()
    rig.advance(1.0)
    rig.gpu.power_w, rig.gpu.sm_mhz, rig.gpu.temp_c = 250.0, 1500, 71
    rig.section(1.0, steps=2)
    gpu = rig.finish()["gpu"]
    assert gpu["energy_source"] == "counter" and gpu["energy_j"] == pytest.approx(600 + 250)
    assert gpu["power_w_mean"] == pytest.approx(850 / 3, abs=1e-3) and gpu["power_w_max"] == 300.0
    assert gpu["sm_clock_mhz_max"] == 1980 and gpu["sm_clock_mhz_mean"] == pytest.approx((5 * 1980 + 3 * 1500) / 8, abs=0.1)
    assert gpu["temperature_c_max"] == 71 and gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["index"] == 0
    assert gpu["power_limit_w"] == 700.0  # the enforced cap, read as the run began


def test_a_power_limit_nvml_cannot_read_is_null():
    rig = Rig(FakeGPU(power_limit_w=None))
    rig.section(1.0)
    assert rig.finish()["gpu"]["power_limit_w"] is None


def test_without_an_energy_counter_the_power_samples_are_integrated():
    rig = Rig(FakeGPU(energy_mj=None))
    powers = [100.0, 300.0, 200.0]
    rig.section(2.0, steps=2, each=lambda i: setattr(rig.gpu, "power_w", powers[i]))
    record = rig.finish()
    gpu = record["gpu"]
    assert gpu["energy_source"] == "integrated power"
    assert gpu["energy_j"] == pytest.approx((100 + 300) / 2 + (300 + 200) / 2)  # trapezoids, 1 s each
    assert gpu["power_w_mean"] == pytest.approx(450 / 2) and record["samples"] == 3


def test_a_counter_that_goes_back_falls_back_to_integrated_power():
    rig = Rig()
    rig.section(1.0, each=lambda i: setattr(rig.gpu, "energy_mj", 5_000 if i == 4 else rig.gpu.energy_mj))
    record = rig.finish()
    assert record["gpu"]["energy_source"] == "integrated power"
    assert record["gpu"]["energy_j"] == pytest.approx(300.0)
    assert any("energy counter went back" in n for n in record["notes"])


def test_throttle_reasons_as_fractions_of_the_samples_and_flagged_from_10_percent():
    masks = [0x4, 0x4 | nvml.IDLE, 0x0, 0x2, 0x4]  # power cap 3 of 5, the app clocks setting once
    rig = Rig()
    rig.section(1.0, each=lambda i: setattr(rig.gpu, "reasons", masks[i]))
    record = rig.finish()
    assert record["gpu"]["throttle"] == {"power cap": 0.6, "applications clocks setting": 0.2}
    assert record["flags"] == [{"kind": "throttle", "text": "throttled (power cap) for 60 % of the run"}]


def test_a_throttle_under_10_percent_of_the_samples_is_no_flag():
    rig = Rig()
    rig.section(1.0, steps=10, each=lambda i: setattr(rig.gpu, "reasons", 0x40 if i == 3 else 0))
    record = rig.finish()
    assert record["gpu"]["throttle"] == {"thermal (hardware slowdown)": pytest.approx(1 / 11, abs=1e-4)}
    assert record["flags"] == []


def test_reason_names():
    assert nvml.reason_names(0x1) == []
    assert nvml.reason_names(0x4 | 0x20 | 0x80) == ["power cap", "sw thermal", "hw power brake"]
    assert nvml.reason_names(0x400 | 0x8) == ["hw slowdown", "reason 0x400"]


def test_a_foreign_process_on_the_gpu_is_listed_and_flagged():
    rig = Rig(FakeGPU(processes={OWN: 2 * GIB}))
    rig.host.others = {4242: "python3", 7: "Xorg"}
    rig.gpu.graphics = {7: None}
    rig.tele.sample()  # before any section: the X server's visit is not the run's business
    rig.advance(1.0)
    rig.gpu.graphics = {}
    rig.section(1.0, each=lambda i: rig.gpu.processes.update({4242: GIB * (1 + (i == 2))}) if i >= 2 else None)
    record = rig.finish()
    gpu = record["gpu"]
    assert gpu["foreign_processes"] == [{"pid": 4242, "name": "python3", "used_memory_bytes": 2 * GIB}]
    assert gpu["run_memory_bytes_max"] == 2 * GIB and gpu["unattributed_processes"] == []
    assert record["flags"] == [{"kind": "foreign_process",
                                "text": "another process used the GPU during the run: pid 4242 (python3, 2.0 GiB)"}]


def test_pids_not_visible_here_one_is_the_run_two_are_a_flag():
    rig = Rig(FakeGPU(processes={900001: 3 * GIB}))  # a container: the driver gives host PIDs
    rig.section(1.0)
    alone = rig.finish()
    assert alone["gpu"]["run_memory_bytes_max"] == 3 * GIB and alone["flags"] == []

    rig = Rig(FakeGPU(processes={900001: 3 * GIB, 900002: GIB}))
    rig.section(1.0)
    shared = rig.finish()
    assert [p["pid"] for p in shared["gpu"]["unattributed_processes"]] == [900001, 900002]
    assert shared["gpu"]["run_memory_bytes_max"] is None and shared["gpu"]["foreign_processes"] == []
    assert shared["flags"] == [{"kind": "foreign_process", "text":
                                "2 processes on the GPU whose PIDs are not visible here (a container's "
                                "PID namespace?): this run is one, 1 other(s) used the GPU too"}]

    rig = Rig(FakeGPU(processes={OWN: GIB, 900002: GIB}))  # this run is visible: the hidden one is another's
    rig.section(1.0)
    seen = rig.finish()
    assert seen["gpu"]["foreign_processes"] == [{"pid": 900002, "name": None, "used_memory_bytes": GIB}]
    assert "pid 900002 (name not visible here, 1.0 GiB)" in seen["flags"][0]["text"]


def test_an_ecc_increase_is_flagged_and_no_ecc_is_null():
    rig = Rig(FakeGPU(ecc=(5, 0)))
    rig.section(1.0)
    rig.gpu.ecc = (7, 1)
    record = rig.finish()
    assert record["gpu"]["ecc_before"] == {"corrected": 5, "uncorrected": 0}
    assert record["gpu"]["ecc_after"] == {"corrected": 7, "uncorrected": 1}
    assert record["flags"] == [{"kind": "ecc", "text": "ECC errors during the run: 2 corrected, 1 uncorrected "
                                                       "(volatile counts 5 -> 7, 0 -> 1)"}]
    rig = Rig(FakeGPU(ecc=None))
    rig.section(1.0)
    record = rig.finish()
    assert record["gpu"]["ecc_before"] is None and record["gpu"]["ecc_after"] is None and record["flags"] == []


def test_pcie_link_below_its_maximum_under_load():
    rig = Rig(FakeGPU(pcie=(1, 16), pcie_max=(4, 16)))
    rig.tele.sample()  # idle: gen 1 saves power, no fault
    rig.section(1.0, each=lambda i: setattr(rig.gpu, "pcie", (4, 16)) if i >= 1 else None)
    record = rig.finish()
    assert record["gpu"]["pcie"] == {"gen": 4, "gen_max": 4, "width": 16, "width_max": 16}
    assert record["flags"] == []
    rig = Rig(FakeGPU(pcie=(3, 8), pcie_max=(4, 16)))
    rig.section(1.0)
    assert [f["text"] for f in rig.finish()["flags"]] == ["PCIe link x8 of x16", "PCIe link gen 3 of 4 under load"]


def test_the_run_is_schema_valid_with_every_flag():
    rig = Rig(FakeGPU(reasons=0x4, ecc=(0, 0), pcie=(3, 8), pcie_max=(4, 16), processes={OWN: GIB, 4242: GIB}))
    rig.host.others = {4242: "python3"}

    def load(i):  # the machine 1.6 CPUs busy, the run 1.0 (1 s a step)
        rig.host.busy, rig.host.run = 1.6 * i, 1.0 * i

    rig.section(4.0, each=load)
    rig.gpu.ecc = (1, 0)
    record = rig.finish()
    assert sorted(set(_kinds(record))) == sorted(telemetry.FLAG_KINDS)
    _valid_record(record)


def test_device_memory_is_reset_before_the_first_section_and_read_at_the_end():
    calls = []

    def reader():
        calls.append(len(calls))
        return {"peak_bytes": 1000 * len(calls), "counter": "fake.max", "scope": "since the last call"}

    rig = Rig(device_memory=reader)
    assert calls == []
    rig.section(1.0)
    rig.section(1.0)
    assert calls == [0]
    record = rig.finish()
    assert calls == [0, 1] and record["device_memory"] == {"peak_bytes": 2000, "counter": "fake.max",
                                                           "scope": "since the last call"}


@pytest.mark.parametrize("reading, note", [
    (RuntimeError("CUDA error: an illegal memory access"), "peak_device_memory failed: RuntimeError"),
    ({"peak": 5}, "peak device memory must be null or"),
    ({"peak_bytes": -1, "counter": "x", "scope": "y"}, "peak_bytes is -1"),
    ({"peak_bytes": float("nan"), "counter": "x", "scope": "y"}, "peak_bytes is nan"),
])
def test_a_failing_or_malformed_device_memory_counter_is_a_note_not_a_failure(reading, note):
    def reader():
        if isinstance(reading, Exception):
            raise reading
        return reading

    rig = Rig(device_memory=reader)
    rig.section(1.0)
    record = rig.finish()
    assert record["device_memory"] is None and any(note in n for n in record["notes"]), record["notes"]


def test_an_integral_float_peak_from_r_becomes_an_int():
    assert telemetry.check_device_memory({"peak_bytes": 1.5e10, "counter": "c", "scope": "s"}, "r-keras") == \
        {"peak_bytes": 15_000_000_000, "counter": "c", "scope": "s"}
    assert telemetry.check_device_memory(None, "x") is None


# ---------------------------------------------------------------- no NVML, and NVML's interface

def test_no_pynvml_gives_no_gpu_telemetry_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    tele = telemetry.for_run("gpu", host=FakeHost(), environ={})
    tele.threaded = False
    tele.begin()
    tele.end()
    record = tele.finish()
    assert record["gpu"] is None and "pynvml is not importable" in record["gpu_unavailable"]
    assert "nvidia-ml-py" in record["gpu_unavailable"]
    _valid_record(record)


@pytest.mark.parametrize("lib, environ, text", [
    (FakeNVML(init_error=12), {}, "NVML did not start: NVML Shared Library Not Found"),
    (FakeNVML(), {"CUDA_VISIBLE_DEVICES": "3"}, "NVML lists 1 GPU(s); there is no GPU 3"),
    (FakeNVML(), {"CUDA_VISIBLE_DEVICES": "-1"}, "hides every GPU"),
    (FakeNVML(), {"CUDA_VISIBLE_DEVICES": "GPU-9999"}, "NVML has no GPU of UUID GPU-9999"),
    (FakeNVML(), {"CUDA_VISIBLE_DEVICES": "first"}, "neither an index nor a GPU UUID"),
])
def test_nvml_without_the_gpu_is_a_reason(lib, environ, text):
    with pytest.raises(nvml.NvmlUnavailable) as info:
        nvml.open_device(lib=lib, environ=environ)
    assert text in str(info.value)
    assert lib.sessions == 0  # every nvmlInit that succeeded was shut down
    tele = telemetry.for_run("gpu", host=FakeHost(), environ=environ, nvml_lib=lib)
    assert tele.gpu is None and text in tele.gpu_unavailable


def test_the_real_pynvml_either_opens_the_gpu_or_says_why():
    try:
        device = nvml.open_device(environ={})
    except nvml.NvmlUnavailable as exc:  # this machine: no NVIDIA driver
        assert "NVML did not start" in str(exc) or "no GPU" in str(exc)
        assert nvml.pcie_link(0) is None
    else:  # a GPU machine: the real readings, each a number or None
        try:
            assert device.name and device.index == 0
            for reading in (device.energy_mj(), device.power_w(), device.sm_clock_mhz(), device.temperature_c()):
                assert reading is None or reading >= 0
            assert isinstance(device.processes(), (dict, type(None)))
        finally:
            device.close()


def test_a_cpu_run_never_asks_nvml():
    lib = FakeNVML(init_error=12)
    tele = telemetry.for_run("cpu", host=FakeHost(), environ={}, nvml_lib=lib)
    tele.threaded = False
    tele.begin()
    tele.end()
    record = tele.finish()
    assert record["gpu"] is None and "gpu_unavailable" not in record


def test_cuda_visible_devices_picks_the_gpu_by_index_or_uuid():
    gpus = [FakeGPU(name="NVIDIA A100-SXM4-80GB", uuid="GPU-a"), FakeGPU(name="NVIDIA L4", uuid="GPU-b")]
    lib = FakeNVML(gpus)
    by_uuid = nvml.open_device(lib=lib, environ={"CUDA_VISIBLE_DEVICES": "GPU-b,GPU-a"})
    assert (by_uuid.index, by_uuid.name) == (1, "NVIDIA L4")
    by_index = nvml.open_device(lib=lib, environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert by_index.name == "NVIDIA L4" and nvml.open_device(lib=lib, environ={}).name == "NVIDIA A100-SXM4-80GB"
    for device in (by_uuid, by_index):
        device.close()
        device.close()  # twice is once
    assert lib.sessions == 1  # the third handle is still open


def test_readings_the_gpu_does_not_have_are_none_and_old_pynvml_names_work():
    gpu = FakeGPU(energy_mj=None, power_w=None, sm_mhz=None, temp_c=None, reasons=None, ecc=None,
                  pcie=None, pcie_max=None)
    device = nvml.open_device(index=0, lib=FakeNVML([gpu]))
    assert [device.energy_mj(), device.power_w(), device.sm_clock_mhz(), device.temperature_c(),
            device.clock_event_reasons(), device.ecc_errors(), device.pcie()] == [None] * 7
    old = nvml.open_device(index=0, lib=FakeNVML([FakeGPU(reasons=0x4)], old_names=True))
    assert old.clock_event_reasons() == 0x4


def test_processes_of_both_lists_merge_with_the_larger_memory():
    device = nvml.open_device(index=0, lib=FakeNVML([FakeGPU(processes={1: GIB, 2: None}, graphics={1: 2 * GIB, 3: None})]))
    assert device.processes() == {1: 2 * GIB, 2: None, 3: None}


def test_pcie_link_for_the_probes():
    lib = FakeNVML([FakeGPU(pcie=(4, 8), pcie_max=(5, 16))])
    assert nvml.pcie_link(0, lib=lib) == {"gen": 4, "gen_max": 5, "width": 8, "width_max": 16}
    assert lib.sessions == 0
    assert nvml.pcie_link(1, lib=lib) is None and nvml.pcie_link(0, lib=FakeNVML(init_error=12)) is None


# ---------------------------------------------------------------- the host

def test_cpu_busy_outside_the_run_during_the_sections_is_flagged():
    rig = Rig()

    def load(rig, rate_busy, rate_run):  # 0.5 s a step
        def each(i):
            rig.host.busy += rate_busy * 0.5 if i else 0.0
            rig.host.run += rate_run * 0.5 if i else 0.0
        return each

    rig.section(2.0, each=load(rig, 1.6, 1.0))
    rig.host.busy += 50.0  # between the sections another job ran: not the sections' business
    rig.advance(10.0)
    rig.section(2.0, each=load(rig, 1.6, 1.0))
    record = rig.finish()
    assert record["host_cpu_busy_other"] == pytest.approx(0.6)
    assert [f for f in record["flags"] if f["kind"] == "host_busy"] == [
        {"kind": "host_busy", "text": "other processes kept 0.60 CPUs busy during the timed sections (more than 0.5)"}]

    quiet = Rig()
    quiet.section(2.0, each=load(quiet, 1.1, 1.0))
    record = quiet.finish()
    assert record["host_cpu_busy_other"] == pytest.approx(0.1) and "host_busy" not in _kinds(record)


def test_host_busy_is_not_given_for_sections_too_short_for_cpu_ticks():
    rig = Rig()
    rig.section(0.2)
    record = rig.finish()
    assert record["host_cpu_busy_other"] is None
    assert any("CPU time's 10 ms ticks" in n for n in record["notes"])


def test_host_memory_peak_is_the_highest_rss_inside_the_sections():
    rig = Rig()
    rss = [100, 300, 200, 150, 120]
    rig.section(1.0, each=lambda i: setattr(rig.host, "rss", rss[i] * 2 ** 20))
    rig.host.rss = 900 * 2 ** 20
    rig.advance(1.0)
    rig.tele.sample()
    record = rig.finish()
    assert record["host_memory_peak_bytes"] == 300 * 2 ** 20 and record["host_memory_scope"] == "process"


def test_the_real_host_counts_a_child_in_the_run_tree():
    code = ("import time, sys\n"
            "block = bytearray(120 * 2 ** 20)\n"
            "start = time.process_time()\n"
            "while time.process_time() - start < 0.3: pass\n"
            "print(time.process_time(), flush=True)\n"
            "sys.stdin.readline()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child_cpu = float(child.stdout.readline())  # the child has allocated and burnt its CPU
        host = telemetry.Host()
        own = psutil.Process().cpu_times()
        tree_cpu = host.run_cpu_seconds(refresh=True)
        assert tree_cpu >= own.user + own.system + child_cpu - 0.05
        assert host.in_run(child.pid) is True and host.in_run(os.getpid()) is True
        assert host.in_run(os.getppid()) is False and host.in_run(2 ** 31 - 1) is None
        own_rss = host.memory_bytes()
        host.watch(child.pid)
        assert host.memory_bytes(refresh=True) >= 120 * 2 ** 20 and own_rss > 0
        assert host.busy_cpu_seconds() > 0
    finally:
        child.communicate("\n")
    host.watch(child.pid)  # a program gone already: its memory is unknown, never the harness's
    assert host.memory_bytes(refresh=True) is None


def test_the_sampler_thread_samples_inside_sections_until_finished():
    reached = threading.Event()

    class Counting(FakeHost):
        calls = 0

        def memory_bytes(self, refresh=False):
            Counting.calls += 1
            if Counting.calls >= 6:
                reached.set()
            return self.rss

    tele = telemetry.Telemetry("cpu", host=Counting(), interval_s=0.01)
    tele.begin()
    assert reached.wait(60), "the sampler took no samples"
    tele.end()
    record = tele.finish()
    assert record["samples"] >= 6 and not tele._thread.is_alive()


def test_a_sampler_that_breaks_stops_with_a_note_and_the_run_goes_on():
    class Breaking(FakeHost):
        def memory_bytes(self, refresh=False):
            if not refresh:  # the thread's samples, not the edges'
                raise OSError("/proc is gone")
            return self.rss

    tele = telemetry.Telemetry("cpu", host=Breaking(), interval_s=0.01)
    tele.begin()
    tele._thread.join(60)
    assert not tele._thread.is_alive()
    tele.end()
    record = tele.finish()
    assert "the sampler stopped: OSError: /proc is gone" in record["notes"] and record["samples"] == 2


def test_an_edge_sample_that_fails_is_a_note_and_the_section_still_counts():
    class Failing(FakeHost):
        def busy_cpu_seconds(self):
            raise PermissionError("/proc/stat: permission denied")

    clock = Clock()
    tele = telemetry.Telemetry("cpu", host=Failing(), clock=clock, thread=False)
    tele.begin()
    clock.t += 2.0
    tele.end()
    record = tele.finish()
    assert record["timed_s"] == pytest.approx(2.0) and record["host_cpu_busy_other"] is None
    assert record["notes"] == ["a sample at a section's edge failed: PermissionError: /proc/stat: "
                               "permission denied"] * 2


def test_a_telemetry_that_breaks_says_so_and_is_off():
    tele = telemetry.Telemetry("cpu", host=FakeHost(), thread=False)
    tele.begin()
    tele.end()
    tele.windows.append(("not", "a time"))
    assert tele.finish() == {"enabled": False, "reason": "telemetry failed: TypeError: unsupported operand "
                                                         "type(s) for -: 'str' and 'str'"}


def test_without_psutil_telemetry_is_off_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)
    record = telemetry.for_run("cpu", environ={}).finish()
    assert record["enabled"] is False and "psutil is not importable" in record["reason"]
    _valid_record(record)


# ---------------------------------------------------------------- a foreign program's report

def test_the_sections_a_foreign_program_reports_cut_the_samples():
    rig = Rig(foreign=True)
    started = rig.tele.watch(4321)
    rig.advance(1.0)
    rig.host.rss = 700 * 2 ** 20  # start-up, before its clock
    rig.tele.sample()
    rig.host.rss = 200 * 2 ** 20
    rig.advance(1.0)
    rig.tele.sample()
    rig.advance(2.0)
    rig.tele.sample()
    ended = rig.tele.unwatch()
    assert rig.host.watched is None
    rig.tele.program_report([[started + 1.5, started + 3.5]], {"peak_bytes": 7.0, "counter": "c", "scope": "s"},
                            started, ended, "knet")
    record = rig.finish()
    assert record["sections"] == "timed" and record["timed_s"] == pytest.approx(2.0)
    assert record["host_memory_peak_bytes"] == 200 * 2 ** 20 and record["host_memory_scope"] == "process tree"
    assert record["device_memory"] == {"peak_bytes": 7, "counter": "c", "scope": "s"}
    assert record["gpu"]["energy_j"] == pytest.approx(600.0)  # 300 W for 2 s, the counter interpolated


@pytest.mark.parametrize("windows, text", [
    ("soon", "not a list"), ([[1, 2, 3]], "is not a pair of finite numbers"),
    ([[5.0, 4.0]], "ends before it starts"), ([[0.0, 1.0]], "lies outside the program's run"),
    ([[float("nan"), 1.0]], "is not a pair of finite numbers"),
])
def test_bad_sections_from_a_program_are_a_note_and_its_whole_run_counts(windows, text):
    rig = Rig(foreign=True)
    started = rig.tele.watch(4321)
    rig.advance(10.0)
    ended = rig.tele.unwatch()
    if windows == [[5.0, 4.0]]:
        windows = [[started + 5, started + 4]]
    rig.tele.program_report(windows, None, started, ended, "r-keras")
    record = rig.finish()
    assert record["sections"] == "process" and record["timed_s"] == pytest.approx(10.0)
    assert any(text in n and "its whole run is used instead" in n for n in record["notes"]), record["notes"]


# ---------------------------------------------------------------- the runner

def _run(tmp_path, monkeypatch, environ=None, task_list=("cnn", "resnet50"), repeats=1):
    monkeypatch.setenv("FAKE_MODE", "ok")
    for key, value in (environ or {}).items():
        monkeypatch.setenv(key, value)
    logged = []
    opts = runner.RunOptions(framework="fake", module="fake_framework", tasks=list(task_list),
                             data="synthetic", quick=True, out=tmp_path, repeats=repeats)
    code, records = runner.run(opts, log=logged.append)
    return code, [results.load_result(p) for p in sorted(tmp_path.glob("*.json"))], logged


def test_every_task_record_carries_its_telemetry(tmp_path, monkeypatch):
    calls = []

    def peak(dev):
        calls.append(dev)
        return {"peak_bytes": 10 * len(calls), "counter": "fake", "scope": "since the last call"}

    monkeypatch.setattr(fake_framework, "peak_device_memory", peak, raising=False)
    code, on_disk, _ = _run(tmp_path, monkeypatch, repeats=2)
    assert code == runner.EXIT_OK and len(on_disk) == 2
    for record in on_disk:
        t = record["telemetry"]
        assert t["enabled"] and t["sections"] == "timed" and t["host_memory_scope"] == "process"
        assert t["samples"] >= 4 and t["timed_s"] > 0 and t["host_memory_peak_bytes"] > 0  # 2 repeats x 2 edges
        assert t["gpu"] is None and "gpu_unavailable" not in t
    assert calls == ["cpu"] * 4  # reset and read once per task, over both repeats
    assert [r["telemetry"]["device_memory"]["peak_bytes"] for r in on_disk] == [20, 40]


def test_bench_telemetry_0_turns_it_off(tmp_path, monkeypatch):
    code, on_disk, _ = _run(tmp_path, monkeypatch, {"BENCH_TELEMETRY": "0"}, task_list=("cnn",))
    assert code == runner.EXIT_OK and on_disk[0]["telemetry"] == {"enabled": False}


def test_a_bad_bench_telemetry_is_a_usage_error_before_any_work(tmp_path, monkeypatch):
    code, on_disk, logged = _run(tmp_path, monkeypatch, {"BENCH_TELEMETRY": "sometimes"})
    assert code == runner.EXIT_USAGE and on_disk == []
    assert logged == ["error: $BENCH_TELEMETRY='sometimes' is not allowed: use 1/true/yes/on or "
                      "0/false/no/off (or unset $BENCH_TELEMETRY)"]


def test_a_failed_task_keeps_what_telemetry_saw(tmp_path, monkeypatch):
    _, on_disk, _ = _run(tmp_path, monkeypatch, {"FAKE_MODE": "nan"}, task_list=("cnn",))
    [record] = on_disk
    assert record["status"] == "failed" and record["telemetry"]["enabled"] and record["telemetry"]["samples"] >= 2


class Recorder:
    def __init__(self):
        self.calls = []

    def begin(self):
        self.calls.append("begin")

    def end(self):
        self.calls.append("end")


@pytest.mark.parametrize("drive", ["per-epoch", "all-epochs"])
def test_each_epoch_is_one_section_on_either_drive(drive, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCHS_MODE", "ok")
    fake_epochs_framework.reset()
    spec = replace(tasks.SPECS["cnn"], epochs=3, train_batches=2, test_batches=1)
    n = 2 * spec.batch_size
    x = np.zeros((n, 1), dtype=np.float32)
    task_data = data_mod.TaskData(x, np.arange(n), x[: spec.batch_size], None, "synthetic", "ids")
    recorder = Recorder()
    runner.measure_training(fake_epochs_framework, "cpu", spec, task_data, 0, lambda m: None, drive=drive,
                            telemetry=recorder)
    assert recorder.calls == ["begin", "end"] * 3


def test_inference_is_one_section(monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "ok")
    spec = tasks.sized("resnet50", "cpu", True)
    task_data = data_mod.task_data(spec, "synthetic", True, 0)
    recorder = Recorder()
    runner.measure_inference(fake_framework, "cpu", spec, task_data, 0, lambda m: None, telemetry=recorder)
    assert recorder.calls == ["begin", "end"]


# ---------------------------------------------------------------- R and Julia

FAKE_JULIA = """#!{python}
# Stands in for `julia bench.jl request.json`: julia/bench.jl's answer, and its timed sections
# 0.3 s to 0.5 s after it starts (then it lives until 0.6 s).
import json, os, sys, time
import numpy as np
start = time.time()
request = json.load(open(sys.argv[-1]))
spec = request["spec"]
state = {{"name": "fp32", "tf32": False, "compute_dtype": "float32", "param_dtype": "float32",
         "loss_scaling": "none", "loss_scaler": None, "mechanism": "fake", "read_back": [], "switches": {{}}}}
m = {{"params": 3441592, "framework_version": "Knet 1.4.10", "conventions": {{"precision": state,
     "mode": {{"mode": request.get("mode", "reference"), "switches": [], "not_applied": {{}}}}}},
     "epoch_times_s": [0.2], "losses": [0.7], "device_memory": {{"peak_bytes": 12345, "counter": "c", "scope": "s"}}}}
if os.environ.get("FAKE_JULIA_WINDOWS", "1") == "1":
    m["timed_windows"] = [[start + 0.3, start + 0.5]]
np.save(request["logits"], np.zeros((len(np.load(request["arrays"]["x_test"])), spec["classes"]), dtype=np.float32))
json.dump(m, open(request["measurement"], "w"))
time.sleep(max(0.0, start + 0.6 - time.time()))
"""


@pytest.fixture
def fake_julia(tmp_path):
    return fake_program_on_path(tmp_path, "julia", FAKE_JULIA.format(python=sys.executable), BENCH_TELEMETRY_INTERVAL_S="0.05")


@pytest.mark.parametrize("windows", ["1", "0"])
def test_a_foreign_program_is_sampled_from_outside_and_cut_to_its_sections(fake_julia, tmp_path, windows):
    env = dict(fake_julia, FAKE_JULIA_WINDOWS=windows)
    proc = run_bench("run", "--framework", "knet", "--tasks", "cnn", "--data", "synthetic", "--quick",
                     "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    [record] = [results.load_result(p) for p in (tmp_path / "out").glob("*.json")]
    t = record["telemetry"]
    assert t["enabled"] and t["host_memory_scope"] == "process tree" and t["interval_s"] == 0.05
    assert t["device_memory"] == {"peak_bytes": 12345, "counter": "c", "scope": "s"}
    if windows == "1":
        assert t["sections"] == "timed" and t["timed_s"] == pytest.approx(0.2, abs=1e-6)
    else:  # no sections reported: the program's whole run, at least the 0.6 s it lives
        assert t["sections"] == "process" and t["timed_s"] >= 0.6


def test_a_bad_bench_telemetry_stops_a_foreign_run_before_it_starts(fake_julia, tmp_path):
    proc = run_bench("run", "--framework", "knet", "--quick", "--out", str(tmp_path),
                     env=dict(fake_julia, BENCH_TELEMETRY="2"))
    assert proc.returncode == 2 and "$BENCH_TELEMETRY='2' is not allowed" in proc.stderr
    assert not list(tmp_path.glob("*.json"))


# ---------------------------------------------------------------- the framework files

def _section_one(text: str) -> tuple:
    start = text.index("1. framework and device")
    return start, text.index("2. CNN", start)


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "bench" / "frameworks").glob("*.py")
                                        if p.name != "__init__.py"))
def test_every_framework_file_has_peak_device_memory_in_section_1(path):
    source = (REPO / "bench" / "frameworks" / path).read_text()
    tree = ast.parse(source)
    doc = ast.get_docstring(tree)
    listed = doc[doc.index("1. framework and device"):doc.index("2.", doc.index("1. framework and device"))]
    assert "peak_device_memory" in listed, f"{path}: section 1's list in the doc comment lacks it"
    [fn] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "peak_device_memory"]
    lines = source.splitlines()
    marker_1 = next(i for i, line in enumerate(lines, 1) if line.startswith("# ---") and "1. framework and device" in line)
    marker_2 = next(i for i, line in enumerate(lines, 1) if line.startswith("# ---") and "2. CNN" in line)
    assert marker_1 < fn.lineno < marker_2, f"{path}: peak_device_memory is outside section 1"
    assert [a.arg for a in fn.args.args] == ["dev" if path != "mxnet.py" else "ctx"]


def test_r_and_julia_report_sections_and_device_memory():
    r = (REPO / "r" / "bench.R").read_text()
    section = r[r.index("# ---------------------------------------------------------------- framework and device"):
                r.index("# ---------------------------------------------------------------- CNN")]
    assert re.search(r"^peak_device_memory <- function\(device\)", section, re.M)
    assert r.count("timed_windows =") == 2 and r.count("device_memory = peak_device_memory(device)") == 2
    jl = (REPO / "julia" / "bench.jl").read_text()
    section = jl[jl.index("# ---------------------------------------------------------------- framework and device"):
                 jl.index("# ---------------------------------------------------------------- precision")]
    assert re.search(r"^function peak_device_memory\(device\)", section, re.M)
    assert "MEMPOOL_ATTR_USED_MEM_HIGH" in section
    assert jl.count('"timed_windows" =>') == 2 and jl.count('"device_memory" =>') == 2


def test_pytorch_has_no_device_memory_on_a_cpu():
    python = require_env(frameworks.get("pytorch"))
    proc = subprocess.run([str(python), "-c", "import torch; from bench.frameworks import pytorch as fw; "
                           "print(fw.peak_device_memory(torch.device('cpu')))"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "None", proc.stderr[-2000:]
