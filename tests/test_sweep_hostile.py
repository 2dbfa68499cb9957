"""The sweep against what goes wrong around it: signals (also right after a cell started),
SIGKILL, a second sweep into the same folder, timeouts, hostile names in matrix.yaml and
--out, names that would leave --out, leftover temporary folders, an unwritable --out and a
full disk. The cells are tests/fake_slow_framework.py (a NumPy double whose task can hang
until it is killed), run through a matrix's executors.<name>.python; Slurm is a fake one
(FAKE_SLURM below) so that this file needs no cluster (tests/test_sweep_slurm.py has the
live one)."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cli, matrix, results, sweep
from conftest import REPO, run_bench

FAKE = REPO / "tests" / "fake_slow_framework.py"
DEADLINE_S = 300.0  # generous: these tests also run on a loaded machine
CNN, RNN = "pytorch__venv__cpu__cnn__fp32__r0__quick", "pytorch__venv__cpu__rnn__fp32__r0__quick"


# ---------------------------------------------------------------- helpers

def fake_python(where: Path) -> Path:
    """An executable that stands in for a framework's python: `X -m bench run ...` runs the
    fake framework (exec: the cell's process is the fake's process)."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / "fake-python"
    path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(FAKE))} \"$@\"\n")
    path.chmod(0o755)
    return path


def write_matrix(tmp_path: Path, tasks=("cnn", "rnn"), top: str = "", executors: str | None = None,
                 gpus: str = "  cpu: {device: cpu}\n") -> Path:
    python = fake_python(tmp_path / "bin")
    if executors is None:
        executors = f"  local: {{python: {json.dumps(str(python))}}}\n"
    text = (f"version: 1\ntasks: [{', '.join(tasks)}]\nprecisions: [fp32]\nrepeats: 1\nquick: true\n"
            f"data: synthetic\n{top}frameworks:\n  pytorch: {{}}\ngpus:\n{gpus}executors:\n{executors}")
    path = tmp_path / "matrix.yaml"
    path.write_text(text)
    return path


def fake_env(state: Path, hang: str = "", **extra) -> dict:
    state.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FAKE_SLOW_STATE=str(state), FAKE_SLOW_HANG=hang)
    env.update(extra)
    return env


def _default_signals():  # the sweep starts as from a terminal, whatever pytest's parent ignored
    for signum in sweep.STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


class Sweeps:
    """Sweeps started in the background; any still running at the end is killed."""

    def __init__(self):
        self.procs = []

    def start(self, *args, env=None) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "bench", "sweep", *map(str, args)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_default_signals)
        self.procs.append(proc)
        return proc

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture
def sweeps():
    s = Sweeps()
    yield s
    s.close()


