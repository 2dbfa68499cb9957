"""FLOPs per sample (bench/flops.py, docs/tasks.md "FLOPs"): the arithmetic, the record's figures,
and the counts against PyTorch's own FLOP counter on the project's PyTorch models."""
from __future__ import annotations

import copy
import json
import math
import subprocess
from dataclasses import replace

import pytest

from bench import flops, frameworks, tasks
from conftest import REPO

# The numbers docs/tasks.md derives, per sample.
EXPECTED = {
    "cnn": {"forward": 124_528_640, "training": 370_821_120},
    "rnn": {"forward": 20_250_400, "training": 60_691_200},
    "resnet50": {"forward": 8_174_272_512, "training": 24_286_789_632},
}


@pytest.mark.parametrize("task", tasks.TASK_NAMES)
@pytest.mark.parametrize("device,quick", [("cpu", False), ("gpu", False), ("cpu", True)])
def test_per_sample_is_the_documented_count_at_every_size(task, device, quick):
    assert flops.per_sample(task, tasks.sized(task, device, quick=quick)) == EXPECTED[task]


def test_training_is_three_forwards_less_the_input_gradients_not_needed():
    # conv1's input is the data; the GRU's first step multiplies the zero h_0 (2 x H x 3H).
    cnn, rnn, resnet = (flops.per_sample(t) for t in tasks.TASK_NAMES)
    assert cnn["training"] == 3 * cnn["forward"] - 2 * (32 * 32 * 50 * 3 * 9)
    assert rnn["training"] == 3 * rnn["forward"] - 2 * (100 * 300)
    assert resnet["training"] == 3 * resnet["forward"] - 2 * (112 * 112 * 64 * 3 * 49)


def test_resnet50_bottlenecks_follow_the_documented_formula():
    # Every stage has (width x side)^2 = 3,584^2; docs/tasks.md: 309 of them plus the stem.
    macs = sum(layer.forward_macs for layer in flops.layers("resnet50"))
    assert macs == 309 * 3584 ** 2 + 112 * 112 * 64 * 3 * 49
    assert len(flops.layers("resnet50")) == 53  # the convolutions of ResNet-50 without fc


def test_counts_follow_the_spec_shapes():
    rnn = flops.per_sample("rnn", replace(tasks.SPECS["rnn"], seq_len=10, embedding_dim=4, gru_units=3))
    # forward: 10 x 4 x 9 + 10 x 3 x 9 + 3 x 2 MACs; backward: the same, but 9 x 3 x 9 for W_hh h
    assert rnn == {"forward": 2 * (360 + 270 + 6), "training": 2 * (360 + 270 + 6) * 2 + 2 * (360 + 243 + 6)}
    cnn = flops.per_sample("cnn", replace(tasks.SPECS["cnn"], image_shape=(1, 8, 8), conv_channels=(1, 1, 1, 1),
                                          kernel_size=1, dense_units=1, classes=1))
    assert cnn["forward"] == 2 * (64 + 64 + 16 + 16 + 4 + 1)


@pytest.mark.parametrize("task,change,message", [
    ("cnn", {"conv_channels": (50, 50, 100)}, "conv_channels must hold 4"),
    ("cnn", {"image_shape": (3, 2, 2)}, "4x4 or more"),
    ("rnn", {"gru_units": 0}, "gru_units must be a positive integer"),
    ("rnn", {"seq_len": 1.5}, "seq_len must be a positive integer"),
    ("resnet50", {"image_shape": (3, 224)}, "image_shape must hold 3"),
    ("resnet50", {"image_shape": (3, 16, 16)}, "32x32 or more"),
])
def test_a_bad_spec_is_a_clear_error(task, change, message):
    with pytest.raises(ValueError, match=message):
        flops.per_sample(task, replace(tasks.SPECS[task], **change))


def test_an_unknown_task_or_a_spec_of_another_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task 'gan'"):
        flops.per_sample("gan", None)
    with pytest.raises(ValueError, match="expected a CNNSpec, got RNNSpec"):
        flops.per_sample("cnn", tasks.SPECS["rnn"])


# ---------------------------------------------------------------- annotate

