"""Runs the tasks of one Python framework in this process: data, timing, records.

The framework module supplies only framework code (see bench/frameworks/pytorch.py for
the sections every framework file has); everything timed or written happens here.
"""
from __future__ import annotations

import importlib
import math
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import data as data_mod
from . import envinfo, flops, hardware, modes, precisions, results, stats, tasks
from . import telemetry as telemetry_mod
from .errors import DeviceUnavailable, UnsupportedPrecision


class FidelityError(RuntimeError):
    """The model breaks the task contract (wrong parameter count or output shape)."""


class NonFiniteLoss(FloatingPointError):
    pass


class PrecisionMismatch(RuntimeError):
    """The framework's reported numerics are not the precision the run is labelled with."""


class ModeMismatch(RuntimeError):
    """The framework's conventions report another mode than the one the run is labelled with."""


class NonFiniteMeasurement(FloatingPointError):
    """A measured figure (a time, an accuracy, a loss) is NaN or infinite: never a result."""


EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_NO_DEVICE, EXIT_SKIPPED = 0, 1, 2, 3, 4


# ---------------------------------------------------------------- progress

class Progress:
    """Throttled progress lines (task, epoch, batch, elapsed) on stderr."""

    def __init__(self, label: str, total: int, interval_s: float = 10.0, stream=None):
        self.label, self.total, self.interval_s = label, total, interval_s
        self.stream = stream or sys.stderr
        self.start = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last >= self.interval_s:
            self.last = now
            print(f"  {self.label}: batch {done}/{self.total}, {now - self.start:.1f} s",
                  file=self.stream, flush=True)


