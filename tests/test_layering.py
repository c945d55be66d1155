"""Who may touch what: only the store touches the DuckDB connection; tests share helpers, not each other.

The import contracts (pyproject.toml) keep ``import duckdb`` inside ``store/``;
this keeps its connection there too: outside ``src/flowsync/store/`` no code
reads ``.con`` or ``._con``, so all SQL goes through ``Store.execute`` (and
``Store.frame``), whose errors are typed. ``flowsync.connect()`` hands a
connection to notebooks on purpose; it lives in ``store/notebook.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "src" / "flowsync" / "store"
CONNECTION = re.compile(r"\.(_)?con\b(?!\w)")


def _python_files() -> list[Path]:
    files = [
        p for d in ("src", "tests", "harness", "bench", "demo") for p in (ROOT / d).rglob("*.py")
    ]
    return [p for p in files if STORE not in p.parents]


def test_no_code_outside_the_store_reaches_for_its_connection() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _python_files()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if CONNECTION.search(line) and path != Path(__file__).resolve()
    ]
    assert not offenders, "use Store.execute / Store.frame instead:\n" + "\n".join(offenders)


def test_the_pattern_finds_what_it_guards_against() -> None:
    assert CONNECTION.search("rows = store.con.execute('SELECT 1')")
    assert CONNECTION.search("ctx.store._con.execute(sql)")
    assert not CONNECTION.search("store.execute(sql).rows()")
    assert not CONNECTION.search("from flowsync import config")


def test_the_notebook_connection_is_the_one_documented_exception() -> None:
    handed_out = [
        path.name
        for path in STORE.glob("*.py")
        if re.search(r"return \w+\._con\b", path.read_text(encoding="utf-8"))
    ]
    assert handed_out == ["notebook.py"]


def _importing(pattern: str, files: list[Path]) -> list[str]:
    """The files among ``files`` with an import line matching ``pattern``."""
    line = re.compile(rf"^\s*(from|import)\s+{pattern}\b", re.MULTILINE)
    return [str(p.relative_to(ROOT)) for p in files if line.search(p.read_text(encoding="utf-8"))]


def test_tests_import_helpers_not_each_other() -> None:
    """Shared setup lives in fixtures (conftest.py) and helper modules, never in another test file."""
    offenders = _importing(r"tests\.(conftest|test_\w+)", list((ROOT / "tests").glob("*.py")))
    assert not offenders, f"tests importing conftest or another test: {offenders}"


def test_the_harness_is_shared_and_imports_run_one_way() -> None:
    """``harness/`` is the one package of servers, seeders and histories that the tests, the
    benchmarks and the demo share. It imports none of them; the tests import neither the
    benchmarks nor the demo; the benchmarks and the demo never import the tests."""
    below = [p for d in ("harness", "tests") for p in (ROOT / d).rglob("*.py")]
    offenders = _importing(r"(bench|demo)", below)
    offenders += _importing("tests", list((ROOT / "harness").rglob("*.py")))
    above = [p for d in ("bench", "demo") for p in (ROOT / d).rglob("*.py")]
    offenders += _importing("tests", above)
    assert not offenders, f"imports against the harness's direction: {offenders}"
