"""The README's two set-up commands stay true: CI runs the test command verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_readme_has_exactly_two_setup_commands():
    cmds = _setup_commands()
    assert len(cmds) == 2, cmds
    assert all(c.startswith("pip install torch==2.13.0 && ") for c in cmds)


def test_ci_runs_the_readme_test_command():
    test_cmd = _setup_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci


def test_readme_starts_with_the_setup_commands_and_then_the_walkthrough():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.+?)\n```", readme, flags=re.S)
    assert blocks[:2] == _setup_commands()
    sections = re.findall(r"^## (.+)$", readme, flags=re.M)
    assert sections[:3] == ["Set up on a fresh machine", "Your own model", "Differences from the classic tvmc"]
