"""report health: the headline, the OpenMetrics file and the readable terminal tables,
each figure against the server's own counts (POST /flow_runs/count), on a built file."""

from __future__ import annotations

import io
import json
import re
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as prometheus_families
from rich.console import Console

from flowsync import present, reports
from flowsync.cli import render
from flowsync.store import Store
from harness.built import BuiltHistory
from tests.helpers import FAILED, FINISHED, copy_db, run_cli, scalar, server_count

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def pulled(built: BuiltHistory) -> Path:
    return built.path


def test_headline_json_matches_server(built: BuiltHistory, pulled: Path) -> None:
    result = run_cli("report", "health", "--since", "20d", "--format", "json", "--db", str(pulled))
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    until = datetime.fromisoformat(row["until"])
    window = reports.Window(until - timedelta(days=20), until)
    previous = reports.Window(window.previous_start, window.start)
    assert row["runs"] == server_count(built.count, FINISHED, window)
    assert row["failed"] == server_count(built.count, FAILED, window)
    assert row["prev_runs"] == server_count(built.count, FINISHED, previous)
    assert row["prev_failed"] == server_count(built.count, FAILED, previous)
    assert row["failure_rate"] == pytest.approx(row["failed"] / row["runs"])
    assert row["failure_rate_change"] == pytest.approx(
        row["failure_rate"] - row["prev_failed"] / row["prev_runs"]
    )
    with Store.reader(pulled, live=True) as store:
        assert row["unresolved_deployments"] == reports.unresolved(store).height
        assert row["signatures"] == reports.errors(store, window).height


def test_a_window_with_no_run_counts_zero_not_null(built: BuiltHistory, pulled: Path) -> None:
    """A window no run falls in: its counts are 0, as the server's count and OpenMetrics say
    (the JSON had null beside `"signatures": 0`, the table a dash); a rate or a duration
    of no run stays empty."""
    from flowsync import health

    window = reports.Window(
        datetime(2001, 1, 1, tzinfo=timezone.utc), datetime(2001, 1, 2, tzinfo=timezone.utc)
    )
    assert server_count(built.count, FINISHED, window) == 0
    with Store.reader(pulled, live=True) as store:
        row = health.collect(store, window).headline
    counts = ("runs", "failed", "cancelled", "prev_runs", "started", "late_runs", "runs_change")
    assert {k: row[k] for k in counts} == dict.fromkeys(counts, 0)
    assert row["failure_rate"] is None and row["p50_s"] is None and row["max_lateness_s"] is None


