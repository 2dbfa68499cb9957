"""The harness's run logic on a NumPy test double: statuses, isolation, exit codes, statistics."""
from __future__ import annotations


import pytest

from bench import results, runner, stats


def _run(tmp_path, monkeypatch, mode="ok", device="cpu", repeats=1, task_list=("cnn", "rnn", "resnet50")):
    monkeypatch.setenv("FAKE_MODE", mode)
    opts = runner.RunOptions(framework="fake", module="fake_framework", tasks=list(task_list),
                             device=device, data="synthetic", quick=True, repeats=repeats,
                             out=tmp_path)
    code, records = runner.run(opts, log=lambda m: None)
    files = sorted(tmp_path.glob("*.json"))
    return code, records, [results.load_result(p) for p in files]


def test_all_ok_writes_one_valid_result_per_task(tmp_path, monkeypatch):
    code, records, on_disk = _run(tmp_path, monkeypatch)
    assert code == runner.EXIT_OK
    assert sorted(r["task"] for r in on_disk) == ["cnn", "resnet50", "rnn"]
    assert all(r["status"] == "ok" and r["data"] == "synthetic" and r["accuracy"] is None for r in on_disk)
    resnet = next(r for r in on_disk if r["task"] == "resnet50")
    assert resnet["samples"]["images"] == 2 * 32  # quick CPU size: 2 timed batches, warm-up excluded
    assert resnet["seconds_per_1000"] == pytest.approx(1000 * resnet["time_total_s"] / 64)
    cnn = next(r for r in on_disk if r["task"] == "cnn")
    assert cnn["samples"]["train"] == 40 * 64 and len(cnn["epoch_times_s"]) == 1


def test_a_failing_task_does_not_stop_the_others(tmp_path, monkeypatch):
    code, _, on_disk = _run(tmp_path, monkeypatch, mode="raise-rnn")
    assert code == runner.EXIT_TASK_FAILED
    status = {r["task"]: r["status"] for r in on_disk}
    assert status == {"cnn": "ok", "rnn": "failed", "resnet50": "ok"}
    rnn = next(r for r in on_disk if r["task"] == "rnn")
    assert "refuses to build" in rnn["error"] and "in build_rnn" in rnn["log_tail"]


def test_nan_loss_fails_the_task(tmp_path, monkeypatch):
    code, _, on_disk = _run(tmp_path, monkeypatch, mode="nan", task_list=("cnn",))
    assert code == runner.EXIT_TASK_FAILED
    assert on_disk[0]["status"] == "failed" and "nan" in on_disk[0]["error"].lower()


def test_out_of_memory_is_its_own_status(tmp_path, monkeypatch):
    _, _, on_disk = _run(tmp_path, monkeypatch, mode="oom", task_list=("resnet50",))
    assert on_disk[0]["status"] == "oom"


@pytest.mark.parametrize("mode, text", [("wrong-params", "12,345 trainable parameters"),
                                        ("wrong-shape", "shape (640, 3)")])
def test_fidelity_breaches_fail_the_task(tmp_path, monkeypatch, mode, text):
    _, _, on_disk = _run(tmp_path, monkeypatch, mode=mode, task_list=("cnn",))
    assert on_disk[0]["status"] == "failed" and text in on_disk[0]["error"]


def test_absent_gpu_is_an_error_with_no_ok_result(tmp_path, monkeypatch):
    code, _, on_disk = _run(tmp_path, monkeypatch, device="gpu")
    assert code == runner.EXIT_NO_DEVICE
    assert on_disk and all(r["status"] == "failed" and "no GPU found" in r["error"] for r in on_disk)


def test_repeats_give_median_and_spread(tmp_path, monkeypatch):
    _, _, on_disk = _run(tmp_path, monkeypatch, repeats=3, task_list=("cnn",))
    rec = on_disk[0]
    totals = [r["time_total_s"] for r in rec["repeats"]]
    assert len(totals) == 3
    assert rec["time_total_s"] == pytest.approx(sorted(totals)[1])
    assert rec["stats"]["time_total_s"]["n"] == 3 and rec["stats"]["time_total_s"]["ci95"] is not None


def test_throughput_is_total_samples_over_total_time():
    m = [runner.Measurement(time_total_s=t, epoch_times_s=[t / 2, t / 2], params=1,
                            samples={"train": 1000, "test": 10}) for t in (1.0, 4.0, 2.0)]
    rec = runner.fill_measurements({}, "cnn", "real", m)
    assert rec["time_total_s"] == 2.0 and rec["throughput"] == pytest.approx(500.0)
    assert rec["epoch_times_s"] == [1.0, 1.0]  # the median repeat's epochs


