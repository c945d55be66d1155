"""Readable figures: how a number, a duration, a rate or a change reads to a person.

Owns: the one way every human-facing output (the terminal tables, the HTML
page) writes a value: percentages with one decimal, durations as ``1m 32s`` or
``2h 05m``, changes with an arrow and a sign, times to the minute in UTC, each by
the kind of its column (``show``; which column is which kind is declared once, in
``flowsync.registry``), and the headers and names a person reads (``label``,
``group_name``), and what of a text from outside (a flow's name, a run's error)
a terminal may receive (``printable``: every terminal path writes its cells through
it). Machine formats (CSV, JSON,
Parquet, OpenMetrics) never pass through here: they keep raw values and ids.
Must not: print, import rich/typer, or run SQL.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timezone
from typing import Any

UP, DOWN, SAME = "▲", "▼", "="
NONE = "–"

# How a report column reads (``flowsync.registry`` declares each column's kind).
KINDS = (
    "count",
    "number",
    "percent",
    "duration",
    "timestamp",
    "text",
    "flag",
    "ratio",
    "rate_change",
    "count_change",
    "duration_change",
)
# The kind of a column's change against the previous window, by the column's own kind.
CHANGE_OF = {"count": "count_change", "percent": "rate_change", "duration": "duration_change"}
LABELS = {
    "flow_name": "flow",
    "deployment_name": "deployment",
    "work_pool_name": "work pool",
    "run_day": "day",
    "failure_rate": "failure rate",
    "failure_rate_change": "change",
    "prev_failure_rate": "prev rate",
    "prev_runs": "prev runs",
    "prev_failed": "prev failed",
    "prev_cancelled": "prev cancelled",
    "p50_s": "p50",
    "p90_s": "p90",
    "p95_s": "p95",
    "p99_s": "p99",
    "max_s": "max",
    "mean_s": "mean",
    "prev_p50_s": "prev p50",
    "prev_p95_s": "prev p95",
    "p95_change_s": "p95 change",
    "late_runs": "late",
    "p50_lateness_s": "p50 late",
    "p95_lateness_s": "p95 late",
    "max_lateness_s": "max late",
    "waiting_now": "waiting",
    "retried_runs": "retried",
    "failing_streak": "streak",
    "failure_episodes": "episodes",
    "mttr_s": "MTTR",
    "last_state_type": "last state",
    "last_success_at": "last success",
    "last_failure_at": "last failure",
    "error_text": "error (normalised)",
    "runs_change": "change",
    "first_seen": "first seen",
    "last_seen": "last seen",
    "example_state_type": "state",
    "example_run_id": "example run id",
    "example_message": "example message",
    "failing_since": "failing since",
    "failures_since_success": "failures",
    "latest_failure_at": "latest failure",
    "latest_state_type": "state",
    "latest_signature": "signature",
    "latest_error_text": "latest error (normalised)",
    "latest_failure_run_id": "latest run id",
    "latest_message": "latest message",
    "run_at": "expected start",
    "name": "run",
    "state_type": "state",
    "duration_s": "duration",
    "error_signature": "signature",
    "since": "since",
    "for_s": "for",
    "usual_p95_s": "usual p95",
    "times_usual": "× usual",
    "url": "link",
}


# What a terminal must not receive from outside text: C0 controls but newline and tab (ESC
# starts the sequences that recolour, retitle or clear a terminal), DEL, C1 controls
# (U+009B is ESC [ in one character), and the bidi overrides and isolates (U+202A-U+202E,
# U+2066-U+2069), which reorder what follows them on the line.
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f"
_UNPRINTABLE = re.compile(f"[{_CONTROLS}\u202a-\u202e\u2066-\u2069]")
_CONTROL = re.compile(f"[{_CONTROLS}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, bidi: bool = True) -> str:
    """``text`` as a terminal may show it: its control characters (but newline and tab)
    and bidi overrides written as escapes (``\\x1b``, ``\\u202e``), the rest as it is.
    ``bidi=False`` keeps the overrides (an HTML page isolates them in their cell)."""
    return (_UNPRINTABLE if bidi else _CONTROL).sub(_escape, text)


def one_line(text: str) -> str:
    """``printable``, newlines and tabs escaped too (``\\n``, ``\\t``): a value on a line of
    its own record (a run in a plan's sample) that must not look like two."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")


def label(column: str) -> str:
    return LABELS.get(column, column.replace("_", " "))


def is_id(column: str) -> bool:
    return column == "id" or column.endswith("_id")


def duration(seconds: float | None) -> str:
    """``0.4s``, ``42s``, ``1m 32s``, ``2h 05m``, ``3d 04h``: two units at most."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return NONE
    sign = "-" if seconds < 0 else ""
    s = abs(float(seconds))
    if s < 9.95:
        return f"{sign}{s:.1f}s"
    whole = round(s)
    if whole < 60:
        return f"{sign}{whole}s"
    if whole < 3600:
        return f"{sign}{whole // 60}m {whole % 60:02d}s"
    minutes = round(s / 60)
    if minutes < 24 * 60:
        return f"{sign}{minutes // 60}h {minutes % 60:02d}m"
    hours = round(s / 3600)
    return f"{sign}{hours // 24}d {hours % 24:02d}h"


def age(when: datetime | None, now: datetime) -> str:
    """How long before ``now`` ``when`` was, as ``duration`` writes it (``3d 04h``)."""
    return NONE if when is None else duration((now - when).total_seconds())


def percent(value: float | None) -> str:
    return NONE if value is None else f"{value * 100:.1f}%"


def _arrow(value: float, eps: float) -> str:
    return UP if value > eps else DOWN if value < -eps else SAME


def rate_change(value: float | None) -> str:
    """A change of a rate in percentage points: ``▲ +3.1 pp``."""
    if value is None:
        return NONE
    points = value * 100
    return f"{_arrow(points, 0.05)} {points:+.1f} pp"


def count_change(value: int | None) -> str:
    return NONE if value is None else f"{_arrow(value, 0)} {value:+,d}"


def duration_change(value: float | None) -> str:
    if value is None:
        return NONE
    text = duration(abs(value))
    return f"{_arrow(value, 0.5)} {'+' if value >= 0 else '-'}{text}"


def when(value: datetime | None) -> str:
    """A UTC time to the minute."""
    if value is None:
        return NONE
    return f"{value.astimezone(timezone.utc):%Y-%m-%d %H:%M}"


def count(value: int | None) -> str:
    return NONE if value is None else f"{value:,d}"


def show(kind: str, v: Any) -> str:
    """Any report value, readable, as its column's kind (``KINDS``) says."""
    if v is None:
        return NONE
    if kind == "percent":
        return percent(v)
    if kind == "rate_change":
        return rate_change(v)
    if kind == "count_change":
        return count_change(v)
    if kind == "duration_change":
        return duration_change(v)
    if kind == "ratio":
        return f"{v:,.1f}×"
    if kind == "duration":
        return duration(v)
    if kind == "timestamp" and isinstance(v, datetime):
        return when(v)
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return count(v)
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, datetime):
        return when(v)
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def group_name(row: dict[str, Any]) -> str:
    """The name a person knows a group by: ``flow/deployment``, a flow, a pool or a tag."""
    if "deployment_name" in row:
        flow = row.get("flow_name") or "?"
        if row.get("deployment_id") is None and row.get("deployment_name") is None:
            return f"{flow} (no deployment)"
        return f"{flow}/{row.get('deployment_name') or '?'}"
    for key in ("flow_name", "work_pool_name", "tag"):
        if key in row:
            return str(row[key]) if row[key] is not None else f"(no {label(key)})"
    return ""


def uncovered_note(length_s: float, gap_s: float, data_start: datetime) -> str:
    """What to say when the previous window begins before the data does."""
    covered = max(0.0, 1 - gap_s / length_s) if length_s > 0 else 0.0
    if covered == 0:
        return (
            f"The data starts {when(data_start)} UTC, after the previous {duration(length_s)} "
            "ended: the previous figures and the changes compare against no runs."
        )
    return (
        f"The data starts {when(data_start)} UTC, {duration(gap_s)} into the previous "
        f"{duration(length_s)}: the previous figures and the changes cover only "
        f"{covered * 100:.0f}% of it."
    )
