"""matrix.yaml from a hostile user: every file ends in a Matrix or in a clear MatrixError
(what is wrong, where, how to fix it), never in a traceback, a memory blow-up or a quietly
different sweep."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import yaml

from bench import matrix
from conftest import REPO

# A valid matrix; each case below appends to it or replaces one of its lines.
BASE = """\
version: 1
tasks: [cnn]
precisions: [fp32]
quick: true
frameworks:
  pytorch:
    variants:
      cu130: {base_image: "nvidia/cuda:13.0.1-base-ubuntu24.04"}
gpus:
  cpu: {device: cpu}
"""
NEXT = BASE.count("\n") + 1  # the line number of the first appended line


def _write(tmp_path, text, name="matrix.yaml"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path, text) -> str:
    with pytest.raises(matrix.MatrixError) as info:
        matrix.load(_write(tmp_path, text))
    return str(info.value)


def test_the_base_document_of_these_cases_is_valid(tmp_path):
    m = matrix.load(_write(tmp_path, BASE))
    assert [c.id for c in m.cells("docker")] == ["pytorch__cu130__cpu__cnn__fp32__r0__quick"]


SAFE_RULE = "is not a safe name: use letters, digits and single . _ - between them"

CASES = [
    # wrong types: lists for mappings, numbers for lists, text for booleans, booleans for numbers
    ("list-for-mapping", BASE.replace("gpus:\n  cpu: {device: cpu}\n", "gpus: [cpu, h100]\n"),
     ["gpus (line 9) must be a mapping", "not a list"]),
    ("list-for-a-framework", BASE.replace("  pytorch:\n    variants:", "  pytorch: [cu130]\n  jax:\n    variants:"),
     ["frameworks.pytorch (line 6) must be a mapping", "not a list"]),
    ("number-for-list", BASE.replace("tasks: [cnn]", "tasks: 5"),
     ["tasks (line 2) must be a list of tasks", "not the number 5"]),
    ("quick-as-text", BASE.replace("quick: true", 'quick: "false"'),
     ["quick (line 4) must be true or false, not the text 'false'", "without quotes"]),
    ("repeats-true", BASE + "repeats: true\n",
     [f"repeats (line {NEXT}) must be a whole number from 1 to 100", "not true"]),
    ("repeats-0", BASE + "repeats: 0\n", [f"repeats (line {NEXT}) is 0; it must be a whole number from 1 to 100"]),
    ("repeats-101", BASE + "repeats: 101\n", [f"repeats (line {NEXT}) is 101; it must be a whole number from 1 to 100"]),
    ("repeats-1e9-text", BASE + "repeats: 1e9\n", [f"repeats (line {NEXT}) must be a whole number", "not the text '1e9'"]),
    ("repeats-a-billion", BASE + "repeats: 1000000000\n", [f"repeats (line {NEXT}) is 1000000000; it must be a whole number from 1 to 100"]),
    ("repeats-1.0e9", BASE + "repeats: 1.0e+9\n", [f"repeats (line {NEXT}) is 1000000000.0; it must be a whole number from 1 to 100"]),
    ("unknown-precision", BASE.replace("[fp32]", "[fp64]"),
     ["precisions[0] (line 3) is 'fp64'; choose from fp32, tf32, amp-fp16, amp-bf16"]),
    ("precision-twice", BASE.replace("[fp32]", "[fp32, fp32]"), ["precisions (line 3) lists 'fp32' more than once"]),
    ("unknown-task", BASE.replace("[cnn]", "[mlp]"), ["tasks[0] (line 2) is 'mlp'; choose from cnn, rnn, resnet50"]),
    ("no-tasks", BASE.replace("[cnn]", "[]"), ["tasks (line 2) is empty"]),
    ("version-2", BASE.replace("version: 1", "version: 2"), ["version (line 1) is 2; it must be 1"]),
    ("version-true", BASE.replace("version: 1", "version: true"), ["version (line 1) is True; it must be 1"]),
    ("no-version", BASE.replace("version: 1\n", ""), ["the top level has no 'version'; add it"]),
    ("no-gpus", BASE.replace("gpus:\n  cpu: {device: cpu}\n", "gpus: {}\n"), ["gpus (line 9) is empty"]),
    ("unknown-executor", BASE + "executors: {k8s: {}}\n",
     [f"unknown key 'executors.k8s' (line {NEXT}); allowed here: docker, local, slurm"]),
    ("unknown-slurm-key", BASE + "executors:\n  slurm: {account: x}\n",
     [f"unknown key 'executors.slurm.account' (line {NEXT + 1}); allowed here: extra_args, image_prefix"]),
    ("bad-runner", BASE + "executors:\n  slurm: {runner: docker}\n",
     [f"executors.slurm.runner (line {NEXT + 1}) is 'docker'; choose from venv, podman, apptainer, pyxis"]),
    ("bad-data", BASE + "data: fake\n", [f"data (line {NEXT}) is 'fake'; choose from auto, real, synthetic"]),
    ("bad-device", BASE + "  h100: {device: cuda}\n", [f"gpus.h100.device (line {NEXT}) is 'cuda'; choose from cpu, gpu"]),
    ("top-level-list", "- version: 1\n", ["the top level must be a mapping", "not a list"]),
    ("empty-file", "", ["the top level must be a mapping", "not empty"]),
    # unsafe names: GPU types, variants, baseline variants
    ("gpu-dot-dot", BASE + "  /../../X: {device: gpu}\n", [f"gpus: '/../../X' (line {NEXT}) {SAFE_RULE}"]),
    ("gpu-slash", BASE + "  a100/80gb: {device: gpu}\n", [f"gpus: 'a100/80gb' (line {NEXT}) {SAFE_RULE}",
                                                          "it becomes part of file names and job names"]),
    ("gpu-shell", BASE + "  $(touch x): {device: gpu}\n", [f"gpus: '$(touch x)' (line {NEXT}) {SAFE_RULE}"]),
    ("gpu-cell-separator", BASE + "  a__b: {device: gpu}\n", [f"gpus: 'a__b' (line {NEXT}) {SAFE_RULE}"]),
    ("gpu-hidden", BASE + "  .hidden: {device: gpu}\n", [f"gpus: '.hidden' (line {NEXT}) {SAFE_RULE}"]),
    ("gpu-newline", BASE + '  "h100\\nx": {device: gpu}\n', [f"gpus: 'h100\\nx' (line {NEXT}) {SAFE_RULE}"]),
    ("gpu-trailing-newline", BASE + '  "h100\\n": {device: gpu}\n', [f"gpus: 'h100\\n' (line {NEXT}) {SAFE_RULE}"]),
    ("gpu-too-long", BASE + f"  {'a' * 65}: {{device: gpu}}\n", [f"(line {NEXT}) {SAFE_RULE}"]),
    ("variant-slash", BASE.replace("cu130:", "cu/130:"), [f"frameworks.pytorch.variants: 'cu/130' (line 8) {SAFE_RULE}"]),
    ("variant-newline", BASE.replace("cu130:", '"cu130\\n#SBATCH":'),
     [f"frameworks.pytorch.variants: 'cu130\\n#SBATCH' (line 8) {SAFE_RULE}"]),
    ("baseline-unsafe", BASE.replace("    variants:", "    baseline_variant: ../x\n    variants:"),
     ["frameworks.pytorch.baseline_variant (line 7) is '../x'; it must be a safe name"]),
    ("framework-unsafe", BASE.replace("  pytorch:", "  py torch:"), [f"frameworks: 'py torch' (line 6) {SAFE_RULE}"]),
    # values that reach Slurm job scripts and commands
    ("gres-newline", BASE + '  h100: {device: gpu, gres: "gpu:h100:1\\n#SBATCH --foo"}\n',
     [f"gpus.h100.gres (line {NEXT}) is 'gpu:h100:1\\n#SBATCH --foo', with the control character '\\n'",
      "it must be a Slurm GRES such as gpu:h100:1"]),
    ("gres-trailing-newline", BASE + '  h100: {device: gpu, gres: "gpu:h100:1\\n"}\n',
     [f"gpus.h100.gres (line {NEXT}) is 'gpu:h100:1\\n', with the control character"]),
    ("gres-substitution", BASE + '  h100: {device: gpu, gres: "gpu:$(touch /tmp/x):1"}\n',
     [f"gpus.h100.gres (line {NEXT}) is 'gpu:$(touch /tmp/x):1'; it must be a Slurm GRES"]),
    ("constraint-semicolon", BASE + '  h100: {device: gpu, constraint: "h100;reboot"}\n',
     [f"gpus.h100.constraint (line {NEXT}) is 'h100;reboot'; it must be a Slurm feature expression"]),
    ("extra-args-semicolon", BASE + 'executors:\n  slurm: {extra_args: ["--exclusive; rm -rf ~"]}\n',
     [f"executors.slurm.extra_args[0] (line {NEXT + 1}) is '--exclusive; rm -rf ~'; it must be an sbatch option"]),
    ("extra-args-not-an-option", BASE + 'executors:\n  slurm: {extra_args: ["exclusive"]}\n',
     [f"executors.slurm.extra_args[0] (line {NEXT + 1}) is 'exclusive'; it must be an sbatch option"]),
    ("partition-space", BASE + 'executors:\n  slurm: {partition: "gpu long"}\n',
     [f"executors.slurm.partition (line {NEXT + 1}) is 'gpu long'; it must be a Slurm partition"]),
    ("time-garbage", BASE + 'executors:\n  slurm: {time: "4h"}\n',
     [f"executors.slurm.time (line {NEXT + 1}) is '4h'; it must be a Slurm time limit"]),
    ("time-unquoted-sexagesimal", BASE + "executors:\n  slurm: {time: 4:00:00}\n",  # YAML 1.1 reads 14400
     [f"executors.slurm.time (line {NEXT + 1}) must be a Slurm time limit in quotes", "not the number 14400",
      "(put it in quotes)"]),
    ("slurm-python-shell", BASE + 'executors:\n  slurm: {python: "/usr/bin/python3 $(id)"}\n',
     [f"executors.slurm.python (line {NEXT + 1}) is '/usr/bin/python3 $(id)'; it must be an absolute path of"]),
    ("image-prefix-option", BASE + "executors:\n  docker: {image_prefix: --privileged}\n",
     [f"executors.docker.image_prefix (line {NEXT + 1}) is '--privileged'; it must be an image name prefix"]),
    ("data-volume-path", BASE + "executors:\n  docker: {data_volume: /etc}\n",
     [f"executors.docker.data_volume (line {NEXT + 1}) is '/etc'; it must be a volume name"]),
    ("base-url-scheme", BASE + 'executors:\n  docker: {base_url: "ssh://host"}\n',
     [f"executors.docker.base_url (line {NEXT + 1}) is 'ssh://host'; it must be an engine URL"]),
    ("device-ids-negative", BASE + "  h100: {device: gpu, docker_device_ids: [-1]}\n",
     [f"gpus.h100.docker_device_ids[0] (line {NEXT}) is -1; it must be a GPU index"]),
    ("device-ids-not-uuid", BASE + "  h100: {device: gpu, docker_device_ids: [all]}\n",
     [f"gpus.h100.docker_device_ids[0] (line {NEXT}) is 'all'; it must be a GPU index (0, 1, ...) or a GPU UUID"]),
    ("base-image-newline", BASE.replace('"nvidia/cuda:13.0.1-base-ubuntu24.04"', '"a\\tb"'),
     ["frameworks.pytorch.variants.cu130.base_image (line 8) is 'a\\tb', with the control character '\\t'"]),
    # executors.local.python: absent means this Python; present means an absolute path
    ("local-python-null", BASE + "executors:\n  local: {python: null}\n",
     [f"executors.local.python (line {NEXT + 1}) must be an absolute path such as /usr/bin/python3",
      "leave the key out to use the Python running the sweep", "not empty (null)"]),
    ("local-python-empty", BASE + 'executors:\n  local: {python: ""}\n',
     [f"executors.local.python (line {NEXT + 1}) is ''; it must be an absolute path"]),
    ("local-python-relative", BASE + "executors:\n  local: {python: python3}\n",
     [f"executors.local.python (line {NEXT + 1}) is 'python3'; it must be an absolute path"]),
    # numbers: > 0 and finite
    ("timeout-0", BASE + "timeout_s: 0\n", [f"timeout_s (line {NEXT}) is 0; it must be a number of seconds per cell, more than 0"]),
    ("timeout-negative", BASE + "timeout_s: -1\n", [f"timeout_s (line {NEXT}) is -1; it must be a number of seconds"]),
    ("timeout-nan", BASE + "timeout_s: .nan\n", [f"timeout_s (line {NEXT}) is nan; it must be a finite number"]),
    ("timeout-inf", BASE + "timeout_s: .inf\n", [f"timeout_s (line {NEXT}) is inf; it must be a finite number"]),
    ("timeout-text", BASE + "timeout_s: 2h\n", [f"timeout_s (line {NEXT}) must be a number of seconds", "not the text '2h'"]),
    ("poll-0", BASE + "executors:\n  slurm: {poll_s: 0}\n",
     [f"executors.slurm.poll_s (line {NEXT + 1}) is 0; it must be a number of seconds between queue polls, more than 0"]),
    ("poll-nan", BASE + "executors:\n  slurm: {poll_s: .NaN}\n",
     [f"executors.slurm.poll_s (line {NEXT + 1}) is nan; it must be a finite number"]),
    # YAML that is not plain data
    ("key-not-text", BASE + "  1: {device: cpu}\n", ["key 1 under gpus (line 9) is the number 1, not text; put it in quotes"]),
    ("key-yes", BASE + "  yes: {device: cpu}\n", ["key True under gpus (line 9) is true, not text; put it in quotes"]),
    ("bad-timestamp", BASE + "note: 2024-13-45\n", ["is not valid YAML: cannot read this value: month must be in 1..12",
                                                    f"line {NEXT}"]),
    ("python-tag", BASE + "x: !!python/object/apply:os.system [ls]\n", ["is not valid YAML: could not determine a constructor"]),
    ("nul-character", BASE + "note: a\x00b\n", [f"line {NEXT}, column 8: the character U+0000 is not allowed in YAML"]),
    ("deep-nesting", BASE + "x: " + "[" * 100 + "]" * 100 + "\n", [f"line {NEXT}: the file nests more than 32 levels deep"]),
    ("two-documents", BASE + "---\nversion: 1\n", ["is not valid YAML: expected a single document"]),
]


@pytest.mark.parametrize("text, messages", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_matrix_is_a_clear_error(tmp_path, text, messages):
    error = _error(tmp_path, text)
    assert error.startswith(str(tmp_path / "matrix.yaml")), error
    for message in messages:
        assert message in error, error
    assert "Traceback" not in error and "\n" not in error.split(" is not valid YAML:")[0]


@pytest.mark.parametrize("text, lines", [
    (BASE + "quick: false\n", ("quick", 4, NEXT)),
    (BASE + "  cpu: {device: gpu}\n", ("gpus.cpu", 10, NEXT)),
    (BASE.replace('{base_image: "nvidia', '{base_image: x, base_image: "nvidia'),
     ("frameworks.pytorch.variants.cu130.base_image", 8, 8)),
    (BASE.replace("  pytorch:\n", '  pytorch:\n    variants: {}\n'), ("frameworks.pytorch.variants", 7, 8)),
], ids=["top-level", "nested", "flow-mapping", "block-after-flow"])
def test_duplicate_keys_are_refused_with_both_lines(tmp_path, text, lines):
    key, first, second = lines
    error = _error(tmp_path, text)
    assert f"duplicate key {key!r} (lines {first} and {second})" in error, error
    assert "remove or rename one" in error


def test_duplicate_keys_are_found_also_behind_an_alias(tmp_path):
    text = BASE.replace("gpus:\n  cpu: {device: cpu}\n",
                        "gpus:\n  cpu: &c {device: cpu, device: gpu}\n  cpu2: *c\n")
    assert "duplicate key 'gpus.cpu.device' (lines 10 and 10)" in _error(tmp_path, text)


def test_non_utf8_bytes_name_their_line_and_column(tmp_path):
    error = _error(tmp_path, BASE.encode() + b"note: caf\xe9 au lait\n")
    assert f"line {NEXT}, column 10: byte 0xe9 is not UTF-8; save the file as UTF-8" in error
    utf16 = _error(tmp_path, BASE.encode("utf-16"))
    assert "line 1, column 1: byte 0xff is not UTF-8; save the file as UTF-8" in utf16


def test_a_file_over_one_mib_is_refused_unread(tmp_path):
    big = BASE.encode() + b"# " + b"x" * matrix.MAX_BYTES + b"\n"
    error = _error(tmp_path, big)
    assert "is larger than 1 MiB (1048576 bytes)" in error
    # a file just under the bound is read (and fails later, for its own reasons, or loads)
    assert matrix.load(_write(tmp_path, BASE + "# " + "x" * (matrix.MAX_BYTES - len(BASE) - 3) + "\n"))


def _laughs(levels=9, width=10) -> str:
    lines = [BASE.rstrip("\n"), 'l0: &l0 [' + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


# Loaded in a child process with a memory limit and a timeout: a loader that expanded the
# aliases (or looped on a recursive one) fails this test instead of hanging it.
CHILD = """
import resource, sys, tracemalloc
resource.setrlimit(resource.RLIMIT_AS, (2 * 1024 ** 3, 2 * 1024 ** 3))
from bench import matrix
tracemalloc.start()
try:
    matrix.load(sys.argv[1])
    print("LOADED")
