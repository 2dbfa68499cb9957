"""Hostile result files: every bad file is skipped with a warning naming it, each
measurement counts once, and no non-finite number is ever read or written as a result."""
from __future__ import annotations

import copy
import errno
import json
import os
import subprocess
import sys

import pytest

from bench import report, results, table
from conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "results"


def _fixture(name_part: str) -> dict:
    path = next(p for p in sorted(FIXTURES.glob("*.json")) if name_part in p.name)
    return json.loads(path.read_text())


def _load(*folders):
    warnings = []
    return results.load_results(folders, warnings.append), warnings


def _cell_record(base: dict, cell_id: str, status: str = "ok", finished: str = "2026-11-22T11:03:00Z"):
    rec = copy.deepcopy(base)
    rec["cell"] = {"id": cell_id, "variant": "venv", "gpu_type": "cpu", "repeat": 0, "executor": "local"}
    rec["finished_at"] = finished
    if status != "ok":
        rec.update(status=status, error="RuntimeError: boom", time_total_s=None, throughput=None,
                   epoch_times_s=None, repeats=[], stats=None)
    return rec


# ---------------------------------------------------------------- non-finite numbers

@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_time_in_a_file_is_refused_naming_the_file(tmp_path, text):
    path = tmp_path / "nan.json"
    # Replace the top-level figure alone: the document stays otherwise valid.
    doc = _fixture("pytorch-cnn-cpu")
    path.write_text(json.dumps(doc, indent=2).replace(f'"time_total_s": {doc["time_total_s"]},',
                                                      f'"time_total_s": {text},', 1))
    assert f'"time_total_s": {text},' in path.read_text()
    with pytest.raises(results.ResultSchemaError) as info:
        results.load_result(path)
    assert "nan.json" in str(info.value)
    assert "not a number a result can hold" in str(info.value) or "not a finite number" in str(info.value)


def test_a_non_finite_figure_is_never_written():
    rec = _fixture("pytorch-cnn-cpu")
    rec["repeats"][0]["time_total_s"] = float("nan")
    with pytest.raises(results.ResultSchemaError, match="repeats/0/time_total_s: not a finite number"):
        results.validate(rec)
    with pytest.raises(ValueError):
        results.dumps(rec)


def test_a_folder_with_nan_results_gives_no_nan_anywhere(tmp_path):
    doc = _fixture("pytorch-cnn-cpu")
    (tmp_path / "nan.json").write_text(json.dumps(doc).replace(
        f'"time_total_s": {doc["time_total_s"]}', '"time_total_s": NaN', 1))
    records, warnings = _load(tmp_path)
    assert records == [] and any("nan.json" in w for w in warnings)
    good = tmp_path / "good"
    results.write_result(_fixture("pytorch-rnn-cpu"), good, "good.json")
    records, _ = _load(tmp_path)
    assert "nan" not in table.comparison_table(records).lower()


def test_a_date_that_is_not_a_date_is_refused():
    rec = _fixture("pytorch-cnn-cpu")
    rec["started_at"] = "yesterday"
    assert any(e.startswith("started_at") for e in results.validation_errors(rec))


# ---------------------------------------------------------------- each measurement once

def test_copies_of_one_file_count_once(tmp_path):
    rec = _fixture("pytorch-cnn-cpu")
    for folder in ("a", "b"):
        results.write_result(rec, tmp_path / folder, "copy.json")
    results.write_result(rec, tmp_path / "a", "copy-2.json")
    records, warnings = _load(tmp_path / "a", tmp_path / "b")
    assert len(records) == 1
    assert sum("the same measurement as" in w for w in warnings) == 2
    [t] = report.build_tables(records)
    assert t.cell("pytorch", t.columns[0]).spread is None  # n=1, not three repeats


def test_a_cell_counts_once_and_an_ok_result_wins_over_a_later_failure(tmp_path):
    base = _fixture("pytorch-cnn-cpu")
    cell = "pytorch__venv__cpu__cnn__fp32__r0__quick"
    results.write_result(_cell_record(base, cell, "ok", "2026-11-22T11:00:00Z"), tmp_path, "ok.json")
    results.write_result(_cell_record(base, cell, "failed", "2026-11-22T12:00:00Z"), tmp_path / "attempts",
                         "later-failed.json")
    records, warnings = _load(tmp_path)
    assert [r["status"] for r in records] == ["ok"]
    assert any("later-failed.json" in w and "ok.json" in w for w in warnings)


def test_of_two_ok_runs_of_a_cell_the_latest_counts(tmp_path):
    base = _fixture("pytorch-cnn-cpu")
    cell = "pytorch__venv__cpu__cnn__fp32__r0__quick"
    old = _cell_record(base, cell, finished="2026-11-22T11:00:00Z")
    new = _cell_record(base, cell, finished="2026-11-23T11:00:00Z")
    new["time_total_s"] = 1.25
    results.write_result(old, tmp_path / "x", "old.json")
    results.write_result(new, tmp_path / "y", "new.json")
    records, _ = _load(tmp_path)
    assert [r["time_total_s"] for r in records] == [1.25]


