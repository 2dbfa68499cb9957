"""Telemetry of every task run, sampled in a background thread beside the timed sections.

What one task's record["telemetry"] holds (bench/schema/result-v1.schema.json, "telemetry"):
  - host: the peak RSS of the process measured (the run's own process; for R and Julia the
    foreign program and its children, sampled from here), and the CPUs kept busy by processes
    outside the run's process tree (this process and its descendants) during the timed sections:
    (machine busy - run's tree) CPU seconds / timed seconds, busy as psutil.cpu_percent counts it.
  - device memory: the framework file's own peak counter (its peak_device_memory(dev)).
  - GPU, through NVML (bench/nvml.py): energy over the timed sections from the energy counter
    (else integrated power samples), power, SM clock, temperature, clock event (throttle)
    reasons, ECC counts before and after, the PCIe link, other processes on the GPU.
  - flags: what makes a figure suspect (a throttle for >= 10 % of the samples, a foreign GPU
    process, an ECC increase, a PCIe link below its maximum, a busy host).

Timed sections: a Python framework's begin()/end() around each clock (outside it: the sample
taken at each edge costs nothing on the clock); a foreign program reports its sections as Unix
times (timed_windows) and the samples from its whole run are cut to them. Counters (energy, CPU
seconds) are read at the edges, or interpolated between samples there.

Telemetry observes and never changes a task's outcome: a reading it cannot take is null and a
problem is a note. BENCH_TELEMETRY=0 turns it off (record: {"enabled": false}),
BENCH_TELEMETRY_INTERVAL_S sets the sampling interval (0.5 s).
"""
from __future__ import annotations

import math
import os
import threading
import time

from . import nvml

SWITCH = "BENCH_TELEMETRY"
INTERVAL_VARIABLE = "BENCH_TELEMETRY_INTERVAL_S"
DEFAULT_INTERVAL_S = 0.5
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.01, 60.0
TRUE_WORDS = ("1", "true", "yes", "on")  # bench/cli.py's words for a yes/no variable
FALSE_WORDS = ("0", "false", "no", "off")
HOST_BUSY_CPUS = 0.5  # mean CPUs busy outside the run above which a CPU figure is suspect
# CPU time ticks in 1/100 s: over shorter sections the busy figure is mostly rounding
MIN_BUSY_TIMED_S = 1.0
THROTTLE_FRACTION = 0.10
TREE_REFRESH_S = 5.0  # how stale the list of a sampled process tree may get between edges
WINDOW_SLACK_S = 1.0  # a foreign program's reported section may stick out of its run by this
FLAG_KINDS = ("throttle", "foreign_process", "ecc", "pcie_link", "host_busy")


class TelemetryError(ValueError):
    """A telemetry setting or a reported value that is not what it must be; the text says why."""


def settings(environ=None) -> tuple:
    """(enabled, interval_s) from BENCH_TELEMETRY and BENCH_TELEMETRY_INTERVAL_S."""
    environ = os.environ if environ is None else environ
    word = environ.get(SWITCH, "1").strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS + ("",):
        raise TelemetryError(f"${SWITCH}={environ[SWITCH]!r} is not allowed: use {'/'.join(TRUE_WORDS)} "
                             f"or {'/'.join(FALSE_WORDS)} (or unset ${SWITCH})")
    text = environ.get(INTERVAL_VARIABLE, "").strip()
    interval = DEFAULT_INTERVAL_S
    if text:
        try:
            interval = float(text)
        except ValueError:
            interval = math.nan
        if not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:  # NaN fails this too
            raise TelemetryError(f"${INTERVAL_VARIABLE}={text!r} is not allowed: use seconds from "
                                 f"{MIN_INTERVAL_S} to {MAX_INTERVAL_S} (or unset it for {DEFAULT_INTERVAL_S})")
    return word not in FALSE_WORDS, interval