def poll(what: str, check, proc: subprocess.Popen | None = None, deadline_s: float = DEADLINE_S):
    """check()'s first truthy value, polled; fails naming what was awaited (and the sweep's
    output if it ended first)."""
    end = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the sweep ended (exit {proc.returncode}) before {what}:\n{out[-3000:]}\n{err[-3000:]}")
        if time.monotonic() > end:
            pytest.fail(f"gave up after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """pid is a live process (a zombie is not: it has ended and waits to be reaped)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[1].split()[0] != "Z"


def records(out: Path) -> dict:
    warnings = []
    found = {r["cell"]["id"]: r for r in results.load_results([out], warnings.append)}
    return found


def lock_is_free(out: Path) -> bool:
    fd = os.open(str(out / sweep.LOCK_NAME), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def holder(out: Path) -> dict:
    return sweep.read_holder(out / sweep.LOCK_NAME) or {}


def running_cell(out: Path, proc, cell_id: str):
    """The lock holder's entry for cell_id once the sweep has started its process."""
    h = holder(out)
    if h.get("pid") != proc.pid:
        return None
    return next((r for r in h.get("running") or [] if r.get("cell") == cell_id and r.get("pid")), None)


def temp_folders(out: Path) -> list:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(sweep.TEMP_PREFIX)) if out.exists() else []


def started_cells(state: Path) -> list:
    return sorted(p.name for p in state.glob("started-*"))


def sweep_args(*argv):
    return cli.build_parser().parse_args(["sweep", *map(str, argv)])


def ok_record(cell):
    from test_sweep import _ok_record

    rec = _ok_record(cell)
    rec["cell"] = sweep.cell_info(cell, "local")
    return rec


# ---------------------------------------------------------------- 1. signals

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_each_stop_signal_kills_the_running_cell_and_marks_it(tmp_path, sweeps, signum):
    m, out, state = write_matrix(tmp_path), tmp_path / "out", tmp_path / "state"
    proc = sweeps.start(m, "--out", out, env=fake_env(state, hang="rnn"))
    cell = poll("the rnn cell to hang", lambda: read_json(state / "rnn-r0.json"), proc)
    assert cell["ppid"] == proc.pid  # the cell is the sweep's own child (exec, no shell between)
    assert alive(cell["pid"])
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 128 + signum, stdout + stderr
    assert f"interrupted by {signum.name}" in stderr and "the next run resumes" in stderr
    assert "Traceback" not in stderr
    found = records(out)
    assert found[CNN]["status"] == "ok" and not found[CNN]["cell"].get("interrupted")
    rec = found[RNN]
    assert rec["status"] == "failed"
    assert rec["error"] == f"interrupted ({signum.name}): run the sweep again to resume"
    assert rec["cell"]["interrupted"] is True
    assert not alive(cell["pid"])  # the sweep waited for it: it is gone, not orphaned
    assert temp_folders(out) == []
    assert lock_is_free(out)


def test_a_signal_right_after_the_cell_started_is_not_lost(tmp_path, sweeps):
    # The reported race: a SIGINT soon after the cell's log appeared was swallowed and the
    # sweep ran the cell to its end. Here the signal comes as soon as the sweep has started
    # the cell's process (its pid is in the lock file), before the cell itself is anywhere.
    m, out, state = write_matrix(tmp_path, tasks=("rnn",)), tmp_path / "out", tmp_path / "state"
    proc = sweeps.start(m, "--out", out, env=fake_env(state, hang="rnn"))
    entry = poll("the sweep to start the cell", lambda: running_cell(out, proc, RNN), proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=DEADLINE_S)  # a lost signal: the cell hangs, this times out
    assert proc.returncode == 130, stdout + stderr
    rec = records(out)[RNN]
    assert rec["cell"]["interrupted"] is True and "interrupted (SIGINT)" in rec["error"]
    assert not alive(entry["pid"])


def test_a_signal_between_cells_means_the_next_cell_never_starts(tmp_path, monkeypatch, capsys):
    m, out = write_matrix(tmp_path), tmp_path / "out"
    ran = []

    def run(self, cell, ctx):
        ran.append(cell.id)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives as the cell ends, before the next one
        return ok_record(cell)

    monkeypatch.setattr(sweep.LocalExecutor, "run", run)
    before = signal.getsignal(signal.SIGTERM)
    code = sweep.cmd_sweep(sweep_args(m, "--out", out))
    assert code == 128 + signal.SIGTERM
    assert ran == [CNN]  # the rnn cell never started
    assert set(records(out)) == {CNN} and records(out)[CNN]["status"] == "ok"
    assert signal.getsignal(signal.SIGTERM) == before  # the old handler is back
    assert "interrupted by SIGTERM" in capsys.readouterr().err


def test_a_signal_ignored_at_start_stays_ignored(monkeypatch):
    # nohup (or a background job of a script) asked for SIGHUP (SIGINT) to be ignored.
    monkeypatch.setattr(signal, "getsignal", lambda s: signal.SIG_IGN if s == signal.SIGHUP else signal.SIG_DFL)
    installed = {}
    monkeypatch.setattr(signal, "signal", lambda s, h: installed.setdefault(s, h))
    stop = sweep.Stop()
    stop.install()
    assert signal.SIGHUP not in installed and installed[signal.SIGTERM] == stop._handle


# ---------------------------------------------------------------- 2. SIGKILL; 8. leftovers

def test_a_killed_sweep_takes_its_cell_with_it_and_the_next_one_cleans_up(tmp_path, sweeps):
    m, out, state = write_matrix(tmp_path, tasks=("rnn",)), tmp_path / "out", tmp_path / "state"
    proc = sweeps.start(m, "--out", out, env=fake_env(state, hang="rnn"))
    cell = poll("the cell to hang", lambda: read_json(state / "rnn-r0.json"), proc)
    # The cell holds the folder's lock too (the descriptor was passed on to it) ...
    lock = os.path.realpath(out / sweep.LOCK_NAME)
    assert lock in cell["fds"].values(), cell["fds"]
    # ... and writes into a hidden temporary folder inside --out.
    [leftover] = temp_folders(out)
    proc.kill()
    proc.wait()
    try:
        poll("the orphaned cell to die", lambda: not alive(cell["pid"]))
    finally:
        if alive(cell["pid"]):  # (only when this test fails) leave no orphan behind
            os.kill(cell["pid"], signal.SIGKILL)
    assert records(out) == {}  # no result: the cell never finished
    assert (out / leftover).is_dir()  # SIGKILL leaves it; the next sweep removes it

    again = run_bench("sweep", str(m), "--out", str(out), env=fake_env(state), timeout=DEADLINE_S)
    assert again.returncode == 0, again.stdout + again.stderr  # the OS released the dead sweep's lock
    assert f"removed {leftover}" in again.stdout
    assert temp_folders(out) == []
    assert records(out)[RNN]["status"] == "ok"


def test_only_the_sweeps_own_leftover_folders_are_removed(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / f"{sweep.TEMP_PREFIX}{RNN}.abc123").mkdir(parents=True)
    (out / f"{sweep.TEMP_PREFIX}{RNN}.abc123" / "partial.json").write_text("{")
    (out / ".keep-me").mkdir()
    (out / f"{sweep.TEMP_PREFIX}file").write_text("not a folder")
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("x")
    (out / f"{sweep.TEMP_PREFIX}link").symlink_to(elsewhere)
    removed = sweep.remove_leftovers(out)
    assert removed == [f"{sweep.TEMP_PREFIX}{RNN}.abc123"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".keep-me", f"{sweep.TEMP_PREFIX}file", f"{sweep.TEMP_PREFIX}link"])
    assert (elsewhere / "precious").read_text() == "x"


