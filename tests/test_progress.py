"""Progress without a terminal (cron, logs): rate and ETA on every line (issue #24)."""

from __future__ import annotations

import pytest

from flowsync.cli.common import LineProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_apply_progress_lines_say_runs_per_second_and_the_time_left(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    with LineProgress(clock=clock) as progress:
        progress.phase("apply", total=1000)
        clock.now += 11
        progress.advance(220)  # 20 runs/s over 11 s: 780 left, 39 s
        clock.now += 29
        progress.advance(580)  # 800 in 40 s: 20 runs/s, 200 left
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "apply: 220/1000 runs, 20 runs/s, eta 39s",
        "apply: 800/1000 runs, 20 runs/s, eta 10s",
        "apply: 800/1000 runs, 20 runs/s, eta 10s",  # the phase's last line, on exit
    ]


def test_a_pull_phase_counts_rows_and_has_no_eta_without_a_total(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    with LineProgress(clock=clock) as progress:
        progress.phase("flow_runs")
        clock.now += 200
        progress.advance(30_000)
    assert capsys.readouterr().err.splitlines() == [
        "flow_runs: 30000 rows, 150 rows/s",
        "flow_runs: 30000 rows, 150 rows/s",
    ]


def test_a_long_wait_reads_in_minutes_and_hours(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    with LineProgress(clock=clock) as progress:
        progress.phase("apply", total=100_000)
        clock.now += 60
        progress.advance(100)  # 100 a minute: 99,900 left
    assert (
        capsys.readouterr().err.splitlines()[0] == "apply: 100/100000 runs, 2 runs/s, eta 16h 39m"
    )
