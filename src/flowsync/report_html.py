"""The health page: one self-contained HTML file someone opens first thing in the morning.

Owns: turning the health figures (``flowsync.health``) into a page that opens
offline (no CDN, no fetches; the only script is inline and small: it records
JS errors and marks the page as rendered, which the browser test reads) and
reads on a phone and on a wide screen. Sections: headline against the previous
window, runs and failure rate per day (per hour for windows up to 48 h; the
rate on its own axis, scaled to its highest value), a deployment x day heatmap
of failures, top error signatures, unresolved failures, slowest deployments,
lateness, and (for ``report X --html``) that report's table. Runs link to the
Prefect UI where the API URL tells it. Values read through
``flowsync.present``. Must not: print, write files (the CLI does), or compute
a figure (they all come from ``flowsync.reports``).
"""

from __future__ import annotations

import html
from datetime import date, datetime, timezone
from typing import Any

import polars as pl

from flowsync import __version__, health, present, registry, reports
from flowsync.store import Store

RED, GREEN, BLUE, GREY = "#dc2626", "#16a34a", "#2563eb", "#9ca3af"
HEAT_ROWS = 12

CSS = """
*{box-sizing:border-box}
html,body{overflow-x:hidden}
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#111827;background:#f3f4f6}
main{max-width:1180px;margin:0 auto;padding:16px}
h1{font-size:22px;margin:4px 0} h2{font-size:17px;margin:0 0 10px} .muted{color:#6b7280;font-size:13px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:14px 16px;margin:14px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px;margin:14px 0}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:10px 12px}
.card b{display:block;font-size:24px;font-variant-numeric:tabular-nums;margin:2px 0}
.card span{font-size:12px;color:#6b7280} .bad{color:#b91c1c} .good{color:#15803d}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
svg.chart{display:block;width:100%;min-width:340px;height:auto}
svg text{font-size:11px;fill:#4b5563} .axis{stroke:#d1d5db} .grid{stroke:#f3f4f6}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #f3f4f6;padding:5px 6px;text-align:left;vertical-align:top}
th{font-weight:600;color:#374151;background:#f9fafb;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.name{white-space:nowrap;font-weight:500} td.text{min-width:220px;word-break:break-word}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f3f4f6;border-radius:4px;padding:1px 4px}
details summary{cursor:pointer;color:#2563eb;font-size:12px} details pre{white-space:pre-wrap;word-break:break-word;font-size:12px;background:#f9fafb;padding:6px;border-radius:6px;margin:4px 0}
.bar{display:inline-block;height:8px;border-radius:4px;background:#fca5a5;vertical-align:middle;margin-right:6px}
table.heat{width:auto} table.heat td{padding:0;border:1px solid #fff;min-width:22px;width:22px;height:22px} table.heat td.name{padding:0 8px 0 0;position:sticky;left:0;background:#fff}
table.heat th{font-weight:400;font-size:10px;color:#6b7280;background:#fff;padding:2px 0}
.legend{font-size:12px;color:#4b5563;margin-top:6px} .legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 10px}
.empty{color:#6b7280;font-style:italic}
"""

