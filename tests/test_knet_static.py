"""Julia cannot be installed here: check the Knet sources as far as that allows."""
from __future__ import annotations

import re
import tomllib

from conftest import REPO

JULIA = REPO / "julia"
OPENERS = {"function", "struct", "for", "while", "if", "let", "begin", "try", "do", "module",
           "macro", "quote"}


def _code_tokens(text: str):
    """(word, bracket depth) for every identifier, with strings and comments removed."""
    text = re.sub(r'"""(?:.|\n)*?"""', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    text = re.sub(r"#=(?:.|\n)*?=#", "", text)
    text = re.sub(r"#.*", "", text)
    depth = 0
    for match in re.finditer(r"[A-Za-z_][A-Za-z_0-9!]*|[\[\](){}]", text):
        token = match.group()
        if token in "([{":
            depth += 1
        elif token in ")]}":
            depth -= 1
        else:
            yield token, depth


def test_every_block_is_closed():
    for path in JULIA.glob("*.jl"):
        opened = closed = 0
        for word, depth in _code_tokens(path.read_text()):
            if depth == 0 and word in OPENERS:
                opened += 1
            elif depth == 0 and word == "end":
                closed += 1
        assert opened == closed, f"{path.name}: {opened} blocks opened, {closed} closed"


def test_brackets_balance_and_no_placeholder():
    for path in JULIA.glob("*.jl"):
        text = path.read_text()
        depths = [d for _, d in _code_tokens(text)]
        assert min(depths) >= 0 and depths[-1] == 0, path.name
        assert not re.search(r"TODO|FIXME|XXX|placeholder|not implemented", text, re.I), path.name


def test_every_package_used_is_pinned_in_the_project():
    project = tomllib.loads((JULIA / "Project.toml").read_text())
    deps = project["deps"]
    for uuid in deps.values():
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid)
    assert deps["Knet"] == "1902f260-5fb4-5aff-8c31-6271790ab950"
    assert project["compat"]["Knet"].startswith("~1.4")
    text = (JULIA / "bench.jl").read_text()
    used = {name.strip() for line in re.findall(r"^using (.+)$", text, re.M) for name in line.split(",")}
    assert used <= set(deps), used - set(deps)


def test_the_three_tasks_and_the_protocol_are_there():
    text = (JULIA / "bench.jl").read_text()
    defined = set(re.findall(r"^function (\w+)|^(\w+)\(.*\) =", text, re.M))
    names = {a or b for a, b in defined}
    for name in ("init_device", "synchronize", "build_cnn", "build_rnn", "build_resnet50", "train",
                 "predict", "extract", "main", "fail"):
        assert name in names, name
    for word in ("REQUEST.measurement", "REQUEST.logits", "rnnType=:gru", "Momentum(", "Adam(",
                 "batchnorm(", "training=false", "exit(status)", '"params"', '"epoch_times_s"'):
        assert word in text, word


# ---------------------------------------------------------------- precision (issue 10)

def _strings(text: str) -> list:
    """The plain string literals of a Julia source (those without interpolation)."""
    return [m.group(1) for m in re.finditer(r'"((?:\\.|[^"\\$])*)"', text)]


def _function(text: str, name: str) -> str:
    """The source of a top-level Julia function, up to its closing `end` at column 0."""
    match = re.search(rf"^function {name}\(.*?^end$", text, re.M | re.S)
    assert match, name
    return match.group(0)


def test_knet_handles_each_precision_and_never_refuses_all_but_fp32():
    from bench import precisions

    text = (JULIA / "bench.jl").read_text()
    assert "runs fp32 only" not in text
    declared = re.search(r"^const PRECISIONS = \((.*)\)$", text, re.M).group(1)
    assert [s.strip().strip('"') for s in declared.split(",")] == list(precisions.PRECISIONS)
    main = _function(text, "main")
    # the device first (exit 3 when the GPU is absent), then the precision, before any data is read
    assert main.index("init_device(") < main.index("init_precision(") < main.index("npzread(")
    for name in ("init_precision", "device_skip_reason", "knet_skip_reason", "precision_state", "skip_task"):
        assert f"function {name}(" in text, name


def test_a_precision_knet_cannot_run_writes_skipped_and_exits_0():
    text = (JULIA / "bench.jl").read_text()
    skip = _function(text, "skip_task")
    assert '"skipped" => reason' in skip and "REQUEST.measurement" in skip and "exit(0)" in skip
    init = _function(text, "init_precision")
    assert "skip_task(reason)" in init
    reasons = _function(text, "knet_skip_reason")
    assert 'precision == "amp-fp16"' in reasons and 'precision == "amp-bf16"' in reasons
    assert "no loss scaler" in reasons and "bfloat16" in reasons and reasons.count("run fp32") == 2


def test_knet_device_reasons_are_the_harness_texts_word_for_word():
    from bench import precisions

    text = _function((JULIA / "bench.jl").read_text(), "device_skip_reason")
    literals = _strings(text)
    for name in ("tf32", "amp-fp16"):
        assert precisions.skip_reason(name, "cpu", None, "knet") in literals, name
    for name in ("tf32", "amp-bf16"):  # the capability is appended in Julia: compare around it
        expected = precisions.skip_reason(name, "gpu", (7, 5), "knet")
        head, tail = expected.split("7.5")
        assert head in literals and (not tail or tail in literals), name
    assert "capability < TF32_CAPABILITY" in text and 'const TF32_CAPABILITY = v"8.0"' in \
        (JULIA / "bench.jl").read_text()


def test_knet_tf32_goes_through_cuda_math_mode_and_is_read_back():
    from bench import precisions

    full = (JULIA / "bench.jl").read_text()
    init = _function(full, "init_precision")
    assert "CUDA.math_mode!(" in init and "CUDA.FAST_MATH" in init and "CUDA.DEFAULT_MATH" in init
    assert re.search(r'precision == "tf32" \? CUDA\.FAST_MATH : CUDA\.DEFAULT_MATH', init)
    state = _function(full, "precision_state")
    assert "CUDA.math_mode()" in state and "CUDA.capability(CUDA.device())" in state
    assert f'const TF32_OVERRIDE = "{precisions.TF32_OVERRIDE_VARIABLE}"' in full
    assert 'override != "0"' in state  # NVIDIA_TF32_OVERRIDE=0 is what keeps cuDNN's TF32 off


def test_knet_reports_exactly_the_fields_of_precisions_state_in_every_task():
    from bench import precisions

    full = (JULIA / "bench.jl").read_text()
    state = _function(full, "precision_state")
    final = state[state.rindex("\n    Dict("):]
    keys = re.findall(r'"(\w+)" =>', final)
    expected = precisions.state("fp32", tf32=False, compute_dtype="float32", param_dtype="float32",
                                loss_scaling="none", mechanism="m", read_back=[])
    assert sorted(keys) == sorted(expected), keys
    assert '"read_back" => sort(read_back)' in final and '"loss_scaling" => "none"' in final
    pushed = re.findall(r'"(\w+)"', "".join(re.findall(r"read_back = \[.*?\]|push!\(read_back, .*?\)", state)))
    assert set(pushed) <= {"tf32", "compute_dtype", "param_dtype", "loss_scaling"} and pushed
    main = _function(full, "main")
    assert main.count("precision_state(") == 2  # ResNet-50 and the two trained tasks
    assert '"precision" => precision_state(' in main and 'conventions["precision"] = precision_state(' in main
    assert "Dict{String,Any}(" in main  # the CNN conventions dict must take a Dict value
    assert "Knet.seed!(REQUEST.seed)" in main and main.index("Knet.seed!(") < main.index("build_")
