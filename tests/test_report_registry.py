"""The report registry and ``flowsync.report`` (fast lane: a built file, no server): every
registered report gives the CLI's rows and the library's frame alike, every declared
column is in the frame, and a wrong name or option is one clear ``ConfigError``."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import pytest

import flowsync
from flowsync import present, registry, reports
from flowsync.cli import formats
from flowsync.errors import ConfigError
from harness.built import BuiltHistory
from tests.helpers import run_cli

# Columns that read the clock inside SQL (DuckDB's now()), so two calls a moment apart
# differ: a stuck run's time so far, and the health window's own bounds.
CLOCK = {"stuck": {"for_s", "times_usual"}, "health": {"since", "until"}}


@pytest.fixture
def frozen(built: BuiltHistory, monkeypatch: pytest.MonkeyPatch) -> datetime:
    """One "now" for the CLI and the library (the CLI runs in-process): a window ends at
    now, and a run expected between two calls would otherwise count in one only."""
    now = reports.utcnow()
    monkeypatch.setattr(reports, "utcnow", lambda: now)
    return now


def _rows(frame_json: bytes | str, name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(frame_json)
    return [{k: v for k, v in r.items() if k not in CLOCK.get(name, ())} for r in rows]


@pytest.mark.parametrize("name", list(registry.REPORTS))
def test_the_cli_shows_what_the_library_returns(
    built: BuiltHistory, frozen: datetime, name: str
) -> None:
    result = run_cli("report", name, "--format", "json", "--db", str(built.path))
    assert result.exit_code == 0, result.output
    library = flowsync.report(built.path, name)  # each with its defaults
    assert library.frame.height > 0, name  # the built file has rows for every report
    assert _rows(result.stdout, name) == _rows(formats.to_json(library.frame), name)


@pytest.mark.parametrize("name", list(registry.REPORTS))
def test_every_declared_column_is_in_the_frame_with_a_known_kind(
    built: BuiltHistory, name: str
) -> None:
    frame = flowsync.report(built.path, name).frame
    for column in registry.REPORTS[name].columns:
        assert column.name in frame.columns, (name, column.name)
        assert column.kind in present.KINDS, (name, column)


def test_options_reach_the_report(built: BuiltHistory, frozen: datetime) -> None:
    by_flow = flowsync.report(built.path, "failures", by="flow", since="30d")
    assert by_flow.title == "Failures by flow"
    assert "flow_name" in by_flow.frame.columns and "deployment_name" not in by_flow.frame.columns
    assert flowsync.report(built.path, "runs", last=3).frame.height == 3
    cli = run_cli(
        "report", "runs", "--last", "3", "--format", "json", "--db", str(built.path)
    ).stdout
    assert _rows(cli, "runs") == _rows(
        formats.to_json(flowsync.report(built.path, "runs", last=3).frame), "runs"
    )


def test_an_unknown_report_lists_the_names(built: BuiltHistory) -> None:
    with pytest.raises(ConfigError) as e:
        flowsync.report(built.path, "failure")
    assert str(e.value) == (
        "No report 'failure'; the reports are: "
        "failures, durations, late, flaky, errors, unresolved, runs, stuck, health."
    )
    assert e.value.exit_code == 2


@pytest.mark.parametrize(
    ("name", "kwargs", "says"),
    [
        ("failures", {"by": "day"}, "--by 'day' is not a grouping of this report"),
        ("flaky", {"tag": "etl"}, "report flaky has no --tag filter"),
        ("flaky", {"include_deleted": True}, "report flaky counts live runs only"),
        ("late", {"last": 3}, "report late has no option 'last'; its options: late_after."),
        ("unresolved", {"since": "7d"}, "report unresolved has no --since"),
        ("errors", {"by": "flow"}, "report errors has no --by."),
    ],
)
def test_a_wrong_option_is_one_config_error(
    built: BuiltHistory, name: str, kwargs: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError, match="^" + says.replace("(", r"\(").replace(".", r"\.")):
        flowsync.report(built.path, name, **kwargs)


@pytest.mark.parametrize(
    ("name", "options", "says"),
    [
        ("stuck", {"history": "abc"}, "--history 'abc' is not a time window"),
        ("runs", {"last": 10**20}, "--last 100000000000000000000 is out of range"),
        ("stuck", {"min_runs": 0}, "--min-runs 0 is out of range"),
        ("runs", {"last": "abc"}, "--last 'abc' is not a whole number: pass N."),
        ("runs", {"last": True}, "--last True is not a whole number"),
        ("late", {"late_after": "x"}, "--late-after 'x' is not a number: pass SECONDS."),
        ("failures", {"since": 7}, "--since 7 is not an age or a time"),
        ("health", {"by": "flow"}, "report health has no --by."),
        # NaN passed `nan < 0`: wrong frames from late and stuck, a QueryError from health
        ("late", {"late_after": math.nan}, "--late-after nan is out of range"),
        ("stuck", {"late_after": math.nan}, "--late-after nan is out of range"),
        ("health", {"late_after": math.nan}, "--late-after nan is out of range"),
        ("late", {"late_after": math.inf}, "--late-after inf is out of range"),
        ("runs", {"flow": 3}, "--flow 3 is not a name"),  # was a TypeError
        ("runs", {"state": ["FAILED", None]}, "None] is not a name or a list of names"),
    ],
    ids=[
        "window-names-its-option",
        "count-too-large",
        "below-min",
        "count-as-text",
        "count-as-bool",
        "seconds-as-text",
        "since-as-number",
        "health-by",
        "late-nan",
        "stuck-nan",
        "health-nan",
        "late-inf",
        "filter-as-number",
        "filter-holding-no-name",
    ],
)
def test_the_library_checks_a_reports_options_as_the_command_does(
    built: BuiltHistory, name: str, options: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        flowsync.report(built.path, name, **options)
