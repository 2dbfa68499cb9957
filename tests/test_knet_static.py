"""Julia cannot be installed here: check the Knet sources as far as that allows."""
from __future__ import annotations

import re
import tomllib

from conftest import REPO

JULIA = REPO / "julia"
OPENERS = {"function", "struct", "for", "while", "if", "let", "begin", "try", "do", "module",
           "macro", "quote"}


def _code_tokens(text: str):
    """(word, bracket depth) for every identifier, with strings and comments removed."""
    text = re.sub(r'"""(?:.|\n)*?"""', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    text = re.sub(r"#=(?:.|\n)*?=#", "", text)
    text = re.sub(r"#.*", "", text)
    depth = 0
    for match in re.finditer(r"[A-Za-z_][A-Za-z_0-9!]*|[\[\](){}]", text):
        token = match.group()
        if token in "([{":
            depth += 1
        elif token in ")]}":
            depth -= 1
        else:
            yield token, depth


def test_every_block_is_closed():
    for path in JULIA.glob("*.jl"):
        opened = closed = 0
        for word, depth in _code_tokens(path.read_text()):
            if depth == 0 and word in OPENERS:
                opened += 1
            elif depth == 0 and word == "end":
                closed += 1
        assert opened == closed, f"{path.name}: {opened} blocks opened, {closed} closed"


def test_brackets_balance_and_no_placeholder():
    for path in JULIA.glob("*.jl"):
        text = path.read_text()
        depths = [d for _, d in _code_tokens(text)]
        assert min(depths) >= 0 and depths[-1] == 0, path.name
        assert not re.search(r"TODO|FIXME|XXX|placeholder|not implemented", text, re.I), path.name


def test_every_package_used_is_pinned_in_the_project():
    project = tomllib.loads((JULIA / "Project.toml").read_text())
    deps = project["deps"]
    for uuid in deps.values():
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid)
    assert deps["Knet"] == "1902f260-5fb4-5aff-8c31-6271790ab950"
    assert project["compat"]["Knet"].startswith("~1.4")
    text = (JULIA / "bench.jl").read_text()
    used = {name.strip() for line in re.findall(r"^using (.+)$", text, re.M) for name in line.split(",")}
    assert used <= set(deps), used - set(deps)


def test_the_three_tasks_and_the_protocol_are_there():
    text = (JULIA / "bench.jl").read_text()
    defined = set(re.findall(r"^function (\w+)|^(\w+)\(.*\) =", text, re.M))
    names = {a or b for a, b in defined}
    for name in ("init_device", "synchronize", "build_cnn", "build_rnn", "build_resnet50", "train",
                 "predict", "extract", "main", "fail"):
        assert name in names, name
    for word in ("REQUEST.measurement", "REQUEST.logits", "rnnType=:gru", "Momentum(", "Adam(",
                 "batchnorm(", "training=false", "exit(status)", '"params"', '"epoch_times_s"'):
        assert word in text, word
