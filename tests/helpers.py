"""Small helpers shared by tests: run the CLI in-process, read the DuckDB file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
from typer.testing import CliRunner

from flowsync.cli import app


def run_cli(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
    """Invoke ``flowsync ARGS``; returns the click Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, list(args), input=input, env=env, catch_exceptions=False)


def query(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def scalar(db: Path, sql: str, params: list[Any] | None = None) -> Any:
    return query(db, sql, params)[0][0]
