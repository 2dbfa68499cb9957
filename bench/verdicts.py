"""Why a figure failed: the machine's health from the ceiling probes, the run's telemetry flags,
and the verdict over the processes that measured it. Pure functions: `bench validate` feeds them
what it measured, the tests feed them made-up probes and records.

A figure is measured in one process and, when slower than its band, in CONFIRM_RUNS more:
  - slow in every process: FAIL, with one attribution line (the hardware or the software);
  - slow in most but not all: INCONCLUSIVE (the machine is too noisy to tell; the line says how
    noisy: each process's ratio and their spread);
  - slow in a minority: PASS (not reproduced): noise only ever adds time, so one process inside
    the band shows what the machine can do.
"""
from __future__ import annotations

PASS, FAIL, INCONCLUSIVE, NO_BAND = "PASS", "FAIL", "INCONCLUSIVE", "NO BAND"
HARDWARE, SOFTWARE, UNJUDGED = "hardware", "software", "unjudged"
# DCGM sets its per-SKU diagnostic targets at 75 % of measured ceilings; a probe figure of a
# machine the baseline was made on is such a ceiling.
BASELINE_FLOOR_FRACTION = 0.75
# The order in which telemetry flags explain a slow run: a foreign process or throttling slows
# every kernel; a narrow link or ECC errors slow some; a busy host slows a CPU run.
FLAG_ORDER = ("foreign_process", "throttle", "pcie_link", "ecc", "host_busy")


def outcome(slow: list) -> str:
    """PASS, FAIL or INCONCLUSIVE from whether each process measured the figure slow."""
    count = sum(1 for s in slow if s)
    if count == 0:
        return PASS
    if count == len(slow):
        return FAIL
    return INCONCLUSIVE if 2 * count > len(slow) else PASS


def noise_text(ratios: list) -> str:
    """'1.45x, 1.40x, 0.98x: a 48 % spread between processes'."""
    shown = ", ".join(f"{r:.2f}x" for r in ratios)
    if len(ratios) < 2 or min(ratios) <= 0:
        return shown
    return f"{shown}: a {100 * (max(ratios) / min(ratios) - 1):.0f} % spread between processes"


def _label(entry: dict) -> str:
    """'GEMM bf16', 'memory bandwidth', 'host-to-device copy'."""
    name = entry.get("name") or entry.get("key") or "probe"
    words = {"gemm": "GEMM", "memory_bandwidth": "memory bandwidth",
             "host_to_device": "host-to-device copy", "device_to_host": "device-to-host copy"}
    text = words.get(name, name.replace("_", " "))
    return f"{text} {entry['precision']}" if entry.get("precision") else text


def _work(size) -> dict:
    """A probe's size without how many calls a repeat made (that is timing, not the work)."""
    return {k: v for k, v in (size or {}).items() if k != "calls_per_repeat"} if isinstance(size, dict) else size


def _baseline_figure(entry: dict, baseline_probes: list, device_name: str | None):
    """The baseline machine's figure for the same probe, key and size, and where it came from."""
    for doc in baseline_probes or []:
        if device_name is not None and doc.get("device_name") != device_name:
            continue
        for theirs in doc.get("probes") or []:
            if (theirs.get("key") == entry.get("key") and _work(theirs.get("size")) == _work(entry.get("size"))
                    and isinstance(theirs.get("value"), (int, float)) and theirs["value"] > 0):
                return theirs["value"], f"{doc.get('host') or 'the baseline host'}, {doc.get('started_at') or 'undated'}"
    return None, None