# ---------------------------------------------------------------- 3. the folder's lock

def test_a_second_sweep_into_the_same_folder_is_refused_naming_the_first(tmp_path, sweeps):
    m, out, state = write_matrix(tmp_path, tasks=("rnn",)), tmp_path / "out", tmp_path / "state"
    first = sweeps.start(m, "--out", out, env=fake_env(state, hang="rnn"))
    poll("the first sweep's cell to run", lambda: running_cell(out, first, RNN), first)
    info = holder(out)
    assert info["host"] == socket.gethostname() and "sweep" in info["command"]

    second = run_bench("sweep", str(m), "--out", str(out), env=fake_env(state), timeout=DEADLINE_S)
    assert second.returncode == 2, second.stdout + second.stderr
    for text in (f"pid {first.pid}", f"host {socket.gethostname()}", f"started {info['started_at']}",
                 str(m), RNN):
        assert text in second.stderr, (text, second.stderr)
    assert len(started_cells(state)) == 1  # the second sweep started nothing

    dry = run_bench("sweep", str(m), "--out", str(out), "--dry-run", env=fake_env(state), timeout=DEADLINE_S)
    assert dry.returncode == 0 and f"  run  {RNN}" in dry.stdout  # a dry run takes no lock

    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=DEADLINE_S)
    assert first.returncode == 143
    third = run_bench("sweep", str(m), "--out", str(out), env=fake_env(state), timeout=DEADLINE_S)
    assert third.returncode == 0, third.stdout + third.stderr
    assert records(out)[RNN]["status"] == "ok"


# ---------------------------------------------------------------- 4. timeouts

@pytest.mark.parametrize("where", ["--timeout", "timeout_s"])
def test_a_cell_killed_at_the_limit_is_a_timeout_not_an_oom(tmp_path, where):
    top = "timeout_s: 2\n" if where == "timeout_s" else ""
    m, out, state = write_matrix(tmp_path, tasks=("rnn",), top=top), tmp_path / "out", tmp_path / "state"
    extra = ["--timeout", "2"] if where == "--timeout" else []
    proc = run_bench("sweep", str(m), "--out", str(out), *extra, env=fake_env(state, hang="rnn"),
                     timeout=DEADLINE_S)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rec = records(out)[RNN]
    assert rec["status"] == "timeout"
    assert rec["error"] == "timed out after 2 s (executors timeout_s / --timeout)"
    cell = read_json(state / "rnn-r0.json")
    if cell:  # it got as far as hanging: it was killed, not left behind
        assert not alive(cell["pid"])
    assert temp_folders(out) == []


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "-inf", "soon"])
def test_bad_timeouts_are_refused_by_the_command_line(tmp_path, value):
    m = write_matrix(tmp_path)
    proc = run_bench("sweep", str(m), "--out", str(tmp_path / "out"), f"--timeout={value}", "--dry-run")
    assert proc.returncode == 2 and "--timeout" in proc.stderr
    assert "greater than 0" in proc.stderr or "a number of seconds" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("value", ["0", "-1", ".nan", ".inf", "true", "'soon'"])
def test_bad_matrix_timeouts_are_refused(tmp_path, value):
    m = write_matrix(tmp_path, top=f"timeout_s: {value}\n")
    proc = run_bench("sweep", str(m), "--out", str(tmp_path / "out"), "--dry-run")
    assert proc.returncode == 2 and "timeout_s" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def _cell(**kw):
    base = dict(framework="pytorch", variant="venv", gpu="cpu", device="cpu", task="rnn",
                precision="fp32", repeat=0, quick=True)
    return matrix.Cell(**{**base, **kw})


