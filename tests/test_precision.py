"""The precision axis in the harness: the vocabulary, the device rules, and a run that is never
labelled with a precision it did not use (on the NumPy test double)."""
from __future__ import annotations

import json

import pytest

import fake_framework
from bench import cli, matrix, precisions, results, runner
from bench.errors import UnsupportedPrecision
from conftest import REPO


def _run(tmp_path, monkeypatch, precision, mode="ok", task_list=("cnn", "rnn", "resnet50"), repeats=1):
    monkeypatch.setenv("FAKE_MODE", mode)
    monkeypatch.setattr(fake_framework, "SEEDS", [])
    tmp_path.mkdir(parents=True, exist_ok=True)
    opts = runner.RunOptions(framework="fake", module="fake_framework", tasks=list(task_list),
                             device="cpu", data="synthetic", quick=True, repeats=repeats,
                             precision=precision, out=tmp_path, seed=7)
    code, _ = runner.run(opts, log=lambda m: None)
    return code, {r["task"]: r for r in (results.load_result(p) for p in tmp_path.glob("*.json"))}


# ---------------------------------------------------------------- one vocabulary

def test_the_schemas_the_cli_and_the_matrix_take_the_same_four_names():
    assert precisions.PRECISIONS == ("fp32", "tf32", "amp-fp16", "amp-bf16")
    assert cli.PRECISIONS == precisions.PRECISIONS
    result = json.loads((REPO / "bench/schema/result-v1.schema.json").read_text())
    assert tuple(result["properties"]["precision"]["enum"]) == precisions.PRECISIONS
    state = result["properties"]["conventions"]["properties"]["precision"]
    assert tuple(state["properties"]["name"]["enum"]) == precisions.PRECISIONS
    assert set(state["required"]) == set(precisions.state("fp32", tf32=False, compute_dtype="float32",
                                                          param_dtype="float32", loss_scaling="none",
                                                          mechanism="m", read_back=[]))
    doc = json.loads((REPO / "bench/schema/matrix-v1.schema.json").read_text())
    assert tuple(doc["properties"]["precisions"]["items"]["enum"]) == precisions.PRECISIONS
    baseline = json.loads((REPO / "bench/schema/baseline-v2.schema.json").read_text())
    assert json.dumps(list(precisions.PRECISIONS)) in json.dumps(baseline)
    tasks_md = (REPO / "docs/tasks.md").read_text()
    assert all(f"`{name}`" in tasks_md for name in precisions.PRECISIONS)


@pytest.mark.parametrize("name, hint", [("fp8", None), ("bf16", "amp-bf16"), ("fp16", "amp-fp16"),
                                        ("amp", "amp-fp16")])
def test_an_unknown_precision_lists_the_names_and_says_what_an_old_name_became(name, hint):
    with pytest.raises(precisions.UnknownPrecision) as caught:
        precisions.check_name(name)
    text = str(caught.value)
    assert f"unknown precision {name!r}" in text and "fp32, tf32, amp-fp16, amp-bf16" in text
    assert (f"now {hint!r}" in text) == (hint is not None)


def test_the_matrix_takes_the_four_names_and_each_cell_carries_its_precision(tmp_path):
    text = (REPO / "matrix.yaml").read_text()
    assert "precisions: [fp32]\n" in text
    path = tmp_path / "matrix.yaml"
    path.write_text(text.replace("precisions: [fp32]\n", "precisions: [fp32, tf32, amp-fp16, amp-bf16]\n"))
    cells = matrix.load(path).cells("local", only_frameworks=["pytorch"], only_gpus=["cpu"], only_tasks=["cnn"],
                                     repeats=1, only_modes=["reference"])  # matrix.yaml: modes [reference, tuned]
    assert sorted(c.precision for c in cells) == sorted(precisions.PRECISIONS)
    assert len({c.id for c in cells}) == 4 and all(c.id.split("__")[4] == c.precision for c in cells)
    path.write_text(text.replace("precisions: [fp32]\n", "precisions: [fp32, bf16]\n"))
    with pytest.raises(matrix.MatrixError, match="'bf16'; choose from fp32, tf32, amp-fp16, amp-bf16"):
        matrix.load(path)