def test_repeated_cells_are_separate_measurements(tmp_path):
    base = _fixture("pytorch-cnn-cpu")
    for r in range(3):
        results.write_result(_cell_record(base, f"pytorch__venv__cpu__cnn__fp32__r{r}__quick"),
                             tmp_path, f"r{r}.json")
    records, warnings = _load(tmp_path)
    assert len(records) == 3 and warnings == []


def test_hidden_and_temporary_folders_are_never_read(tmp_path):
    rec = _fixture("pytorch-cnn-cpu")
    results.write_result(rec, tmp_path / ".pytorch__venv__cpu__cnn__fp32__r0__quick.x1y2", "late.json")
    results.write_result(rec, tmp_path / ".slurm" / "cell", "late.json")
    (tmp_path / ".hidden.json").write_text(json.dumps(rec))
    records, warnings = _load(tmp_path)
    assert records == [] and warnings == []


# ---------------------------------------------------------------- files that are not results

def test_deeply_nested_json_is_skipped_not_a_crash(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "deep-dict.json").write_text('{"schema_version": 1, "x": ' + "[" * 50_000 + "]" * 50_000 + "}")
    records, warnings = _load(tmp_path)
    assert records == []
    assert any("deep.json" in w for w in warnings) and any("deep-dict.json" in w for w in warnings)


def test_a_fifo_and_a_link_to_a_device_are_not_opened(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")
    os.symlink("/dev/zero", tmp_path / "zero.json")
    results.write_result(_fixture("pytorch-cnn-cpu"), tmp_path, "good.json")
    # In a child process with a deadline: a FIFO opened for reading would block for ever.
    code = ("import sys; from bench import results; w = []; "
            "r = results.load_results([sys.argv[1]], w.append); print(len(r)); print('\\n'.join(w))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "1"
    assert any("fifo.json" in w and "not a regular file" in w for w in lines[1:])
    assert any("zero.json" in w and "not a regular file" in w for w in lines[1:])


def test_an_oversized_file_is_not_read(tmp_path):
    with open(tmp_path / "big.json", "wb") as f:
        f.truncate(results.MAX_RESULT_BYTES + 1)
    records, warnings = _load(tmp_path)
    assert records == [] and any("big.json" in w and "more than any result" in w for w in warnings)


def test_an_unreadable_folder_is_named(tmp_path, monkeypatch):
    results.write_result(_fixture("pytorch-cnn-cpu"), tmp_path, "good.json")
    (tmp_path / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):  # root reads every folder; refuse this one as a user would see it
        if os.fspath(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    records, warnings = _load(tmp_path)
    assert len(records) == 1
    assert any("locked" in w and "Permission denied" in w for w in warnings)


def test_a_file_name_that_is_not_utf8_is_named_and_the_report_still_renders(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    bad = os.path.join(os.fsencode(folder), b"caf\xe9.json")
    with open(bad, "wb") as f:
        f.write(b"{broken")
    results.write_result(_fixture("pytorch-cnn-cpu"), folder, "good.json")
    out = tmp_path / "report.html"
    assert report.main([str(folder), "-o", str(out), "--markdown", str(tmp_path / "r.md")]) == 0
    html = out.read_text()
    assert "caf\\xe9.json" in html and 'id="cnn-quick"' in html


def test_mathtext_markers_in_results_are_text(tmp_path):
    folder = tmp_path / "r"
    rec = _fixture("pytorch-cnn-cpu")
    rec["device_name"] = "$\\frac{1}{0}$ GPU $x^"
    results.write_result(rec, folder, "math.json")
    out = tmp_path / "report.html"
    assert report.main([str(folder), "-o", str(out)]) == 0
    assert "$\\frac{1}{0}$ GPU $x^" in out.read_text()


# ---------------------------------------------------------------- where the report goes

def test_a_report_path_that_is_a_directory_is_a_clear_error(tmp_path, capsys):
    results.write_result(_fixture("pytorch-cnn-cpu"), tmp_path / "r", "good.json")
    assert report.main([str(tmp_path / "r"), "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_a_report_path_under_a_file_is_a_clear_error(tmp_path, capsys):
    results.write_result(_fixture("pytorch-cnn-cpu"), tmp_path / "r", "good.json")
    (tmp_path / "file").write_text("x")
    assert report.main([str(tmp_path / "r"), "-o", str(tmp_path / "file" / "report.html")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_a_full_disk_is_a_clear_error_and_leaves_no_half_file(tmp_path, monkeypatch, capsys):
    results.write_result(_fixture("pytorch-cnn-cpu"), tmp_path / "r", "good.json")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "fsync", full)
    out = tmp_path / "out" / "report.html"
    assert report.main([str(tmp_path / "r"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "report.html" in err and "the disk is full" in err and "Traceback" not in err
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []
