"""`bench baseline` and `bench validate` against hostile input: non-finite or out-of-range
numbers, baselines with broken bands, output paths that cannot be written. Every case is a
clear error (exit 2) before anything runs, never a traceback and never a PASS."""
from __future__ import annotations

import errno
import json
import os
import tempfile

import pytest

from bench import cli, envinfo, results, runner, tasks, validate
from conftest import run_bench


@pytest.fixture(scope="module")
def env_record():
    return envinfo.capture()


def _record(env, framework="pytorch", task="rnn", t=2.0):
    spec = tasks.sized(task, "cpu", quick=True)
    rec = runner.base_record(framework, task, "cpu", "fp32", True, spec, env)
    rec.update(framework_version="1.0")
    if task == "resnet50":
        m = runner.Measurement(time_total_s=t, params=spec.expected_params[0], samples={"images": 64})
    else:
        m = runner.Measurement(time_total_s=t, epoch_times_s=[t], final_loss=1.0,
                               params=spec.expected_params[0], samples={"train": 1280, "test": 640})
    return runner.fill_measurements(rec, task, "synthetic", [m])


@pytest.fixture
def results_dir(tmp_path, env_record):
    folder = tmp_path / "results"
    for task, t in (("rnn", 2.0), ("cnn", 8.0), ("resnet50", 1.5)):
        results.write_result(_record(env_record, task=task, t=t), folder)
    return folder


def _args(*argv):
    return cli.build_parser().parse_args(list(argv))


@pytest.fixture
def baseline_doc(results_dir, tmp_path, capsys):
    path = tmp_path / "good.json"
    assert validate.cmd_baseline(_args("baseline", str(results_dir), "-o", str(path), "--floor", "0.3")) == 0
    capsys.readouterr()
    return json.loads(path.read_text())


