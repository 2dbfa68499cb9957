"""The ceiling probes: what this machine's GEMM, memory and host links reach, beside the
datasheet peaks and the floors a healthy machine of its model stays above (bench/hardware.py).

One registry (PROBES: name -> module). Each module lists its cases for a device (`cases`) and
measures one case on a backend (`measure`, bench/probes/arrays.py): a warm-up, then the best of
several repeats, which is what is compared with the floor (as DCGM does: noise only ever makes a
repeat slower, so it cannot fail a healthy machine). run_probes assembles the doc, validated
against bench/schema/probe-v1.schema.json.
"""
from __future__ import annotations

import importlib
import json
import math
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from bench import envinfo, results

from . import arrays, gemm, host_copy, memory_bandwidth

PROBES = {"gemm": gemm, "memory_bandwidth": memory_bandwidth, "host_copy": host_copy}
FORMAT = results.PROBE_FORMAT
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / "probe-v1.schema.json"
PRECISIONS = gemm.PRECISIONS
DEVICES = ("cpu", "gpu")
STATUSES = ("ok", "below floor", "skipped", "failed")
REPEATS, QUICK_REPEATS = 5, 3
# A repeat lasts at least this long, so the timer's resolution and launch costs vanish.
MIN_REPEAT_S, QUICK_MIN_REPEAT_S = 0.2, 0.01
SIZE_KEYS = ("gemm_n", "triad_elements", "copy_bytes")
# The names of run precisions (bench/precisions.py), each with the probe's name for its GEMM.
RUN_NAMES = {"amp-fp16": "fp16", "amp-bf16": "bf16", "float32": "fp32", "float16": "fp16",
             "bfloat16": "bf16"}
LABELS = {"memory_bandwidth": "memory bandwidth (triad)", "host_to_device": "host to device (pinned)",
          "device_to_host": "device to host (pinned)"}


class UnknownProbePrecision(ValueError):
    def __str__(self) -> str:
        name = self.args[0]
        hint = f" (the probe's name for {name!r} is {RUN_NAMES[name]!r})" if name in RUN_NAMES else ""
        return f"unknown precision {name!r}{hint}; use one or more of {', '.join(PRECISIONS)}"


class ProbeDocError(ValueError):
    """A document is not a valid probe doc; the message says what is wrong."""


def parse_precisions(text) -> list:
    """"fp32,bf16" (or a list) -> ["fp32", "bf16"]; UnknownProbePrecision naming a bad one."""
    names = [x.strip() for x in (text.split(",") if isinstance(text, str) else text) if x.strip()]
    if not names:
        raise ValueError("expected one or more of " + ", ".join(PRECISIONS))
    for name in names:
        if name not in PRECISIONS:
            raise UnknownProbePrecision(name)
    return list(dict.fromkeys(names))


@dataclass
class Settings:
    precisions: tuple | None = None
    quick: bool = False
    repeats: int = REPEATS
    min_repeat_s: float = MIN_REPEAT_S
    sizes: dict = field(default_factory=dict)


# ---------------------------------------------------------------- the reference figures

def _hardware():
    """bench/hardware.py (the reference table), or None where it cannot be imported."""
    try:
        return importlib.import_module("bench.hardware")
    except ImportError:
        return None


def _source_text(source) -> str:
    """A source as the reference table gives it: a string, or a list of source keys."""
    if isinstance(source, (list, tuple)):
        return ", ".join(str(s) for s in source) or "bench/reference"
    return str(source or "bench/reference")


