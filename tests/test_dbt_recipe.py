"""The dbt recipe as written (fast lane: a built file, no server; dbt itself is not installed,
so what `dbt source freshness` and dbt-duckdb's attach run is run through DuckDB)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from tests.policy_db import built_db, run

DBT = Path(__file__).resolve().parent.parent / "docs" / "dbt"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_db(tmp_path_factory.mktemp("dbt") / "flowsync.duckdb", [run(1), run(2, "FAILED")])


def _source() -> Any:
    return yaml.safe_load((DBT / "sources.yml").read_text())["sources"][0]


def test_freshness_only_where_synced_at_exists_and_every_check_runs(built: Path) -> None:
    source = _source()
    assert "freshness" not in source and "loaded_at_field" not in source
    checked = []
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{built}' AS flowsync (READ_ONLY)")
        for table in source["tables"]:
            columns = {
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE database_name = 'flowsync' "
                    "AND table_name = ?",
                    [table["name"]],
                ).fetchall()
            }
            assert {c["name"] for c in table.get("columns", [])} <= columns, table["name"]
            if "freshness" in table:
                field = table["loaded_at_field"]
                # what dbt source freshness runs
                con.execute(f"SELECT max({field}) FROM flowsync.main.{table['name']}").fetchall()
                checked.append(table["name"])
            else:
                assert "synced_at" not in columns, f"{table['name']} could have a freshness check"
    assert checked == ["flows", "deployments", "flow_runs"]


def test_header_profile_and_project_agree() -> None:
    header = (DBT / "sources.yml").read_text().split("version: 2")[0]
    profiles: Any = yaml.safe_load((DBT / "profiles.yml.example").read_text())
    project: Any = yaml.safe_load((DBT / "dbt_project.yml.example").read_text())
    ((name, profile),) = profiles.items()
    attach = profile["outputs"][profile["target"]]["attach"][0]
    assert attach["read_only"] and attach["path"].endswith(".snapshots/current")
    assert re.search(rf"path: {re.escape(attach['path'])}\n", header), (
        "the header attaches the same file"
    )
    assert project["profile"] == name
    assert "models/" in header and "dbt 1.8" in header
