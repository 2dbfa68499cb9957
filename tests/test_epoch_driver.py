"""The harness's all-epochs driver (runner.Epochs): a framework that trains every epoch in one
call (Keras's one fit()) while the harness keeps the clock, the shuffle and the checks.

First on a NumPy double (fake_epochs_framework), then, for every Keras backend set up here,
the real framework file in its own environment: the samples Keras was served in each epoch
are the harness's per-epoch permutations, batch for batch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from dataclasses import replace

import numpy as np
import pytest

from bench import data as data_mod
from bench import external, frameworks, results, runner, tasks
from conftest import REPO, require_env

import fake_epochs_framework as fake  # noqa: E402  (tests/ is on sys.path: conftest)

EPOCHS, BATCHES = 3, 4


def _replace(spec, epochs):
    return replace(spec, epochs=epochs, train_batches=BATCHES, test_batches=1)


def _ids_data(spec) -> data_mod.TaskData:
    """Training samples whose labels are their ids, so a batch says which samples it holds."""
    n = BATCHES * spec.batch_size
    ids = np.arange(n, dtype=np.int64)
    x_test = np.zeros((spec.batch_size, 1), dtype=np.float32)
    return data_mod.TaskData(ids[:, None].astype(np.float32), ids, x_test, None, "synthetic", "ids")


def _permutations(n: int, epochs: int, seed: int) -> list:
    """The harness's per-epoch orders: data_mod.shuffled once per epoch, in order, seeded."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n)
    return [data_mod.shuffled(ids, ids, rng)[0] for _ in range(epochs)]


def _expected_batches(spec, seed: int, epochs: int = EPOCHS) -> list:
    bs = spec.batch_size
    return [(e, i, perm[i * bs:(i + 1) * bs].tolist())
            for e, perm in enumerate(_permutations(BATCHES * bs, epochs, seed)) for i in range(BATCHES)]


@pytest.fixture
def run_fake(monkeypatch):
    def run(mode="ok", task="cnn", drive="auto", seed=5, epochs=EPOCHS, logged=None):
        monkeypatch.setenv("FAKE_EPOCHS_MODE", mode)
        fake.reset()
        spec = _replace(tasks.SPECS[task], epochs)
        log = logged.append if logged is not None else (lambda m: None)
        return runner.measure_training(fake, "cpu", spec, _ids_data(spec), seed, log, drive=drive)
    return run


def _served(path):
    return [(e, i, ids) for p, e, i, ids in fake.SERVED if p == path]


# ---------------------------------------------------------------- the harness, on the double

@pytest.mark.parametrize("task", ["cnn", "rnn"])
def test_all_epochs_in_one_call_each_epoch_timed(run_fake, task):
    logged = []
    m = run_fake(task=task, logged=logged)
    assert fake.CALLS["train_epochs"] == 1 and fake.CALLS["train_epoch"] == 0
    assert len(m.epoch_times_s) == EPOCHS and all(t > 0 for t in m.epoch_times_s)
    assert m.time_total_s == pytest.approx(sum(m.epoch_times_s))
    assert m.final_loss == pytest.approx(1.0 / EPOCHS)
    assert fake.CALLS["synchronize"] == 2 * EPOCHS  # before each clock read: every begin and end
    lines = [line for line in logged if "epoch" in line]
    assert [line.split(":")[0] for line in lines] == [
        f"[fake-epochs {task}] epoch {e}/{EPOCHS}" for e in range(1, EPOCHS + 1)]
    assert "mean loss 1.0000" in lines[0]


@pytest.mark.parametrize("task", ["cnn", "rnn"])
def test_the_same_batches_as_the_per_epoch_path(run_fake, task):
    run_fake(task=task, drive="per-epoch", seed=7)
    per_epoch = _served("per-epoch")
    run_fake(task=task, drive="all-epochs", seed=7)
    all_epochs = _served("all-epochs")
    assert all_epochs == per_epoch == _expected_batches(tasks.SPECS[task], seed=7)
    run_fake(task=task, seed=8)
    assert _served("all-epochs") != all_epochs  # another seed, another order


def test_a_framework_with_only_the_per_epoch_function_is_driven_per_epoch(run_fake, monkeypatch):
    monkeypatch.delattr(fake, "train_cnn_epochs")
    m = run_fake()
    assert fake.CALLS["train_epoch"] == EPOCHS and len(m.epoch_times_s) == EPOCHS
    with pytest.raises(AttributeError, match="no train_cnn_epochs"):
        run_fake(drive="all-epochs")


def test_a_nan_loss_in_epoch_2_stops_training(run_fake):
    with pytest.raises(runner.NonFiniteLoss, match="training loss became nan in epoch 2"):
        run_fake(mode="nan-epoch-2")
    assert {e for e, _, _ in _served("all-epochs")} == {0, 1}  # epoch 3 never ran


def test_returning_before_every_epoch_ended_is_an_error(run_fake):
    with pytest.raises(runner.FidelityError, match="train_cnn_epochs drove 1 of 3 epochs"):
        run_fake(mode="short")