# ---------------------------------------------------------------- device rules

@pytest.mark.parametrize("precision, device, capability, expected", [
    ("fp32", "cpu", None, None),
    ("fp32", "gpu", (7, 0), None),
    ("tf32", "cpu", None, "a CPU has no TF32"),
    ("tf32", "gpu", (7, 0), "this GPU is 7.0"),
    ("tf32", "gpu", (8, 0), None),
    ("tf32", "gpu", (9, 0), None),
    ("amp-fp16", "cpu", None, "amp-fp16 is a GPU precision"),
    ("amp-fp16", "gpu", (7, 0), None),
    ("amp-bf16", "cpu", None, None),
    ("amp-bf16", "gpu", (7, 5), "this GPU is 7.5"),
    ("amp-bf16", "gpu", (8, 6), None),
])
def test_skip_reasons_by_device_and_compute_capability(precision, device, capability, expected):
    reason = precisions.skip_reason(precision, device, capability, "somefw")
    if expected is None:
        assert reason is None
    else:
        assert reason.startswith("somefw: ") and expected in reason


def test_a_state_names_only_fields_that_exist_and_a_known_loss_scaling():
    with pytest.raises(ValueError, match="read_back names fields that do not exist"):
        precisions.state("fp32", tf32=False, compute_dtype="float32", param_dtype="float32",
                         loss_scaling="none", mechanism="m", read_back=["tf23"])
    with pytest.raises(ValueError, match="loss_scaling must be one of"):
        precisions.state("amp-fp16", tf32=False, compute_dtype="float16", param_dtype="float32",
                         loss_scaling="sometimes", mechanism="m", read_back=[])


@pytest.mark.parametrize("precision, change, problem", [
    ("fp32", {"tf32": True}, "tf32 is True, fp32 means False"),
    ("amp-bf16", {"compute_dtype": "float32"}, "compute_dtype is 'float32', amp-bf16 means 'bfloat16'"),
    ("amp-bf16", {"param_dtype": "bfloat16"}, "param_dtype is 'bfloat16'"),
    ("amp-fp16", {"loss_scaling": "none"}, "loss_scaling is 'none', amp-fp16 means 'dynamic'"),
    ("tf32", {"tf32": False}, "tf32 is False, tf32 means True"),
    ("amp-bf16", {"name": "fp32"}, "name is 'fp32'"),
])
def test_check_state_names_every_difference_from_the_precision(precision, change, problem):
    good = precisions.state(precision, tf32=precision == "tf32", compute_dtype=precisions.COMPUTE_DTYPE[precision],
                            param_dtype="float32", loss_scaling=precisions.LOSS_SCALING[precision],
                            mechanism="m", read_back=[])
    assert precisions.check_state(precision, "gpu", good) == []
    problems = precisions.check_state(precision, "gpu", dict(good, **change))
    assert any(problem in p for p in problems), problems
    assert precisions.check_state(precision, "gpu", None) == ["no precision state reported (got NoneType)"]


# ---------------------------------------------------------------- runs

def test_an_amp_bf16_run_records_what_the_framework_set(tmp_path, monkeypatch):
    code, records = _run(tmp_path, monkeypatch, "amp-bf16", repeats=2)
    assert code == runner.EXIT_OK
    for task, record in records.items():
        assert record["status"] == "ok" and record["precision"] == "amp-bf16", task
        state = record["conventions"]["precision"]
        assert state["name"] == "amp-bf16" and state["compute_dtype"] == "bfloat16" and state["tf32"] is False
        assert record["conventions"]["fake"] is True  # the task's other conventions are kept
    # each build is seeded, repeat r with seed + r: the same weights in every precision and process
    assert fake_framework.SEEDS == [7, 8, 7, 8, 7, 8]


@pytest.mark.parametrize("precision, text", [("tf32", "a CPU has no TF32"),
                                             ("amp-fp16", "amp-fp16 is a GPU precision")])
