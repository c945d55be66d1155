"""What a person meets in the first hour (fast lane, no server): a DuckDB file that is not
flowsync's, options a command does not have, help that reads, completion that offers values,
a notebook and docs that agree with the snapshot design and the dev setup."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import duckdb
import pytest
import typer

from flowsync.cli import app
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "args",
    [
        ["sql", "SELECT 1"],
        ["report", "failures"],
        ["status"],
        ["pull", "--api-url", "http://127.0.0.1:9/api"],
    ],
)
def test_a_duckdb_file_that_is_not_flowsyncs_is_refused_untouched(
    tmp_path: Path, args: list[str]
) -> None:
    foreign = tmp_path / "sales.duckdb"
    with duckdb.connect(str(foreign)) as con:
        con.execute("CREATE TABLE sales (amount INTEGER)")
    before = _digest(foreign)
    result = run_cli(*args, "--db", str(foreign))
    assert result.exit_code == 5, result.output
    assert "is a DuckDB database but not a flowsync file (it holds table sales)" in result.stderr
    assert "upgrade" not in result.stderr
    assert _digest(foreign) == before


def test_report_unresolved_says_why_it_has_no_since() -> None:
    result = run_cli("report", "unresolved", "--since", "7d")
    assert result.exit_code == 2
    assert "has no --since: it is the current state" in result.stderr
    assert "report errors --since 7d" in result.stderr
    assert "Possible options" not in result.stderr


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in getattr(group, "commands", {}).items():
        found.append((*prefix, name))
        found += _commands(command, (*prefix, name))
    return found


def _offered(command: Any, param: str, incomplete: str) -> list[str]:
    """What the shell completion of ``command``'s option ``param`` offers for ``incomplete``."""
    option = next(p for p in command.params if p.name == param)
    ctx = command.context_class(command)
    return [getattr(c, "value", c) for c in option.shell_complete(ctx, incomplete)]


def test_help_shows_metavars_not_python_types() -> None:
    root = typer.main.get_command(app)
    for path in _commands(root):
        if path[0] not in ("sql", "report"):
            continue  # the analysis commands; pull, export and the policy ones are other changes
        text = run_cli(*path, "--help").stdout
        bad = re.search(r"(-\w|--[\w-]+) <(str|path|list\[str\]|float range|int|float)>", text)
        assert not bad, (path, text)
    text = run_cli("report", "failures", "--help").stdout
    assert "--by [flow|deployment|work_pool|tag]" in text
    assert "--db PATH" in text and "-o, --output FILE" in text
    assert "--db PATH|NAME=PATH" in run_cli("sql", "--help").stdout


def test_completion_offers_values() -> None:
    report = typer.main.get_command(app).commands["report"]  # type: ignore[attr-defined]
    failures, health = report.commands["failures"], report.commands["health"]
    assert _offered(failures, "by", "de") == ["deployment"]
    assert {"markdown", "line"} <= set(_offered(failures, "fmt", ""))
    assert _offered(health, "fmt", "open") == ["openmetrics"]
    assert "7d" in _offered(failures, "since", "")


def test_report_help_has_an_example() -> None:
    text = run_cli("report", "--help").stdout
    assert "Example: flowsync report failures" in text


def test_notebook_and_docs_agree_with_snapshots_and_the_setup() -> None:
    notebook = (ROOT / "notebooks" / "start_here.ipynb").read_text()
    assert "let the next scheduled pull take the file" not in notebook
    assert "never blocks a pull" in notebook
    for doc in [
        ROOT / "notebooks" / "start_here.ipynb",
        *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "README.md",
    ]:
        text = doc.read_text()
        if "jupyter lab" in text:
            assert "pip install jupyterlab" in text, (
                f"{doc.name} says jupyter lab without installing it"
            )
