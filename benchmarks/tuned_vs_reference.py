"""The tuned mode against the reference, per framework and task, measured side by side.

For each framework set up here, one process in its environment alternates the two modes task by
task (reference-tuned, then tuned-reference, ...), a fresh model each time, through the harness's
own measure_training / measure_inference on seeded synthetic data at the --quick sizes, with
--epochs epochs (2 by default, so the steady epoch is seen apart from the first, which holds any
compilation). R (r-keras) runs one program per measurement, so it alternates `bench run`
processes instead.

Run from the repository root with the system Python (each framework runs in .venvs/<name>):
    python3 benchmarks/tuned_vs_reference.py [--frameworks pytorch,jax | all] [--tasks cnn,rnn,resnet50]
        [--rounds 3] [--epochs 2] [--device cpu] [--markdown FILE]
Prints each round, then per framework and task: the median time of each mode (training: all
epochs, the first included; ResNet-50: the timed batches, the warm-up batch apart), the median of
the rounds' tuned / reference ratios with their range, the same ratio for the steady epochs alone,
and the first epoch (or batch) of each mode. --markdown writes the table for the README.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODES = ("reference", "tuned")


def _figures(task: str, total: float, cold_start) -> dict:
    """Total, steady and first figures of one measurement (ResNet-50's total is its steady part)."""
    cold = cold_start or {}
    if task == "resnet50":
        return {"total": total, "steady": total, "first": cold.get("first_batch_s")}
    return {"total": total, "steady": cold.get("steady_epoch_s"), "first": cold.get("first_epoch_s")}


def worker(args) -> int:
    """In the framework's environment: every round, every task, both modes; one JSON line out."""
    from bench import data, frameworks, runner, tasks

    fw_entry = frameworks.get(args.worker)
    runner.prepare_environment(args.precision)
    fw = runner.load_framework(fw_entry.module)
    chosen = [t for t in args.tasks.split(",") if t]
    loaded = {}  # (task, channel_first): data, made once
    times = {t: {m: [] for m in MODES} for t in chosen}
    switches = {}
    for r in range(args.rounds):
        for task in chosen:
            spec = tasks.sized(task, args.device, True, args.epochs)
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                dev = fw.init_device(args.device, args.precision, mode)
                conventions = fw.conventions(task, dev)
                runner.checked_mode(fw.NAME, task, conventions, mode)
                switches[f"{task}/{mode}"] = conventions["mode"]
                channel_first = fw.data_format(dev) == "NCHW"
                key = (task, channel_first)
                if key not in loaded:
                    loaded[key] = data.task_data(spec, "synthetic", channel_first, 0, log=lambda msg: None)
                measure = runner.measure_inference if task == "resnet50" else runner.measure_training
                m = measure(fw, dev, spec, loaded[key], r, lambda msg: None, precision=args.precision,
                            device=args.device)
                times[task][mode].append(_figures(task, m.time_total_s, m.cold_start))
            print(f"{args.worker} round {r + 1}/{args.rounds} {task}: " + ", ".join(
                f"{mode} {times[task][mode][-1]['total']:.3f} s (first {_s(times[task][mode][-1]['first'])}, "
                f"steady {_s(times[task][mode][-1]['steady'])})" for mode in MODES), file=sys.stderr, flush=True)
    print(json.dumps({"framework": args.worker, "times": times, "switches": switches,
                      "how": "one process, modes alternated"}))
    return 0


def r_rounds(name: str, args) -> dict:
    """R: `bench run` processes alternated (one R program per measurement)."""
    chosen = [t for t in args.tasks.split(",") if t]
    times = {t: {m: [] for m in MODES} for t in chosen}
    switches = {}
    for r in range(args.rounds):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            with tempfile.TemporaryDirectory(prefix="tuned-vs-reference-") as out:
                cmd = [sys.executable, "-m", "bench", "run", "--framework", name, "--tasks", args.tasks,
                       "--device", args.device, "--data", "synthetic", "--quick", "--epochs", str(args.epochs),
                       "--precision", args.precision, "--mode", mode, "--out", out]
                proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stdout[-1500:]}")
                for path in Path(out).glob("*.json"):
                    record = json.loads(path.read_text())
                    task = record["task"]
                    times[task][mode].append(_figures(task, record["time_total_s"], record.get("cold_start")))
                    switches[f"{task}/{mode}"] = record["conventions"]["mode"]
        print(f"{name} round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return {"framework": name, "times": times, "switches": switches, "how": "bench run processes alternated"}


def run_framework(name: str, args) -> dict:
    from bench import frameworks, venvs

    fw = frameworks.get(name)
    if fw.language == "r":
        return r_rounds(name, args)
    python = venvs.interpreter_for(fw) or Path(sys.executable)
    cmd = [str(python), __file__, "--worker", name, "--tasks", args.tasks, "--rounds", str(args.rounds),
           "--epochs", str(args.epochs), "--device", args.device, "--precision", args.precision]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, **fw.env), stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: the worker exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio_text(tuned: list, reference: list) -> str:
    pairs = [t / r for t, r in zip(tuned, reference) if t is not None and r]
    if not pairs:
        return "-"
    return f"{statistics.median(pairs):.2f}x [{min(pairs):.2f}-{max(pairs):.2f}]"