def test_a_precision_the_device_cannot_run_is_skipped_with_the_reason_never_run(tmp_path, monkeypatch,
                                                                                precision, text):
    code, records = _run(tmp_path, monkeypatch, precision)
    assert code == runner.EXIT_SKIPPED
    assert set(records) == {"cnn", "rnn", "resnet50"}
    for record in records.values():
        assert record["status"] == "skipped" and record["precision"] == precision
        assert text in record["error"] and record["time_total_s"] is None and record["throughput"] is None
    assert fake_framework.SEEDS == []  # nothing was built


def test_a_framework_that_reports_another_precision_than_asked_fails_the_task(tmp_path, monkeypatch):
    code, records = _run(tmp_path, monkeypatch, "amp-bf16", mode="lie-precision", task_list=("cnn", "resnet50"))
    assert code == runner.EXIT_TASK_FAILED
    for record in records.values():
        assert record["status"] == "failed" and record["throughput"] is None
        assert "asked for amp-bf16 and reports" in record["error"]
        assert "compute_dtype is 'float32', amp-bf16 means 'bfloat16'" in record["error"]


def test_features_that_are_not_float32_fail_the_task(tmp_path, monkeypatch):
    _, records = _run(tmp_path, monkeypatch, "amp-bf16", mode="fp16-features", task_list=("resnet50",))
    assert records["resnet50"]["status"] == "failed"
    assert "features are float16" in records["resnet50"]["error"]


def test_a_non_finite_loss_names_the_precision(tmp_path, monkeypatch):
    _, records = _run(tmp_path, monkeypatch, "amp-bf16", mode="nan", task_list=("cnn",))
    assert records["cnn"]["status"] == "failed"
    assert "training loss became nan in epoch 1 at precision amp-bf16" in records["cnn"]["error"]


def test_a_non_finite_fp16_loss_says_the_loss_scaler_did_not_hold():
    error = runner._non_finite_loss(type("Spec", (), {"name": "cnn"}), float("inf"), 3, "amp-fp16")
    assert "epoch 3 at precision amp-fp16" in str(error) and "loss scaler" in str(error)


def test_tf32_is_forbidden_to_nvidia_libraries_in_every_precision_but_tf32():
    for precision in ("fp32", "amp-fp16", "amp-bf16"):
        environ = {precisions.TF32_OVERRIDE_VARIABLE: "1"}
        runner.prepare_environment(precision, environ)
        assert environ[precisions.TF32_OVERRIDE_VARIABLE] == "0", precision
    environ = {precisions.TF32_OVERRIDE_VARIABLE: "0"}
    runner.prepare_environment("tf32", environ)
    assert precisions.TF32_OVERRIDE_VARIABLE not in environ


def test_unsupported_precision_is_the_frameworks_way_to_say_skip():
    assert issubclass(UnsupportedPrecision, ValueError)


# ---------------------------------------------------------------- tables and validate

def test_the_precision_table_compares_with_fp32_and_lists_the_skipped_with_reasons(tmp_path, monkeypatch):
    from bench import table

    for precision in ("fp32", "amp-bf16", "tf32"):
        _run(tmp_path / precision, monkeypatch, precision, task_list=("cnn",))
    records = results.load_results([tmp_path], warn=lambda m: None)
    text = table.precision_table(records)
    rows = [line for line in text.splitlines() if line.startswith("| fake ")]
    assert len(rows) == 2, text
    assert "| amp-bf16 |" in rows[0] and "compute bfloat16, weights float32, TF32 off" in rows[0]
    assert "| tf32 |" in rows[1] and "skipped" in rows[1] and "a CPU has no TF32" in rows[1]
    assert "| fp32 |" in table.comparison_table(records) and "| amp-bf16 |" in table.comparison_table(records)


def test_validate_takes_precision_names_and_refuses_others():
    assert cli.precision_list("fp32,amp-bf16") == ["fp32", "amp-bf16"]
    with pytest.raises(Exception, match="'bf16' is now 'amp-bf16'"):
        cli.precision_list("bf16")
