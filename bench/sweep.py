"""`python -m bench sweep matrix.yaml --executor local|docker|slurm --out DIR`.

Every cell (framework x variant x GPU type x task x precision x mode x repeat) runs one
`python -m bench run` and leaves DIR/<cell id>.json. Resume by default; failures are
isolated; an ok result is never replaced by a worse one.

What the sweep guarantees, whatever happens to it:
- SIGINT, SIGTERM and SIGHUP are handled alike: the handler only records the signal and
  kills the running cell (its process group, its container, its Slurm jobs); the main loop
  looks at the record after each cell and before the next one, so no signal is lost and
  no cell starts after one. The cell is recorded as interrupted and the next run resumes it.
- A local cell never outlives its sweep, even a SIGKILLed one (PR_SET_PDEATHSIG).
- One sweep at a time writes into a results folder (flock on DIR/.sweep.lock, held by
  the sweep and by its running cell; the OS releases it when they die).
- Every file the sweep writes from a name lies inside DIR.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

from . import cli, envinfo, frameworks, matrix as matrix_mod, modes, results, runner, tasks

REPO_ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL_LINES = 40
LOCK_NAME = ".sweep.lock"
# A cell's temporary results folder: hidden (results.load_results never reads hidden
# folders), and named so that the next sweep can tell a dead sweep's leftovers.
TEMP_PREFIX = ".sweep-tmp."
SLURM_DIR = ".slurm"
SLURM_CMD_TIMEOUT_S = 120
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
PR_SET_PDEATHSIG = 1


class PathError(ValueError):
    """A name would make the sweep write outside its results folder."""


class ExecutorError(RuntimeError):
    """The executor cannot go on (its queue cannot be read); the message says why."""


class CellOutputError(Exception):
    """A cell's result or log cannot be written: the sweep stops (the next cells could not
    be written either)."""

    def __init__(self, cell_id: str, exc: OSError):
        super().__init__(cell_id, exc)
        self.cell_id, self.message = cell_id, exc.strerror or str(exc)

    def __str__(self) -> str:
        return f"cell {self.cell_id}: {self.message}"


# ---------------------------------------------------------------- paths inside --out

def check_cell_id(cell_id: str) -> str:
    """A cell id is a file name in DIR: no '/', no '..', no control character."""
    bad = None
    if not cell_id:
        bad = "it is empty"
    elif "/" in cell_id or "\\" in cell_id:
        bad = "it contains a '/' (or '\\')"
    elif ".." in cell_id:
        bad = "it contains '..'"
    elif _has_control(cell_id):
        bad = "it contains a control character"
    elif len(cell_id.encode("utf-8", "surrogateescape")) > 200:
        bad = "it is longer than 200 bytes"
    if bad:
        raise PathError(f"cell id {cell_id!r}: {bad}, so it cannot name a file in the results "
                        "folder; rename the framework, variant or GPU type in the matrix")
    return cell_id


def inside(out: Path, *names: str) -> Path:
    """out/names..., refused (PathError) unless every name is one plain path component and
    the path resolves (links followed) inside out."""
    for name in names:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise PathError(f"{name!r} is not a plain file name: the sweep writes only inside "
                            f"{results.printable(out)}")
    path = Path(out).joinpath(*names)
    base, real = os.path.realpath(out), os.path.realpath(path)
    if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
        raise PathError(f"{results.printable(path)} resolves to {results.printable(real)}, outside the "
                        f"results folder {results.printable(base)}; the sweep writes only inside it")
    return path


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029" for c in text)


@contextlib.contextmanager
def cell_temp(out: Path, cell, mode: int | None = None):
    """A hidden temporary folder inside out for one cell's results, removed afterwards (a
    killed sweep's leftovers are removed by the next sweep: remove_leftovers)."""
    inside(out, f"{TEMP_PREFIX}{check_cell_id(cell.id)}.x")
    try:
        tmp = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{cell.id}.", dir=str(out))
        if mode is not None:
            os.chmod(tmp, mode)
    except OSError as exc:
        raise CellOutputError(cell.id, results.output_error(Path(out) / f"{TEMP_PREFIX}{cell.id}", exc))
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_leftovers(out: Path, cells=()) -> list[str]:
    """Remove the temporary folders a killed sweep left in out. Only called while holding
    the folder's lock, so no live sweep (nor a live cell of one) owns them."""
    old_prefixes = tuple(f".{c.id}." for c in cells)  # the prefix of earlier versions
    removed = []
    try:
        entries = list(os.scandir(out))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(TEMP_PREFIX) or name.startswith(old_prefixes)):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(name)
    return removed


# ---------------------------------------------------------------- signals

