"""Shared fixtures: a real Prefect server, seeded data, an isolated environment.

``prefect`` is one server per test session, seeded once (SEED_RUNS runs plus
real @flow executions): tests must treat it as read-only. Tests that change
server data (deletes, state changes, churn) take ``fresh_server``, a new empty
server of their own, and seed what they need with ``bench.seed``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.seed import run_real_flows, seed
from bench.server import Server, prefect_server
from tests.helpers import SeededServer

SEED_RUNS = 400


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No PREFECT_* / FLOWSYNC_* from the machine leaks into a test; HOME-like dirs are temp."""
    for key in list(os.environ):
        if key.startswith(("PREFECT_", "FLOWSYNC_")):
            monkeypatch.delenv(key)
    home = tmp_path / "prefect-home"
    home.mkdir()
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    return home


@pytest.fixture(scope="session")
def prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeededServer]:
    home = tmp_path_factory.mktemp("prefect-session")
    with prefect_server(home=home) as server:
        seeded = seed(server.url, runs=SEED_RUNS, flows=4, deployments_per_flow=3, days=45, seed_value=7)
        real = run_real_flows(server.url, home)
        yield SeededServer(server, seeded, real)


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    with prefect_server(home=tmp_path / "fresh-prefect") as server:
        yield server


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "flowsync.duckdb"
