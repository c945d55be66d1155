"""The starter notebook runs top to bottom against a pulled DB (a built one: no server)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from harness.built import BuiltHistory
from tests.helpers import copy_db

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "start_here.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_runs(
    built: BuiltHistory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = copy_db(built.path, tmp_path)
    monkeypatch.setenv("FLOWSYNC_DB", str(db))  # the kernel inherits it
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = ""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", output
            text += output.get("text", "") + str(output.get("data", {}))
    assert f"opened {db}" in text
    assert "flow_runs_enriched" in text
    assert "failure_rate" in text
    assert "image/svg+xml" in text and "Runs and failure rate per day" in text
    assert "%" in text  # the text bars


def test_notebook_runs_on_a_quiet_servers_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file pulled from a quiet server (no finished run in the window): every cell runs."""
    import random
    from datetime import datetime, timezone

    from harness.built import Builder

    db = Builder(random.Random(1), datetime.now(timezone.utc)).write(tmp_path / "quiet.duckdb").path
    monkeypatch.setenv("FLOWSYNC_DB", str(db))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", output
