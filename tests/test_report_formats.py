"""Report output formats (fast lane: a built file, no server): markdown reads like the
terminal table, --html with --format writes both, nothing is silently dropped."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pytest

from tests.helpers import run_cli
from tests.policy_db import DEPLOYMENTS, built_db, run


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = [
        run(n, "FAILED" if n % 4 == 0 else "COMPLETED", n / 10, tags=["etl", "ml"])
        for n in range(1, 41)
    ]
    return built_db(tmp_path_factory.mktemp("formats") / "runs.duckdb", runs)


def report(db: Path, *args: str) -> str:
    result = run_cli("report", *args, "--db", str(db))
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def test_markdown_is_readable_names_and_percentages(built: Path) -> None:
    md = report(built, "failures", "--since", "30d", "--format", "markdown").splitlines()
    assert md[0].startswith("| flow/deployment | runs | failed | failure rate |")
    assert md[1].startswith("|---|---:|---:|---:|")
    row = next(line for line in md[2:] if "etl/prod" in line)
    assert "25.0%" in row
    assert DEPLOYMENTS["prod"] not in "\n".join(md)  # ids only with --ids
    with_ids = report(built, "failures", "--since", "30d", "--format", "markdown", "--ids")
    assert DEPLOYMENTS["prod"] in with_ids


def test_tags_join_the_same_way_in_every_text_format(built: Path) -> None:
    query = "SELECT tags FROM flow_runs LIMIT 1"
    csv = run_cli("sql", query, "-f", "csv", "--db", str(built)).stdout
    md = run_cli("sql", query, "-f", "markdown", "--db", str(built)).stdout
    line = run_cli("sql", query, "-f", "line", "--db", str(built)).stdout
    assert pl.read_csv(io.StringIO(csv))["tags"][0] == "etl, ml"
    assert "| etl, ml |" in md and line == "tags = etl, ml\n"
    assert json.loads(run_cli("sql", query, "-f", "json", "--db", str(built)).stdout) == [
        {"tags": ["etl", "ml"]}
    ]


@pytest.mark.parametrize("command", ["failures", "health"])
def test_html_with_format_writes_both(built: Path, tmp_path: Path, command: str) -> None:
    page = tmp_path / "page.html"
    out = report(built, command, "--since", "30d", "--html", str(page), "--format", "json")
    assert page.read_text().lower().startswith("<!doctype html>")
    assert json.loads(out)  # the data was not silently dropped
    page.unlink()
    assert report(built, command, "--since", "30d", "--html", str(page)) == ""
    assert page.exists()
