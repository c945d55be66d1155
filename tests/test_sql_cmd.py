"""flowsync sql: every output format, read-only, one clear line on bad input."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import polars as pl
import pytest

from flowsync.cli import analysis_cmds
from flowsync.errors import ConfigError
from harness.built import BuiltHistory
from tests.helpers import run_cli, scalar

Q = "SELECT state_type, count(*) AS n FROM flow_runs GROUP BY 1 ORDER BY 1"


@pytest.fixture(scope="module")
def pulled(built: BuiltHistory) -> Path:
    return built.path


def expected(db: Path) -> dict[str, int]:
    from tests.helpers import query

    return dict(query(db, Q))


def test_csv_is_the_default_when_piped(pulled: Path) -> None:
    result = run_cli("sql", Q, "--db", str(pulled))
    assert result.exit_code == 0, result.output
    frame = pl.read_csv(io.StringIO(result.stdout))
    assert dict(zip(frame["state_type"], frame["n"])) == expected(pulled)
    assert result.stderr == ""


def test_json_markdown_table(pulled: Path) -> None:
    rows = json.loads(run_cli("sql", Q, "--format", "json", "--db", str(pulled)).stdout)
    assert {r["state_type"]: r["n"] for r in rows} == expected(pulled)
    md = run_cli("sql", Q, "-f", "markdown", "--db", str(pulled)).stdout.splitlines()
    assert md[0] == "| state_type | n |" and md[1] == "|---|---:|"  # numbers align right
    assert len(md) == 2 + len(expected(pulled))
    table = run_cli("sql", Q, "-f", "table", "--db", str(pulled)).stdout
    assert "state_type" in table and "COMPLETED" in table


def test_nested_values_flatten_for_csv(pulled: Path) -> None:
    result = run_cli("sql", "SELECT ['a', 'b'] AS tags, {'x': 1} AS s", "--db", str(pulled))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == '"a, b","{""x"": 1}"'


def test_parquet_to_stdout_when_piped_and_to_output(pulled: Path, tmp_path: Path) -> None:
    result = run_cli("sql", Q, "-f", "parquet", "--db", str(pulled))
    assert result.exit_code == 0
    frame = pl.read_parquet(io.BytesIO(result.stdout_bytes))
    assert dict(zip(frame["state_type"], frame["n"])) == expected(pulled)
    target = tmp_path / "out.parquet"
    result = run_cli("sql", Q, "-f", "parquet", "--output", str(target), "--db", str(pulled))
    assert result.exit_code == 0 and result.stdout == ""
    assert "wrote" in result.stderr
    assert pl.read_parquet(target).height == len(expected(pulled))


def test_parquet_refuses_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    with pytest.raises(ConfigError, match="Parquet is binary"):
        analysis_cmds._choose_format("parquet", None)
    assert analysis_cmds._choose_format(None, None) == "table"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("sql", "needle", "code"),
    [
        ("SELEC 1", "Query failed: Parser Error", 5),
        ("SELECT nope FROM flow_runs", "Query failed: Binder Error", 5),
        ("DELETE FROM flow_runs", "is open read-only, so statements that change it are refused", 5),
        ("DROP VIEW flow_runs_enriched", "is open read-only", 5),
        ("CREATE TABLE x AS SELECT 1", "is open read-only", 5),
        ("   ", "No SQL given", 2),
    ],
)
def test_bad_sql_is_one_line_and_changes_nothing(
    pulled: Path, sql: str, needle: str, code: int
) -> None:
    before = digest(pulled)
    result = run_cli("sql", sql, "--db", str(pulled))
    assert result.exit_code == code, result.output
    headline, *hint = result.stderr.strip().splitlines()
    assert needle in headline
    assert all(line.startswith("  ") for line in hint)  # DuckDB's help, indented under it
    assert "Traceback" not in result.output and result.stdout == ""
    assert digest(pulled) == before
    assert scalar(pulled, "SELECT count(*) FROM flow_runs") > 0


@pytest.mark.parametrize("live", [False, True], ids=["snapshot", "live"])
def test_attach_is_refused_so_no_file_can_be_written(
    pulled: Path, tmp_path: Path, live: bool
) -> None:
    """The files are open read-only; a file ATTACHed by the query could be written (the live
    file itself, read through its snapshot). Refused before anything runs."""
    other = tmp_path / "other.duckdb"
    before = digest(pulled)
    for target in (pulled, other):
        sql = (
            f"ATTACH '{target}' AS w (READ_WRITE); CREATE TABLE w.pwned AS SELECT 1 AS x; SELECT 1"
        )
        result = run_cli("sql", sql, "--db", str(pulled), *(["--live"] if live else []))
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == (
            "error: ATTACH is refused: flowsync sql reads only the files given with --db (each "
            "read-only); to query another flowsync file too, add it as --db NAME=PATH."
        )
    assert digest(pulled) == before and not other.exists()
    assert run_cli("sql", "DETACH x", "--db", str(pulled)).exit_code == 2


def test_bad_format_and_missing_db(pulled: Path, tmp_path: Path) -> None:
    result = run_cli("sql", Q, "--format", "xlsx", "--db", str(pulled))
    assert result.exit_code == 2 and "--format 'xlsx' is not an output format" in result.stderr
    result = run_cli(
        "sql", Q, "--format", "table", "--output", str(tmp_path / "t.txt"), "--db", str(pulled)
    )
    assert result.exit_code == 2 and "--format table is for the terminal" in result.stderr
    result = run_cli("sql", Q, "--db", str(tmp_path / "missing.duckdb"))
    assert result.exit_code == 5 and "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "missing.duckdb").exists()


def test_help_has_an_example() -> None:
    for args in (
        ["sql"],
        ["report", "failures"],
        ["report", "durations"],
        ["report", "late"],
        ["report", "flaky"],
    ):
        result = run_cli(*args, "--help")
        assert result.exit_code == 0
        assert "Example: flowsync" in result.stdout