def _positive(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


class References:
    """Peaks and floors for one device, from bench/hardware.py."""

    def __init__(self, device: str, identity: dict):
        self.device = device
        self.name = identity.get("device_name")
        hw = _hardware()
        self.missing = None if hw is not None else "bench/hardware.py cannot be imported: no reference figures"
        pci = identity.get("pci_device_id")
        self.floors = dict(hw.floors(device, self.name, pci) or {}) if hw else {}
        self.peaks = dict(hw.peaks(device, self.name, pci) or {}) if hw else {}
        self.cpu_peak = hw.cpu_peak() if hw and device == "cpu" else None

    def _who(self) -> str:
        return "this CPU" if self.device == "cpu" else (self.name or "this GPU")

    def peak(self, key: str, precision: str | None, unit: str) -> tuple:
        """(peak or None, where it comes from, or why there is none)."""
        row = self.peaks.get(key) or {}
        value = _positive(row.get("value"))
        if value is not None and row.get("unit", unit) == unit:
            return value, _source_text(row.get("source"))
        if self.device == "cpu" and precision and self.cpu_peak:
            row = self.cpu_peak.get(precision) or {}
            value = _positive(row.get("flops_per_s"))
            if value is not None:
                return value, str(row.get("how") or "bench.hardware.cpu_peak")
            if row.get("unknown"):
                return None, row["unknown"]
        return None, self.missing or f"no datasheet peak for {self._who()} in bench/reference"

    def floor(self, key: str, unit: str) -> tuple:
        row = self.floors.get(key) or {}
        value = _positive(row.get("floor"))
        if value is not None and row.get("unit", unit) == unit:
            return value, _source_text(row.get("source")) + (f"; {row['rule']}" if row.get("rule") else "")
        return None, self.missing or f"no floor for {self._who()}"


# ---------------------------------------------------------------- judging and printing

def _fraction(value, of) -> float | None:
    return round(value / of, 4) if value is not None and of else None


def judge(entry: dict, refs: References) -> dict:
    """Adds peak and floor, their fractions, and "below floor" to a measured entry."""
    peak, peak_source = refs.peak(entry["key"], entry["precision"], entry["unit"])
    floor, floor_source = refs.floor(entry["key"], entry["unit"])
    value = entry["value"]
    entry.update(peak=peak, peak_source=peak_source, floor=floor, floor_source=floor_source,
                 fraction_of_peak=_fraction(value, peak), fraction_of_floor=_fraction(value, floor))
    if entry["status"] == "ok" and floor is not None and value < floor:
        entry["status"] = "below floor"
    return entry


def human(value: float, unit: str) -> str:
    """98.1 GFLOP/s, 21.3 GB/s (decimal prefixes, as STREAM and datasheets count)."""
    base = "FLOP/s" if unit == "flops_per_s" else "B/s"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f} {prefix}{base}"
    return f"{value:.1f} {base}"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.0f} %"


def label(entry: dict) -> str:
    if entry["name"] == "gemm":
        return f"gemm {entry['precision']}"
    return LABELS.get(entry["name"], entry["name"])


def line(entry: dict) -> str:
    """The human-readable line of one probe."""
    if entry["status"] == "skipped":
        return f"{label(entry)}: skipped ({entry['reason']})"
    if entry["status"] == "failed":
        return f"{label(entry)}: FAILED ({entry['reason']})"
    unit = entry["unit"]
    peak = (f"peak {human(entry['peak'], unit)}: {_pct(entry['fraction_of_peak'])}"
            if entry["peak"] else "no peak known" + (f": {entry['peak_source'].split(':')[0]}" if entry.get("peak_source") else ""))
    if entry["floor"]:
        verdict = "BELOW FLOOR" if entry["status"] == "below floor" else "ok"
        floor = f"floor {human(entry['floor'], unit)}: {_pct(entry['fraction_of_floor'])} {verdict}"
    else:
        floor = entry["floor_source"]
    return f"{label(entry)}: {human(entry['value'], unit)} best of {len(entry['repeats'])} ({peak}; {floor})"


def finding(entry: dict) -> str | None:
    if entry["status"] == "below floor":
        return (f"{label(entry)} at {_pct(entry['fraction_of_floor'])} of the floor for this model "
                f"({human(entry['value'], entry['unit'])} of {human(entry['floor'], entry['unit'])}; "
                f"floor: {entry['floor_source']})")
    if entry["status"] == "failed":
        return f"{label(entry)} failed: {entry['reason']}"
    if entry["fraction_of_peak"] is not None and entry["fraction_of_peak"] > 1:
        # Impossible if both are right: no noise makes a machine faster than its peak.
        return (f"{label(entry)} at {_pct(entry['fraction_of_peak'])} of the stated peak: the peak "
                "figure is too low (a clock below the boost clock?) or the probe counts work it did not do")
    return None


