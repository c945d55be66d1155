"""--flow, --deployment, --tag, --state on the reports (fast lane: a built file, no server):
each keeps exactly the runs it names, and a name the file does not hold is an error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_cli
from tests.policy_db import built_db, run


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = [
        # prod: 10 runs tagged etl, 3 failed; dev: 6 runs tagged ml, 1 failed
        *(
            run(n, "FAILED" if n <= 3 else "COMPLETED", n / 2, "prod", ["etl"])
            for n in range(1, 11)
        ),
        *(
            run(20 + n, "FAILED" if n == 1 else "COMPLETED", n / 2, "dev", ["ml"])
            for n in range(1, 7)
        ),
    ]
    return built_db(tmp_path_factory.mktemp("filters") / "runs.duckdb", runs)


def report(db: Path, *args: str) -> list[dict[str, Any]]:
    result = run_cli("report", *args, "--since", "30d", "-f", "json", "--db", str(db))
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], {"prod": (10, 3), "dev": (6, 1)}),
        (["--deployment", "etl/prod"], {"prod": (10, 3)}),
        (["--deployment", "dev"], {"dev": (6, 1)}),
        (["--flow", "etl"], {"prod": (10, 3), "dev": (6, 1)}),
        (["--tag", "ml"], {"dev": (6, 1)}),
        (["--tag", "ml", "--tag", "etl"], {"prod": (10, 3), "dev": (6, 1)}),
        (["--state", "failed"], {"prod": (3, 3), "dev": (1, 1)}),
        (["--deployment", "prod", "--state", "COMPLETED"], {"prod": (7, 0)}),
    ],
)
def test_failures_count_only_the_selected_runs(
    built: Path, args: list[str], expected: dict[str, tuple[int, int]]
) -> None:
    rows = report(built, "failures", *args)
    assert {r["deployment_name"]: (r["runs"], r["failed"]) for r in rows} == expected


def test_every_report_takes_the_filters(built: Path) -> None:
    assert {r["deployment_name"] for r in report(built, "durations", "--tag", "ml")} == {"dev"}
    assert {r["deployment_name"] for r in report(built, "late", "--deployment", "dev")} == {"dev"}
    errors = report(built, "errors", "--deployment", "dev")
    assert sum(r["runs"] for r in errors) == 1
    assert {r["deployment_name"] for r in report(built, "flaky", "--deployment", "prod")} <= {
        "prod"
    }
    unresolved = run_cli("report", "unresolved", "--flow", "etl", "-f", "json", "--db", str(built))
    assert unresolved.exit_code == 0, unresolved.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["failures", "--since", "30d", "--deployment", "nope"],
            "--deployment 'nope': no such name",
        ),
        (["failures", "--since", "30d", "--flow", "nope"], "--flow 'nope': no such name"),
        (["failures", "--since", "30d", "--state", "BROKEN"], "is not a Prefect state type"),
        # a tag no run carries (a typo) was an empty report, exit 0
        (["failures", "--tag", "nosuch"], "--tag 'nosuch': no run in the file carries this tag"),
        (["durations", "--tag", "ml", "--tag", ""], "--tag '': no run in the file carries"),
        (["flaky", "--tag", "etl"], "No such option: --tag"),
        (["failures", "--by", ""], "--by '' is not a grouping of this report"),  # was the default
    ],
)
def test_bad_filters_are_one_clear_line(built: Path, args: list[str], needle: str) -> None:
    result = run_cli("report", *args, "--db", str(built))
    assert result.exit_code == 2 and needle in result.stderr, result.output
