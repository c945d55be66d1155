"""The health page itself: its skeleton, style and scripts, the headline, and the
sections in order.

Owns: the page that opens offline (no CDN, no fetches; the only script is
inline and small: it records JS errors and marks the page as rendered, which
the browser test reads) and reads on a phone and on a wide screen (``CSS``);
the headline cards against the previous window; the note on the window, scope
and last pull; which days (or hours) the chart and the heatmap span; the
sections in order (``render_health``), and a report's table after them
(``build_page``). Must
not: print, write files (the CLI does), or compute a figure (they all come from
``flowsync.health`` and ``flowsync.reports``).
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

import polars as pl

from flowsync import __version__, health, present, reports
from flowsync.report_html.charts import daily_chart, heatmap
from flowsync.report_html.markup import esc, section
from flowsync.report_html.tables import (
    lateness_table,
    signatures_table,
    slowest_table,
    table_html,
    unresolved_table,
)
from flowsync.store import Store

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


# -- headline ---------------------------------------------------------------------


def _card(label: str, value: str, change: str = "", bad: bool | None = None) -> str:
    cls = "" if bad is None else (" bad" if bad else " good")
    sub = f'<span class="{cls.strip()}">{esc(change)}</span>' if change else "<span>&nbsp;</span>"
    return f'<div class="card"><span>{esc(label)}</span><b>{esc(value)}</b>{sub}</div>'


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


# -- the page -------------------------------------------------------------------------------


def _first_day(window: reports.Window, daily: pl.DataFrame) -> date:
    """The window's first UTC day; for all history, the first day with a finished run."""
    if window.since is not None:
        return window.since.astimezone(timezone.utc).date()
    first = daily["run_day"].min()
    assert isinstance(first, date)
    return first


def _chart_span(h: health.Health) -> tuple[date, date] | None:
    """The daily chart's first and last slot: every UTC day (or hour) of the window."""
    if h.daily.is_empty():
        return None
    last = h.window.last_instant
    if h.bucket == "hour":
        assert h.window.since is not None  # only a window with a start is charted by hour
        first = h.window.since.astimezone(timezone.utc)
        return (
            first.replace(minute=0, second=0, microsecond=0),
            last.replace(minute=0, second=0, microsecond=0),
        )
    return _first_day(h.window, h.daily), last.date()


def _days(h: health.Health) -> list[date]:
    """The heatmap's days: the window's UTC days, at most its last ``health.HEAT_DAYS``."""
    if h.daily.is_empty():
        return []
    heat = h.heat_window
    assert heat.since is not None  # the heatmap's window always has a start
    first = max(_first_day(h.window, h.daily), heat.since.date())
    last = heat.last_instant.date()
    return [date.fromordinal(o) for o in range(first.toordinal(), last.toordinal() + 1)]


def _day_span(h: health.Health, days: list[date]) -> str:
    if not days:
        return ""
    cut = _first_day(h.window, h.daily) < days[0]
    shown = f", the last {health.HEAT_DAYS} days of the window" if cut else ""
    return f"Days {days[0]:%b %d} to {days[-1]:%b %d}{shown}."


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
        section(
            f"Runs and failure rate per {h.bucket}",
            daily_chart(h.daily, _chart_span(h)),
            f"UTC {h.bucket}s, by expected start"
            + (
                f" (windows up to {present.duration(health.HOURLY_UP_TO.total_seconds())} are charted by hour)."
                if h.bucket == "hour"
                else "."
            ),
            "daily",
        ),
        section(
            "Failures by deployment and day",
            heatmap(h.heatmap, _days(h), h.heat_rows),
            esc(_day_span(h, _days(h)))
            + " Failed runs (FAILED or CRASHED) per UTC day; darker is more; "
            "the failed column is each row's total over these days. "
            "Hover a cell for its numbers.",
            "heatmap",
        ),
        section(
            "Top error signatures",
            signatures_table(h.signatures, ui=h.ui),
            "Failed runs grouped by their message with ids, numbers, paths, times and quoted values masked.",
            "errors",
        ),
        section(
            "Unresolved failures",
            unresolved_table(h.unresolved, generated, ui=h.ui),
            "Deployments whose latest finished run failed (all history, not only this window).",
            "unresolved-section",
        ),
        section(
            "Slowest deployments",
            slowest_table(h.durations),
            "Wall-clock duration of finished runs, slowest p95 first; the trend is the p95 change against the previous window.",
            "slow",
        ),
        section(
            "Lateness",
            lateness_table(h.lateness, h.late_after),
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
<p class="muted" id="window-note">Runs expected {esc(window.describe())}. {esc(scope)} {esc(compare)} {esc(pulled)}<br>
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
    return render_health(figures, section(title, table_html(frame, report), "", "report"))
