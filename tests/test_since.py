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


@pytest.mark.parametrize(
    "text",
    [
        "99999999d",
        "1000000000h",
        "100000000000000000000w",
        "99999999999999min",
        "0001-01-01",
        "1899-12-31T23:59:59Z",
    ],
)
def test_a_start_too_far_back_is_refused_in_one_line(text: str) -> None:
    # ages too large for a date, and dates before any run: a ConfigError, not an OverflowError
    # (here or later, when a report takes the previous window of the same length)
    with pytest.raises(ConfigError, match=r"--since .* before 1900-01-01.*'all'"):
        parse_since(text, NOW)
    with pytest.raises(ConfigError, match="before 1900-01-01"):
        reports.parse_since(text, NOW)


def test_the_earliest_start_and_its_previous_window_are_dates() -> None:
    window = reports.parse_since("1900-01-01", NOW)
    assert window.since == datetime(1900, 1, 1, tzinfo=timezone.utc)
    # a run may be scheduled before 1970 (the pull reads it): a start then is no mistake
    assert reports.parse_since("1960-01-01", NOW).since == datetime(1960, 1, 1, tzinfo=timezone.utc)
    assert window.previous_start < window.start


@pytest.mark.parametrize(
    ("text", "message"), [("abc", "is not a time window"), ("0d", "is an empty window")]
)
def test_errors_name_the_option_that_was_given(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^--history {text!r} {message}"):
        parse_since(text, NOW, option="--history")
    with pytest.raises(ConfigError, match=f"^--history {text!r} {message}"):
        reports.parse_since(text, NOW, option="--history")


@pytest.mark.parametrize("text", ["3M", "3mo", "1 month", "2Y", "1yr", "3 years"])
def test_months_and_years_are_refused_so_that_3M_is_never_three_minutes(text: str) -> None:
    with pytest.raises(ConfigError, match=r"months and years are not ages .*\(90d"):
        parse_since(text, NOW)


@pytest.mark.parametrize(("text", "minutes"), [("3m", 3), ("3min", 3), ("3MIN", 3)])
def test_minutes_are_a_small_m_or_min(text: str, minutes: int) -> None:
    assert parse_since(text, NOW) == NOW - timedelta(minutes=minutes)


def test_a_time_with_an_offset_is_described_in_utc() -> None:
    """2026-05-31T08:00+02:00 is 06:00 UTC: the window note says 06:00 UTC, not 08:00 UTC."""
    window = reports.parse_since("2026-05-31T08:00+02:00", NOW)
    assert window.since == datetime(2026, 5, 31, 6, 0, tzinfo=timezone.utc)
    assert window.describe() == "2026-05-31 06:00 to 2026-06-01 12:00 UTC"
