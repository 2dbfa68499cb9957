"""`python -m bench` against hostile input: environment defaults the CLI's checks would not
see, seeds and counts out of range, a corrupt environment marker. Each is a clear error or a
handled outcome, never a traceback."""
from __future__ import annotations

import json
import os

import pytest

from bench import cli, frameworks, venvs
from conftest import run_bench


def _parse(*argv):
    return cli.build_parser().parse_args(list(argv))


# ---------------------------------------------------------------- environment defaults

@pytest.mark.parametrize("variable, value, allowed", [
    ("BENCH_DEVICE", "tpu", "cpu, gpu"),
    ("BENCH_DEVICE", "GPU ", "cpu, gpu"),
    ("BENCH_DATA", "fake", "auto, real, synthetic"),
    ("BENCH_QUICK", "maybe", "1/true/yes/on or 0/false/no/off"),
    ("BENCH_QUICK", "2", "1/true/yes/on or 0/false/no/off"),
    ("BENCH_TASKS", "foo", "choose from cnn, rnn, resnet50"),
    ("BENCH_TASKS", ",", "choose from cnn, rnn, resnet50"),
])
def test_a_bad_environment_default_is_a_usage_error_naming_the_variable(variable, value, allowed, tmp_path):
    env = dict(os.environ, **{variable: value})
    proc = run_bench("run", "--framework", "pytorch", "--out", str(tmp_path), env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"${variable}={value!r}" in proc.stderr and allowed in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("variable, value", [("BENCH_DEVICE", "tpu"), ("BENCH_DATA", "fake"),
                                             ("BENCH_QUICK", "maybe"), ("BENCH_TASKS", "foo")])
def test_a_bad_environment_default_is_raised_in_process_too(variable, value, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as info:
        _parse("run", "--framework", "pytorch", "--out", str(tmp_path))
    assert info.value.code == 2 and f"${variable}={value!r}" in capsys.readouterr().err


def test_the_command_line_wins_over_a_bad_environment_default(monkeypatch, tmp_path):
    for variable, value in (("BENCH_DEVICE", "tpu"), ("BENCH_DATA", "fake"), ("BENCH_TASKS", "foo")):
        monkeypatch.setenv(variable, value)
    args = _parse("run", "--framework", "pytorch", "--device", "cpu", "--data", "synthetic",
                  "--tasks", "rnn", "--out", str(tmp_path))
    assert (args.device, args.data, args.tasks) == ("cpu", "synthetic", ["rnn"])
    monkeypatch.setenv("BENCH_QUICK", "maybe")
    assert _parse("run", "--framework", "pytorch", "--device", "cpu", "--data", "synthetic", "--tasks", "rnn",
                  "--quick", "--out", str(tmp_path)).quick is True
    monkeypatch.delenv("BENCH_TASKS")
    monkeypatch.delenv("BENCH_DEVICE")
    monkeypatch.delenv("BENCH_DATA")
    assert _parse("run", "--framework", "pytorch", "--quick", "--out", str(tmp_path)).quick is True


def test_good_environment_defaults_are_used(monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_DEVICE", "gpu")
    monkeypatch.setenv("BENCH_DATA", "real")
    monkeypatch.setenv("BENCH_TASKS", "cnn, resnet50")
    args = _parse("run", "--framework", "pytorch", "--out", str(tmp_path))
    assert (args.device, args.data, args.tasks) == ("gpu", "real", ["cnn", "resnet50"])
    assert type(args.device) is str and type(args.data) is str


@pytest.mark.parametrize("value, quick", [
    ("1", True), ("true", True), ("YES", True), ("On", True), (" yes ", True),
    ("0", False), ("false", False), ("No", False), ("OFF", False), ("", False),
])
def test_bench_quick_accepts_yes_and_no_words(value, quick, monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_QUICK", value)
    assert _parse("run", "--framework", "pytorch", "--out", str(tmp_path)).quick is quick


def test_bad_environment_defaults_do_not_break_other_commands(tmp_path):
    env = dict(os.environ, BENCH_DEVICE="tpu", BENCH_DATA="fake", BENCH_QUICK="maybe", BENCH_TASKS="foo",
               BENCH_VENV_DIR=str(tmp_path))
    proc = run_bench("list", env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "pytorch" in proc.stdout


# ---------------------------------------------------------------- seeds and counts

@pytest.mark.parametrize("argv, message", [
    (["--seed=-1"], "must be from 0 to 4294967295"),
    (["--seed", str(2 ** 32)], "must be from 0 to 4294967295"),
    (["--seed", "1.5"], "expected a whole number, got '1.5'"),
    (["--seed", "nan"], "expected a whole number"),
    (["--seed", "4294967295", "--repeats", "2"], "seeds must be below 2**32"),
    (["--repeats", "0"], "must be at least 1"),
    (["--repeats", "1001"], "must be at most 1000"),
    (["--epochs", "0"], "must be at least 1"),
    (["--epochs", "1001"], "must be at most 1000"),
    (["--epochs", "ten"], "expected a whole number"),
])
def test_numbers_out_of_range_are_usage_errors(argv, message, tmp_path):
    proc = run_bench("run", "--framework", "pytorch", "--out", str(tmp_path), *argv)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_the_largest_seed_and_counts_are_accepted(tmp_path):
    args = _parse("run", "--framework", "pytorch", "--out", str(tmp_path), "--seed", str(2 ** 32 - 1),
                  "--repeats", "1", "--epochs", "1000")
    assert args.seed == 2 ** 32 - 1 and args.epochs == 1000
    assert _parse("run", "--framework", "pytorch", "--out", str(tmp_path), "--repeats", "1000").repeats == 1000


# ---------------------------------------------------------------- a corrupt environment marker

MARKERS = {
    "garbage": b"\x00\x01garbage{{{",
    "not-utf-8": b"\xff\xfe\xfa",
    "a JSON list": b'["pins_digest"]',
    "a JSON string": b'"pins_digest"',
    "a JSON number": b"12",
    "NaN": b"NaN",
    "empty": b"",
}


def _fake_env(root, marker: bytes):
    """root/pytorch as `bench setup` leaves it, but its marker holding marker; its python is a
    stand-in that says it ran."""
    venv = root / "pytorch"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text('#!/bin/sh\necho "stand-in python ran: $*"\n')
    python.chmod(0o755)
    (venv / venvs.MARKER).write_bytes(marker)
    return venv


@pytest.mark.parametrize("name", sorted(MARKERS))
def test_a_corrupt_marker_is_stale(name, tmp_path, monkeypatch):
    _fake_env(tmp_path, MARKERS[name])
    monkeypatch.setenv("BENCH_VENV_DIR", str(tmp_path))
    fw = frameworks.get("pytorch")
    assert venvs.state(fw) == "stale" and venvs.marker_unreadable(fw)
    assert venvs.read_marker(fw) is None


def test_a_marker_that_is_a_folder_is_stale(tmp_path, monkeypatch):
    venv = _fake_env(tmp_path, b"")
    (venv / venvs.MARKER).unlink()
    (venv / venvs.MARKER).mkdir()
    monkeypatch.setenv("BENCH_VENV_DIR", str(tmp_path))
    assert venvs.state(frameworks.get("pytorch")) == "stale"


def test_a_good_marker_is_not_called_unreadable(tmp_path, monkeypatch):
    fw = frameworks.get("pytorch")
    _fake_env(tmp_path, json.dumps({"framework": "pytorch", "pins_digest": venvs.pins_digest(fw)}).encode())
    monkeypatch.setenv("BENCH_VENV_DIR", str(tmp_path))
    assert venvs.state(fw) == "ready" and not venvs.marker_unreadable(fw)


@pytest.mark.parametrize("name", ["garbage", "not-utf-8", "a JSON list", "a JSON string"])
def test_list_says_the_marker_is_unreadable(name, tmp_path):
    _fake_env(tmp_path, MARKERS[name])
    proc = run_bench("list", env=dict(os.environ, BENCH_VENV_DIR=str(tmp_path)))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("pytorch ")]
    assert "environment marker unreadable: re-run `python -m bench setup pytorch`" in line


def test_run_goes_on_into_an_environment_with_a_corrupt_marker(tmp_path):
    _fake_env(tmp_path, MARKERS["not-utf-8"])
    env = dict(os.environ, BENCH_VENV_DIR=str(tmp_path))
    env.pop("BENCH_NO_VENV", None)
    proc = run_bench("run", "--framework", "pytorch", "--tasks", "cnn", "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "stand-in python ran: -m bench run --framework pytorch" in proc.stdout