def test_openmetrics_file_parses_and_matches_server(
    built: BuiltHistory, pulled: Path, tmp_path: Path
) -> None:
    out = tmp_path / "textfile" / "flowsync.prom"
    out.parent.mkdir()
    result = run_cli(
        "report",
        "health",
        "--since",
        "20d",
        "--format",
        "openmetrics",
        "--output",
        str(out),
        "--db",
        str(pulled),
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    text = out.read_text()
    assert text.endswith("# EOF\n")
    assert [p.name for p in out.parent.iterdir()] == ["flowsync.prom"], (
        "no temporary file left behind"
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o644, "readable by node_exporter's user"
    families = {f.name: f for f in openmetrics_families(text)}
    assert {f.name for f in prometheus_families(text)} >= {
        "flowsync_runs",
        "flowsync_failure_rate",
    }  # textfile collector
    span = families["flowsync_window_seconds"].samples[0].value
    assert span == pytest.approx(20 * 86400, abs=1)
    until = datetime.now(timezone.utc)
    window = reports.Window(until - timedelta(days=20), until)
    checked = 0
    for sample in families["flowsync_runs"].samples:
        dep = {"deployments": {"id": {"any_": [sample.labels["deployment_id"]]}}}
        assert sample.value == server_count(built.count, FINISHED, window, **dep), sample
        checked += 1
    with_runs = [
        d
        for d in built.deployments.values()
        if server_count(built.count, FINISHED, window, deployments={"id": {"any_": [d]}})
    ]
    assert (
        checked == len(with_runs) > 0
    )  # every deployment with finished runs in the window has a sample
    for sample in families["flowsync_failed_runs"].samples:
        dep = {"deployments": {"id": {"any_": [sample.labels["deployment_id"]]}}}
        assert sample.value == server_count(built.count, FAILED, window, **dep), sample
    names = {
        f"{s.labels['flow']}/{s.labels['deployment']}" for s in families["flowsync_runs"].samples
    }
    assert names <= set(built.deployments)
    total = families["flowsync_all_failed_runs"].samples[0].value
    assert total == server_count(built.count, FAILED, window)
    with Store.reader(pulled, live=True) as store:
        unresolved = reports.unresolved(store)
        last = reports.last_pull(store)
    got = {
        s.labels["deployment_id"]: s.value for s in families["flowsync_unresolved_failures"].samples
    }
    assert got == {
        r["deployment_id"]: r["failures_since_success"] for r in unresolved.iter_rows(named=True)
    }
    assert last is not None
    assert families["flowsync_last_pull_success_timestamp_seconds"].samples[
        0
    ].value == pytest.approx(last.timestamp())
    assert families["flowsync_duration_p95_seconds"].unit == "seconds"


def test_openmetrics_to_stdout_and_bad_format(pulled: Path) -> None:
    result = run_cli("report", "health", "--format", "openmetrics", "--db", str(pulled))
    assert result.exit_code == 0 and result.stdout.endswith("# EOF\n")
    bad = run_cli("report", "failures", "--format", "openmetrics", "--db", str(pulled))
    assert bad.exit_code == 2 and "--format 'openmetrics' is not an output format" in bad.stderr


def _rendered(frame: Any, report: str, width: int, ids: bool = False) -> str:
    console = Console(width=width, file=io.StringIO(), no_color=True)
    console.print(render.readable_table(frame, report, ids=ids, width=width, title="t").table)
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("report", ["failures", "durations", "late", "flaky"])
def test_terminal_tables_fit_100_columns_with_whole_names(
    built: BuiltHistory, pulled: Path, report: str
) -> None:
    with Store.reader(pulled, live=True) as store:
        window = reports.parse_since("60d")
        frame = {
            "failures": lambda: reports.failures(store, "deployment", window),
            "durations": lambda: reports.durations(store, "deployment", window),
            "late": lambda: reports.late(store, "deployment", window),
            "flaky": lambda: reports.flaky(store, window),
        }[report]()
    text = _rendered(frame, report, 100)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "…" not in text, "names are never cut"
    assert not UUID_RE.search(text), "no ids unless asked"
    for row in frame.filter(frame["deployment_id"].is_not_null()).iter_rows(named=True):
        assert f"{row['flow_name']}/{row['deployment_name']}" in text
    with_ids = _rendered(frame, report, 200, ids=True)
    assert UUID_RE.search(with_ids)


def test_terminal_values_are_readable(pulled: Path) -> None:
    with Store.reader(pulled, live=True) as store:
        frame = reports.failures(store, "deployment", reports.parse_since("20d"))
    text = _rendered(frame, "failures", 100)
    row = frame.row(0, named=True)
    assert present.percent(row["failure_rate"]) in text and "%" in text
    assert re.search(r"[▲▼=] [+-]\d+\.\d pp", text)
    assert "0.2286" not in text and not re.search(r"\d\.\d{4}", text)
    # the machine formats keep raw values and ids
    csv = run_cli(
        "report", "failures", "--since", "20d", "--format", "csv", "--db", str(pulled)
    ).stdout
    assert "deployment_id" in csv.splitlines()[0] and UUID_RE.search(csv)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.42, "0.4s"),
        (9.4, "9.4s"),
        (42.4, "42s"),
        (92, "1m 32s"),
        (7500, "2h 05m"),
        (3 * 86400 + 4 * 3600, "3d 04h"),
        (None, "–"),
        (-75, "-1m 15s"),
    ],
)
def test_human_durations(seconds: float | None, text: str) -> None:
    assert present.duration(seconds) == text


