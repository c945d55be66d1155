"""The recipes in docs/ecosystem.md and docs/dbt run against a pulled DuckDB file.

The code blocks are read out of the docs and run as written (only the file
path is pointed at the test's DB), so the docs cannot drift from the code.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import nbformat
import pytest
import yaml
from nbclient import NotebookClient

import flowsync
from flowsync.errors import StoreError
from harness.built import BuiltHistory
from tests.helpers import copy_db, query, scalar

DOCS = Path(__file__).resolve().parent.parent / "docs"


def block(heading: str, lang: str) -> str:
    """The first ```lang code block after ``heading`` in docs/ecosystem.md."""
    text = (DOCS / "ecosystem.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    match = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert match, f"no ```{lang} block under {heading}"
    return match.group(1)


@pytest.fixture(scope="module")
def pulled(built: BuiltHistory) -> Path:
    return built.path


@pytest.fixture
def workdir(pulled: Path, tmp_path: Path) -> Path:
    """A directory with ./flowsync.duckdb, the name the recipes use."""
    copy_db(pulled, tmp_path, "flowsync.duckdb")
    return tmp_path


def relations(db: Path) -> dict[str, set[str]]:
    rows = query(
        db,
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main'",
    )
    out: dict[str, set[str]] = {}
    for table, column in rows:
        out.setdefault(table, set()).add(column)
    return out


def test_dbt_sources_name_only_real_tables_and_columns(pulled: Path) -> None:
    spec: Any = yaml.safe_load((DOCS / "dbt" / "sources.yml").read_text())
    source = spec["sources"][0]
    assert (source["name"], source["database"], source["schema"]) == (
        "flowsync",
        "flowsync",
        "main",
    )
    have = relations(pulled)
    for table in source["tables"]:  # freshness only where the column is (test_dbt_recipe.py)
        if "loaded_at_field" in table:
            assert table["loaded_at_field"] in have[table["name"]]
    named = 0
    for table in source["tables"]:
        assert table["name"] in have, f"sources.yml names {table['name']!r}, not in a pulled DB"
        for column in table.get("columns", []):
            assert column["name"] in have[table["name"]], f"{table['name']}.{column['name']}"
            named += 1
    assert {"flows", "deployments", "flow_runs", "flow_runs_enriched"} <= {
        t["name"] for t in source["tables"]
    }
    assert named > 40


def test_dbt_profile_attaches_read_only_and_the_model_runs(workdir: Path) -> None:
    profile: Any = yaml.safe_load((DOCS / "dbt" / "profiles.yml.example").read_text())
    attach = profile["flowsync_analytics"]["outputs"]["dev"]["attach"][0]
    assert attach == {"path": attach["path"], "alias": "flowsync", "read_only": True}
    # What dbt-duckdb does with that profile, then the model from the docs.
    model = block("### dbt (dbt-duckdb)", "sql").split("\n", 1)[1]
    sql = re.sub(r"\{\{\s*source\('flowsync',\s*'(\w+)'\)\s*\}\}", r"flowsync.main.\1", model)
    con = duckdb.connect(str(workdir / "analytics.duckdb"))
    assert attach["path"].endswith("flowsync.duckdb.snapshots/current")
    con.execute(
        f"ATTACH '{workdir / 'flowsync.duckdb.snapshots' / 'current'}' AS flowsync (READ_ONLY)"
    )
    assert con.execute(sql).fetchall()
    with pytest.raises(duckdb.Error):
        con.execute("DELETE FROM flowsync.main.flow_runs")
    con.close()


def test_duckdb_cli_recipe(workdir: Path) -> None:
    argv = shlex.split(block("### duckdb CLI", "sh"))
    assert argv[:3] == ["duckdb", "-readonly", "flowsync.duckdb.snapshots/current"]
    # The duckdb CLI binary is not a Python package here; run its SQL the same way it would.
    con = duckdb.connect(str(workdir / argv[2]), read_only=True)
    rows = con.execute(argv[3]).fetchall()
    con.close()
    assert sum(n for _, n in rows) == scalar(
        workdir / "flowsync.duckdb", "SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL"
    )


def test_polars_recipe(workdir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", block("### Polars", "python")],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "COMPLETED" in proc.stdout and "FAILED" in proc.stdout


def test_jupyter_recipe_in_a_real_kernel(workdir: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(block("### Jupyter", "python"))]
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    outputs = nb.cells[0].outputs
    assert outputs and outputs[-1]["output_type"] == "execute_result", outputs
    assert "run_day" in outputs[-1]["data"]["text/plain"]


def test_connect_is_read_only_by_default_and_lazy(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    con = flowsync.connect()  # ./flowsync.duckdb
    try:
        assert con.execute("SELECT count(*) FROM flow_runs").fetchall()[0][0] > 0
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("DELETE FROM flow_runs")
    finally:
        con.close()
    writable = flowsync.connect(workdir / "flowsync.duckdb", read_only=False)
    writable.execute("CREATE TABLE my_notes (x INTEGER)")
    writable.close()
    with pytest.raises(StoreError, match="does not exist"):
        flowsync.connect(workdir / "missing.duckdb")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, flowsync; print('duckdb' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "False"