def _pcie(backend: arrays.Backend, under_load: bool, refs: References) -> tuple:
    """(pcie record or None, findings, whether a PCIe floor was judged, whether one is broken).
    The current gen is judged only right after the host copies: an idle GPU lowers its link
    speed to save power. A figure NVML does not give is null and judges nothing."""
    link = backend.pcie_link()
    if not isinstance(link, dict):
        return None, [], False, False
    record = {k: link.get(k) if isinstance(link.get(k), int) and not isinstance(link.get(k), bool)
              and link.get(k) >= 0 else None for k in ("gen", "gen_max", "width", "width_max")}
    if all(v is None for v in record.values()):
        return None, [], False, False
    record["under_load"] = under_load
    findings, judged, broken = [], False, False
    for what, floor_key, seen in (("width", "pcie_width", True), ("gen", "pcie_gen", under_load)):
        now, top = record[what], record[f"{what}_max"]
        floor = _positive((refs.floors.get(floor_key) or {}).get("floor"))
        if now is None or not seen:
            continue
        below_max = top is not None and now < top
        below_floor = floor is not None and now < floor
        judged = judged or floor is not None
        if not (below_max or below_floor):
            continue
        of = f" of {'x' if what == 'width' else ''}{top}" if top is not None else ""
        text = (f"PCIe link x{now}{of}" if what == "width"
                else f"PCIe gen {now}{of} right after the host copies")
        if below_floor:
            broken = True
            text += f", below the floor {'x' if what == 'width' else 'gen '}{floor:g} for this model"
        findings.append(text)
    return record, findings, judged, broken


def _pcie_line(record: dict) -> str:
    def known(value):
        return "?" if value is None else value

    when = "right after the host copies" if record["under_load"] else "at idle: the gen is not judged"
    return (f"pcie: gen {known(record['gen'])} of {known(record['gen_max'])}, x{known(record['width'])} of "
            f"x{known(record['width_max'])} ({when})")


def verdict(doc: dict) -> str:
    if doc["healthy"] is True:
        return "healthy: every probe with a floor is at or above it"
    if doc["healthy"] is False:
        return "NOT healthy: " + "; ".join(doc["findings"])
    failed = [finding(e) for e in doc["probes"] if e["status"] == "failed"]
    if failed:
        return "not judged: " + "; ".join(failed)
    return f"not judged: no floors known for {doc['device_name'] or doc['device']}"


# ---------------------------------------------------------------- running

def _settings(precisions, quick: bool, sizes, repeats) -> Settings:
    sizes = dict(sizes or {})
    for key, value in sizes.items():
        if key not in SIZE_KEYS:
            raise ValueError(f"unknown size {key!r}; use {', '.join(SIZE_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"size {key} must be a whole number of at least 1, got {value!r}")
    if repeats is not None and (isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1):
        raise ValueError(f"repeats must be a whole number of at least 1, got {repeats!r}")
    return Settings(
        precisions=tuple(parse_precisions(precisions)) if precisions is not None else None,
        quick=bool(quick),
        repeats=repeats or (QUICK_REPEATS if quick else REPEATS),
        min_repeat_s=QUICK_MIN_REPEAT_S if quick else MIN_REPEAT_S,
        sizes=sizes)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not isinstance(exc, (arrays.Unsupported, arrays.ProbeFailed)):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:500]


