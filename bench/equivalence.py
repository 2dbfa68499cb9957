"""`python -m bench equivalence`: the same weights in every framework, and what comes out compared.

Equal parameter counts and a falling loss do not prove two framework files compute the same
function. This check loads one set of canonical weights (bench/canonical.py) into every
framework installed here, feeds each the same batch on the CPU in fp32 and compares, pair by
pair: the logits in inference mode, the training loss, and the weights after two training
steps with dropout off (so the optimizers' formulas are compared, not assumed: a second step
is where a momentum or bias-correction form shows); for ResNet-50 the 2,048 features.

Each framework runs in its own environment (`python -m bench.equivalence worker ...`); this
process only makes the inputs and compares the outputs. Exit 0 when every pair is within every
tolerance, 1 when a pair is not (the table says which), 2 on bad usage.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import canonical, external, frameworks, modes, precisions, runner, tasks, venvs
from . import data as data_mod
from .cli import _tasks, mode_list  # the --tasks and --modes parsers of `bench run` and sweep

SEED = 0
TRAIN_BATCHES = 2
FEATURE_IMAGES = 2
EXIT_OK, EXIT_DIFFERENT, EXIT_USAGE = 0, 1, 2

# Each figure is the largest difference over all elements, on the scale said here, divided by
# its tolerance: a pair passes a check when the figure is at most 1. The tolerances are fp32's:
# the frameworks add the same numbers in other orders (other convolution algorithms, fused GRU
# kernels), which moves the last bits, about 1e-7 relative per operation, over thousands of
# terms per output. A mistake (a swapped gate, a shifted padding, another momentum formula)
# moves them by 1e-2 and more.
TOLERANCES = {
    "logits": (1e-4, "largest |a - b| / max(1, largest |logit|)"),
    "loss": (1e-5, "|a - b| / max(1, |loss|), the mean loss of the two training steps"),
    "update": (1e-3, "largest |change a - change b| of any weight after the two steps, / learning rate"),
    "features": (1e-4, "largest |a - b| / max(1, largest |feature|)"),
}
CHECKS = {"cnn": ("logits", "loss", "update"), "rnn": ("logits", "loss", "update"), "resnet50": ("features",)}
# Conventions that make two frameworks compute another function by design (docs/tasks.md,
# "Canonical weights"; the values in canonical.DESIGN_CONVENTIONS): a pair whose values differ
# is not compared on that check, and the table says why. Every framework must state each one.
# The loss is the mean of two steps' losses, and the second one follows an update that Adam's
# epsilon placement changes: it is left out with the update.
BY_DESIGN = {("rnn", "update"): ("adam_epsilon", "adam_embedding_v"), ("rnn", "loss"): ("adam_epsilon", "adam_embedding_v"),
             ("resnet50", "features"): ("resnet_stride", "pool1")}


ADAM_EPSILON = 1e-3


def check_spec(task: str):
    """The task at a size for the check: dropout off (the function is then deterministic), a
    shorter review for the GRU (the same weights and formula at every length), two images.

    Adam's epsilon is ADAM_EPSILON, not the task's 1e-8: an Adam step is g / (|g| + eps) in
    size, which for a gradient near eps changes by about 1/eps per unit of gradient, so with
    eps = 1e-8 the fp32 rounding of a 1e-9 gradient moves its weight's update by 5e-3 of the
    learning rate (measured: PyTorch in fp32 against the same formula in float64), and the
    check would compare rounding. At 1e-3 no gradient is that ill-conditioned, and where
    epsilon sits (canonical.DESIGN_CONVENTIONS["adam_epsilon"]) still moves updates by ~50 %."""
    if task == "cnn":
        return replace(tasks.SPECS["cnn"], conv_dropout=0.0, dense_dropout=0.0, epochs=1)
    if task == "rnn":
        return replace(tasks.SPECS["rnn"], epochs=1, seq_len=40, epsilon=ADAM_EPSILON)
    return replace(tasks.sized("resnet50", "cpu", quick=True), batch_size=FEATURE_IMAGES)


def make_inputs(task: str, spec, seed: int = SEED) -> dict:
    """The batch every framework gets, NCHW for images (a worker transposes for NHWC)."""
    if task == "cnn":
        x, y, x_eval, _ = data_mod.synthetic_cifar10(TRAIN_BATCHES * spec.batch_size, spec.batch_size, seed, True)
        return {"x_train": x, "y_train": y, "x_eval": x_eval}
    if task == "rnn":
        x, y, x_eval, _ = data_mod.synthetic_imdb(TRAIN_BATCHES * spec.batch_size, spec.batch_size,
                                                  spec.max_features, spec.seq_len, seed)
        return {"x_train": x, "y_train": y, "x_eval": x_eval}
    return {"x_eval": data_mod.random_images(FEATURE_IMAGES, spec.image_shape, seed, True)}


# ---------------------------------------------------------------- the worker (in the framework's environment)

def _to_layout(x: np.ndarray, channel_first: bool) -> np.ndarray:
    return x if channel_first or x.ndim != 4 else np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _train(fw, dev, model, spec, x, y) -> float:
    """One epoch of the check's batches, driven as `bench run` drives the framework."""
    epoch_name = runner.TRAINING_API[spec.name][1]
    train_all = getattr(fw, runner.EPOCHS_API[spec.name], None)
    rng = np.random.default_rng(SEED)
    if train_all is not None:
        driver = runner.Epochs(fw, dev, spec, x, y, rng, log=lambda message: None)
        train_all(model, driver, spec)
        driver.finish()
        return float(driver.losses[-1])
    xs, ys = data_mod.shuffled(x, y, rng)
    progress = runner.Progress("equivalence", len(xs) // spec.batch_size, interval_s=1e9)
    return float(getattr(fw, epoch_name)(model, runner.Epoch(xs, ys, spec.batch_size, progress), spec))


def work(module: str, task_list: list, folder: Path, mode: str = modes.DEFAULT) -> dict:
    """In the framework's environment, in the mode given: every task of task_list from folder's
    weights-T.npz and inputs-T.npz into folder's <framework>-T.npz; {task: info} on stdout."""
    runner.prepare_environment(precisions.DEFAULT)
    fw = runner.load_framework(module)
    missing = [name for name in ("get_weights", "set_weights") if not hasattr(fw, name)]
    if missing:
        raise AttributeError(f"{module} lacks {', '.join(missing)} (the canonical weight exchange)")
    dev = fw.init_device("cpu", precisions.DEFAULT, mode)
    channel_first = fw.data_format(dev) == "NCHW"
    infos = {}
    for task in task_list:
        spec = check_spec(task)
        weights = canonical.load(folder / f"weights-{task}.npz", task, spec)
        with np.load(folder / f"inputs-{task}.npz", allow_pickle=False) as data:
            inputs = {name: data[name] for name in data.files}
        fw.set_seed(SEED)
        build = fw.build_resnet50 if task == "resnet50" else getattr(fw, runner.TRAINING_API[task][0])
        model = build(spec, dev)
        fw.set_weights(model, task, weights)
        back = canonical.check(task, fw.get_weights(model, task), spec, who=f"{fw.NAME}.get_weights")
        roundtrip = max(float(np.max(np.abs(back[n] - weights[n]))) for n in weights)
        out = {}
        x_eval = _to_layout(inputs["x_eval"], channel_first)
        if task == "resnet50":
            out["features"] = np.asarray(fw.extract_features(model, x_eval), dtype=np.float32)
        else:
            predict = getattr(fw, runner.TRAINING_API[task][2])
            out["logits"] = np.asarray(predict(model, x_eval, spec), dtype=np.float32)
            out["loss"] = np.float64(_train(fw, dev, model, spec, _to_layout(inputs["x_train"], channel_first),
                                            inputs["y_train"]))
            after = canonical.check(task, fw.get_weights(model, task), spec, who=f"{fw.NAME}.get_weights")
            out.update({f"after/{name}": value for name, value in after.items()})
        np.savez(folder / f"{fw.NAME}-{task}.npz", **out)
        conventions = fw.conventions(task, dev)
        runner.checked_mode(fw.NAME, task, conventions, mode)
        infos[task] = {"framework": fw.NAME, "conventions": conventions, "roundtrip": roundtrip}
    return infos


# ---------------------------------------------------------------- comparing

def figures(task: str, a: dict, b: dict, before: dict, spec) -> dict:
    """Each check's figure (difference / tolerance) between two workers' outputs."""
    out = {}
    if task == "resnet50":
        fa, fb = a["features"].astype(np.float64), b["features"].astype(np.float64)
        scale = max(1.0, float(np.max(np.abs(fa))))
        out["features"] = float(np.max(np.abs(fa - fb))) / scale / TOLERANCES["features"][0]
        return out
    la, lb = a["logits"].astype(np.float64), b["logits"].astype(np.float64)
    out["logits"] = float(np.max(np.abs(la - lb))) / max(1.0, float(np.max(np.abs(la)))) / TOLERANCES["logits"][0]
    loss_a, loss_b = float(a["loss"]), float(b["loss"])
    out["loss"] = abs(loss_a - loss_b) / max(1.0, abs(loss_a)) / TOLERANCES["loss"][0]
    worst = 0.0
    for name, w0 in before.items():
        da = a[f"after/{name}"].astype(np.float64) - w0
        db = b[f"after/{name}"].astype(np.float64) - w0
        worst = max(worst, float(np.max(np.abs(da - db))))
    out["update"] = worst / spec.lr / TOLERANCES["update"][0]
    return out


def design_problems(task: str, conventions: dict) -> list:
    """A framework must state each by-design convention of the task, with a known value."""
    problems = []
    for key in sorted({key for (t, _), names in BY_DESIGN.items() if t == task for key in names}):
        value = (conventions or {}).get(key)
        if value not in canonical.DESIGN_CONVENTIONS[key]:
            problems.append(f"conventions[{key!r}] is {value!r}; it must be one of "
                            f"{', '.join(map(repr, canonical.DESIGN_CONVENTIONS[key]))}")
    return problems


def by_design(task: str, check: str, conv_a: dict, conv_b: dict) -> str | None:
    for key in BY_DESIGN.get((task, check), ()):
        if (conv_a or {}).get(key) != (conv_b or {}).get(key):
            return f"{key}: {conv_a.get(key)!r} / {conv_b.get(key)!r}"
    return None


def compare(task: str, outputs: dict, infos: dict, before: dict, spec) -> dict:
    """{(a, b): {"figures": {...}, "worst": float, "by_design": {check: why}}} for every pair
    a < b; a check that differs by design is left out of the figures (worst None: none left)."""
    names = sorted(outputs)
    pairs = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            skipped = {}
            for check in CHECKS[task]:
                why = by_design(task, check, infos[a]["conventions"], infos[b]["conventions"])
                if why:
                    skipped[check] = why
            figs = {k: v for k, v in figures(task, outputs[a], outputs[b], before, spec).items() if k not in skipped}
            worst = max(figs.values()) if figs else None
            if worst is not None and not math.isfinite(worst):
                worst = math.inf
            pairs[(a, b)] = {"figures": figs, "worst": worst, "by_design": skipped}
    return pairs


def design_groups(task: str, conventions: dict) -> list:
    """For each by-design convention on which the frameworks differ: which checks it leaves out
    of a pair across its groups, and who is in each group (a * in the table)."""
    lines = []
    keys = sorted({key for (t, _), names in BY_DESIGN.items() if t == task for key in names})
    for key in keys:
        groups: dict = {}
        for name, conv in sorted(conventions.items()):
            groups.setdefault((conv or {}).get(key), []).append(name)
        if len(groups) < 2:
            continue
        checks = [check for (t, check), names in sorted(BY_DESIGN.items()) if t == task and key in names]
        lines.append(f"  by design, {key}: {', '.join(checks)} compared only within a group")
        for value, members in sorted(groups.items(), key=lambda item: str(item[0])):
            lines.append(f"    {value}: {', '.join(members)}")
    return lines


def _json_pair(pair: dict) -> dict:
    """A non-finite figure (a framework's NaN output) is written as text: JSON has no NaN."""
    def number(value):
        return value if value is None or math.isfinite(value) else "not finite"

    return dict(pair, worst=number(pair["worst"]), figures={k: number(v) for k, v in pair["figures"].items()})


def table(task: str, names: list, pairs: dict) -> str:
    width = max([len(n) for n in names] + [8])
    lines = [f"{task}: largest difference / tolerance over {', '.join(CHECKS[task])} (at most 1 passes; "
             "* a check left out by design, listed below)",
             " " * width + "  " + "  ".join(n.rjust(width) for n in names)]
    for a in names:
        cells = []
        for b in names:
            if a == b:
                cells.append("-".rjust(width))
                continue
            pair = pairs[tuple(sorted((a, b)))]
            text = "by design" if pair["worst"] is None else f"{pair['worst']:.3g}" + ("*" if pair["by_design"] else "")
            cells.append(text.rjust(width))
        lines.append(a.ljust(width) + "  " + "  ".join(cells))
    return "\n".join(lines)


# ---------------------------------------------------------------- the command

def candidates(names=None) -> list:
    """The frameworks that run here: each Python one in its environment (or this Python), and
    R when Rscript and TensorFlow's environment are there. [(fw, python or None for R)]."""
    chosen = []
    for fw in frameworks.FRAMEWORKS.values():
        if not fw.runs_here or (names and fw.name not in names):
            continue
        if fw.language == "r":
            try:
                external.command(fw, Path("request.json"))
            except external.LaunchError:
                continue  # no Rscript here
            if venvs.state(frameworks.get("tensorflow")) in ("ready", "stale"):
                chosen.append((fw, None))
            continue
        if fw.language != "python":
            continue
        try:
            python = venvs.interpreter_for(fw)
        except venvs.SetupError:
            continue  # not installed here: not a candidate
        chosen.append((fw, python or Path(sys.executable)))
    return chosen


def worker_command(fw, python, task_list: list, folder: Path, module: str | None = None,
                   mode: str = modes.DEFAULT) -> tuple:
    """The worker process of fw and its environment, in the mode given. R gets a request file
    (r/bench.R's equivalence mode, the run's mode as run_mode) with the check's sizes and the
    harness's batch order."""
    if fw.language == "r":
        request = {
            "mode": "equivalence", "run_mode": mode, "tasks": list(task_list), "folder": str(folder),
            "specs": {task: tasks.hyperparameters(check_spec(task)) for task in task_list},
            "epoch_orders": {},
        }
        for task in task_list:
            if task == "resnet50":
                continue
            path = folder / f"epoch-orders-{task}.npy"
            n = TRAIN_BATCHES * check_spec(task).batch_size
            np.save(path, external.epoch_orders(n, 1, SEED))
            request["epoch_orders"][task] = str(path)
        path = folder / "request-r-keras.json"
        path.write_text(json.dumps(request, indent=1))
        return external.command(fw, path)
    cmd = [str(python), "-m", "bench.equivalence", "worker", module or fw.module, "--tasks", ",".join(task_list),
           "--folder", str(folder), "--mode", mode]
    return cmd, dict(os.environ, **fw.env)


def run_worker(fw, python: Path, task_list: list, folder: Path, module: str | None = None,
               extra_env: dict | None = None, mode: str = modes.DEFAULT) -> tuple:
    """({task: (outputs, info)}, None) or (None, the error's last line). module: another
    framework file run in fw's environment (tests use deliberately broken variants). The
    outputs are read before the next worker runs: a worker of another mode overwrites its files."""
    cmd, env = worker_command(fw, python, task_list, folder, module, mode)
    env.update(extra_env or {})
    runner.prepare_environment(precisions.DEFAULT, env)
    proc = subprocess.run(cmd, cwd=str(frameworks.REPO_ROOT), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        return None, (lines or [f"exit {proc.returncode}"])[-1]
    try:
        infos = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return None, f"the worker printed no result line (exit {proc.returncode})"
    got = {}
    for task, info in infos.items():
        with np.load(folder / f"{info['framework']}-{task}.npz", allow_pickle=False) as data:
            got[task] = ({name: data[name] for name in data.files}, info)
    return got, None


def prepare(folder: Path, task_list: list) -> dict:
    """The seeded canonical weights and the batch of each task, written for the workers."""
    before = {}
    for task in task_list:
        spec = check_spec(task)
        before[task] = canonical.random_weights(task, SEED, spec)
        canonical.save(folder / f"weights-{task}.npz", before[task])
        np.savez(folder / f"inputs-{task}.npz", **make_inputs(task, spec))
    return before


def entry_name(framework: str, mode: str) -> str:
    """A framework's name in the check's table: the reference as it is, the tuned mode marked."""
    return framework if mode == modes.DEFAULT else f"{framework}[{mode}]"


def cmd_equivalence(args) -> int:
    chosen = candidates(args.frameworks)
    unknown = sorted(set(args.frameworks or ()) - {fw.name for fw, _ in chosen})
    if unknown:
        print(f"error: not a Python framework set up here: {', '.join(unknown)} "
              "(see `python -m bench list`; `python -m bench setup NAME`)", file=sys.stderr)
        return EXIT_USAGE
    if len(chosen) < 2:
        print("error: the check compares frameworks pair by pair: set up two or more "
              f"(found {', '.join(fw.name for fw, _ in chosen) or 'none'})", file=sys.stderr)
        return EXIT_USAGE
    folder = Path(tempfile.mkdtemp(prefix="bench-equivalence-", dir=str(args.out) if args.out else None))
    code, report = EXIT_OK, {"tolerances": {k: {"tolerance": t, "figure": s} for k, (t, s) in TOLERANCES.items()},
                             "tasks": {}}
    before = prepare(folder, args.tasks)
    results_by_fw, worker_failed = {}, {}
    for mode in args.modes:  # every framework in every mode: tuned code is held to the same weights
        for fw, python in chosen:
            name = entry_name(fw.name, mode)
            print(f"[equivalence] {name}: {', '.join(args.tasks)}", flush=True)
            got, error = run_worker(fw, python, args.tasks, folder, mode=mode)
            if got is None:
                worker_failed[name] = error
                print(f"[equivalence] {name} FAILED: {error}", flush=True)
            else:
                results_by_fw[name] = got
    for task in args.tasks:
        spec = check_spec(task)
        failed = dict(worker_failed)
        outputs = {n: got[task][0] for n, got in results_by_fw.items()}
        infos = {n: got[task][1] for n, got in results_by_fw.items()}
        for name, info in infos.items():
            if info["roundtrip"] != 0.0:  # set_weights then get_weights must give the weights back exactly
                failed[name] = f"get_weights(set_weights(w)) differs from w by {info['roundtrip']:.3g}"
            problems = design_problems(task, info["conventions"])
            if problems:
                failed[name] = "; ".join(problems)
        before64 = {k: v.astype(np.float64) for k, v in before[task].items()}
        names = sorted(n for n in outputs if n not in failed)
        pairs = compare(task, {n: outputs[n] for n in names}, infos, before64, spec)
        print()
        print(table(task, names, pairs) if len(names) > 1 else f"{task}: fewer than two frameworks to compare")
        for line in design_groups(task, {n: infos[n]["conventions"] for n in names}):
            print(line)
        for (a, b), pair in sorted(pairs.items()):
            if pair["worst"] is not None and pair["worst"] > 1:
                worst = ", ".join(f"{k} {v:.3g}" for k, v in pair["figures"].items() if v > 1)
                print(f"  DIFFERENT {a} / {b}: {worst}")
                code = EXIT_DIFFERENT
        for name, error in sorted(failed.items()):
            print(f"  FAILED {name}: {error}")
            code = EXIT_DIFFERENT
        print()
        report["tasks"][task] = {
            "failed": failed,
            "pairs": {f"{a}/{b}": _json_pair(pair) for (a, b), pair in sorted(pairs.items())},
            "conventions": {n: infos[n]["conventions"] for n in infos},
        }
    (folder / "equivalence.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    print(f"{'all pairs within tolerance' if code == EXIT_OK else 'NOT EQUIVALENT'}; "
          f"inputs, outputs and equivalence.json in {folder}")
    return code


def register(sub) -> None:
    p = sub.add_parser("equivalence", help="load the same weights into every framework and compare "
                                           "what comes out; non-zero when two frameworks differ")
    p.add_argument("--frameworks", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="comma-separated (default: every Python framework set up here)")
    p.add_argument("--tasks", type=_tasks, default=list(tasks.TASK_NAMES))
    p.add_argument("--modes", type=mode_list, default=[modes.DEFAULT],
                   help="comma-separated: reference,tuned (default reference); with both, each framework's "
                        "tuned code is compared with every reference, its own included")
    p.add_argument("--out", type=Path, default=None, help="folder for the inputs and outputs (default: a temp folder)")
    p.set_defaults(handler=cmd_equivalence)


def _worker_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.equivalence worker")
    parser.add_argument("module")
    parser.add_argument("--tasks", type=_tasks, required=True)
    parser.add_argument("--folder", type=Path, required=True, help="weights-T.npz and inputs-T.npz; outputs go here")
    parser.add_argument("--mode", type=modes.check_name, default=modes.DEFAULT)
    args = parser.parse_args(argv)
    print(json.dumps(work(args.module, args.tasks, args.folder, args.mode), default=str))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m bench.equivalence worker MODULE --tasks T,... --folder DIR "
                 "(the command is `python -m bench equivalence`)")
    sys.exit(_worker_main(sys.argv[2:]))
