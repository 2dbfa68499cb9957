"""R and Julia through the harness: the real R run here, and the Julia launcher end to end
with a stand-in `julia` (Julia itself cannot be installed on this machine)."""
from __future__ import annotations

import os
import shutil
import sys

import pytest

from bench import frameworks, results
from conftest import fake_program_on_path, require_env, run_bench

FAKE_JULIA = """#!{python}
# Stands in for `julia --project=... bench.jl request.json`: answers like julia/bench.jl.
import json, os, sys
import numpy as np
request = json.load(open(sys.argv[-1]))
mode = os.environ.get("FAKE_JULIA_MODE", "ok")
spec = request["spec"]
if mode == "crash":
    print("ERROR: LoadError: UndefVarError: conv5 not defined", file=sys.stderr)
    sys.exit(1)
if mode == "no-gpu":
    json.dump({{"error": "no GPU found: CUDA.functional() is false"}}, open(request["measurement"], "w"))
    sys.exit(3)
params = {{"cnn": 3441592, "rnn": 3818302, "resnet50": 23508032}}[spec["name"]]
if mode == "wrong-params":
    params += 1
if mode == "skip":
    json.dump({{"skipped": "knet: no bfloat16 path"}}, open(request["measurement"], "w"))
    sys.exit(0)
name = "fp32" if mode == "lie-precision" else request["precision"]
compute = {{"fp32": "float32", "tf32": "float32", "amp-fp16": "float16", "amp-bf16": "bfloat16"}}[name]
state = {{"name": name, "tf32": name == "tf32", "compute_dtype": compute, "param_dtype": "float32",
         "loss_scaling": "dynamic" if name == "amp-fp16" else "none", "loss_scaler": None,
         "mechanism": "fake Julia", "read_back": [], "switches": {{}}}}
run_mode = "reference" if mode == "lie-mode" else request.get("mode", "reference")
mode_state = {{"mode": run_mode, "switches": [],
              "not_applied": {{"a tuned switch": "the fake documents none"}} if run_mode == "tuned" else {{}}}}
m = {{"params": params, "framework_version": "Knet 1.4.10 (Julia 1.8.5)", "env": {{"julia": "1.8.5"}},
     "conventions": {{"timing": "timed in Julia", "precision": state, "mode": mode_state,
                     "tf32_override_seen": os.environ.get("NVIDIA_TF32_OVERRIDE")}}}}
if spec["name"] == "resnet50":
    m.update(time_total_s=2.0, images=spec["batches"] * spec["batch_size"], first_batch_s=0.5,
             features_shape=[spec["batch_size"], 2048],
             features_dtype="float16" if mode == "fp16-features" else "float32")
else:
    n_test = len(np.load(request["arrays"]["x_test"]))
    np.save(request["logits"], np.zeros((n_test, spec["classes"]), dtype=np.float32))
    m.update(epoch_times_s=[1.5] * spec["epochs"], losses=[0.7] * spec["epochs"])
if mode == "nan-time":
    m["epoch_times_s"] = [float("nan")] * spec["epochs"]
json.dump(m, open(request["measurement"], "w"))
"""


@pytest.fixture
def fake_julia(tmp_path):
    return fake_program_on_path(tmp_path, "julia", FAKE_JULIA.format(python=sys.executable))


def _records(folder):
    return {r["task"]: r for r in (results.load_result(p) for p in folder.glob("*.json"))}


def test_knet_launch_intake_and_records(fake_julia, tmp_path):
    proc = run_bench("run", "--framework", "knet", "--data", "synthetic", "--quick",
                     "--out", str(tmp_path / "out"), env=fake_julia)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "--project=" in proc.stdout and "julia/bench.jl" in proc.stdout
    records = _records(tmp_path / "out")
    assert set(records) == {"cnn", "rnn", "resnet50"}
    assert all(r["status"] == "ok" and r["framework"] == "knet" for r in records.values())
    assert records["resnet50"]["seconds_per_1000"] == pytest.approx(1000 * 2.0 / 64)
    assert records["cnn"]["epoch_times_s"] == [1.5] and records["cnn"]["env"]["julia"] == "1.8.5"


@pytest.mark.parametrize("mode, status, text, code", [
    ("wrong-params", "failed", "3,441,593 trainable parameters", 1),
    ("crash", "failed", "exited with code 1", 1),
    ("no-gpu", "failed", "no GPU found", 3),
    ("nan-time", "failed", "reported an epoch time = nan, not a time", 1),
])
def test_knet_failures_become_failed_records(fake_julia, tmp_path, mode, status, text, code):
    env = dict(fake_julia, FAKE_JULIA_MODE=mode)
    proc = run_bench("run", "--framework", "knet", "--tasks", "cnn", "--data", "synthetic", "--quick",
                     "--out", str(tmp_path), env=env)
    assert proc.returncode == code, proc.stdout[-2000:]
    [record] = _records(tmp_path).values()
    assert record["status"] == status and text in record["error"]
    if mode == "crash":
        assert "UndefVarError" in record["log_tail"]