def test_changes_and_rates_read_with_arrows() -> None:
    assert present.percent(0.22857) == "22.9%"
    assert present.rate_change(-0.02273) == "▼ -2.3 pp"
    assert present.rate_change(0.0) == "= +0.0 pp"
    assert present.count_change(5) == "▲ +5"
    assert present.duration_change(65) == "▲ +1m 05s"


def test_last_pull_is_the_latest_ok_pull(pulled: Path) -> None:
    with Store.reader(pulled, live=True) as store:
        assert reports.last_pull(store) == scalar(
            pulled,
            "SELECT max(finished_at) FROM sync_runs WHERE status = 'ok' AND mode IN ('full', 'incremental')",
        )


def test_a_long_name_folds_and_the_figures_stay_and_what_is_dropped_is_named(
    built: BuiltHistory,
) -> None:
    """One 300-character flow name showed the name column alone, every figure dropped
    without a word. It folds onto more lines (never cut); the figures stay; at a narrow
    width the columns dropped are named."""
    import polars as pl

    with Store.reader(built.path, live=True) as store:
        frame = reports.failures(store, "flow", reports.parse_since("60d"))
    long = "Q" * 300
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(long)).otherwise(pl.col("flow_name"))
        .alias("flow_name")
    )  # fmt: skip
    text = _rendered(frame, "failures", 100)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "failure rate" in text and "runs" in text
    assert "".join(re.findall(r"Q+", text)) == long  # folded, every character there
    fitted = render.readable_table(frame, "failures", ids=False, width=60, title=None)
    assert fitted.hidden_columns and "failure rate" not in fitted.hidden_columns


def test_a_deployment_deleted_on_the_server_leaves_the_on_call_backlog(
    pulled: Path, tmp_path: Path
) -> None:
    """Prefect keeps a deleted deployment's finished runs (live, with its id): its failures can
    never be followed by a success, so counted as unresolved they would page forever
    (``FlowsyncDeploymentBroken``). Once the pull marks the deployment deleted it leaves
    ``unresolved_failures``, the report, the headline and the OpenMetrics samples; its runs
    stay in every other figure."""
    db = copy_db(pulled, tmp_path)
    with Store.reader(db, live=True) as store:
        before = reports.unresolved(store)
    gone = before["deployment_id"][0]
    runs = scalar(db, f"SELECT count(*) FROM flow_runs WHERE deployment_id = '{gone}'")
    con = duckdb.connect(str(db))
    con.execute("UPDATE deployments SET deleted_at = now() WHERE id = ?", [gone])
    con.close()
    with Store.reader(db, live=True) as store:
        after = reports.unresolved(store)
    assert set(after["deployment_id"]) == set(before["deployment_id"]) - {gone}
    shown = run_cli("report", "unresolved", "--format", "json", "--live", "--db", str(db))
    assert shown.exit_code == 0, shown.output
    assert gone not in {r["deployment_id"] for r in json.loads(shown.stdout)}
    out = run_cli("report", "health", "--format", "openmetrics", "--live", "--db", str(db))
    assert out.exit_code == 0, out.output
    families = {f.name: f for f in openmetrics_families(out.stdout)}
    unresolved = {
        s.labels["deployment_id"] for s in families["flowsync_unresolved_failures"].samples
    }
    assert unresolved == set(after["deployment_id"])
    headline = run_cli("report", "health", "--format", "json", "--live", "--db", str(db))
    assert json.loads(headline.stdout)[0]["unresolved_deployments"] == after.height
    # its runs are still the file's and the server's
    assert scalar(db, f"SELECT count(*) FROM flow_runs WHERE deployment_id = '{gone}'") == runs