def ok_record(task: str, time_total_s=2.0, quick=True, device="cpu") -> dict:
    spec = tasks.sized(task, device, quick=quick)
    samples = {"images": 64} if task == "resnet50" else {"train": 2560, "test": 640}
    return {"framework": "pytorch", "task": task, "status": "ok", "time_total_s": time_total_s,
            "samples": samples, "hyperparameters": tasks.hyperparameters(spec)}


def finite_everywhere(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite_everywhere(v) for v in value.values())
    return True


def test_annotate_a_training_task():
    record = flops.annotate(ok_record("cnn"), (1.0e12, "2 cores x 2.5 GHz x 32 FLOP/cycle"))
    f = record["flops"]
    assert f["basis"] == "training (forward + backward)"
    assert f["per_sample"] == 370_821_120.0 and isinstance(f["per_sample"], float)
    assert f["samples"] == 2560  # the train samples of all epochs: what time_total_s covers
    assert f["achieved_flops_per_s"] == pytest.approx(370_821_120 * 2560 / 2.0)
    assert f["peak_flops_per_s"] == 1.0e12
    assert f["peak_source"] == "2 cores x 2.5 GHz x 32 FLOP/cycle"
    assert f["mfu"] == pytest.approx(370_821_120 * 2560 / 2.0 / 1.0e12)
    json.dumps(record, allow_nan=False)


def test_annotate_resnet50_counts_the_forward_pass_over_the_images():
    f = flops.annotate(ok_record("resnet50", time_total_s=4.0), (None, "no peak known"))["flops"]
    assert f["basis"] == "forward" and f["samples"] == 64
    assert f["achieved_flops_per_s"] == pytest.approx(8_174_272_512 * 64 / 4.0)
    assert f["peak_flops_per_s"] is None and f["mfu"] is None and f["peak_source"] == "no peak known"


@pytest.mark.parametrize("peak", [float("nan"), float("inf"), -1.0, 0.0, "fast"])
def test_annotate_never_writes_a_non_finite_number(peak):
    f = flops.annotate(ok_record("rnn"), (peak, "datasheet"))["flops"]
    assert f["peak_flops_per_s"] is None and f["mfu"] is None
    assert "not a positive finite number" in f["peak_source"]
    assert finite_everywhere(f)
    json.dumps(f, allow_nan=False)


@pytest.mark.parametrize("status", ["failed", "skipped", "timeout"])
def test_annotate_leaves_a_record_that_is_not_ok_alone(status):
    record = dict(ok_record("cnn"), status=status, time_total_s=None, samples=None)
    before = copy.deepcopy(record)
    assert flops.annotate(record, (1.0e12, "x")) == before
    assert "flops" not in record


@pytest.mark.parametrize("change,message", [
    ({"time_total_s": float("nan")}, "positive finite time"),
    ({"time_total_s": 0.0}, "positive finite time"),
    ({"samples": None}, "positive train count"),
    ({"task": "gan"}, "unknown task"),
    ({"hyperparameters": {"gru_units": -3}}, "gru_units must be a positive integer"),
])
def test_annotate_an_ok_record_it_cannot_figure_is_a_clear_error(change, message):
    record = dict(ok_record("rnn"), **change)
    with pytest.raises(ValueError, match=message):
        flops.annotate(record, (1.0e12, "x"))
    assert "flops" not in record


def test_annotate_reads_the_model_from_the_record():
    record = ok_record("rnn")
    record["hyperparameters"]["gru_units"] = 50  # not the task's model: the record's count changes
    f = flops.annotate(record, (None, ""))["flops"]
    assert f["per_sample"] == flops.per_sample("rnn", replace(tasks.SPECS["rnn"], gru_units=50))["training"]
    assert f["per_sample"] != EXPECTED["rnn"]["training"]


def test_the_doc_states_the_counts():
    doc = (REPO / "docs" / "tasks.md").read_text()
    section = doc[doc.index("## FLOPs"):]
    for task, counts in EXPECTED.items():
        for basis, value in counts.items():
            assert f"{value:,}" in section, f"docs/tasks.md FLOPs: {task} {basis} {value:,} missing"


# ---------------------------------------------------------------- PyTorch's FLOP counter