@pytest.fixture
def no_runs(monkeypatch):
    """Fails the test if validate starts any `bench run`."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"validate started a run: {args}")

    monkeypatch.setattr(validate.subprocess, "run", refuse)


# ---------------------------------------------------------------- --floor and --repeats

@pytest.mark.parametrize("floor", ["nan", "NaN", "inf", "-inf", "-0.1", "1", "1.5", "1e999", "abc", ""])
def test_a_floor_that_is_not_a_tolerance_is_refused_by_argparse(floor, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        _args("baseline", str(tmp_path), "-o", str(tmp_path / "b.json"), f"--floor={floor}")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --floor:" in err and ("finite number from 0 up to" in err or "expected a number" in err)


def test_a_nan_floor_is_refused_by_the_command(tmp_path):
    proc = run_bench("baseline", str(tmp_path), "-o", str(tmp_path / "b.json"), "--floor", "nan")
    assert proc.returncode == 2 and "argument --floor" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("repeats", ["0", "-3", "1001", "2.5"])
def test_validate_repeats_out_of_range_is_refused(repeats, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        _args("validate", "--baseline", str(tmp_path / "b.json"), f"--repeats={repeats}")
    assert info.value.code == 2 and "argument --repeats:" in capsys.readouterr().err


def test_floor_zero_is_allowed_and_bands_are_never_nan(results_dir, tmp_path, capsys):
    path = tmp_path / "b.json"
    assert validate.cmd_baseline(_args("baseline", str(results_dir), "-o", str(path), "--floor", "0")) == 0
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert validate.load_baseline(path)["floor"] == 0.0


def test_runs_with_a_zero_time_make_no_band(env_record):
    zero = dict(_record(env_record), time_total_s=0.0, repeats=[{"time_total_s": 0.0}])
    assert validate.make_bands([zero], floor=0.2, warn=lambda m: None) == []
    seen = []
    good = _record(env_record, t=2.0)
    [band] = validate.make_bands([zero, good], floor=0.2, warn=seen.append)
    assert band["median"] == 2.0 and band["n"] == 1 and "not all positive finite numbers" in seen[0]


# ---------------------------------------------------------------- broken baselines

def _set(field, value):
    def change(doc):
        doc["bands"][0][field] = value
    return change


def _drop(field):
    def change(doc):
        del doc["bands"][0][field]
    return change


BROKEN = [
    ("median zero", _set("median", 0), "median"),
    ("median negative", _set("median", -1.0), "median"),
    ("high zero", _set("high", 0), "high"),
    ("tolerance negative", _set("tolerance", -0.1), "tolerance"),
    ("n zero", _set("n", 0), "n"),
    ("repeats zero", _set("repeats_per_run", 0), "repeats_per_run"),
    ("repeats huge", _set("repeats_per_run", 10 ** 9), "repeats_per_run"),
    ("median a string", _set("median", "fast"), "median"),
    ("median a boolean", _set("median", True), "median"),
    ("quick a string", _set("quick", "yes"), "quick"),
    ("variant empty", _set("variant", ""), "variant"),
    ("metric of another task", _set("metric", "seconds_per_1000"), "metric"),
    ("median missing", _drop("median"), "'median' is a required property"),
    ("variant missing", _drop("variant"), "'variant' is a required property"),
    ("high missing", _drop("high"), "'high' is a required property"),
    ("high below median", _set("high", 0.5), "not in order"),
]


@pytest.mark.parametrize("label, change, text", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_band_is_an_error_naming_file_and_band_before_any_run(
        label, change, text, baseline_doc, tmp_path, capsys, no_runs):
    doc = json.loads(json.dumps(baseline_doc))
    doc["bands"].sort(key=lambda b: b["task"] != "rnn")  # band 0 is pytorch/rnn
    change(doc)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc))
    code = validate.cmd_validate(_args("validate", "--baseline", str(path), "--out", str(tmp_path / "out")))
    err = capsys.readouterr().err
    assert code == validate.EXIT_USAGE
    assert str(path) in err and "band 0 (pytorch/rnn)" in err and text in err, err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.json"))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_band_is_refused_as_it_is_read(literal, baseline_doc, tmp_path, no_runs, capsys):
    doc = json.loads(json.dumps(baseline_doc))
    doc["bands"].sort(key=lambda b: b["task"] != "rnn")
    doc["bands"][0]["median"] = "@@"
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(doc).replace('"@@"', literal))
    with pytest.raises(validate.BaselineError, match=r"band 0 \(pytorch/rnn\): median: not a finite number"):
        validate.load_baseline(path)
    assert validate.cmd_validate(_args("validate", "--baseline", str(path))) == validate.EXIT_USAGE
    assert str(path) in capsys.readouterr().err


def test_a_band_with_zero_median_exits_2_from_the_command_before_any_run(baseline_doc, tmp_path):
    doc = json.loads(json.dumps(baseline_doc))
    for band in doc["bands"]:
        band["median"] = 0  # once a ZeroDivisionError after the benchmark had already run
    path = tmp_path / "zero.json"
    path.write_text(json.dumps(doc))
    proc = run_bench("validate", "--baseline", str(path), "--quick", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "ZeroDivisionError" not in proc.stderr
    assert "[validate]" not in proc.stdout  # nothing ran
    assert str(path) in proc.stderr and "band 0 (" in proc.stderr and "median" in proc.stderr


@pytest.mark.parametrize("content, text", [
    (b"\xff\xfe not utf-8", "not readable JSON"),
    (b"{", "not readable JSON"),
    (b"[]", "is not a baseline file"),
    (b'"bench-baseline-2"', "is not a baseline file"),
    (b'{"format": "bench-baseline-2"}', "'bands' is a required property"),
    (b'{"format": "bench-baseline-2", "bands": []}', "bands"),
    (b'{"format": "bench-baseline-2", "bands": [1]}', "band 0: 1 is not of type 'object'"),
    (b'{"format": "bench-baseline-2", "bands": {}}', "is not of type 'array'"),
    (b"[" * 100000 + b"]" * 100000, "baseline"),
])
def test_a_file_that_is_no_usable_baseline_is_refused(content, text, tmp_path):
    path = tmp_path / "b.json"
    path.write_bytes(content)
    with pytest.raises(validate.BaselineError) as info:
        validate.load_baseline(path)
    assert str(path) in str(info.value) and text in str(info.value)


def test_a_baseline_that_is_a_folder_or_missing_is_refused(tmp_path):
    with pytest.raises(validate.BaselineError, match="is not a file"):
        validate.load_baseline(tmp_path)
    with pytest.raises(validate.BaselineError, match="does not exist"):
        validate.load_baseline(tmp_path / "none.json")


def test_a_nan_band_can_never_pass(env_record):
    record = _record(env_record, t=2.0)
    band = dict(validate.make_bands([record], floor=0.2)[0])
    for broken in ({"median": float("nan")}, {"high": float("nan")}, {"median": float("nan"), "high": float("nan"),
                   "low": float("nan")}, {"high": float("inf")}, {"median": 0.0}, {"tolerance": float("nan")}):
        verdict = validate.judge(record, [dict(band, **broken)])
        assert verdict["verdict"] == "FAIL", (broken, verdict)
        assert "not a finite positive number" in verdict["body"]
    slow = dict(record, repeats=[{"time_total_s": float("nan")}])
    assert validate.judge(slow, [band])["verdict"] == "FAIL"


def test_a_task_whose_run_left_no_result_fails(env_record, tmp_path):
    record = _record(env_record, task="rnn", t=2.0)
    bands = validate.make_bands([record], floor=0.2)
    results.write_result(record, tmp_path, "rnn.json")
    (tmp_path / "cnn.json").write_text("{half a file")
    verdicts = {v["task"]: v for v in validate.judge_folder(tmp_path, "pytorch", ["cnn", "rnn", "resnet50"], bands)}
    assert verdicts["rnn"]["verdict"] == "PASS"
    for task in ("cnn", "resnet50"):
        assert verdicts[task]["verdict"] == "FAIL" and "wrote no valid result" in verdicts[task]["body"]


# ---------------------------------------------------------------- output paths

def test_baseline_output_that_is_a_folder_is_refused(results_dir, tmp_path):
    proc = run_bench("baseline", str(results_dir), "-o", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "it is a directory" in proc.stderr and str(tmp_path) in proc.stderr


def test_baseline_output_inside_a_file_is_refused(results_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_bench("baseline", str(results_dir), "-o", str(blocker / "b.json"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not writable" in proc.stderr and str(blocker) in proc.stderr


def test_baseline_output_on_a_read_only_file_system_is_refused(results_dir, tmp_path, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code = validate.cmd_baseline(_args("baseline", str(results_dir), "-o", str(tmp_path / "b.json")))
    assert code == 2 and "Read-only file system" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_baseline_output_in_a_read_only_folder_is_refused(results_dir, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        proc = run_bench("baseline", str(results_dir), "-o", str(folder / "b.json"))
    finally:
        folder.chmod(0o755)
    assert proc.returncode == 2 and "not writable" in proc.stderr and "Traceback" not in proc.stderr


def test_baseline_on_a_full_disk_is_a_clear_error(results_dir, tmp_path, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "b.json"
    code = validate.cmd_baseline(_args("baseline", str(results_dir), "-o", str(out)))
    err = capsys.readouterr().err
    assert code == 2 and f"cannot write {out}: the disk is full" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".b.json")]


def test_validate_out_that_is_a_file_is_refused_before_any_run(baseline_doc, tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(baseline_doc))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in (blocker, blocker / "inside"):
        proc = run_bench("validate", "--baseline", str(path), "--out", str(out))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "--out" in proc.stderr and "not writable" in proc.stderr and "[validate]" not in proc.stdout


def test_validate_out_unwritable_is_refused_before_any_run(baseline_doc, tmp_path, monkeypatch, capsys, no_runs):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(baseline_doc))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    code = validate.cmd_validate(_args("validate", "--baseline", str(path), "--out", str(tmp_path / "out")))
    assert code == 2 and "Read-only file system" in capsys.readouterr().err