class Epoch:
    """One epoch's shuffled training data, handed to the framework's train function.

    Iterate it for (x, y) mini-batches (complete batches only), or take .x and .y whole
    (Keras-style fit) and call .batch_done(i) from a per-batch callback for progress.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, progress: Progress):
        self.x, self.y, self.batch_size, self.progress = x, y, batch_size, progress
        self.num_batches = len(x) // batch_size

    def __iter__(self):
        for i, (xb, yb) in enumerate(data_mod.minibatches(self.x, self.y, self.batch_size), 1):
            yield xb, yb
            self.progress.update(i)

    def __len__(self) -> int:
        return self.num_batches

    def batch_done(self, index: int) -> None:
        self.progress.update(index)


class Epochs:
    """Every epoch of one training run, for a framework that drives them all in one call
    (Keras: one fit() over all epochs). The harness still owns the clock and the shuffle:

    - begin(e) synchronises the device and starts epoch e's clock (e counts from 0, in order);
    - batch(i) is batch i of the epoch being served; the framework's data source calls it, in
      order, once per batch. Once epoch 0 has begun, the k-th batch served is batch
      k % num_batches of epoch k // num_batches, however far the framework reads ahead (Keras on
      TensorFlow prefetches the next epoch's first batches while this epoch's last steps run).
      A batch of an epoch whose shuffled copy is made is a view into it, as Epoch's batches are;
      a batch read ahead into the next epoch, before end() made that epoch's copy, is gathered on
      its own from that epoch's order (a one-batch copy, inside the clock of the epoch that reads
      it; read_ahead counts them). A batch asked for out of order is a FidelityError. Batches
      asked for before epoch 0 begins are looks at epoch 0's data (Keras reads one or two to
      learn their shapes before it trains) and do not count;
    - end(e, mean_loss) synchronises, stops the clock, checks that the epoch's batches were all
      served and that the loss is finite (NonFiniteLoss), logs the epoch line, then makes the
      next epoch's shuffled copy, outside the clock;
    - batch_done(i) reports progress (batch() already does, for the batches it serves).

    The epochs' orders are drawn first, with the per-epoch loop's calls (data_mod.shuffled once
    per epoch, in order, from the same seeded generator), and an epoch's copy is x[order], the
    per-epoch loop's shuffled arrays: both paths train on the same batches. measure_training
    calls finish() when the framework returns: not every epoch begun and ended is a FidelityError.
    A telemetry (bench/telemetry.py) is told each epoch's section, outside its clock.
    """

    def __init__(self, fw, dev, spec, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, log,
                 precision: str = precisions.DEFAULT, telemetry=None):
        self.fw, self.dev, self.spec, self.log, self.precision = fw, dev, spec, log, precision
        self.telemetry = telemetry or telemetry_mod.Off()
        self.count, self.batch_size = spec.epochs, spec.batch_size
        self.num_batches = len(x) // spec.batch_size
        self.times: list = []
        self.losses: list = []
        ids = np.arange(len(x))
        self.orders = [data_mod.shuffled(ids, ids, rng)[0] for _ in range(self.count)]
        self.read_ahead: dict = {}  # epoch: how many of its batches were gathered before its copy
        self._x_all, self._y_all = x, y
        self._lock = threading.Lock()  # batch() may be called from the framework's input threads
        self._open = None  # the epoch begun and not yet ended
        self._start = 0.0
        self._begun = False
        self._served = 0  # batches served since epoch 0 began
        self._progress = None
        self._staged, self._x, self._y = 0, x[self.orders[0]], y[self.orders[0]]  # before any clock

    def _label(self, epoch: int) -> str:
        return f"[{self.fw.NAME} {self.spec.name}] epoch {epoch + 1}/{self.count}"

    def _order_error(self, call: str, epoch: int) -> FidelityError:
        now = (f"epoch index {self._open} is open" if self._open is not None
               else f"{len(self.times)} of {self.count} epochs have ended")
        return FidelityError(f"{self.spec.name}: {self.fw.NAME} called {call}({epoch}) out of order "
                             f"({now}); each epoch 0..{self.count - 1} is begun and ended once, in order")

    def begin(self, epoch: int) -> None:
        with self._lock:
            if self._open is not None or epoch != len(self.times) or epoch >= self.count:
                raise self._order_error("begin", epoch)
            self._open, self._begun = epoch, True
            self._progress = Progress(self._label(epoch), self.num_batches)
        self.fw.synchronize(self.dev)
        self.telemetry.begin()
        self._start = time.perf_counter()

    def batch(self, index: int):
        """(x, y) of batch `index` of the epoch being served."""
        index = int(index)
        progress, epoch = None, 0
        with self._lock:
            if self._begun:
                epoch, expected = divmod(self._served, self.num_batches)
                if index != expected:
                    raise FidelityError(
                        f"{self.spec.name}: {self.fw.NAME} asked for batch {index} where batch {expected} "
                        f"of epoch {epoch + 1} comes next: the harness's batches are read in order, once each "
                        "(is the framework shuffling them itself?)")
                if epoch < self.count:
                    self._served += 1
                    progress = self._progress if epoch == self._open else None
                else:  # read ahead past the last epoch: never trained, not counted
                    epoch = self.count - 1
            elif not 0 <= index < self.num_batches:
                raise FidelityError(f"{self.spec.name}: batch {index} asked for; there are {self.num_batches}")
            start, stop = index * self.batch_size, (index + 1) * self.batch_size
            if epoch == self._staged:
                xb, yb = self._x[start:stop], self._y[start:stop]
            else:  # read ahead into the next epoch before end() made its copy
                rows = self.orders[epoch][start:stop]
                xb, yb = self._x_all[rows], self._y_all[rows]
                self.read_ahead[epoch] = self.read_ahead.get(epoch, 0) + 1
        if progress is not None:
            progress.update(index + 1)
        return xb, yb

    def batch_done(self, index: int) -> None:
        if self._progress is not None:
            self._progress.update(index)

    def end(self, epoch: int, mean_loss) -> None:
        if self._open != epoch:
            raise self._order_error("end", epoch)
        self.fw.synchronize(self.dev)
        elapsed = time.perf_counter() - self._start
        self.telemetry.end()
        with self._lock:
            self._open = None
            read = min(self._served - epoch * self.num_batches, self.num_batches)
        if read < self.num_batches:
            raise FidelityError(f"{self.spec.name}: epoch {epoch + 1} read {read} of its "
                                f"{self.num_batches} batches from the harness")
        loss = float(mean_loss)
        self.times.append(elapsed)
        self.losses.append(loss)
        if not math.isfinite(loss):
            raise _non_finite_loss(self.spec, loss, epoch + 1, self.precision)
        self.log(f"{self._label(epoch)}: {elapsed:.2f} s, mean loss {loss:.4f}")
        if epoch + 1 < self.count:  # the next epoch's shuffled copy, outside the clock
            order = self.orders[epoch + 1]
            x, y = self._x_all[order], self._y_all[order]
            with self._lock:
                self._staged, self._x, self._y = epoch + 1, x, y

    def finish(self) -> None:
        """The framework returned: it must have begun and ended every epoch."""
        if self._open is not None or len(self.times) != self.count:
            unended = f"; epoch {self._open + 1} was begun and never ended" if self._open is not None else ""
            raise FidelityError(f"{self.spec.name}: {self.fw.NAME}'s train_{self.spec.name}_epochs drove "
                                f"{len(self.times)} of {self.count} epochs{unended}")


def batches_of(x: np.ndarray, batch_size: int):
    """Consecutive complete batches of inputs alone (prediction)."""
    for start in range(0, len(x) - batch_size + 1, batch_size):
        yield x[start:start + batch_size]


# ---------------------------------------------------------------- framework access

TRAINING_API = {
    "cnn": ("build_cnn", "train_cnn_epoch", "predict_cnn"),
    "rnn": ("build_rnn", "train_rnn_epoch", "predict_rnn"),
}
# All epochs in one call, through an Epochs (Keras: one fit() over all epochs). A framework file
# defines train_<task>_epoch, train_<task>_epochs or both; measure_training prefers the latter.
EPOCHS_API = {"cnn": "train_cnn_epochs", "rnn": "train_rnn_epochs"}
REQUIRED_API = (
    "NAME", "data_format", "init_device", "set_seed", "synchronize", "versions", "count_params",
    "conventions", "numerics", "build_cnn", "predict_cnn", "build_rnn", "predict_rnn", "build_resnet50",
    "extract_features",
)


def load_framework(module_name: str):
    """Import a framework file; a missing framework is a clear error, not a traceback."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"cannot import {module_name}: {exc}. Is this framework installed in this "
            f"Python ({sys.executable})? `python -m bench setup NAME` creates its environment."
        ) from exc
    missing = [name for name in REQUIRED_API if not hasattr(module, name)]
    for task, (_, one_epoch, _) in TRAINING_API.items():
        if not hasattr(module, one_epoch) and not hasattr(module, EPOCHS_API[task]):
            missing.append(f"{one_epoch} (or {EPOCHS_API[task]})")
    if missing:
        raise AttributeError(f"{module_name} lacks {', '.join(missing)}")
    return module


