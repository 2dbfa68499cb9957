"""Telemetry's overhead: the same quick tasks through `bench run`, with telemetry on and off
(BENCH_TELEMETRY=0), interleaved in pairs whose order alternates (on-off, off-on, ...) so a drift
of the machine falls on both sides alike. Every run is a fresh process on synthetic data.

Run from the repository root (bench run re-executes itself in .venvs/<framework>):
    python3 benchmarks/telemetry_overhead.py [--pairs 5] [--framework pytorch] [--tasks cnn,resnet50]
        [--device cpu] [--interval 0.5]
Prints each run's measured time (the record's time_total_s) per task and the process's wall time,
then per task the medians on and off and their ratio (the target: on / off <= 1.01), and the
sampler thread's own CPU time against the timed time. Quote a figure only from a machine nothing
else is running on.

Processes on a shared VM differ by 5-10 % from one to the next, more than the 1 % to be seen, so
--in-process alternates telemetry on and off task by task inside one process (the same model
code, the same warm caches), run in the framework's environment:
    .venvs/pytorch/bin/python benchmarks/telemetry_overhead.py --in-process [--rounds 9]
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


def one_run(args, telemetry_on: bool) -> tuple:
    """({task: time_total_s}, wall seconds, {task: sampler CPU s / timed s}) of one `bench run` process."""
    env = dict(os.environ, BENCH_TELEMETRY="1" if telemetry_on else "0",
               BENCH_TELEMETRY_INTERVAL_S=str(args.interval))
    with tempfile.TemporaryDirectory(prefix="telemetry-overhead-") as out:
        cmd = [sys.executable, "-m", "bench", "run", "--framework", args.framework, "--tasks", args.tasks,
               "--device", args.device, "--data", "synthetic", "--quick", "--out", out]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"error: {' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        times, cost = {}, {}
        for path in Path(out).glob("*.json"):
            record = json.loads(path.read_text())
            on = (record.get("telemetry") or {}).get("enabled", False)
            if on != telemetry_on:
                sys.exit(f"error: {path.name} has telemetry {'on' if on else 'off'}, asked for the other")
            times[record["task"]] = record["time_total_s"]
            tele = record.get("telemetry") or {}
            if on and tele.get("sampler_cpu_s") is not None and tele.get("timed_s"):
                cost[record["task"]] = tele["sampler_cpu_s"] / tele["timed_s"]
    return times, wall, cost


def in_process(args) -> int:
    """On and off alternated inside one process: the harness's own measure_* calls, a
    bench.telemetry for_run() monitor or none, order swapped every round."""
    from bench import data, runner, tasks
    from bench import telemetry as telemetry_mod
    from bench.frameworks import pytorch as fw

    dev = fw.init_device(args.device, "fp32")
    chosen = [t for t in args.tasks.split(",") if t]
    specs = {t: tasks.sized(t, args.device, True, None) for t in chosen}
    loaded = {t: data.task_data(specs[t], "synthetic", channel_first=True, log=lambda m: None) for t in chosen}
    environ = dict(os.environ, BENCH_TELEMETRY="1", BENCH_TELEMETRY_INTERVAL_S=str(args.interval))
    times = {(t, on): [] for t in chosen for on in (True, False)}
    for r in range(args.rounds):
        for task in chosen:
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                monitor = telemetry_mod.for_run(args.device, environ=environ) if on else None
                measure = runner.measure_inference if task == "resnet50" else runner.measure_training
                m = measure(fw, dev, specs[task], loaded[task], r, lambda msg: None, telemetry=monitor)
                if monitor is not None:
                    monitor.finish()
                times[(task, on)].append(m.time_total_s)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{t} on {times[(t, True)][-1]:.3f} s off {times[(t, False)][-1]:.3f} s" for t in chosen), flush=True)
    print()
    print(f"{'task':<10} {'median on s':>12} {'median off s':>13} {'on / off':>9} {'median of round ratios':>23}")
    for task in chosen:
        on, off = times[(task, True)], times[(task, False)]
        ratios = [a / b for a, b in zip(on, off)]
        print(f"{task:<10} {statistics.median(on):>12.3f} {statistics.median(off):>13.3f} "
              f"{statistics.median(on) / statistics.median(off):>9.4f} {statistics.median(ratios):>23.4f}")
    print(f"\n{args.rounds} rounds in one process, pytorch on the {args.device}, --quick sizes, synthetic "
          f"data, sampling every {args.interval} s; target: on / off <= 1.01")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-process", action="store_true",
                        help="alternate on and off inside one process (run it in .venvs/pytorch)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds of --in-process")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--framework", default="pytorch")
    parser.add_argument("--tasks", default="cnn,resnet50")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--interval", type=float, default=0.5, help="sampling interval, seconds")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    if not 0.01 <= args.interval <= 60:
        parser.error(f"--interval must be 0.01 to 60 seconds, got {args.interval}")
    if args.in_process:
        if args.rounds < 1:
            parser.error(f"--rounds must be at least 1, got {args.rounds}")
        return in_process(args)

    runs = {True: [], False: []}
    costs = []
    for pair in range(args.pairs):
        for on in ((True, False) if pair % 2 == 0 else (False, True)):
            times, wall, cost = one_run(args, on)
            runs[on].append((times, wall))
            costs.append(cost)
            shown = ", ".join(f"{task} {t:.3f} s" for task, t in sorted(times.items()))
            print(f"pair {pair + 1}/{args.pairs} telemetry {'on ' if on else 'off'}: {shown}; "
                  f"process {wall:.1f} s", flush=True)

    print()
    print(f"{'task':<10} {'median on s':>12} {'median off s':>13} {'on / off':>9}")
    for task in sorted(runs[True][0][0]):
        on = statistics.median(t[task] for t, _ in runs[True])
        off = statistics.median(t[task] for t, _ in runs[False])
        print(f"{task:<10} {on:>12.3f} {off:>13.3f} {on / off:>9.4f}")
    on = statistics.median(w for _, w in runs[True])
    off = statistics.median(w for _, w in runs[False])
    print(f"{'process':<10} {on:>12.3f} {off:>13.3f} {on / off:>9.4f}")
    # The sampler's own CPU time against the timed time: what it can take from the run at most,
    # measured in the run itself, so the machine's noise between processes does not enter it.
    print()
    for task in sorted(runs[True][0][0]):
        shares = [c[task] for c in costs if task in c]
        if shares:
            print(f"{task:<10} sampler CPU time / timed time: median {100 * statistics.median(shares):.3f} %, "
                  f"max {100 * max(shares):.3f} % over {len(shares)} runs")
    print(f"\n{args.pairs} pair(s), {args.framework} on the {args.device}, --quick, synthetic data, "
          f"sampling every {args.interval} s; target: on / off <= 1.01")
    return 0


if __name__ == "__main__":
    sys.exit(main())
