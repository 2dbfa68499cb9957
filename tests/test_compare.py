"""`bench compare`: B against A with a confidence interval and a verdict, tested on synthetic
records whose true ratio is known; the page in headless Chromium."""
from __future__ import annotations

import copy
import json
import subprocess

import numpy as np
import pytest

from bench import compare, results
from conftest import run_bench
from test_report import CHROMIUM_FLAGS, FIXTURES, _chromium


@pytest.mark.parametrize("n, m, k", [(3, 3, 0), (4, 4, 1), (3, 5, 1), (5, 5, 3), (6, 6, 6), (10, 10, 24)])
def test_the_interval_rank_is_the_rank_sum_tables(n, m, k):
    # k - 1 is the two-sided 5 % critical value of Mann-Whitney U (0 where none exists)
    assert compare.interval_rank(n, m) == k


def test_the_normal_approximation_meets_the_exact_table_where_they_meet():
    exact = compare.interval_rank(50, 50)
    compare.EXACT_PAIRS, saved = 0, compare.EXACT_PAIRS
    try:
        assert abs(compare.interval_rank(50, 50) - exact) <= 1
    finally:
        compare.EXACT_PAIRS = saved


def _trial(seed: int, n: int, noise: float, ratio: float):
    rng = np.random.default_rng(seed)
    a = 10.0 * (1 + noise * rng.standard_normal(n))
    b = 10.0 * ratio * (1 + noise * rng.standard_normal(n))
    return compare.compare_values(a, b)


def test_a_ten_percent_difference_with_small_noise_is_found_with_the_true_ratio_inside():
    trials = [_trial(seed, 6, 0.01, 1.10) for seed in range(200)]
    found = [t for t in trials if t["verdict"] == compare.SLOWER]
    assert len(found) == len(trials)
    covered = sum(t["low"] <= 1.10 <= t["high"] for t in trials)
    assert covered >= 0.93 * len(trials)  # a 95 % interval (exact coverage in this model)
    faster = _trial(0, 6, 0.01, 1 / 1.10)
    assert faster["verdict"] == compare.FASTER and faster["text"].startswith("faster: 0.9")


@pytest.mark.parametrize("n, noise", [(5, 0.03), (10, 0.03), (10, 0.10), (20, 0.05)])
def test_two_samples_of_one_distribution_are_no_clear_difference_in_95_percent_of_trials(n, noise):
    verdicts = [_trial(1000 + seed, n, noise, 1.0)["verdict"] for seed in range(400)]
    assert verdicts.count(compare.SAME) >= 0.95 * len(verdicts)


def test_a_half_percent_difference_is_never_a_win():
    c = _trial(3, 20, 0.0005, 0.995)
    assert c["high"] < 1  # real...
    assert c["verdict"] == compare.SAME and "not surely 2 % or more" in c["text"]  # ...and never "faster"


def test_too_few_repeats_say_so_rather_than_a_verdict():
    c = compare.compare_values([10.0], [11.0])
    assert c["verdict"] == compare.TOO_FEW and c["text"].startswith("not enough repeats (n=1 and 1")
    assert c["low"] is None and c["ratio"] == pytest.approx(1.1)


def test_the_median_interval_is_order_statistics():
    assert compare.median_interval([1, 2, 3, 4, 5]) is None  # 5 values cannot reach 95 %
    assert compare.median_interval(list(range(1, 7))) == (1, 6)
    assert compare.median_interval(list(range(10, 0, -1))) == (2, 9)


# ---------------------------------------------------------------- folders

def _base() -> dict:
    path = next(p for p in sorted(FIXTURES.glob("*.json")) if "pytorch-rnn-cpu" in p.name)
    return json.loads(path.read_text())