def _median(values: list):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _s(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def rows_of(report: dict) -> list:
    rows = []
    for task, by_mode in report["times"].items():
        ref, tuned = by_mode["reference"], by_mode["tuned"]
        rows.append((
            report["framework"], task,
            _s(_median([x["total"] for x in ref])), _s(_median([x["total"] for x in tuned])),
            _ratio_text([x["total"] for x in tuned], [x["total"] for x in ref]),
            _ratio_text([x["steady"] for x in tuned], [x["steady"] for x in ref]),
            f"{_s(_median([x['first'] for x in ref]))} / {_s(_median([x['first'] for x in tuned]))}",
            "; ".join(report["switches"].get(f"{task}/tuned", {}).get("switches", [])) or "(none)",
        ))
    return rows


HEADER = ("framework", "task", "reference s", "tuned s", "tuned / reference", "steady epochs",
          "first epoch (batch) s ref / tuned", "tuned switches on")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", default="all", help="comma-separated, or all (every one set up here)")
    parser.add_argument("--tasks", default="cnn,rnn,resnet50")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the training tasks (2: one steady)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here as Markdown")
    parser.add_argument("--jsonl", type=Path, default=None,
                        help="append each framework's figures here as soon as it is done (a cut run keeps them)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.epochs < 1:
        parser.error("--rounds and --epochs must be at least 1")
    if args.worker:
        return worker(args)

    from bench import frameworks, venvs

    if args.frameworks == "all":
        names = [fw.name for fw in frameworks.FRAMEWORKS.values()
                 if fw.runs_here and (fw.language == "r" and venvs.state(frameworks.get("tensorflow")) == "ready"
                                      or fw.language == "python" and venvs.state(fw) == "ready")]
    else:
        names = [n for n in args.frameworks.split(",") if n]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    reports, failed = [], {}
    for name in names:
        try:
            reports.append(run_framework(name, args))
            if args.jsonl:
                with args.jsonl.open("a") as out:
                    out.write(json.dumps(reports[-1]) + "\n")
        except RuntimeError as exc:
            failed[name] = str(exc)
            print(f"error: {exc}", file=sys.stderr)
    rows = [HEADER] + [row for report in reports for row in rows_of(report)]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(HEADER) - 1)]
    print()
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    note = (f"{started}, {args.device}, {args.precision}, --quick sizes with {args.epochs} epochs, synthetic data, "
            f"{args.rounds} rounds; tuned / reference: the median of the rounds' ratios [their range]; "
            "below 1 the tuned mode is faster")
    print(f"\n{note}")
    for name, error in failed.items():
        print(f"FAILED {name}: {error}")
    if args.markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows[1:]]
        args.markdown.write_text("\n".join(lines) + f"\n\n{note}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