# ---------------------------------------------------------------- measuring

@dataclass
class Measurement:
    """One repeat of one task."""

    time_total_s: float
    epoch_times_s: list | None = None
    accuracy: float | None = None
    final_loss: float | None = None
    samples: dict = field(default_factory=dict)
    params: int | None = None
    numerics: dict | None = None  # what the framework set for the precision (precisions.state)
    cold_start: dict | None = None  # the first epoch (batch) apart from the steady ones


def _check_params(task: str, params: int, spec) -> None:
    if params not in spec.expected_params:
        expected = " or ".join(f"{p:,}" for p in spec.expected_params)
        raise FidelityError(f"{task}: {params:,} trainable parameters; TASKS.md says {expected}")


def _check_shape(what: str, array, expected: tuple) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != expected:
        raise FidelityError(f"{what} has shape {array.shape}, expected {expected}")
    return array


def checked_numerics(fw, task: str, model, dev, precision: str, device: str) -> dict:
    """The framework's report of what it set for the precision, held to that precision: a run
    labelled amp-bf16 that computes in fp32 (or fp32 with TF32 on) is an error, never a result."""
    reported = fw.numerics(task, model, dev)
    problems = precisions.check_state(precision, device, reported)
    if problems:
        raise PrecisionMismatch(f"{task}: {fw.NAME} was asked for {precision} and reports "
                                f"{'; '.join(problems)}")
    return reported


