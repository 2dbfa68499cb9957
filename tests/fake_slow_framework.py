"""A test double of a framework whose cell can run until it is killed: the sweep's tests
of signals, timeouts, the folder lock and orphaned cells need a cell that is still
running when they act, and a way to see that it is.

As a framework file (runner module "fake_slow_framework") it is fake_framework's NumPy
double, except that a task named in FAKE_SLOW_HANG (comma-separated task names, or
"all") hangs when its model is built: it first writes FAKE_SLOW_STATE/<task>-r<seed>.json
({"pid", "ppid", "fds": {fd: target}}, written atomically), then sleeps until killed.

As a script it stands in for `python -m bench run ...`: a matrix's executors.local.python
(or executors.slurm.python) can be a wrapper that runs `python fake_slow_framework.py "$@"`.
It takes the same arguments (after `-m bench`) and runs the fake through the real runner,
so the cell leaves a real result. Every start leaves FAKE_SLOW_STATE/started-<task>-r<seed>-<pid>
(when FAKE_SLOW_STATE is set), so a test can tell that no cell ever started.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

import fake_framework as _fake  # noqa: E402
from fake_framework import (  # noqa: E402,F401  (the rest of the framework API, as the fake has it)
    conventions, count_params, data_format, extract_features, init_device, numerics, predict_cnn,
    predict_rnn, set_seed, synchronize, train_cnn_epoch, train_rnn_epoch, versions)

__all__ = ["NAME", "build_cnn", "build_resnet50", "build_rnn", "conventions", "count_params",
           "data_format", "extract_features", "init_device", "numerics", "predict_cnn", "predict_rnn",
           "set_seed", "synchronize", "train_cnn_epoch", "train_rnn_epoch", "versions"]
NAME = "fake-slow"
_SEED = 0


def _hangs(task: str) -> bool:
    chosen = {t.strip() for t in os.environ.get("FAKE_SLOW_HANG", "").split(",") if t.strip()}
    return "all" in chosen or task in chosen


def _state_dir():
    where = os.environ.get("FAKE_SLOW_STATE")
    return Path(where) if where else None


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _open_fds() -> dict:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    return fds


def _maybe_hang(task: str) -> None:
    if not _hangs(task):
        return
    state = _state_dir()
    if state is not None:
        _write_json(state / f"{task}-r{_SEED}.json",
                    {"pid": os.getpid(), "ppid": os.getppid(), "fds": _open_fds()})
    while True:  # until the sweep (or the test) kills it
        time.sleep(3600)


def build_cnn(spec, dev):
    _maybe_hang("cnn")
    return _fake.build_cnn(spec, dev)


def build_rnn(spec, dev):
    _maybe_hang("rnn")
    return _fake.build_rnn(spec, dev)


def build_resnet50(spec, dev):
    _maybe_hang("resnet50")
    return _fake.build_resnet50(spec, dev)


def main(argv) -> int:
    """`fake_slow_framework.py -m bench run --framework X --tasks T ...` as `bench run` would."""
    global _SEED
    sys.modules.setdefault("fake_slow_framework", sys.modules[__name__])  # the runner imports this one
    argv = list(argv)
    if argv[:2] == ["-m", "bench"]:
        argv = argv[2:]
    from bench import cli, runner

    args = cli.build_parser().parse_args(argv)
    if args.command != "run":
        print(f"fake_slow_framework: only `run` is faked, not {args.command!r}", file=sys.stderr)
        return 2
    _SEED = args.seed
    state = _state_dir()
    if state is not None:
        for task in args.tasks:
            (state / f"started-{task}-r{args.seed}-{os.getpid()}").write_text("")
    print(f"fake-slow: pid {os.getpid()}, tasks {','.join(args.tasks)}", flush=True)
    opts = runner.RunOptions(framework=args.framework, module="fake_slow_framework", tasks=args.tasks,
                             device=args.device, data=args.data, quick=args.quick, repeats=args.repeats,
                             precision=args.precision, out=args.out, seed=args.seed)
    code, _ = runner.run(opts, log=lambda m: print(m, flush=True))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