@pytest.mark.parametrize("mode, text", [
    ("begin-twice", r"begin\(0\) out of order \(epoch index 0 is open\)"),
    ("skip-begin", r"end\(0\) out of order \(0 of 3 epochs have ended\)"),
    ("skip-epoch", r"begin\(1\) out of order"),
    ("end-wrong", r"end\(1\) out of order \(epoch index 0 is open\)"),
])
def test_begin_and_end_out_of_order_are_errors(run_fake, mode, text):
    with pytest.raises(runner.FidelityError, match=text):
        run_fake(mode=mode)


def test_a_framework_that_reorders_the_batches_is_stopped(run_fake):
    with pytest.raises(runner.FidelityError, match="asked for batch 1 where batch 0 of epoch 1 comes next"):
        run_fake(mode="shuffles")


def test_an_epoch_that_reads_too_few_batches_is_an_error(run_fake):
    with pytest.raises(runner.FidelityError, match="epoch 1 read 3 of its 4 batches"):
        run_fake(mode="short-read")


def test_looks_before_epoch_0_do_not_count(run_fake):
    m = run_fake(mode="look-first", seed=3)
    assert _served("all-epochs") == _expected_batches(tasks.SPECS["cnn"], seed=3)
    assert len(m.epoch_times_s) == EPOCHS


def test_reading_ahead_across_epoch_boundaries_still_gets_each_epochs_batches(run_fake):
    m = run_fake(mode="read-ahead", seed=4)
    assert _served("all-epochs") == _expected_batches(tasks.SPECS["cnn"], seed=4)
    assert len(m.epoch_times_s) == EPOCHS
    # The two batches of epochs 1 and 2 (from 0) read before the previous epoch ended were
    # gathered from their epoch's order; the rest came from the epoch's copy, made between epochs.
    assert fake.DRIVERS[0].read_ahead == {1: 2, 2: 2}


def test_an_epoch_copy_is_made_between_epochs_not_for_every_batch(run_fake):
    run_fake(seed=4)
    assert fake.DRIVERS[0].read_ahead == {}


def test_load_framework_takes_either_training_function(monkeypatch):
    def module(name, **functions):
        mod = types.ModuleType(name)
        for attr in runner.REQUIRED_API:
            setattr(mod, attr, getattr(fake, attr))
        for attr, value in functions.items():
            setattr(mod, attr, value)
        monkeypatch.setitem(sys.modules, name, mod)
        return name

    both = dict(train_cnn_epochs=fake.train_cnn_epochs, train_rnn_epoch=fake.train_rnn_epoch)
    assert runner.load_framework(module("fw_mixed", **both)).NAME == "fake-epochs"
    with pytest.raises(AttributeError, match=r"lacks train_rnn_epoch \(or train_rnn_epochs\)$"):
        runner.load_framework(module("fw_no_rnn", train_cnn_epochs=fake.train_cnn_epochs))


