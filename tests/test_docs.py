"""Every command has help text with an example and appears in the README."""

from __future__ import annotations

import re
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


ROOT = Path(__file__).resolve().parent.parent


def _layout_block() -> str:
    development = README.split("## Development", 1)[1]
    return development.split("```text", 1)[1].split("```", 1)[0]


def test_readme_layout_matches_the_tree() -> None:
    """Every module under src/flowsync/ is in the README's layout, and every listed path exists."""
    block = _layout_block()
    package = ROOT / "src" / "flowsync"
    modules = sorted(
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and p.parent.name != "cli"
    )
    listed = re.findall(r"^ {4}([\w/]+(?:\.py|/))\s", block, re.MULTILINE)
    missing = [m for m in modules if m not in listed]
    assert not missing, f"modules missing from README's layout: {missing}"
    gone = [p for p in listed if not (package / p).exists()]
    assert not gone, f"README's layout lists paths that do not exist: {gone}"


def test_readme_names_every_sync_runs_mode() -> None:
    """The modes sync_runs rows are written with (a pull, or a RunReader's re-reads) are the ones the README describes."""
    code = "\n".join(
        (ROOT / "src" / "flowsync" / f).read_text() for f in ("sync/pull.py", "policy/apply.py")
    )
    modes = (
        set(re.findall(r'\bmode(?:, reason)? = "(\w+)"', code))
        | set(re.findall(r'\bmode="(\w+)"', code))
        | set(re.findall(r'\bRunReader\(\w+, \w+, "([\w-]+)"\)', code))
    )
    assert {"full", "incremental", "apply", "plan-refresh"} <= modes
    bullet = README.split("- `sync_runs` has one row per pull", 1)[1].split("\n- ", 1)[0]
    undocumented = [m for m in sorted(modes) if f"`{m}`" not in bullet]
    assert not undocumented, f"sync_runs modes the README does not describe: {undocumented}"
    named = set(re.findall(r"`([\w-]+)`", bullet.split("Mode is", 1)[1]))
    unwritten = sorted(named - modes)
    assert not unwritten, f"sync_runs modes the README names that no code writes: {unwritten}"


def test_readme_pull_synopsis_lists_every_pull_option() -> None:
    pull = dict(all_commands())["pull"]
    synopsis = README.split("### `flowsync pull`", 1)[1].split("```", 2)[1]
    options = [o for p in pull.params for o in p.opts if o.startswith("--") and o != "--help"]
    missing = [o for o in options if o not in synopsis]
    assert not missing, f"pull options missing from README's synopsis: {missing}"


def test_readme_exit_code_table_covers_every_error() -> None:
    from flowsync import errors

    table = README.split("### Exit codes", 1)[1].split("\n\n", 2)[1]
    codes = {int(c) for c in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.FlowsyncError)
    ]
    used = {c.exit_code for c in classes} | {errors.PARTIAL_FAILURE_EXIT, errors.INTERRUPTED_EXIT}
    assert used <= codes, f"exit codes missing from README's table: {sorted(used - codes)}"