def test_summarize():
    s = stats.summarize([1.0, 2.0, 3.0, 10.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 10.0 and s["mad"] == 1.0
    lo, hi = s["ci95"]
    assert 1.0 <= lo <= 2.5 <= hi <= 10.0
    assert stats.summarize([]) is None


def test_summary_table_lists_every_record(tmp_path, monkeypatch):
    _, records, _ = _run(tmp_path, monkeypatch, mode="raise-rnn")
    table = runner.summary_table(records).splitlines()
    assert len(table) == 4 and "failed" in table[2] and "3,441,592" in table[1]


def test_a_full_disk_for_one_result_does_not_stop_the_other_tasks(tmp_path, monkeypatch):
    import errno

    import os

    real_write, real_fsync = results.write_atomic, os.fsync
    calls = []

    def full_for_the_first(path, text):
        calls.append(path)
        if len(calls) == 1:  # the first result meets a full disk as it is flushed
            def full(fd):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            monkeypatch.setattr(os, "fsync", full)
        try:
            return real_write(path, text)
        finally:
            monkeypatch.setattr(os, "fsync", real_fsync)

    monkeypatch.setattr(results, "write_atomic", full_for_the_first)
    logged = []
    monkeypatch.setenv("FAKE_MODE", "ok")
    opts = runner.RunOptions(framework="fake", module="fake_framework", tasks=["cnn", "rnn", "resnet50"],
                             data="synthetic", quick=True, out=tmp_path)
    code, records = runner.run(opts, log=logged.append)
    assert code == runner.EXIT_TASK_FAILED  # a result that was not written is not a success
    assert [r["task"] for r in records] == ["cnn", "rnn", "resnet50"]  # the run went on
    assert any(m.startswith("error: could not write the cnn result: cannot write ")
               and "the disk is full" in m for m in logged), logged
    on_disk = sorted(results.load_result(p)["task"] for p in tmp_path.glob("*.json"))
    assert on_disk == ["resnet50", "rnn"]
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written file left beside them
    table = runner.summary_table(records).splitlines()  # the summary still covers every task
    assert len(table) == 4 and "cnn" in table[1]


def test_a_non_finite_measured_time_is_a_failed_task_never_a_result(tmp_path, monkeypatch):
    real = runner.measure_training

    def nan_time(*args, **kwargs):
        m = real(*args, **kwargs)
        m.time_total_s = float("nan")
        return m

    monkeypatch.setattr(runner, "measure_training", nan_time)
    code, _, on_disk = _run(tmp_path, monkeypatch, task_list=("cnn", "resnet50"))
    assert code == runner.EXIT_TASK_FAILED
    status = {r["task"]: r for r in on_disk}
    assert status["cnn"]["status"] == "failed" and status["resnet50"]["status"] == "ok"
    assert "NonFiniteMeasurement" in status["cnn"]["error"] and "time_total_s = nan" in status["cnn"]["error"]
    assert status["cnn"]["time_total_s"] is None


@pytest.mark.parametrize("field, value, text", [
    ("time_total_s", float("inf"), "not a finite number"), ("accuracy", float("nan"), "not a finite number"),
    ("final_loss", float("-inf"), "not a finite number"), ("epoch_times_s", [1.0, float("nan")], "not a finite number"),
    ("time_total_s", 0.0, "more than zero"),
])
def test_fill_measurements_refuses_every_non_finite_figure(field, value, text):
    m = runner.Measurement(time_total_s=2.0, epoch_times_s=[1.0, 1.0], accuracy=0.5, final_loss=1.0,
                           params=1, samples={"train": 100, "test": 10})
    setattr(m, field, value)
    record = {"status": "failed"}
    with pytest.raises(runner.NonFiniteMeasurement, match=text):
        runner.fill_measurements(record, "cnn", "real", [m])
    assert record == {"status": "failed"}  # untouched: never half an ok record


def test_real_data_that_failed_to_load_is_recorded_as_not_loaded(tmp_path, monkeypatch):
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    monkeypatch.setenv("BENCH_DATA_DIR", str(cache))
    monkeypatch.setenv("FAKE_MODE", "ok")
    out = tmp_path / "out"
    opts = runner.RunOptions(framework="fake", module="fake_framework", tasks=["cnn"], data="real",
                             quick=True, out=out)
    code, records = runner.run(opts, log=lambda m: None)
    assert code == runner.EXIT_TASK_FAILED
    [record] = [results.load_result(p) for p in out.glob("*.json")]
    assert record["status"] == "failed"
    assert "cifar-10-python.tar.gz" in record["error"] and str(cache) in record["error"]
    assert record["data"] is None  # neither real nor synthetic data was loaded
    assert "-" in runner.summary_table(records).splitlines()[1].split()


def test_data_says_what_was_loaded(tmp_path, monkeypatch):
    _, _, on_disk = _run(tmp_path, monkeypatch, task_list=("cnn",))
    assert on_disk[0]["data"] == "synthetic"
    spec = runner.tasks.sized("cnn", "cpu", True)
    assert runner.base_record("fake", "cnn", "cpu", "fp32", True, spec, {})["data"] is None


def test_a_started_at_that_is_not_a_date_time_is_refused():
    spec = runner.tasks.sized("cnn", "cpu", True)
    rec = runner.base_record("fake", "cnn", "cpu", "fp32", True, spec, runner.envinfo.capture())
    rec.update(error="RuntimeError: x")
    results.validate(rec)  # as written: valid
    with pytest.raises(results.ResultSchemaError, match="started_at"):
        results.validate(dict(rec, started_at="yesterday"))


def test_every_ok_result_carries_its_flop_rate_peak_memory_and_the_peak_or_why_not(tmp_path, monkeypatch):
    from bench import flops

    _, _, on_disk = _run(tmp_path, monkeypatch, repeats=2)
    for r in on_disk:
        fl = r["flops"]
        assert fl["per_sample"] == flops.per_sample(r["task"], flops.spec_from_hyperparameters(r["task"], r["hyperparameters"]))[
            "forward" if r["task"] == "resnet50" else "training"]
        samples = r["samples"]["images" if r["task"] == "resnet50" else "train"]
        assert fl["achieved_flops_per_s"] == pytest.approx(fl["per_sample"] * samples / r["time_total_s"])
        # the CPU's peak, or why it is unknown: never a silent blank
        assert (fl["peak_flops_per_s"] is None) == (fl["mfu"] is None) and fl["peak_source"]
        assert r["telemetry"]["enabled"] and r["telemetry"]["host_memory_peak_bytes"] > 0
