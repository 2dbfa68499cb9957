"""`python -m bench` end to end: quick runs of the core frameworks, and every bad input."""
from __future__ import annotations

import json
import os

import pytest

from bench import data, frameworks, results, tasks
from conftest import require_env, run_bench

# The core frameworks by default; every framework with BENCH_TEST_ALL_FRAMEWORKS=1 (the fidelity
# suite already runs each framework's code in CI; this adds the CLI path, about a minute each).
RUNNABLE = [fw.name for fw in frameworks.FRAMEWORKS.values() if fw.language == "python" and fw.runs_here
            and (os.environ.get("BENCH_TEST_ALL_FRAMEWORKS") or fw.name in ("pytorch", "tensorflow"))]


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNNABLE)
def test_quick_run_writes_three_valid_ok_results(tmp_path, name):
    require_env(frameworks.get(name))
    proc = run_bench("run", "--framework", name, "--tasks", "cnn,rnn,resnet50", "--device", "cpu",
                     "--data", "synthetic", "--quick", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    records = [results.load_result(p) for p in sorted(tmp_path.glob("*.json"))]
    assert sorted(r["task"] for r in records) == ["cnn", "resnet50", "rnn"]
    for r in records:
        assert r["status"] == "ok" and r["framework"] == name and r["quick"] is True
        assert r["params"] in tasks.SPECS[r["task"]].expected_params
        if r["task"] == "resnet50":  # the count matches the convention the result states
            assert r["conventions"]["resnet_conv_bias"] == (r["params"] == 23_534_592)
        assert r["env"]["python"] and r["framework_version"]
        assert r["time_total_s"] > 0 and r["throughput"] > 0
    # The printed table names every task with its status.
    table = proc.stdout[proc.stdout.index("framework  "):]
    assert all(t in table for t in ("cnn", "rnn", "resnet50")) and "failed" not in table


def test_gpu_asked_for_and_absent_exits_3_with_no_ok_result(tmp_path):
    require_env(frameworks.get("pytorch"))
    proc = run_bench("run", "--framework", "pytorch", "--device", "gpu", "--tasks", "cnn",
                     "--out", str(tmp_path))
    assert proc.returncode == 3
    assert "no GPU found" in proc.stdout + proc.stderr
    records = [results.load_result(p) for p in tmp_path.glob("*.json")]
    assert records and all(r["status"] != "ok" for r in records)


def test_real_data_offline_is_a_failed_task_naming_the_file(tmp_path):
    require_env(frameworks.get("pytorch"))
    env = dict(os.environ, BENCH_DATA_DIR=str(tmp_path / "cache"), BENCH_OFFLINE="1")
    proc = run_bench("run", "--framework", "pytorch", "--tasks", "rnn", "--data", "real",
                     "--quick", "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 1
    [record] = [results.load_result(p) for p in (tmp_path / "out").glob("*.json")]
    assert record["status"] == "failed"
    assert "imdb.npz" in record["error"] and str(tmp_path / "cache") in record["error"]
    assert record["data"] is None  # no data was loaded: neither real nor synthetic


def test_corrupt_cached_data_is_a_checksum_error(tmp_path):
    require_env(frameworks.get("pytorch"))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / data.CIFAR10.filename).write_bytes(b"\x1f\x8b truncated")
    env = dict(os.environ, BENCH_DATA_DIR=str(cache), BENCH_OFFLINE="1")
    proc = run_bench("run", "--framework", "pytorch", "--tasks", "cnn", "--data", "auto",
                     "--quick", "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 1
    [record] = [results.load_result(p) for p in (tmp_path / "out").glob("*.json")]
    assert record["error"].startswith("ChecksumError") and "cifar-10-python.tar.gz" in record["error"]


@pytest.mark.parametrize("args, message", [
    (["run", "--framework", "caffe9"], "unknown framework 'caffe9'"),
    (["run", "--framework", "pytorch", "--tasks", "cnn,lstm"], "unknown task(s) lstm"),
    (["run", "--framework", "pytorch", "--epochs", "0"], "must be at least 1"),
    (["run", "--framework", "pytorch", "--data", "imagenet"], "invalid choice: 'imagenet'"),
    (["run", "--framework", "pytorch", "--seed=-1"], "must be from 0 to 4294967295"),
    (["run", "--framework", "pytorch", "--repeats", "5000"], "must be at most 1000"),
    (["baseline", "results", "-o", "b.json", "--floor", "nan"], "argument --floor"),
    (["setup", "caffe9"], "unknown framework 'caffe9'"),
])
def test_bad_arguments_are_usage_errors(args, message):
    proc = run_bench(*args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_unwritable_results_folder_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_bench("run", "--framework", "pytorch", "--out", str(blocker / "results"))
    assert proc.returncode == 2 and "is not writable" in proc.stderr


def test_framework_not_set_up_names_the_setup_command(tmp_path):
    env = dict(os.environ, BENCH_VENV_DIR=str(tmp_path / "no-venvs"))
    proc = run_bench("run", "--framework", "pytorch", "--out", str(tmp_path), env=env)
    assert proc.returncode == 2
    assert "python -m bench setup pytorch" in proc.stderr


def test_env_prints_the_environment_record():
    proc = run_bench("env")
    assert proc.returncode == 0
    record = json.loads(proc.stdout)
    for key in ("hostname", "cpu", "gpu", "driver", "python", "container_image", "git_commit"):
        assert key in record
    assert record["gpu"] is None  # no GPU on this machine


def test_list_shows_every_framework_and_its_state(tmp_path):
    env = dict(os.environ, BENCH_VENV_DIR=str(tmp_path))
    proc = run_bench("list", env=env)
    assert proc.returncode == 0
    for name in frameworks.FRAMEWORKS:
        assert name in proc.stdout
    assert "python -m bench setup pytorch" in proc.stdout


def test_table_compares_frameworks_side_by_side(tmp_path):
    import shutil

    from test_results import _record

    for fw, t in (("pytorch", 2.0), ("tensorflow", 1.0)):
        rec = _record(framework=fw, epoch_times_s=[t], time_total_s=t)
        results.write_result(rec, tmp_path)
    (tmp_path / "junk.json").write_text("{broken")
    proc = run_bench("table", str(tmp_path))
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("| framework |") and len(lines) == 4
    assert "| pytorch |" in lines[2] and "| 2.00 |" in lines[2] and "| 1.00 |" in lines[3]
    assert "skipped" in proc.stderr and "junk.json" in proc.stderr
    shutil.rmtree(tmp_path)
    assert run_bench("table", str(tmp_path)).returncode == 2
