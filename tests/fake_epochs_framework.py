"""A test double of a framework that drives all epochs in one call (as Keras's one fit() does),
through the harness's runner.Epochs: train_cnn_epochs / train_rnn_epochs, in NumPy.

It is fake_framework's double otherwise, and also has the per-epoch train_cnn_epoch /
train_rnn_epoch, so that the two paths can be compared on the same seed. Both record the
labels of every batch they read in SERVED (the tests use sample ids as labels).
FAKE_EPOCHS_MODE (environment) picks a behaviour of the all-epochs path:
  ok            read every batch in order, begin and end each epoch
  nan-epoch-2   the mean loss of epoch 2 is NaN
  short         return after epoch 1 of several
  begin-twice   begin epoch 0 twice
  skip-begin    end epoch 0 before beginning it
  skip-epoch    begin epoch 1 first
  end-wrong     end epoch 1 while epoch 0 is open
  read-ahead    read two batches ahead, across epoch boundaries (as a prefetching input pipeline)
  shuffles      read batch 1 before batch 0 (a framework shuffling the harness's batches)
  short-read    end each epoch having read one batch fewer than the epoch has
  look-first    read two batches before epoch 0 begins (as Keras's TensorFlow backend does)
"""
from __future__ import annotations

import collections
import os

from fake_framework import (  # noqa: F401  (the rest of the framework API, as the fake has it)
    build_cnn, build_resnet50, build_rnn, conventions, count_params, data_format, extract_features,
    init_device, numerics, predict_cnn, predict_rnn, set_seed, versions)

__all__ = ["NAME", "build_cnn", "build_resnet50", "build_rnn", "conventions", "count_params", "data_format",
           "extract_features", "init_device", "numerics", "predict_cnn", "predict_rnn", "set_seed", "synchronize", "train_cnn_epoch",
           "train_cnn_epochs", "train_rnn_epoch", "train_rnn_epochs", "versions"]
NAME = "fake-epochs"
SERVED = []  # (path, epoch, batch index, [labels]) for every batch read, in order
CALLS = collections.Counter()  # calls of train_*_epochs, train_*_epoch and synchronize
DRIVERS = []  # the runner.Epochs each train_*_epochs call was handed


def _mode() -> str:
    return os.environ.get("FAKE_EPOCHS_MODE", "ok")


def reset() -> None:
    del SERVED[:]
    del DRIVERS[:]
    CALLS.clear()


def synchronize(dev):
    CALLS["synchronize"] += 1


# ---------------------------------------------------------------- one epoch per call

def train_cnn_epoch(model, batches, spec):
    return _train_epoch(model, batches)


def train_rnn_epoch(model, batches, spec):
    return _train_epoch(model, batches)


def _train_epoch(model, batches):
    CALLS["train_epoch"] += 1
    epoch = CALLS["train_epoch"] - 1
    for i, (x, y) in enumerate(batches):
        SERVED.append(("per-epoch", epoch, i, [int(v) for v in y]))
    model.steps += len(batches)
    return 1.0 / (epoch + 1)


# ---------------------------------------------------------------- all epochs in one call

def train_cnn_epochs(model, epochs, spec):
    return _train_epochs(model, epochs)


def train_rnn_epochs(model, epochs, spec):
    return _train_epochs(model, epochs)


def _batches(epochs, ahead: int):
    """Every batch of every epoch, in order, read `ahead` batches before they are used."""
    total = epochs.count * epochs.num_batches
    queue = collections.deque()
    for k in range(total):
        queue.append(epochs.batch(k % epochs.num_batches))
        if len(queue) > ahead:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def _train_epochs(model, epochs):
    CALLS["train_epochs"] += 1
    DRIVERS.append(epochs)
    mode = _mode()
    if mode == "look-first":
        epochs.batch(0)
        epochs.batch(1)
    if mode == "skip-epoch":
        epochs.begin(1)
    if mode == "skip-begin":
        epochs.end(0, 1.0)
    source = _batches(epochs, ahead=2 if mode == "read-ahead" else 0)
    loss = None
    for e in range(epochs.count):
        if mode == "short" and e == 1:
            return loss
        epochs.begin(e)
        if mode == "begin-twice":
            epochs.begin(e)
        reads = epochs.num_batches - (1 if mode == "short-read" else 0)
        for i in range(reads):
            if mode == "shuffles":
                x, y = epochs.batch(1 - i if i < 2 else i)
            else:
                x, y = next(source)
            SERVED.append(("all-epochs", e, i, [int(v) for v in y]))
            epochs.batch_done(i + 1)
        model.steps += reads
        loss = float("nan") if mode == "nan-epoch-2" and e == 1 else 1.0 / (e + 1)
        epochs.end(1 if mode == "end-wrong" else e, loss)
    return loss
