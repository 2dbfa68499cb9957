#!/usr/bin/env bash
# The environments of the other Python frameworks that install here (CNTK cannot: no wheel
# for Python 3.11). keras-torch carries a 5.5 GB torch build: the slowest step, a few minutes.
set -euo pipefail
python3 -m bench setup mxnet chainer jax keras-jax keras-tensorflow keras-torch
