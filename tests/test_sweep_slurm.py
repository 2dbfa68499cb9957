"""The Slurm executor against a live one-node cluster (scripts/slurm-cluster), with two
fake GPU GRES types: jobs really go through sbatch and get the GRES type they ask for."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import pytest

from bench import frameworks, results
from conftest import REPO, require_env, run_bench

MATRIX = REPO / "tests" / "fixtures" / "matrix-slurm-test.yaml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not shutil.which("slurmctld"):
        if os.environ.get("CI"):
            pytest.fail("slurm-wlm is not installed (scripts/install.d/60-slurm.sh installs it)")
        pytest.skip("slurm-wlm is not installed here")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, BENCH_SLURM_DIR=str(state))
    script = str(REPO / "scripts" / "slurm-cluster")
    start = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stdout + start.stderr
    env["SLURM_CONF"] = str(state / "slurm.conf")
    yield env
    subprocess.run([script, "stop"], env=env, capture_output=True, timeout=60)


@pytest.mark.slow
def test_sweep_runs_each_cell_as_a_slurm_job_with_its_gres(cluster, tmp_path):
    require_env(frameworks.get("pytorch"))
    out = tmp_path / "shared-results"
    proc = run_bench("sweep", str(MATRIX), "--executor", "slurm", "--out", str(out), env=cluster,
                     timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "submitted pytorch__venv__h100__rnn__fp32__r0__quick as job" in proc.stdout
    records = {p.stem: results.load_result(p) for p in out.glob("*.json")}
    assert set(records) == {"pytorch__venv__h100__rnn__fp32__r0__quick",
                            "pytorch__venv__a100__rnn__fp32__r0__quick"}
    for cell_id, rec in records.items():
        gpu_type = rec["cell"]["gpu_type"]
        assert rec["status"] == "ok" and rec["params"] == 3_818_302
        assert rec["cell"]["executor"] == "slurm" and rec["cell"]["slurm_state"] == "COMPLETED"
        # The job really ran under Slurm (the result's environment saw its job id) ...
        assert rec["env"]["slurm_job_id"] == rec["cell"]["slurm_job_id"]
        # ... and was given the GRES type its GPU type maps to.
        assert rec["cell"]["slurm_gres"] == f"gres:gpu:{gpu_type}:1"
        job = subprocess.run(["scontrol", "show", "job", rec["cell"]["slurm_job_id"]], env=cluster,
                             capture_output=True, text=True).stdout
        assert f"gpu:{gpu_type}:1" in job
        assert (out / "logs" / f"{cell_id}.log").exists()
    again = run_bench("sweep", str(MATRIX), "--executor", "slurm", "--out", str(out), env=cluster)
    assert again.returncode == 0 and "0 to run" in again.stdout


def test_a_job_slurm_refuses_is_a_failed_cell(cluster, tmp_path):
    bad = tmp_path / "matrix.yaml"
    bad.write_text(MATRIX.read_text().replace('gres: "gpu:a100:1"', 'gres: "gpu:v100:1"'))
    proc = run_bench("sweep", str(bad), "--executor", "slurm", "--gpus", "a100",
                     "--out", str(tmp_path / "out"), env=cluster, timeout=300)
    assert proc.returncode == 1
    [rec] = [results.load_result(p) for p in (tmp_path / "out").glob("*.json")]
    assert rec["status"] == "failed" and "sbatch refused the job" in rec["error"]


def _fake_matrix(tmp_path):
    """The test matrix with the cells run by tests/fake_slow_framework.py (no framework
    needed: seconds per job, or a job that runs until it is cancelled)."""
    from test_sweep_hostile import fake_python

    python = fake_python(tmp_path / "bin")
    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX.read_text().replace(
        'poll_s: 2,', f'poll_s: 1, python: {json.dumps(str(python))},'))
    assert str(python) in path.read_text()
    return path


def test_an_out_with_blanks_and_percents_works_under_slurm(cluster, tmp_path):
    from test_sweep_hostile import fake_env

    out = tmp_path / "shared results $HOME 50%j"
    env = fake_env(tmp_path / "state", **{k: v for k, v in cluster.items() if k.startswith(("SLURM", "BENCH"))})
    proc = run_bench("sweep", str(_fake_matrix(tmp_path)), "--executor", "slurm", "--out", str(out),
                     env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    records = {p.stem: results.load_result(p) for p in out.glob("*.json")}
    assert set(records) == {"pytorch__venv__h100__rnn__fp32__r0__quick",
                            "pytorch__venv__a100__rnn__fp32__r0__quick"}
    for cell_id, rec in records.items():
        assert rec["status"] == "ok" and rec["cell"]["slurm_state"] == "COMPLETED"
        # Slurm wrote the job's output where the sweep said, '%' and blanks and all.
        assert (out / "logs" / f"{cell_id}.log").read_text().startswith("fake-slow: pid")


def test_an_interrupted_sweep_cancels_its_slurm_jobs(cluster, tmp_path):
    from test_sweep_hostile import Sweeps, alive, fake_env, poll, read_json

    state, out = tmp_path / "state", tmp_path / "out"
    env = fake_env(state, hang="all", **{k: v for k, v in cluster.items() if k.startswith(("SLURM", "BENCH"))})
    sweeps = Sweeps()
    try:
        proc = sweeps.start(_fake_matrix(tmp_path), "--executor", "slurm", "--out", out, env=env)
        # Both jobs run (one node, enough CPUs) and hang in their cells; the fake says when.
        cell = poll("the job to hang in its cell", lambda: read_json(state / "rnn-r0.json"), proc)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        sweeps.close()
    assert proc.returncode == 143, stdout[-3000:] + stderr[-2000:]
    records = {p.stem: results.load_result(p) for p in out.glob("*.json")}
    assert set(records) == {"pytorch__venv__h100__rnn__fp32__r0__quick",
                            "pytorch__venv__a100__rnn__fp32__r0__quick"}
    for rec in records.values():
        assert rec["status"] == "failed" and rec["cell"]["interrupted"] is True
        assert rec["error"] == "interrupted (SIGTERM): run the sweep again to resume"
        job_id = rec["cell"]["slurm_job_id"]
        assert job_id and f"[slurm] submitted {rec['cell']['id']} as job {job_id}" in stdout

        def ended(job_id=job_id):
            text = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=cluster,
                                  capture_output=True, text=True).stdout
            return "JobState=CANCELLED" in text or ("JobState=" not in text)

        poll(f"job {job_id} to be cancelled", ended)
    poll("the cancelled job's process to end", lambda: not alive(cell["pid"]))
