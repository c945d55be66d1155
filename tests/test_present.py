"""One way to write a value (fast lane, no server): a report column reads by its declared
kind, and every duration a person reads (a report's, a plan's ages) is ``present.duration``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from flowsync import present
from tests.helpers import run_cli
from tests.policy_db import make_db, run

WHEN = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("kind", "value", "text"),
    [
        ("count", 1234, "1,234"),
        ("percent", 0.1234, "12.3%"),
        ("duration", 92.0, "1m 32s"),
        ("timestamp", WHEN, "2026-01-02 03:04"),
        ("rate_change", 0.031, "▲ +3.1 pp"),
        ("count_change", -2, "▼ -2"),
        ("duration_change", 7500.0, "▲ +2h 05m"),
        ("ratio", 3.25, "3.2×"),
        ("flag", True, "yes"),
        ("text", ["a", "b"], "a, b"),
        ("duration", None, present.NONE),
    ],
)
def test_a_value_reads_as_its_kind_says(kind: str, value: object, text: str) -> None:
    assert kind in present.KINDS
    assert present.show(kind, value) == text


def test_an_age_is_a_duration() -> None:
    assert present.age(WHEN - timedelta(days=3, hours=4), WHEN) == "3d 04h"
    assert present.age(None, WHEN) == present.NONE


def test_the_plan_shows_ages_as_every_other_duration(tmp_path: Path) -> None:
    db = make_db(tmp_path / "runs.duckdb", [run(1, days_ago=40)])
    policy = tmp_path / "p.yaml"
    policy.write_text(
        'version: 1\nrules:\n  - name: old\n    action: delete\n    sql: "SELECT id FROM flow_runs"\n'
    )
    result = run_cli("plan", str(policy), "--db", str(db))
    assert result.exit_code == 0, result.output
    assert present.duration(40 * 86400) in result.stdout  # "40d 00h", was "40d"
