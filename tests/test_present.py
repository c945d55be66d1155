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


HOSTILE = "boom \x1b[31mANSI\x1b[0m \u202eevil\u202c \x07\x9b\r\u2066x\u2069 tab\there\nnext"


def test_outside_text_shows_its_controls_and_bidi_overrides_escaped() -> None:
    """A terminal never receives a flow's error as control characters: ESC, BEL, C1
    controls, CR and bidi overrides/isolates read as escapes; newline and tab stay."""
    shown = present.printable(HOSTILE)
    assert shown == (
        "boom \\x1b[31mANSI\\x1b[0m \\u202eevil\\u202c \\x07\\x9b\\x0d\\u2066x\\u2069 tab\there\nnext"
    )
    assert present.printable("plain [/x] text, café ✓") == "plain [/x] text, café ✓"
    for c in [*map(chr, range(0x20)), "\x7f", *map(chr, range(0x80, 0xA0))]:
        if c not in "\n\t":
            assert c not in present.printable(f"a{c}b")
    for code in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]:
        assert present.printable(chr(code)) == f"\\u{code:04x}"


def test_a_plans_sample_is_a_line_a_run_whatever_the_names_hold(tmp_path: Path) -> None:
    """A run named with a newline and a tag with a tab: each run of the sample stays on its
    own line in a log (newline and tab escaped, as control characters are)."""
    from flowsync.store import Store

    db = make_db(tmp_path / "runs.duckdb", [run(1), run(2)])
    with Store.writer(db) as store:
        store.execute("UPDATE flow_runs SET name = 'new\nline', tags = ['a\tb']")
    assert present.one_line("new\nline\ta\x1b") == "new\\nline\\ta\\x1b"
    policy = tmp_path / "p.yaml"
    policy.write_text(
        'version: 1\nrules:\n  - name: all\n    action: delete\n    sql: "SELECT id FROM flow_runs"\n'
    )
    result = run_cli("plan", str(policy), "--db", str(db), "--live")
    assert result.exit_code == 0, result.output
    runs = [line for line in result.stdout.splitlines() if "etl/prod" in line]
    assert len(runs) == 2 and all("new\\nline" in r and "a\\tb" in r for r in runs), runs