def test_a_run_through_the_runner_writes_ok_results(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCHS_MODE", "ok")
    opts = runner.RunOptions(framework="fake-epochs", module="fake_epochs_framework",
                             tasks=["cnn", "rnn"], data="synthetic", quick=True, epochs=2, out=tmp_path)
    code, records = runner.run(opts, log=lambda m: None)
    assert code == runner.EXIT_OK
    on_disk = [results.load_result(p) for p in tmp_path.glob("*.json")]
    assert sorted(r["task"] for r in on_disk) == ["cnn", "rnn"]
    assert all(r["status"] == "ok" and len(r["epoch_times_s"]) == 2 for r in on_disk)


def test_a_nan_loss_through_the_runner_is_a_failed_task(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCHS_MODE", "nan-epoch-2")
    opts = runner.RunOptions(framework="fake-epochs", module="fake_epochs_framework", tasks=["cnn"],
                             data="synthetic", quick=True, epochs=3, out=tmp_path)
    code, _ = runner.run(opts, log=lambda m: None)
    [record] = [results.load_result(p) for p in tmp_path.glob("*.json")]
    assert code == runner.EXIT_TASK_FAILED and record["status"] == "failed"
    assert "NonFiniteLoss" in record["error"] and "epoch 2" in record["error"]


def test_the_foreign_programs_epoch_orders_are_the_harness_shuffle(run_fake):
    """R reads epoch e's batches as x[epoch_orders[e]]: the batches the Python path trains on."""
    spec = tasks.SPECS["cnn"]
    orders = external.epoch_orders(BATCHES * spec.batch_size, EPOCHS, 11)
    assert orders.shape == (EPOCHS, BATCHES * spec.batch_size) and orders.dtype == np.int64
    run_fake(seed=11)
    bs = spec.batch_size
    assert _served("all-epochs") == [(e, i, orders[e, i * bs:(i + 1) * bs].tolist())
                                     for e in range(EPOCHS) for i in range(BATCHES)]


def test_the_request_carries_the_epoch_orders(tmp_path):
    spec = _replace(tasks.SPECS["rnn"], 2)
    request = json.loads(external.write_request(spec, _ids_data(spec), "cpu", "fp32", 9, tmp_path).read_text())
    orders = np.load(request["epoch_orders"])
    assert (orders == np.stack(_permutations(BATCHES * spec.batch_size, 2, 9))).all()


# ---------------------------------------------------------------- the Keras files, in their environments

# Runs in the framework's environment: the real framework file through runner.measure_training
# on data whose samples carry their ids (CNN: pixel (0, 0) of channel 0 is id/1024; RNN: token 1
# is 24 + id), recording every batch the harness served and when.
DRIVER = r"""
import json, sys
from dataclasses import replace
import numpy as np
from bench import data as data_mod, runner, tasks

fw = runner.load_framework(sys.argv[1])
dev = fw.init_device("cpu", "fp32")
epochs, batches, seed = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = {}
for task in ("cnn", "rnn"):
    spec = replace(tasks.SPECS[task], epochs=epochs, train_batches=batches, test_batches=1)
    n = batches * spec.batch_size
    if task == "cnn":
        x, y, xt, yt = data_mod.synthetic_cifar10(n, spec.batch_size, 0, fw.data_format(dev) == "NCHW")
        x[:, 0, 0, 0] = np.arange(n) / 1024.0
        decode = lambda xb: np.rint(np.asarray(xb)[:, 0, 0, 0] * 1024).astype(int).tolist()
    else:
        spec = replace(spec, seq_len=30)
        x, y, xt, yt = data_mod.synthetic_imdb(n, spec.batch_size, spec.max_features, spec.seq_len, 0)
        x[:, 1] = 24 + np.arange(n)
        decode = lambda xb: (np.asarray(xb)[:, 1] - 24).astype(int).tolist()
    served, real_batch = [], runner.Epochs.batch

    def recording(self, index, decode=decode, served=served):
        state = {"open": self._open, "ended": len(self.times)}
        before = self._served
        xb, yb = real_batch(self, index)
        # counted: a batch of the epochs trained; not: a look before training, or a batch read
        # ahead past the last epoch
        served.append(dict(state, counted=self._served > before, begun=self._begun, index=int(index),
                           ids=decode(xb)))
        return xb, yb

    read_ahead, real_finish = {}, runner.Epochs.finish

    def finishing(self, read_ahead=read_ahead):
        read_ahead.update(self.read_ahead)
        real_finish(self)

    runner.Epochs.batch, runner.Epochs.finish = recording, finishing
    m = runner.measure_training(fw, dev, spec, data_mod.TaskData(x, y, xt, yt, "synthetic", "ids"),
                                seed, lambda line: None)
    runner.Epochs.batch, runner.Epochs.finish = real_batch, real_finish
    out[task] = {"served": served, "read_ahead": read_ahead, "epoch_times_s": m.epoch_times_s,
                 "final_loss": m.final_loss, "conventions": fw.conventions(task, dev)}
print(json.dumps(out))
"""

KERAS = ["keras-jax", "keras-torch", "keras-tensorflow"]  # tensorflow.py is TensorFlow's own loop (no fit())


@pytest.fixture(scope="module", params=KERAS)
def keras_run(request):
    fw = frameworks.get(request.param)
    python = require_env(fw)
    env = dict(os.environ, **fw.env)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run([str(python), "-c", DRIVER, fw.module, str(EPOCHS), str(BATCHES), "13"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{fw.name}:\n{proc.stderr[-4000:]}"
    return fw.name, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("task", ["cnn", "rnn"])
def test_keras_trains_on_the_harness_batches_epoch_by_epoch(keras_run, task):
    name, out = keras_run
    got = out[task]
    counted = [s for s in got["served"] if s["counted"]]
    looks = [s for s in got["served"] if not s["begun"]]
    assert len(looks) <= 2, looks  # Keras reads one (JAX, torch) or two (TensorFlow) to learn shapes
    past_the_end = [s for s in got["served"] if s["begun"] and not s["counted"]]
    assert all(s["ended"] == EPOCHS - 1 or s["ended"] == EPOCHS for s in past_the_end), past_the_end
    # The stream Keras read, batch after batch, is the harness's epochs in order. fit() takes
    # exactly steps_per_epoch of them per epoch (and Epochs.end checked that each epoch's had been
    # served), so epoch e trained on epoch e's batches, whatever Keras read ahead.
    expected = _expected_batches(tasks.SPECS[task], seed=13)
    assert [s["ids"] for s in counted] == [ids for _, _, ids in expected], name
    assert [s["index"] for s in counted] == [i for _, i, _ in expected], name
    # No batch was read before the previous epoch was open (TensorFlow's prefetch reads the next
    # epoch's first batch or two ahead; those are gathered from its order, the others are views).
    ahead = [(e, s) for s, (e, _, _) in zip(counted, expected) if s["open"] != e]
    assert all(s["open"] in (e - 1, None) and s["ended"] >= e - 1 for e, s in ahead), (name, ahead)
    assert sum(got["read_ahead"].values()) <= len(ahead), (name, got["read_ahead"])
    assert len(got["epoch_times_s"]) == EPOCHS and all(t > 0 for t in got["epoch_times_s"])
    assert np.isfinite(got["final_loss"])
    assert "one fit() over all epochs" in got["conventions"]["epoch_timing"]