def checked_mode(name: str, task: str, conventions: dict, mode: str) -> None:
    """A framework's report of its mode (conventions["mode"], modes.state) held to the mode asked
    for: a run labelled tuned that ran the reference code is an error, never a result."""
    problems = modes.check_state(mode, (conventions or {}).get("mode"))
    if problems:
        raise ModeMismatch(f"{task}: {name} was asked for mode {mode} and reports {'; '.join(problems)}")


def training_cold_start(epoch_times: list) -> dict:
    """The first epoch (compilation, autotuning, caches) apart from the steady epochs after it:
    a fast path is never a win bought by hiding its compile time, nor a loss caused by it."""
    steady = epoch_times[1:]
    return {"first_epoch_s": float(epoch_times[0]),
            "steady_epoch_s": float(np.median(steady)) if steady else None,
            "steady_epochs": len(steady)}


def _non_finite_loss(spec, loss, epoch: int, precision: str) -> NonFiniteLoss:
    hint = (" (under amp-fp16: the loss scaler did not keep the fp16 values finite)"
            if precision == "amp-fp16" else "")
    return NonFiniteLoss(f"{spec.name}: training loss became {loss} in epoch {epoch} "
                         f"at precision {precision}{hint}")


DRIVES = ("auto", "per-epoch", "all-epochs")


