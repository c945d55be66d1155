"""One ``--since`` parser: reports and export accept the same forms and refuse the same way."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from flowsync import reports
from flowsync.errors import ConfigError
from flowsync.since import parse_since
from tests.helpers import run_cli

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("30min", NOW - timedelta(minutes=30)),
        ("12h", NOW - timedelta(hours=12)),
        ("7d", NOW - timedelta(days=7)),
        ("2W", NOW - timedelta(weeks=2)),
        ("2026-01-01", datetime(2026, 1, 1, tzinfo=timezone.utc)),
        ("2026-05-31T06:00:00Z", datetime(2026, 5, 31, 6, tzinfo=timezone.utc)),
        ("2026-05-31T08:00:00+02:00", datetime(2026, 5, 31, 6, tzinfo=timezone.utc)),
        ("all", None),
    ],
)
def test_forms(text: str, expected: datetime | None) -> None:
    assert parse_since(text, NOW) == expected
    assert reports.parse_since(text, NOW).since == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yesterday", "is not a time window"),
        ("0d", "is an empty window"),
        ("2030-01-01", "is in the future"),
    ],
)
def test_refusals(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_since(text, NOW)


@pytest.mark.parametrize(
    "command", [["export", "--format", "parquet", "OUT"], ["report", "failures"]]
)
def test_both_commands_take_the_same_forms(command: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.duckdb"
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    for good in ("30min", "7d", "2026-01-01T00:00:00Z"):
        result = run_cli(*args, "--since", good, "--db", str(missing))
        assert result.exit_code == 5 and "does not exist" in result.stderr, (
            result.output
        )  # got past --since
    bad = run_cli(*args, "--since", "yesterday", "--db", str(missing))
    assert bad.exit_code == 2 and "--since 'yesterday' is not a time window" in bad.stderr
