"""OpenMetrics text of the health figures, for node_exporter's textfile collector.

Owns: metric names, labels and help texts. Every metric is a gauge: the
window's figures over the report window (``flowsync_window_seconds``, which for
``--since all`` counts from the earliest run), the ``runs_*`` gauges right now,
the last pull from the live sync log. Per-deployment metrics are labelled by
flow and deployment names plus the deployment id (names change, ids do not).
No counter: a windowed count goes down as the window moves, and an
all-history total goes down when a run's state changes (FAILED retried to
COMPLETED), which Prometheus would read as a counter reset. docs/monitoring/
holds alert rules and a Grafana dashboard over these names (a test checks them). The output is valid
OpenMetrics (``# EOF`` last) and Prometheus text format 0.0.4, which the
textfile collector reads. Must not: write files (the CLI writes atomically).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from flowsync.health import Health

PREFIX = "flowsync"


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Family:
    def __init__(self, name: str, help_text: str, unit: str = "") -> None:
        self.name = f"{PREFIX}_{name}"
        self.help = help_text
        self.unit = unit
        self.samples: list[tuple[dict[str, Any], float]] = []

    def add(self, labels: dict[str, Any], value: Any) -> None:
        if value is None:
            return  # no value (nothing finished, no duration): no sample, not a zero
        self.samples.append((labels, float(value)))

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        if self.unit:
            yield f"# UNIT {self.name} {self.unit}"
        for labels, value in self.samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            yield (
                f"{self.name}{{{text}}} {_number(value)}"
                if text
                else f"{self.name} {_number(value)}"
            )


def _deployment_labels(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "flow": row.get("flow_name") or "",
        "deployment": row.get("deployment_name") or "",
        "deployment_id": row.get("deployment_id") or "",
    }


def render(health: Health) -> str:
    """The metrics of ``health`` as OpenMetrics text (ends with ``# EOF``)."""
    families = [
        runs := _Family(
            "runs",
            "Finished flow runs (COMPLETED, FAILED or CRASHED) in the report window, per deployment.",
        ),
        failed := _Family(
            "failed_runs",
            "Failed flow runs (FAILED or CRASHED) in the report window, per deployment.",
        ),
        rate := _Family(
            "failure_rate",
            "Failed / finished flow runs in the report window, per deployment (0..1).",
        ),
        p95 := _Family(
            "duration_p95_seconds",
            "95th percentile of finished runs' wall-clock duration in the window.",
            "seconds",
        ),
        late := _Family(
            "lateness_p95_seconds",
            "95th percentile of start time minus expected start in the window.",
            "seconds",
        ),
        unresolved := _Family(
            "unresolved_failures",
            "Failed runs since the last success of a deployment whose latest finished run failed.",
        ),
        since := _Family(
            "failing_since_timestamp_seconds",
            "Expected start of the first failed run since the deployment's last success.",
            "seconds",
        ),
        total_rate := _Family(
            "all_failure_rate", "Failed / finished flow runs in the report window, all runs (0..1)."
        ),
        total_runs := _Family("all_runs", "Finished flow runs in the report window, all runs."),
        total_failed := _Family(
            "all_failed_runs", "Failed flow runs in the report window, all runs."
        ),
        pulled := _Family(
            "last_pull_success_timestamp_seconds",
            "When the latest successful flowsync pull finished.",
            "seconds",
        ),
        span := _Family(
            "window_seconds",
            "Length of the report window the other figures cover (all history: since the earliest run).",
            "seconds",
        ),
        running := _Family(
            "runs_running", "Flow runs RUNNING now (as of the last pull), per deployment."
        ),
        waiting := _Family(
            "runs_waiting",
            "Flow runs SCHEDULED or PENDING whose expected start has passed, per deployment.",
        ),
        late_now := _Family(
            "runs_late",
            "Waiting flow runs expected to start more than --late-after seconds ago, per deployment.",
        ),
    ]
    for row in health.deployments.iter_rows(named=True):
        if row.get("deployment_id") is None:
            continue  # runs without a deployment: in the all_* totals
        labels = _deployment_labels(row)
        runs.add(labels, row["runs"])
        failed.add(labels, row["failed"])
        rate.add(labels, row["failure_rate"])
    for row in health.durations.iter_rows(named=True):
        if row.get("deployment_id") is not None:
            p95.add(_deployment_labels(row), row["p95_s"])
    for row in health.lateness.iter_rows(named=True):
        if row.get("deployment_id") is not None:
            late.add(_deployment_labels(row), row["p95_lateness_s"])
    for row in health.unresolved.iter_rows(named=True):
        labels = _deployment_labels(row)
        unresolved.add(labels, row["failures_since_success"])
        since.add(labels, row["failing_since"].timestamp() if row["failing_since"] else None)
    head = health.headline
    total_runs.add({}, head.get("runs") or 0)
    total_failed.add({}, head.get("failed") or 0)
    total_rate.add({}, head.get("failure_rate"))
    pulled.add({}, health.last_pull.timestamp() if health.last_pull else None)
    span.add({}, health.window_seconds)
    for row in health.now.iter_rows(named=True):
        labels = _deployment_labels(row)
        running.add(labels, row["running"])
        waiting.add(labels, row["waiting_now"])
        late_now.add(labels, row["late_now"])
    lines = [line for family in families for line in family.lines()]
    return "\n".join([*lines, "# EOF"]) + "\n"
