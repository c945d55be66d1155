"""Small helpers shared by tests: run the CLI in-process, read the DuckDB file, and the
session server's type (``SeededServer``; the fixtures themselves live in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
from typer.testing import CliRunner

from bench.seed import Seeded
from bench.server import Server
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


@dataclass
class SeededServer:
    server: Server
    seeded: Seeded
    real: dict[str, Any]

    @property
    def url(self) -> str:
        return self.server.url

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/", timeout=60)

    def count(self, body: dict[str, Any] | None = None, resource: str = "flow_runs") -> int:
        with self.api() as c:
            r = c.post(f"{resource}/count", json=body or {})
            r.raise_for_status()
            return int(r.json())


FAILED = ["FAILED", "CRASHED"]
FINISHED = ["COMPLETED", "FAILED", "CRASHED"]


def server_count(count: Any, states: list[str], window: Any, **filters: Any) -> int:
    """Runs in ``states`` whose expected start is in ``window``, with extra filter sections."""
    runs: dict[str, Any] = {"state": {"type": {"any_": states}}}
    if window is not None and window.since is not None:
        runs["expected_start_time"] = {"after_": window.since.isoformat(), "before_": window.until.isoformat()}
    body: dict[str, Any] = {"flow_runs": runs}
    for section, value in filters.items():
        if section == "flow_runs":
            runs.update(value)
        else:
            body[section] = value
    return int(count(body))
