"""The Rosetta proof: the canonical weight layout, the comparison, and (tests/test_fidelity.py's
frameworks) the same weights giving the same outputs in every framework set up here."""
from __future__ import annotations

import numpy as np
import pytest

from bench import canonical, equivalence, tasks
from conftest import REPO, run_bench


@pytest.mark.parametrize("task", tasks.TASK_NAMES)
def test_the_canonical_layout_holds_exactly_the_tasks_parameters(task):
    spec = tasks.SPECS[task]
    counted = sum(int(np.prod(shape)) for name, shape in canonical.layout(task).items()
                  if canonical.trainable(task, name))
    # the cuDNN layout of the GRU (two bias vectors per gate), torchvision's ResNet-50 (no conv bias)
    assert counted == max(spec.expected_params) if task == "rnn" else counted == spec.expected_params[0]


def test_the_resnet_layout_is_torchvisions_state_dict_without_fc():
    names = list(canonical.resnet50_layout())
    assert names[:5] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"]
    assert "layer1.0.downsample.0.weight" in names and "layer1.1.downsample.0.weight" not in names
    assert canonical.resnet50_layout()["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert sum(1 for n in names if n.endswith("conv1.weight")) == 1 + 16  # stem + one per bottleneck
    assert not any("fc" in n or "num_batches_tracked" in n for n in names)


def test_random_weights_are_seeded_finite_and_in_the_layout():
    a, b = (canonical.random_weights("cnn", 3) for _ in range(2))
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["conv1.weight"], canonical.random_weights("cnn", 4)["conv1.weight"])
    assert canonical.check("cnn", a) is not None
    resnet = canonical.random_weights("resnet50", 0)
    assert np.all(resnet["bn1.running_var"] > 0)


def test_weights_not_in_the_layout_are_refused_naming_each_difference(tmp_path):
    weights = dict(canonical.random_weights("rnn", 0))
    weights["gru.weight_hh"] = weights["gru.weight_hh"].T
    del weights["fc.bias"]
    weights["gru.extra"] = np.zeros(3)
    with pytest.raises(canonical.LayoutError) as caught:
        canonical.check("rnn", weights, who="somefw.get_weights")
    text = str(caught.value)
    assert text.startswith("somefw.get_weights for rnn")
    assert "missing fc.bias" in text and "not in the layout: gru.extra" in text
    assert "gru.weight_hh has shape (100, 300), the layout says (300, 100)" in text
    bad = dict(canonical.random_weights("cnn", 0))
    bad["fc2.bias"] = np.full(10, np.nan, dtype=np.float32)
    with pytest.raises(canonical.LayoutError, match="fc2.bias holds a value that is not finite"):
        canonical.check("cnn", bad)


def test_saved_weights_load_back_exactly(tmp_path):
    weights = canonical.random_weights("cnn", 1)
    canonical.save(tmp_path / "w.npz", weights)
    back = canonical.load(tmp_path / "w.npz", "cnn")
    assert list(back) == list(weights) and all(np.array_equal(back[n], weights[n]) for n in weights)


def _outputs(before, spec, logits_shift=0.0, loss=0.7, update_shift=0.0):
    out = {"logits": np.ones((4, 10), np.float32) + logits_shift, "loss": np.float64(loss)}
    for name, w in before.items():
        out[f"after/{name}"] = (w - spec.lr * 0.5 + update_shift).astype(np.float32)
    return out


def test_figures_are_each_difference_over_its_tolerance():
    spec = equivalence.check_spec("cnn")
    before = {k: v.astype(np.float64) for k, v in canonical.random_weights("cnn", 0, spec).items()}
    same = equivalence.figures("cnn", _outputs(before, spec), _outputs(before, spec), before, spec)
    assert max(same.values()) < 0.1, same  # float32 storage of the same numbers
    off = equivalence.figures("cnn", _outputs(before, spec), _outputs(before, spec, logits_shift=1e-3,
                                                                      loss=0.7 + 1e-3, update_shift=1e-4),
                              before, spec)
    assert off["logits"] == pytest.approx(1e-3 / 1.001 / 1e-4, rel=1e-2)
    assert off["loss"] == pytest.approx(1e-3 / 1e-5, rel=1e-3)
    assert off["update"] == pytest.approx(1e-4 / spec.lr / 1e-3, rel=1e-2)


def test_a_pair_outside_a_tolerance_is_reported_and_a_by_design_check_is_left_out():
    spec = equivalence.check_spec("cnn")
    before = {k: v.astype(np.float64) for k, v in canonical.random_weights("cnn", 0, spec).items()}
    outputs = {"a": _outputs(before, spec), "b": _outputs(before, spec), "c": _outputs(before, spec, update_shift=1e-3)}
    infos = {n: {"conventions": {}} for n in outputs}
    pairs = equivalence.compare("cnn", outputs, infos, before, spec)
    assert pairs[("a", "b")]["worst"] <= 1 and pairs[("a", "c")]["worst"] > 1 and pairs[("b", "c")]["worst"] > 1
    text = equivalence.table("cnn", ["a", "b", "c"], pairs)
    assert text.splitlines()[0].startswith("cnn: largest difference / tolerance")
    v15, v1 = canonical.DESIGN_CONVENTIONS["resnet_stride"]
    pool = canonical.DESIGN_CONVENTIONS["pool1"][0]
    features = {"x": {"features": np.ones((2, 2048), np.float32)}, "y": {"features": np.zeros((2, 2048), np.float32)}}
    infos = {"x": {"conventions": {"resnet_stride": v15, "pool1": pool}},
             "y": {"conventions": {"resnet_stride": v1, "pool1": pool}}}
    pairs = equivalence.compare("resnet50", features, infos, {}, equivalence.check_spec("resnet50"))
    assert pairs[("x", "y")]["worst"] is None
    assert pairs[("x", "y")]["by_design"] == {"features": f"resnet_stride: {v15!r} / {v1!r}"}
    assert "by design" in equivalence.table("resnet50", ["x", "y"], pairs)