def _run_case(module, backend: arrays.Backend, case: dict, settings: Settings, log) -> dict:
    entry = dict(case, status="ok", value=None, repeats=[], size=None, method=None, reason=None)
    try:
        measured = module.measure(backend, case, settings)
    except arrays.Unsupported as exc:
        entry.update(status="skipped", reason=_reason(exc))
    except Exception as exc:  # an OOM or a device error fails this probe, not the others
        entry.update(status="failed", reason=_reason(exc))
    else:
        rates = measured["repeats"]
        entry.update(value=max(rates), repeats=rates, size=measured["size"], method=measured["method"])
    finally:
        try:
            backend.release()
        except Exception as exc:
            log(f"warning: cleaning up after {label(entry)}: {_reason(exc)}")
    return entry


def run_probes(device: str, precisions: list | None = None, quick: bool = False, log=print, *,
               backend: arrays.Backend | None = None, sizes: dict | None = None,
               repeats: int | None = None) -> dict:
    """Run every probe that applies to device and return the doc (validated). Raises
    arrays.NoDevice (no such device), arrays.NoLibrary (no array library for it) and
    ValueError (a bad precision, size or repeat count). sizes overrides gemm_n, triad_elements
    and copy_bytes (tests); quick shrinks everything (a check of the code, not of the ceiling)."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: use cpu or gpu")
    settings = _settings(precisions, quick, sizes, repeats)
    backend = backend or arrays.open_backend(device)
    if backend.device != device:
        raise ValueError(f"a {backend.device} backend cannot probe the {device}")
    started = results.now_iso()
    identity = backend.identity()
    refs = References(device, identity)
    probes, findings, copied = [], [], False
    for module in PROBES.values():
        for case in module.cases(device, settings):
            entry = judge(_run_case(module, backend, case, settings, log), refs)
            copied = copied or (module is host_copy and entry["status"] in ("ok", "below floor"))
            log(line(entry))
            probes.append(entry)
            if finding(entry):
                findings.append(finding(entry))
    pcie, pcie_judged, pcie_broken = None, False, False
    if device == "gpu":
        pcie, pcie_findings, pcie_judged, pcie_broken = _pcie(backend, copied, refs)
        findings.extend(pcie_findings)
        log(_pcie_line(pcie) if pcie else "pcie: no NVML link figures (nvidia-ml-py or bench/nvml.py missing)")
    if pcie_broken or any(e["status"] == "below floor" for e in probes):
        healthy = False
    elif any(e["status"] == "failed" for e in probes):
        healthy = None  # a probe that did not run shows nothing, good or bad
    elif pcie_judged or any(e["floor"] is not None for e in probes if e["status"] == "ok"):
        healthy = True
    else:
        healthy = None
    doc = {
        "format": FORMAT,
        "device": device,
        "device_name": identity.get("device_name"),
        "pci_device_id": identity.get("pci_device_id"),
        "host": socket.gethostname(),
        "quick": settings.quick,
        "started_at": started,
        "finished_at": results.now_iso(),
        "git_commit": envinfo.git_commit(),
        "env": envinfo.capture(),
        "library": backend.library(),
        "cpu_peak": refs.cpu_peak,
        "probes": probes,
        "pcie": pcie,
        "findings": findings,
        "healthy": healthy,
    }
    validate(doc)
    for text in findings:
        log(f"finding: {text}")
    log(verdict(doc))
    return doc


# ---------------------------------------------------------------- the doc's schema

@lru_cache(maxsize=1)
def _validator():
    return results.schema_validator(json.loads(SCHEMA_PATH.read_text()))


def validation_errors(doc) -> list:
    """Every way doc breaks the probe schema, as 'path: message' lines (empty if valid)."""
    bad = [f"{p}: not a finite number (NaN and infinities are never results)"
           for p in results.non_finite_paths(doc)]
    if bad:
        return bad
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    found = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]
    if not found:  # what the schema cannot say: the best repeat is the value
        for i, entry in enumerate(doc["probes"]):
            if entry["repeats"] and entry["value"] != max(entry["repeats"]):
                found.append(f"probes/{i}/value: {entry['value']} is not the best repeat")
    return found


def validate(doc) -> None:
    errors = validation_errors(doc)
    if errors:
        raise ProbeDocError("probe doc does not match the schema: " + "; ".join(errors[:5]))
