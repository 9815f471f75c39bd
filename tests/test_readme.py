"""README.md stays true: its set-up commands are the ones CI runs, and its method skeleton runs.

No tensorflow and no dataset: the skeleton trains one step on `example_batch` noise.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import re

from conftest import REPO
from ssl_jax.methods import METHODS


def _read(path: str) -> str:
    with open(os.path.join(REPO, path)) as f:
        return f.read()


def _blocks(markdown: str, language: str) -> list[str]:
    """The bodies of the ```<language> code blocks, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, flags=re.M | re.S)


def test_the_first_two_commands_are_the_set_up_commands_ci_runs():
    """The README's first two ```bash lines install and run the demo, then install the test extras
    and run exactly what `.ci/run` runs after `pip install -e '.[test]'`."""
    readme = _read("README.md")
    first_block = _blocks(readme, "bash")[0]
    assert readme.index("```bash") == readme.index("```"), "the set-up commands must be the first code block"
    lines = first_block.splitlines()
    assert len(lines) >= 2
    setup = "python3 -m venv .venv && . .venv/bin/activate && "
    assert lines[0] == (setup + "pip install -e . && python -m ssl_jax.main "
                        "--config=configs/dino_small.py:cifar10 --workdir=runs/dino_cifar10")
    ci_lines = [line for line in _read(".ci/run").splitlines() if "pip install -e '.[test]'" in line]
    assert len(ci_lines) == 1, ".ci/run should run one install-and-test line"
    ci_command = ci_lines[0].strip()
    assert ci_command.startswith(setup + "pip install -e '.[test]' && ")
    assert lines[1] == ci_command
    tail = ci_command.split("pip install -e '.[test]' && ", 1)[1]
    assert tail.startswith("python -m pytest ") and tail.endswith(" tests")


def test_the_write_your_own_method_skeleton_trains_one_step(monkeypatch):
    """The README's only ```python block under "Write your own method" runs as written (from the
    repository root) and registers a method whose one train step gives finite metrics."""
    readme = _read("README.md")
    section = readme.split("## Write your own method", 1)[1].split("\n## ", 1)[0]
    blocks = _blocks(section, "python")
    assert len(blocks) == 1, "the section should hold exactly one python block"
    monkeypatch.chdir(REPO)
    before = dict(METHODS)
    out = io.StringIO()
    namespace: dict = {}
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(blocks[0], "README.md:write-your-own-method", "exec"), namespace)
        added = set(METHODS) - set(before)
    finally:
        METHODS.clear()
        METHODS.update(before)
    assert len(added) == 1, f"the skeleton should register one new method, got {sorted(added)}"
    metrics = {k: float(v) for k, v in namespace["metrics"].items()}
    assert {"loss", "grad_norm", "nonfinite"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["nonfinite"] == 0.0 and metrics["grad_norm"] > 0.0
    assert int(namespace["state"].step) == 1
    assert out.getvalue().strip(), "the skeleton prints its metrics"