class Stop:
    """What the sweep's signal handlers saw. The handler records the first signal and kills
    the running local cell's process group; nothing else happens inside a handler (no I/O,
    no exception raised into whatever code the signal landed in)."""

    def __init__(self):
        self.signum = None  # the first signal's number
        self.pgid = None    # the running local cell's process group
        self._old = {}

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except (ValueError, TypeError):
            return f"signal {self.signum}"

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            try:
                old = signal.getsignal(signum)
                if old == signal.SIG_IGN:
                    continue  # started ignoring it (nohup, a script's background job): keep that
                signal.signal(signum, self._handle)
                self._old[signum] = old
            except (ValueError, OSError):  # not the main thread: the defaults stay
                pass

    def restore(self) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        self.kill_cell()

    def kill_cell(self) -> None:
        pgid = self.pgid
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:  # already gone
                pass

    def started(self, pid: int) -> None:
        """A local cell's process (a group leader) is running: a signal from now on kills it,
        and one that came in between the check and the start kills it now."""
        self.pgid = pid
        if self.signum is not None:
            self.kill_cell()

    def ended(self) -> None:
        self.pgid = None

    def wait(self, seconds: float) -> bool:
        """Sleep up to seconds; True as soon as a signal came."""
        deadline = time.monotonic() + seconds
        while self.signum is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.1))
        return True

    def error(self) -> str:
        return f"interrupted ({self.name}): run the sweep again to resume"


# ---------------------------------------------------------------- the folder's lock

class LockBusy(Exception):
    def __init__(self, path: Path, holder: dict | None):
        super().__init__(path, holder)
        self.path, self.holder = path, holder

    def __str__(self) -> str:
        h = self.holder or {}
        if not h.get("pid"):
            who = "another sweep (it has not yet written who it is)"
        else:
            who = (f"another sweep: pid {h.get('pid')} on host {h.get('host', '?')}, started "
                   f"{h.get('started_at', '?')}, command: {h.get('command', '?')}")
            running = [r.get("cell") for r in h.get("running") or [] if isinstance(r, dict)]
            if running:
                who += f"; running {', '.join(map(str, running))}"
        return (f"the results folder {results.printable(self.path.parent)} is in use by {who}. "
                "Wait for it to finish (or stop it), or choose another --out")


def read_holder(path: Path) -> dict | None:
    """The holder info in a lock file (None if there is none yet). Written in place, so a
    reader may see trailing bytes of an earlier, longer version: only the first JSON value
    counts."""
    try:
        text = Path(path).read_text(errors="replace")
        value, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class SweepLock:
    """flock(LOCK_EX|LOCK_NB) on OUT/.sweep.lock, with who holds it written inside. The lock
    belongs to the open file, so a cell that inherits the descriptor holds it too; the OS
    drops it when the last holder dies, SIGKILL included."""

    def __init__(self, out: Path):
        self.path = inside(out, LOCK_NAME)
        self.fd = None
        self.info = {}

    def acquire(self) -> None:
        import fcntl

        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockBusy(self.path, read_holder(self.path)) from None
            raise
        self.fd = fd
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": results.now_iso(),
                     "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "bench", *sys.argv[1:]]),
                     "running": []}
        self._write()

    def update(self, **changes) -> None:
        if self.fd is not None:
            self.info.update(changes)
            self._write()

    def _write(self) -> None:
        data = (json.dumps(self.info) + "\n").encode("utf-8", "backslashreplace")
        try:
            os.pwrite(self.fd, data, 0)
            os.ftruncate(self.fd, len(data))
        except OSError:
            pass  # who holds the lock is a courtesy; the lock itself holds

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # also releases the flock (unless a live cell still holds it)
            self.fd = None


class Context:
    """What an executor needs of the running sweep."""

    def __init__(self, out: Path, logs: Path, stop: Stop | None = None, lock: SweepLock | None = None):
        self.out, self.logs = Path(out), Path(logs)
        self.stop = stop or Stop()
        self.lock = lock

    @property
    def pass_fds(self) -> tuple:
        return (self.lock.fd,) if self.lock is not None and self.lock.fd is not None else ()

    def running(self, entries: list) -> None:
        if self.lock is not None:
            self.lock.update(running=entries)

    def log_path(self, cell) -> Path:
        return inside(self.out, self.logs.name, f"{check_cell_id(cell.id)}.log")


# ---------------------------------------------------------------- records

def existing(out: Path, cell) -> dict | None:
    path = inside(out, f"{check_cell_id(cell.id)}.json")
    if not path.exists():
        return None
    try:
        record = results.load_result(path)
    except results.ResultSchemaError:
        return None  # a damaged file counts as not done; it is replaced
    if modes.of(record) != cell.mode:
        return None  # another mode's result under this cell's name (copied in): not this cell's
    return record


def was_interrupted(record: dict | None) -> bool:
    return bool(record) and bool((record.get("cell") or {}).get("interrupted"))


def cell_info(cell, executor: str, **extra) -> dict:
    info = {"id": cell.id, "variant": cell.variant, "gpu_type": cell.gpu, "repeat": cell.repeat,
            "executor": executor}
    info.update({k: v for k, v in extra.items() if v is not None})
    return info


def failure_record(cell, executor: str, status: str, error: str, log_tail: str | None, **extra) -> dict:
    spec = tasks.sized(cell.task, cell.device, cell.quick)
    rec = runner.base_record(cell.framework, cell.task, cell.device, cell.precision, cell.quick, spec,
                             envinfo.capture(), mode=cell.mode)
    rec.update(status=status, error=error, log_tail=log_tail, cell=cell_info(cell, executor, **extra))
    return rec


