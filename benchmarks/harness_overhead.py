"""The harness's own overhead: a PyTorch CNN epoch as `bench run` times it, against a bare
hand-written loop over the same batches, alternated in one process.

Run inside the PyTorch environment:
    .venvs/pytorch/bin/python benchmarks/harness_overhead.py [--batches 30] [--rounds 5]
Prints each round's times, the medians and the ratio harness / bare.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from bench import data, runner, tasks
from bench.frameworks import pytorch as fw


def bare_epoch(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """What a person would write by hand: no progress, no Epoch object, no harness."""
    net, opt = model.net, model.optimizer
    net.train()
    start = time.perf_counter()
    for i in range(0, len(x) - batch_size + 1, batch_size):
        xb = torch.from_numpy(x[i:i + batch_size])
        yb = torch.from_numpy(y[i:i + batch_size]).long()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(xb), yb)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    spec = replace(tasks.SPECS["cnn"], epochs=1, train_batches=args.batches, test_batches=1)
    dev = fw.init_device("cpu", "fp32")
    task_data = data.task_data(spec, "synthetic", channel_first=True, log=lambda m: None)
    harness_times, bare_times = [], []
    for r in range(args.rounds):
        # The harness path: exactly what `bench run` times (Epoch, progress, sync, loss).
        m = runner.measure_training(fw, dev, spec, task_data, seed=r, log=lambda msg: None)
        harness_times.append(m.epoch_times_s[0])
        x, y = data.shuffled(task_data.x_train, task_data.y_train, np.random.default_rng(r))
        # A fresh model for each side, so both pay the same first-step costs.
        bare_times.append(bare_epoch(fw.build_cnn(spec, dev), x, y, spec.batch_size))
        print(f"round {r + 1}: harness {harness_times[-1]:.3f} s, bare {bare_times[-1]:.3f} s")
    h, b = statistics.median(harness_times), statistics.median(bare_times)
    print(f"median over {args.rounds} rounds of {args.batches} batches of {spec.batch_size}: "
          f"harness {h:.3f} s, bare {b:.3f} s, ratio harness/bare {h / b:.3f}")


if __name__ == "__main__":
    main()
