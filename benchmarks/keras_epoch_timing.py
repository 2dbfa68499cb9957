"""Keras-family epoch timing, three ways side by side in one process per framework (issue 17).

  old   fit() once per epoch over the harness's shuffled arrays: the framework file's
        train_<task>_epoch, driven by the harness's per-epoch loop (how `bench run` timed the
        Keras rows before issue 17)
  new   the harness's Epochs driver: one fit() over all epochs, the clock at the epoch
        boundaries, the harness's batches through a PyDataset (train_<task>_epochs: how
        `bench run` times them now)
  bare  a loop over the same batches calling Keras's compiled train step, model.train_on_batch,
        the clock around each epoch's loop (train_on_batch hands back the loss as NumPy, so it
        waits for every step: free on a CPU, not on a GPU)

All three train the same model on the same batches (the harness's seeded per-epoch shuffle,
made outside the clock). Each round builds a fresh model for each way, so each pays the same
first-epoch tracing and compilation, and runs --epochs epochs; the order of the ways rotates
from round to round. The statistics are over the warm epochs (2 to E) of every round; epoch 1,
which carries the compilation, is shown apart, and every epoch time is listed, round by round,
so that a bimodal epoch shows.

Run from the repository root with any Python that has the harness; each framework runs in its
own environment (.venvs/NAME) in a subprocess:
    python3 benchmarks/keras_epoch_timing.py [--frameworks tensorflow,keras-jax,keras-torch,keras-tensorflow]
        [--tasks cnn,rnn] [--epochs 4] [--rounds 3] [--batches N] [--device cpu]
--batches is the number of batches per epoch (default: the --quick size, 40 CNN / 20 RNN).
"""
from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import data, frameworks, runner, tasks, venvs  # noqa: E402

KERAS = ("keras-jax", "keras-torch", "keras-tensorflow")  # tensorflow.py has no fit() since issue 12
WAYS = ("old", "new", "bare")


