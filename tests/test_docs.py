"""Every CLI command has help and is documented in the README (sqlite-utils ``test_docs`` style)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gateway.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((prefix + name, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, prefix + name + " "))
    return found


COMMANDS = _commands(main)


def test_the_issue_2_commands_exist() -> None:
    names = {name for name, _ in COMMANDS}
    assert {"run", "simulate", "read", "receiver", "report"} <= names


@pytest.mark.parametrize("name,command", COMMANDS, ids=[name for name, _ in COMMANDS])
def test_command_has_help(name: str, command: click.Command) -> None:
    result = CliRunner().invoke(main, name.split() + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    assert command.help, f"`carbon-gateway {name}` has no help text"


@pytest.mark.parametrize("name", sorted({name.split()[0] for name, _ in COMMANDS}))
def test_command_is_in_readme(name: str) -> None:
    assert f"`{name}" in README, f"README.md does not document `carbon-gateway {name}`"


def test_readme_quick_start_has_exactly_the_two_scripts() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "./scripts/demo" in quick_start and "./scripts/test" in quick_start
    assert (ROOT / "scripts" / "demo").stat().st_mode & 0o111
    assert (ROOT / "scripts" / "test").stat().st_mode & 0o111
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_every_runtime_dependency_is_explained_in_readme() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = requirement.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip()
        assert f"| {name} " in README or f"| {name}," in README, f"README does not say why {name} is needed"
