"""Frameworks in other languages (R through reticulate, Julia Knet), driven by the harness.

The harness keeps what it owns everywhere: data (written as .npy for the foreign program),
hyperparameters (the sized spec, in a request JSON), checks and the result record. The
foreign program builds the model, trains or infers, times itself (another process cannot
be timed from here) and writes a measurement JSON plus its test logits; the harness checks
parameter counts, shapes and losses, computes accuracy and writes the usual result.
Telemetry (bench/telemetry.py) samples the program's process tree and the GPU from here while it
runs; the program reports its timed sections as Unix times ("timed_windows": [[start, end], ...])
and its framework's peak device memory ("device_memory", as peak_device_memory in a framework file).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import data as data_mod
from . import envinfo, frameworks, modes, precisions, results, runner, tasks, venvs
from . import telemetry as telemetry_mod
from .errors import UnsupportedPrecision

REPO_ROOT = Path(__file__).resolve().parent.parent


def source_root() -> Path:
    """Where r/ and julia/ are: beside the package in a checkout; an image installs the package
    into site-packages and names the folder it copied them to (BENCH_SOURCE_DIR=/opt/bench)."""
    return Path(os.environ.get("BENCH_SOURCE_DIR") or REPO_ROOT)
EXIT_NO_DEVICE_FOREIGN = 3  # the foreign program's exit code for "the device asked for is absent"


class LaunchError(RuntimeError):
    """The foreign toolchain or its environment is missing: a usage error, exit 2."""


def command(fw, request_path: Path) -> tuple[list[str], dict]:
    """The process to start for fw, and its environment."""
    env = dict(os.environ)
    if fw.language == "r":
        rscript = shutil.which(os.environ.get("BENCH_RSCRIPT", "Rscript"))
        if not rscript:
            raise LaunchError(
                "r-keras needs R: Rscript is not on PATH. Install R with reticulate and jsonlite "
                "(Debian: apt-get install --no-install-recommends r-base-core r-cran-reticulate "
                "r-cran-jsonlite) or use the container: docker compose run bench-r-keras")
        tf = frameworks.get("tensorflow")
        python = frameworks.venv_python(tf)
        if os.environ.get("BENCH_NO_VENV"):
            python = Path(sys.executable)  # in the image, TensorFlow is in this Python
        elif venvs.state(tf) not in ("ready", "stale"):
            raise LaunchError(
                f"r-keras drives TensorFlow's Python environment through reticulate, and there is none "
                f"at {frameworks.venv_path(tf)}: run `python -m bench setup tensorflow` first")
        env["RETICULATE_PYTHON"] = str(python)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return [rscript, "--vanilla", str(source_root() / "r" / "bench.R"), str(request_path)], env
    if fw.language == "julia":
        julia = shutil.which(os.environ.get("BENCH_JULIA", "julia"))
        if not julia:
            raise LaunchError(
                "knet needs Julia (with Knet, CUDA.jl, JSON3 and NPZ: julia/Project.toml) and no "
                "`julia` is on PATH (or in $BENCH_JULIA). Julia cannot be installed on every machine; "
                "the container has it: docker compose run bench-knet")
        project = source_root() / "julia"
        return [julia, f"--project={project}", str(project / "bench.jl"), str(request_path)], env
    raise LaunchError(f"{fw.name}: no launcher for language {fw.language!r}")


def epoch_orders(n: int, epochs: int, seed: int) -> np.ndarray:
    """The harness's shuffle for a foreign program: row e is epoch e's order of the n training
    samples (epochs x n, int64). It is the Python frameworks' shuffle call for call (runner.Epochs:
    data_mod.shuffled once per epoch, in order, with default_rng(seed)), so epoch e's batches are
    x[row e] in consecutive slices, the same batches a Python framework trains on."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n, dtype=np.int64)
    return np.stack([data_mod.shuffled(ids, ids, rng)[0] for _ in range(epochs)])