# Records any script error into a DOM attribute first thing, so a headless
# browser's --dump-dom shows it; then, at the end, counts what was drawn.
ERROR_HOOK = """window.__flowsyncErrors=[];window.addEventListener('error',function(e){
window.__flowsyncErrors.push(String(e.message||e));
document.documentElement.setAttribute('data-js-errors',window.__flowsyncErrors.join(' | '));});"""
FINISH = """(function(){var charts=document.querySelectorAll('.chart'),marks=0;
charts.forEach(function(c){marks+=c.querySelectorAll('.mark').length;});
var root=document.documentElement;root.setAttribute('data-charts',String(charts.length));
root.setAttribute('data-marks',String(marks));root.setAttribute('data-rendered','yes');
root.setAttribute('data-js-errors',window.__flowsyncErrors.join(' | '));})();"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _section(title: str, body: str, note: str = "", section_id: str = "") -> str:
    sid = f' id="{section_id}"' if section_id else ""
    note_html = f'<p class="muted">{note}</p>' if note else ""
    return f"<section{sid}><h2>{_e(title)}</h2>{note_html}{body}</section>"


def _empty(text: str) -> str:
    return f'<p class="empty">{_e(text)}</p>'


# -- headline ---------------------------------------------------------------------


def _card(label: str, value: str, change: str = "", bad: bool | None = None) -> str:
    cls = "" if bad is None else (" bad" if bad else " good")
    sub = f'<span class="{cls.strip()}">{_e(change)}</span>' if change else "<span>&nbsp;</span>"
    return f'<div class="card"><span>{_e(label)}</span><b>{_e(value)}</b>{sub}</div>'


def _headline(h: dict[str, Any], has_previous: bool) -> str:
    def vs(now: Any, prev: Any, fmt: Any) -> str:
        return f"prev {fmt(prev)}" if has_previous and prev is not None else ""

    rate_change = h.get("failure_rate_change")
    p95_change = h.get("p95_change_s")
    cards = [
        _card(
            "Finished runs",
            present.count(h.get("runs")),
            vs(h.get("runs"), h.get("prev_runs"), present.count),
        ),
        _card(
            "Failed runs",
            present.count(h.get("failed")),
            vs(h.get("failed"), h.get("prev_failed"), present.count),
            None
            if not has_previous or h.get("prev_failed") is None
            else (h.get("failed") or 0) > h["prev_failed"],
        ),
        _card(
            "Failure rate",
            present.percent(h.get("failure_rate")),
            present.rate_change(rate_change) if has_previous and rate_change is not None else "",
            None if rate_change is None else rate_change > 0.0005,
        ),
        _card(
            "p95 duration",
            present.duration(h.get("p95_s")),
            present.duration_change(p95_change) if has_previous and p95_change is not None else "",
            None if p95_change is None else p95_change > 0.5,
        ),
        _card(
            "Late starts",
            present.count(h.get("late_runs")),
            f"p95 lateness {present.duration(h.get('p95_lateness_s'))}",
        ),
        _card(
            "Unresolved deployments",
            present.count(h.get("unresolved_deployments")),
            "latest finished run failed",
            (h.get("unresolved_deployments") or 0) > 0,
        ),
        _card("Error signatures", present.count(h.get("signatures")), "distinct failure causes"),
    ]
    return f'<div class="cards" id="headline">{"".join(cards)}</div>'


# -- runs and failure rate per day -----------------------------------------------------


RATE_SCALES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0)


def rate_scale(peak: float | None) -> float:
    """The top of the failure rate's axis: the smallest of 1%, 2%, 5%, 10%, 20%, 25%,
    50%, 100% that holds the highest rate, so a 3% rate is not a flat line at the bottom."""
    return next((top for top in RATE_SCALES if (peak or 0) <= top), 1.0)


def _axis_percent(value: float) -> str:
    return f"{value:.0%}" if round(value * 100, 6).is_integer() else f"{value:.1%}"


def daily_chart(daily: pl.DataFrame) -> str:
    """Stacked bars per UTC day or hour (completed, failed) and the failure rate as a line,
    on its own axis (right) scaled to the highest rate."""
    key = "run_hour" if "run_hour" in daily.columns else "run_day"
    unit = "hour" if key == "run_hour" else "day"
    daily = daily.filter(pl.col("runs") + pl.col("cancelled") > 0).sort(key)
    if daily.is_empty():
        return _empty("No finished runs in this window.")
    w, hgt, left, right, top, bottom = 960, 260, 48, 44, 14, 34
    plot_w, plot_h = w - left - right, hgt - top - bottom
    n = daily.height
    step = plot_w / n
    bar_w = max(min(step * 0.72, 64), 1.5)
    peak = max(int(daily["runs"].max() or 0), 1)  # type: ignore[arg-type]
    rate_top = rate_scale(daily["failure_rate"].max())  # type: ignore[arg-type]
    body = []
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        body.append(f'<line class="grid" x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        body.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{present.count(round(peak * frac))}</text>'
        )
        body.append(
            f'<text class="rate-axis" x="{w - right + 6}" y="{y + 4:.1f}">{_axis_percent(rate_top * frac)}</text>'
        )
    points = []
    for i, row in enumerate(daily.iter_rows(named=True)):
        x = left + step * i + (step - bar_w) / 2
        ok = row["runs"] - row["failed"]
        h_ok, h_bad = plot_h * ok / peak, plot_h * row["failed"] / peak
        when = f"{row[key]:%Y-%m-%d %H:00} UTC" if unit == "hour" else str(row[key])
        tip = (
            f"{when}: {present.count(row['runs'])} finished, {present.count(row['failed'])} failed "
            f"({present.percent(row['failure_rate'])}), {present.count(row['cancelled'])} cancelled"
        )
        y_ok = top + plot_h - h_ok
        body.append(
            f'<rect class="mark" x="{x:.1f}" y="{y_ok:.1f}" width="{bar_w:.1f}" height="{h_ok:.1f}" fill="#bfdbfe"><title>{_e(tip)}</title></rect>'
        )
        body.append(
            f'<rect class="mark" x="{x:.1f}" y="{y_ok - h_bad:.1f}" width="{bar_w:.1f}" height="{h_bad:.1f}" fill="{RED}"><title>{_e(tip)}</title></rect>'
        )
        if row["failure_rate"] is not None:
            y_rate = top + plot_h * (1 - row["failure_rate"] / rate_top)
            points.append(f"{x + bar_w / 2:.1f},{y_rate:.1f}")
    if len(points) > 1:
        body.append(
            f'<polyline class="mark" fill="none" stroke="#111827" stroke-width="1.8" points="{" ".join(points)}"/>'
        )
    body.append(
        f'<line class="axis" x1="{left}" x2="{w - right}" y1="{top + plot_h}" y2="{top + plot_h}"/>'
    )
    buckets = daily[key].to_list()
    label = "%b %d %H:00" if unit == "hour" else "%b %d"
    for i in sorted({0, n // 2, n - 1}):
        anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
        x = left + step * i + step / 2
        body.append(
            f'<text x="{x:.1f}" y="{hgt - 12}" text-anchor="{anchor}">{buckets[i]:{label}}</text>'
        )
    svg = (
        f'<div class="scroll"><svg class="chart" id="chart-daily" role="img" viewBox="0 0 {w} {hgt}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>Runs and failure rate per {unit}</title>{"".join(body)}</svg></div>'
    )
    legend = (
        f'<div class="legend"><i style="background:#bfdbfe"></i>completed<i style="background:{RED}"></i>failed'
        f'<i style="background:#111827;height:2px"></i>failure rate (right axis, 0 to {_axis_percent(rate_top)})</div>'
    )
    return svg + legend


# -- heatmap ------------------------------------------------------------------------------


def _heat_color(failed: int, peak: int) -> str:
    if failed <= 0:
        return "#f3f4f6"
    share = failed / max(peak, 1)
    # light to dark red; even one failure is clearly visible
    lightness = 88 - 50 * share
    return f"hsl(0,75%,{lightness:.0f}%)"


def heatmap(cells: pl.DataFrame, days: list[date], deployments: pl.DataFrame) -> str:
    """Deployments x UTC days, coloured by failed runs: ``cells`` per day and deployment,
    rows and their totals from ``deployments`` (the window's failures per deployment,
    most failed first), as the health figures hold them."""
    failing = deployments.filter(pl.col("failed") > 0)
    if failing.is_empty() or not days:
        return _empty("No failures in this window.")
    shown = failing.head(HEAT_ROWS)
    peak = int(cells["failed"].max() or 1)  # type: ignore[arg-type]
    lookup = {
        (r["deployment_id"], r["flow_name"], r["run_day"]): r for r in cells.iter_rows(named=True)
    }
    head = "".join(f'<th title="{d}">{d.day}</th>' for d in days)
    rows = []
    for dep in shown.iter_rows(named=True):
        name = present.group_name(dep)
        tds = []
        for d in days:
            cell = lookup.get((dep["deployment_id"], dep["flow_name"], d))
            failed = cell["failed"] if cell else 0
            runs = cell["runs"] if cell else 0
            tip = (
                f"{name} {d}: {failed} of {runs} failed"
                if runs
                else f"{name} {d}: no finished runs"
            )
            tds.append(
                f'<td class="mark" style="background:{_heat_color(failed, peak)}" title="{_e(tip)}"></td>'
            )
        rows.append(
            f'<tr><td class="name">{_e(name)}</td>{"".join(tds)}<td class="num">&nbsp;{dep["failed"]}</td></tr>'
        )
    more = failing.height - shown.height
    note = (
        f'<p class="muted">{more} more deployments with failures not shown.</p>' if more > 0 else ""
    )
    return (
        f'<div class="scroll"><table class="heat chart" id="chart-heatmap"><thead><tr><th></th>{head}<th class="num">failed</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>{note}"
    )


# -- tables --------------------------------------------------------------------------------


def _th(text: str, num: bool = False) -> str:
    return f'<th class="num">{_e(text)}</th>' if num else f"<th>{_e(text)}</th>"


def _td(text: str, kind: str = "") -> str:
    return f'<td class="{kind}">{_e(text)}</td>' if kind else f"<td>{_e(text)}</td>"


def _run_link(ui: str | None, run_id: Any, text: str) -> str:
    """``text`` (already escaped) as a link to the run in the Prefect UI, when there is one."""
    url = reports.run_url(ui, run_id)
    return f'<a href="{_e(url)}">{text}</a>' if url else text


def signatures_table(frame: pl.DataFrame, limit: int = 10, ui: str | None = None) -> str:
    if frame.is_empty():
        return _empty("No failed runs in this window.")
    rows = []
    for r in frame.head(limit).iter_rows(named=True):
        bar = f'<span class="bar" style="width:{max(r["share"] * 60, 2):.0f}px"></span>'
        run_id = _run_link(ui, r["example_run_id"], f"<code>{_e(r['example_run_id'])}</code>")
        example = (
            f"<details><summary>example run {run_id} "
            f"({_e(present.group_name(r))})</summary><pre>{_e(r['example_message'])}</pre></details>"
        )
        rows.append(
            f'<tr><td class="text"><code>{_e(r["signature"])}</code> {_e(r["error_text"])}{example}</td>'
            f'<td class="num">{bar}{present.count(r["runs"])}</td>{_td(present.percent(r["share"]), "num")}'
            f"{_td(present.count_change(r['runs_change']), 'num')}{_td(present.count(r['deployments']), 'num')}"
            f"{_td(present.when(r['first_seen']), 'num')}{_td(present.when(r['last_seen']), 'num')}</tr>"
        )
    head = (
        _th("error (normalised)")
        + _th("runs", True)
        + _th("share", True)
        + _th("change", True)
        + _th("deployments", True)
        + _th("first seen", True)
        + _th("last seen", True)
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
        return _empty("Every deployment's latest finished run succeeded.")
    rows = []
    for r in frame.head(limit).iter_rows(named=True):
        age = (
            present.duration((now - r["failing_since"]).total_seconds())
            if r["failing_since"]
            else present.NONE
        )
        signature = f"<code>{_e(r['latest_signature'])}</code>"
        rows.append(
            f'<tr>{_td(present.group_name(r), "name")}<td class="num">{_e(present.when(r["failing_since"]))}<br>'
            f'<span class="muted">{_e(age)} ago</span></td>{_td(present.count(r["failures_since_success"]), "num")}'
            f"{_td(present.when(r['last_success_at']) if r['last_success_at'] else 'never', 'num')}"
            f'<td class="text">{_run_link(ui, r.get("latest_failure_run_id"), signature)} '
            f"{_e(r['latest_error_text'])}</td></tr>"
        )
    head = (
        _th("flow/deployment")
        + _th("failing since", True)
        + _th("failures", True)
        + _th("last success", True)
        + _th("latest error")
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
        return _empty("No finished runs with a start and end time in this window.")
    peak = max(float(frame["p95_s"].max() or 0), 1.0)  # type: ignore[arg-type]
    rows = []
    for r in frame.iter_rows(named=True):
        bar = f'<span class="bar" style="background:#93c5fd;width:{max(r["p95_s"] / peak * 80, 2):.0f}px"></span>'
        rows.append(
            f"<tr>{_td(present.group_name(r), 'name')}{_td(present.duration(r['p50_s']), 'num')}"
            f'<td class="num">{bar}{_e(present.duration(r["p95_s"]))}</td>{_td(present.duration_change(r["p95_change_s"]), "num")}'
            f"{_td(present.count(r['runs']), 'num')}</tr>"
        )
    head = (
        _th("flow/deployment")
        + _th("p50", True)
        + _th("p95", True)
        + _th("p95 vs prev", True)
        + _th("runs", True)
    )
    return f'<div class="scroll"><table id="slowest" class="chart"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def lateness_table(frame: pl.DataFrame, limit: int = 10) -> str:
    frame = (
        frame.filter(pl.col("deployment_id").is_not_null())
        .sort(["p95_lateness_s", "late_runs"], descending=True, nulls_last=True)
        .head(limit)
    )
    if frame.is_empty():
        return _empty("No started or waiting runs in this window.")
    rows = [
        f"<tr>{_td(present.group_name(r), 'name')}{_td(present.duration(r['p50_lateness_s']), 'num')}"
        f"{_td(present.duration(r['p95_lateness_s']), 'num')}{_td(present.duration(r['max_lateness_s']), 'num')}"
        f"{_td(present.count(r['late_runs']), 'num')}{_td(present.count(r['waiting_now']), 'num')}</tr>"
        for r in frame.iter_rows(named=True)
    ]
    head = (
        _th("flow/deployment")
        + _th("p50 late", True)
        + _th("p95 late", True)
        + _th("max late", True)
        + _th("late (> 60s)", True)
        + _th("waiting now", True)
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
    head = (_th("name") if has_name else "") + "".join(
        _th(present.label(c.name), frame.schema[c.name].is_numeric()) for c in columns
    )
    body = []
    for r in frame.head(limit).iter_rows(named=True):
        cells = _td(present.group_name(r), "name") if has_name else ""
        cells += "".join(
            f'<td><a href="{_e(r[c.name])}">open</a></td>'
            if c.name == "url" and r[c.name]
            else _td(
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


# -- the page -------------------------------------------------------------------------------


def _days(window: reports.Window, daily: pl.DataFrame) -> list[date]:
    if daily.is_empty():
        return []
    first = (
        daily["run_day"].min()
        if window.since is None
        else window.since.astimezone(timezone.utc).date()
    )
    last = window.until.astimezone(timezone.utc).date()
    assert isinstance(first, date)
    return [
        date.fromordinal(o)
        for o in range(max(first.toordinal(), last.toordinal() - 92), last.toordinal() + 1)
    ]


def _day_span(days: list[date]) -> str:
    return f"Days {days[0]:%b %d} to {days[-1]:%b %d}." if days else ""


def render_health(h: health.Health, extra: str = "") -> str:
    window = h.window
    generated = datetime.now(timezone.utc)
    scope = (
        "Including runs deleted on the server (history)."
        if h.include_deleted
        else "Live runs only (runs deleted on the server are left out)."
    )
    pulled = f"Last pull {present.when(h.last_pull)} UTC." if h.last_pull else "Never pulled."
    has_previous = window.since is not None
    compare = (
        f"Changes are against the previous {present.duration((window.until - window.start).total_seconds())}."
        if has_previous
        else ""
    )
    gap = h.previous_uncovered
    if gap is not None and h.history_start is not None:
        compare += " " + present.uncovered_note(
            (window.until - window.start).total_seconds(), gap.total_seconds(), h.history_start
        )
    sections = [
        _headline(h.headline, has_previous),
        _section(
            f"Runs and failure rate per {h.bucket}",
            daily_chart(h.daily),
            f"UTC {h.bucket}s, by expected start"
            + (
                f" (windows up to {present.duration(health.HOURLY_UP_TO.total_seconds())} are charted by hour)."
                if h.bucket == "hour"
                else "."
            ),
            "daily",
        ),
        _section(
            "Failures by deployment and day",
            heatmap(h.heatmap, _days(window, h.daily), h.deployments),
            _e(_day_span(_days(window, h.daily)))
            + " Failed runs (FAILED or CRASHED) per UTC day; darker is more. "
            "Hover a cell for its numbers.",
            "heatmap",
        ),
        _section(
            "Top error signatures",
            signatures_table(h.signatures, ui=h.ui),
            "Failed runs grouped by their message with ids, numbers, paths, times and quoted values masked.",
            "errors",
        ),
        _section(
            "Unresolved failures",
            unresolved_table(h.unresolved, generated, ui=h.ui),
            "Deployments whose latest finished run failed (all history, not only this window).",
            "unresolved-section",
        ),
        _section(
            "Slowest deployments",
            slowest_table(h.durations),
            "Wall-clock duration of finished runs, slowest p95 first; the trend is the p95 change against the previous window.",
            "slow",
        ),
        _section(
            "Lateness",
            lateness_table(h.lateness),
            "Start time minus expected start, most late first.",
            "late",
        ),
        extra,
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>flowsync: flow run health</title>
<script>{ERROR_HOOK}</script>
<style>{CSS}</style></head>
<body><main>
<h1>Flow run health</h1>
<p class="muted" id="window-note">Runs expected {_e(window.describe())}. {_e(scope)} {_e(compare)} {_e(pulled)}<br>
failed = FAILED or CRASHED; finished = COMPLETED, FAILED or CRASHED; failure rate = failed / finished; CANCELLED is counted apart.
Generated {generated:%Y-%m-%d %H:%M} UTC by flowsync {__version__}.</p>
{"".join(sections)}
</main>
<script>{FINISH}</script>
</body></html>
"""


def build_page(
    store: Store,
    window: reports.Window,
    title: str,
    frame: pl.DataFrame,
    *,
    include_deleted: bool = False,
    report: str = "",
) -> str:
    """The health page for ``window`` followed by ``frame`` (a report's rows) as a table."""
    figures = health.collect(store, window, include_deleted=include_deleted)
    return render_health(figures, _section(title, table_html(frame, report), "", "report"))
