"""The health page's charts: runs and failure rate per day (or hour), and the
deployment x day heatmap of failures.

Owns: drawing the figures as inline SVG and an HTML table (no scripts, no
fetches): the stacked bars per UTC day or hour, one slot for each of the
window's (an empty one where nothing finished), with the failure rate as a line
on its own axis (right), scaled to its highest value (``rate_scale``), and the
heatmap of failed runs per deployment and day (the ``HEAT_ROWS`` most failed
deployments). Every mark has class ``mark`` and every chart class ``chart``,
which the page's closing script counts for the browser test. Must not: compute
a figure (the frames come from ``flowsync.health``), print, or write files.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import polars as pl

from flowsync import present
from flowsync.report_html.markup import empty, esc, isolated

RED, GREEN, BLUE, GREY = "#dc2626", "#16a34a", "#2563eb", "#9ca3af"
HEAT_ROWS = 12

# -- runs and failure rate per day -----------------------------------------------------


RATE_SCALES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0)


def rate_scale(peak: float | None) -> float:
    """The top of the failure rate's axis: the smallest of 1%, 2%, 5%, 10%, 20%, 25%,
    50%, 100% that holds the highest rate, so a 3% rate is not a flat line at the bottom."""
    return next((top for top in RATE_SCALES if (peak or 0) <= top), 1.0)


def _axis_percent(value: float) -> str:
    return f"{value:.0%}" if round(value * 100, 6).is_integer() else f"{value:.1%}"


def slots(first: date, last: date) -> list[date]:
    """Every UTC day from ``first`` to ``last`` (dates), or every UTC hour (datetimes),
    both included: the daily chart's slots."""
    step = timedelta(hours=1) if isinstance(first, datetime) else timedelta(days=1)
    out = []
    while first <= last:
        out.append(first)
        first += step
    return out


def daily_chart(daily: pl.DataFrame, span: tuple[date, date] | None = None) -> str:
    """Stacked bars per UTC day or hour (completed, failed) and the failure rate as a line,
    on its own axis (right) scaled to the highest rate. One slot per day or hour from
    ``span``'s first to its last (the window's; by default the frame's first and last), so a
    day or hour when nothing finished is an empty slot and the line breaks there."""
    key = "run_hour" if "run_hour" in daily.columns else "run_day"
    unit = "hour" if key == "run_hour" else "day"
    daily = daily.filter(pl.col("runs") + pl.col("cancelled") > 0).sort(key)
    if daily.is_empty():
        return empty("No finished runs in this window.")
    first, last = daily[key][0], daily[key][-1]
    buckets = slots(min(first, span[0]), max(last, span[1])) if span else slots(first, last)
    by_bucket = {row[key]: row for row in daily.iter_rows(named=True)}
    w, hgt, left, right, top, bottom = 960, 260, 48, 44, 14, 34
    plot_w, plot_h = w - left - right, hgt - top - bottom
    n = len(buckets)
    step = plot_w / n
    bar_w = max(min(step * 0.72, 64), 1.5)
    peak = max(int(daily["runs"].max() or 0), 1)  # type: ignore[arg-type]
    peak += peak % 2  # even: the middle gridline is a whole number of runs
    rate_top = rate_scale(daily["failure_rate"].max())  # type: ignore[arg-type]
    body = []
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        body.append(f'<line class="grid" x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        body.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{present.count(int(peak * frac))}</text>'
        )
        body.append(
            f'<text class="rate-axis" x="{w - right + 6}" y="{y + 4:.1f}">{_axis_percent(rate_top * frac)}</text>'
        )
    lines: list[list[str]] = [[]]  # the rate line, broken where a slot has no rate
    for i, bucket in enumerate(buckets):
        row = by_bucket.get(bucket)
        if row is None or row["failure_rate"] is None:
            lines.append([])
        if row is None:
            continue
        x = left + step * i + (step - bar_w) / 2
        ok = row["runs"] - row["failed"]
        h_ok, h_bad = plot_h * ok / peak, plot_h * row["failed"] / peak
        when = f"{bucket:%Y-%m-%d %H:00} UTC" if unit == "hour" else str(bucket)
        tip = (
            f"{when}: {present.count(row['runs'])} finished, {present.count(row['failed'])} failed "
            f"({present.percent(row['failure_rate'])}), {present.count(row['cancelled'])} cancelled"
        )
        y_ok = top + plot_h - h_ok
        body.append(
            f'<rect class="mark" x="{x:.1f}" y="{y_ok:.1f}" width="{bar_w:.1f}" height="{h_ok:.1f}" fill="#bfdbfe"><title>{esc(tip)}</title></rect>'
        )
        body.append(
            f'<rect class="mark" x="{x:.1f}" y="{y_ok - h_bad:.1f}" width="{bar_w:.1f}" height="{h_bad:.1f}" fill="{RED}"><title>{esc(tip)}</title></rect>'
        )
        if row["failure_rate"] is not None:
            y_rate = top + plot_h * (1 - row["failure_rate"] / rate_top)
            lines[-1].append(f"{x + bar_w / 2:.1f},{y_rate:.1f}")
    for points in lines:
        if len(points) > 1:
            body.append(
                f'<polyline class="mark" fill="none" stroke="#111827" stroke-width="1.8" points="{" ".join(points)}"/>'
            )
        elif points:  # a rate with no other beside it: a dot
            cx, cy = points[0].split(",")
            body.append(f'<circle class="mark" fill="#111827" r="2.5" cx="{cx}" cy="{cy}"/>')
    body.append(
        f'<line class="axis" x1="{left}" x2="{w - right}" y1="{top + plot_h}" y2="{top + plot_h}"/>'
    )
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
        return empty("No failures in this window.")
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
                # a tooltip cannot hold an isolate: its controls and overrides show escaped
                f'<td class="mark" style="background:{_heat_color(failed, peak)}" title="{esc(present.printable(tip))}"></td>'
            )
        rows.append(
            f'<tr><td class="name">{isolated(name)}</td>{"".join(tds)}<td class="num">&nbsp;{dep["failed"]}</td></tr>'
        )
    more = failing.height - shown.height
    note = (
        f'<p class="muted">{more} more deployments with failures not shown.</p>' if more > 0 else ""
    )
    return (
        f'<div class="scroll"><table class="heat chart" id="chart-heatmap"><thead><tr><th></th>{head}<th class="num">failed</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>{note}"
    )
