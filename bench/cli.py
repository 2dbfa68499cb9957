"""`python -m bench`: list, setup, run, env (and the commands other modules add)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from . import envinfo, frameworks, results, tasks, venvs
from .data import DATA_MODES

PRECISIONS = ("fp32", "fp16", "bf16", "amp")


def _out_dir(text: str) -> Path:
    """An output folder that exists and is writable, checked before any long work."""
    path = Path(text)
    problem = results.folder_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return path


def _tasks(text: str) -> list[str]:
    try:
        return tasks.parse_tasks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_run_arguments(p: argparse.ArgumentParser, framework_required: bool = True) -> None:
    # Containers (compose.yml) choose tasks, device, data and size through these variables.
    env = os.environ
    p.add_argument("--framework", "-f", required=framework_required and not env.get("BENCH_FRAMEWORK"),
                   default=env.get("BENCH_FRAMEWORK"),
                   help="framework name (see `python -m bench list`; default $BENCH_FRAMEWORK)")
    p.add_argument("--tasks", type=_tasks, default=env.get("BENCH_TASKS") or ",".join(tasks.TASK_NAMES),
                   help="comma-separated: cnn,rnn,resnet50 (default: all, or $BENCH_TASKS)")
    p.add_argument("--device", choices=("cpu", "gpu"), default=env.get("BENCH_DEVICE") or "cpu",
                   help="default: cpu, or $BENCH_DEVICE")
    p.add_argument("--data", choices=DATA_MODES, default=env.get("BENCH_DATA") or "auto",
                   help="real: the real data sets (error if unavailable); synthetic: seeded "
                        "data of the same shapes; auto: real when cached or downloadable")
    p.add_argument("--epochs", type=_positive, default=None,
                   help="override the epochs of the training tasks")
    p.add_argument("--quick", action="store_true",
                   default=env.get("BENCH_QUICK", "").lower() in ("1", "true", "yes"),
                   help="a few batches, one epoch, a few ResNet batches (minutes on a CPU; $BENCH_QUICK=1)")
    p.add_argument("--repeats", type=_positive, default=1,
                   help="repeat each task; results report the median and the spread")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=_out_dir, default=Path("results"),
                   help="folder for the JSON results (default: results)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Deep-learning framework benchmark matrix: the same three tasks in every framework.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="frameworks, tasks and which environments are installed here")

    p = sub.add_parser("setup", help="create .venvs/NAME with the framework's pinned requirements")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--recreate", action="store_true", help="delete and rebuild the environment")

    p = sub.add_parser("run", help="run tasks of one framework and write JSON results")
    add_run_arguments(p)

    sub.add_parser("env", help="the environment record as JSON")

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Commands defined beside the core (sweep, baseline, validate) register here."""
    found = []
    for module_name in ("bench.table", "bench.sweep", "bench.validate"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ImportError:
            continue
        found.append(module.register)
    return found


# ---------------------------------------------------------------- commands

def cmd_list(args) -> int:
    rows = [("framework", "language", "environment", "note")]
    for fw in frameworks.FRAMEWORKS.values():
        st = venvs.state(fw)
        if fw.language != "python":
            tool = {"r": "Rscript", "julia": "julia"}[fw.language]
            found = shutil.which(tool)
            where = (f"{tool} found ({found})" if found else
                     "container only, not run here" if not fw.runs_here else f"needs {tool} (R)")
        elif st == "ready":
            where = f"installed ({frameworks.venv_path(fw)})"
        elif st == "stale":
            where = f"pins changed: re-run `python -m bench setup {fw.name}`"
        elif st == "container-only":
            where = "container only, not run here"
        elif fw.language == "python" and frameworks.importable_here(fw):
            where = f"importable in {sys.executable}"
        else:
            where = f"not set up: `python -m bench setup {fw.name}`"
        rows.append((fw.name, fw.language, where, fw.note))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print()
    print("tasks: " + ", ".join(
        f"{name} ({tasks.SPECS[name].__doc__.strip().rstrip('.')})" for name in tasks.TASK_NAMES))
    return 0


def cmd_setup(args) -> int:
    for name in args.names:
        fw = frameworks.get(name)
        venvs.setup(fw, recreate=args.recreate)
    return 0


def cmd_run(args, argv: list[str]) -> int:
    fw = frameworks.get(args.framework)
    if fw.language != "python":
        from . import external

        try:
            return external.run(fw, args)
        except external.LaunchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if not fw.runs_here and not os.environ.get("BENCH_NO_VENV"):
        print(f"error: {fw.name} is container only here: {fw.note}", file=sys.stderr)
        return 2
    python = venvs.interpreter_for(fw)
    if python is not None:
        env = dict(os.environ, **fw.env)
        sys.stdout.flush()
        os.execve(str(python), [str(python), "-m", "bench", *argv], env)
    os.environ.update(fw.env)
    from . import runner

    opts = runner.RunOptions(
        framework=fw.name, module=fw.module, tasks=args.tasks, device=args.device,
        data=args.data, quick=args.quick, epochs=args.epochs, repeats=args.repeats,
        precision=args.precision, out=args.out, seed=args.seed,
    )
    code, records = runner.run(opts, log=lambda m: print(m, flush=True))
    if records:
        print()
        print(runner.summary_table(records))
    return code


def cmd_env(args) -> int:
    record = envinfo.capture()
    record["git_commit"] = envinfo.git_commit()
    print(json.dumps(record, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list(args)
        if args.command == "setup":
            return cmd_setup(args)
        if args.command == "run":
            return cmd_run(args, argv)
        if args.command == "env":
            return cmd_env(args)
        return args.handler(args)
    except (frameworks.UnknownFramework, venvs.SetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
