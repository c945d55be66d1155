"""Terminal tables of the reports: names first, readable values, fitted to the width.

Owns: which columns each report shows in a terminal and which go first when
the terminal is narrow. Names are never cut: columns are dropped instead,
lowest priority first, until the table fits (``COLUMNS`` or the terminal's
width). Ids appear only with ``--ids``; machine formats keep everything.
Values read through ``flowsync.present``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from flowsync import present

if TYPE_CHECKING:
    import polars as pl

TERMINAL = present.REPORT_COLUMNS
NAME_COLUMNS = ("flow_name", "deployment_name", "work_pool_name", "tag")
WRAPPING = {"error_text", "latest_error_text"}  # long texts wrap; names never do
MIN_WRAP = 28


def _name_header(columns: list[str]) -> str:
    if "deployment_name" in columns:
        return "flow/deployment"
    for c in ("flow_name", "work_pool_name", "tag"):
        if c in columns:
            return present.label(c)
    return ""


def readable_table(
    frame: pl.DataFrame, report: str, *, ids: bool, width: int, title: str | None
) -> Table:
    rows = frame.to_dicts()
    columns = list(frame.columns)
    shown: list[tuple[str, str, int]] = []  # (key, header, priority)
    name_header = _name_header(columns) if report != "errors" else ""
    if name_header:
        shown.append(("__name__", name_header, 11))
    if ids:
        shown += [(c, present.label(c), 10) for c in columns if present.is_id(c)]
    shown += [(c, present.label(c), p) for c, p in TERMINAL.get(report, []) if c in columns]
    if report == "errors" and "deployment_name" in columns:
        shown.append(("__name__", "example in", 5))

    def cell(key: str, row: dict[str, Any]) -> str:
        if key == "__name__":
            return present.group_name(row)
        return present.value(key, row.get(key))

    cells = {key: [cell(key, r) for r in rows] for key, _, _ in shown}

    def needed(key: str, header: str) -> int:
        longest = max((len(v) for v in cells[key]), default=0)
        if key in WRAPPING:
            longest = min(longest, MIN_WRAP)
        return max(len(header), longest) + 3

    while sum(needed(k, h) for k, h, _ in shown) + 1 > width:
        droppable = [(p, i) for i, (_, _, p) in enumerate(shown) if p < 10]
        if not droppable:
            break
        shown.pop(min(droppable)[1])
    table = Table(title=title or None, title_justify="left")
    for key, header, _ in shown:
        dtype = frame.schema.get(key)
        numeric = key not in WRAPPING and dtype is not None and dtype.is_numeric()
        table.add_column(
            header,
            justify="right" if numeric else "left",
            no_wrap=key not in WRAPPING,
            overflow="fold",
            min_width=MIN_WRAP if key in WRAPPING else None,
        )
    for i in range(len(rows)):
        table.add_row(*(cells[key][i] for key, _, _ in shown))
    return table


# The health headline: (label, column, previous column, change column, how to read it).
HEADLINE = [
    ("finished runs", "runs", "prev_runs", "runs_change", "count"),
    ("failed runs", "failed", "prev_failed", "failed_change", "count"),
    ("failure rate", "failure_rate", "prev_failure_rate", "failure_rate_change", "rate"),
    ("cancelled", "cancelled", "prev_cancelled", None, "count"),
    ("p50 duration", "p50_s", "prev_p50_s", "p50_change_s", "duration"),
    ("p95 duration", "p95_s", "prev_p95_s", "p95_change_s", "duration"),
    ("late starts", "late_runs", None, None, "count"),
    ("p95 lateness", "p95_lateness_s", None, None, "duration"),
    ("error signatures", "signatures", None, None, "count"),
    ("unresolved deployments", "unresolved_deployments", None, None, "count"),
]


def headline_table(row: dict[str, Any], title: str | None) -> Table:
    """The health headline as figure / this window / previous window / change."""
    table = Table(title=title or None, title_justify="left")
    for header, justify in (
        ("figure", "left"),
        ("this window", "right"),
        ("previous", "right"),
        ("change", "right"),
    ):
        table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    read = {"count": present.count, "rate": present.percent, "duration": present.duration}
    for name, col, prev, change, kind in HEADLINE:
        now_v, prev_v = row.get(col), row.get(prev) if prev else None
        delta = present.value(change, row.get(change)) if change else present.NONE
        table.add_row(name, read[kind](now_v), read[kind](prev_v) if prev else present.NONE, delta)
    return table
