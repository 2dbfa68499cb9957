"""Fidelity to TASKS.md, one parametrised suite over every Python framework set up here.

Each framework runs bench/fidelity.py inside its own environment; a new framework is one
file plus one registry entry, and is checked here as soon as its environment exists.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from bench import frameworks, tasks
from conftest import REPO, installed_frameworks, require_env

PYTHON_FRAMEWORKS = [fw for fw in installed_frameworks("python") if fw.runs_here]


@pytest.fixture(scope="module", params=PYTHON_FRAMEWORKS, ids=lambda fw: fw.name)
def report(request):
    fw = request.param
    python = require_env(fw)
    env = dict(os.environ, **fw.env)
    proc = subprocess.run([str(python), "-m", "bench.fidelity", fw.module], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{fw.name} fidelity run failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("task", tasks.TASK_NAMES)
def test_parameter_count_is_exactly_tasks_md(report, task):
    assert report["params"][task] in tasks.SPECS[task].expected_params


def test_output_shapes(report):
    assert report["shapes"] == {"cnn": [128, 10], "rnn": [128, 2], "resnet50": [2, 2048]}


@pytest.mark.parametrize("task", ["cnn", "rnn"])
def test_loss_falls_on_a_learnable_set(report, task):
    losses = report["losses"][task]
    assert len(losses) == 6
    # A clear margin: the best of the last three epochs at most 60% of the first epoch's loss.
    assert min(losses[-3:]) < 0.6 * losses[0], losses


def test_conventions_are_stated(report):
    conv = report["conventions"]
    assert conv["rnn"].get("gru_biases") in (300, 600)
    assert (conv["rnn"]["gru_biases"] == 600) == (report["params"]["rnn"] == 3_818_302)
    assert isinstance(conv["resnet50"].get("resnet_conv_bias"), bool)
    assert conv["resnet50"]["resnet_conv_bias"] == (report["params"]["resnet50"] == 23_534_592)


def test_every_registered_python_framework_has_its_file_and_pins():
    for fw in frameworks.FRAMEWORKS.values():
        if fw.language != "python":
            continue
        module_path = REPO / (fw.module.replace(".", "/") + ".py")
        assert module_path.exists(), f"{fw.name}: {module_path} missing"
        for step in fw.pip_steps:
            for i, arg in enumerate(step):
                if arg == "-r":
                    assert (REPO / step[i + 1]).exists(), f"{fw.name}: pin file {step[i + 1]} missing"
