"""The mode axis (docs/tasks.md, "Modes"): the reference translation, or each framework tuned.

This module imports no framework. `reference` is the faithful translation every framework file
has always run; `tuned` adds the fast paths the framework's own documentation recommends for these
models and this device (channels_last, torch.compile, XLA, ...). The model, the data, the
hyperparameters and what is timed are the task contract in both. A framework file receives the
mode in init_device(device, precision, mode) and reports what it switched on through
conventions(task, dev)["mode"], built with state(): the harness checks that report against the
mode asked for (check_state) before any figure is kept, as it does for the precision.
"""
from __future__ import annotations

MODES = ("reference", "tuned")
DEFAULT = "reference"

DESCRIPTIONS = {
    "reference": "the faithful translation: the same code shape in every framework",
    "tuned": "the fast paths each framework's documentation recommends for these models and this device",
}


class UnknownMode(ValueError):
    def __str__(self) -> str:
        return f"unknown mode {self.args[0]!r}; use one of {', '.join(MODES)}"


def check_name(name: str) -> str:
    if name not in MODES:
        raise UnknownMode(name)
    return name


def parse_list(text: str) -> list:
    """"reference,tuned" -> ["reference", "tuned"]; ValueError (UnknownMode) naming a bad one."""
    names = [x.strip() for x in str(text).split(",") if x.strip()]
    if not names:
        raise ValueError("expected one or more of " + ", ".join(MODES))
    return [check_name(name) for name in dict.fromkeys(names)]


def of(record: dict) -> str:
    """A result's mode; results written before the mode axis ran the reference code."""
    return record.get("mode") or DEFAULT


def state(mode: str, switches=(), not_applied=None) -> dict:
    """What a framework file reports under conventions["mode"]: the mode, each switch it turned
    on beyond the reference (in words, with the API named), and each documented switch it left
    off on this device with the reason (a GPU-only switch on a CPU, a switch measured slower)."""
    check_name(mode)
    switches = [str(s) for s in switches]
    not_applied = {str(k): str(v) for k, v in (not_applied or {}).items()}
    if mode == "reference" and switches:
        raise ValueError(f"the reference mode turns on no switch beyond the reference; got {switches}")
    return {"mode": mode, "switches": switches, "not_applied": not_applied}


def check_state(mode: str, reported) -> list:
    """What is wrong with a framework's report against the mode asked for; [] when it agrees."""
    if not isinstance(reported, dict) or "mode" not in reported:
        return [f"no conventions['mode'] report (asked for {mode})"]
    problems = []
    if reported.get("mode") != mode:
        problems.append(f"it ran mode {reported.get('mode')!r}, asked for {mode!r}")
    if mode == "reference" and reported.get("switches"):
        problems.append(f"the reference mode reports switches {reported['switches']}")
    if mode == "tuned" and not reported.get("switches") and not reported.get("not_applied"):
        problems.append("the tuned mode names no switch, turned on or left off with a reason")
    return problems