def machine_health(probe: dict | None, baseline_probes: list | None = None, why_not: str | None = None) -> dict:
    """The machine against its floors: each probe figure against the reference table's floor for
    this model, else against 75 % of what the baseline machine's probe measured.
    {"healthy": True/False/None, "findings": [...], "checks": [...], "line": str}; None where
    nothing could be judged (no probe, or no floor and no baseline probe)."""
    if probe is None:
        reason = why_not or "no probe ran"
        return {"healthy": None, "findings": [], "checks": [], "line": f"probe: not judged ({reason})"}
    findings, checks = [], []
    device_name = probe.get("device_name")
    for entry in probe.get("probes") or []:
        value = entry.get("value")
        if entry.get("status") not in ("ok", "below floor") or not isinstance(value, (int, float)):
            continue
        floor, source = entry.get("floor"), entry.get("floor_source")
        if not isinstance(floor, (int, float)) or floor <= 0:
            theirs, where = _baseline_figure(entry, baseline_probes, device_name)
            if theirs is None:
                continue
            floor = BASELINE_FLOOR_FRACTION * theirs
            source = f"75 % of the baseline machine's probe ({where})"
        fraction = value / floor
        checks.append({"key": entry.get("key"), "label": _label(entry), "value": value, "floor": floor,
                       "source": source, "fraction_of_floor": fraction})
        if fraction < 1:
            findings.append(f"{_label(entry)} at {100 * fraction:.0f} % of the floor for this model")
    pcie = probe.get("pcie") or {}
    if pcie.get("width") and pcie.get("width_max") and pcie["width"] < pcie["width_max"]:
        findings.append(f"PCIe link x{pcie['width']} of x{pcie['width_max']}")
    for text in probe.get("findings") or []:  # what the probe itself found (PCIe, failed probes)
        if text not in findings and not any(text.startswith(c["label"]) for c in checks):
            findings.append(text)
    healthy = False if findings else (True if checks else None)
    if healthy is None:
        line = "probe: not judged (no floor for this device in the reference table and no probe in the baseline)"
    else:
        shown = ", ".join(f"{c['label']} {100 * c['fraction_of_floor']:.0f} %" for c in checks)
        by_baseline = all(c["source"].startswith("75 % of the baseline") for c in checks)
        floor = "of the floor (75 % of the baseline machine's probe)" if by_baseline else "of the floor for this model"
        line = (f"probe: {'healthy' if healthy else 'BELOW ITS FLOOR'}"
                + (f" ({shown} {floor})" if shown else "")
                + ("" if healthy else ": " + "; ".join(findings)))
    return {"healthy": healthy, "findings": findings, "checks": checks, "line": line}


def flags_of(records: list) -> list:
    """Telemetry flags of the records, in FLAG_ORDER, each text once."""
    flags, seen = [], set()
    for record in records:
        for flag in ((record or {}).get("telemetry") or {}).get("flags") or []:
            if isinstance(flag, dict) and flag.get("text") and flag["text"] not in seen:
                seen.add(flag["text"])
                flags.append(flag)
    rank = {kind: i for i, kind in enumerate(FLAG_ORDER)}
    return sorted(flags, key=lambda f: rank.get(f.get("kind"), len(FLAG_ORDER)))


def attribute(records: list, health: dict, device: str) -> tuple:
    """(kind, line) for a FAIL: HARDWARE (the machine: below its floor, throttled, shared, a
    narrow link, ECC errors, a busy host), SOFTWARE (the hardware reached its floors: the
    framework or CUDA stack is slower), or UNJUDGED (nothing to judge the hardware by)."""
    unit = "GPU" if device == "gpu" else "CPU"
    if health.get("healthy") is False:
        more = f" (and {len(health['findings']) - 1} more)" if len(health["findings"]) > 1 else ""
        return HARDWARE, f"{unit} below its floor: {health['findings'][0]}{more}"
    flags = flags_of(records)
    if flags:
        more = f" (and {len(flags) - 1} more)" if len(flags) > 1 else ""
        return HARDWARE, flags[0]["text"] + more
    stack = "the CUDA stack is" if device == "gpu" else "its libraries are"
    if health.get("healthy"):
        return SOFTWARE, (f"hardware at its ceiling: the {unit} reached its floors, so the framework "
                          f"or {stack} slower than the baseline")
    return UNJUDGED, f"hardware not judged ({health.get('line', 'no probe')}): a regression of the machine or the software"
