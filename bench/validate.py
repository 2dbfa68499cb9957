"""After an install: `bench baseline` turns good results into expected bands, and
`bench validate` runs here and compares each figure with the band for this device.

Compared figure: training tasks' total training time, ResNet-50's seconds per 1,000
images (both: lower is better), taken as the best of a run's repeats. On a shared host
noise only ever adds time, and it comes in modes (a whole process, or single repeats, run
30-50 % slow on these 2-core VMs), so the best repeat is the stable estimate of what the
machine can do; the median of repeats flips between modes from one process to the next.
A figure slower than the band is measured again in up to two fresh processes, and is a
regression (FAIL) only if it is slow every time; a faster one passes and says so.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from . import envinfo, results, tasks
from .table import load_folder

BASELINE_FORMAT = "bench-baseline-2"  # 1: bands of all repeats' median; refused
DEFAULT_FLOOR = 0.15  # for steady devices (GPUs); shared CPU VMs need more (make-cpu-baseline: 0.35)
SPREAD_FACTOR = 3.0
# Never wider than this, however noisy the baseline runs were: a band must still catch a
# machine running at half speed (a 2x regression).
MAX_SPREAD_TOLERANCE = 0.6
CONFIRM_RUNS = 2  # fresh processes a slow figure gets before it is a FAIL
EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_NO_BAND = 0, 1, 2, 4


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
    cell = record.get("cell") or {}
    image = (record.get("env") or {}).get("container_image") or {}
    return {
        "device_name": record.get("device_name") or record["device"],
        "framework": record["framework"],
        "variant": cell.get("variant") or image.get("variant") or "-",
        "task": record["task"],
        "precision": record["precision"],
        "quick": bool(record.get("quick")),
        "data": record["data"],
    }


def _key_tuple(key: dict) -> tuple:
    return tuple(key[k] for k in ("device_name", "framework", "variant", "task", "precision", "quick", "data"))


def make_bands(records: list[dict], floor: float = DEFAULT_FLOOR) -> list[dict]:
    """One band per figure: the median over runs of each run's best repeat, and a tolerance
    from the spread between runs (process-to-process variation is what validate meets)."""
    groups: dict = {}
    for r in records:
        if r["status"] == "ok":
            key = band_key(r)
            _, bests, repeats = groups.setdefault(_key_tuple(key), (key, [], []))
            run = samples(r)
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


def load_baseline(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"baseline {path} is not readable JSON: {exc}") from exc
    if isinstance(doc, dict) and doc.get("format") == "bench-baseline-1":
        raise ValueError(f"{path} is an older baseline (format bench-baseline-1: bands of the median "
                         "repeat, not of the best); remake it from the same results with "
                         "`python -m bench baseline DIR -o FILE`")
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT:
        raise ValueError(f"{path} is not a baseline file (format {BASELINE_FORMAT!r}); "
                         "make one with `python -m bench baseline DIR -o FILE`")
    return doc


# ---------------------------------------------------------------- commands

def cmd_baseline(args) -> int:
    try:
        records = load_folder(args.dirs)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bands = make_bands(records, args.floor)
    if not bands:
        print(f"error: no ok results in {', '.join(map(str, args.dirs))} to make a baseline from",
              file=sys.stderr)
        return EXIT_USAGE
    doc = {
        "format": BASELINE_FORMAT,
        "created_at": results.now_iso(),
        "command": " ".join(["python -m bench baseline", *map(str, args.dirs), "-o", str(args.output)]),
        "floor": args.floor,
        "host": envinfo.capture()["hostname"],
        "git_commit": envinfo.git_commit(),
        "note": args.note,
        "bands": bands,
    }
    results.write_atomic(args.output, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.output}: {len(bands)} bands from {len(records)} results")
    for b in bands:
        print(f"  {b['framework']:<18} {b['task']:<9} {b['device_name']} {'quick' if b['quick'] else 'full'} "
              f"{b['data']}: {b['median']:.3f} +{100 * b['tolerance']:.0f}% "
              f"({b['n']} runs x best of {b['repeats_per_run']})")
    return EXIT_PASS


def this_device() -> str:
    return "gpu" if envinfo.nvidia_gpus() else "cpu"


def cmd_validate(args) -> int:
    try:
        baseline = load_baseline(args.baseline)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
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
    frameworks = args.frameworks or sorted({b["framework"] for b in here})
    # Best of as many repeats as the baseline's runs had: best of fewer would be judged harsher.
    repeats = args.repeats or max(b.get("repeats_per_run", 3) for b in here)
    task_list = args.tasks or list(tasks.TASK_NAMES)
    # A fresh folder per run: results of an earlier run in the same --out are never judged again.
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="validate-", dir=args.out) if args.out
               else tempfile.mkdtemp(prefix="bench-validate-"))
    verdicts = []
    for framework in frameworks:
        cmd = [sys.executable, "-m", "bench", "run", "--framework", framework, "--device", device,
               "--tasks", ",".join(task_list), "--data", args.data, "--repeats", str(repeats),
               "--out", str(out / framework)]
        if args.quick:
            cmd.append("--quick")
        print(f"[validate] {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd)
        if proc.returncode == 2:
            print(f"error: `bench run` refused {framework} (see above)", file=sys.stderr)
            return EXIT_USAGE
        first = [judge(results.load_result(p), bands) for p in sorted((out / framework).glob("*.json"))]
        # A regression must reproduce: a shared host puts a whole process in a slow mode now
        # and then (seen in 2 of 10 first runs here), so a slow figure gets fresh processes.
        earlier: dict = {}
        for attempt in range(1, CONFIRM_RUNS + 1):
            slow = [v["task"] for v in first if v["verdict"] == "FAIL" and v.get("ratio")]
            if not slow:
                break
            for v in first:
                if v["task"] in slow:
                    earlier.setdefault(v["task"], []).append(f"{v['ratio']:.2f}x")
            again = out / f"{framework}-confirm{attempt}"
            cmd[cmd.index("--tasks") + 1], cmd[cmd.index("--out") + 1] = ",".join(slow), str(again)
            print(f"[validate] slower than the band: {', '.join(slow)}; measuring again in a fresh "
                  f"process (confirmation {attempt} of {CONFIRM_RUNS})", flush=True)
            subprocess.run(cmd)
            rerun = {v["task"]: v for v in (judge(results.load_result(p), bands)
                                            for p in sorted(again.glob("*.json")))}
            for i, v in enumerate(first):
                if v["task"] in slow and v["task"] in rerun:
                    first[i] = rerun[v["task"]]
        for i, v in enumerate(first):
            if v["task"] in earlier:
                state = "not reproduced" if v["verdict"] == "PASS" else "reproduced"
                first[i] = dict(v, line=f"{v['line']} (earlier runs {', '.join(earlier[v['task']])}, {state})")
        verdicts.extend(first)
    print()
    print(f"{'verdict':<8} {'framework':<18} {'task':<9} {'best rep':>10} {'band':>21} {'ratio':>7}")
    for v in verdicts:
        print(v["line"])
    failed = [v for v in verdicts if v["verdict"] != "PASS"]
    missing = [v for v in verdicts if v["verdict"] == "NO BAND"]
    print(f"\n{len(verdicts) - len(failed)} passed, {len(failed)} failed; results in {out}")
    if missing and len(missing) == len(failed):
        return EXIT_NO_BAND
    return EXIT_FAIL if failed else EXIT_PASS


def judge(record: dict, bands: list[dict]) -> dict:
    name, task = record["framework"], record["task"]
    if record["status"] != "ok":
        return {"verdict": "FAIL", "task": task, "line": f"{'FAIL':<8} {name:<18} {task:<9} run {record['status']}: "
                                           f"{record['error']}"}
    band = find_band(bands, record)
    value = best(record)
    if band is None:
        return {"verdict": "NO BAND", "task": task, "line": f"{'NO BAND':<8} {name:<18} {task:<9} {value:>10.3f} "
                                              f"no band for {_key_tuple(band_key(record))}"}
    ratio = value / band["median"]
    verdict = "FAIL" if value > band["high"] else "PASS"
    note = " (faster than the band)" if value < band["low"] else ""
    return {"verdict": verdict, "ratio": ratio, "task": task,
            "line": f"{verdict:<8} {name:<18} {task:<9} {value:>10.3f} "
                    f"{band['median']:>9.3f} +{100 * band['tolerance']:>3.0f}% ({band['high']:.3f}) "
                    f"{ratio:>6.2f}x{note}"}


def register(sub) -> None:
    p = sub.add_parser("baseline", help="turn a folder of good results into expected bands")
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--floor", type=float, default=DEFAULT_FLOOR,
                   help=f"smallest relative tolerance (default {DEFAULT_FLOOR})")
    p.add_argument("--note", default=None, help="free text kept in the file (how it was made)")
    p.set_defaults(handler=cmd_baseline)

    p = sub.add_parser("validate", help="run here and compare with a baseline; non-zero on a regression")
    p.add_argument("--baseline", type=Path, required=True)
    p.add_argument("--framework", dest="frameworks", type=lambda s: [x for x in s.split(",") if x],
                   help="comma-separated (default: every framework with a band for this device)")
    p.add_argument("--tasks", type=tasks.parse_tasks, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", choices=("synthetic", "real"), default="synthetic")
    p.add_argument("--repeats", type=int, default=None,
                   help="repeats per run (default: as many as the baseline's runs had)")
    p.add_argument("--out", type=Path, default=None, help="folder for the results (default: a new temp folder)")
    p.set_defaults(handler=cmd_validate)