@pytest.mark.parametrize("returncode, log, status, expected", [
    (-signal.SIGKILL, "", "timeout", "timeout"),                  # killed at the limit
    (-signal.SIGKILL, "CUDA out of memory", "timeout", "timeout"),
    (-signal.SIGKILL, "", None, "oom"),                           # the OOM killer's way
    (1, "RuntimeError: CUDA out of memory", None, "oom"),
    (1, "Segmentation fault", None, "failed"),
])
def test_collect_tells_a_timeout_from_an_oom(tmp_path, returncode, log, status, expected):
    rec = sweep.collect(_cell(), "local", tmp_path / "none", returncode, log,
                        sweep.timeout_error(2) if status else None, status)
    assert rec["status"] == expected and results.validation_errors(rec) == []


# ---------------------------------------------------------------- docker: timeout, signal, OOM

class _Container:
    def __init__(self, exit_after=None, oom=False, on_reload=None):
        self.id, self.reloads, self.exit_after, self.oom, self.on_reload = "c0ffee", 0, exit_after, oom, on_reload
        self.status, self.attrs, self.killed, self.removed = "created", {}, False, False

    def reload(self):
        self.reloads += 1
        if self.on_reload:
            self.on_reload(self)
        done = self.exit_after is not None and self.reloads > self.exit_after
        self.status = "exited" if done or self.killed else "running"
        self.attrs = {"State": {"ExitCode": 137 if self.killed or self.oom else 0, "OOMKilled": self.oom}}

    def kill(self):
        self.killed = True

    def logs(self):
        return b"container log line\n"

    def remove(self, force=False):
        self.removed = True


class _Client:
    def __init__(self, container):
        self.containers = self
        self.container = container

    def run(self, **kwargs):
        self.kwargs = kwargs
        return self.container


def _docker(tmp_path, container, timeout=None):
    pytest.importorskip("docker")
    m = matrix.load(write_matrix(tmp_path))
    args = type("Args", (), {"data": "synthetic", "timeout": timeout})()
    executor = sweep.DockerExecutor(m, args, client=_Client(container))
    executor.poll_s = 0.01
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    return executor, sweep.Context(out, out / "logs")


def test_docker_timeout_kills_the_container_and_is_a_timeout(tmp_path):
    container = _Container()
    executor, ctx = _docker(tmp_path, container, timeout=0.2)
    rec = executor.run(_cell(variant="cu130"), ctx)
    assert rec["status"] == "timeout" and rec["error"] == "timed out after 0.2 s (executors timeout_s / --timeout)"
    assert container.killed and container.removed
    assert "container log line" in (ctx.out / "logs" / f"{_cell(variant='cu130').id}.log").read_text()
    assert temp_folders(ctx.out) == []


def test_docker_signal_kills_the_container_and_marks_the_cell(tmp_path):
    def signal_on_third_reload(c):
        if c.reloads == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    container = _Container(on_reload=signal_on_third_reload)
    executor, ctx = _docker(tmp_path, container)
    ctx.stop.install()
    try:
        rec = executor.run(_cell(variant="cu130"), ctx)
    finally:
        ctx.stop.restore()
    assert ctx.stop.signum == signal.SIGTERM
    assert rec["status"] == "failed" and rec["cell"]["interrupted"] is True
    assert "interrupted (SIGTERM)" in rec["error"]
    assert container.killed and container.removed and container.reloads == 3


def test_docker_oom_killed_container_is_an_oom(tmp_path):
    executor, ctx = _docker(tmp_path, _Container(exit_after=1, oom=True))
    assert executor.run(_cell(variant="cu130"), ctx)["status"] == "oom"


# ---------------------------------------------------------------- 5. resume