def _result(times, cell=None, driver=None, variant=None, precision="fp32", mode=None, switches=None) -> dict:
    r = copy.deepcopy(_base())
    r.pop("mode", None)
    if mode is not None:
        r["mode"] = mode
    if switches is not None:
        r["conventions"] = dict(r.get("conventions") or {}, mode={"mode": mode or "reference",
                                                                  "switches": switches, "not_applied": {}})
    r["repeats"] = [{"time_total_s": t, "epoch_times_s": [t], "accuracy": None, "final_loss": 0.5} for t in times]
    r["time_total_s"] = float(np.median(times))
    r["epoch_times_s"] = [r["time_total_s"]]
    r["precision"] = precision
    if cell:
        r["cell"] = {"id": cell, "variant": variant, "gpu_type": "cpu", "repeat": int(cell[-1]), "executor": "local"}
    if driver:
        r["env"]["driver"] = driver
    return r


def test_repeats_in_a_result_and_repeated_cells_all_count(tmp_path):
    a = [_result([10.0, 10.1, 9.9], cell="x-r0"), _result([10.05, 9.95], cell="x-r1")]
    b = [_result([11.0, 11.1, 10.9, 11.05, 10.95], cell="x-r0", driver="999.1")]
    rows, skipped = compare.compare_sides(a, b)
    [row] = rows
    assert (row["n_a"], row["n_b"]) == (5, 5) and row["verdict"] == compare.SLOWER and not skipped
    diffs = compare.differences(a, b)
    assert {"what": "driver", "a": "-", "b": "999.1"} in diffs


def test_a_side_mixing_two_settings_for_one_figure_is_skipped_naming_them():
    a = [_result([10.0] * 4, cell="x-r0", variant="cu126"), _result([10.0] * 4, cell="y-r0", variant="cu130")]
    rows, skipped = compare.compare_sides(a, [_result([10.0] * 4)])
    assert not rows and "A holds it under 2 settings" in skipped[0] and "--by" in skipped[0]


def _folder(path, records):
    path.mkdir()
    for i, r in enumerate(records):
        results.write_result(r, path, f"r{i}.json")
    return path