# Run in the pytorch environment: the project's models and training step on the CPU in fp32,
# 2 samples, under torch.utils.flop_counter.FlopCounterMode. Prints one JSON line.
COUNT = r"""
import json, sys
from dataclasses import replace
import numpy as np, torch, torchvision
from torch.utils.flop_counter import FlopCounterMode
from bench import tasks
from bench.frameworks import pytorch as P

torch.set_num_threads(1)  # a shared machine: the counts do not depend on the speed
dev = P.init_device("cpu", "fp32")
rng = np.random.default_rng(0)
n = 2
out = {}

def counted(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    ops = {str(op): int(v) for op, v in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), ops

for task in ("cnn", "rnn"):
    spec = replace(tasks.sized(task, "cpu", quick=True), batch_size=n)
    if task == "cnn":
        model, predict, train = P.build_cnn(spec, dev), P.predict_cnn, P.train_cnn_epoch
        x = rng.uniform(0, 1, (n,) + spec.image_shape).astype(np.float32)
    else:
        model, predict, train = P.build_rnn(spec, dev), P.predict_rnn, P.train_rnn_epoch
        x = rng.integers(0, spec.max_features, (n, spec.seq_len), dtype=np.int32)
    y = rng.integers(0, spec.classes, n, dtype=np.int32)
    forward, fops = counted(lambda: predict(model, x, spec))
    # The project's training step: forward, loss, backward and the optimizer's update.
    training, tops = counted(lambda: train(model, [(x, y)], spec))
    out[task] = {"forward": forward, "training": training, "forward_ops": fops, "training_ops": tops}

spec = tasks.sized("resnet50", "cpu", quick=True)
model = P.build_resnet50(spec, dev)
x = rng.uniform(0, 1, (n,) + spec.image_shape).astype(np.float32)
forward, fops = counted(lambda: P.extract_features(model, x))
def resnet_step():  # no training task: forward and backward of the same network
    model.net(torch.from_numpy(x)).sum().backward()
training, tops = counted(resnet_step)
out["resnet50"] = {"forward": forward, "training": training, "forward_ops": fops, "training_ops": tops}
out["torchvision_resnet50_ops"] = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["_ops"]
out["samples"] = n
out["torch"] = torch.__version__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def counted():
    python = frameworks.venv_python(frameworks.get("pytorch"))
    if not python.exists():
        pytest.skip(f"no pytorch environment at {python} (run `python -m bench setup pytorch`): "
                    "the FLOP counter is PyTorch's")
    proc = subprocess.run([str(python), "-c", COUNT], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("task", tasks.TASK_NAMES)
@pytest.mark.parametrize("basis", ["forward", "training"])
def test_per_sample_equals_pytorch_flop_counter(counted, task, basis):
    n = counted["samples"]
    got = counted[task][basis]
    assert got == n * flops.per_sample(task)[basis], (
        f"{task} {basis}: FlopCounterMode (torch {counted['torch']}) counted {got:,} for {n} samples "
        f"({counted[task][basis + '_ops']}); bench/flops.py says {flops.per_sample(task)[basis]:,} per sample")


def test_the_counter_saw_the_layers_the_doc_counts(counted):
    # The GRU on the CPU is ATen's decomposition into matmuls (no fused kernel the counter misses);
    # the convolutions' backward computes no input gradient for the data.
    # (the input projection of all steps is one aten.mm, or aten.bmm under inference_mode)
    for ops in (counted["rnn"]["forward_ops"], counted["rnn"]["training_ops"]):
        assert "aten.addmm" in ops and set(ops) <= {"aten.mm", "aten.bmm", "aten.addmm"}, ops
    assert set(counted["cnn"]["training_ops"]) == {"aten.convolution", "aten.convolution_backward",
                                                    "aten.addmm", "aten.mm"}
    assert set(counted["resnet50"]["forward_ops"]) == {"aten.convolution"}


def test_resnet50_count_is_torchvision_s_own_figure(counted):
    # torchvision's "_ops" (GFLOPS in its model table) counts multiply-adds, fc (2,048 x 1,000) included.
    macs = flops.per_sample("resnet50")["forward"] // 2
    assert round((macs + 2048 * 1000) / 1e9, 3) == counted["torchvision_resnet50_ops"]
