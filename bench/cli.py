"""`python -m bench`: list, setup, run, env (and the commands other modules add)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from . import envinfo, frameworks, modes, precisions, results, tasks, venvs
from .data import DATA_MODES

PRECISIONS = precisions.PRECISIONS
DEVICES = ("cpu", "gpu")


def _out_dir(text: str) -> Path:
    """An output folder that exists and is writable, checked before any long work."""
    path = Path(text)
    problem = results.folder_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return path


# Bounds of the numeric options: numpy's legacy generators (np.random.seed, which some
# framework files use) take 0 <= seed < 2**32; repeats and epochs have sane upper limits.
SEED_LIMIT = 2 ** 32
MAX_REPEATS = 1000
MAX_EPOCHS = 1000
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


class _FromEnv(str):
    """A default taken from an environment variable. argparse parses a string default through
    the option's type (never through `choices`), so each type below checks one of these and
    names the variable in its error."""

    def __new__(cls, variable: str, value: str):
        self = super().__new__(cls, value)
        self.variable = variable
        return self


def _env_default(variable: str, fallback: str) -> str:
    value = os.environ.get(variable)
    return _FromEnv(variable, value) if value else fallback


def _from_env_error(text: str, allowed: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(
        f"${text.variable}={str(text)!r} is not allowed: use {allowed} (or unset ${text.variable})")


def _choice(values: tuple):
    """The text as it is; a value from the environment must be one of values (argparse checks
    `choices` only for values given on the command line)."""
    def check(text: str) -> str:
        if isinstance(text, _FromEnv) and text not in values:
            raise _from_env_error(text, "one of " + ", ".join(values))
        return str(text)

    check.__name__ = "choice"
    return check


def _precision(text: str) -> str:
    """One of the four precision names; an old or guessed name says which name to use."""
    try:
        return precisions.check_name(str(text))
    except precisions.UnknownPrecision as exc:
        if isinstance(text, _FromEnv):
            raise _from_env_error(text, "one of " + ", ".join(PRECISIONS)) from None
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mode(text: str) -> str:
    """reference or tuned (bench/modes.py)."""
    try:
        return modes.check_name(str(text))
    except modes.UnknownMode as exc:
        if isinstance(text, _FromEnv):
            raise _from_env_error(text, "one of " + ", ".join(modes.MODES)) from None
        raise argparse.ArgumentTypeError(str(exc)) from None


def mode_list(text: str) -> list:
    """--modes of sweep and validate: "reference,tuned", each name checked."""
    try:
        return modes.parse_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def precision_list(text: str) -> list:
    """--precisions / --precision of sweep and validate: "fp32,amp-bf16", each name checked."""
    try:
        return precisions.parse_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _flag(text) -> bool:
    """A yes/no value from the environment: 1/true/yes/on or 0/false/no/off/empty."""
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    if isinstance(text, _FromEnv):
        raise _from_env_error(text, f"{'/'.join(TRUE_WORDS)} or {'/'.join(w for w in FALSE_WORDS if w)} "
                                    "or empty (any case)")
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


class _FlagAction(argparse.Action):
    """--quick: a flag (no value) whose default may come from the environment ($BENCH_QUICK)."""

    def __init__(self, option_strings, dest, default=False, type=None, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, type=type, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)


def _tasks(text: str) -> list:
    try:
        return tasks.parse_tasks(text)
    except ValueError as exc:
        if isinstance(text, _FromEnv):
            raise argparse.ArgumentTypeError(f"${text.variable}={str(text)!r}: {exc}")
        raise argparse.ArgumentTypeError(str(exc))


def _whole(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {str(text)!r}")


def _bounded(low: int, high: int, what: str):
    def check(text: str) -> int:
        value = _whole(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high} ({what}), got {value}")
        return value

    check.__name__ = "number"
    return check


def _seed(text: str) -> int:
    value = _whole(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(
            f"must be from 0 to {SEED_LIMIT - 1} (0 <= seed < 2**32, what numpy's generators take), got {value}")
    return value


def add_run_arguments(p: argparse.ArgumentParser, framework_required: bool = True) -> None:
    # Containers (compose.yml) choose tasks, device, data and size through these variables;
    # a value from the environment is checked as strictly as the same value on the command line.
    env = os.environ
    p.add_argument("--framework", "-f", required=framework_required and not env.get("BENCH_FRAMEWORK"),
                   default=env.get("BENCH_FRAMEWORK"),
                   help="framework name (see `python -m bench list`; default $BENCH_FRAMEWORK)")
    p.add_argument("--tasks", type=_tasks, default=_env_default("BENCH_TASKS", ",".join(tasks.TASK_NAMES)),
                   help="comma-separated: cnn,rnn,resnet50 (default: all, or $BENCH_TASKS)")
    p.add_argument("--device", choices=DEVICES, type=_choice(DEVICES),
                   default=_env_default("BENCH_DEVICE", "cpu"),
                   help="default: cpu, or $BENCH_DEVICE")
    p.add_argument("--data", choices=DATA_MODES, type=_choice(DATA_MODES),
                   default=_env_default("BENCH_DATA", "auto"),
                   help="real: the real data sets (error if unavailable); synthetic: seeded "
                        "data of the same shapes; auto: real when cached or downloadable ($BENCH_DATA)")
    p.add_argument("--epochs", type=_bounded(1, MAX_EPOCHS, "epochs of a training task"), default=None,
                   help=f"override the epochs of the training tasks (1 to {MAX_EPOCHS})")
    p.add_argument("--quick", action=_FlagAction, type=_flag,
                   default=_FromEnv("BENCH_QUICK", env["BENCH_QUICK"]) if "BENCH_QUICK" in env else False,
                   help="a few batches, one epoch, a few ResNet batches (minutes on a CPU; "
                        "$BENCH_QUICK=1/true/yes/on)")
    p.add_argument("--repeats", type=_bounded(1, MAX_REPEATS, "repeats of a task"), default=1,
                   help=f"repeat each task (1 to {MAX_REPEATS}); results report the median and the spread")
    p.add_argument("--precision", type=_precision, metavar="{" + ",".join(PRECISIONS) + "}",
                   default=_env_default("BENCH_PRECISION", precisions.DEFAULT),
                   help="; ".join(f"{name}: {precisions.DESCRIPTIONS[name]}" for name in PRECISIONS)
                        + " (default fp32, or $BENCH_PRECISION). A precision the framework cannot run "
                          "on the device gives `skipped` results with the reason (exit 4)")
    p.add_argument("--mode", type=_mode, metavar="{" + ",".join(modes.MODES) + "}",
                   default=_env_default("BENCH_MODE", modes.DEFAULT),
                   help="; ".join(f"{name}: {modes.DESCRIPTIONS[name]}" for name in modes.MODES)
                        + " (default reference, or $BENCH_MODE); every switch of the tuned mode is "
                          "recorded in the result's conventions")
    p.add_argument("--seed", type=_seed, default=0,
                   help=f"base seed, 0 to {SEED_LIMIT - 1}; repeat r uses seed + r")
    p.add_argument("--out", type=_out_dir, default=Path("results"),
                   help="folder for the JSON results (default: results)")


def check_run_arguments(parser: argparse.ArgumentParser, args) -> None:
    """What no single option can check: repeat r runs with seed + r, which must stay a seed."""
    if args.seed + args.repeats - 1 >= SEED_LIMIT:
        parser.error(f"argument --seed: --seed {args.seed} with --repeats {args.repeats} would use seed "
                     f"{args.seed + args.repeats - 1}; seeds must be below 2**32 ({SEED_LIMIT})")


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
    p.set_defaults(run_parser=p)

    sub.add_parser("env", help="the environment record as JSON")

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Commands defined beside the core (sweep, baseline, validate) register here."""
    found = []
    for module_name in ("bench.table", "bench.sweep", "bench.validate", "bench.equivalence", "bench.probe", "bench.compare"):
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
        elif st == "stale" and venvs.marker_unreadable(fw):
            where = f"environment marker unreadable: re-run `python -m bench setup {fw.name}`"
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
    if args.device == "gpu" and os.environ.get("BENCH_IMAGE"):
        # A GPU service on a host without the NVIDIA runtime: say so now, not after the
        # framework loads (R and Julia would not say it as plainly).
        problem = envinfo.container_gpu_problem()
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
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
        precision=args.precision, mode=args.mode, out=args.out, seed=args.seed,
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
            check_run_arguments(args.run_parser, args)
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