def interrupted_record(cell, executor: str, stop: Stop, log_text: str = "", **extra) -> dict:
    return failure_record(cell, executor, "failed", stop.error(), tail(log_text) if log_text else None,
                          interrupted=True, **extra)


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def store(out: Path, cell, record: dict) -> str:
    """Write the cell's record; an ok result already there is never replaced by a worse one.
    Raises results.OutputError when it cannot be written."""
    name = f"{check_cell_id(cell.id)}.json"
    inside(out, name)
    old = existing(out, cell)
    if old is not None and old["status"] == "ok" and record["status"] != "ok":
        attempt = f"{cell.id}-{record['started_at'].replace(':', '')}.json"
        path = inside(out, "attempts", attempt)
        results.write_result(record, path.parent, attempt)
        return "kept the earlier ok result; this attempt is under attempts/"
    results.write_result(record, out, name)
    return record["status"]


def _seconds(value) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value}"


def timeout_error(timeout) -> str:
    return f"timed out after {_seconds(timeout)} s (executors timeout_s / --timeout)"


def collect(cell, executor: str, cell_out: Path, returncode: int | None, log_text: str,
            error: str | None = None, status: str | None = None, **extra) -> dict:
    """The result a cell's run left in cell_out, or a record saying why there is none.
    status: what the executor knows happened ("timeout"); else a run that wrote nothing
    is "oom" when its log says it ran out of memory or it was SIGKILLed (the OOM killer),
    else "failed"."""
    found = sorted(cell_out.glob("*.json")) if cell_out.exists() else []
    if error is None and found:
        try:
            record = results.load_result(found[0])
        except results.ResultSchemaError as exc:
            error = f"the run wrote an invalid result: {exc}"
        else:
            ran = modes.of(record)
            if ran == cell.mode:
                record["cell"] = cell_info(cell, executor, **extra)
                if record["status"] != "ok" and not record.get("log_tail"):
                    record["log_tail"] = tail(log_text)
                return record
            # Never kept as this cell's figure: a tuned cell's reference run would count as
            # tuned (an image built before the mode axis ignores BENCH_MODE).
            error = (f"the run recorded mode {ran!r}, the cell asked for {cell.mode!r}: its `bench run` "
                     "does not take the mode (rebuild the image: python -m bench.images build)")
    if error is None:
        error = f"the run exited with code {returncode} and wrote no result"
    if status is None:
        status = "oom" if "out of memory" in log_text.lower() or returncode == -signal.SIGKILL else "failed"
    return failure_record(cell, executor, status, error, tail(log_text), **extra)


def run_args(cell, data: str, out_dir: str, mode_flag: bool = True) -> list[str]:
    """`bench run`'s arguments for the cell. --mode always (never left to a $BENCH_MODE the
    sweep inherited), except where the mode travels as BENCH_MODE (mode_flag False: the docker
    executor, as compose.yml's services)."""
    args = ["run", "--framework", cell.framework, "--tasks", cell.task, "--device", cell.device,
            "--precision", cell.precision]
    args += ["--mode", cell.mode] if mode_flag else []
    args += ["--data", data, "--seed", str(cell.repeat), "--out", out_dir]
    return args + (["--quick"] if cell.quick else [])


def cell_timeout(m, args):
    """--timeout, else the matrix's timeout_s, else None; a finite number of seconds > 0."""
    value = getattr(args, "timeout", None)
    if value is None:
        value = m.doc.get("timeout_s")
        where = f"{m.path}: timeout_s{m.line('timeout_s')}"
    else:
        where = "--timeout"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise matrix_mod.MatrixError(f"{where} must be a number of seconds greater than 0, got {value!r}")
    return value


# ---------------------------------------------------------------- executors

