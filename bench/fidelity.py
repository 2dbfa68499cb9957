"""Fidelity checks of one framework file against TASKS.md, run inside its environment.

`python -m bench.fidelity MODULE [--precision P] [--mode M] [--features FILE.npy]` prints one JSON object:
parameter counts, output shapes, the loss curve of a short training on a small learnable
synthetic set and what the framework set for the precision; --features saves the ResNet-50
features of two fixed images from seeded weights, so that two precisions can be compared on the
same weights. A precision the framework cannot run on the CPU prints {"skipped": reason}.
The test suite (tests/test_fidelity.py) runs it for every framework installed here.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np

from . import data as data_mod
from . import modes, precisions, runner, tasks
from .errors import UnsupportedPrecision

SEED = 0


def _train_curve(fw, dev, spec, x, y, epochs: int, precision: str) -> list:
    """Mean loss per epoch of a short training, driven the way `bench run` drives the framework
    (all epochs in one call where the file has train_<task>_epochs, else one call per epoch)."""
    spec = replace(spec, epochs=epochs)
    build, train_epoch, _ = (getattr(fw, n, None) for n in runner.TRAINING_API[spec.name])
    train_all = getattr(fw, runner.EPOCHS_API[spec.name], None)
    fw.set_seed(SEED)
    model = build(spec, dev)
    runner.checked_numerics(fw, spec.name, model, dev, precision, "cpu")
    rng = np.random.default_rng(0)
    if train_all is not None:
        driver = runner.Epochs(fw, dev, spec, x, y, rng, log=lambda message: None, precision=precision)
        train_all(model, driver, spec)
        driver.finish()
        return driver.losses
    losses = []
    for _ in range(epochs):
        xs, ys = data_mod.shuffled(x, y, rng)
        progress = runner.Progress("fidelity", len(xs) // spec.batch_size, interval_s=1e9)
        losses.append(float(train_epoch(model, runner.Epoch(xs, ys, spec.batch_size, progress), spec)))
    return losses


def check(module_name: str, learn_epochs: int = 6, precision: str = precisions.DEFAULT,
          features_path=None, mode: str = modes.DEFAULT) -> dict:
    runner.prepare_environment(precision)
    fw = runner.load_framework(module_name)
    try:
        dev = fw.init_device("cpu", precision, mode)
    except UnsupportedPrecision as exc:
        return {"framework": fw.NAME, "precision": precision, "mode": mode, "skipped": str(exc)}
    channel_first = fw.data_format(dev) == "NCHW"
    out = {"framework": fw.NAME, "precision": precision, "mode": mode, "params": {}, "shapes": {},
           "losses": {}, "conventions": {}, "numerics": {}, "mode_problems": {}}

    # CNN: 8 batches of a learnable synthetic set, several passes.
    cnn = replace(tasks.SPECS["cnn"], epochs=1)
    x, y, x_test, _ = data_mod.synthetic_cifar10(8 * cnn.batch_size, 2 * cnn.batch_size, 0, channel_first)
    fw.set_seed(SEED)
    model = fw.build_cnn(cnn, dev)
    out["params"]["cnn"] = int(fw.count_params(model))
    out["numerics"]["cnn"] = fw.numerics("cnn", model, dev)
    out["shapes"]["cnn"] = list(np.asarray(fw.predict_cnn(model, x_test, cnn)).shape)
    out["losses"]["cnn"] = _train_curve(fw, dev, cnn, x, y, learn_epochs, precision)

    # RNN: a shorter sequence keeps this fast on a CPU; the parameter count does not depend on it.
    rnn = replace(tasks.SPECS["rnn"], epochs=1)
    fw.set_seed(SEED)
    model = fw.build_rnn(rnn, dev)
    out["params"]["rnn"] = int(fw.count_params(model))
    out["numerics"]["rnn"] = fw.numerics("rnn", model, dev)
    x, y, x_test, _ = data_mod.synthetic_imdb(2 * rnn.batch_size, 2 * rnn.batch_size,
                                              rnn.max_features, rnn.seq_len, 0)
    out["shapes"]["rnn"] = list(np.asarray(fw.predict_rnn(model, x_test, rnn)).shape)
    short = replace(rnn, seq_len=30)
    x, y, _, _ = data_mod.synthetic_imdb(8 * short.batch_size, 0, short.max_features, short.seq_len, 0)
    out["losses"]["rnn"] = _train_curve(fw, dev, short, x, y, learn_epochs, precision)

    # ResNet-50: parameters and one small batch of features, from seeded weights.
    res = tasks.sized("resnet50", "cpu", quick=True)
    fw.set_seed(SEED)
    model = fw.build_resnet50(res, dev)
    out["params"]["resnet50"] = int(fw.count_params(model))
    out["numerics"]["resnet50"] = fw.numerics("resnet50", model, dev)
    images = data_mod.random_images(2, res.image_shape, 0, channel_first)
    features = np.asarray(fw.extract_features(model, images))
    out["shapes"]["resnet50"] = list(features.shape)
    out["features_dtype"] = str(features.dtype)
    if features_path:
        np.save(features_path, features)
    for task in tasks.TASK_NAMES:
        out["conventions"][task] = fw.conventions(task, dev)
        out["mode_problems"][task] = modes.check_state(mode, out["conventions"][task].get("mode"))
        out["numerics"][task]["problems"] = precisions.check_state(precision, "cpu", out["numerics"][task])
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.fidelity")
    parser.add_argument("module", help="a framework file's module, e.g. bench.frameworks.pytorch")
    parser.add_argument("--precision", default=precisions.DEFAULT, choices=precisions.PRECISIONS)
    parser.add_argument("--mode", default=modes.DEFAULT, choices=modes.MODES)
    parser.add_argument("--features", default=None, help="save the ResNet-50 features here (.npy)")
    args = parser.parse_args()
    print(json.dumps(check(args.module, precision=args.precision, features_path=args.features, mode=args.mode)))
