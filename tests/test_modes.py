"""The mode axis in `bench run`: the vocabulary, the record, the mode check, the cold start."""
from __future__ import annotations

import json
import os

import pytest

from bench import external, modes, results, runner, tasks
from conftest import run_bench


def _run(tmp_path, monkeypatch, behaviour="ok", mode="reference", task_list=("cnn", "rnn", "resnet50"), epochs=None):
    monkeypatch.setenv("FAKE_MODE", behaviour)
    opts = runner.RunOptions(framework="fake", module="fake_framework", tasks=list(task_list), device="cpu",
                             data="synthetic", quick=True, epochs=epochs, mode=mode, out=tmp_path)
    code, records = runner.run(opts, log=lambda m: None)
    return code, {r["task"]: r for r in (results.load_result(p) for p in sorted(tmp_path.glob("*.json")))}


def test_names_are_checked_and_a_bad_one_lists_the_known_ones():
    assert modes.parse_list("tuned, reference,tuned") == ["tuned", "reference"]
    with pytest.raises(ValueError, match="unknown mode 'fast'; use one of reference, tuned"):
        modes.parse_list("reference,fast")
    with pytest.raises(ValueError):
        modes.parse_list(" , ")


def test_a_result_without_a_mode_is_the_reference():
    assert modes.of({}) == "reference" and modes.of({"mode": "tuned"}) == "tuned"


def test_the_reference_mode_cannot_claim_a_switch():
    with pytest.raises(ValueError, match="no switch"):
        modes.state("reference", switches=["torch.compile"])


@pytest.mark.parametrize("asked, reported, problem", [
    ("tuned", modes.state("reference"), "it ran mode 'reference', asked for 'tuned'"),
    ("tuned", modes.state("tuned"), "names no switch"),
    ("reference", {"mode": "reference", "switches": ["x"], "not_applied": {}}, "reports switches"),
    ("reference", None, "no conventions['mode'] report"),
])
def test_a_report_that_is_not_the_mode_asked_for_is_a_problem(asked, reported, problem):
    assert any(problem in p for p in modes.check_state(asked, reported))


def test_a_tuned_run_records_its_mode_and_switches_and_names_its_files(tmp_path, monkeypatch):
    code, by_task = _run(tmp_path, monkeypatch, mode="tuned")
    assert code == runner.EXIT_OK and sorted(by_task) == ["cnn", "resnet50", "rnn"]
    for task, record in by_task.items():
        assert record["status"] == "ok" and record["mode"] == "tuned"
        assert record["conventions"]["mode"]["switches"] == ["fake.fast (the fake's tuned switch)"]
    assert all("-fp32-tuned-quick-" in p.name for p in tmp_path.glob("*.json"))


def test_a_reference_run_is_labelled_reference(tmp_path, monkeypatch):
    _, by_task = _run(tmp_path, monkeypatch, task_list=("cnn",))
    assert by_task["cnn"]["mode"] == "reference" and by_task["cnn"]["conventions"]["mode"]["switches"] == []
    assert "-tuned" not in next(tmp_path.glob("*.json")).name


def test_a_framework_that_ran_another_mode_fails_the_task_never_a_result(tmp_path, monkeypatch):
    code, by_task = _run(tmp_path, monkeypatch, behaviour="lie-mode", mode="tuned", task_list=("cnn", "resnet50"))
    assert code == runner.EXIT_TASK_FAILED
    for record in by_task.values():
        assert record["status"] == "failed" and record["time_total_s"] is None
        assert "ModeMismatch" in record["error"] and "asked for 'tuned'" in record["error"]


def test_the_first_epoch_is_kept_apart_from_the_steady_ones(tmp_path, monkeypatch):
    _, by_task = _run(tmp_path, monkeypatch, task_list=("cnn", "resnet50"), epochs=3)
    cnn = by_task["cnn"]
    cold = cnn["cold_start"]
    assert cold["first_epoch_s"] == cnn["epoch_times_s"][0] and cold["steady_epochs"] == 2
    assert cold["steady_epoch_s"] == pytest.approx(sorted(cnn["epoch_times_s"][1:])[0] / 2
                                                   + sorted(cnn["epoch_times_s"][1:])[1] / 2)
    resnet = by_task["resnet50"]["cold_start"]
    assert resnet["first_batch_s"] > 0  # the warm-up batch, timed apart and not in time_total_s
    assert resnet["steady_batch_s"] == pytest.approx(by_task["resnet50"]["time_total_s"] / 2)


def test_one_epoch_has_no_steady_epoch():
    assert runner.training_cold_start([4.0]) == {"first_epoch_s": 4.0, "steady_epoch_s": None, "steady_epochs": 0}
    assert runner.training_cold_start([9.0, 3.0, 1.0, 2.0])["steady_epoch_s"] == 2.0


def test_a_non_finite_cold_start_time_is_never_a_result():
    m = runner.Measurement(time_total_s=1.0, epoch_times_s=[1.0], cold_start={"first_epoch_s": float("nan")})
    with pytest.raises(runner.NonFiniteMeasurement, match="cold_start first_epoch_s"):
        runner.check_finite("cnn", [m])


def test_the_foreign_programs_request_carries_the_mode(tmp_path):
    spec = tasks.sized("rnn", "cpu", quick=True)

    class Data:
        x_train = y_train = x_test = y_test = None

    path = external.write_request(spec, Data(), "cpu", "fp32", 0, tmp_path, "tuned")
    assert json.loads(path.read_text())["mode"] == "tuned"


def test_a_bad_mode_on_the_command_line_or_in_the_environment_is_a_usage_error(tmp_path):
    proc = run_bench("run", "--framework", "pytorch", "--mode", "fastest", "--out", str(tmp_path))
    assert proc.returncode == 2 and "unknown mode 'fastest'; use one of reference, tuned" in proc.stderr
    proc = run_bench("run", "--framework", "pytorch", "--out", str(tmp_path), env=dict(os.environ, BENCH_MODE="turbo"))
    assert proc.returncode == 2 and "$BENCH_MODE='turbo' is not allowed: use one of reference, tuned" in proc.stderr
    assert not list(tmp_path.glob("*.json"))
