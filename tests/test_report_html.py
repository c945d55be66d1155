"""The --html page renders its charts in a real headless browser, offline, with no JS errors."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from harness.built import BuiltHistory
from tests.helpers import copy_db, run_cli

CHART_IDS = ("chart-daily", "chart-heatmap", "slowest")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "chromium is not installed: the HTML report test needs a real browser. "
        "Install it with `apt-get update && apt-get install -y chromium`."
    )


def browse(page: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={tmp_path / 'chrome-profile'}",
            "--enable-logging=stderr",
            "--v=0",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def page(built: BuiltHistory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("html")
    db = copy_db(built.path, tmp)
    out = tmp / "report.html"
    result = run_cli("report", "failures", "--since", "60d", "--html", str(out), "--db", str(db))
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "wrote" in result.stderr
    return out


def test_page_is_self_contained(page: Path) -> None:
    text = page.read_text()
    # Nothing the page loads comes from the network; links (<a href>) to the Prefect UI
    # are for the reader to follow.
    anchors = re.sub(r"""<a href="[^"]*">""", "<a>", text)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", anchors), "no network resources"
    assert "@import" not in text and "fetch(" not in text
    for chart in CHART_IDS:
        assert f'id="{chart}"' in text


def test_page_renders_in_chromium_without_errors(page: Path, tmp_path: Path) -> None:
    proc = browse(page, tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    html_tag = re.search(r"<html[^>]*>", dom)
    assert html_tag, dom[:500]
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', html_tag.group(0)))
    assert attrs.get("data-rendered") == "yes", "the inline script ran to the end"
    assert attrs.get("data-js-errors") == "", attrs
    assert attrs.get("data-charts") == "3"
    assert int(attrs.get("data-marks", "0")) >= 5
    for chart in CHART_IDS:
        assert f'id="{chart}"' in dom
    assert "<polyline" in dom and "<rect" in dom and 'id="report-table"' in dom
    for section in ('id="headline"', 'id="signatures"', 'id="unresolved', 'id="lateness"'):
        assert section in dom
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console


def test_screenshot_is_drawn(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    proc = browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1000,1400")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 20_000  # a blank page is a few KB


def test_every_report_writes_a_page(page: Path, tmp_path: Path) -> None:
    db = page.parent / "runs.duckdb"
    for report in ("durations", "late", "flaky"):
        out = tmp_path / f"{report}.html"
        result = run_cli("report", report, "--html", str(out), "--db", str(db))
        assert result.exit_code == 0, result.output
        assert 'id="report-table"' in out.read_text()


def test_health_page_and_history_wording(page: Path, tmp_path: Path) -> None:
    db = page.parent / "runs.duckdb"
    live, history = tmp_path / "live.html", tmp_path / "history.html"
    assert (
        run_cli(
            "report", "health", "--since", "60d", "--html", str(live), "--db", str(db)
        ).exit_code
        == 0
    )
    assert (
        run_cli(
            "report",
            "health",
            "--since",
            "60d",
            "--include-deleted",
            "--html",
            str(history),
            "--db",
            str(db),
        ).exit_code
        == 0
    )
    assert "Live runs only" in live.read_text() and "Live runs only" not in history.read_text()
    assert "Including runs deleted on the server" in history.read_text()
    text = live.read_text()
    assert (
        "this flow always fails" in text
    )  # the real failure's signature is listed, with its message
    visible = re.sub(r"<[^>]+>", " ", text.split("<main>", 1)[1])
    assert not re.search(r"\b0\.\d{4}", visible), "no raw 4-decimal rates"


def test_the_error_hook_catches_a_broken_script(page: Path, tmp_path: Path) -> None:
    """The check above would see a failing script: break one on purpose."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        page.read_text().replace("<h2>", "<script>notDefinedAnywhere();</script><h2>", 1)
    )
    dom = browse(broken, tmp_path, "--dump-dom").stdout
    assert "notDefinedAnywhere" in re.search(r"<html[^>]*>", dom).group(0)  # type: ignore[union-attr]


RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: reverses what follows until its paragraph ends


def test_outside_text_is_isolated_in_its_cell(tmp_path: Path) -> None:
    """A run's message, a flow's name and a run's name are each in their own bidi isolate
    (``<bdi>``): an override in one cannot reverse the rest of its cell or its row."""
    from flowsync.store import Store
    from tests.policy_db import built_db, run

    db = built_db(tmp_path / "runs.duckdb", [run(n, "FAILED", n / 10) for n in range(1, 4)])
    with Store.writer(db) as store:
        store.execute(
            "UPDATE flow_runs SET state_message = ?, name = ?",
            [f"boom {RLO}evil tail \x1b[31mred", f"run{RLO}x"],
        )
        store.execute("UPDATE flows SET name = ?", [f"etl{RLO}"])
    for report in ("runs", "failures"):
        out = tmp_path / f"{report}.html"
        result = run_cli("report", report, "--since", "30d", "--html", str(out), "--db", str(db))
        assert result.exit_code == 0, result.output
        text = out.read_text()
        assert text.count(RLO) >= 3, "the page shows the text as it is"
        assert "\x1b" not in text and "\\x1b[31m" in text, "a terminal escape shown escaped"
        outside = re.sub(r"<bdi>[^<]*</bdi>", "", text)
        assert RLO not in outside, outside[max(outside.find(RLO) - 300, 0) : outside.find(RLO) + 50]


@pytest.mark.parametrize(("most", "labels"), [(1, [0, 1, 2]), (3, [0, 2, 4]), (6, [0, 3, 6])])
def test_the_charts_run_axis_labels_whole_numbers_where_its_lines_are(
    most: int, labels: list[int]
) -> None:
    """The middle gridline sits at half the top: an odd busiest day would put it at 0.5 or
    1.5 runs, labelled 0 or 2."""
    from datetime import date

    import polars as pl

    from flowsync.report_html.charts import daily_chart

    daily = pl.DataFrame(
        {
            "run_day": [date(2026, 12, 1), date(2026, 12, 2)],
            "runs": [most, 1],
            "failed": [0, 1],
            "cancelled": [0, 0],
            "failure_rate": [0.0, 1.0],
        }
    )
    svg = daily_chart(daily)
    assert [int(n) for n in re.findall(r'text-anchor="end">(\d+)</text>', svg)] == labels


def test_the_lateness_tables_late_header_names_the_late_after_it_counts(tmp_path: Path) -> None:
    """`report health --late-after 300 --html`: the lateness column counts runs started more
    than 300 s late, and its header says so (it said '> 60s' whatever the option)."""
    from flowsync.store import Store
    from tests.policy_db import built_db, run

    db = built_db(tmp_path / "runs.duckdb", [run(n, "COMPLETED", n / 10) for n in range(1, 4)])
    with Store.writer(db) as store:  # each run started 2 minutes late: late after 60 s, not 300 s
        store.execute("UPDATE flow_runs SET start_time = expected_start_time + INTERVAL 2 MINUTE")
    page = tmp_path / "health.html"
    result = run_cli(
        "report",
        "health",
        "--since",
        "7d",
        "--late-after",
        "300",
        "--html",
        str(page),
        "--db",
        str(db),
    )
    assert result.exit_code == 0, result.output
    table = re.search(r'<table id="lateness">.*?</table>', page.read_text()).group(0)  # type: ignore[union-attr]
    late_cell = re.findall(r'<td class="num"><bdi>([^<]*)</bdi></td>', table)[3]
    assert late_cell == "0", "3 runs 120 s late, none more than 300 s"
    assert "late (&gt; 300s)" in table, table


def test_the_daily_chart_keeps_days_without_runs_in_their_place() -> None:
    """Runs on Dec 1, 2 and 7 only: the chart has a slot for each day, so the four days when
    nothing ran show as a gap, not three adjacent bars that read as Dec 1 to 3."""
    from datetime import date

    import polars as pl

    from flowsync.report_html.charts import daily_chart

    daily = pl.DataFrame(
        {
            "run_day": [date(2026, 12, 1), date(2026, 12, 2), date(2026, 12, 7)],
            "runs": [4, 4, 4],
            "failed": [0, 1, 4],
            "cancelled": [0, 0, 0],
            "failure_rate": [0.0, 0.25, 1.0],
        }
    )
    svg = daily_chart(daily)
    xs = [float(x) for x in re.findall(r'<rect class="mark" x="([\d.]+)"', svg)[::2]]
    gaps = [b - a for a, b in itertools.pairwise(xs)]
    assert gaps[1] == pytest.approx(5 * gaps[0], abs=0.2), f"Dec 2 to Dec 7 drawn as one day: {xs}"


def test_the_health_pages_chart_spans_the_whole_window(tmp_path: Path) -> None:
    """Runs 5 and 3 days ago in a 7-day window: 8 day slots (the first and last days
    partial), the bars in the slots of their days, the days before and after them empty."""
    from tests.policy_db import NOW, built_db, run

    db = built_db(tmp_path / "runs.duckdb", [run(1, "COMPLETED", 5), run(2, "FAILED", 3)])
    page = tmp_path / "health.html"
    before = datetime.now(timezone.utc)
    result = run_cli("report", "health", "--since", "7d", "--html", str(page), "--db", str(db))
    after = datetime.now(timezone.utc)
    assert result.exit_code == 0, result.output
    svg = re.search(r'<svg class="chart" id="chart-daily".*?</svg>', page.read_text()).group(0)  # type: ignore[union-attr]
    left, plot_w = 48, 960 - 48 - 44
    step = plot_w / 8
    xs = [float(x) for x in re.findall(r'<rect class="mark" x="([\d.]+)"', svg)[::2]]
    slots = [int((x - left) // step) for x in xs]
    # The runs' days are of the suite's NOW, the window's of the command's clock: a midnight
    # between the two (a suite started before it) moves the runs one slot left, not the chart.
    expected = [
        [((NOW - timedelta(days=d)).date() - (t - timedelta(days=7)).date()).days for d in (5, 3)]
        for t in (before, after)
    ]
    assert slots in expected, (xs, step, expected)


def test_the_heatmaps_failed_total_is_of_the_days_it_shows(tmp_path: Path) -> None:
    """--since 120d: the heatmap shows the last 93 days, and each row's 'failed' total counts
    those days (5 failures 100 days ago counted in the total but in no cell); the note says
    which days."""
    from tests.policy_db import built_db, run

    runs = [run(n, "FAILED", 100) for n in range(1, 6)] + [run(9, "FAILED", 1)]
    db = built_db(tmp_path / "runs.duckdb", runs)
    page = tmp_path / "health.html"
    result = run_cli("report", "health", "--since", "120d", "--html", str(page), "--db", str(db))
    assert result.exit_code == 0, result.output
    text = page.read_text()
    heat = re.search(r'id="chart-heatmap".*?</table>', text).group(0)  # type: ignore[union-attr]
    shown = sum(int(n) for n in re.findall(r'title="[^"]*: (\d+) of \d+ failed"', heat))
    totals = [int(n) for n in re.findall(r"&nbsp;(\d+)</td>", heat)]
    assert totals == [shown] == [1], (totals, shown)
    assert "the last 93 days of the window" in text
