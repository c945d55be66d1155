"""The health page's tables: top error signatures, unresolved failures, slowest
deployments, lateness, and a report's own table (``report X --html``).

Owns: each table's rows and columns as the page shows them (values read through
``flowsync.present``, at most ``limit`` rows with a note that names the command
showing the rest), and the link from a run to the Prefect UI where the API URL
tells it. Must not: compute a figure (the frames come from ``flowsync.health``
and ``flowsync.reports``), print, or write files.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import polars as pl

from flowsync import present, registry, reports
from flowsync.report_html.markup import empty, esc, isolated, td, th


def _run_link(ui: str | None, run_id: Any, text: str) -> str:
    """``text`` (already escaped) as a link to the run in the Prefect UI, when there is one."""
    url = reports.run_url(ui, run_id)
    return f'<a href="{esc(url)}">{text}</a>' if url else text


def signatures_table(frame: pl.DataFrame, limit: int = 10, ui: str | None = None) -> str:
    if frame.is_empty():
        return empty("No failed runs in this window.")
    rows = []
    for r in frame.head(limit).iter_rows(named=True):
        bar = f'<span class="bar" style="width:{max(r["share"] * 60, 2):.0f}px"></span>'
        run_id = _run_link(ui, r["example_run_id"], f"<code>{esc(r['example_run_id'])}</code>")
        example = (
            f"<details><summary>example run {run_id} "
            f"({isolated(present.group_name(r))})</summary><pre>{isolated(r['example_message'])}</pre></details>"
        )
        rows.append(
            f'<tr><td class="text"><code>{esc(r["signature"])}</code> {isolated(r["error_text"])}{example}</td>'
            f'<td class="num">{bar}{present.count(r["runs"])}</td>{td(present.percent(r["share"]), "num")}'
            f"{td(present.count_change(r['runs_change']), 'num')}{td(present.count(r['deployments']), 'num')}"
            f"{td(present.when(r['first_seen']), 'num')}{td(present.when(r['last_seen']), 'num')}</tr>"
        )
    head = (
        th("error (normalised)")
        + th("runs", True)
        + th("share", True)
        + th("change", True)
        + th("deployments", True)
        + th("first seen", True)
        + th("last seen", True)
    )
    more = (
        f'<p class="muted">{frame.height - limit} more signatures: <code>flowsync report errors</code>.</p>'
        if frame.height > limit
        else ""
    )
    return f'<div class="scroll"><table id="signatures"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>{more}'


def unresolved_table(
    frame: pl.DataFrame, now: datetime, limit: int = 15, ui: str | None = None
) -> str:
    if frame.is_empty():
        return empty("Every deployment's latest finished run succeeded.")
    rows = []
    for r in frame.head(limit).iter_rows(named=True):
        age = (
            present.duration((now - r["failing_since"]).total_seconds())
            if r["failing_since"]
            else present.NONE
        )
        signature = f"<code>{esc(r['latest_signature'])}</code>"
        rows.append(
            f'<tr>{td(present.group_name(r), "name")}<td class="num">{esc(present.when(r["failing_since"]))}<br>'
            f'<span class="muted">{esc(age)} ago</span></td>{td(present.count(r["failures_since_success"]), "num")}'
            f"{td(present.when(r['last_success_at']) if r['last_success_at'] else 'never', 'num')}"
            f'<td class="text">{_run_link(ui, r.get("latest_failure_run_id"), signature)} '
            f"{isolated(r['latest_error_text'])}</td></tr>"
        )
    head = (
        th("flow/deployment")
        + th("failing since", True)
        + th("failures", True)
        + th("last success", True)
        + th("latest error")
    )
    more = (
        f'<p class="muted">{frame.height - limit} more: <code>flowsync report unresolved</code>.</p>'
        if frame.height > limit
        else ""
    )
    return f'<div class="scroll"><table id="unresolved"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>{more}'


def slowest_table(frame: pl.DataFrame, limit: int = 10) -> str:
    frame = frame.filter(pl.col("deployment_id").is_not_null()).head(limit)
    if frame.is_empty():
        return empty("No finished runs with a start and end time in this window.")
    peak = max(float(frame["p95_s"].max() or 0), 1.0)  # type: ignore[arg-type]
    rows = []
    for r in frame.iter_rows(named=True):
        bar = f'<span class="bar" style="background:#93c5fd;width:{max(r["p95_s"] / peak * 80, 2):.0f}px"></span>'
        rows.append(
            f"<tr>{td(present.group_name(r), 'name')}{td(present.duration(r['p50_s']), 'num')}"
            f'<td class="num">{bar}{esc(present.duration(r["p95_s"]))}</td>{td(present.duration_change(r["p95_change_s"]), "num")}'
            f"{td(present.count(r['runs']), 'num')}</tr>"
        )
    head = (
        th("flow/deployment")
        + th("p50", True)
        + th("p95", True)
        + th("p95 vs prev", True)
        + th("runs", True)
    )
    return f'<div class="scroll"><table id="slowest" class="chart"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def lateness_table(frame: pl.DataFrame, late_after: float, limit: int = 10) -> str:
    """Lateness per deployment, most late first; ``late_after``: the seconds past its
    expected start after which the ``late_runs`` column counted a run."""
    frame = (
        frame.filter(pl.col("deployment_id").is_not_null())
        .sort(["p95_lateness_s", "late_runs"], descending=True, nulls_last=True)
        .head(limit)
    )
    if frame.is_empty():
        return empty("No started or waiting runs in this window.")
    rows = [
        f"<tr>{td(present.group_name(r), 'name')}{td(present.duration(r['p50_lateness_s']), 'num')}"
        f"{td(present.duration(r['p95_lateness_s']), 'num')}{td(present.duration(r['max_lateness_s']), 'num')}"
        f"{td(present.count(r['late_runs']), 'num')}{td(present.count(r['waiting_now']), 'num')}</tr>"
        for r in frame.iter_rows(named=True)
    ]
    head = (
        th("flow/deployment")
        + th("p50 late", True)
        + th("p95 late", True)
        + th("max late", True)
        + th(f"late (> {late_after:g}s)", True)
        + th("waiting now", True)
    )
    return f'<div class="scroll"><table id="lateness"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def table_html(frame: pl.DataFrame, report: str, limit: int = 200) -> str:
    """A report's own table, readable: the group's name first, no ids, formatted values."""
    spec = registry.REPORTS.get(report)
    columns = [c for c in (spec.columns if spec else ()) if c.name in frame.columns]
    has_name = (
        any(c in frame.columns for c in ("flow_name", "work_pool_name", "tag"))
        and report != "errors"
    )
    head = (th("name") if has_name else "") + "".join(
        th(present.label(c.name), frame.schema[c.name].is_numeric()) for c in columns
    )
    body = []
    for r in frame.head(limit).iter_rows(named=True):
        cells = td(present.group_name(r), "name") if has_name else ""
        cells += "".join(
            f'<td><a href="{esc(r[c.name])}">open</a></td>'
            if c.name == "url" and r[c.name]
            else td(
                present.show(c.kind, r[c.name]),
                "num"
                if frame.schema[c.name].is_numeric()
                else "text"
                if c.name.endswith("text")
                else "",
            )
            for c in columns
        )
        body.append(f"<tr>{cells}</tr>")
    more = (
        f'<p class="muted">{frame.height - limit} more rows not shown.</p>'
        if frame.height > limit
        else ""
    )
    return f'<div class="scroll"><table id="report-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>{more}'