def _find_prctl():
    """libc's prctl, looked up before any fork (never inside a child)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, ImportError):
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


def die_with_parent():
    """A preexec_fn: the child gets SIGKILL when the sweep dies (it survives the exec into
    the framework's Python), and exits at once if the sweep already died before that was
    set. Only for a parent without threads (the local executor has none)."""
    prctl, parent = _find_prctl(), os.getpid()

    def preexec() -> None:
        if prctl is not None and prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            os.write(2, b"bench sweep: prctl(PR_SET_PDEATHSIG) failed; not starting the cell\n")
            os._exit(126)
        if os.getppid() != parent:
            os._exit(1)  # the sweep died between the fork and the prctl

    return preexec


class LocalExecutor:
    """Each cell in the framework's virtual environment (`bench setup`), one after another."""

    name = "local"

    def __init__(self, m, args):
        self.python = m.executor("local").get("python") or sys.executable
        self.data, self.timeout = getattr(args, "data", None) or m.doc.get("data", "auto"), cell_timeout(m, args)

    def run(self, cell, ctx: Context) -> dict:
        fw = frameworks.get(cell.framework)
        if not fw.runs_here:
            return failure_record(cell, self.name, "skipped", f"{fw.name}: {fw.note}", None)
        log_path = ctx.log_path(cell)
        with cell_temp(ctx.out, cell) as tmp:
            cmd = [str(self.python), "-m", "bench", *run_args(cell, self.data, str(tmp))]
            try:
                log = open(log_path, "w")
            except OSError as exc:
                raise CellOutputError(cell.id, results.output_error(log_path, exc))
            with log:
                try:
                    proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            pass_fds=ctx.pass_fds, preexec_fn=die_with_parent())
                except (OSError, subprocess.SubprocessError) as exc:
                    return failure_record(cell, self.name, "failed",
                                          f"cannot start {self.python}: {getattr(exc, 'strerror', None) or exc}",
                                          None)
                error = status = None
                ctx.stop.started(proc.pid)
                try:
                    ctx.running([{"cell": cell.id, "pid": proc.pid}])
                    try:
                        returncode = proc.wait(timeout=self.timeout)
                    except subprocess.TimeoutExpired:
                        _killpg(proc.pid)
                        returncode = proc.wait()
                        status, error = "timeout", timeout_error(self.timeout)
                finally:
                    if proc.returncode is None:  # leaving on an error: the cell does not stay behind
                        _killpg(proc.pid)
                        proc.wait()
                    ctx.stop.ended()
                    ctx.running([])
            log_text = _read_log(log_path)
            if ctx.stop.signum is not None and returncode < 0:  # killed by the sweep's handler
                return interrupted_record(cell, self.name, ctx.stop, log_text)
            return collect(cell, self.name, tmp, returncode, log_text, error, status)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _read_log(path: Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


class Interrupted(Exception):
    """A signal came while waiting for a container."""


def wait_for_exit(container, timeout: float | None, poll_s: float = 1.0, stop: Stop | None = None) -> int:
    """The container's exit code, polled once a second. Not the engine's wait call: podman
    4.3's API service (Debian 12) spins a whole core while it waits (podman issue 18150),
    which on a small machine slowed the timed run inside the container several times over.
    Raises TimeoutError at the timeout, Interrupted as soon as the sweep got a signal."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if stop is not None and stop.signum is not None:
            raise Interrupted(stop.name)
        container.reload()
        if container.status in ("exited", "dead"):
            return int(container.attrs["State"]["ExitCode"])
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"still running after {timeout:.0f} s (timeout_s)")
        if stop is not None:
            stop.wait(poll_s)
        else:
            time.sleep(poll_s)


def _quietly(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Exception:
        return None


class DockerExecutor:
    """Each cell in its image bench-<framework>:<variant> through the Docker Engine API
    (the `docker` SDK; podman's compatible socket works too: DOCKER_HOST=unix://...)."""

    name = "docker"

    def __init__(self, m, args, client=None):
        conf = m.executor("docker")
        self.prefix = conf.get("image_prefix", "bench-")
        self.data_volume = conf.get("data_volume", "bench-data")
        self.base_url = conf.get("base_url")
        self.data, self.timeout = getattr(args, "data", None) or m.doc.get("data", "auto"), cell_timeout(m, args)
        self.gpus = m.gpus
        self._client = client
        self.poll_s = 1.0

    @property
    def client(self):
        if self._client is None:
            import docker

            self._client = docker.DockerClient(base_url=self.base_url) if self.base_url else docker.from_env()
        return self._client

    def image(self, cell) -> str:
        return f"{self.prefix}{cell.framework}:{cell.variant}"

    def run_kwargs(self, cell, results_dir: Path) -> dict:
        """The containers.run arguments of one cell (unit-tested without an engine)."""
        import docker

        kwargs = {
            "image": self.image(cell),
            # The entrypoint is `bench run`; the mode is BENCH_MODE, as in compose.yml (an image
            # without the mode axis then runs and is caught by collect, never a usage error).
            "command": run_args(cell, self.data, "/results", mode_flag=False)[1:],
            "volumes": {self.data_volume: {"bind": "/data", "mode": "rw"},
                        str(results_dir): {"bind": "/results", "mode": "rw"}},
            "environment": {"BENCH_NO_VENV": "1", "BENCH_DATA_DIR": "/data", "BENCH_MODE": cell.mode},
            "detach": True,
            "labels": {"bench.cell": cell.id},
        }
        if cell.device == "gpu":
            ids = self.gpus[cell.gpu].get("docker_device_ids")
            kwargs["device_requests"] = [docker.types.DeviceRequest(
                device_ids=[str(i) for i in ids], capabilities=[["gpu"]]) if ids else
                docker.types.DeviceRequest(count=1, capabilities=[["gpu"]])]
        return kwargs

    def run(self, cell, ctx: Context) -> dict:
        log_path = ctx.log_path(cell)
        with cell_temp(ctx.out, cell, mode=0o777) as tmp:  # the image runs as a non-root user
            error = status = returncode = None
            interrupted = False
            kwargs = self.run_kwargs(cell, tmp)
            # The image id goes into each result (the container cannot see it itself).
            image_id = _quietly(lambda: self.client.images.get(kwargs["image"]).id)
            if isinstance(image_id, str):
                kwargs["environment"]["BENCH_IMAGE_DIGEST"] = image_id
            try:
                container = self.client.containers.run(**kwargs)
            except Exception as exc:  # no image, no engine, no GPU runtime
                return failure_record(cell, self.name, "failed", f"container did not start: {exc}", None,
                                      image=self.image(cell))
            ctx.running([{"cell": cell.id, "container": getattr(container, "id", None)}])
            try:
                returncode = wait_for_exit(container, self.timeout, self.poll_s, ctx.stop)
                if (getattr(container, "attrs", None) or {}).get("State", {}).get("OOMKilled"):
                    status = "oom"
            except Interrupted:
                interrupted = True
                _quietly(container.kill)
            except TimeoutError:
                status, error = "timeout", timeout_error(self.timeout)
                _quietly(container.kill)
            except Exception as exc:
                error = f"container did not finish: {exc}"
                _quietly(container.kill)
            finally:
                ctx.running([])
                raw = _quietly(container.logs)
                log_text = raw.decode(errors="replace") if isinstance(raw, bytes) else ""
                _quietly(container.remove, force=True)
            try:
                log_path.write_text(log_text)
            except OSError as exc:
                raise CellOutputError(cell.id, results.output_error(log_path, exc))
            if interrupted:
                return interrupted_record(cell, self.name, ctx.stop, log_text, image=self.image(cell))
            return collect(cell, self.name, tmp, returncode, log_text, error, status, image=self.image(cell))


def sbatch_value(where: str, value, single: bool = True) -> str:
    """A value that goes into an `#SBATCH` line of a job script: no newline or other control
    character (it would start a line of the script that bash runs), and for a single value
    (gres, constraint, partition, time) no blank (it would add another sbatch option)."""
    text = str(value)
    if _has_control(text):
        raise matrix_mod.MatrixError(f"{where} {text!r} contains a newline or another control character; "
                                     "it would go into an #SBATCH line of the job script")
    if not text.strip():
        raise matrix_mod.MatrixError(f"{where} is empty")
    if single and any(c.isspace() for c in text):
        raise matrix_mod.MatrixError(f"{where} {text!r} contains a blank; it is one value of one "
                                     "sbatch option (use executors.slurm.extra_args for more options)")
    return text


def shell_words(argv) -> str:
    """argv as one line of shell words that bash splits back into exactly argv."""
    return " ".join(shlex.quote(str(a)) for a in argv)


class SlurmExecutor:
    """One sbatch job per cell, GPU type mapped to GRES or a constraint; polled to the end."""

    name = "slurm"

    def __init__(self, m, args):
        conf = m.executor("slurm")
        self.conf, self.gpus = conf, m.gpus
        self.runner = conf.get("runner", "venv")
        try:
            self.poll_s = float(conf.get("poll_s", 10))
        except (TypeError, ValueError):
            self.poll_s = float("nan")
        if not math.isfinite(self.poll_s) or self.poll_s <= 0:
            raise matrix_mod.MatrixError(f"executors.slurm.poll_s must be a number of seconds > 0, "
                                         f"got {conf.get('poll_s')!r}")
        self.data = getattr(args, "data", None) or m.doc.get("data", "auto")
        self.python = conf.get("python") or sys.executable
        self.prefix = conf.get("image_prefix", "bench-")
        self.scripts = {}
        self.header_options()  # every #SBATCH value is checked before anything is submitted
        for name in self.gpus:
            self.gpu_options(name)
        if not shutil.which("sbatch"):
            raise matrix_mod.MatrixError("--executor slurm needs sbatch on PATH (a Slurm client); "
                                         "scripts/slurm-cluster starts a one-node cluster for tests")

    def header_options(self) -> list[str]:
        options = []
        for key in ("partition", "time"):
            if self.conf.get(key) is not None:
                options.append(f"--{key}={sbatch_value(f'executors.slurm.{key}', self.conf[key])}")
        extra = self.conf.get("extra_args") or []
        if not isinstance(extra, (list, tuple)):
            raise matrix_mod.MatrixError("executors.slurm.extra_args must be a list of sbatch options")
        for i, arg in enumerate(extra):
            options.append(sbatch_value(f"executors.slurm.extra_args[{i}]", arg, single=False))
        return options

    def gpu_options(self, gpu_name: str) -> list[str]:
        gpu = self.gpus[gpu_name] or {}
        options = []
        for key in ("gres", "constraint"):
            if gpu.get(key) is not None:
                options.append(f"--{key}={sbatch_value(f'gpus.{gpu_name}.{key}', gpu[key])}")
        return options

    def image(self, cell) -> str:
        return f"{self.prefix}{cell.framework}:{cell.variant}"

    def command(self, cell, cell_out: Path) -> list[str]:
        """The job's command as argv: every value a separate word, whatever it contains."""
        inside_args = run_args(cell, self.data, "/results")  # the command inside a container
        if self.runner == "venv":
            return [str(self.python), "-m", "bench", *run_args(cell, self.data, str(cell_out))]
        mount = str(cell_out)
        if ":" in mount or "," in mount:
            raise matrix_mod.MatrixError(f"{self.runner} cannot mount {results.printable(mount)}: its mount "
                                         "syntax has no room for a ':' or ',' (in --out or a cell id)")
        if self.runner == "podman":  # the image's entrypoint is `python3 -m bench run`
            dev = ["--device", "nvidia.com/gpu=all"] if cell.device == "gpu" else []
            return ["podman", "run", "--rm", *dev, "-v", f"{mount}:/results", "-v", "bench-data:/data",
                    self.image(cell), *inside_args[1:]]
        if self.runner == "apptainer":
            nv = ["--nv"] if cell.device == "gpu" else []
            return ["apptainer", "exec", *nv, "--bind", f"{mount}:/results",
                    f"docker-daemon://{self.image(cell)}", "python3", "-m", "bench", *inside_args]
        return ["srun", f"--container-image={self.image(cell)}", f"--container-mounts={mount}:/results",
                "python3", "-m", "bench", *inside_args]  # pyxis/enroot

    def script(self, cell, cell_out: Path, log_path: Path | None = None) -> str:
        """The job script: #SBATCH lines of checked values, then the command with every word
        quoted. The job name and the log path go on sbatch's command line (sbatch_argv)."""
        lines = ["#!/bin/bash", "#SBATCH --ntasks=1"]
        lines += [f"#SBATCH {o}" for o in self.gpu_options(cell.gpu) + self.header_options()]
        body = []
        if self.runner == "venv":
            body.append(f"cd {shlex.quote(str(REPO_ROOT))} || exit 1")
        body.append("exec " + shell_words(self.command(cell, cell_out)))
        return "\n".join(lines + body) + "\n"

    @staticmethod
    def sbatch_argv(cell, script: Path, log_path: Path) -> list[str]:
        log = str(log_path)
        if "\\" in log:
            raise matrix_mod.MatrixError(f"--out {results.printable(log)}: Slurm's --output cannot hold a '\\'")
        return ["sbatch", "--parsable", f"--job-name=bench-{cell.id}",
                f"--output={log.replace('%', '%%')}", str(script)]  # %: Slurm's filename patterns

    def prepare(self, cells, ctx: Context) -> None:
        """Build every job script before the first is submitted: a value that cannot go into
        one is refused (MatrixError) with nothing submitted."""
        work = inside(ctx.out, SLURM_DIR)
        self.scripts = {}
        for cell in cells:
            check_cell_id(cell.id)
            cell_out = inside(work, cell.id)
            script = inside(work, f"{cell.id}.sh")
            log_path = ctx.log_path(cell)
            self.scripts[cell.id] = (cell_out, script, self.script(cell, cell_out, log_path),
                                     self.sbatch_argv(cell, script, log_path))

    def run_all(self, cells, ctx: Context, report) -> None:
        if set(self.scripts) != {c.id for c in cells}:
            self.prepare(cells, ctx)
        stop, jobs, pending = ctx.stop, {}, {}
        work = inside(ctx.out, SLURM_DIR)
        failures = 0
        try:
            for cell in cells:
                if stop.signum is not None:
                    break  # a signal before a job is submitted: it is never submitted
                cell_out, script, text, argv = self.scripts[cell.id]
                try:
                    work.mkdir(exist_ok=True)
                    shutil.rmtree(cell_out, ignore_errors=True)
                    cell_out.mkdir(parents=True)
                    script.write_text(text)
                except OSError as exc:
                    raise CellOutputError(cell.id, results.output_error(script, exc))
                proc = _slurm(argv)
                if proc.returncode != 0:
                    report(cell, failure_record(cell, self.name, "failed",
                                                f"sbatch refused the job: {proc.stderr.strip()}", None))
                    continue
                job_id = proc.stdout.strip().split(";")[0]
                jobs[job_id] = pending[job_id] = cell
                ctx.running([{"cell": c.id, "slurm_job_id": j} for j, c in pending.items()])
                print(f"[slurm] submitted {cell.id} as job {job_id}", flush=True)
            while pending and stop.signum is None:
                if stop.wait(self.poll_s):
                    break
                queued = self._queued(list(pending))
                if queued is None:
                    failures += 1
                    if failures >= 30:
                        raise ExecutorError(f"squeue failed {failures} times in a row; the sweep stops "
                                            "(its jobs are cancelled)")
                    continue
                failures = 0
                for job_id in [j for j in pending if j not in queued]:
                    cell = pending.pop(job_id)
                    ctx.running([{"cell": c.id, "slurm_job_id": j} for j, c in pending.items()])
                    report(cell, self._finished(cell, job_id, ctx))
                if pending:
                    states = sorted(set(queued.values()))
                    print(f"[slurm] {len(pending)} job(s) in the queue: {', '.join(states)}", flush=True)
        finally:
            if pending:  # interrupted, or the sweep cannot go on: no job outlives it
                _slurm(["scancel", *pending])
                ctx.running([])
        if stop.signum is not None:
            for job_id, cell in pending.items():
                info = self._job_info(job_id)
                if info.get("JobState") == "COMPLETED" and list(inside(work, cell.id).glob("*.json")):
                    report(cell, self._finished(cell, job_id, ctx, info))
                    continue
                log_text = _read_log(ctx.log_path(cell))
                report(cell, interrupted_record(cell, self.name, stop, log_text, slurm_job_id=job_id,
                                                slurm_state=info.get("JobState") or "CANCELLED"))

    def _finished(self, cell, job_id: str, ctx: Context, info: dict | None = None) -> dict:
        info = self._job_info(job_id) if info is None else info
        cell_out = inside(ctx.out, SLURM_DIR, cell.id)
        log_text = _read_log(ctx.log_path(cell))
        state = info.get("JobState", "UNKNOWN")
        status = error = None
        if state == "TIMEOUT":
            status, error = "timeout", (f"Slurm job {job_id} ended TIMEOUT: it reached its time limit "
                                        "(executors.slurm.time)")
        elif state != "COMPLETED" and not list(cell_out.glob("*.json")):
            error = f"Slurm job {job_id} ended {state} ({info.get('Reason', '')})"
            if state == "OUT_OF_MEMORY":
                status = "oom"
        return collect(cell, self.name, cell_out, None, log_text, error, status,
                       slurm_job_id=job_id, slurm_state=state,
                       slurm_tres=info.get("AllocTRES") or info.get("TRES"),
                       slurm_gres=info.get("TresPerNode") or info.get("Gres"))

    @staticmethod
    def _queued(job_ids) -> dict | None:
        """Job id -> state of the jobs still in the queue; None when squeue failed."""
        proc = _slurm(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"])
        if proc.returncode != 0:
            if "invalid job id" in proc.stderr.lower():
                return {}  # every one of them has left the queue
            return None
        out = {}
        for line in proc.stdout.splitlines():
            job, _, state = line.strip().partition(" ")
            if state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"):
                out[job] = state
        return out

    @staticmethod
    def _job_info(job_id: str) -> dict:
        proc = _slurm(["scontrol", "show", "job", "-o", job_id])
        info = {}
        for field in proc.stdout.split():
            key, _, value = field.partition("=")
            info.setdefault(key, value)
        return info


def _slurm(argv) -> subprocess.CompletedProcess:
    """A Slurm client command, in its own session (a Ctrl-C at the terminal reaches only the
    sweep, which then cancels its jobs), bounded in time; a failure to run it is a failed
    CompletedProcess."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=SLURM_CMD_TIMEOUT_S,
                              start_new_session=True, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess(list(argv), 1, "", f"{argv[0]} did not run: {exc}")


EXECUTOR_CLASSES = {"local": LocalExecutor, "docker": DockerExecutor, "slurm": SlurmExecutor}


# ---------------------------------------------------------------- the sweep

def plan(cells, out: Path, args):
    """(to run, [(already done, its status)]). An interrupted cell is to run, like one
    without a result."""
    todo, done = [], []
    for cell in cells:
        old = existing(out, cell)
        if (args.force or old is None or was_interrupted(old)
                or (args.rerun_failed and old["status"] != "ok")):
            todo.append(cell)
        else:
            done.append((cell, old["status"]))
    return todo, done


def out_problem(out: Path, create: bool) -> str | None:
    """Why out cannot be the results folder (created if create), or None."""
    if out.exists() and not out.is_dir():
        return f"--out {results.printable(out)} is a file, not a folder"
    if not create:
        return None
    return results.folder_problem(out)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def cmd_sweep(args) -> int:
    try:
        m = matrix_mod.load(args.matrix)
        cells = m.cells(args.executor, args.frameworks, args.variants, args.gpus, args.tasks,
                        True if args.quick else None, only_precisions=getattr(args, "precisions", None),
                        repeats=getattr(args, "repeats", None), only_modes=getattr(args, "modes", None))
        for cell in cells:
            check_cell_id(cell.id)
        executor = EXECUTOR_CLASSES[args.executor](m, args)
    except (matrix_mod.MatrixError, PathError) as exc:
        _error(str(exc))
        return 2
    out = Path(os.path.abspath(str(args.out)))
    problem = out_problem(out, create=not args.dry_run)
    if problem:
        _error(problem)
        return 2
    lock = None
    if not args.dry_run:
        try:
            lock = SweepLock(out)
            lock.acquire()
        except (LockBusy, PathError) as exc:
            _error(str(exc))
            return 2
        except OSError as exc:
            _error(f"cannot lock {results.printable(out / LOCK_NAME)}: {exc.strerror or exc}")
            return 2
    try:
        return _sweep(args, cells, executor, out, lock)
    finally:
        if lock is not None:
            lock.release()


def _sweep(args, cells, executor, out: Path, lock: SweepLock | None) -> int:
    if lock is not None:
        for name in remove_leftovers(out, cells):
            print(f"removed {name}: a temporary folder of a sweep that was killed")
    try:
        todo, done = plan(cells, out, args)
    except PathError as exc:
        _error(str(exc))
        return 2
    print(f"sweep {args.matrix} on {args.executor}: {len(cells)} cells, {len(done)} already done "
          f"(resume), {len(todo)} to run -> {out}")
    for cell, status in done:
        print(f"  skip {cell.id} ({status} result present)")
    for cell in todo:
        print(f"  run  {cell.id}")
    if args.dry_run or not todo:
        return 0
    try:
        logs = inside(out, "logs")
        logs.mkdir(exist_ok=True)
        for sub in ("attempts", SLURM_DIR):
            inside(out, sub)
        ctx = Context(out, logs, Stop(), lock)
        if isinstance(executor, SlurmExecutor):
            executor.prepare(todo, ctx)
    except (matrix_mod.MatrixError, PathError) as exc:
        _error(str(exc))
        return 2
    except OSError as exc:
        _error(f"cannot write into {results.printable(out)}: {exc.strerror or exc}")
        return 2
    start, outcome = time.monotonic(), {}

    def report(cell, record):
        try:
            outcome[cell.id] = (store(out, cell, record), record)
        except OSError as exc:  # results.OutputError: the disk is full, the folder went away
            raise CellOutputError(cell.id, exc) from None
        ok = sum(1 for s, _ in outcome.values() if s == "ok")
        skipped = sum(1 for s, _ in outcome.values() if s == "skipped")
        print(f"[{len(outcome)}/{len(todo)}] {cell.id}: {outcome[cell.id][0]} | ok {ok}, skipped {skipped}, "
              f"not ok {len(outcome) - ok - skipped}, left {len(todo) - len(outcome)}, elapsed "
              f"{time.monotonic() - start:.0f} s", flush=True)

    stop = ctx.stop
    stop.install()
    try:
        if isinstance(executor, SlurmExecutor):
            executor.run_all(todo, ctx, report)
        else:
            for cell in todo:
                if stop.signum is not None:
                    break  # a signal before a cell starts: it never starts
                report(cell, executor.run(cell, ctx))
    except CellOutputError as exc:
        _error(f"{exc}\nthe sweep stops here: the next cells' results could not be written either. "
               f"{len(outcome)} cell(s) recorded; free the space (or fix the folder) and run the "
               "same command again to resume")
        return 1
    except (PathError, ExecutorError) as exc:
        _error(f"{exc}\nthe sweep stops here; run the same command again to resume")
        return 1
    finally:
        stop.restore()
    if stop.signum is not None:
        marked = [c for c, (_, r) in outcome.items() if was_interrupted(r)]
        print(f"\ninterrupted by {stop.name}: {len(outcome) - len(marked)} cell(s) finished and kept"
              + (f", {len(marked)} marked interrupted ({', '.join(marked)})" if marked else "")
              + "; the next run resumes", file=sys.stderr)
        return 128 + stop.signum
    print()
    print(summary(outcome))
    return 1 if any(s in results.NOT_OK for s, _ in outcome.values()) else 0


def summary(outcome: dict) -> str:
    rows = [("cell", "status", "time s")]
    for cell_id, (status, record) in outcome.items():
        t = record.get("time_total_s")
        rows.append((cell_id, status, "-" if t is None else f"{t:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _timeout(text: str) -> float:
    """--timeout: a finite number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds greater than 0, got {text!r}")
    return value


def _sweep_repeats(text: str) -> int:
    """--repeats: cells per (framework, variant, GPU, task, precision, mode), as the matrix's repeats."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if not 1 <= value <= matrix_mod.MAX_REPEATS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {matrix_mod.MAX_REPEATS}, got {value}")
    return value


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run every cell of matrix.yaml; resumes, isolates failures")
    p.add_argument("matrix", type=Path, help="the matrix file, e.g. matrix.yaml")
    p.add_argument("--executor", choices=matrix_mod.EXECUTORS, default="local")
    p.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: results)")
    p.add_argument("--frameworks", type=_names, help="comma-separated subset of the matrix's frameworks")
    p.add_argument("--variants", type=_names, help="comma-separated CUDA variants (docker, slurm containers)")
    p.add_argument("--gpus", type=_names, help="comma-separated GPU types of the matrix")
    p.add_argument("--tasks", type=tasks.parse_tasks, help="comma-separated: cnn,rnn,resnet50")
    p.add_argument("--precisions", type=cli.precision_list,
                   help="comma-separated, any of fp32,tf32,amp-fp16,amp-bf16 (instead of the matrix's precisions)")
    p.add_argument("--modes", type=cli.mode_list,
                   help=f"comma-separated, any of {','.join(modes.MODES)} (instead of the matrix's modes)")
    p.add_argument("--quick", action="store_true", help="--quick size for every cell")
    p.add_argument("--repeats", type=_sweep_repeats, help="cells r0, r1, ... per figure (overrides repeats:); "
                   "bench compare needs 4 a side for an interval")
    p.add_argument("--data", choices=("auto", "real", "synthetic"), help="override the matrix's data:")
    p.add_argument("--timeout", type=_timeout, help="seconds per cell (overrides timeout_s); a cell that "
                                                    "runs longer is killed and recorded as timeout")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--rerun-failed", action="store_true", help="run failed cells again")
    p.add_argument("--force", action="store_true", help="run every cell again (ok results are kept "
                                                         "if the new run fails)")
    p.set_defaults(handler=cmd_sweep)
