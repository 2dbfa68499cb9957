"""The result record: schema, atomic writes, reading back."""
from __future__ import annotations

import json
import os

import pytest

from bench import envinfo, results, runner, tasks


def _record(**changes):
    spec = tasks.sized("cnn", "cpu", quick=True)
    rec = runner.base_record("pytorch", "cnn", "cpu", "fp32", True, spec, envinfo.capture())
    rec.update(framework_version="2.14.1", params=3_441_592)
    m = runner.Measurement(time_total_s=2.0, epoch_times_s=[2.0], final_loss=1.5,
                           params=3_441_592, samples={"train": 2560, "test": 640})
    runner.fill_measurements(rec, "cnn", "synthetic", [m])
    rec.update(changes)
    return rec


def test_a_filled_record_is_valid_and_has_the_required_fields():
    rec = _record()
    assert results.validation_errors(rec) == []
    for key in ("schema_version", "framework", "framework_version", "task", "device", "precision",
                "data", "params", "status", "error", "epoch_times_s", "time_total_s", "throughput",
                "seconds_per_1000", "accuracy", "hyperparameters", "env", "git_commit",
                "started_at", "finished_at"):
        assert key in rec
    for key in ("hostname", "cpu", "gpu", "driver", "cuda", "cudnn", "python", "container_image"):
        assert key in rec["env"]
    assert rec["throughput"] == pytest.approx(2560 / 2.0)
    assert rec["hyperparameters"]["lr"] == 0.01 and rec["hyperparameters"]["batch_size"] == 64


@pytest.mark.parametrize("change, where", [
    ({"status": "fine"}, "status"),
    ({"params": "3441592"}, "params"),
    ({"accuracy": 0.8}, "accuracy"),  # synthetic data never reports an accuracy
    ({"error": "boom"}, "error"),     # an ok result carries no error
    ({"task": "mlp"}, "task"),
    ({"unknown_field": 1}, "(top)"),
])
def test_schema_rejects_bad_records(change, where):
    errors = results.validation_errors(_record(**change))
    assert errors and any(e.startswith(where) for e in errors), errors


def test_failed_record_needs_an_error_text():
    rec = _record(status="failed", error=None)
    assert results.validation_errors(rec)
    assert results.validation_errors(_record(status="failed", error="RuntimeError: x")) == []


def test_write_is_atomic_and_never_overwrites(tmp_path):
    rec = _record()
    first = results.write_result(rec, tmp_path)
    second = results.write_result(rec, tmp_path)
    assert first != second and first.exists() and second.exists()
    assert results.load_result(first)["framework"] == "pytorch"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_write_refuses_an_invalid_record(tmp_path):
    with pytest.raises(results.ResultSchemaError):
        results.write_result(_record(status="maybe"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    results.write_atomic(path, '{"old": true}')

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        results.write_atomic(path, '{"new": true}')
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_load_result_refuses_foreign_and_other_versions(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.json").write_text('{"hello": 1}')
    (tmp_path / "c.json").write_text(json.dumps(_record(schema_version=2)))
    for name, message in (("a.json", "not readable JSON"), ("b.json", "not a bench result"),
                          ("c.json", "schema_version 2 is not supported")):
        with pytest.raises(results.ResultSchemaError, match=message):
            results.load_result(tmp_path / name)