def _finite(value, digits: int | None = None):
    """A finite float (rounded), else None: no NaN or infinity is ever written."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return round(value, digits) if digits is not None else value


def _gib(n: int | None) -> str:
    return "memory unknown" if n is None else f"{n / 2 ** 30:.1f} GiB"


def check_device_memory(value, who: str) -> dict | None:
    """A peak_device_memory() answer ({"peak_bytes", "counter", "scope"} or None), normalised:
    a peak given as an integral float (R's numbers) becomes an int. TelemetryError if malformed."""
    if value is None:
        return None
    expected = (f"{who}: peak device memory must be null or {{\"peak_bytes\": bytes or null, "
                f"\"counter\": text, \"scope\": text}}")
    if not isinstance(value, dict) or not {"peak_bytes", "counter", "scope"} <= set(value):
        raise TelemetryError(f"{expected}, got {value!r}")
    peak = value["peak_bytes"]
    if peak is not None:
        if isinstance(peak, bool) or not isinstance(peak, (int, float)) or not math.isfinite(peak) \
                or peak < 0 or peak != int(peak):
            raise TelemetryError(f"{expected}; peak_bytes is {peak!r}")
        peak = int(peak)
    out = {"peak_bytes": peak}
    for key in ("counter", "scope", "note"):
        if value.get(key) is not None:
            if not isinstance(value[key], str):
                raise TelemetryError(f"{expected}; {key} is {value[key]!r}")
            out[key] = value[key]
        elif key != "note":
            out[key] = None
    return out


def check_windows(value, started: float, ended: float) -> list:
    """A foreign program's timed sections: [[start, end], ...] in Unix seconds, each inside its
    run (started..ended, give or take WINDOW_SLACK_S). TelemetryError if not."""
    def bad(why):
        return TelemetryError(f"the program reported timed_windows = {value!r}: {why}; expected "
                              "[[start, end], ...] in Unix seconds (as time() gives them)")

    if not isinstance(value, (list, tuple)):
        raise bad("not a list")
    windows = []
    for pair in value:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair):
            raise bad(f"{pair!r} is not a pair of finite numbers")
        a, b = float(pair[0]), float(pair[1])
        if b < a:
            raise bad(f"{pair!r} ends before it starts")
        if a < started - WINDOW_SLACK_S or b > ended + WINDOW_SLACK_S:
            raise bad(f"{pair!r} lies outside the program's run ({started:.3f} to {ended:.3f})")
        windows.append((max(a, started), min(b, ended)))
    return windows


# ---------------------------------------------------------------- the host, through psutil

