"""The health page: one self-contained HTML file someone opens first thing in the morning.

Turns the health figures (``flowsync.health``) into a page that opens offline
and reads on a phone and on a wide screen. Sections: headline against the
previous window, runs and failure rate per day (per hour for windows up to 48 h;
the rate on its own axis, scaled to its highest value), a deployment x day
heatmap of failures, top error signatures, unresolved failures, slowest
deployments, lateness, and (for ``report X --html``) that report's table. Runs
link to the Prefect UI where the API URL tells it. Values read through
``flowsync.present``. One module per part: ``page`` (skeleton, style, scripts,
headline, the sections in order), ``charts`` (the daily chart and the heatmap),
``tables`` (the tables), ``markup`` (escaping and the pieces they share). Must
not: print, write files (the CLI does), or compute a figure (they all come from
``flowsync.reports``).
"""

from flowsync.report_html.charts import (
    BLUE,
    GREEN,
    GREY,
    HEAT_ROWS,
    RATE_SCALES,
    RED,
    daily_chart,
    heatmap,
    rate_scale,
)
from flowsync.report_html.page import CSS, ERROR_HOOK, FINISH, build_page, render_health
from flowsync.report_html.tables import (
    lateness_table,
    signatures_table,
    slowest_table,
    table_html,
    unresolved_table,
)

__all__ = [
    "BLUE",
    "CSS",
    "ERROR_HOOK",
    "FINISH",
    "GREEN",
    "GREY",
    "HEAT_ROWS",
    "RATE_SCALES",
    "RED",
    "build_page",
    "daily_chart",
    "heatmap",
    "lateness_table",
    "rate_scale",
    "render_health",
    "signatures_table",
    "slowest_table",
    "table_html",
    "unresolved_table",
]
