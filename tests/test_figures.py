"""Figures that must not mislead (fast lane: built files, no server): flaky separates,
first seen is over all history, the previous window is covered by the data or says so,
the health page's rate has its own scale and short windows are bucketed by hour."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowsync import reports, views
from flowsync.store import Store
from tests.policy_db import make_db, run


def built(path: Path, runs: list[dict[str, object]]) -> Path:
    db = make_db(path, runs)  # type: ignore[arg-type]
    with Store.open(db) as store:
        views.rebuild(store)
    return db


def test_flaky_separates_rare_failures_from_failures_that_come_and_go(tmp_path: Path) -> None:
    runs = [  # prod: every 8th run fails and the next succeeds (12.5%); dev: one failure in 60
        run(n, "FAILED" if n % 8 == 0 else "COMPLETED", n / 4, dep="prod") for n in range(1, 81)
    ] + [run(100 + n, "FAILED" if n == 30 else "COMPLETED", n / 4, dep="dev") for n in range(1, 61)]
    db = built(tmp_path / "flaky.duckdb", runs)
    with Store.open(db, read_only=True) as store:
        frame = reports.flaky(store, reports.parse_since("30d"))
    flaky = {r["deployment_name"]: r["flaky"] for r in frame.iter_rows(named=True)}
    assert flaky == {"prod": True, "dev": False}
    with Store.open(db, read_only=True) as store:
        strict = reports.flaky(store, reports.parse_since("30d"), min_rate=0.2)
    assert not any(strict["flaky"])
