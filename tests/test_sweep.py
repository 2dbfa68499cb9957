"""The sweep: matrix validation, plan, resume, failure isolation, executors' requests."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import envinfo, frameworks, matrix, results, runner, sweep, tasks
from conftest import REPO, require_env, run_bench

LOCAL_MATRIX = """\
version: 1
tasks: [rnn]
precisions: [fp32]
repeats: 1
quick: true
data: synthetic
frameworks:
  pytorch: {}
  tensorflow: {}
gpus:
  cpu: {device: cpu}
  h100: {device: gpu, gres: "gpu:h100:1"}   # absent here: these cells fail, the others go on
"""


def _write(tmp_path, text, name="matrix.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.slow
def test_local_sweep_resumes_and_isolates_failures(tmp_path):
    for name in ("pytorch", "tensorflow"):
        require_env(frameworks.get(name))
    m, out = _write(tmp_path, LOCAL_MATRIX), tmp_path / "out"
    first = run_bench("sweep", str(m), "--executor", "local", "--out", str(out))
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-2000:]  # the h100 cells failed
    records = {p.stem: results.load_result(p) for p in out.glob("*.json")}
    assert set(records) == {f"{fw}__venv__{gpu}__rnn__fp32__r0__quick"
                            for fw in ("pytorch", "tensorflow") for gpu in ("cpu", "h100")}
    for cell_id, rec in records.items():
        assert rec["cell"]["id"] == cell_id and rec["cell"]["executor"] == "local"
        if "__cpu__" in cell_id:
            assert rec["status"] == "ok" and rec["params"] == 3_818_302
        else:
            assert rec["status"] == "failed" and "no GPU found" in rec["error"]
    assert (out / "logs" / "pytorch__venv__cpu__rnn__fp32__r0__quick.log").exists()
    assert "ok 1" in first.stdout and "left 0" in first.stdout  # progress lines

    mtimes = {p: p.stat().st_mtime for p in out.glob("*.json")}
    second = run_bench("sweep", str(m), "--executor", "local", "--out", str(out))
    assert second.returncode == 0 and "4 already done (resume), 0 to run" in second.stdout
    assert mtimes == {p: p.stat().st_mtime for p in out.glob("*.json")}  # nothing ran again

    retry = run_bench("sweep", str(m), "--executor", "local", "--out", str(out), "--rerun-failed",
                      "--dry-run")
    planned = [line.split()[1] for line in retry.stdout.splitlines() if line.startswith("  run ")]
    assert sorted(planned) == sorted(c for c in records if "__h100__" in c)


def _cell(**kw):
    base = dict(framework="pytorch", variant="venv", gpu="cpu", device="cpu", task="rnn",
                precision="fp32", repeat=0, quick=True)
    return matrix.Cell(**{**base, **kw})


def _ok_record(cell):
    spec = tasks.sized(cell.task, cell.device, cell.quick)
    rec = runner.base_record(cell.framework, cell.task, cell.device, cell.precision, cell.quick,
                             spec, envinfo.capture())
    rec["framework_version"] = "2.14.1"
    m = runner.Measurement(time_total_s=1.0, epoch_times_s=[1.0], params=3_818_302,
                           samples={"train": 1280, "test": 640}, final_loss=0.5)
    return runner.fill_measurements(rec, cell.task, "synthetic", [m])


def test_resume_never_counts_a_reference_result_as_a_tuned_one(tmp_path):
    reference, tuned = _cell(), _cell(mode="tuned")
    assert sweep.store(tmp_path, reference, _ok_record(reference)) == "ok"

    class Args:
        force = rerun_failed = False

    todo, done = sweep.plan([reference, tuned], tmp_path, Args())
    assert todo == [tuned] and done == [(reference, "ok")]  # the reference result counts once, for its cell
    # A folder swept before the mode axis: its files carry no mode and the reference ids; they
    # are the reference cells, done, and never the tuned cells.
    old = tmp_path / "old"
    rec = _ok_record(reference)
    rec.pop("mode", None)
    results.write_result(rec, old, f"{reference.id}.json")
    assert sweep.existing(old, reference)["status"] == "ok" and sweep.existing(old, tuned) is None
    # A tuned result copied under a reference cell's name is not that cell's result.
    stray = tmp_path / "stray"
    tuned_rec = dict(_ok_record(tuned), mode="tuned")
    results.write_result(tuned_rec, stray, f"{reference.id}.json")
    assert sweep.existing(stray, reference) is None
    todo, _ = sweep.plan([reference], stray, Args())
    assert todo == [reference]


def test_a_run_that_recorded_another_mode_is_never_kept_as_the_cells_figure(tmp_path):
    """An image built before the mode axis ignores BENCH_MODE and runs the reference: the tuned
    cell fails and says so instead of keeping a reference figure under a tuned id."""
    tuned = _cell(mode="tuned")
    old_image = _ok_record(tuned)
    old_image.pop("mode", None)  # an image from before the mode axis writes no mode: the reference
    results.write_result(old_image, tmp_path, "r.json")
    record = sweep.collect(tuned, "docker", tmp_path, 0, "log text")
    assert record["status"] == "failed" and record["mode"] == "tuned"
    assert "recorded mode 'reference', the cell asked for 'tuned'" in record["error"]
    kept = sweep.collect(_cell(), "docker", tmp_path, 0, "log text")
    assert kept["status"] == "ok" and kept["cell"]["id"] == _cell().id


def test_an_ok_result_is_never_replaced_by_a_failed_one(tmp_path):
    cell = _cell()
    assert sweep.store(tmp_path, cell, _ok_record(cell)) == "ok"
    failed = sweep.failure_record(cell, "local", "failed", "boom", "log")
    assert "kept the earlier ok result" in sweep.store(tmp_path, cell, failed)
    assert results.load_result(tmp_path / f"{cell.id}.json")["status"] == "ok"
    [attempt] = (tmp_path / "attempts").glob("*.json")
    assert results.load_result(attempt)["error"] == "boom"


def test_interrupt_keeps_finished_cells_and_marks_the_running_one(tmp_path):
    require_env(frameworks.get("tensorflow"))
    # Two cells: the h100 one ends at once (no GPU here), then the cpu one is interrupted.
    m = _write(tmp_path, LOCAL_MATRIX.split("frameworks:")[0] + "frameworks:\n  tensorflow: {}\n"
               "gpus:\n  h100: {device: gpu, gres: 'gpu:h100:1'}\n  cpu: {device: cpu}\n")
    out = tmp_path / "out"
    finished, running = ("tensorflow__venv__h100__rnn__fp32__r0__quick",
                         "tensorflow__venv__cpu__rnn__fp32__r0__quick")
    proc = subprocess.Popen([sys.executable, "-m", "bench", "sweep", str(m), "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Wait for a state, not for a time: the sweep names the cell it has started (and its
        # process id) in the folder's lock file once that process exists.
        deadline, pid = time.monotonic() + 600, None
        while pid is None:
            holder = sweep.read_holder(out / sweep.LOCK_NAME) or {}
            pid = next((r.get("pid") for r in holder.get("running") or [] if r.get("cell") == running), None)
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the sweep never started the cpu cell: " + "".join(proc.communicate()))
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stdout + stderr
    assert "the next run resumes" in stderr
    recs = {r["cell"]["id"]: r for r in (results.load_result(p) for p in out.glob("*.json"))}
    assert set(recs) == {finished, running}
    assert recs[finished]["status"] == "failed" and "no GPU found" in recs[finished]["error"]
    assert not recs[finished]["cell"].get("interrupted")  # finished before the signal: kept as it was
    assert recs[running]["status"] == "failed" and recs[running]["cell"]["interrupted"] is True
    assert recs[running]["error"] == "interrupted (SIGINT): run the sweep again to resume"
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    assert not [p for p in out.iterdir() if p.name.startswith(sweep.TEMP_PREFIX)], "temp folder left"


@pytest.mark.parametrize("change, message", [
    ("frameworks:\n  caffe3: {}\n", "framework 'caffe3' (line 10) has no implementation"),
    ("frameworks:\n  pytorch:\n    variants:\n      cu999: {pip_index: x}\n",
     "frameworks.pytorch.variants.cu999 (line 12) has no image"),
    ("frameworks:\n  pytorch:\n    baseline_variant: cu1\n    variants: {cu2: {base_image: a}}\n",
     "baseline_variant 'cu1' (line 11) is not one of its variants"),
    ("gpus:\n  h200: {gres: 'gpu:h200:1'}\n", "GPU type 'h200' (line 10) has no mapping"),
    ("colour: blue\n", "unknown key 'colour' (line 9)"),
    ("frameworks:\n  pytorch: {shoe_size: 9}\n", "unknown key 'frameworks.pytorch.shoe_size' (line 10)"),
])
def test_matrix_errors_name_the_key_and_its_line(tmp_path, change, message):
    base = "version: 1\ntasks: [cnn]\nprecisions: [fp32]\nrepeats: 1\nquick: true\ndata: synthetic\n" \
           "timeout_s: 60\nexecutors: {local: {}}\n"
    defaults = {"frameworks": "frameworks:\n  pytorch: {}\n", "gpus": "gpus:\n  cpu: {device: cpu}\n"}
    key = change.split(":")[0]
    text = base + change + "".join(v for k, v in defaults.items() if k != key)
    with pytest.raises(matrix.MatrixError) as info:
        matrix.load(_write(tmp_path, text))
    assert message in str(info.value)


def test_the_shipped_matrix_is_valid_and_expands():
    m = matrix.load(REPO / "matrix.yaml")
    local = m.cells("local", only_gpus=["cpu"], quick=True)
    assert len(local) == len(m.frameworks) * len(m.doc["tasks"]) * len(m.doc["modes"]) * m.doc["repeats"]
    assert all(c.variant == "venv" and c.quick for c in local)
    docker_cells = m.cells("docker", only_frameworks=["pytorch"], only_gpus=["h100"])
    assert {c.variant for c in docker_cells} == set(m.variants("pytorch"))
    assert len({c.id for c in m.cells("docker")}) == len(m.cells("docker"))  # stable, unique ids


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    proc = run_bench("sweep", str(REPO / "matrix.yaml"), "--gpus", "cpu", "--quick", "--dry-run",
                     "--out", str(tmp_path / "out"))
    assert proc.returncode == 0
    assert "pytorch__venv__cpu__cnn__fp32__r0__quick" in proc.stdout
    assert not (tmp_path / "out" / "logs").exists()


def test_precisions_on_the_command_line_replace_the_matrixs(tmp_path):
    proc = run_bench("sweep", str(REPO / "matrix.yaml"), "--gpus", "cpu", "--quick", "--frameworks", "pytorch",
                     "--tasks", "cnn", "--precisions", "fp32,amp-bf16,fp32", "--repeats", "1", "--dry-run",
                     "--modes", "reference", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    planned = [line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("  run  ")]
    assert planned == ["pytorch__venv__cpu__cnn__fp32__r0__quick", "pytorch__venv__cpu__cnn__amp-bf16__r0__quick"]
    proc = run_bench("sweep", str(REPO / "matrix.yaml"), "--precisions", "bf16", "--dry-run")
    assert proc.returncode == 2 and "unknown precision 'bf16' ('bf16' is now 'amp-bf16')" in proc.stderr


def test_repeats_on_the_command_line_replace_the_matrixs(tmp_path):
    proc = run_bench("sweep", str(REPO / "matrix.yaml"), "--gpus", "cpu", "--quick", "--frameworks", "pytorch",
                     "--tasks", "rnn", "--repeats", "4", "--modes", "reference", "--dry-run", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    planned = [line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("  run  ")]
    assert planned == [f"pytorch__venv__cpu__rnn__fp32__r{i}__quick" for i in range(4)]
    proc = run_bench("sweep", str(REPO / "matrix.yaml"), "--gpus", "cpu", "--quick", "--frameworks", "pytorch",
                     "--tasks", "rnn", "--precisions", "fp32,amp-bf16", "--repeats", "2", "--dry-run",
                     "--modes", "reference", "--out", str(tmp_path / "o2"))
    planned = [line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("  run  ")]
    # repeats outermost: both sides of a precision A/B meet the same drift of the machine
    assert planned == [f"pytorch__venv__cpu__rnn__{p}__r{i}__quick" for i in range(2) for p in ("fp32", "amp-bf16")]
    for bad in ("0", "101", "two"):
        proc = run_bench("sweep", str(REPO / "matrix.yaml"), "--repeats", bad, "--dry-run")
        assert proc.returncode == 2 and "--repeats" in proc.stderr and "Traceback" not in proc.stderr


def test_the_matrixs_modes_run_side_by_side_and_modes_on_the_command_line_replace_them(tmp_path):
    proc = run_bench("sweep", str(REPO / "matrix.yaml"), "--gpus", "cpu", "--quick", "--frameworks", "pytorch",
                     "--tasks", "cnn", "--repeats", "2", "--dry-run", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    planned = [line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("  run  ")]
    # matrix.yaml has modes: [reference, tuned]; repeats outermost, the two modes back to back
    assert planned == [f"pytorch__venv__cpu__cnn__fp32{m}__r{i}__quick" for i in range(2) for m in ("", "__tuned")]
    proc = run_bench("sweep", str(REPO / "matrix.yaml"), "--gpus", "cpu", "--quick", "--frameworks", "pytorch",
                     "--tasks", "cnn", "--repeats", "1", "--modes", "tuned", "--dry-run", "--out", str(tmp_path / "o"))
    planned = [line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("  run  ")]
    assert planned == ["pytorch__venv__cpu__cnn__fp32__tuned__r0__quick"]
    for bad, name in (("fast", "fast"), ("reference,compiled", "compiled"), (",", None)):
        proc = run_bench("sweep", str(REPO / "matrix.yaml"), "--modes", bad, "--dry-run")
        assert proc.returncode == 2 and "argument --modes" in proc.stderr and "Traceback" not in proc.stderr
        assert ("reference, tuned" in proc.stderr) and (name is None or f"unknown mode {name!r}" in proc.stderr)


def test_cli_narrowing_errors(tmp_path):
    proc = run_bench("sweep", str(REPO / "matrix.yaml"), "--frameworks", "theano", "--dry-run")
    assert proc.returncode == 2 and "'theano' is not in" in proc.stderr
    proc = run_bench("sweep", str(REPO / "matrix.yaml"), "--gpus", "v100", "--dry-run")
    assert proc.returncode == 2 and "'v100' is not in" in proc.stderr


class _Args:
    data, timeout = "synthetic", 600


def test_docker_executor_request(tmp_path):
    docker = pytest.importorskip("docker")
    m = matrix.load(REPO / "matrix.yaml")
    executor = sweep.DockerExecutor(m, _Args(), client=object())
    gpu_cell = _cell(variant="cu130", gpu="h100", device="gpu", task="cnn", quick=False)
    kw = executor.run_kwargs(gpu_cell, tmp_path)
    assert kw["image"] == "bench-pytorch:cu130"
    assert kw["command"][:4] == ["--framework", "pytorch", "--tasks", "cnn"]
    assert kw["command"][kw["command"].index("--out") + 1] == "/results"
    assert kw["volumes"] == {"bench-data": {"bind": "/data", "mode": "rw"},
                             str(tmp_path): {"bind": "/results", "mode": "rw"}}
    [request] = kw["device_requests"]
    assert isinstance(request, docker.types.DeviceRequest)
    assert request["Count"] == 1 and request["Capabilities"] == [["gpu"]]
    cpu_kw = executor.run_kwargs(_cell(variant="cu130"), tmp_path)
    assert "device_requests" not in cpu_kw and "--quick" in cpu_kw["command"]


def test_each_executor_passes_the_cells_mode(tmp_path, monkeypatch):
    pytest.importorskip("docker")
    m = matrix.load(REPO / "matrix.yaml")
    for mode in ("reference", "tuned"):
        cell = _cell(variant="cu130", mode=mode)
        # local (and slurm's venv runner): --mode on `bench run`'s command line, whatever
        # $BENCH_MODE the sweep itself was started with
        args = sweep.run_args(cell, "synthetic", "/o")
        assert args[args.index("--mode") + 1] == mode and args.count("--mode") == 1
        assert args[args.index("--precision") + 1] == "fp32"
        # docker: BENCH_MODE in the container's environment, as compose.yml's services
        kw = sweep.DockerExecutor(m, _Args(), client=object()).run_kwargs(cell, tmp_path)
        assert kw["environment"]["BENCH_MODE"] == mode and "--mode" not in kw["command"]
        assert kw["labels"] == {"bench.cell": cell.id}
        monkeypatch.setattr(sweep.shutil, "which", lambda name: "/usr/bin/" + name)
        slurm = sweep.SlurmExecutor(m, _Args())
        for runner_name in ("venv", "podman", "apptainer", "pyxis"):
            slurm.runner = runner_name
            argv = slurm.command(cell, tmp_path / "o")
            assert argv[argv.index("--mode") + 1] == mode, runner_name
            assert f"--mode {mode} " in slurm.script(cell, tmp_path / "o", tmp_path / "log")


def test_a_local_cell_runs_with_the_mode_of_the_cell(tmp_path, monkeypatch):
    """The command the local executor starts, seen by a stand-in interpreter that records it."""
    seen = tmp_path / "argv"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {seen}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("BENCH_MODE", "reference")  # never what a tuned cell runs with

    class Args:
        data, timeout = "synthetic", 600

    m = matrix.load(_write(tmp_path, LOCAL_MATRIX.replace("frameworks:", "executors:\n  local: {python: %s}\n"
                                                          "frameworks:" % fake)))
    executor = sweep.LocalExecutor(m, Args())
    out = tmp_path / "out"
    out.mkdir()
    (out / "logs").mkdir()
    ctx = sweep.Context(out, out / "logs")
    record = executor.run(_cell(mode="tuned"), ctx)
    words = seen.read_text().split()
    assert words[words.index("--mode") + 1] == "tuned"
    assert record["status"] == "failed" and record["mode"] == "tuned"  # it wrote no result
    assert record["cell"]["id"] == "pytorch__venv__cpu__rnn__fp32__tuned__r0__quick"


class _FakeContainer:
    """Reports "running" for a number of reloads, then exits with a code."""

    def __init__(self, running_polls, exit_code=0):
        self.polls, self.running_polls, self.exit_code = 0, running_polls, exit_code
        self.status, self.attrs = "created", {}

    def reload(self):
        self.polls += 1
        done = self.polls > self.running_polls
        self.status = "exited" if done else "running"
        self.attrs = {"State": {"ExitCode": self.exit_code if done else 0}}


def test_the_docker_executor_polls_for_the_exit_code():
    container = _FakeContainer(running_polls=3, exit_code=3)
    assert sweep.wait_for_exit(container, timeout=60, poll_s=0.01) == 3
    assert container.polls == 4


def test_the_docker_executor_gives_up_at_the_timeout():
    container = _FakeContainer(running_polls=10_000)
    with pytest.raises(TimeoutError, match="still running after 0 s"):
        sweep.wait_for_exit(container, timeout=0.05, poll_s=0.01)


def test_slurm_job_scripts(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep.shutil, "which", lambda name: "/usr/bin/" + name)
    m = matrix.load(REPO / "matrix.yaml")
    executor = sweep.SlurmExecutor(m, _Args())
    cell = _cell(gpu="h100", device="gpu", task="resnet50", quick=False)
    script = executor.script(cell, tmp_path / "o", tmp_path / "log")
    assert "#SBATCH --gres=gpu:h100:1" in script and "#SBATCH --time=04:00:00" in script
    assert "-m bench run --framework pytorch --tasks resnet50 --device gpu" in script
    executor.runner = "podman"
    podman = executor.script(_cell(variant="cu130", gpu="h100", device="gpu"), tmp_path / "o", tmp_path / "l")
    assert "podman run --rm --device nvidia.com/gpu=all" in podman and "bench-pytorch:cu130" in podman
    assert podman.strip().endswith("--out /results --quick") and " run --framework" not in podman