def test_the_next_run_resumes_the_interrupted_cell(tmp_path, sweeps):
    m, out, state = write_matrix(tmp_path), tmp_path / "out", tmp_path / "state"
    proc = sweeps.start(m, "--out", out, env=fake_env(state, hang="rnn"))
    poll("the rnn cell to hang", lambda: read_json(state / "rnn-r0.json"), proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 130
    first = records(out)
    assert first[RNN]["cell"]["interrupted"] is True

    again = run_bench("sweep", str(m), "--out", str(out), env=fake_env(state), timeout=DEADLINE_S)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 already done (resume), 1 to run" in again.stdout and f"  run  {RNN}" in again.stdout
    second = records(out)
    assert second[RNN]["status"] == "ok" and "interrupted" not in second[RNN]["cell"]
    assert second[CNN]["started_at"] == first[CNN]["started_at"]  # the finished cell did not run again
    assert len([p for p in started_cells(state) if p.startswith("started-rnn-")]) == 2


def test_plan_runs_interrupted_cells_and_skips_failed_ones(tmp_path):
    a, b = _cell(task="cnn"), _cell(task="rnn")
    stop = sweep.Stop()
    stop.signum = signal.SIGTERM
    sweep.store(tmp_path, a, sweep.interrupted_record(a, "local", stop))
    sweep.store(tmp_path, b, sweep.failure_record(b, "local", "failed", "boom", None))
    todo, done = sweep.plan([a, b], tmp_path, sweep_args("m.yaml"))
    assert todo == [a] and done == [(b, "failed")]


# ---------------------------------------------------------------- 6. Slurm job scripts

class _Matrix:
    """Just what the executors read of a matrix, with names the matrix file would refuse."""

    def __init__(self, gpus, slurm=None, doc=None):
        self.gpus, self._slurm, self.doc, self.path = gpus, slurm or {}, doc or {}, Path("matrix.yaml")

    def executor(self, name):
        return self._slurm if name == "slurm" else {}

    def line(self, *path):
        return ""


HOSTILE = "h100$(touch PWNED)`touch PWNED2`;touch PWNED3'\"&|<>*?~{a..b}\\n"


@pytest.mark.parametrize("runner", ["podman", "apptainer", "pyxis"])
def test_slurm_container_runners_refuse_a_folder_they_cannot_mount(tmp_path, monkeypatch, runner):
    monkeypatch.setattr(sweep.shutil, "which", lambda name: "/usr/bin/" + name)
    m = _Matrix({"h100": {"device": "gpu", "gres": "gpu:h100:1"}}, slurm={"runner": runner})
    executor = sweep.SlurmExecutor(m, type("Args", (), {"data": "synthetic"})())
    cell = _cell(gpu="h100", device="gpu", variant="cu130")
    for out in ("a:b", "a,b"):
        with pytest.raises(matrix.MatrixError, match="cannot mount"):
            executor.script(cell, tmp_path / out / ".slurm" / cell.id)


def _recorder(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "with open(os.environ['RECORD'], 'a') as f:\n"
                    "    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + '\\n')\n")
    path.chmod(0o755)
    return path


def _pwned(*roots) -> list:
    return [str(p) for root in roots for p in Path(root).rglob("PWNED*")]


@pytest.mark.parametrize("runner", ["venv", "podman", "apptainer", "pyxis"])
def test_slurm_scripts_quote_every_value(tmp_path, monkeypatch, runner):
    monkeypatch.setattr(sweep.shutil, "which", lambda name: "/usr/bin/" + name)
    repo = tmp_path / "repo $(touch PWNED) 'x'"
    repo.mkdir()
    monkeypatch.setattr(sweep, "REPO_ROOT", repo)
    fakebin = tmp_path / "bin"
    python = _recorder(fakebin / "python $(touch PWNED)")
    for tool in ("podman", "apptainer", "srun"):
        _recorder(fakebin / tool)
    m = _Matrix({HOSTILE: {"device": "gpu", "gres": "gpu:h100:1"}},
                slurm={"runner": runner, "python": str(python), "image_prefix": "bench-$(touch PWNED)-",
                       "partition": "gpu", "time": "04:00:00", "extra_args": ["--comment=a b"]})
    executor = sweep.SlurmExecutor(m, type("Args", (), {"data": "synthetic"})())
    variant = "venv" if runner == "venv" else "cu130$(touch PWNED)"
    cell = _cell(gpu=HOSTILE, device="gpu", variant=variant)
    out = tmp_path / "shared results $(touch PWNED)"
    cell_out = out / ".slurm" / cell.id
    script = executor.script(cell, cell_out)
    lines = script.splitlines()
    assert lines[:2] == ["#!/bin/bash", "#SBATCH --ntasks=1"]
    assert lines[2:6] == ["#SBATCH --gres=gpu:h100:1", "#SBATCH --partition=gpu", "#SBATCH --time=04:00:00",
                          "#SBATCH --comment=a b"]
    assert not any("--output" in line or "--job-name" in line for line in lines)
    body = lines[6:]
    assert len(body) == (2 if runner == "venv" else 1)
    expected = executor.command(cell, cell_out)
    assert shlex.split(body[-1]) == ["exec", *expected]  # the body line round-trips to the argv
    if runner == "venv":
        assert shlex.split(body[0]) == ["cd", str(repo), "||", "exit", "1"]
        assert expected[-len(sweep.run_args(cell, "synthetic", str(cell_out))):] == \
            sweep.run_args(cell, "synthetic", str(cell_out))
    else:
        assert f"bench-$(touch PWNED)-pytorch:{variant}" in " ".join(expected)

    # Run it: bash gets exactly those words, and nothing in them ran.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    path = tmp_path / "job.sh"
    path.write_text(script)
    record = tmp_path / "record.jsonl"
    env = {"PATH": f"{fakebin}:/usr/bin:/bin", "RECORD": str(record), "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(path)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    [argv] = [json.loads(line) for line in record.read_text().splitlines()]
    assert argv == [Path(expected[0]).name, *expected[1:]]
    assert _pwned(tmp_path, REPO) == []


@pytest.mark.parametrize("where, change", [
    ("gpus.h100.gres", lambda g, s: g["h100"].update(gres="gpu:h100:1\ntouch PWNED")),
    ("gpus.h100.constraint", lambda g, s: g["h100"].update(constraint="h100\r#SBATCH --wrap=x")),
    ("gpus.h100.gres", lambda g, s: g["h100"].update(gres="gpu:h100:1 --wrap=x")),
    ("executors.slurm.partition", lambda g, s: s.update(partition="gpu\n")),
    ("executors.slurm.time", lambda g, s: s.update(time="1:00\x00")),
    ("executors.slurm.extra_args[1]", lambda g, s: s.update(extra_args=["--exclusive", "--mem=0\ntouch PWNED"])),
])
def test_slurm_refuses_a_value_that_would_add_a_line(tmp_path, monkeypatch, where, change):
    monkeypatch.setattr(sweep.shutil, "which", lambda name: "/usr/bin/" + name)
    gpus, slurm = {"h100": {"device": "gpu", "gres": "gpu:h100:1"}}, {"runner": "venv"}
    change(gpus, slurm)
    with pytest.raises(matrix.MatrixError, match=r"^" + where.replace("[", r"\[").replace(".", r"\.")):
        sweep.SlurmExecutor(_Matrix(gpus, slurm), type("Args", (), {"data": "synthetic"})())
    # and script() checks the value itself, should one change after the executor was made
    executor = sweep.SlurmExecutor(_Matrix({"h100": {"device": "gpu", "gres": "gpu:h100:1"}}, {}),
                                   type("Args", (), {"data": "synthetic"})())
    executor.gpus, executor.conf = gpus, slurm
    with pytest.raises(matrix.MatrixError):
        executor.script(_cell(gpu="h100", device="gpu"), tmp_path / "o")


# A fake Slurm: sbatch, squeue, scontrol and scancel in one script (by the name it is called
# by). A job starts at once in the background, in its own session; state in $FAKE_SLURM_DIR.
FAKE_SLURM = r'''
import fcntl, json, os, signal, subprocess, sys
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM_DIR"])
JOBS = STATE / "jobs"
JOBS.mkdir(parents=True, exist_ok=True)


def new_id():
    with open(STATE / "counter", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read() or 1000) + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
    return str(n)


def state(job):
    if (JOBS / f"{job}.cancelled").exists():
        return "CANCELLED"
    rc = JOBS / f"{job}.rc"
    if rc.exists():
        return "COMPLETED" if rc.read_text() == "0" else "FAILED"
    return "RUNNING" if (JOBS / f"{job}.pid").exists() else "PENDING"


def sbatch(args):
    opts = dict(a[2:].split("=", 1) for a in args[:-1] if a.startswith("--") and "=" in a)
    job = new_id()
    (JOBS / f"{job}.sh").write_text(Path(args[-1]).read_text())
    output = opts.get("output", f"slurm-{job}.out").replace("%%", "%")
    subprocess.Popen([sys.executable, __file__, "__job__", job, args[-1], output], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(job)


def job(job, script, output):
    (JOBS / f"{job}.pid").write_text(str(os.getpid()))
    if (JOBS / f"{job}.cancelled").exists():
        return
    with open(output, "w") as out:
        rc = subprocess.call(["bash", script], stdout=out, stderr=subprocess.STDOUT,
                             env=dict(os.environ, SLURM_JOB_ID=job))
    (JOBS / f"{job}.rc").write_text(str(rc))


def squeue(args):
    for j in args[args.index("-j") + 1].split(","):
        if state(j) in ("RUNNING", "PENDING"):
            print(f"{j} {state(j)}")


def scontrol(args):
    print(f"JobId={args[-1]} JobState={state(args[-1])} Reason=None TresPerNode=gres:gpu:h100:1")


def scancel(args):
    for j in args:
        (JOBS / f"{j}.cancelled").write_text("")
        pid = JOBS / f"{j}.pid"
        if pid.exists():
            try:
                os.killpg(int(pid.read_text()), signal.SIGKILL)
            except OSError:
                pass


name = os.path.basename(sys.argv[0])
if sys.argv[1:2] == ["__job__"]:
    job(*sys.argv[2:5])
else:
    with open(STATE / "calls.jsonl", "a") as f:
        f.write(json.dumps([name] + sys.argv[1:]) + "\n")
    {"sbatch": sbatch, "squeue": squeue, "scontrol": scontrol, "scancel": scancel}[name](sys.argv[1:])
'''


def fake_slurm(tmp_path: Path) -> tuple:
    """(bin folder to put first on PATH, state folder)."""
    fakebin, state = tmp_path / "slurm-bin", tmp_path / "slurm-state"
    fakebin.mkdir()
    state.mkdir()
    script = fakebin / "fake-slurm"
    script.write_text(f"#!{sys.executable}\n{FAKE_SLURM}")
    script.chmod(0o755)
    for name in ("sbatch", "squeue", "scontrol", "scancel"):
        (fakebin / name).symlink_to(script)
    return fakebin, state


def slurm_calls(state: Path, name: str) -> list:
    path = state / "calls.jsonl"
    calls = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [c[1:] for c in calls if c[0] == name]


def slurm_matrix(tmp_path, tasks=("rnn",), gres='"gpu:h100:1"'):
    python = fake_python(tmp_path / "bin")
    return write_matrix(tmp_path, tasks=tasks, gpus=f"  h100: {{device: cpu, gres: {gres}}}\n",
                        executors=f"  slurm: {{runner: venv, poll_s: 0.2, python: {json.dumps(str(python))}}}\n")


def test_slurm_sweep_into_an_out_with_blanks_and_dollars(tmp_path):
    fakebin, slurm_state = fake_slurm(tmp_path)
    m, state = slurm_matrix(tmp_path), tmp_path / "state"
    out = tmp_path / "shared results $HOME 50%"
    env = fake_env(state, PATH=f"{fakebin}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM_DIR=str(slurm_state))
    proc = run_bench("sweep", str(m), "--executor", "slurm", "--out", str(out), env=env, timeout=DEADLINE_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cell_id = "pytorch__venv__h100__rnn__fp32__r0__quick"
    rec = records(out)[cell_id]
    assert rec["status"] == "ok" and rec["cell"]["slurm_job_id"] == "1001"
    [argv] = slurm_calls(slurm_state, "sbatch")
    assert argv[:3] == ["--parsable", f"--job-name=bench-{cell_id}",
                        f"--output={out / 'logs' / cell_id}.log".replace("%", "%%")]
    assert (out / "logs" / f"{cell_id}.log").read_text().startswith("fake-slow: pid")


def test_slurm_interrupt_cancels_the_sweeps_jobs(tmp_path, sweeps):
    fakebin, slurm_state = fake_slurm(tmp_path)
    m, out, state = slurm_matrix(tmp_path, tasks=("cnn", "rnn")), tmp_path / "out", tmp_path / "state"
    env = fake_env(state, hang="all", PATH=f"{fakebin}{os.pathsep}{os.environ['PATH']}",
                   FAKE_SLURM_DIR=str(slurm_state))
    proc = sweeps.start(m, "--executor", "slurm", "--out", out, env=env)
    cells = poll("both jobs to hang", lambda: [read_json(state / f"{t}-r0.json") for t in ("cnn", "rnn")]
                 if all((state / f"{t}-r0.json").exists() for t in ("cnn", "rnn")) else None, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 143, stdout + stderr
    assert sorted(slurm_calls(slurm_state, "scancel")) == [["1001", "1002"]]
    found = records(out)
    for task, job in (("cnn", "1001"), ("rnn", "1002")):
        rec = found[f"pytorch__venv__h100__{task}__fp32__r0__quick"]
        assert rec["status"] == "failed" and rec["cell"]["interrupted"] is True
        assert "interrupted (SIGTERM)" in rec["error"]
        assert rec["cell"]["slurm_job_id"] == job and rec["cell"]["slurm_state"] == "CANCELLED"
    for cell in cells:
        poll("a cancelled job's process to end", lambda: not alive(cell["pid"]))


def test_slurm_refuses_a_newline_in_gres_before_submitting_anything(tmp_path):
    fakebin, slurm_state = fake_slurm(tmp_path)
    m = slurm_matrix(tmp_path, gres=json.dumps(f"gpu:h100:1\ntouch {tmp_path}/PWNED"))
    env = fake_env(tmp_path / "state", PATH=f"{fakebin}{os.pathsep}{os.environ['PATH']}",
                   FAKE_SLURM_DIR=str(slurm_state))
    proc = run_bench("sweep", str(m), "--executor", "slurm", "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 2 and "gres" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert slurm_calls(slurm_state, "sbatch") == [] and _pwned(tmp_path) == []


# ---------------------------------------------------------------- 7. only inside --out

@pytest.mark.parametrize("gpu", ["../../X", "a100/80gb", "..", "new\nline"])
def test_a_cell_id_that_would_leave_out_is_refused(tmp_path, monkeypatch, capsys, gpu):
    m = matrix.load(write_matrix(tmp_path))
    bad = _cell(gpu=gpu)
    monkeypatch.setattr(m, "cells", lambda *a, **k: [_cell(task="cnn"), bad])
    monkeypatch.setattr(sweep.matrix_mod, "load", lambda path: m)
    ran = []
    monkeypatch.setattr(sweep.LocalExecutor, "run", lambda self, cell, ctx: ran.append(cell) or ok_record(cell))
    out = tmp_path / "a" / "b" / "out"
    before = sorted(map(str, tmp_path.rglob("*")))
    code = sweep.cmd_sweep(sweep_args(tmp_path / "matrix.yaml", "--out", out))
    err = capsys.readouterr().err
    assert code == 2 and "cell id" in err and "cannot name a file in the results folder" in err
    assert "Traceback" not in err and ran == []
    assert sorted(map(str, tmp_path.rglob("*"))) == before  # nothing written, not even --out
    with pytest.raises(sweep.PathError):  # and the writer refuses it by itself
        sweep.store(out, bad, sweep.failure_record(bad, "local", "failed", "x", None))
    assert sorted(map(str, tmp_path.rglob("*"))) == before


def test_paths_are_checked_to_stay_inside_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert sweep.inside(out, "logs", "a.log") == out / "logs" / "a.log"
    for names in ([".."], ["logs", ".."], ["a/b"], [""], ["x\0y"]):
        with pytest.raises(sweep.PathError):
            sweep.inside(out, *names)
    (tmp_path / "elsewhere").mkdir()
    (out / "logs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(sweep.PathError, match="outside the results folder"):
        sweep.inside(out, "logs", "a.log")


@pytest.mark.parametrize("name", ["logs", "attempts", sweep.LOCK_NAME])
def test_a_link_out_of_the_folder_is_refused(tmp_path, name):
    m, out, state, elsewhere = write_matrix(tmp_path), tmp_path / "out", tmp_path / "state", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / name).symlink_to(elsewhere / "target" if name == sweep.LOCK_NAME else elsewhere)
    proc = run_bench("sweep", str(m), "--out", str(out), env=fake_env(state), timeout=DEADLINE_S)
    assert proc.returncode == 2 and "outside the results folder" in proc.stderr, proc.stdout + proc.stderr
    assert list(elsewhere.iterdir()) == [] and started_cells(state) == []


# ---------------------------------------------------------------- 9. --out and a full disk

def _without_root_powers() -> list:
    """A command prefix under which root, too, is refused a read-only folder (no
    CAP_DAC_OVERRIDE); empty for other users."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("root ignores a read-only folder, and setpriv (util-linux) is not here to drop that")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", caps, "--inh-caps", caps]


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only"])
def test_an_unusable_out_is_refused_before_any_cell(tmp_path, case):
    m, state = write_matrix(tmp_path), tmp_path / "state"
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    prefix = []
    if case == "a file":
        out = blocker
    elif case == "under a file":
        out = blocker / "results"
    else:
        prefix = _without_root_powers()
        (tmp_path / "read-only").mkdir()
        (tmp_path / "read-only").chmod(0o555)
        out = tmp_path / "read-only" / "results"
    proc = subprocess.run([*prefix, sys.executable, "-m", "bench", "sweep", str(m), "--out", str(out)], cwd=REPO,
                          env=fake_env(state), capture_output=True, text=True, timeout=DEADLINE_S)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and str(out) in proc.stderr and "Traceback" not in proc.stderr
    assert ("is a file, not a folder" in proc.stderr if case == "a file" else "not writable" in proc.stderr)
    assert started_cells(state) == []
    assert out == blocker or not out.exists()


def test_a_full_disk_stops_the_sweep_naming_the_cell(tmp_path, monkeypatch, capsys):
    m, out = write_matrix(tmp_path), tmp_path / "out"
    ran = []
    monkeypatch.setattr(sweep.LocalExecutor, "run", lambda self, cell, ctx: ran.append(cell.id) or ok_record(cell))

    def full(path, text):
        raise results.output_error(Path(path), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    monkeypatch.setattr(results, "write_atomic", full)
    code = sweep.cmd_sweep(sweep_args(m, "--out", out))
    err = capsys.readouterr().err
    assert code == 1
    assert f"cell {CNN}" in err and "the disk is full" in err and "the sweep stops" in err
    assert "Traceback" not in err
    assert ran == [CNN]  # the next cell was not run only to fail to be written
    assert lock_is_free(out)


def test_a_log_that_cannot_be_written_stops_the_sweep(tmp_path, capsys):
    m, out = write_matrix(tmp_path), tmp_path / "out"
    (out / "logs" / f"{CNN}.log").mkdir(parents=True)  # a folder where the log file goes
    code = sweep.cmd_sweep(sweep_args(m, "--out", out))
    err = capsys.readouterr().err
    assert code == 1 and f"cell {CNN}" in err and "the sweep stops" in err and "Traceback" not in err
    assert records(out) == {}


def test_a_python_that_cannot_start_is_a_failed_cell(tmp_path):
    m = write_matrix(tmp_path, tasks=("rnn",), executors="  local: {python: /nonexistent/python}\n")
    proc = run_bench("sweep", str(m), "--out", str(tmp_path / "out"), timeout=DEADLINE_S)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    rec = records(tmp_path / "out")[RNN]
    assert rec["status"] == "failed" and rec["error"].startswith("cannot start /nonexistent/python")
