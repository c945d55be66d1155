"""Several files, one per server, queried together with a source column.

Both files are built without a server (``built`` and a small one of 50 runs); that a
file refuses a pull from another server is tests/test_bad_input.py's
``test_other_server_into_same_file_is_refused``."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import flowsync
from flowsync.errors import ConfigError, NewerFileWarning, StoreError
from flowsync.store import migrations
from harness.built import Builder, BuiltHistory
from tests.helpers import copy_db, run_cli, scalar


@pytest.fixture
def two_files(built: BuiltHistory, tmp_path: Path) -> tuple[Path, Path]:
    prod = copy_db(built.path, tmp_path, "prod.duckdb")
    staging = Builder(random.Random(41), datetime.now(timezone.utc))
    for i in range(50):  # two flows, one deployment each
        flow = ("ingest-orders", "score-leads")[i % 2]
        dep = staging.deployment(flow, "staging", ["staging"], None)
        state = "FAILED" if i % 5 == 0 else "COMPLETED"
        staging.finished(flow, state, 30.0 + i, timedelta(hours=i), deployment=dep)
    return prod, staging.write(tmp_path / "staging.duckdb").path


def test_sql_and_connect_over_several_files(
    built: BuiltHistory, two_files: tuple[Path, Path]
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
    assert result.stdout.splitlines() == ["source,runs", f"prod,{built.count()}", "staging,50"]

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


def test_source_names_must_be_distinct(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="used twice"):
        flowsync.connect([tmp_path / "a" / "runs.duckdb", tmp_path / "b" / "runs.duckdb"])
    bad = run_cli("sql", "SELECT 1", "--db", "x=a.duckdb", "--db", "x=b.duckdb")
    assert bad.exit_code == 2 and "used twice" in bad.stderr


@pytest.mark.parametrize("files", [123, b"runs.duckdb", [3], {"prod": 3}])
def test_what_is_no_file_nor_files_is_a_config_error(files: object) -> None:
    """connect(123) was a TypeError ('int' object is not iterable)."""
    with pytest.raises(ConfigError, match=r"is not a (file to read|path)"):
        flowsync.connect(files)  # type: ignore[arg-type]


def test_a_name_that_is_no_name_is_said_to_be_the_name(tmp_path: Path) -> None:
    """`--db "a b=a.duckdb"`: the source name is what is wrong, not a missing file called
    `a b=a.duckdb` (a path holding "=" that exists is still read as a path)."""
    bad = run_cli("sql", "SELECT 1", "--db", "a b=a.duckdb", "--db", "s=s.duckdb")
    assert bad.exit_code == 2, bad.output
    assert "Source name 'a b' (in 'a b=a.duckdb') must be letters, digits and _" in bad.stderr
    with pytest.raises(ConfigError, match="Source name 'a b'"):
        flowsync.connect(["a b=a.duckdb"])
    from flowsync.store import Store

    odd = tmp_path / "a b=c.duckdb"  # exists: a path, named by its stem
    with Store.writer(odd):
        pass
    con = flowsync.connect([str(odd)])
    try:
        assert con.execute("SELECT count(*) FROM flow_runs").fetchone() == (0,)
    finally:
        con.close()


def test_each_file_of_several_gets_the_checks_one_file_gets(
    two_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """Another program's file, a file of an older schema and one a newer flowsync wrote:
    refused, refused, read with a warning, as each is alone."""
    import duckdb

    prod, staging = two_files
    foreign = tmp_path / "sales.duckdb"
    with duckdb.connect(str(foreign)) as con:
        con.execute("CREATE TABLE orders AS SELECT 1 AS id")
    result = run_cli("sql", "SELECT * FROM orders", "--db", f"a={foreign}", "--db", f"b={prod}")
    assert result.exit_code == 5, result.output
    assert result.stderr.strip() == (
        f"error: {foreign} is not a flowsync file (no flowsync schema in it); pass only files "
        "flowsync pull wrote."
    )
    last = migrations.MIGRATIONS[-1][0]
    with duckdb.connect(str(staging)) as con:  # as an older flowsync left it
        con.execute("DELETE FROM _flowsync_migrations WHERE name = ?", [last])
    with pytest.raises(StoreError, match=r"has an older schema \(1 migrations pending\)"):
        flowsync.connect({"prod": prod, "staging": staging}, live=True)
    with duckdb.connect(str(staging)) as con:  # as a newer flowsync left it
        con.execute("INSERT INTO _flowsync_migrations VALUES (?, now())", [last])
        con.execute("INSERT INTO _flowsync_migrations VALUES ('m999_from_the_future', now())")
    with pytest.warns(NewerFileWarning, match="m999_from_the_future"):
        con = flowsync.connect({"prod": prod, "staging": staging}, live=True)
    try:
        assert con.execute("SELECT count(DISTINCT source) FROM flow_runs").fetchone() == (2,)
    finally:
        con.close()


def test_a_newer_file_whose_views_no_longer_read_is_one_line_naming_it_among_several(
    two_files: tuple[Path, Path],
) -> None:
    """A newer flowsync migrated staging (a column renamed, as its migrations may) and was
    killed before its pull rebuilt the views: a view there no longer reads. One --db says so
    when queried (tests/test_file_faults.py); several stacked them at open and let DuckDB's
    binder error out as a traceback, for every query. One line naming the file and saying to
    upgrade, exit 5, nothing written."""
    import hashlib

    import duckdb

    prod, staging = two_files
    with duckdb.connect(str(staging)) as con:  # as the newer flowsync left it
        con.execute("INSERT INTO _flowsync_migrations VALUES ('m999_from_the_future', now())")
        con.execute("UPDATE _flowsync_file SET value = '9.0.0' WHERE key = 'written_by'")
        con.execute("ALTER TABLE flow_runs RENAME COLUMN state_name TO state_label")
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (prod, staging)]
    result = run_cli(
        "sql", "SELECT count(*) FROM flows", "--live", "--db", f"prod={prod}",
        "--db", f"staging={staging}",
    )  # fmt: skip
    assert result.exit_code == 5, result.output
    assert "Traceback" not in result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert str(staging) in line and str(prod) not in line, line
    assert "written by flowsync 9.0.0" in line and "upgrade flowsync" in line, line
    with pytest.warns(NewerFileWarning), pytest.raises(StoreError, match="upgrade flowsync"):
        flowsync.connect({"prod": prod, "staging": staging}, live=True)
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in (prod, staging)] == before


def test_a_column_a_newer_file_renamed_is_refused_among_several_as_alone(
    two_files: tuple[Path, Path],
) -> None:
    """Several files stack each table by name: a column a newer flowsync renamed or dropped
    read as NULL for that file's rows (exit 0, a wrong figure: here its runs vanished from
    the count) where the file alone refuses the query saying to upgrade. Now a query that
    reads the column refuses as well; one that does not is answered."""
    import duckdb

    prod, staging = two_files
    with duckdb.connect(str(staging)) as con:  # as the newer flowsync left it, views rebuilt
        con.execute("INSERT INTO _flowsync_migrations VALUES ('m999_from_the_future', now())")
        con.execute("UPDATE _flowsync_file SET value = '9.0.0' WHERE key = 'written_by'")
        for (view,) in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal"
        ).fetchall():
            con.execute(f'DROP VIEW IF EXISTS "{view}" CASCADE')
        con.execute("ALTER TABLE flow_runs RENAME COLUMN state_name TO state_label")
    sql = "SELECT count(*) FROM flow_runs WHERE state_name IS NOT NULL"
    alone = run_cli("sql", sql, "--live", "--db", str(staging))
    assert alone.exit_code == 5 and "upgrade flowsync" in alone.stderr, alone.output
    together = run_cli(
        "sql", sql.replace("count(*)", "source, count(*)") + " GROUP BY 1", "--live",
        "--db", f"prod={prod}", "--db", f"staging={staging}",
    )  # fmt: skip
    assert together.exit_code == 5 and "upgrade flowsync" in together.stderr, together.output
    assert str(staging) in together.stderr and str(prod) not in together.stderr
    counted = run_cli(
        "sql", "SELECT source, count(*) FROM flow_runs GROUP BY 1 ORDER BY 1", "--format",
        "csv", "--live", "--db", f"prod={prod}", "--db", f"staging={staging}",
    )  # fmt: skip
    assert counted.exit_code == 0, counted.output
    assert counted.stdout.splitlines()[2].startswith("staging,")


def _cut_in_half(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _flip_second_half(path: Path) -> None:
    """A byte flipped in every 256 KiB block of the file's second half: its first blocks (the
    header, the catalog's start) read, a later one fails its checksum."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        for offset in range(size // 2, size, 262144):
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("damage", [_cut_in_half, _flip_second_half], ids=["cut", "flipped"])
def test_a_damaged_file_among_several_is_one_line_naming_it(
    two_files: tuple[Path, Path], damage: Callable[[Path], None]
) -> None:
    """A file that attaches but whose schema cannot be read (damaged past its first blocks),
    read among several: the one line (exit 5) a damaged file alone gets, naming it, not
    DuckDB's exception with a traceback; the library raises the same StoreError."""
    prod, staging = two_files
    damage(prod)
    result = run_cli("sql", "SELECT 1", "--live", "--db", f"a={prod}", "--db", f"b={staging}")
    assert result.exit_code == 5 and "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {prod} is damaged"), lines
    with pytest.raises(StoreError, match="is damaged"):
        flowsync.connect({"a": prod, "b": staging}, live=True)