def test_the_command_on_two_folders_writes_the_page_and_markdown(tmp_path):
    a = _folder(tmp_path / "a", [_result([10.0, 10.1, 9.9, 10.05])])
    b = _folder(tmp_path / "b", [_result([12.0, 12.1, 11.9, 12.05], driver="999.1")])
    html, md = tmp_path / "c.html", tmp_path / "c.md"
    proc = run_bench("compare", str(a), str(b), "--out", str(html), "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr
    assert "driver: - -> 999.1" in proc.stdout and "slower: 1.20" in proc.stdout
    page = html.read_text()
    assert "<svg" in page and "What differs" in page and "slower: 1.20" in page
    assert "| driver | - | 999.1 |" in md.read_text()


def test_the_command_splits_one_folder_by_precision_against_fp32(tmp_path):
    folder = _folder(tmp_path / "r", [_result([10.0, 10.1, 9.9, 10.05]),
                                      _result([8.0, 8.1, 7.9, 8.05], precision="amp-bf16")])
    proc = run_bench("compare", str(folder), "--by", "precision")
    assert proc.returncode == 0, proc.stderr
    assert "B = amp-bf16 against A = fp32" in proc.stdout and "faster: 0.80" in proc.stdout


def test_the_command_splits_one_folder_by_mode_against_the_reference(tmp_path):
    # one result from before the mode axis (no mode: the reference), one reference, one tuned
    folder = _folder(tmp_path / "r", [_result([10.0, 10.1]), _result([9.9, 10.05], mode="reference", switches=[]),
                                      _result([5.0, 5.05, 4.95, 5.02], mode="tuned",
                                              switches=["torch.compile (inductor) of the training step"])])
    proc = run_bench("compare", str(folder), "--by", "mode")
    assert proc.returncode == 0, proc.stderr
    assert "B = tuned against A = reference (1 and 2 results)" in proc.stdout
    assert "faster: 0.50" in proc.stdout and "rnn pytorch fp32 " in proc.stdout
    assert "pytorch switches: none -> torch.compile (inductor) of the training step" in proc.stdout
    proc = run_bench("compare", str(folder), "--by", "mode", "--a", "tuned", "--b", "reference")
    assert "B = reference against A = tuned" in proc.stdout and "slower: 2.0" in proc.stdout
    proc = run_bench("compare", str(folder), "--by", "mode", "--b", "fast")
    assert proc.returncode == 2 and "no ok result has mode 'fast'; the folder has reference, tuned" in proc.stderr


def test_two_folders_compare_each_mode_with_the_same_mode_never_pooled():
    a = [_result([10.0] * 4), _result([5.0] * 4, mode="tuned")]
    b = [_result([10.0] * 4, mode="reference"), _result([6.0] * 4, mode="tuned")]
    rows, skipped = compare.compare_sides(a, b)
    assert not skipped
    by_label = {r["label"]: r for r in rows}
    assert set(by_label) == {"rnn pytorch fp32", "rnn pytorch fp32 tuned"}  # the reference adds nothing
    assert by_label["rnn pytorch fp32"]["ratio"] == pytest.approx(1.0)
    assert by_label["rnn pytorch fp32 tuned"]["ratio"] == pytest.approx(1.2)
    assert by_label["rnn pytorch fp32 tuned"]["mode"] == "tuned" and by_label["rnn pytorch fp32"]["mode"] == "reference"
    # split by mode, the mode is no longer part of the figure: one row, tuned against reference
    [row] = compare.compare_sides(a[:1], a[1:], by="mode")[0]
    assert row["label"] == "rnn pytorch fp32" and row["ratio"] == pytest.approx(0.5) and "mode" not in row


@pytest.mark.parametrize("argv, text", [
    (["A", "B", "--by", "variant"], "give two folders"),
    (["A"], "give two folders"),
    (["A", "--by", "gpu"], "holds 1 value(s) of gpu"),
    (["A", "--by", "mode"], "holds 1 value(s) of mode (reference); a comparison needs two"),
    (["A", "--by", "modes"], "invalid choice: 'modes'"),
    (["A", "--by", "precision", "--b", "tf32"], "no ok result has precision 'tf32'"),
    (["missing", "B"], "does not exist"),
])
def test_bad_input_is_a_clear_error(tmp_path, argv, text):
    folder = _folder(tmp_path / "A", [_result([10.0] * 4)])
    _folder(tmp_path / "B", [_result([10.0] * 4)])
    args = [str(tmp_path / a) if a in ("A", "B", "missing") else a for a in argv]
    proc = run_bench("compare", *args)
    assert proc.returncode == 2 and text in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert folder.is_dir()


def test_the_page_loads_in_headless_chromium(tmp_path):
    chromium = _chromium()
    a = _folder(tmp_path / "a", [_result([10.0, 10.1, 9.9, 10.05])])
    b = _folder(tmp_path / "b", [_result([12.0, 12.1, 11.9, 12.05], driver="<script>document.title='x'</script>")])
    html = tmp_path / "c.html"
    assert run_bench("compare", str(a), str(b), "--out", str(html)).returncode == 0
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>Benchmark comparison</title>" in dom.stdout and "<script" not in dom.stdout.lower()
    assert dom.stdout.count("<svg") >= 1 and "Uncaught" not in dom.stderr


def test_clocks_power_limits_and_thread_settings_are_among_the_differences():
    a, b = _result([10.0] * 4), _result([12.0] * 4)
    a["telemetry"] = {"gpu": {"sm_clock_mhz_mean": 1980.0, "power_limit_w": 700.0, "power_w_mean": 650.0}}
    b["telemetry"] = {"gpu": {"sm_clock_mhz_mean": 1410.0, "power_limit_w": 400.0, "power_w_mean": 399.0}}
    b["env"]["thread_settings"] = {"OMP_NUM_THREADS": "1"}
    found = {d["what"]: (d["a"], d["b"]) for d in compare.differences([a], [b])}
    assert found["power limit (W)"] == ("700", "400") and found["SM clock (mean, MHz)"] == ("1980", "1410")
    assert found["OMP_NUM_THREADS"] == ("-", "1")
    assert "pytorch version" not in found  # the same on both sides: not a difference
