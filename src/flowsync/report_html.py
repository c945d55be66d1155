"""The ``--html`` report page: one self-contained file of inline SVG charts.

Owns: turning report frames into a page that opens offline (no CDN, no
fetches; the only script is inline and small: it records JS errors and marks
the page as rendered, which the browser test reads). Charts: failure rate per
day per deployment, duration percentiles per deployment, top failing
deployments, and the table of the report that was asked for. Must not: print,
write files (the CLI does), or run SQL other than through ``flowsync.reports``.
"""

from __future__ import annotations

import html
from datetime import date, datetime, timezone
from typing import Any

import polars as pl

from flowsync import __version__, reports
from flowsync.store import Store

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]
MAX_SERIES = 8
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 760, 280, 56, 16, 16, 40

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:980px;color:#111827;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px} .muted{color:#6b7280}
svg.chart{background:#fff;border:1px solid #e5e7eb;border-radius:6px;max-width:100%;height:auto}
svg text{font-size:11px;fill:#374151} .axis{stroke:#9ca3af} .grid{stroke:#f3f4f6}
.series{fill:none;stroke-width:2} .dim .series{opacity:.15} .dim .series.on{opacity:1;stroke-width:3}
.legend span{display:inline-block;margin:2px 12px 2px 0;cursor:default} .legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
table{border-collapse:collapse;width:100%;font-size:12px} th,td{border-bottom:1px solid #e5e7eb;padding:4px 6px;text-align:left}
th{background:#f9fafb} td.num{text-align:right;font-variant-numeric:tabular-nums}
"""

# Records any script error into a DOM attribute first thing, so a headless
# browser's --dump-dom shows it; then, at the end, counts what was drawn.
ERROR_HOOK = """window.__flowsyncErrors=[];window.addEventListener('error',function(e){
window.__flowsyncErrors.push(String(e.message||e));
document.documentElement.setAttribute('data-js-errors',window.__flowsyncErrors.join(' | '));});"""
FINISH = """(function(){var charts=document.querySelectorAll('svg.chart'),marks=0;
charts.forEach(function(c){marks+=c.querySelectorAll('.mark').length;});
document.querySelectorAll('.legend span[data-series]').forEach(function(item){
var chart=document.getElementById(item.parentNode.getAttribute('data-for'));
item.addEventListener('mouseenter',function(){chart.classList.add('dim');
chart.querySelectorAll('[data-series="'+item.getAttribute('data-series')+'"]').forEach(function(s){s.classList.add('on');});});
item.addEventListener('mouseleave',function(){chart.classList.remove('dim');
chart.querySelectorAll('.on').forEach(function(s){s.classList.remove('on');});});});
var root=document.documentElement;root.setAttribute('data-charts',String(charts.length));
root.setAttribute('data-marks',String(marks));root.setAttribute('data-rendered','yes');
root.setAttribute('data-js-errors',window.__flowsyncErrors.join(' | '));})();"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _label(row: dict[str, Any]) -> str:
    if row.get("deployment_id") is None:
        return f"{row.get('flow_name') or '?'} (no deployment)"
    return f"{row.get('flow_name') or '?'}/{row.get('deployment_name') or '?'}"


def _svg(chart_id: str, title: str, body: list[str], height: int = H) -> str:
    return (
        f'<svg class="chart" id="{chart_id}" role="img" aria-label="{_e(title)}" '
        f'viewBox="0 0 {W} {height}" width="{W}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{_e(title)}</title>{''.join(body)}</svg>"
    )


def _empty(chart_id: str, title: str) -> str:
    text = f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">No runs in this window.</text>'
    return _svg(chart_id, title, [text])


def failure_rate_chart(daily: pl.DataFrame) -> str:
    """Lines: failure rate per UTC day, one per deployment (the busiest MAX_SERIES)."""
    chart_id, title = "chart-failure-rate", "Failure rate per day, by deployment"
    daily = daily.filter(pl.col("runs") > 0)
    if daily.is_empty():
        return _empty(chart_id, title)
    keys = ["deployment_id", "flow_name", "deployment_name"]
    top = daily.group_by(keys).agg(pl.col("runs").sum()).sort(["runs", "flow_name"], descending=[True, False]).head(MAX_SERIES)
    days: list[date] = sorted(set(daily["run_day"].to_list()))
    span = max((days[-1] - days[0]).days, 1)
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def x(d: date) -> float:
        return PAD_L + plot_w * (d - days[0]).days / span

    def y(rate: float) -> float:
        return PAD_T + plot_h * (1 - rate)

    body = []
    for pct in (0, 0.25, 0.5, 0.75, 1):
        body.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y(pct):.1f}" y2="{y(pct):.1f}"/>')
        body.append(f'<text x="{PAD_L - 6}" y="{y(pct) + 4:.1f}" text-anchor="end">{pct:.0%}</text>')
    body.append(f'<line class="axis" x1="{PAD_L}" x2="{PAD_L}" y1="{PAD_T}" y2="{H - PAD_B}"/>')
    for d, anchor in ((days[0], "start"), (days[len(days) // 2], "middle"), (days[-1], "end")):
        body.append(f'<text x="{x(d):.1f}" y="{H - PAD_B + 16}" text-anchor="{anchor}">{d.isoformat()}</text>')
    for i, row in enumerate(top.iter_rows(named=True)):
        color = PALETTE[i % len(PALETTE)]
        dep = row["deployment_id"]
        pts = daily.filter(
            (pl.col("deployment_id") == dep) if dep is not None else pl.col("deployment_id").is_null() & (pl.col("flow_name") == row["flow_name"])
        ).sort("run_day")
        coords = " ".join(f"{x(d):.1f},{y(r):.1f}" for d, r in zip(pts["run_day"], pts["failure_rate"]))
        body.append(f'<polyline class="series mark" data-series="{i}" stroke="{color}" points="{coords}"><title>{_e(_label(row))}</title></polyline>')
        for d, r, n in zip(pts["run_day"], pts["failure_rate"], pts["runs"]):
            body.append(
                f'<circle class="series" data-series="{i}" cx="{x(d):.1f}" cy="{y(r):.1f}" r="2.5" fill="{color}">'
                f"<title>{_e(_label(row))} {d}: {r:.0%} of {n}</title></circle>"
            )
    legend = "".join(
        f'<span data-series="{i}"><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{_e(_label(row))}</span>'
        for i, row in enumerate(top.iter_rows(named=True))
    )
    return _svg(chart_id, title, body) + f'<div class="legend" data-for="{chart_id}">{legend}</div>'


def _hbars(chart_id: str, title: str, rows: list[tuple[str, list[tuple[str, float, str]]]], unit: str) -> str:
    """Horizontal bars: one group per label, one bar per (name, value, tooltip)."""
    if not rows:
        return _empty(chart_id, title)
    per = max(len(bars) for _, bars in rows)
    bar_h, gap, label_w = 12, 10, 230
    height = PAD_T + len(rows) * (per * bar_h + gap) + 24
    top_value = max((v for _, bars in rows for _, v, _ in bars), default=0.0) or 1.0
    plot_w = W - label_w - PAD_R - 130
    body, yy = [], float(PAD_T)
    for label, bars in rows:
        body.append(f'<text x="{label_w - 8}" y="{yy + per * bar_h / 2 + 4:.1f}" text-anchor="end">{_e(label[:38])}</text>')
        for j, (name, value, tip) in enumerate(bars):
            width = max(plot_w * value / top_value, 1.0)
            body.append(
                f'<rect class="mark" x="{label_w}" y="{yy:.1f}" width="{width:.1f}" height="{bar_h - 2}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{_e(label)} {_e(name)}: {_e(tip)}</title></rect>'
            )
            body.append(f'<text x="{label_w + width + 4:.1f}" y="{yy + bar_h - 3:.1f}">{_e(tip)}</text>')
            yy += bar_h
        yy += gap
    body.append(f'<text x="{label_w}" y="{height - 6}">{_e(unit)}</text>')
    return _svg(chart_id, title, body, height=int(height))


def durations_chart(frame: pl.DataFrame) -> str:
    rows = []
    for row in frame.head(12).iter_rows(named=True):
        bars = [(p, float(row[f"{p}_s"] or 0.0), f"{p} {_seconds(row[f'{p}_s'])}") for p in ("p50", "p90", "p95", "p99")]
        rows.append((_label(row), bars))
    return _hbars("chart-durations", "Duration percentiles by deployment (p50, p90, p95, p99)", rows, "seconds, wall clock")


def top_failing_chart(frame: pl.DataFrame) -> str:
    rows = [
        (_label(row), [("failed", float(row["failed"]), f"{row['failed']} of {row['runs']} ({_pct(row['failure_rate'])})")])
        for row in frame.filter(pl.col("failed") > 0).head(10).iter_rows(named=True)
    ]
    return _hbars("chart-top-failing", "Top failing deployments", rows, "failed runs (FAILED or CRASHED)")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 60:
        return f"{value / 60:.1f} min"
    return f"{value:.2f} s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _cell(value: Any) -> str:
    if value is None:
        return "<td>-</td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    if isinstance(value, datetime):
        return f"<td>{value:%Y-%m-%d %H:%M}</td>"
    if isinstance(value, list):
        return f"<td>{_e(', '.join(map(str, value)))}</td>"
    return f"<td>{_e(value)}</td>"


def table_html(frame: pl.DataFrame, limit: int = 200) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in frame.head(limit).iter_rows())
    more = f'<p class="muted">{frame.height - limit} more rows not shown.</p>' if frame.height > limit else ""
    return f'<table id="report-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}'


def build_page(store: Store, window: reports.Window, title: str, frame: pl.DataFrame) -> str:
    """The whole page: the three overview charts for ``window`` plus ``frame`` as a table."""
    daily = reports.failure_rate_daily(store, window)
    durations = reports.durations(store, "deployment", window)
    failing = reports.failures(store, "deployment", window)
    return render_page(title, window, frame, daily, durations, failing)


def render_page(
    title: str,
    window: reports.Window,
    frame: pl.DataFrame,
    daily: pl.DataFrame,
    durations: pl.DataFrame,
    failing: pl.DataFrame,
) -> str:
    generated = datetime.now(timezone.utc)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>flowsync: {_e(title)}</title>
<script>{ERROR_HOOK}</script>
<style>{CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="muted">Runs from {_e(window.describe())}. Live runs only. failed = FAILED or CRASHED;
finished = COMPLETED, FAILED or CRASHED; failure rate = failed / finished; CANCELLED is counted apart.
Generated {generated:%Y-%m-%d %H:%M} UTC by flowsync {__version__}.</p>
<h2>Failure rate per day</h2>
{failure_rate_chart(daily)}
<h2>Top failing deployments</h2>
{top_failing_chart(failing)}
<h2>Duration percentiles</h2>
{durations_chart(durations)}
<h2>{_e(title)}: table</h2>
{table_html(frame)}
<script>{FINISH}</script>
</body></html>
"""
