"""Docs checked by tests: every command is documented and says how to use it."""

from __future__ import annotations

import re

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