def _quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------- the three ways (in the framework's env)

def old_way(fw, dev, spec, task_data, seed: int) -> list:
    return runner.measure_training(fw, dev, spec, task_data, seed, _quiet, drive="per-epoch").epoch_times_s


def new_way(fw, dev, spec, task_data, seed: int) -> list:
    return runner.measure_training(fw, dev, spec, task_data, seed, _quiet, drive="all-epochs").epoch_times_s


def bare_way(fw, dev, spec, task_data, seed: int) -> list:
    """A hand-written loop over the same batches: no fit(), no callbacks, no harness objects."""
    model = getattr(fw, runner.TRAINING_API[spec.name][0])(spec, dev)
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(spec.epochs):
        x, y = data.shuffled(task_data.x_train, task_data.y_train, rng)
        fw.synchronize(dev)
        start = time.perf_counter()
        for xb, yb in data.minibatches(x, y, spec.batch_size):
            model.train_on_batch(xb, yb)
        fw.synchronize(dev)
        times.append(time.perf_counter() - start)
    return times


def worker(args) -> None:
    fw_entry = frameworks.get(args.worker)
    fw = runner.load_framework(fw_entry.module)
    dev = fw.init_device(args.device, "fp32")
    ways = {"old": old_way, "new": new_way, "bare": bare_way}
    out = {"framework": fw_entry.name, "version": fw.versions(dev).get("framework_version"), "tasks": {}}
    for task in args.tasks.split(","):
        sizes = {"epochs": args.epochs, "test_batches": 1}
        if args.batches:
            sizes["train_batches"] = args.batches
        spec = replace(tasks.sized(task, args.device, quick=True), **sizes)
        task_data = data.task_data(spec, "synthetic", fw.data_format(dev) == "NCHW", 0, log=_quiet)
        times = {way: [] for way in WAYS}
        for r in range(args.rounds):
            for way in WAYS[r % 3:] + WAYS[:r % 3]:
                gc.collect()
                times[way].append(ways[way](fw, dev, spec, task_data, seed=r))
                print(f"[{fw_entry.name} {task}] round {r + 1} {way}: "
                      + " ".join(f"{t:.3f}" for t in times[way][-1]), file=sys.stderr, flush=True)
        out["tasks"][task] = {"batches": len(task_data.x_train) // spec.batch_size,
                              "batch_size": spec.batch_size, "times": times}
    print(json.dumps(out))


# ---------------------------------------------------------------- the launcher and the report

def _mad(xs: list) -> float:
    m = statistics.median(xs)
    return statistics.median([abs(x - m) for x in xs])


def report(result: dict, epochs: int, rounds: int) -> str:
    lines = []
    for task, t in result["tasks"].items():
        warm = {w: [x for run in t["times"][w] for x in run[1:]] for w in WAYS}
        first = {w: [run[0] for run in t["times"][w]] for w in WAYS}
        lines.append(f"{result['framework']} {task} ({result['version']}): {rounds} rounds x {epochs} epochs "
                     f"of {t['batches']} batches of {t['batch_size']}; warm = epochs 2-{epochs} of every "
                     f"round ({len(warm['old'])} per way)")
        if not warm["bare"]:
            lines.append("  (one epoch per round: no warm epochs; use --epochs 2 or more)")
        lines.append(f"  {'way':<5} {'epoch 1':>8} {'warm med':>9} {'min':>7} {'max':>7} {'MAD':>6} {'/bare':>6}")
        bare = statistics.median(warm["bare"]) if warm["bare"] else None
        for w in WAYS:
            e1 = statistics.median(first[w])
            if warm[w]:
                med = statistics.median(warm[w])
                ratio = f"{med / bare:6.3f}" if bare else "     -"
                lines.append(f"  {w:<5} {e1:8.3f} {med:9.3f} {min(warm[w]):7.3f} {max(warm[w]):7.3f} "
                             f"{_mad(warm[w]):6.3f} {ratio}")
            else:
                lines.append(f"  {w:<5} {e1:8.3f}")
        if bare:
            new, old = statistics.median(warm["new"]), statistics.median(warm["old"])
            lines.append(f"  warm median ratio: new/bare {new / bare:.3f}, old/bare {old / bare:.3f}")
        lines.append("  every epoch (s), round by round:")
        for w in WAYS:
            rows = " | ".join(" ".join(f"{x:.2f}" for x in run) for run in t["times"][w])
            lines.append(f"    {w:<5} {rows}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frameworks", default=",".join(KERAS))
    parser.add_argument("--tasks", default="cnn,rnn")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=None, help="batches per epoch (default: --quick size)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # inside the framework's environment
    args = parser.parse_args()
    if args.epochs < 1 or args.rounds < 1 or (args.batches is not None and args.batches < 1):
        parser.error("--epochs, --rounds and --batches must be at least 1")
    if args.worker:
        worker(args)
        return 0
    print(f"$ {' '.join(['python3', 'benchmarks/keras_epoch_timing.py'] + sys.argv[1:])}")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    code = 0
    for name in args.frameworks.split(","):
        fw = frameworks.get(name)
        if name not in KERAS:
            print(f"{name}: not a Keras framework (choose from {', '.join(KERAS)})")
            code = 2
            continue
        if venvs.state(fw) not in ("ready", "stale"):
            print(f"{name}: no environment here (python -m bench setup {name}); skipped")
            continue
        cmd = [str(frameworks.venv_python(fw)), str(Path(__file__).resolve()), "--worker", name,
               "--tasks", args.tasks, "--epochs", str(args.epochs), "--rounds", str(args.rounds),
               "--device", args.device] + (["--batches", str(args.batches)] if args.batches else [])
        env = dict(os.environ, **fw.env)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with tempfile.TemporaryFile("w+") as stdout:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
            tail = collections.deque(maxlen=40)
            for line in proc.stderr:  # the worker's round lines as they come; the rest kept for errors
                if line.startswith(f"[{name} "):
                    print(line, end="", file=sys.stderr, flush=True)
                else:
                    tail.append(line)
            proc.wait()
            stdout.seek(0)
            output = stdout.read()
        if proc.returncode != 0:
            print(f"{name}: the worker failed (exit {proc.returncode}):\n{''.join(tail)}")
            code = 1
            continue
        print(report(json.loads(output.strip().splitlines()[-1]), args.epochs, args.rounds), flush=True)
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return code


if __name__ == "__main__":
    sys.exit(main())
