"""Docs checked by tests: every command is documented and says how to use it."""

from __future__ import annotations

import re
from pathlib import Path

import click
from conftest import REPO

from segengine.cli import main


def leaf_commands(group: click.Group, prefix: str = "segengine"):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from leaf_commands(cmd, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", cmd


def test_every_command_is_in_the_command_reference():
    text = (REPO / "docs" / "commands.md").read_text()
    headings = set(re.findall(r"^## `(.+)`$", text, flags=re.M))
    commands = {name for name, _ in leaf_commands(main)}
    assert commands == headings, "regenerate: python docs/generate_commands.py > docs/commands.md"


def test_every_command_has_help_and_an_example():
    for name, cmd in leaf_commands(main):
        assert cmd.help and len(cmd.help.strip()) > 20, name
        if name.split()[1] not in ("demo", "info", "segment", "history"):
            assert "Example" in cmd.help or "example" in cmd.help.lower(), name


def test_readme_starts_with_the_two_setup_commands():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.+?)\n```", readme, flags=re.S)
    assert "segengine demo" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci


def test_docs_link_to_existing_files():
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_readme_runs_as_written_after_the_setup_command(tmp_path):
    """The README's shell blocks after the two set-up commands, in order, in one shell
    (as a user pastes them), then its Python blocks, in a directory laid out like a
    fresh clone whose `.venv` the first set-up command made."""
    import os
    import subprocess
    import sys

    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.+?)\n```", readme, flags=re.S)[2:]
    assert blocks and "segengine init" in blocks[0]
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "data").symlink_to(REPO / "data")
    (clone / ".venv").symlink_to(Path(sys.prefix))
    # The user's shell: segengine is not on PATH until the README puts it there.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SEGENGINE_WORKSPACE")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep)
        if not (Path(p) / "segengine").exists()
    ) or "/usr/bin:/bin"
    script = "set -e\n" + "\n".join(blocks) + "\n"
    shell = subprocess.run(["sh", "-c", script], cwd=clone, env=env, capture_output=True, text=True)
    assert shell.returncode == 0, shell.stderr[-2000:]
    assert (clone / "never-opened.csv").read_text().startswith("email")
    assert "SELECT" in shell.stdout
    for code in re.findall(r"```python\n(.+?)\n```", readme, flags=re.S):
        run = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c", code], cwd=clone,
                             env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
