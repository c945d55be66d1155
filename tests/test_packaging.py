"""The wheel users install (pip, pipx, uv tool) works on its own: built from the
repository, installed into a clean venv, with the SQL views shipped inside it.

Slow (builds a wheel and installs flowsync's dependencies from the package
index into a new venv) but part of every CI run: it is the only test that sees
flowsync the way a user's install does, away from the source tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from flowsync import __version__
from harness.server import new_venv
from tests.helpers import SeededServer, query

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(*cmd: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH or repo on the path: only what is installed in the venv counts.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the clean venv's bin directory)."""
    work = tmp_path_factory.mktemp("packaging")
    run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", ROOT, cwd=work
    )
    wheels = list((work / "dist").glob("flowsync-*.whl"))
    assert len(wheels) == 1, wheels
    # uv, as the dev group has it (a second, where pip took 10 CPU-s), else pip
    run(*new_venv(work / "venv", compile_bytecode=False), wheels[0], cwd=work)
    return wheels[0], work / "venv" / "bin"


def test_wheel_ships_every_sql_view(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    repo_views = sorted(p.name for p in (ROOT / "sql").glob("*.sql"))
    assert repo_views, "no views in sql/"
    names = zipfile.ZipFile(wheel).namelist()
    assert (
        sorted(
            n.split("/")[-1] for n in names if n.startswith("flowsync/sql/") and n.endswith(".sql")
        )
        == repo_views
    )
    assert not [
        n for n in names if n.startswith(("tests/", "harness/", "demo/", "bench/", "docs/"))
    ]


def test_installed_command_runs_from_anywhere(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, bin_dir = installed
    assert (
        run(bin_dir / "flowsync", "--version", cwd=tmp_path).stdout.strip()
        == f"flowsync {__version__}"
    )
    code = "import flowsync.views as v; print(v.sql_dir()); print(len(v.view_files()))"
    where, count = run(bin_dir / "python", "-c", code, cwd=tmp_path).stdout.split()
    assert Path(where).is_relative_to(bin_dir.parent), (
        where
    )  # the installed copy, not the repo's sql/
    assert int(count) == len(list((ROOT / "sql").glob("*.sql")))


def test_installed_pull_builds_the_views(
    installed: tuple[Path, Path], prefect: SeededServer, tmp_path: Path
) -> None:
    _, bin_dir = installed
    db = tmp_path / "runs.duckdb"
    run(bin_dir / "flowsync", "pull", "--api-url", prefect.url, "--db", db, "--quiet", cwd=tmp_path)
    views = {
        name for (name,) in query(db, "SELECT view_name FROM duckdb_views() WHERE NOT internal")
    }
    macros = "SELECT function_name FROM duckdb_functions() WHERE function_type IN ('macro', 'table_macro') AND NOT internal"
    views |= {name for (name,) in query(db, macros)}
    # every file's view or macro, plus signature_of (defined beside error_signature_text) and
    # named_groups (beside grouped_runs)
    assert views - {"signature_of", "named_groups"} == {
        p.stem.split("_", 1)[1] for p in (ROOT / "sql").glob("*.sql")
    }
    enriched, runs = query(
        db, "SELECT (SELECT count(*) FROM flow_runs_enriched), (SELECT count(*) FROM flow_runs)"
    )[0]
    assert enriched == runs > 0