except matrix.MatrixError as exc:
    print("MatrixError:", exc)
print("peak", tracemalloc.get_traced_memory()[1])
"""


def _load_in_child(path, timeout=60):
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading {path} ran over {timeout} s: it expanded or looped")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a MemoryError would be a traceback
    *lines, peak = proc.stdout.strip().splitlines()
    return "\n".join(lines), int(peak.split()[1]), time.monotonic() - started


def test_billion_laughs_fail_fast_without_expanding(tmp_path):
    message, peak, seconds = _load_in_child(_write(tmp_path, _laughs()))
    assert (f"MatrixError: {tmp_path / 'matrix.yaml'}: the file expands to more than {matrix.MAX_NODES} "
            "nodes through YAML aliases (&anchor / *alias)") in message
    assert "at &l4 (line 15)" in message  # 10**5 nodes: the first anchor over the bound
    assert peak < 50 * 1024 * 1024, f"{peak / 1e6:.0f} MB: the aliases were expanded"
    assert seconds < 30


def test_a_long_alias_chain_is_refused_not_a_recursion_error(tmp_path):
    chain = [BASE.rstrip("\n"), "c0: &c0 [x]"] + [f"c{i}: &c{i} [*c{i - 1}]" for i in range(1, 2000)]
    error = _error(tmp_path, "\n".join(chain) + "\n")
    assert f"expands to more than {matrix.MAX_DEPTH} levels deep through YAML aliases" in error


def test_a_merge_key_chain_is_bounded(tmp_path):
    chain = [BASE.rstrip("\n"), "m0: &m0 {k0: 1}"] + [f"m{i}: &m{i} {{<<: *m{i - 1}, k{i}: 1}}"
                                                      for i in range(1, 1000)]
    assert "through YAML aliases" in _error(tmp_path, "\n".join(chain) + "\n")


def test_a_recursive_alias_is_refused(tmp_path):
    message, _, _ = _load_in_child(_write(tmp_path, BASE + "executors: &loop {local: *loop}\n"))
    assert f"recursive alias: &loop (line {NEXT}) contains an alias to itself" in message


def test_merge_keys_still_work_and_unknown_keys_through_them_are_found(tmp_path):
    text = BASE.replace("      cu130:", '      cu126: &v {base_image: "img:1"}\n      cu128: {<<: *v, pip_index: x}\n'
                        "      cu130:")
    m = matrix.load(_write(tmp_path, text))
    assert m.variants("pytorch")["cu128"] == {"base_image": "img:1", "pip_index": "x"}
    bad = text.replace("pip_index: x", "pip_idx: x")
    assert "unknown key 'frameworks.pytorch.variants.cu128.pip_idx' (line 9)" in _error(tmp_path, bad)


def _many_gpus(n, repeats, precisions="[fp32, tf32, amp-fp16, amp-bf16]"):
    gpus = "".join(f"  g{i}: {{device: gpu}}\n" for i in range(n))
    return (BASE.replace("[fp32]", precisions).replace("tasks: [cnn]", "tasks: [cnn, rnn, resnet50]")
            + gpus + f"repeats: {repeats}\n")


def test_cells_are_counted_before_any_is_built(tmp_path, monkeypatch):
    m = matrix.load(_write(tmp_path, _many_gpus(49, 20)))  # 1 x 50 GPU types x 3 x 4 x 20 = 12000
    built = []

    class CountingCell(matrix.Cell):
        def __init__(self, *args, **kw):
            built.append(1)
            super().__init__(*args, **kw)

    monkeypatch.setattr(matrix, "Cell", CountingCell)
    with pytest.raises(matrix.MatrixError) as info:
        m.cells("local")
    assert ("(frameworks x variants) x gpus x tasks x precisions x modes x repeats = 1 x 50 x 3 x 4 x 1 x 20 "
            "= 12000 cells; at most 10000; narrow the matrix or use --frameworks/--variants/--gpus/--tasks/--modes"
            ) in str(info.value)
    assert built == []
    assert len(m.cells("local", only_gpus=["g1", "g2"])) == 2 * 3 * 4 * 20  # narrowed: fine
    assert len(built) == 480


def test_a_matrix_at_the_cell_bound_expands(tmp_path):
    m = matrix.load(_write(tmp_path, _many_gpus(99, 100, precisions="[fp32]")))  # 100 x 1 x 100 = 10000 per task
    assert len(m.cells("local", only_tasks=["cnn"])) == matrix.MAX_CELLS
    with pytest.raises(matrix.MatrixError, match="= 30000 cells; at most 10000"):
        m.cells("local")


def test_cells_refuse_unsafe_names_from_the_command_line():
    m = matrix.load(REPO / "matrix.yaml")
    with pytest.raises(matrix.MatrixError, match=re.escape("--tasks: '../x' is not a safe name")):
        m.cells("local", only_tasks=["../x"])
    with pytest.raises(matrix.MatrixError, match=re.escape("--gpus: 'a/b' is not a safe name")):
        m.cells("local", only_gpus=["a/b"])


@pytest.mark.parametrize("name", ["h100", "a100-80gb", "a100_80gb", "cu12.6", "keras-jax", "A", "x" * 64])
def test_safe_names(name):
    assert matrix.SAFE_NAME.match(name)
    matrix.check_safe_name("--gpus", name)  # no error


@pytest.mark.parametrize("name", ["", "/../../X", "a100/80gb", "$(touch x)", "a__b", ".hidden", "h100\n",
                                  "h\n100", "a b", "-x", "x-", "a..b", "a._b", "x" * 65, "gpu;id", "ä"])
def test_unsafe_names(name):
    assert not matrix.SAFE_NAME.match(name)
    assert not matrix.SAFE_NAME.search(name)
    with pytest.raises(matrix.MatrixError) as info:
        matrix.check_safe_name("--gpus", name)
    assert str(info.value) == (f"--gpus: {name!r} is not a safe name: use letters, digits and single "
                               ". _ - between them, at most 64 characters (it becomes part of file names "
                               "and job names)")


def _schema():
    return json.loads(matrix.SCHEMA_PATH.read_text())


def test_the_schema_is_a_valid_draft_2020_12_schema_and_declares_every_key():
    import jsonschema

    schema = _schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.validators.validator_for(schema).check_schema(schema)
    defs, props = schema["$defs"], schema["properties"]
    assert set(props) == matrix.TOP_KEYS
    assert set(defs["framework"]["properties"]) == matrix.FRAMEWORK_KEYS
    assert set(defs["variant"]["properties"]) == matrix.VARIANT_KEYS
    assert set(defs["gpu"]["properties"]) == matrix.GPU_KEYS
    executors = props["executors"]["properties"]
    assert set(executors) == set(matrix.EXECUTORS)
    assert {k: set(v["properties"]) for k, v in executors.items()} == matrix.EXECUTOR_KEYS
    assert tuple(executors["slurm"]["properties"]["runner"]["enum"]) == matrix.SLURM_RUNNERS


def test_the_schema_safe_name_pattern_agrees_with_SAFE_NAME():
    import jsonschema

    safe = jsonschema.Draft202012Validator({**_schema()["$defs"]["safe-name"], "$defs": _schema()["$defs"]})
    for name in ["h100", "a100_80gb", "cu12.6", "x" * 64, "", "a__b", ".x", "h100\n", "a/b", "x" * 65]:
        assert safe.is_valid(name) == bool(matrix.SAFE_NAME.match(name)), name


@pytest.mark.parametrize("path", ["matrix.yaml", "tests/fixtures/matrix-docker-smoke.yaml",
                                  "tests/fixtures/matrix-slurm-test.yaml"])
def test_the_shipped_matrices_validate_against_the_schema(path):
    import jsonschema

    doc = yaml.safe_load((REPO / path).read_text())
    jsonschema.validators.validator_for(_schema())(_schema()).validate(doc)
    m = matrix.load(REPO / path)
    assert m.doc == {**doc, "frameworks": {k: v or {} for k, v in doc["frameworks"].items()}}


def test_the_shipped_matrix_expands_as_before():
    m = matrix.load(REPO / "matrix.yaml")
    variants = sum(len(m.variants(fw)) for fw in m.frameworks)
    assert m.doc["modes"] == ["reference", "tuned"]  # the mode A/B: twice the cells of one mode
    assert len(m.cells("docker")) == variants * len(m.gpus) * len(m.doc["tasks"]) * 2 * m.doc["repeats"] == 144 * 2 * 5
    assert len(m.cells("local")) == len(m.frameworks) * len(m.gpus) * 3 * 2 * 5 == 99 * 2 * 5
    assert len(m.cells("local", only_modes=["reference"])) == 99 * 5  # --modes reference: as before the axis
    first, second = m.cells("slurm")[:2]
    assert first.id == "pytorch__venv__cpu__cnn__fp32__r0" and first.mode == "reference"
    assert second.id == "pytorch__venv__cpu__cnn__fp32__tuned__r0" and second.mode == "tuned"


# ---------------------------------------------------------------- modes:

def test_modes_default_to_the_reference_and_each_cell_carries_its_mode(tmp_path):
    m = matrix.load(_write(tmp_path, BASE))
    assert [c.mode for c in m.cells("docker")] == ["reference"]
    m = matrix.load(_write(tmp_path, BASE + "modes: [reference, tuned]\nrepeats: 2\n"))
    cells = m.cells("docker")
    # repeats outermost, modes innermost: the two modes of a figure run back to back
    assert [(c.repeat, c.mode) for c in cells] == [(0, "reference"), (0, "tuned"), (1, "reference"), (1, "tuned")]
    assert [c.id for c in cells] == ["pytorch__cu130__cpu__cnn__fp32__r0__quick",
                                     "pytorch__cu130__cpu__cnn__fp32__tuned__r0__quick",
                                     "pytorch__cu130__cpu__cnn__fp32__r1__quick",
                                     "pytorch__cu130__cpu__cnn__fp32__tuned__r1__quick"]
    assert len({c.id for c in cells}) == 4
    # --modes chooses whatever the matrix lists, in the order given, each once
    assert [c.mode for c in m.cells("docker", only_modes=["tuned"], repeats=1)] == ["tuned"]
    assert [c.mode for c in m.cells("docker", only_modes=["tuned", "reference", "tuned"], repeats=1)] == \
        ["tuned", "reference"]
    only_reference = matrix.load(_write(tmp_path, BASE + "modes: [reference]\n"))
    assert [c.mode for c in only_reference.cells("docker", only_modes=["tuned"])] == ["tuned"]
    with pytest.raises(matrix.MatrixError, match=re.escape("--modes: unknown mode 'fast'; use one of reference, tuned")):
        m.cells("docker", only_modes=["fast"])


def test_a_cell_id_of_the_reference_mode_is_the_id_from_before_the_mode_axis():
    args = dict(framework="pytorch", variant="venv", gpu="cpu", device="cpu", task="rnn", precision="amp-bf16",
                repeat=3, quick=True)
    assert matrix.Cell(**args).id == matrix.Cell(**args, mode="reference").id == \
        "pytorch__venv__cpu__rnn__amp-bf16__r3__quick"
    tuned = matrix.Cell(**args, mode="tuned").id
    assert tuned == "pytorch__venv__cpu__rnn__amp-bf16__tuned__r3__quick"
    assert tuned.split("__")[4] == "amp-bf16"  # the precision stays where it was


@pytest.mark.parametrize("text, message", [
    ("modes: [reference, fast]\n", f"modes[1] (line {NEXT}) is 'fast'; choose from reference, tuned"),
    ("modes: [Tuned]\n", f"modes[0] (line {NEXT}) is 'Tuned'; choose from reference, tuned"),
    ("modes:\n  - reference\n  - compiled\n", f"modes[1] (line {NEXT + 2}) is 'compiled'; choose from reference, tuned"),
    ("modes: []\n", f"modes (line {NEXT}) is empty; it must be a list of modes such as [reference, tuned]"),
    ("modes: tuned\n", f"modes (line {NEXT}) must be a list of modes such as [reference, tuned], not the text 'tuned'"),
    ("modes: [tuned, tuned]\n", f"modes (line {NEXT}) lists 'tuned' more than once; list each once"),
    ("modes: [reference, 1]\n", f"modes[1] (line {NEXT}) is 1; choose from reference, tuned"),
    ("mode: [tuned]\n", f"unknown key 'mode' (line {NEXT}); allowed here: data, executors, frameworks, gpus, "
                         "modes, precisions, quick, repeats, tasks, timeout_s, version"),
])
def test_a_bad_mode_names_the_key_its_line_and_the_known_modes(tmp_path, text, message):
    error = _error(tmp_path, BASE + text)
    assert error == f"{tmp_path / 'matrix.yaml'}: {message}", error


def test_the_schema_knows_the_modes_of_the_vocabulary():
    from bench import modes

    items = _schema()["properties"]["modes"]["items"]
    assert tuple(items["enum"]) == modes.MODES


def test_a_gpu_without_device_and_a_variant_without_image_keep_their_messages(tmp_path):
    assert f"GPU type 'h1' (line {NEXT}) has no mapping: give it device: gpu" in _error(tmp_path, BASE + "  h1:\n")
    assert "variants.cu126 (line 8) has no image: give it a base_image" in _error(
        tmp_path, BASE.replace("      cu130:", "      cu126:\n      cu130:"))
