"""After an install: `bench baseline` turns good results into expected bands, and
`bench validate` runs here and compares each figure with the band for this device.

Compared figure: training tasks' total training time, ResNet-50's seconds per 1,000
images (both: lower is better), taken as the best of a run's repeats. On a shared host
noise only ever adds time, and it comes in modes (a whole process, or single repeats, run
30-50 % slow on these 2-core VMs), so the best repeat is the stable estimate of what the
machine can do; the median of repeats flips between modes from one process to the next.
A figure slower than the band is measured again in up to two fresh processes, and is a
regression (FAIL) only if it is slow every time; a faster one passes and says so.

Bands are kept per mode as per precision (bench/modes.py): a tuned run is judged only against a
tuned band, never against the reference's; a band of a baseline made before the mode axis (no
"mode") is a reference band, as a result without one is a reference run.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from . import cli, envinfo, modes, precisions, results, tasks
from . import verdicts as verdicts_mod

BASELINE_FORMAT = "bench-baseline-2"  # 1: bands of all repeats' median; refused
DEFAULT_FLOOR = 0.15  # for steady devices (GPUs); shared CPU VMs need more (make-cpu-baseline: 0.35)
SPREAD_FACTOR = 3.0
# Never wider than this, however noisy the baseline runs were: a band must still catch a
# machine running at half speed (a 2x regression).
MAX_SPREAD_TOLERANCE = 0.6
CONFIRM_RUNS = 2  # fresh processes a slow figure gets before it is a FAIL
# Exit codes, one per kind of outcome (README "Validating a machine"):
EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_NO_BAND, EXIT_INCONCLUSIVE, EXIT_HARDWARE = 0, 1, 2, 4, 5, 6
BASELINE_SCHEMA_PATH = Path(__file__).parent / "schema" / "baseline-v2.schema.json"
MAX_BASELINE_BYTES = 16 << 20  # thousands of bands; anything larger is not a baseline
MAX_REPEATS = 1000


class BaselineError(ValueError):
    """A baseline file that cannot be used; the message names the file (and the band)."""


def figure(record: dict) -> float:
    return record["seconds_per_1000"] if record["task"] == "resnet50" else record["time_total_s"]


def samples(record: dict) -> list:
    """Every repeat's value of the compared figure."""
    reps = record.get("repeats") or []
    if record["task"] == "resnet50" or not reps:
        if record["task"] == "resnet50" and reps:
            images = record["samples"]["images"]
            return [1000.0 * r["time_total_s"] / images for r in reps]
        return [figure(record)]
    return [r["time_total_s"] for r in reps]


def best(record: dict) -> float:
    """The compared figure of one run: its best repeat."""
    return min(samples(record))


def band_key(record: dict) -> dict:
    # The variant is named as everywhere else (results.variant_of): a sweep cell outside any
    # image and a plain `bench run` are both "venv", so a baseline made from a local sweep
    # finds the band for `bench validate` on the same machine.
    return {
        "device_name": record.get("device_name") or record["device"],
        "framework": record["framework"],
        "variant": results.variant_of(record),
        "task": record["task"],
        "precision": record["precision"],
        "mode": modes.of(record),
        "quick": bool(record.get("quick")),
        "data": record["data"],
    }


def band_mode(band: dict) -> str:
    """A band's mode: bands of baselines made before the mode axis are the reference's."""
    return band.get("mode") or modes.DEFAULT


def _key_tuple(key: dict) -> tuple:
    return (key["device_name"], key["framework"], key["variant"], key["task"], key["precision"],
            band_mode(key), key["quick"], key["data"])


def make_bands(records: list[dict], floor: float = DEFAULT_FLOOR, warn=None) -> list[dict]:
    """One band per figure: the median over runs of each run's best repeat, and a tolerance
    from the spread between runs (process-to-process variation is what validate meets).
    A run whose figure is not a positive finite number is left out (warn names it)."""
    groups: dict = {}
    for r in records:
        if r["status"] == "ok":
            key = band_key(r)
            run = samples(r)
            if not run or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in run):
                if warn:
                    warn(f"warning: left out {r['framework']} {r['task']} (started {r.get('started_at')}): "
                         f"its figures {run} are not all positive finite numbers")
                continue
            _, bests, repeats = groups.setdefault(_key_tuple(key), (key, [], []))
            bests.append(min(run))
            repeats.append(len(run))
    bands = []
    for _, (key, values, repeats) in sorted(groups.items()):
        median = statistics.median(values)
        mad = statistics.median(abs(v - median) for v in values)
        # A robust spread (scaled MAD): one stalled run of a shared host must not widen the band.
        spread = min(MAX_SPREAD_TOLERANCE, SPREAD_FACTOR * 1.4826 * mad / median)
        tolerance = max(floor, spread)
        bands.append(dict(key, metric="seconds_per_1000" if key["task"] == "resnet50" else "time_total_s",
                          statistic="median over runs of the best repeat",
                          median=median, tolerance=tolerance, high=median * (1 + tolerance),
                          low=median * (1 - tolerance), n=len(values), repeats_per_run=min(repeats)))
    return bands


