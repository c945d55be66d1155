"""Several files, one per server, queried together with a source column."""

from __future__ import annotations

from pathlib import Path

import pytest

import flowsync
from flowsync.errors import ConfigError
from tests.helpers import SeededServer, run_cli, scalar
from tests.support.seed import seed
from tests.support.server import Server


@pytest.fixture
def two_files(prefect: SeededServer, fresh_server: Server, tmp_path: Path) -> tuple[Path, Path]:
    seed(fresh_server.url, runs=50, flows=2, deployments_per_flow=1, seed_value=41)
    prod, staging = tmp_path / "prod.duckdb", tmp_path / "staging.duckdb"
    for url, db in ((prefect.url, prod), (fresh_server.url, staging)):
        assert run_cli("pull", "--api-url", url, "--db", str(db)).exit_code == 0
    return prod, staging


def test_sql_and_connect_over_several_files(
    prefect: SeededServer, fresh_server: Server, two_files: tuple[Path, Path]
) -> None:
    prod, staging = two_files
    live = "SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL"
    result = run_cli(
        "sql",
        "SELECT source, count(*) AS runs FROM flow_runs WHERE deleted_at IS NULL GROUP BY 1 ORDER BY 1",
        "--db",
        f"prod={prod}",
        "--db",
        f"staging={staging}",
        "--format",
        "csv",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["source,runs", f"prod,{prefect.count()}", "staging,50"]

    con = flowsync.connect({"prod": prod, "staging": staging})
    try:
        # Views are computed inside each file, then stacked: per source they equal the file's own.
        rows = dict(
            con.execute(
                "SELECT source, count(*) FROM failure_rates_by_deployment GROUP BY 1"
            ).fetchall()
        )
        assert rows == {
            "prod": scalar(prod, "SELECT count(*) FROM failure_rates_by_deployment"),
            "staging": scalar(staging, "SELECT count(*) FROM failure_rates_by_deployment"),
        }
        assert con.execute("SELECT count(DISTINCT source) FROM flows").fetchone() == (2,)
    finally:
        con.close()
    # Paths alone: the file stems name the sources.
    con = flowsync.connect([prod, staging])
    try:
        assert dict(
            con.execute(
                "SELECT source, count(*) FROM flow_runs WHERE deleted_at IS NULL GROUP BY 1"
            ).fetchall()
        ) == {"prod": scalar(prod, live), "staging": scalar(staging, live)}
    finally:
        con.close()
    # Each file still holds one server: a pull of the other server into it is refused.
    assert run_cli("pull", "--api-url", fresh_server.url, "--db", str(prod)).exit_code == 2


def test_source_names_must_be_distinct(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="used twice"):
        flowsync.connect([tmp_path / "a" / "runs.duckdb", tmp_path / "b" / "runs.duckdb"])
    bad = run_cli("sql", "SELECT 1", "--db", "x=a.duckdb", "--db", "x=b.duckdb")
    assert bad.exit_code == 2 and "used twice" in bad.stderr
