#!/usr/bin/env bash
# The environments of the core frameworks (PyTorch, TensorFlow): .venvs/<name>.
set -euo pipefail
python3 -m bench setup pytorch tensorflow