def find_band(bands: list[dict], record: dict) -> dict | None:
    want = _key_tuple(band_key(record))
    return next((b for b in bands if _key_tuple(b) == want), None)


@lru_cache(maxsize=1)
def _baseline_validator():
    return results.schema_validator(json.loads(BASELINE_SCHEMA_PATH.read_text(encoding="utf-8")))


class _NonFinite(str):
    """NaN, Infinity or -Infinity as written in a file: parse_constant turns each into this (never
    a float), so the check below refuses it and names the band it sits in."""


def _non_finite_paths(node, path=()) -> list:
    if isinstance(node, _NonFinite) or (isinstance(node, float) and not math.isfinite(node)):
        return [list(path)]  # a float here: a literal too large for one (1e999)
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _non_finite_paths(v, path + (k,))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _non_finite_paths(v, path + (i,))]
    return []


def _band_name(doc: dict, index) -> str:
    bands = doc.get("bands")
    band = bands[index] if isinstance(bands, list) and isinstance(index, int) and index < len(bands) else None
    if isinstance(band, dict):
        return f"band {index} ({band.get('framework', '?')}/{band.get('task', '?')})"
    return f"band {index}"


def _where(doc: dict, path: list) -> str:
    """'band 3 (pytorch/cnn): median' for a path into the document."""
    if len(path) >= 2 and path[0] == "bands":
        rest = "/".join(map(str, path[2:]))
        return _band_name(doc, path[1]) + (f": {rest}" if rest else "")
    return "/".join(map(str, path)) or "(top)"


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def baseline_errors(doc: dict) -> list:
    """Every way a decoded baseline is unusable, as 'band 3 (pytorch/cnn): median: ...' lines."""
    bad = [f"{_where(doc, p)}: not a finite number (NaN and infinities are never bands)"
           for p in _non_finite_paths(doc)]
    if bad:
        return bad
    errors = sorted(_baseline_validator().iter_errors(doc), key=lambda e: [str(x) for x in e.absolute_path])
    found = [f"{_where(doc, list(e.absolute_path))}: {_short(e.message)}" for e in errors]
    if found:
        return found
    for i, band in enumerate(doc["bands"]):  # what a schema cannot say: the band is in order
        if not band["low"] <= band["median"] <= band["high"]:
            found.append(f"{_band_name(doc, i)}: low {band['low']}, median {band['median']} and high "
                         f"{band['high']} are not in order (low <= median <= high)")
    return found


def load_baseline(path: Path) -> dict:
    """A baseline file, validated before anything runs against it. BaselineError (a
    ValueError) names the file, and the band where one is wrong."""
    name = results.printable(path)
    try:
        path = Path(path)
        if not path.is_file():
            raise BaselineError(f"baseline {name} is not a file" if path.exists()
                                else f"baseline {name} does not exist")
        raw = path.read_bytes()
        if len(raw) > MAX_BASELINE_BYTES:
            raise BaselineError(f"baseline {name}: {len(raw):,} bytes, more than any baseline; not read")
        doc = json.loads(raw.decode("utf-8"), parse_constant=_NonFinite)
    except BaselineError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BaselineError(f"baseline {name} is not readable JSON: {exc}") from exc
    if isinstance(doc, dict) and doc.get("format") == "bench-baseline-1":
        raise BaselineError(f"{name} is an older baseline (format bench-baseline-1: bands of the median "
                            "repeat, not of the best); remake it from the same results with "
                            "`python -m bench baseline DIR -o FILE`")
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT:
        raise BaselineError(f"{name} is not a baseline file (format {BASELINE_FORMAT!r}); "
                            "make one with `python -m bench baseline DIR -o FILE`")
    try:
        errors = baseline_errors(doc)
    except RecursionError as exc:
        raise BaselineError(f"baseline {name}: nested too deeply to be a baseline") from exc
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise BaselineError(f"baseline {name} is not valid (bench/schema/baseline-v2.schema.json): "
                            + "; ".join(errors[:5]) + more)
    return doc


