"""`python -m bench probe`: measure this machine's ceilings and compare them with the floors.

GEMM throughput per precision, device memory bandwidth, and (GPU) host-device copy bandwidth
from pinned memory; one schema-validated doc, probe-<device>-<UTC time>.json, in --out.
Exit 0: healthy or nothing to judge by; 1: a probe below its floor, or a probe failed;
2: usage (a bad option, no array library for the GPU); 3: the device is absent.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import cli, results
from .probes import (DEVICES, FORMAT, PRECISIONS, ProbeDocError, arrays, parse_precisions,
                     run_probes, validation_errors)

GPU_ENVIRONMENT = "pytorch"  # the framework environment whose torch runs the GPU probes


def probe_filename(doc: dict) -> str:
    stamp = doc["started_at"].replace(":", "").replace("-", "")
    return f"probe-{doc['device']}{'-quick' if doc['quick'] else ''}-{stamp}.json"


def write_probe(doc: dict, out_dir: Path) -> Path:
    """Validate doc and write it atomically into out_dir; never overwrites an earlier doc."""
    errors = validation_errors(doc)
    if errors:
        raise ProbeDocError("probe doc does not match the schema: " + "; ".join(errors[:5]))
    path = Path(out_dir) / probe_filename(doc)
    stem, n = path.stem, 1
    while path.exists():
        path = path.with_name(f"{stem}-{n}.json")
        n += 1
    results.write_atomic(path, results.dumps(doc))
    return path


def load_probe(path: Path) -> dict:
    """A probe doc, validated; ProbeDocError (a ValueError) names the file and what is wrong."""
    name = results.printable(path)
    try:
        raw = results._read_regular_file(Path(path), results.MAX_RESULT_BYTES)
        doc = json.loads(raw.decode("utf-8"), parse_constant=results._refuse_constant)
    except results.ResultSchemaError as exc:
        raise ProbeDocError(str(exc)) from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ProbeDocError(f"{name}: not readable JSON: {exc}") from exc
    except RecursionError as exc:
        raise ProbeDocError(f"{name}: nested too deeply to be a probe doc") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProbeDocError(f"{name}: not a probe doc (no \"format\": \"{FORMAT}\")")
    try:
        errors = validation_errors(doc)
    except RecursionError as exc:
        raise ProbeDocError(f"{name}: nested too deeply to be a probe doc") from exc
    if errors:
        raise ProbeDocError(f"{name}: " + "; ".join(errors[:5]))
    return doc


def _precisions(text: str) -> list:
    try:
        return parse_precisions(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _gpu_python() -> Path | None:
    """The pytorch environment's Python, when this one has neither torch nor cupy."""
    if os.environ.get("BENCH_NO_VENV") or arrays.gpu_library_importable():
        return None
    from . import frameworks, venvs

    fw = frameworks.get(GPU_ENVIRONMENT)
    if venvs.in_venv_of(fw) or venvs.state(fw) not in ("ready", "stale"):
        return None
    return frameworks.venv_python(fw)


def _argv(args) -> list:
    argv = ["probe", "--device", args.device, "--out", str(args.out)]
    if args.precision:
        argv += ["--precision", ",".join(args.precision)]
    return argv + (["--quick"] if args.quick else [])


def cmd_probe(args) -> int:
    if args.device == "gpu":
        python = _gpu_python()
        if python is not None:
            print(f"neither torch nor cupy imports in {sys.executable}: running in {python}", flush=True)
            os.execv(str(python), [str(python), "-m", "bench", *_argv(args)])
    try:
        doc = run_probes(args.device, args.precision, quick=args.quick, log=lambda m: print(m, flush=True))
    except arrays.NoDevice as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except arrays.NoLibrary as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        path = write_probe(doc, args.out)
    except OSError as exc:  # results.OutputError says which file and why
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {results.printable(path)}")
    failed = any(entry["status"] == "failed" for entry in doc["probes"])
    return 1 if doc["healthy"] is False or failed else 0


def register(sub) -> None:
    p = sub.add_parser("probe", help="measure GEMM, memory and host-copy ceilings and compare them with "
                                     "the reference floors; non-zero when one is below its floor")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="cpu (NumPy) or gpu (PyTorch or CuPy; an absent GPU is an error, never the CPU)")
    p.add_argument("--precision", type=_precisions, default=None, metavar=",".join(PRECISIONS),
                   help="GEMM precisions, comma-separated (default: fp32,bf16 on a CPU, all four on a GPU); "
                        "one the device or library lacks is skipped with the reason")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes: checks that the probes run, measures no ceiling")
    # A text default goes through the type too: the folder is checked before any probe runs.
    p.add_argument("--out", type=cli._out_dir, default="results",
                   help="folder for the probe doc (default: results)")
    p.set_defaults(handler=cmd_probe)
