"""PyTorch's framework file with one deliberate mistake of the kind the 2018 original found by
hand (BROKEN, environment): the equivalence check must catch each.

  gates     the GRU's r and z gates swapped when the canonical weights are loaded
  padding   the first convolution pads by reflection instead of zeros (same shapes, same count)
  momentum  SGD with dampening equal to the momentum (v = m v + (1 - m) g)
"""
from __future__ import annotations

import os

import numpy as np
import torch

from bench.frameworks import pytorch as _pytorch

MODE = os.environ.get("BROKEN", "")


def __getattr__(name):  # the rest of the framework API, unchanged
    return getattr(_pytorch, name)


def build_cnn(spec, dev):
    model = _pytorch.build_cnn(spec, dev)
    if MODE == "padding":
        model.net[0].padding_mode = "reflect"
    if MODE == "momentum":
        model.optimizer = torch.optim.SGD(model.net.parameters(), lr=spec.lr, momentum=spec.momentum,
                                          dampening=spec.momentum)
    return model


def set_weights(model, task, weights):
    if MODE == "gates" and task == "rnn":
        weights = dict(weights)
        for name in ("gru.weight_ih", "gru.weight_hh", "gru.bias_ih", "gru.bias_hh"):
            r, z, n = np.split(weights[name], 3)
            weights[name] = np.concatenate([z, r, n])
    _pytorch.set_weights(model, task, weights)


def get_weights(model, task):
    weights = _pytorch.get_weights(model, task)
    if MODE == "gates" and task == "rnn":  # the inverse swap: the round trip stays exact
        for name in ("gru.weight_ih", "gru.weight_hh", "gru.bias_ih", "gru.bias_hh"):
            z, r, n = np.split(weights[name], 3)
            weights[name] = np.concatenate([r, z, n])
    return weights