def measure_training(fw, dev, spec, task_data, seed: int, log, drive: str = "auto",
                     precision: str = precisions.DEFAULT, device: str = "cpu", telemetry=None) -> Measurement:
    """Train and time every epoch, then predict. `drive` "auto" hands all epochs to the framework's
    train_<task>_epochs through an Epochs where it has one (the harness keeps the clock at the
    epoch boundaries), else calls its train_<task>_epoch once per epoch; "per-epoch" and
    "all-epochs" force one or the other (benchmarks/keras_epoch_timing.py compares them).
    telemetry (bench/telemetry.py) samples beside each epoch's clock."""
    telemetry = telemetry or telemetry_mod.Off()
    if drive not in DRIVES:
        raise ValueError(f"drive must be one of {', '.join(DRIVES)}, got {drive!r}")
    build_name, epoch_name, predict_name = TRAINING_API[spec.name]
    build, predict = getattr(fw, build_name), getattr(fw, predict_name)
    train_all = getattr(fw, EPOCHS_API[spec.name], None)
    if drive == "all-epochs" and train_all is None:
        raise AttributeError(f"{fw.NAME} has no {EPOCHS_API[spec.name]}")
    all_at_once = train_all is not None and drive != "per-epoch"
    fw.set_seed(seed)
    model = build(spec, dev)
    params = int(fw.count_params(model))
    _check_params(spec.name, params, spec)
    numerics = checked_numerics(fw, spec.name, model, dev, precision, device)
    rng = np.random.default_rng(seed)
    epoch_times, loss = [], None
    if all_at_once:
        epochs = Epochs(fw, dev, spec, task_data.x_train, task_data.y_train, rng, log, precision, telemetry)
        train_all(model, epochs, spec)  # what it returns is not used: end() was handed each loss
        epochs.finish()
        epoch_times, loss = epochs.times, epochs.losses[-1]
    else:
        train_epoch = getattr(fw, epoch_name)
        for epoch in range(spec.epochs):
            x, y = data_mod.shuffled(task_data.x_train, task_data.y_train, rng)
            label = f"[{fw.NAME} {spec.name}] epoch {epoch + 1}/{spec.epochs}"
            batches = Epoch(x, y, spec.batch_size, Progress(label, len(x) // spec.batch_size))
            fw.synchronize(dev)
            telemetry.begin()
            start = time.perf_counter()
            loss = train_epoch(model, batches, spec)
            fw.synchronize(dev)
            epoch_times.append(time.perf_counter() - start)
            telemetry.end()
            loss = float(loss)
            if not math.isfinite(loss):
                raise _non_finite_loss(spec, loss, epoch + 1, precision)
            log(f"{label}: {epoch_times[-1]:.2f} s, mean loss {loss:.4f}")
    logits = predict(model, task_data.x_test, spec)
    logits = _check_shape(f"{spec.name} logits", logits, (len(task_data.x_test), spec.classes))
    accuracy = None
    if task_data.kind == "real":
        accuracy = float(np.mean(np.argmax(logits, axis=1) == task_data.y_test))
    return Measurement(
        time_total_s=float(sum(epoch_times)), epoch_times_s=epoch_times, accuracy=accuracy,
        final_loss=loss, params=params, numerics=numerics, cold_start=training_cold_start(epoch_times),
        samples={"train": len(task_data.x_train) * spec.epochs, "test": len(task_data.x_test)},
    )


def check_features(features, spec) -> np.ndarray:
    """ResNet-50 features: the task's shape, and fp32 whatever the compute precision (TASKS.md)."""
    features = _check_shape("resnet50 features", features, (spec.batch_size, spec.features))
    if features.dtype != np.float32:
        raise FidelityError(f"resnet50 features are {features.dtype}; TASKS.md asks for float32 "
                            "features whatever the compute precision")
    return features


def measure_inference(fw, dev, spec, task_data, seed: int, log,
                      precision: str = precisions.DEFAULT, device: str = "cpu", telemetry=None) -> Measurement:
    telemetry = telemetry or telemetry_mod.Off()
    fw.set_seed(seed)
    model = fw.build_resnet50(spec, dev)
    params = int(fw.count_params(model))
    _check_params(spec.name, params, spec)
    numerics = checked_numerics(fw, spec.name, model, dev, precision, device)
    batches = list(batches_of(task_data.x_test, spec.batch_size))
    warmup, timed = batches[: spec.warmup_batches], batches[spec.warmup_batches:]
    fw.synchronize(dev)
    first_batch_s = None
    first_start = time.perf_counter()
    for i, batch in enumerate(warmup):  # cold start: autotuning, graph build, JIT
        fw.extract_features(model, batch)
        if i == 0:  # the first batch, compilation included, is kept apart from the timed ones
            fw.synchronize(dev)
            first_batch_s = time.perf_counter() - first_start
    fw.synchronize(dev)
    progress = Progress(f"[{fw.NAME} resnet50]", len(timed))
    features = None
    telemetry.begin()
    start = time.perf_counter()
    for i, batch in enumerate(timed, 1):
        features = fw.extract_features(model, batch)
        progress.update(i)
    fw.synchronize(dev)
    elapsed = time.perf_counter() - start
    telemetry.end()
    check_features(features, spec)
    images = len(timed) * spec.batch_size
    log(f"[{fw.NAME} resnet50] {images} images in {elapsed:.2f} s")
    cold_start = {"first_batch_s": first_batch_s,
                  "steady_batch_s": float(elapsed / len(timed)) if timed else None}
    return Measurement(time_total_s=elapsed, params=params, samples={"images": images}, numerics=numerics,
                       cold_start=cold_start)


# ---------------------------------------------------------------- records

def classify_failure(exc: BaseException) -> str:
    text = f"{type(exc).__name__} {exc}".lower()
    if "out of memory" in text or "outofmemory" in text or "resourceexhausted" in text:
        return "oom"
    return "failed"


def base_record(framework: str, task: str, device: str, precision: str, quick: bool,
                spec, env: dict, mode: str = modes.DEFAULT) -> dict:
    return {
        "schema_version": results.SCHEMA_VERSION,
        "framework": framework,
        "framework_version": None,
        "task": task,
        "device": device,
        "device_name": env.get("gpu") if device == "gpu" else env.get("cpu"),
        "precision": precision,
        "mode": mode,
        "data": None,  # not loaded yet: set to the kind of data the task actually loaded
        "data_source": None,
        "quick": quick,
        "params": None,
        "status": "failed",
        "error": None,
        "epoch_times_s": None,
        "time_total_s": None,
        "throughput": None,
        "seconds_per_1000": None,
        "accuracy": None,
        "final_loss": None,
        "samples": None,
        "repeats": [],
        "stats": None,
        "hyperparameters": tasks.hyperparameters(spec) if spec else {},
        "conventions": None,
        "env": env,
        "git_commit": envinfo.git_commit(),
        "started_at": results.now_iso(),
        "finished_at": results.now_iso(),
    }


def check_finite(task: str, runs: list) -> None:
    """Every measured figure of every repeat is a finite number (NonFiniteMeasurement if not):
    a NaN time or accuracy is a failed task, never an ok result."""
    for r, m in enumerate(runs, 1):
        figures = [("time_total_s", m.time_total_s), ("accuracy", m.accuracy), ("final_loss", m.final_loss)]
        figures += [(f"epoch {i} time", t) for i, t in enumerate(m.epoch_times_s or [], 1)]
        figures += [(f"cold_start {name}", t) for name, t in (m.cold_start or {}).items()
                    if name != "steady_epochs"]
        for name, value in figures:
            if value is not None and not math.isfinite(float(value)):
                raise NonFiniteMeasurement(f"{task}: repeat {r} measured {name} = {value}; "
                                           "a figure that is not a finite number is never a result")
        if not m.time_total_s > 0:  # throughput is samples / time: a zero time is no measurement
            raise NonFiniteMeasurement(f"{task}: repeat {r} measured time_total_s = {m.time_total_s}; "
                                       "a time must be more than zero")


def fill_measurements(record: dict, task: str, data_kind: str, runs: list[Measurement]) -> dict:
    """Median over repeats (the median repeat's epochs), spread in stats, status ok.
    NonFiniteMeasurement (the record untouched) if any measured figure is NaN or infinite."""
    check_finite(task, runs)
    totals = [m.time_total_s for m in runs]
    order = np.argsort(totals)
    median_run = runs[int(order[(len(runs) - 1) // 2])]
    samples = median_run.samples.get("images") if task == "resnet50" else median_run.samples.get("train")
    throughputs = [samples / t for t in totals]
    record.update(
        status="ok",
        error=None,
        data=data_kind,
        params=median_run.params,
        epoch_times_s=median_run.epoch_times_s if task != "resnet50" else None,
        time_total_s=float(np.median(totals)),
        throughput=float(np.median(throughputs)),
        seconds_per_1000=(1000.0 * float(np.median(totals)) / samples) if task == "resnet50" else None,
        accuracy=median_run.accuracy if data_kind == "real" else None,
        final_loss=median_run.final_loss,
        samples=median_run.samples,
        repeats=[
            {"time_total_s": m.time_total_s, "epoch_times_s": m.epoch_times_s,
             "accuracy": m.accuracy if data_kind == "real" else None, "final_loss": m.final_loss}
            for m in runs
        ],
        stats={"time_total_s": stats.summarize(totals), "throughput": stats.summarize(throughputs)},
    )
    if median_run.cold_start is not None:
        record["cold_start"] = median_run.cold_start
    if median_run.numerics is not None:  # what was set for the precision, beside the other conventions
        record["conventions"] = dict(record.get("conventions") or {}, precision=median_run.numerics)
    add_flops(record)
    return record


def add_flops(record: dict) -> None:
    """Achieved FLOP/s of the compared time and, where the device's peak for the precision is
    known (bench/hardware.py), the fraction of it (MFU); the reason where it is not."""
    if not (record.get("device") and record.get("precision") and record.get("hyperparameters")):
        return  # not a task run's record (a test's partial one): nothing to count by
    try:
        peak = hardware.peak_flops(record["device"], record.get("device_name"), record["precision"],
                                   record.get("env"))
        flops.annotate(record, peak)
    except ValueError as exc:  # a FLOP count is never worth failing a measured task over
        print(f"warning: {record['task']}: no FLOP figures: {exc}", file=sys.stderr)


# ---------------------------------------------------------------- the run

def write_task_result(record: dict, out: Path, log) -> bool:
    """Write one task's result; a failed write (a full disk, a read-only folder) is logged and
    the run goes on with the next task. False if it was not written."""
    try:
        path = results.write_result(record, out)
    except (OSError, results.ResultSchemaError) as exc:  # results.OutputError names file and reason
        why = exc.strerror if isinstance(exc, results.OutputError) and exc.strerror else exc
        log(f"error: could not write the {record['task']} result: {why}")
        return False
    log(f"[{record['framework']} {record['task']}] wrote {path}")
    return True


@dataclass
class RunOptions:
    framework: str
    module: str
    tasks: list
    device: str = "cpu"
    data: str = "auto"
    quick: bool = False
    epochs: int | None = None
    repeats: int = 1
    precision: str = "fp32"
    mode: str = modes.DEFAULT
    out: Path = Path("results")
    seed: int = 0
    data_dir: Path | None = None


def prepare_environment(precision: str, environ=None) -> None:
    """Before a framework is imported: NVIDIA's libraries may use TF32 only in a tf32 run
    (NVIDIA_TF32_OVERRIDE=0 forbids it in cuBLAS and cuDNN, beside each framework's own switch)."""
    environ = os.environ if environ is None else environ
    precisions.check_name(precision)
    if precision == "tf32":
        environ.pop(precisions.TF32_OVERRIDE_VARIABLE, None)
    else:
        environ[precisions.TF32_OVERRIDE_VARIABLE] = "0"


def run(opts: RunOptions, log=print) -> tuple[int, list[dict]]:
    """Run every task; write one result per task; return (exit code, records)."""
    env = envinfo.capture()
    records: list[dict] = []
    exit_code = EXIT_OK

    def failed_all(exc: BaseException, status: str) -> None:
        for task in opts.tasks:
            spec = tasks.sized(task, opts.device, opts.quick, opts.epochs)
            rec = base_record(opts.framework, task, opts.device, opts.precision, opts.quick, spec, env,
                              opts.mode)
            rec.update(status=status, error=f"{type(exc).__name__}: {exc}", finished_at=results.now_iso())
            records.append(rec)
            write_task_result(rec, opts.out, log)

    try:
        telemetry_mod.settings()  # a bad BENCH_TELEMETRY* value is a usage error, before any work
    except telemetry_mod.TelemetryError as exc:
        log(f"error: {exc}")
        return EXIT_USAGE, records
    try:
        prepare_environment(opts.precision)
        fw = load_framework(opts.module)
        dev = fw.init_device(opts.device, opts.precision, opts.mode)
        versions = fw.versions(dev)
    except DeviceUnavailable as exc:
        log(f"error: {exc}")
        failed_all(exc, "failed")
        return EXIT_NO_DEVICE, records
    except UnsupportedPrecision as exc:  # not a failure and never a run at another precision
        log(f"skipped: {exc}")
        failed_all(exc, "skipped")
        return EXIT_SKIPPED, records
    except Exception as exc:  # the framework would not even start: every task failed
        log(f"error: {type(exc).__name__}: {exc}")
        failed_all(exc, classify_failure(exc))
        return EXIT_TASK_FAILED, records

    env.update({k: versions.get(k) for k in ("cuda", "cudnn")})
    if opts.device == "gpu" and versions.get("gpu"):
        env["gpu"] = env["gpu"] or versions["gpu"]
    channel_first = fw.data_format(dev) == "NCHW"

    for task in opts.tasks:
        spec = tasks.sized(task, opts.device, opts.quick, opts.epochs)
        record = base_record(opts.framework, task, opts.device, opts.precision, opts.quick, spec, env,
                             opts.mode)
        record["framework_version"] = versions.get("framework_version")
        if opts.device == "gpu":
            record["device_name"] = versions.get("gpu") or env.get("gpu")
        record["conventions"] = fw.conventions(task, dev)
        monitor = None
        try:
            checked_mode(fw.NAME, task, record["conventions"], opts.mode)
            task_data = data_mod.task_data(spec, opts.data, channel_first, opts.seed,
                                           opts.data_dir, log=log)
            record["data"], record["data_source"] = task_data.kind, task_data.source
            log(f"[{opts.framework} {task}] data: {task_data.kind} ({task_data.source})")
            measure = measure_inference if task == "resnet50" else measure_training
            monitor = telemetry_mod.for_run(opts.device, device_memory=_device_memory(fw, dev))
            runs = [measure(fw, dev, spec, task_data, opts.seed + r, log, precision=opts.precision,
                            device=opts.device, telemetry=monitor) for r in range(opts.repeats)]
            record["telemetry"] = monitor.finish()
            fill_measurements(record, task, task_data.kind, runs)
        except Exception as exc:  # one task failing never stops the others
            record["status"] = classify_failure(exc)
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["log_tail"] = "".join(traceback.format_exc().splitlines(True)[-12:])
            log(f"[{opts.framework} {task}] {record['status'].upper()}: {record['error']}")
            exit_code = EXIT_TASK_FAILED
            if monitor is not None and "telemetry" not in record:  # what was seen up to the failure
                record["telemetry"] = monitor.finish()
        record["finished_at"] = results.now_iso()
        if not write_task_result(record, opts.out, log):
            exit_code = EXIT_TASK_FAILED if exit_code == EXIT_OK else exit_code
        records.append(record)
    return exit_code, records


def _device_memory(fw, dev):
    """The framework file's peak device memory counter (section 1), for the telemetry."""
    peak = getattr(fw, "peak_device_memory", None)
    return None if peak is None else (lambda: peak(dev))


def summary_table(records: list[dict]) -> str:
    rows = [("framework", "task", "device", "mode", "data", "status", "params", "time s", "first s",
             "steady s", "per epoch s",
             "throughput/s", "s/1000 img", "accuracy", "GFLOP/s", "MFU", "peak RSS GiB")]
    for r in records:
        epochs = r.get("epoch_times_s") or []
        achieved = (r.get("flops") or {}).get("achieved_flops_per_s")
        mfu = (r.get("flops") or {}).get("mfu")
        rss = (r.get("telemetry") or {}).get("host_memory_peak_bytes")
        cold = r.get("cold_start") or {}
        rows.append((
            r["framework"], r["task"], r["device"], modes.of(r), r.get("data") or "-", r["status"],
            f"{r['params']:,}" if r.get("params") is not None else "-",
            _fmt(r.get("time_total_s")),
            _fmt(cold.get("first_epoch_s", cold.get("first_batch_s"))),
            _fmt(cold.get("steady_epoch_s", cold.get("steady_batch_s"))),
            _fmt(float(np.median(epochs))) if epochs else "-",
            _fmt(r.get("throughput"), 1),
            _fmt(r.get("seconds_per_1000")),
            _fmt(r.get("accuracy"), 4),
            _fmt(achieved / 1e9 if achieved else None, 1),
            f"{100 * mfu:.0f} %" if mfu is not None else "-",
            _fmt(rss / 2 ** 30 if rss else None),
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