def write_request(spec, task_data, device: str, precision: str, seed: int, folder: Path,
                  mode: str = modes.DEFAULT) -> Path:
    arrays = {}
    for name in ("x_train", "y_train", "x_test", "y_test"):
        value = getattr(task_data, name)
        if value is not None:
            path = folder / f"{name}.npy"
            np.save(path, value)
            arrays[name] = str(path)
    request = {
        "task": spec.name, "device": device, "precision": precision, "mode": mode, "seed": seed,
        "spec": tasks.hyperparameters(spec), "arrays": arrays, "layout": "NCHW",
        "measurement": str(folder / "measurement.json"), "logits": str(folder / "logits.npy"),
    }
    if task_data.x_train is not None:
        path = folder / "epoch_orders.npy"
        np.save(path, epoch_orders(len(task_data.x_train), spec.epochs, seed))
        request["epoch_orders"] = str(path)
    path = folder / "request.json"
    path.write_text(json.dumps(request, indent=2))
    return path


def _seconds(value, what: str) -> float:
    """A time the foreign program reported: a finite number >= 0, else the task fails."""
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise runner.FidelityError(f"the program reported {what} = {value!r}, not a time")
    return seconds


def check_measurement(m: dict, spec, task_data, folder: Path,
                      precision: str = precisions.DEFAULT) -> runner.Measurement:
    """The foreign program's report, held to the same rules as a Python framework's."""
    params = int(m["params"])
    if params not in spec.expected_params:
        expected = " or ".join(f"{p:,}" for p in spec.expected_params)
        raise runner.FidelityError(f"{spec.name}: {params:,} trainable parameters; TASKS.md says {expected}")
    if spec.name == "resnet50":
        if list(m["features_shape"]) != [spec.batch_size, spec.features]:
            raise runner.FidelityError(f"resnet50 features have shape {m['features_shape']}")
        if m.get("features_dtype") != "float32":  # TASKS.md: fp32 features whatever the compute precision
            raise runner.FidelityError(f"resnet50 features are {m.get('features_dtype')!r}; TASKS.md asks for "
                                       "float32 features whatever the compute precision")
        images = int(m["images"])
        elapsed = _seconds(m["time_total_s"], "time_total_s")
        first = m.get("first_batch_s")  # the program's first warm-up batch, where it times it
        cold_start = {"first_batch_s": _seconds(first, "first_batch_s") if first is not None else None,
                      "steady_batch_s": elapsed / (images // spec.batch_size) if images >= spec.batch_size else None}
        return runner.Measurement(time_total_s=elapsed, params=params, samples={"images": images},
                                  cold_start=cold_start)
    losses = [float(x) for x in m["losses"]]
    bad = [x for x in losses if not math.isfinite(x)]
    if bad:
        raise runner.NonFiniteLoss(f"{spec.name}: training loss became {bad[0]} at precision {precision}")
    logits = np.load(folder / "logits.npy")
    if logits.shape != (len(task_data.x_test), spec.classes):
        raise runner.FidelityError(f"{spec.name} logits have shape {logits.shape}, "
                                   f"expected {(len(task_data.x_test), spec.classes)}")
    accuracy = None
    if task_data.kind == "real":
        accuracy = float(np.mean(np.argmax(logits, axis=1) == task_data.y_test))
    epochs = [_seconds(t, "an epoch time") for t in m["epoch_times_s"]]
    return runner.Measurement(time_total_s=sum(epochs), epoch_times_s=epochs, accuracy=accuracy,
                              final_loss=losses[-1], params=params, cold_start=runner.training_cold_start(epochs),
                              samples={"train": len(task_data.x_train) * spec.epochs,
                                       "test": len(task_data.x_test)})


def run(fw, args) -> int:
    try:
        telemetry_mod.settings()  # a bad BENCH_TELEMETRY* value is a usage error, before any work
    except telemetry_mod.TelemetryError as exc:
        raise LaunchError(str(exc)) from None
    mode = getattr(args, "mode", modes.DEFAULT)
    runner.prepare_environment(args.precision)  # the program's environment: TF32 allowed only in tf32
    env_record = envinfo.capture()
    code, records = runner.EXIT_OK, []
    for task in args.tasks:
        spec = tasks.sized(task, args.device, args.quick, args.epochs)
        record = runner.base_record(fw.name, task, args.device, args.precision, args.quick, spec,
                                    dict(env_record), mode)
        monitor = None
        try:
            with tempfile.TemporaryDirectory(prefix=f"bench-{fw.name}-") as tmp:
                folder = Path(tmp)
                task_data = data_mod.task_data(spec, args.data, True, args.seed, log=print)
                record["data"], record["data_source"] = task_data.kind, task_data.source
                runs = []
                monitor = telemetry_mod.for_run(args.device, foreign=True)
                for r in range(args.repeats):
                    request = write_request(spec, task_data, args.device, args.precision, args.seed + r, folder,
                                            mode)
                    cmd, env = command(fw, request)
                    print(f"[{fw.name} {task}] {' '.join(cmd)}", flush=True)
                    proc = subprocess.Popen(cmd, env=env, cwd=source_root(), stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)
                    started = monitor.watch(proc.pid)
                    output, _ = proc.communicate()
                    ended = monitor.unwatch()
                    sys.stdout.write(output)
                    measurement_path = folder / "measurement.json"
                    m = json.loads(measurement_path.read_text()) if measurement_path.exists() else {}
                    if isinstance(m, dict):
                        monitor.program_report(m.get("timed_windows"), m.get("device_memory"),
                                               started, ended, fw.name)
                    if proc.returncode == 0 and m.get("skipped"):  # the program has no path for it
                        raise UnsupportedPrecision(str(m["skipped"]))
                    if proc.returncode != 0 or m.get("error"):
                        record["log_tail"] = "\n".join(output.splitlines()[-30:])
                        if proc.returncode == EXIT_NO_DEVICE_FOREIGN:
                            code = runner.EXIT_NO_DEVICE
                        raise RuntimeError(m.get("error") or f"{cmd[0]} exited with code {proc.returncode}")
                    runs.append(check_measurement(m, spec, task_data, folder, args.precision))
                    problems = precisions.check_state(args.precision, args.device,
                                                      (m.get("conventions") or {}).get("precision"))
                    if problems:
                        raise runner.PrecisionMismatch(f"{task}: {fw.name} was asked for {args.precision} "
                                                       f"and reports {'; '.join(problems)}")
                    runner.checked_mode(fw.name, task, m.get("conventions"), mode)
                    record["framework_version"] = m.get("framework_version")
                    record["conventions"] = m.get("conventions")
                    record["env"].update({k: m.get(k) for k in ("cuda", "cudnn") if m.get(k)})
                    record["env"].update(m.get("env") or {})
                    if args.device == "gpu" and m.get("gpu"):
                        record["device_name"] = m["gpu"]
                record["telemetry"] = monitor.finish()
                runner.fill_measurements(record, task, task_data.kind, runs)
        except LaunchError:
            raise
        except UnsupportedPrecision as exc:  # skipped with the reason: not a failure, not a fall-back
            record["status"], record["error"] = "skipped", f"UnsupportedPrecision: {exc}"
            code = runner.EXIT_SKIPPED if code == runner.EXIT_OK else code
            print(f"[{fw.name} {task}] SKIPPED: {exc}", flush=True)
        except Exception as exc:  # one task failing never stops the others
            record["status"] = runner.classify_failure(exc)
            record["error"] = f"{type(exc).__name__}: {exc}"
            code = code if code == runner.EXIT_NO_DEVICE else runner.EXIT_TASK_FAILED
            print(f"[{fw.name} {task}] {record['status'].upper()}: {record['error']}", flush=True)
        if monitor is not None and "telemetry" not in record:  # stop the sampler whatever happened
            telemetry = monitor.finish()
            if record["status"] != "skipped":  # a skipped task ran nothing worth describing
                record["telemetry"] = telemetry
        record["finished_at"] = results.now_iso()
        if not runner.write_task_result(record, args.out, lambda m: print(m, flush=True)):
            code = code if code != runner.EXIT_OK else runner.EXIT_TASK_FAILED
        records.append(record)
    print()
    print(runner.summary_table(records))
    return code