class ProcessTree:
    """A process and its descendants (psutil). The descendants are listed again at most every
    TREE_REFRESH_S unless asked (a listing reads every process's stat); the members' own
    figures are read each time."""

    def __init__(self, ps, pid: int, clock=time.monotonic):
        self.ps, self.pid, self.clock = ps, pid, clock
        self.root = ps.Process(pid)
        self.members = {pid: self.root}
        self._listed = -math.inf

    def refresh(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._listed < TREE_REFRESH_S:
            return
        self._listed = now
        try:
            children = self.root.children(recursive=True)
        except (self.ps.NoSuchProcess, self.ps.AccessDenied):
            children = []
        members = {self.pid: self.root}
        for child in children:  # keep the Process objects already held (pid reuse is checked by psutil)
            members[child.pid] = self.members.get(child.pid, child)
        self.members = members

    def _each(self, read):
        total, seen = 0, False
        for proc in list(self.members.values()):
            try:
                total += read(proc)
                seen = True
            except (self.ps.NoSuchProcess, self.ps.AccessDenied, self.ps.ZombieProcess):
                continue
        return total if seen else None

    def rss(self) -> int | None:
        return self._each(lambda p: p.memory_info().rss)

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the members and of the children they reaped."""
        def used(p):
            t = p.cpu_times()
            return t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
        return self._each(used)


class Host:
    """This machine through psutil: the run's process tree (root: this process), the process
    whose memory is measured (this one, or the foreign program watched), CPU time."""

    def __init__(self, ps=None, pid: int | None = None):
        if ps is None:
            import psutil as ps
        self.ps = ps
        self.run = ProcessTree(ps, os.getpid() if pid is None else pid)
        self.watched = None  # the foreign program's ProcessTree while it runs
        self.watching = False
        self._verdicts = {}  # pid: (create_time, in the run?)
        self._names = {}

    def watch(self, pid: int | None) -> None:
        self.watching = pid is not None
        try:
            self.watched = ProcessTree(self.ps, pid) if pid is not None else None
        except self.ps.NoSuchProcess:  # gone already: its memory is unknown, never this process's
            self.watched = None

    def memory_bytes(self, refresh: bool = False) -> int | None:
        """RSS of the process measured: this one alone, or the watched program's tree."""
        if self.watching and self.watched is None:
            return None
        if self.watched is None:
            try:
                return self.run.root.memory_info().rss
            except (self.ps.NoSuchProcess, self.ps.AccessDenied):
                return None
        self.watched.refresh(force=refresh)
        return self.watched.rss()

    def run_cpu_seconds(self, refresh: bool = False) -> float | None:
        self.run.refresh(force=refresh)
        return self.run.cpu_seconds()

    def busy_cpu_seconds(self) -> float | None:
        """CPU seconds the machine has been busy, all CPUs (psutil.cpu_percent's busy: all but
        idle and iowait; guest time is inside user time already)."""
        t = self.ps.cpu_times()
        total = sum(t)
        for idle in ("idle", "iowait", "guest", "guest_nice"):
            total -= getattr(t, idle, 0.0)
        return total

    def in_run(self, pid: int) -> bool | None:
        """Whether pid is this run's (its tree), None if no such process is visible here."""
        try:
            proc = self.ps.Process(pid)
            key = proc.create_time()
            known = self._verdicts.get(pid)
            if known is not None and known[0] == key:
                return known[1]
            mine = pid == self.run.pid or any(p.pid == self.run.pid for p in proc.parents())
        except self.ps.NoSuchProcess:
            return None
        except self.ps.AccessDenied:
            mine = False  # another user's process is never this run's
            key = None
        self._verdicts[pid] = (key, mine)
        return mine

    def name(self, pid: int) -> str | None:
        if pid not in self._names:
            try:
                self._names[pid] = self.ps.Process(pid).name()
            except (self.ps.NoSuchProcess, self.ps.AccessDenied):
                self._names[pid] = None
        return self._names[pid]


# ---------------------------------------------------------------- samples

class Sample:
    __slots__ = ("t", "rss", "run_cpu", "busy_cpu", "gpu")

    def __init__(self, t, rss=None, run_cpu=None, busy_cpu=None, gpu=None):
        self.t, self.rss, self.run_cpu, self.busy_cpu, self.gpu = t, rss, run_cpu, busy_cpu, gpu


def _value_at(series: list, t: float):
    """A cumulative counter at time t, linear between the (time, value) readings around it
    (the nearest reading outside them); None without readings."""
    if not series:
        return None
    if t <= series[0][0]:
        return series[0][1]
    if t >= series[-1][0]:
        return series[-1][1]
    lo, hi = 0, len(series) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if series[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    (t0, v0), (t1, v1) = series[lo], series[hi]
    return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def _integral(series: list, a: float, b: float):
    """The integral over [a, b] of a sampled rate (trapezoids, the ends interpolated)."""
    if not series or b <= a:
        return None
    points = [(a, _value_at(series, a))] + [(t, v) for t, v in series if a < t < b] + [(b, _value_at(series, b))]
    return sum((t1 - t0) * (v0 + v1) / 2 for (t0, v0), (t1, v1) in zip(points, points[1:]))


class Off:
    """Telemetry turned off (or impossible here): every call does nothing."""

    def __init__(self, reason: str | None = None):
        self.reason = reason

    def begin(self):
        pass

    def end(self):
        pass

    def watch(self, pid):
        pass

    def unwatch(self):
        pass

    def program_report(self, *args, **kwargs):
        pass

    def finish(self) -> dict:
        return {"enabled": False, "reason": self.reason} if self.reason else {"enabled": False}


class Telemetry:
    """One task's telemetry. A Python framework: begin()/end() around each timed section. A
    foreign program: watch(pid) while it runs, unwatch(), then program_report(...) with the
    sections and the device memory it reported. finish() stops the sampler and gives the record.

    sample() takes one sample now: the thread calls it every interval_s inside a section; the
    tests call it themselves (thread=False) with their own clock. The GPU is an nvml.Device (or
    None: a CPU run, or no NVML: gpu_unavailable says why); device_memory a callable giving the
    framework's peak_device_memory(dev)."""

    def __init__(self, device: str = "cpu", *, host: Host, gpu=None, gpu_unavailable: str | None = None,
                 device_memory=None, interval_s: float = DEFAULT_INTERVAL_S, clock=time.time,
                 foreign: bool = False, thread: bool = True):
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be cpu or gpu, got {device!r}")
        self.device, self.host, self.gpu, self.gpu_unavailable = device, host, gpu, gpu_unavailable
        self.device_memory_reader, self.interval_s, self.clock = device_memory, interval_s, clock
        self.foreign, self.threaded = foreign, thread
        self.samples: list = []
        self.windows: list = []
        self.notes: list = []
        self.sections = "timed"
        self.device_memory = None
        self._open = None  # start of the section being timed
        self._started = False
        self._watching = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.sampler_cpu_s = None  # CPU seconds the sampler thread used (set when it stops)
        self._ecc_before = self._pcie_max = self._power_limit = None

    # ---- the edges

    def _first(self) -> None:
        """Before the first section: the ECC counts, the link's maximum, a reset of the
        framework's peak counter, the sampler thread."""
        self._started = True
        if self.gpu is not None:
            self._ecc_before = self.gpu.ecc_errors()
            self._pcie_max = self.gpu.pcie_max()
            self._power_limit = self.gpu.power_limit_w()
        if self.device_memory_reader is not None:
            self._read_device_memory()  # resets the counter where the framework can
        self.start()

    def begin(self) -> None:
        if self._open is not None:
            raise RuntimeError("telemetry: begin() while a section is open")
        if not self._started:
            self._first()
        self._open = self._edge()

    def end(self) -> None:
        if self._open is None:
            raise RuntimeError("telemetry: end() with no section open")
        self.windows.append((self._open, self._edge()))
        self._open = None

    def _edge(self) -> float:
        """The sample at a section's edge, and its time; a failure is a note, never the task's."""
        try:
            return self.sample(edge=True).t
        except Exception as exc:
            self.notes.append(f"a sample at a section's edge failed: {type(exc).__name__}: {exc}")
            return self.clock()

    def watch(self, pid: int) -> float:
        """A foreign program started (pid): sample its process tree until unwatch()."""
        self.host.watch(pid)
        if not self._started:
            self._first()
        self._watching = True
        return self._edge()

    def unwatch(self) -> float:
        t = self._edge()
        self._watching = False
        self.host.watch(None)
        return t

    def program_report(self, windows, device_memory, started: float, ended: float, who: str) -> None:
        """What a foreign program reported for the run started..ended: its timed sections (None:
        it reported none, so its whole run counts) and its peak device memory."""
        if windows is None:
            self.sections = "process"
            self.windows.append((started, ended))
        else:
            try:
                self.windows.extend(check_windows(windows, started, ended))
            except TelemetryError as exc:
                self.notes.append(f"{exc}; its whole run is used instead")
                self.sections = "process"
                self.windows.append((started, ended))
        try:
            reading = check_device_memory(device_memory, who)
        except TelemetryError as exc:
            self.notes.append(str(exc))
            return
        self._keep_device_memory(reading)

    # ---- sampling

    def sample(self, edge: bool = False) -> Sample:
        """One sample now. The CPU counters are read at every edge (the process trees listed
        afresh) and on every sample of a foreign program, whose edges are known only afterwards."""
        with self._lock:
            s = Sample(self.clock())
            s.rss = self.host.memory_bytes(refresh=edge)
            if edge or self._watching:
                s.busy_cpu = self.host.busy_cpu_seconds()
                s.run_cpu = self.host.run_cpu_seconds(refresh=edge)
            if self.gpu is not None:
                s.gpu = self._gpu_sample()
            self.samples.append(s)
            return s

    def _gpu_sample(self) -> dict:
        g = self.gpu
        gen, width = g.pcie_current()
        procs = g.processes()
        seen = None
        if procs is not None:
            seen = {}
            for pid, used in procs.items():
                verdict = self.host.in_run(pid)
                seen[pid] = (used, verdict, self.host.name(pid) if verdict is False else None)
        return {"energy_mj": g.energy_mj(), "power_w": g.power_w(), "sm_mhz": g.sm_clock_mhz(),
                "temp_c": g.temperature_c(), "reasons": g.clock_event_reasons(), "gen": gen,
                "width": width, "procs": seen}

    def start(self) -> None:
        if self.threaded and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="bench-telemetry", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    if self._open is not None or self._watching:
                        self.sample()
                except Exception as exc:  # a sampler that breaks stops; the run goes on
                    self.notes.append(f"the sampler stopped: {type(exc).__name__}: {exc}")
                    return
        finally:  # the sampler's own cost: CPU time this thread took from the run
            self.sampler_cpu_s = time.thread_time()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    # ---- device memory

    def _read_device_memory(self):
        try:
            return check_device_memory(self.device_memory_reader(), "peak_device_memory")
        except Exception as exc:  # the framework's counter failing is a note, not a failed task
            self.notes.append(f"peak_device_memory failed: {type(exc).__name__}: {exc}")
            self.device_memory_reader = None
            return None

    def _keep_device_memory(self, reading) -> None:
        """The highest peak over the task's repeats (a foreign program reports one per run)."""
        if reading is None:
            return
        old = self.device_memory
        if old is None or old.get("peak_bytes") is None or (
                reading["peak_bytes"] is not None and reading["peak_bytes"] > old["peak_bytes"]):
            self.device_memory = reading

    # ---- the record

    def finish(self) -> dict:
        """The record; it never raises (a telemetry that broke says so and is off)."""
        try:
            self.stop()
            if self._open is not None:  # the task failed inside a section: close it here
                self.end()
            ecc_after = self.gpu.ecc_errors() if self.gpu is not None and self._started else None
            if self.device_memory_reader is not None and self._started:
                self._keep_device_memory(self._read_device_memory())
            if self.gpu is not None:
                self.gpu.close()
            return self._summary(ecc_after)
        except Exception as exc:
            return {"enabled": False, "reason": f"telemetry failed: {type(exc).__name__}: {exc}"}

    def _in(self, window) -> list:
        a, b = window
        inside = [s for s in self.samples if a <= s.t <= b]
        if inside:
            return inside
        before = [s for s in self.samples if s.t < a][-1:]  # a section shorter than the interval
        after = [s for s in self.samples if s.t > b][:1]
        return before + after

    def _summary(self, ecc_after) -> dict:
        timed = sum(b - a for a, b in self.windows)
        inside = {id(s): s for w in self.windows for s in self._in(w)}
        counted = [s for s in self.samples if any(a <= s.t <= b for a, b in self.windows)]
        used = sorted(inside.values(), key=lambda s: s.t)
        rss = [s.rss for s in used if s.rss is not None]
        record = {
            "enabled": True, "interval_s": self.interval_s, "samples": len(counted),
            "timed_s": _finite(timed, 6), "sections": self.sections,
            "host_memory_peak_bytes": max(rss) if rss else None,
            "host_memory_scope": "process tree" if self.foreign else "process",
            "host_cpu_busy_other": self._busy_other(timed),
            "sampler_cpu_s": _finite(self.sampler_cpu_s, 6),
            "device_memory": self.device_memory,
            "gpu": self._gpu_summary(used, timed, ecc_after) if self.gpu is not None else None,
        }
        if self.device == "gpu" and self.gpu is None:
            record["gpu_unavailable"] = self.gpu_unavailable or "no GPU telemetry"
        record["flags"] = self._flags(record)
        record["notes"] = list(self.notes)
        return record

    def _busy_other(self, timed: float):
        busy = [(s.t, s.busy_cpu) for s in self.samples if s.busy_cpu is not None]
        run = [(s.t, s.run_cpu) for s in self.samples if s.run_cpu is not None]
        if not busy or not run or timed <= 0:
            return None
        if timed < MIN_BUSY_TIMED_S:
            self.notes.append(f"host_cpu_busy_other not given: the timed sections last {timed:.3f} s, "
                              f"under the {MIN_BUSY_TIMED_S} s that CPU time's 10 ms ticks need")
            return None
        other = 0.0
        for a, b in self.windows:
            other += (_value_at(busy, b) - _value_at(busy, a)) - (_value_at(run, b) - _value_at(run, a))
        # the two counters tick apart (clock ticks): a small negative is none
        return _finite(max(other / timed, 0.0), 3)

    def _gpu_summary(self, used: list, timed: float, ecc_after) -> dict:
        g = [s for s in used if s.gpu is not None]

        def values(key):
            return [s.gpu[key] for s in g if s.gpu[key] is not None]

        energy, source = self._energy(timed)
        powers, clocks, temps = values("power_w"), values("sm_mhz"), values("temp_c")
        reasons = values("reasons")
        throttle = {}
        for mask in reasons:
            for name in nvml.reason_names(mask):
                throttle[name] = throttle.get(name, 0) + 1
        gens, widths = values("gen"), values("width")
        gen_max, width_max = self._pcie_max or (None, None)
        pcie = {"gen": max(gens) if gens else None, "gen_max": gen_max,
                "width": max(widths) if widths else None, "width_max": width_max}
        foreign, unattributed, own_memory = self._processes(g)
        return {
            "index": self.gpu.index, "name": self.gpu.name,
            "energy_j": _finite(energy, 3), "energy_source": source if energy is not None else None,
            "power_w_mean": _finite(energy / timed, 3) if energy is not None and timed > 0 else None,
            "power_w_max": _finite(max(powers), 3) if powers else None,
            "power_limit_w": _finite(self._power_limit, 3),
            "sm_clock_mhz_mean": _finite(sum(clocks) / len(clocks), 1) if clocks else None,
            "sm_clock_mhz_max": max(clocks) if clocks else None,
            "temperature_c_max": max(temps) if temps else None,
            "throttle": {name: _finite(n / len(reasons), 4) for name, n in sorted(throttle.items())},
            "ecc_before": self._ecc_before, "ecc_after": ecc_after,
            "pcie": None if all(v is None for v in pcie.values()) else pcie,
            "foreign_processes": foreign,
            "unattributed_processes": unattributed,
            "run_memory_bytes_max": own_memory,
        }

    def _energy(self, timed: float) -> tuple:
        """Joules over the sections: the energy counter's difference where the GPU has one, else
        the power samples integrated."""
        counter = [(s.t, s.gpu["energy_mj"]) for s in self.samples
                   if s.gpu is not None and s.gpu["energy_mj"] is not None]
        if counter and timed > 0:
            deltas = [_value_at(counter, b) - _value_at(counter, a) for a, b in self.windows]
            if min(deltas) >= 0:
                return sum(deltas) / 1000.0, "counter"
            self.notes.append("the GPU's energy counter went back during the run (a driver reload?): "
                              "energy from integrated power instead")
        power = [(s.t, s.gpu["power_w"]) for s in self.samples
                 if s.gpu is not None and s.gpu["power_w"] is not None]
        if not power or timed <= 0:
            return None, None
        parts = [_integral(power, a, b) for a, b in self.windows]
        return sum(p for p in parts if p is not None), "integrated power"

    def _processes(self, g: list) -> tuple:
        """(foreign processes, unattributed processes, this run's GPU memory max) over the samples.

        A PID the driver lists that is not visible here (a container without the driver's PID
        translation lists the host's PIDs) cannot be told apart: where no listed process is
        visibly this run's, one of them is; where one is, the invisible ones are all others'."""
        foreign, unattributed, own = {}, {}, []
        for s in g:
            procs = s.gpu["procs"]
            if procs is None:
                continue
            mine = [used for used, verdict, _ in procs.values() if verdict]
            hidden = {pid: used for pid, (used, verdict, _) in procs.items() if verdict is None}
            for pid, (used, verdict, name) in procs.items():
                if verdict is False:
                    _keep(foreign, pid, used, name)
            if mine:
                for pid, used in hidden.items():
                    _keep(foreign, pid, used, None)
            elif len(hidden) == 1:  # the one process on the GPU is this run, under another PID
                mine = list(hidden.values())
            else:
                for pid, used in hidden.items():
                    _keep(unattributed, pid, used, None)
            if mine and all(m is not None for m in mine):
                own.append(sum(mine))
        return ([dict(pid=pid, **foreign[pid]) for pid in sorted(foreign)],
                [{"pid": pid, "used_memory_bytes": unattributed[pid]["used_memory_bytes"]}
                 for pid in sorted(unattributed)],
                max(own) if own else None)

    def _flags(self, record: dict) -> list:
        flags = []
        gpu = record["gpu"]
        if gpu is not None:
            for name, fraction in gpu["throttle"].items():
                if name not in nvml.SETTINGS and fraction >= THROTTLE_FRACTION:
                    flags.append(("throttle", f"throttled ({name}) for {round(100 * fraction)} % of the run"))
            others = gpu["foreign_processes"]
            if others:
                listed = ", ".join(f"pid {p['pid']} ({p['name'] or 'name not visible here'}, "
                                   f"{_gib(p['used_memory_bytes'])})" for p in others)
                flags.append(("foreign_process", (f"another process used the GPU during the run: {listed}"
                                                  if len(others) == 1 else
                                                  f"{len(others)} other processes used the GPU during the run: {listed}")))
            hidden = gpu["unattributed_processes"]
            if len(hidden) > 1:
                flags.append(("foreign_process",
                              f"{len(hidden)} processes on the GPU whose PIDs are not visible here (a "
                              f"container's PID namespace?): this run is one, {len(hidden) - 1} other(s) "
                              "used the GPU too"))
            before, after = gpu["ecc_before"], gpu["ecc_after"]
            if before and after and any(after[k] > before[k] for k in ("corrected", "uncorrected")):
                flags.append(("ecc", "ECC errors during the run: "
                                     f"{after['corrected'] - before['corrected']} corrected, "
                                     f"{after['uncorrected'] - before['uncorrected']} uncorrected "
                                     f"(volatile counts {before['corrected']} -> {after['corrected']}, "
                                     f"{before['uncorrected']} -> {after['uncorrected']})"))
            link = gpu["pcie"]
            if link and link["width"] is not None and link["width_max"] is not None \
                    and link["width"] < link["width_max"]:
                flags.append(("pcie_link", f"PCIe link x{link['width']} of x{link['width_max']}"))
            if link and link["gen"] is not None and link["gen_max"] is not None and link["gen"] < link["gen_max"]:
                flags.append(("pcie_link", f"PCIe link gen {link['gen']} of {link['gen_max']} under load"))
        busy = record["host_cpu_busy_other"]
        if busy is not None and busy > HOST_BUSY_CPUS:
            flags.append(("host_busy", f"other processes kept {busy:.2f} CPUs busy during the timed "
                                       f"sections (more than {HOST_BUSY_CPUS})"))
        return [{"kind": kind, "text": text} for kind, text in flags]


def _keep(table: dict, pid: int, used, name) -> None:
    """The most GPU memory a process was seen using (and its name: None where not visible)."""
    old = table.get(pid)
    if old is None:
        table[pid] = {"name": name, "used_memory_bytes": used}
    elif used is not None and (old["used_memory_bytes"] is None or used > old["used_memory_bytes"]):
        old["used_memory_bytes"] = used


# ---------------------------------------------------------------- for the runner

def for_run(device: str, device_memory=None, foreign: bool = False, environ=None, nvml_lib=None,
            host=None):
    """The telemetry of one task run (Off where BENCH_TELEMETRY=0 or psutil is missing).
    TelemetryError for a bad BENCH_TELEMETRY* value (the runner checks settings() first)."""
    enabled, interval = settings(environ)
    if not enabled:
        return Off()
    if host is None:
        try:
            host = Host()
        except ImportError as exc:
            return Off(f"psutil is not importable ({exc}): pip install psutil")
    gpu, why = None, None
    if device == "gpu":
        try:
            gpu = nvml.open_device(lib=nvml_lib, environ=environ)
        except nvml.NvmlUnavailable as exc:
            why = str(exc)
    return Telemetry(device, host=host, gpu=gpu, gpu_unavailable=why, device_memory=device_memory,
                     interval_s=interval, foreign=foreign)