# ---------------------------------------------------------------- commands

def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _os_message(exc: OSError) -> str:
    return exc.strerror if isinstance(exc, results.OutputError) and exc.strerror else str(exc)


def cmd_baseline(args) -> int:
    # The output is checked before the results are read, and the write's own failure (a full
    # disk) is reported the same way: a message naming the file, exit 2, never a traceback.
    problem = results.output_problem(args.output)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        records = results.load_results(args.dirs, _warn)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bands = make_bands(records, args.floor, warn=_warn)
    probes = [probe_summary(doc) for doc in results.load_probes(args.dirs, _warn)]
    if not bands:
        print(f"error: no ok results in {', '.join(map(results.printable, args.dirs))} to make a baseline from",
              file=sys.stderr)
        return EXIT_USAGE
    doc = {
        "format": BASELINE_FORMAT,
        "created_at": results.now_iso(),
        "command": " ".join(["python -m bench baseline", *map(results.printable, args.dirs),
                             "-o", results.printable(args.output)]),
        "floor": args.floor,
        "host": envinfo.capture()["hostname"],
        "git_commit": envinfo.git_commit(),
        "note": args.note,
        "bands": bands,
    }
    if probes:  # what the probes measured on this machine: validate's floors where the reference has none
        doc["probes"] = probes
    errors = baseline_errors(doc)
    if errors:  # never write a baseline that validate would refuse
        print(f"error: the baseline made from {', '.join(map(results.printable, args.dirs))} is not valid: "
              + "; ".join(errors[:5]), file=sys.stderr)
        return EXIT_USAGE
    try:
        results.write_atomic(args.output, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    except OSError as exc:  # results.OutputError names the file and the reason
        print(f"error: {_os_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {results.printable(args.output)}: {len(bands)} bands from {len(records)} results"
          + (f" and {len(probes)} probe runs" if probes else " (no probe run in the folders: validate "
             "cannot judge this machine's hardware by the baseline's; `python -m bench probe --out DIR` adds one)"))
    for b in bands:
        print(f"  {b['framework']:<18} {b['task']:<9} {b['precision']:<8} {b['mode']:<9} {b['device_name']} "
              f"{'quick' if b['quick'] else 'full'} "
              f"{b['data']}: {b['median']:.3f} +{100 * b['tolerance']:.0f}% "
              f"({b['n']} runs x best of {b['repeats_per_run']})")
    return EXIT_PASS


def probe_summary(doc: dict) -> dict:
    """What a baseline keeps of a probe run: the machine and each figure measured."""
    keep = ("name", "key", "precision", "unit", "size", "value")
    return {"device_name": doc["device_name"], "host": doc.get("host"), "started_at": doc.get("started_at"),
            "probes": [{k: p.get(k) for k in keep} for p in doc.get("probes") or []
                       if p.get("status") in ("ok", "below floor") and p.get("value")]}


def this_device() -> str:
    return "gpu" if envinfo.nvidia_gpus() else "cpu"


def cmd_validate(args) -> int:
    # Everything that can be refused is refused before the first run: the baseline (every
    # band, against bench/schema/baseline-v2.schema.json) and the results folder.
    try:
        baseline = load_baseline(args.baseline)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.out:
        problem = results.folder_problem(args.out)
        if problem:
            print(f"error: --out: {problem}", file=sys.stderr)
            return EXIT_USAGE
    bands = baseline["bands"]
    device = this_device()
    env = envinfo.capture()
    device_name = env["gpu"] if device == "gpu" else env["cpu"]
    here = [b for b in bands if b["device_name"] == device_name and b["quick"] == args.quick
            and b["data"] == args.data]
    if not here:
        print(f"NO BAND: the baseline {args.baseline} has no band for this device ({device_name}), "
              f"{'quick' if args.quick else 'full'} size, {args.data} data. Make one on a good "
              "machine of this model: `python -m bench baseline DIR -o FILE`.", file=sys.stderr)
        return EXIT_NO_BAND
    if args.precisions:
        here = [b for b in here if b["precision"] in args.precisions]
        if not here:
            print(f"NO BAND: the baseline {args.baseline} has no band for this device ({device_name}) "
                  f"at {', '.join(args.precisions)}", file=sys.stderr)
            return EXIT_NO_BAND
    wanted_modes = getattr(args, "modes", None)
    if wanted_modes:
        here = [b for b in here if band_mode(b) in wanted_modes]
        if not here:
            print(f"NO BAND: the baseline {args.baseline} has no band for this device ({device_name}) "
                  f"in mode {', '.join(wanted_modes)} (a band without a mode is the reference's)", file=sys.stderr)
            return EXIT_NO_BAND
    runs = plan_runs(here, args.frameworks, args.precisions, wanted_modes)
    # Best of as many repeats as the baseline's runs had: best of fewer would be judged harsher.
    repeats = args.repeats or max(b.get("repeats_per_run", 3) for b in here)
    task_list = args.tasks or list(tasks.TASK_NAMES)
    # A fresh folder per run: results of an earlier run in the same --out are never judged again.
    try:
        out = Path(tempfile.mkdtemp(prefix="validate-", dir=args.out) if args.out
                   else tempfile.mkdtemp(prefix="bench-validate-"))
    except OSError as exc:
        print(f"error: cannot make a results folder in {results.printable(args.out or tempfile.gettempdir())}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    health = measure_health(args, baseline, device, out)
    print(f"[validate] {health['line']}", flush=True)
    verdicts = []
    for framework, precision, mode in runs:
        label = run_label(framework, precision, mode)
        cmd = [sys.executable, "-m", "bench", "run", "--framework", framework, "--device", device,
               "--precision", precision, "--mode", mode, "--tasks", ",".join(task_list), "--data", args.data,
               "--repeats", str(repeats), "--out", str(out / label)]
        if args.quick:
            cmd.append("--quick")
        print(f"[validate] {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd)
        if proc.returncode == 2:
            print(f"error: `bench run` refused {framework} (see above)", file=sys.stderr)
            return EXIT_USAGE
        first = judge_folder(out / label, label, task_list, bands)
        # A regression must reproduce: a shared host puts a whole process in a slow mode now
        # and then (seen in 2 of 10 first runs here), so a slow figure gets fresh processes,
        # all of them: the verdict is the majority's (verdicts.outcome).
        measured = {v["task"]: [v] for v in first}
        slow = [v["task"] for v in first if v.get("slow")]
        for attempt in range(1, CONFIRM_RUNS + 1):
            if not slow:
                break
            again = out / f"{label}-confirm{attempt}"
            cmd[cmd.index("--tasks") + 1], cmd[cmd.index("--out") + 1] = ",".join(slow), str(again)
            print(f"[validate] slower than the band: {', '.join(slow)}; measuring again in a fresh "
                  f"process (confirmation {attempt} of {CONFIRM_RUNS})", flush=True)
            subprocess.run(cmd)
            for v in judge_folder(again, label, slow, bands):
                measured[v["task"]].append(v)
        verdicts.extend(conclude(measured[v["task"]], health, device) for v in first)
    print()
    print(f"{'verdict':<12} {'framework':<19} {'task':<9} {'best rep':>10} {'band':>21} {'ratio':>7}")
    for v in verdicts:
        print(v["line"])
        if v.get("why"):
            print(f"{'':<12} why: {v['why']}")
    counts = {kind: sum(1 for v in verdicts if v["verdict"] == kind)
              for kind in (verdicts_mod.PASS, verdicts_mod.FAIL, verdicts_mod.INCONCLUSIVE, verdicts_mod.NO_BAND)}
    print(f"\n{counts['PASS']} passed, {counts['FAIL']} failed, {counts['INCONCLUSIVE']} inconclusive, "
          f"{counts['NO BAND']} without a band; {health['line']}; results in {out}")
    return exit_code(verdicts)


def exit_code(verdicts: list) -> int:
    """One code per kind of outcome, the most serious first: a FAIL of the hardware (6), a FAIL
    not explained by the hardware (1), INCONCLUSIVE (5), figures without a band (4), PASS (0)."""
    kinds = {v["verdict"] for v in verdicts}
    if any(v["verdict"] == verdicts_mod.FAIL and v.get("kind") == verdicts_mod.HARDWARE for v in verdicts):
        return EXIT_HARDWARE
    if verdicts_mod.FAIL in kinds:
        return EXIT_FAIL
    if verdicts_mod.INCONCLUSIVE in kinds:
        return EXIT_INCONCLUSIVE
    if verdicts_mod.NO_BAND in kinds:
        return EXIT_NO_BAND
    return EXIT_PASS


def line_of(verdict: dict, suffix: str = "") -> str:
    return f"{verdict['verdict']:<12} {verdict['body']}{suffix}"


def conclude(measured: list, health: dict, device: str) -> dict:
    """The verdict of one figure from every process that measured it (the first, then the
    confirmations), with the attribution line (why) of a FAIL and kind HARDWARE, SOFTWARE or
    UNJUDGED."""
    first = measured[0]
    if first["verdict"] == verdicts_mod.NO_BAND or not first.get("slow"):
        if first["verdict"] == verdicts_mod.FAIL:  # the run failed, or a band that is no number
            return dict(first, kind=verdicts_mod.SOFTWARE, line=line_of(first))
        return dict(first, line=line_of(first))
    slow = [v.get("slow", True) for v in measured]  # a confirmation that wrote no result counts slow
    timed = [v for v in measured if "ratio" in v]
    noise = verdicts_mod.noise_text([v["ratio"] for v in timed])
    verdict = verdicts_mod.outcome(slow)
    counted = f"slow in {sum(slow)} of {len(slow)} processes"
    if verdict == verdicts_mod.PASS:
        shown = dict(min(timed, key=lambda v: v["ratio"]), verdict=verdict)
        return dict(shown, line=line_of(shown, f" ({counted}, not reproduced: {noise})"))
    shown = dict(timed[-1], verdict=verdict)
    if verdict == verdicts_mod.INCONCLUSIVE:
        return dict(shown, line=line_of(shown, f" ({counted}: too noisy to tell, {noise}; "
                                               "measure again on a quieter machine)"))
    kind, why = verdicts_mod.attribute([v.get("record") for v in measured], health, device)
    return dict(shown, kind=kind, why=why, line=line_of(shown, f" ({counted}, reproduced: {noise})"))


def measure_health(args, baseline: dict, device: str, out: Path) -> dict:
    """The ceiling probes, first: `bench probe` in its own process (on a GPU it finds the
    environment with PyTorch or CuPy), judged against the reference floors for this model, else
    against the baseline machine's own probe."""
    if args.skip_probe:
        return verdicts_mod.machine_health(None, why_not="--skip-probe")
    folder = out / "probe"
    # Full size whatever the run size: a probe must reach the ceiling (CPU: seconds; GPU: a minute).
    cmd = [sys.executable, "-m", "bench", "probe", "--device", device, "--out", str(folder)]
    print(f"[validate] {' '.join(cmd[1:])}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd)
    docs = results.load_probes([folder], _warn)
    if not docs:
        return verdicts_mod.machine_health(None, why_not=f"`bench probe` exited {proc.returncode} and wrote no probe")
    return verdicts_mod.machine_health(docs[-1], baseline.get("probes") or [])


def plan_runs(bands: list, frameworks=None, wanted=None, wanted_modes=None) -> list:
    """(framework, precision, mode) to run: each framework (default: every one with a band) at
    every precision and mode the bands have for it together, in the vocabularies' order; a
    framework asked for by name with no band is still run once (at the first precision and mode
    wanted, else fp32 and the reference) to say so."""
    names = frameworks or sorted({b["framework"] for b in bands})
    runs = []
    for name in names:
        found = {(b["precision"], band_mode(b)) for b in bands if b["framework"] == name}
        chosen = [(p, m) for p in precisions.PRECISIONS for m in modes.MODES if (p, m) in found]
        fallback = ((wanted or [precisions.DEFAULT])[0], (wanted_modes or [modes.DEFAULT])[0])
        runs.extend((name, p, m) for p, m in chosen or [fallback])
    return runs


def run_label(framework: str, precision: str, mode: str = modes.DEFAULT) -> str:
    """'pytorch', 'pytorch-amp-bf16', 'pytorch-tuned', 'pytorch-amp-bf16-tuned': the run's folder
    and name in the verdicts (fp32 and the reference add nothing)."""
    parts = [framework] + ([precision] if precision != precisions.DEFAULT else []) \
        + ([mode] if mode != modes.DEFAULT else [])
    return "-".join(parts)


def judge_folder(folder: Path, framework: str, task_list: list, bands: list[dict]) -> list[dict]:
    """A verdict for every task asked for: a task whose run left no valid result fails (a run
    that crashed is never a silent pass)."""
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = results.load_result(path)
        except results.ResultSchemaError as exc:
            print(f"warning: {exc}", file=sys.stderr)
            continue
        found[record["task"]] = judge(record, bands)
    missing = "the run wrote no valid result (see its output above)"
    return [found.get(task) or {"verdict": verdicts_mod.FAIL, "task": task,
                                "body": f"{framework:<19} {task:<9} {missing}"}
            for task in task_list]


def judge(record: dict, bands: list[dict]) -> dict:
    """One process's figure against its band: verdict, body (the table line after the verdict),
    ratio and slow where the figure is a number."""
    task = record["task"]
    # 'pytorch', 'pytorch amp-bf16', 'pytorch tuned': fp32 and the reference add nothing
    extra = [v for v, default in ((record["precision"], precisions.DEFAULT), (modes.of(record), modes.DEFAULT))
             if v != default]
    name = " ".join([record["framework"], *extra])
    if record["status"] != "ok":
        return {"verdict": verdicts_mod.FAIL, "task": task, "record": record,
                "body": f"{name:<19} {task:<9} run {record['status']}: {record['error']}"}
    band = find_band(bands, record)
    value = best(record)
    if band is None:
        return {"verdict": verdicts_mod.NO_BAND, "task": task, "record": record,
                "body": f"{name:<19} {task:<9} {value:>10.3f} no band for {_key_tuple(band_key(record))}"}
    median, high, low = band.get("median"), band.get("high"), band.get("low")
    # PASS only where every number is a real one: a NaN compares false with everything, so
    # the test is written as the condition to pass, never as the condition to fail.
    sound = all(_finite(v) for v in (value, median, high, low, band.get("tolerance"))) and median > 0
    if not sound:
        return {"verdict": verdicts_mod.FAIL, "task": task, "record": record,
                "body": f"{name:<19} {task:<9} {value!r:>10} the band (median {median!r}, "
                        f"high {high!r}) or the figure is not a finite positive number"}
    ratio = value / median
    slow = not value <= high
    note = " (faster than the band)" if value < low else ""
    return {"verdict": verdicts_mod.FAIL if slow else verdicts_mod.PASS, "ratio": ratio, "slow": slow,
            "task": task, "record": record,
            "body": f"{name:<19} {task:<9} {value:>10.3f} {median:>9.3f} +{100 * band['tolerance']:>3.0f}% "
                    f"({high:.3f}) {ratio:>6.2f}x{note}"}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _floor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not math.isfinite(value) or not 0 <= value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a finite number from 0 up to (not including) 1, a relative tolerance such as "
            f"{DEFAULT_FLOOR}; got {text!r}")
    return value


def _repeats(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if not 1 <= value <= MAX_REPEATS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_REPEATS}, got {value}")
    return value


def _tasks(text: str) -> list:
    try:
        return tasks.parse_tasks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def register(sub) -> None:
    p = sub.add_parser("baseline", help="turn a folder of good results into expected bands")
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--floor", type=_floor, default=DEFAULT_FLOOR,
                   help=f"smallest relative tolerance, 0 <= floor < 1 (default {DEFAULT_FLOOR})")
    p.add_argument("--note", default=None, help="free text kept in the file (how it was made)")
    p.set_defaults(handler=cmd_baseline)

    p = sub.add_parser("validate", help="run here and compare with a baseline; non-zero on a regression")
    p.add_argument("--baseline", type=Path, required=True)
    p.add_argument("--framework", dest="frameworks", type=lambda s: [x for x in s.split(",") if x],
                   help="comma-separated (default: every framework with a band for this device)")
    p.add_argument("--tasks", type=_tasks, default=None)
    p.add_argument("--precision", dest="precisions", type=cli.precision_list, default=None,
                   help="comma-separated precisions (default: every precision the baseline has a band "
                        "for on this device)")
    p.add_argument("--modes", "--mode", dest="modes", type=cli.mode_list, default=None,
                   help=f"comma-separated, any of {','.join(modes.MODES)} (default: every mode the baseline "
                        "has a band for on this device; a band without a mode is the reference's)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", choices=("synthetic", "real"), default="synthetic")
    p.add_argument("--repeats", type=_repeats, default=None,
                   help=f"repeats per run, 1 to {MAX_REPEATS} (default: as many as the baseline's runs had)")
    p.add_argument("--out", type=Path, default=None, help="folder for the results (default: a new temp folder)")
    p.add_argument("--skip-probe", action="store_true",
                   help="do not run the ceiling probes first (a FAIL then cannot say whether the hardware is to blame)")
    p.set_defaults(handler=cmd_validate)

