"""The README's example must run as printed."""

from __future__ import annotations

import re

from tests.conftest import REPO


def test_readme_example_runs() -> None:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_has_exactly_two_setup_commands() -> None:
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", setup, re.S)
    assert [c.strip().count("\n") for c in commands] == [0, 0]
    assert commands[0].strip() == (
        "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/hybridkex demo")
    assert commands[1].strip() == "bash tests/run.sh"
    ci = (REPO / ".ci" / "run").read_text()
    assert "tests/run.sh" in ci
