"""render_report.py: real results (two frameworks, a failed and synthetic cells) into HTML
and Markdown, checked in headless Chromium; markup in results stays text."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest

from bench import report, results
from conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "results"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _fixture(name_part: str) -> dict:
    path = next(p for p in sorted(FIXTURES.glob("*.json")) if name_part in p.name)
    return json.loads(path.read_text())


def _render(tmp_path, *dirs):
    html, md = tmp_path / "report.html", tmp_path / "report.md"
    proc = subprocess.run([sys.executable, str(REPO / "render_report.py"), *map(str, dirs),
                           "-o", str(html), "--markdown", str(md)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return html.read_text(), md.read_text(), proc


@pytest.fixture
def results_dir(tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(FIXTURES, folder)
    return folder


def test_fixtures_are_real_valid_results_of_two_frameworks():
    records = [results.load_result(p) for p in FIXTURES.glob("*.json")]
    assert {r["framework"] for r in records} == {"pytorch", "tensorflow"}
    assert any(r["status"] == "failed" for r in records)
    assert any(r["data"] == "synthetic" and r["status"] == "ok" for r in records)


def test_html_and_markdown_hold_every_section(tmp_path, results_dir):
    html, md, _ = _render(tmp_path, results_dir)
    for task_id in ("cnn-quick", "rnn-quick", "resnet50-quick"):
        assert f'id="{task_id}"' in html
    assert html.count("<svg") >= 3  # one plot per task table
    assert "synthetic data" in html and "no GPU found" in html
    assert "Tesla K80 (CUDA 8, cuDNN 6)" in html and "Published figures, 2018" in html
    assert "pytorch 2.14.1" in html and "tensorflow 2.21.0" in html
    # The fastest of each column is marked once per column.
    assert html.count("class=\"fastest\"") == 3
    assert "| framework | AMD EPYC / venv / fp32 / reference |" in md  # results without a mode: the reference
    assert md.count("** ★") == 3 and "no GPU found" in md and "<svg" not in md
    for external in ('src="http', "src='http", 'href="http', "url(http", "@import", "<link"):
        assert external not in html  # self-contained: nothing to fetch on an air-gapped cluster


def test_synthetic_accuracy_is_never_shown(tmp_path, results_dir):
    html, _, _ = _render(tmp_path, results_dir)
    assert "accuracy 0" not in html


def test_markup_in_results_renders_as_text(tmp_path, results_dir):
    evil = _fixture("pytorch-cnn-gpu")
    evil["error"] = "RuntimeError: <script>alert('x')</script> <b>bold</b>"
    evil["device_name"] = "<img src=x onerror=alert(1)>"
    results.write_result(evil, results_dir, "evil.json")
    html, md, _ = _render(tmp_path, results_dir)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x" in html
    assert "<script>" not in md


def test_malformed_foreign_and_other_version_files_are_skipped_with_a_warning(tmp_path, results_dir):
    (results_dir / "broken.json").write_text("{not json")
    (results_dir / "foreign.json").write_text('{"name": "something else"}')
    future = _fixture("tensorflow-rnn")
    future["schema_version"] = 99
    (results_dir / "future.json").write_text(json.dumps(future))
    html, _, proc = _render(tmp_path, results_dir)
    for name in ("broken.json", "foreign.json", "future.json"):
        assert name in proc.stderr and name in html
    assert "schema_version 99 is not supported" in proc.stderr
    assert 'id="rnn-quick"' in html  # the report still rendered


def _variant_result(base: dict, variant: str, total: float, quick: bool = False) -> dict:
    rec = copy.deepcopy(base)
    rec["cell"] = {"id": f"pytorch__{variant}__h100__cnn__fp32__r0", "variant": variant,
                   "gpu_type": "h100", "repeat": 0, "executor": "docker"}
    rec.update(device="gpu", device_name="NVIDIA H100 80GB HBM3", quick=quick, time_total_s=total,
               epoch_times_s=[total], repeats=[dict(rec["repeats"][0], time_total_s=total,
                                                     epoch_times_s=[total])])
    return rec


def test_cuda_ab_speedups_against_the_matrix_baseline(tmp_path, results_dir):
    base = _fixture("pytorch-cnn-cpu")
    for variant, total in (("cu126", 12.0), ("cu130", 10.0)):
        results.write_result(_variant_result(base, variant, total), results_dir, f"{variant}.json")
    records = [results.load_result(p) for p in results_dir.glob("*.json")]
    rows = report.cuda_ab(records, {"pytorch": "cu130"})
    speedups = {r["variant"]: r["speedup"] for r in rows}
    assert speedups == {"cu126": pytest.approx(10.0 / 12.0), "cu130": pytest.approx(1.0)}
    assert all(r["baseline"] == "cu130" and r["baseline_from"] == "matrix.yaml" for r in rows)
    html, md, _ = _render(tmp_path, results_dir)
    assert "0.833" in html and "NVIDIA H100 80GB HBM3 / cu126 / fp32 / reference" in html
    # Full-size GPU runs get their own section, never a column beside quick CPU runs.
    assert 'id="cnn"' in html and 'id="cnn-quick"' in html


def test_repeats_of_one_key_are_pooled(tmp_path):
    base = _fixture("tensorflow-cnn")
    folder = tmp_path / "r"
    for i, total in enumerate((9.0, 11.0, 10.0)):
        rec = copy.deepcopy(base)
        rec.update(time_total_s=total, epoch_times_s=[total],
                   repeats=[dict(rec["repeats"][0], time_total_s=total)])
        results.write_result(rec, folder, f"{i}.json")
    [table] = report.build_tables([results.load_result(p) for p in folder.glob("*.json")])
    cell = table.cell("tensorflow", table.columns[0])
    assert cell.metric == 10.0 and cell.spread == (9.0, 11.0, 3)


def _chromium():
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/install.d/70-chromium.sh installs it)")
        pytest.skip("chromium is not installed here")
    return path


def test_page_loads_in_headless_chromium(tmp_path, results_dir):
    chromium = _chromium()
    evil = _fixture("pytorch-cnn-gpu")
    evil["error"] = "<script>document.title='pwned'</script>"
    results.write_result(evil, results_dir, "evil.json")
    _render(tmp_path, results_dir)
    page = (tmp_path / "report.html").as_uri()
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>Deep-learning framework benchmark report</title>" in dom.stdout  # not 'pwned'
    assert dom.stdout.count("<svg") >= 3 and dom.stdout.count("<table") >= 5
    assert "<script" not in dom.stdout.lower()
    assert "Uncaught" not in dom.stderr and "CONSOLE" not in dom.stderr
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, "--window-size=1300,2400", f"--screenshot={shot}", page],
                   capture_output=True, text=True, timeout=120, check=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a real, non-blank page


def _precision_result(base: dict, precision: str, total: float) -> dict:
    rec = copy.deepcopy(base)
    rec.update(precision=precision, time_total_s=total, epoch_times_s=[total],
               repeats=[dict(rec["repeats"][0], time_total_s=total, epoch_times_s=[total])])
    compute = {"fp32": "float32", "amp-bf16": "bfloat16"}[precision]
    rec["conventions"] = dict(rec.get("conventions") or {}, precision={
        "name": precision, "tf32": False, "compute_dtype": compute, "param_dtype": "float32",
        "loss_scaling": "none", "loss_scaler": None, "mechanism": f"autocast {compute}",
        "read_back": ["compute_dtype", "param_dtype", "tf32"], "switches": {}})
    return rec


def test_precisions_get_their_own_columns_and_an_ab_table_against_fp32(tmp_path):
    base = _fixture("pytorch-cnn-cpu")
    folder = tmp_path / "r"
    results.write_result(_precision_result(base, "fp32", 12.0), folder, "fp32.json")
    results.write_result(_precision_result(base, "amp-bf16", 8.0), folder, "bf16.json")
    records = [results.load_result(p) for p in folder.glob("*.json")]
    [table] = report.build_tables(records)
    assert sorted(table.columns) == [f"{base['device_name']} / venv / amp-bf16 / reference",
                                     f"{base['device_name']} / venv / fp32 / reference"]
    [row] = report.precision_ab(records)
    assert row["precision"] == "amp-bf16" and row["speedup"] == pytest.approx(12.0 / 8.0)
    assert row["state"] == "compute bfloat16, weights float32, TF32 off, loss scaling none"
    html, md, _ = _render(tmp_path, folder)
    assert 'id="precision-ab"' in html and "1.500" in html
    assert "## Precision A/B" in md and "| amp-bf16 | reference | 12.00 | 8.00 | 1.500x |" in md
    assert "| 1.500x | - | not enough repeats (n=1, 1) |" in md  # one repeat a side: no verdict
    assert "no interval (n=1, 6 needed)" in html


def test_the_ab_tables_and_medians_carry_intervals_and_verdicts(tmp_path):
    base = _fixture("pytorch-cnn-cpu")
    folder = tmp_path / "r"
    for precision, total in (("fp32", 12.0), ("amp-bf16", 8.0)):
        rec = _precision_result(base, precision, total)
        rec["repeats"] = [dict(rec["repeats"][0], time_total_s=total * (1 + 0.002 * i)) for i in range(6)]
        results.write_result(rec, folder, f"{precision}.json")
    records = [results.load_result(p) for p in folder.glob("*.json")]
    [row] = report.precision_ab(records)
    assert row["verdict"] == "faster" and row["speedup_low"] < 1.5 < row["speedup_high"] * 1.01
    [table] = report.build_tables(records)
    cell = table.cell(base["framework"], f"{base['device_name']} / venv / fp32 / reference")
    assert cell.interval == (12.0, 12.0 * 1.01)  # 6 repeats: the order statistics 1 and 6
    html, md, _ = _render(tmp_path, folder)
    assert "median 95 %: 12.00-12.12" in html and "| faster |" in md


def test_no_precision_ab_without_fp32_beside_it(tmp_path):
    base = _fixture("pytorch-cnn-cpu")
    only = [_precision_result(base, "amp-bf16", 8.0)]
    assert report.precision_ab(only) == []
    assert report.precision_state_text([dict(base, conventions=None)]) == "not recorded"


def _gpu_telemetry(energy_j: float, flags=()) -> dict:
    return {"enabled": True, "interval_s": 0.5, "samples": 40, "timed_s": 20.0, "sections": "timed",
            "host_memory_peak_bytes": 3 * 2 ** 30, "host_memory_scope": "process", "host_cpu_busy_other": 0.0,
            "device_memory": {"peak_bytes": 5 * 2 ** 30, "counter": "torch.cuda.max_memory_allocated",
                              "scope": "since the last call"},
            "gpu": {"index": 0, "name": "Tesla K80", "energy_j": energy_j, "energy_source": "counter",
                    "power_w_mean": 150.0, "power_w_max": 160.0, "sm_clock_mhz_mean": 800.0,
                    "sm_clock_mhz_max": 824.0, "temperature_c_max": 70.0, "throttle": {"power cap": 0.4},
                    "ecc_before": None, "ecc_after": None, "pcie": None, "foreign_processes": []},
            "flags": [{"kind": k, "text": t} for k, t in flags]}


def test_resources_and_machine_health_are_reported(tmp_path, results_dir):
    # A GPU result with energy, device memory, FLOPs and a flag; a real CPU probe beside it.
    from bench import probe, probes, runner

    path = next(p for p in sorted(results_dir.glob("*.json")) if "cnn-gpu" in p.name)
    record = json.loads(path.read_text())
    if record["status"] != "ok":
        record = json.loads(next(p for p in sorted(results_dir.glob("*cnn-cpu*.json"))).read_text())
        record.update(device="gpu", device_name="Tesla K80")
    record["telemetry"] = _gpu_telemetry(2560.0, [("throttle", "throttled (power cap) for 40 % of the run")])
    runner.add_flops(record)
    assert record["flops"]["achieved_flops_per_s"] > 0 and record["flops"]["mfu"] is None  # no K80 row
    path.unlink()
    results.write_result(record, results_dir, "gpu-cnn.json")
    probe.write_probe(probes.run_probes("cpu", quick=True, log=lambda m: None), results_dir)
    html, md, proc = _render(tmp_path, results_dir)
    assert "probe" not in proc.stderr  # a probe doc is no foreign file
    assert "<h3>Resources</h3>" in html and "Machine health" in html and "## Machine health" in md
    samples = record["samples"]["train"] * len(record["repeats"])
    assert f"{1000 * 2560.0 / samples:,.1f} J" in html  # energy per 1,000 samples over every repeat
    assert "5.00 GiB" in html and "3.00 GiB" in html
    assert f"{record['flops']['achieved_flops_per_s'] / 1e12:,.3f} TFLOP/s" in md
    assert "throttled (power cap) for 40 % of the run" in html and "throttled (power cap)" in md
    assert "GFLOP/s" in html and "gemm fp32" in html  # the probe's table
    assert "| gemm fp32 |" in md


# ---------------------------------------------------------------- the mode axis

def _mode_result(base: dict, mode, totals, epochs=None, precision="fp32", switches=(), not_applied=None) -> dict:
    """A training result of one mode: one record per total (a sweep's repeated cells), each
    with its epochs (first, then steady) and the cold start the runner derives from them."""
    from bench import runner

    out = []
    for i, total in enumerate(totals):
        rec = _precision_result(base, precision, total)
        rec.pop("mode", None)
        if mode is not None:
            rec["mode"] = mode
            rec["conventions"]["mode"] = {"mode": mode, "switches": list(switches),
                                          "not_applied": dict(not_applied or {})}
        times = epochs(total) if epochs else [total]
        rec["epoch_times_s"] = times
        rec["repeats"] = [dict(rec["repeats"][0], time_total_s=total, epoch_times_s=times)]
        rec["cold_start"] = runner.training_cold_start(times)
        rec["cell"] = {"id": f"x{'__' + mode if mode == 'tuned' else ''}__r{i}", "variant": "venv",
                       "gpu_type": "cpu", "repeat": i, "executor": "local"}
        out.append(rec)
    return out


def test_modes_get_their_own_columns_and_never_pool(tmp_path):
    base = _fixture("pytorch-cnn-cpu")
    records = _mode_result(base, None, [12.0]) + _mode_result(base, "tuned", [6.0], switches=["torch.compile"])
    [table] = report.build_tables(records)
    device = base["device_name"]
    assert sorted(table.columns) == [f"{device} / venv / fp32 / reference", f"{device} / venv / fp32 / tuned"]
    assert table.cell("pytorch", f"{device} / venv / fp32 / reference").metric == 12.0
    assert table.cell("pytorch", f"{device} / venv / fp32 / tuned").metric == 6.0


def test_the_precision_ab_compares_within_one_mode():
    base = _fixture("pytorch-cnn-cpu")
    records = (_mode_result(base, None, [12.0]) + _mode_result(base, None, [8.0], precision="amp-bf16")
               + _mode_result(base, "tuned", [6.0]) + _mode_result(base, "tuned", [3.0], precision="amp-bf16"))
    rows = report.precision_ab(records)
    assert [(r["mode"], r["precision"], r["speedup"]) for r in rows] == [
        ("reference", "amp-bf16", pytest.approx(1.5)), ("tuned", "amp-bf16", pytest.approx(2.0))]


def test_the_mode_ab_table_has_intervals_verdicts_switches_and_the_cold_start(tmp_path):
    base = _fixture("pytorch-cnn-cpu")
    # Five runs a side, three epochs each. Tuned: the first epoch pays a compilation (20 s
    # against 4 s) and the steady epochs are twice as fast (2 s against 4 s): the total is
    # slower, the steady state faster; both must show.
    reference = _mode_result(base, None, [12.0, 12.1, 11.9, 12.05, 11.95], epochs=lambda t: [t / 3] * 3)
    tuned = _mode_result(base, "tuned", [24.0, 24.1, 23.9, 24.05, 23.95],
                         epochs=lambda t: [t - 4.0, 2.0, 2.0],
                         switches=["torch.compile (inductor) of the training step"],
                         not_applied={"CUDA graphs": "a GPU-only switch, on a CPU"})
    folder = tmp_path / "r"
    for i, rec in enumerate(reference + tuned):
        results.write_result(rec, folder, f"{i}.json")
    records = [results.load_result(p) for p in folder.glob("*.json")]
    [row] = report.mode_ab(records)
    assert row["mode"] == "tuned" and row["precision"] == "fp32" and row["variant"] == "venv"
    assert row["speedup"] == pytest.approx(0.5, rel=0.01) and row["verdict"] == "slower"  # compare's verdict
    assert row["speedup_low"] <= 0.5 <= row["speedup_high"] * 1.01
    assert row["reference"] == pytest.approx(12.0) and row["metric"] == pytest.approx(24.0)
    assert row["cold_reference"]["first"] == pytest.approx(4.0) and row["cold_reference"]["steady"] == pytest.approx(4.0)
    assert row["cold"]["first"] == pytest.approx(20.0) and row["cold"]["steady"] == pytest.approx(2.0)
    assert row["steady"]["speedup"] == pytest.approx(2.0, rel=0.01) and row["steady"]["verdict"] == "faster"
    assert row["first_speedup"] == pytest.approx(0.2)
    assert row["state"] == ("torch.compile (inductor) of the training step. Left off: CUDA graphs "
                            "(a GPU-only switch, on a CPU)")
    html, md, _ = _render(tmp_path, folder)
    assert 'id="mode-ab"' in html and "Mode A/B: tuned against reference" in html
    assert "first epoch 20.000 s, steady 2.000 s (2 epochs)" in html
    assert "first epoch 4.000 s, steady 4.000 s (2 epochs)" in html
    assert "torch.compile (inductor) of the training step" in html
    assert "## Mode A/B: tuned against reference" in md
    [line] = [x for x in md.splitlines() if x.startswith("| pytorch |") and "first epoch 20.000 s" in x]
    assert "| fp32 | 12.00 | 24.00 | 0.500x |" in line and "| slower |" in line and "2.000x (" in line
    assert "faster |" in line  # the steady speed-up's verdict
    assert f"{base['device_name']} / venv / fp32 / tuned" in html  # the column of the tuned runs


def test_one_epoch_has_no_steady_figure_and_old_results_have_no_cold_start(tmp_path):
    base = _fixture("pytorch-cnn-cpu")
    reference = _mode_result(base, None, [12.0])
    for rec in reference:
        rec.pop("cold_start")  # a result from before the cold start was recorded
    tuned = _mode_result(base, "tuned", [10.0])  # one epoch: steady null
    assert tuned[0]["cold_start"] == {"first_epoch_s": 10.0, "steady_epoch_s": None, "steady_epochs": 0}
    [row] = report.mode_ab(reference + tuned)
    assert row["steady"] is None and row["first_speedup"] is None and row["verdict"] == "not enough repeats"
    folder = tmp_path / "r"
    for i, rec in enumerate(reference + tuned):
        results.write_result(rec, folder, f"{i}.json")
    html, md, _ = _render(tmp_path, folder)
    assert "not recorded" in html and "first epoch 10.000 s, no steady epoch (one epoch)" in html
    assert "first epoch 10.000 s, no steady epoch (one epoch)" in md


def test_the_resnet_cold_start_is_the_first_warm_up_batch():
    base = _fixture("pytorch-resnet50-cpu")
    sides = []
    for mode, first in ((None, 0.5), ("tuned", 9.0)):
        rec = copy.deepcopy(base)
        rec.pop("mode", None)
        if mode:
            rec["mode"] = mode
        rec["cold_start"] = {"first_batch_s": first, "steady_batch_s": 0.25}
        sides.append(rec)
    [row] = report.mode_ab(sides)
    assert row["cold"]["unit"] == "batch" and row["cold"]["first"] == 9.0 and row["cold_reference"]["first"] == 0.5
    assert row["first_speedup"] == pytest.approx(0.5 / 9.0) and row["steady"]["speedup"] == pytest.approx(1.0)


def test_no_mode_ab_without_the_reference_beside_it_and_failures_show_the_mode(tmp_path):
    base = _fixture("pytorch-cnn-cpu")
    assert report.mode_ab(_mode_result(base, "tuned", [6.0])) == []
    assert report.mode_ab(_mode_result(base, None, [6.0])) == []
    failed = dict(_mode_result(base, "tuned", [6.0])[0], status="failed", error="ModeMismatch: tuned reports nothing")
    folder = tmp_path / "r"
    results.write_result(failed, folder, "f.json")
    results.write_result(_mode_result(base, None, [6.0])[0], folder, "ok.json")
    html, md, _ = _render(tmp_path, folder)
    assert "No framework was run in the reference and the tuned mode" in html
    assert "| pytorch | cnn | cpu | fp32 | tuned | failed | ModeMismatch: tuned reports nothing |" in md