def test_an_adam_epsilon_by_design_leaves_out_the_update_alone():
    spec = equivalence.check_spec("rnn")
    before = {k: v.astype(np.float64) for k, v in canonical.random_weights("rnn", 0, spec).items()}
    out = {n: {"logits": np.ones((4, 2), np.float32), "loss": np.float64(0.7),
               **{f"after/{k}": (w + shift).astype(np.float32) for k, w in before.items()}}
           for n, shift in (("torchlike", 0.0), ("keraslike", 1e-3))}
    algorithm1, hat = canonical.DESIGN_CONVENTIONS["adam_epsilon"]
    infos = {"torchlike": {"conventions": {"adam_epsilon": algorithm1}},
             "keraslike": {"conventions": {"adam_epsilon": hat}}}
    pair = equivalence.compare("rnn", out, infos, before, spec)[("keraslike", "torchlike")]
    assert set(pair["figures"]) == {"logits"} and pair["worst"] <= 1
    assert "adam_epsilon" in pair["by_design"]["update"] and "adam_epsilon" in pair["by_design"]["loss"]
    assert "*" in equivalence.table("rnn", ["keraslike", "torchlike"], {("keraslike", "torchlike"): pair})


def test_every_framework_must_state_each_by_design_convention_with_a_known_value():
    stated = {key: canonical.DESIGN_CONVENTIONS[key][0] for key in ("adam_epsilon", "adam_embedding_v")}
    assert equivalence.design_problems("rnn", stated) == []
    [problem] = equivalence.design_problems("rnn", dict(stated, adam_epsilon=None))
    assert "conventions['adam_epsilon'] is None; it must be one of" in problem
    assert len(equivalence.design_problems("resnet50", {"resnet_stride": "3x3"})) == 2
    assert equivalence.design_problems("cnn", {}) == []


def test_the_check_conditions_adam_away_from_rounding_and_keeps_the_task_otherwise():
    spec, task = equivalence.check_spec("rnn"), tasks.SPECS["rnn"]
    assert spec.epsilon == equivalence.ADAM_EPSILON > task.epsilon
    assert (spec.lr, spec.beta1, spec.beta2, spec.gru_units, spec.max_features) == \
        (task.lr, task.beta1, task.beta2, task.gru_units, task.max_features)
    cnn = equivalence.check_spec("cnn")
    assert cnn.conv_dropout == cnn.dense_dropout == 0 and cnn.lr == tasks.SPECS["cnn"].lr


# ---------------------------------------------------------------- the real frameworks

def _installed(name):
    from bench import frameworks
    from conftest import require_env

    fw = frameworks.get(name)
    return fw, require_env(fw)


def _outputs_of(fw, python, folder, task_list, module=None, env=None):
    got, error = equivalence.run_worker(fw, python, task_list, folder, module=module, extra_env=env)
    assert got is not None, error
    return got


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """PyTorch's outputs on the check's weights and batches: the reference of the broken variants."""
    fw, python = _installed("pytorch")
    folder = tmp_path_factory.mktemp("reference")
    before = equivalence.prepare(folder, ["cnn", "rnn"])
    return fw, python, before, _outputs_of(fw, python, folder, ["cnn", "rnn"])


@pytest.mark.parametrize("mode, task, check", [("gates", "rnn", "logits"), ("padding", "cnn", "logits"),
                                               ("momentum", "cnn", "update")])
def test_a_deliberately_broken_translation_fails_the_check(reference, tmp_path, mode, task, check):
    fw, python, before, good = reference
    equivalence.prepare(tmp_path, [task])
    env = {"BROKEN": mode, "PYTHONPATH": str(REPO / "tests")}
    bad = _outputs_of(fw, python, tmp_path, [task], module="broken_pytorch", env=env)
    assert bad[task][1]["roundtrip"] == 0.0  # the weights load and read back exactly: only the function differs
    spec = equivalence.check_spec(task)
    before64 = {k: v.astype(np.float64) for k, v in before[task].items()}
    outputs = {"pytorch": good[task][0], f"broken-{mode}": bad[task][0]}
    infos = {"pytorch": good[task][1], f"broken-{mode}": bad[task][1]}
    [pair] = equivalence.compare(task, outputs, infos, before64, spec).values()
    assert pair["figures"][check] > 10, pair  # far outside the tolerance, not at its edge
    # the same file unbroken agrees with itself on a fresh process: the figure is not noise
    same = _outputs_of(fw, python, tmp_path, [task], module="broken_pytorch", env={**env, "BROKEN": ""})
    [pair] = equivalence.compare(task, {"a": good[task][0], "b": same[task][0]},
                                 {"a": good[task][1], "b": same[task][1]}, before64, spec).values()
    assert pair["worst"] <= 1, pair


def test_every_framework_set_up_here_computes_the_same_function():
    """`python -m bench equivalence --modes reference,tuned` over every framework installed here
    (the README's table): each tuned file against every reference file, its own included."""
    chosen = equivalence.candidates()
    if len(chosen) < 2:
        pytest.skip("fewer than two frameworks set up here")
    proc = run_bench("equivalence", "--modes", "reference,tuned", timeout=2400)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "all pairs within tolerance" in proc.stdout
    for task in tasks.TASK_NAMES:
        assert f"{task}: largest difference / tolerance" in proc.stdout
    for fw, _ in chosen:
        assert f"[equivalence] {equivalence.entry_name(fw.name, 'tuned')}:" in proc.stdout
