"""Every command has help text with an example and appears in the README."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer.main

from flowsync.cli import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def all_commands() -> list[tuple[str, Any]]:
    root = typer.main.get_command(app)
    out: list[tuple[str, Any]] = []

    def walk(prefix: str, cmd: Any) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(f"{prefix} {name}".strip(), sub)
        else:
            out.append((prefix, cmd))

    walk("", root)
    return out


def test_there_are_commands() -> None:
    names = {n for n, _ in all_commands()}
    assert {"pull", "status"} <= names


def test_every_command_is_in_the_readme() -> None:
    missing = [n for n, _ in all_commands() if f"flowsync {n}" not in README]
    assert not missing, f"commands missing from README.md: {missing}"


def test_every_command_has_help_with_an_example() -> None:
    bad = [n for n, c in all_commands() if not c.help or "Example:" not in c.help]
    assert not bad, f"commands without help or an example: {bad}"


def test_readme_opens_with_the_two_commands() -> None:
    head = README.split("```", 2)[1]
    assert "scripts/demo" in head and "scripts/check" in head


def test_ci_runs_the_readme_test_command() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "scripts/check" in ci