def test_knet_without_julia_points_at_the_container(tmp_path):
    env = dict(os.environ, PATH="/usr/bin:/bin", BENCH_JULIA="julia-not-here")
    proc = run_bench("run", "--framework", "knet", "--quick", "--out", str(tmp_path), env=env)
    assert proc.returncode == 2
    assert "knet needs Julia" in proc.stderr and "docker compose run bench-knet" in proc.stderr


def test_r_without_r_names_the_packages(tmp_path):
    env = dict(os.environ, BENCH_RSCRIPT="Rscript-not-here")
    proc = run_bench("run", "--framework", "r-keras", "--quick", "--out", str(tmp_path), env=env)
    assert proc.returncode == 2 and "r-cran-reticulate" in proc.stderr


def test_r_without_the_tensorflow_environment_names_the_setup_command(tmp_path):
    if not shutil.which("Rscript"):
        pytest.skip("R is not installed here")
    env = dict(os.environ, BENCH_VENV_DIR=str(tmp_path / "none"))
    proc = run_bench("run", "--framework", "r-keras", "--quick", "--out", str(tmp_path), env=env)
    assert proc.returncode == 2 and "python -m bench setup tensorflow" in proc.stderr


@pytest.mark.slow
def test_r_keras_runs_the_three_tasks_from_r(tmp_path):
    if not shutil.which("Rscript"):
        if os.environ.get("CI"):
            pytest.fail("R is not installed (scripts/install.d/50-r.sh installs it)")
        pytest.skip("R is not installed here")
    require_env(frameworks.get("tensorflow"))
    proc = run_bench("run", "--framework", "r-keras", "--tasks", "cnn,rnn,resnet50", "--device", "cpu",
                     "--data", "synthetic", "--quick", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    records = _records(tmp_path)
    assert {t: r["params"] for t, r in records.items()} == {
        "cnn": 3_441_592, "rnn": 3_818_302, "resnet50": 23_534_592}
    for r in records.values():
        assert r["status"] == "ok" and r["framework_version"].startswith("R ")
        assert r["env"]["r"].startswith("R version") and r["env"]["reticulate"]
    assert records["cnn"]["final_loss"] < 2.4 and records["cnn"]["epoch_times_s"][0] > 0


def _knet(fake_julia, tmp_path, mode, task="cnn", precision="fp32", run_mode="reference"):
    """One quick task through the stand-in julia in FAKE_JULIA_MODE mode: (process, its record)."""
    if mode is not None:
        fake_julia["FAKE_JULIA_MODE"] = mode
    proc = run_bench("run", "--framework", "knet", "--data", "synthetic", "--quick", "--tasks", task,
                     "--precision", precision, "--mode", run_mode, "--out", str(tmp_path / "out"), env=fake_julia)
    return proc, _records(tmp_path / "out")[task]


def test_the_program_is_asked_for_the_mode_and_its_report_is_kept(fake_julia, tmp_path):
    proc, record = _knet(fake_julia, tmp_path, None, task="resnet50", run_mode="tuned")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert record["mode"] == "tuned" and record["conventions"]["mode"]["not_applied"]
    assert record["cold_start"] == {"first_batch_s": 0.5, "steady_batch_s": pytest.approx(2.0 / 2)}


def test_a_program_reporting_another_mode_than_asked_is_a_failed_task(fake_julia, tmp_path):
    proc, record = _knet(fake_julia, tmp_path, "lie-mode", run_mode="tuned")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert record["status"] == "failed" and "ModeMismatch" in record["error"]
    assert "it ran mode 'reference', asked for 'tuned'" in record["error"]


def test_a_precision_the_program_cannot_run_is_skipped_with_its_reason(fake_julia, tmp_path):
    proc, record = _knet(fake_julia, tmp_path, "skip", precision="amp-bf16")
    assert proc.returncode == 4, proc.stdout[-3000:]
    assert record["status"] == "skipped" and record["precision"] == "amp-bf16"
    assert "no bfloat16 path" in record["error"] and record["time_total_s"] is None


def test_a_program_reporting_another_precision_than_asked_is_a_failed_task(fake_julia, tmp_path):
    proc, record = _knet(fake_julia, tmp_path, "lie-precision", precision="amp-bf16")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert record["status"] == "failed" and record["throughput"] is None
    assert "asked for amp-bf16" in record["error"] and "compute_dtype is 'float32'" in record["error"]


def test_the_program_runs_with_tf32_forbidden_unless_tf32_is_asked_for(fake_julia, tmp_path):
    fake_julia.pop("NVIDIA_TF32_OVERRIDE", None)
    proc, record = _knet(fake_julia, tmp_path, None)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert record["conventions"]["precision"]["name"] == "fp32"
    assert record["conventions"]["tf32_override_seen"] == "0"


def test_features_the_program_reports_as_not_float32_fail_the_task(fake_julia, tmp_path):
    proc, record = _knet(fake_julia, tmp_path, "fp16-features", task="resnet50")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert record["status"] == "failed" and "features are 'float16'" in record["error"]
