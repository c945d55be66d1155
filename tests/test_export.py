"""flowsync export: day-partitioned Parquet that other tools read back exactly."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from flowsync.errors import ConfigError
from flowsync.export import MANIFEST, PART_FILE, TMP_DIR, ExportRequest
from flowsync.store import Store
from harness.built import API_URL, BuiltHistory
from tests.helpers import (
    EXPORT_SLOW_THIRD_PARTITION,
    a_run_alone_on_its_created_day,
    copy_db,
    run_cli,
    scalar,
)

TABLES = ("flows", "deployments", "flow_runs")


@pytest.fixture(scope="module")
def pulled(built_week: BuiltHistory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = copy_db(built_week.path, tmp_path_factory.mktemp("export-src"))
    # Two runs as a pull leaves runs deleted on the server: still there, deleted_at set
    # (and only those two: the built file's own deleted runs come back).
    con = duckdb.connect(str(db))
    con.execute("UPDATE flow_runs SET deleted_at = NULL")
    con.execute(
        "UPDATE flow_runs SET deleted_at = now() WHERE id IN (SELECT id FROM flow_runs ORDER BY id LIMIT 2)"
    )
    con.close()
    return db


@pytest.fixture
def db(pulled: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "runs.duckdb"
    shutil.copy(pulled, copy)
    return copy


def export(db: Path, out: Path | str, *args: str) -> dict[str, Any]:
    result = run_cli("export", "--format", "parquet", str(out), "--db", str(db), "--json", *args)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def read_back(out: Path, table: str) -> pl.DataFrame:
    if table == "flow_runs":
        return pl.read_parquet(out / table / "**" / "*.parquet", hive_partitioning=True)
    return pl.read_parquet(out / table / "part-0.parquet")


def test_export_twice_reads_back_equal_without_duplicates(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    first = export(db, out)
    second = export(db, out)
    assert first["rows_written"] == second["rows_written"] > 0
    for table in TABLES:
        frame = read_back(out, table)
        assert frame.height == scalar(db, f"SELECT count(*) FROM {table}"), table
        assert frame["id"].n_unique() == frame.height, table
    # No temporary files are left behind, only one file per partition.
    names = {p.name for p in out.rglob("*") if p.is_file()}
    assert names == {"part-0.parquet", "_flowsync_manifest.json"}


def test_duckdb_reads_hive_partitions_and_days_match_expected_start(
    db: Path, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    export(db, out)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    glob = str(out / "flow_runs" / "*" / "*.parquet")
    total, misplaced = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE CAST(coalesce(expected_start_time, created) AS DATE) <> CAST(date AS DATE)) "
        f"FROM read_parquet('{glob}', hive_partitioning = true)"
    ).fetchall()[0]
    assert total == scalar(db, "SELECT count(*) FROM flow_runs")
    assert misplaced == 0
    days = scalar(
        db,
        "SELECT count(DISTINCT CAST(coalesce(expected_start_time, created) AS DATE)) FROM flow_runs",
    )
    assert len(list((out / "flow_runs").iterdir())) == days > 1


def test_deleted_runs_are_exported_with_deleted_at(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export(db, out)
    runs = read_back(out, "flow_runs")
    assert runs.filter(pl.col("deleted_at").is_not_null()).height == 2
    assert runs.schema["deleted_at"] == pl.Datetime("us", "UTC")
    assert runs.schema["id"] == pl.String  # UUIDs as text: every reader agrees on that
    assert runs.schema["tags"] == pl.List(pl.String)


def test_manifest_lists_every_file_with_its_rows(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export(db, out)
    manifest = json.loads((out / "_flowsync_manifest.json").read_text())
    for table in TABLES:
        entry = manifest["tables"][table]
        assert entry["rows"] == scalar(db, f"SELECT count(*) FROM {table}")
        on_disk = {str(p.relative_to(out / table)) for p in (out / table).rglob("*.parquet")}
        assert set(entry["files"]) == on_disk
    assert manifest["tables"]["flow_runs"]["partition_by"] == (
        "date = UTC day of coalesce(expected_start_time, created)"
    )


def test_since_rewrites_only_changed_partitions(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export(db, out)
    con = duckdb.connect(str(db))
    con.execute("SET TimeZone = 'UTC'")
    for table in TABLES:  # as if the last pull was two days ago
        con.execute(
            f"UPDATE {table} SET synced_at = synced_at - INTERVAL 2 DAY, deleted_at = deleted_at - INTERVAL 2 DAY"
        )
    # The oldest run created the day before its expected start, on a day that holds runs.
    run_id, day, created_day = con.execute(
        "SELECT id, CAST(expected_start_time AS DATE), CAST(created AS DATE) FROM flow_runs "
        "WHERE expected_start_time IS NOT NULL "
        "AND CAST(created AS DATE) <> CAST(expected_start_time AS DATE) "
        "AND CAST(created AS DATE) IN (SELECT CAST(coalesce(expected_start_time, created) AS DATE) "
        "FROM flow_runs) "
        "ORDER BY expected_start_time LIMIT 1"
    ).fetchall()[0]
    con.execute(
        "UPDATE flow_runs SET synced_at = now(), state_name = 'Changed' WHERE id = ?", [run_id]
    )
    con.close()
    summary = export(db, out, "--since", "1d")
    # The run's day, and its created day (where it sat if it had no expected start yet).
    assert summary["tables"]["flow_runs"]["files_written"] == len({day, created_day})
    assert summary["tables"]["flows"]["files_written"] == 0
    part = pl.read_parquet(out / "flow_runs" / f"date={day.isoformat()}" / "part-0.parquet")
    assert part.filter(pl.col("state_name") == "Changed").height == 1
    assert read_back(out, "flow_runs").height == scalar(db, "SELECT count(*) FROM flow_runs")
    # The library takes --since's text too, and writes what the command wrote.
    from flowsync import operations

    again = operations.export(db, out, since="1d").result.to_json()
    assert again["tables"]["flow_runs"]["files_written"] == len({day, created_day})
    from flowsync.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--since 1 is not an age or a time"):
        operations.export(db, out, since=1)  # type: ignore[arg-type]


def test_full_export_drops_partitions_the_db_no_longer_has(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export(db, out)
    stale = out / "flow_runs" / "date=1999-01-01"
    shutil.copytree(next((out / "flow_runs").iterdir()), stale)
    summary = export(db, out, "--tables", "flow_runs")
    assert summary["tables"]["flow_runs"]["partitions_removed"] == ["date=1999-01-01"]
    assert not stale.exists()
    assert read_back(out, "flow_runs")["id"].n_unique() == scalar(
        db, "SELECT count(*) FROM flow_runs"
    )


def test_tables_option_limits_the_export(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export(db, out, "--tables", "flows,deployments")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["deployments", "flows"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tables", "runs"], "Unknown table 'runs'"),
        (["--format", "csv"], "Unknown export format 'csv'"),
        (["--since", "yesterday"], "--since 'yesterday' is not a time"),
        (["--tables", ",", "--tables", ""], "--tables names no table"),
    ],
)
def test_bad_options_fail_with_one_line(
    db: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "export"
    result = run_cli("export", str(out), "--db", str(db), *args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not out.exists()


def test_an_export_request_is_checked_once_when_it_is_made() -> None:
    """The library's request: each table once, in the order given; a bad value refused as it
    is made, before any file or folder is opened (the command's checks, not repeated later)."""
    assert ExportRequest().tables == TABLES
    assert ExportRequest(tables=("flow_runs", "flows", "flow_runs")).tables == (
        "flow_runs",
        "flows",
    )
    since = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for bad, needle in [
        ({"fmt": "csv"}, "Unknown export format 'csv'"),
        ({"tables": ("runs",)}, "Unknown table 'runs'"),
        ({"tables": ()}, "--tables names no table"),
        ({"replace": True, "since": since}, "--replace rewrites the whole export"),
        ({"replace": True, "tables": ("flows",)}, "--replace rewrites the whole export"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            ExportRequest(**bad)  # type: ignore[arg-type]


def test_export_into_a_file_fails_cleanly(db: Path, tmp_path: Path) -> None:
    target = tmp_path / "export.parquet"
    target.write_text("not a dir")
    result = run_cli("export", str(target), "--db", str(db))
    assert result.exit_code == 2
    assert f"Export directory {target} is a file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert target.read_text() == "not a dir"


def test_missing_db_fails_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "export"
    missing = tmp_path / "nope.duckdb"
    result = run_cli("export", str(out), "--db", str(missing))
    assert result.exit_code == 5
    assert "does not exist" in result.stderr and "flowsync pull" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not missing.exists() and not out.exists()


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("dest", "needle"),
    [
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("gs://", "names no bucket"),
        ("az:///x", "names no container"),
        ("ftp://x/y", "Cannot export to ftp://"),
        ("http://example.com/x", "Cannot export to http://"),
        ("", "Export destination is empty"),
        ("   ", "Export destination is empty"),
        ("file://", "names no directory"),
        ("file://otherhost/x", "names the host 'otherhost'"),
        # a key in the URL would be printed and kept in the manifest: refused, not echoed
        ("s3://AKIAEXAMPLE:SECRETKEY@bucket/p", "holds credentials or a query"),
        ("az://container/p?sv=1&sig=SECRETKEY", "holds credentials or a query"),
    ],
)
def test_bad_destination_is_refused_before_anything_is_written(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dest: str, needle: str
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = run_cli("export", dest, "--db", str(db))
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and "SECRETKEY" not in result.output
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("how", ["moved", "left by a killed export"])
def test_since_removes_the_partitions_the_db_no_longer_has(
    db: Path, tmp_path: Path, how: str
) -> None:
    """A run alone on its created day gets its first state, and with it its expected start:
    it moves to that day. `--since` rewrote the new day but left the old partition, now
    of no row, so the run was in the export twice (and the manifest counted it twice)
    until a full export. Likewise a partition a full export, killed between its manifest
    and its removals, left on disk: the next `--since` listed it again. `--since` removes
    the partitions the DB no longer has, after the manifest, as a full export does."""
    out = tmp_path / "export"
    con = duckdb.connect(str(db))
    for table in TABLES:  # as if the last pull was two days ago
        con.execute(f"UPDATE {table} SET synced_at = synced_at - INTERVAL 2 DAY")
    con.close()
    run_id, expected = a_run_alone_on_its_created_day(db)
    export(db, out)
    assert (out / "flow_runs" / "date=1999-01-01" / "part-0.parquet").is_file()
    con = duckdb.connect(str(db))
    con.execute(
        "UPDATE flow_runs SET expected_start_time = CAST(? AS TIMESTAMPTZ)"
        + (", synced_at = now()" if how == "moved" else "")
        + " WHERE id = ?",
        [expected, run_id],
    )
    con.close()
    if how != "moved":  # a full export moved it, then was killed before its removals
        export(db, out)
        stale = out / "flow_runs" / "date=1999-01-01"
        stale.mkdir()
        shutil.copy(out / "flow_runs" / f"date={expected[:10]}" / "part-0.parquet", stale)
    summary = export(db, out, "--since", "1d")
    assert summary["tables"]["flow_runs"]["partitions_removed"] == ["date=1999-01-01"]
    assert not (out / "flow_runs" / "date=1999-01-01").exists()
    back = read_back(out, "flow_runs")
    assert back.height == back["id"].n_unique() == scalar(db, "SELECT count(*) FROM flow_runs")
    manifest = json.loads((out / "_flowsync_manifest.json").read_text())["tables"]["flow_runs"]
    assert (
        manifest["rows"] == back.height
        and "date=1999-01-01/part-0.parquet" not in manifest["files"]
    )


def test_file_url_exports_to_its_directory(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    summary = export(db, f"file://{out}")
    assert summary["rows_written"] > 0
    assert read_back(out, "flow_runs").height == scalar(db, "SELECT count(*) FROM flow_runs")


def test_manifest_records_the_source_file_and_server(
    built_week: BuiltHistory, tmp_path: Path
) -> None:
    db = copy_db(built_week.path, tmp_path)  # with its snapshots: export reads the latest one
    out = tmp_path / "export"
    export(db, out)
    export(db, out)  # the same file again: its own export, replaced
    manifest = json.loads((out / "_flowsync_manifest.json").read_text())
    assert manifest["source"] == {"db": str(db.resolve()), "api_url": API_URL}


def _refused_each(
    out: Path, db: Path, argsets: list[list[str]], before: dict[str, bytes], *needles: str
) -> None:
    """``flowsync export OUT --db DB`` with each of ``argsets`` refused in one line saying
    each of ``needles``, the export's files as ``before``."""
    for args in argsets:
        result = run_cli("export", str(out), "--db", str(db), "--json", *args)
        assert result.exit_code == 2, result.output
        assert all(n in result.stderr for n in needles), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.output
        assert _files(out) == before


@pytest.mark.parametrize("other_kind", ["another file", "a file never pulled"])
def test_export_from_another_source_is_refused_and_removes_nothing(
    db: Path, tmp_path: Path, other_kind: str
) -> None:
    out = tmp_path / "export"
    export(db, out)
    before = _files(out)
    if other_kind == "another file":
        other = tmp_path / "other.duckdb"
        shutil.copy(db, other)
        con = duckdb.connect(str(other))
        con.execute("DELETE FROM flow_runs")
        con.close()
        needle = f"{out} holds an export of {db.resolve()}"
    else:
        other = tmp_path / "empty.duckdb"
        Store.writer(other).close()
        needle = f"{other} has no completed pull"
    argsets = [[], ["--since", "1d"], ["--tables", "flow_runs"]]
    _refused_each(out, other, argsets, before, needle, "--replace")


def test_an_older_manifest_from_another_file_is_refused(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export(db, out)
    manifest_path = out / "_flowsync_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["source"]  # as written before the manifest named its source
    manifest["source_db"] = str(tmp_path / "a.duckdb.snapshots" / "00000003.duckdb")
    manifest_path.write_text(json.dumps(manifest))
    before = _files(out)
    result = run_cli("export", str(out), "--db", str(db))
    assert result.exit_code == 2, result.output
    assert f"holds an export of {tmp_path / 'a.duckdb'}" in result.stderr
    assert _files(out) == before
    # The file it names is the one it was written from: exported again, as before.
    manifest["source_db"] = str(db.with_name(db.name + ".snapshots") / "00000001.duckdb")
    manifest_path.write_text(json.dumps(manifest))
    export(db, out)
    # A path as it was given to that export, relative to where it ran: its name is compared.
    for given, refused in ((f"{db.name}.snapshots/00000001.duckdb", False), ("b.duckdb", True)):
        manifest = json.loads(manifest_path.read_text())
        del manifest["source"]
        manifest["source_db"] = given
        manifest_path.write_text(json.dumps(manifest))
        result = run_cli("export", str(out), "--db", str(db))
        assert result.exit_code == (2 if refused else 0), result.output


def test_one_export_writes_into_a_folder_at_a_time_and_checks_it_once_it_holds_it(
    db: Path, tmp_path: Path
) -> None:
    """Two exports into one folder at once each found it free of another file's export, then
    one replaced the other's files (both said "exported"). Another export holding the folder
    (its lock, held here): refused in one line (exit 6), nothing written; with --wait, the
    export waits for it, then checks the folder as that export left it: another file's
    export there now is refused, not replaced."""
    import fcntl
    import threading

    out = tmp_path / "export"
    export(db, out)
    before = _files(out)
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = run_cli("export", str(out), "--db", str(db))
        assert busy.exit_code == 6, busy.output
        assert busy.stderr.strip().splitlines() == [
            f"error: Another flowsync export is writing to {out}; wait for it to finish "
            "(pass --wait SECONDS), or export elsewhere."
        ]
        assert _files(out) == before
        # the export holding it finishes: it was another file's
        manifest = json.loads((out / MANIFEST).read_text())
        manifest["source"]["db"] = str(tmp_path / "other.duckdb")
        (out / MANIFEST).write_text(json.dumps(manifest))
        released = threading.Timer(0.5, lambda: fcntl.flock(fd, fcntl.LOCK_UN))
        released.start()
        waited = run_cli("export", str(out), "--db", str(db), "--wait", "10")
        released.join()
    finally:
        os.close(fd)
    assert waited.exit_code == 2, waited.output
    assert f"holds an export of {tmp_path / 'other.duckdb'}" in waited.stderr
    export(db, out, "--replace")  # and once free, an export goes ahead at once


def test_the_same_file_pulled_from_another_server_is_refused(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export(db, out)
    before = _files(out)
    con = duckdb.connect(str(db))  # the file at the same path, now another server's
    con.execute("UPDATE sync_runs SET api_url = 'http://10.0.0.9:4200/api'")
    con.close()
    result = run_cli("export", str(out), "--db", str(db))
    assert result.exit_code == 2, result.output
    assert API_URL in result.stderr and "http://10.0.0.9:4200/api" in result.stderr
    assert _files(out) == before


def test_an_export_a_newer_flowsync_wrote_is_refused_unchanged(db: Path, tmp_path: Path) -> None:
    """Its manifest says a newer flowsync wrote it (with a table this version does not
    know): not rewritten in this version's layout."""
    out = tmp_path / "export"
    export(db, out)
    manifest_path = out / "_flowsync_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["flowsync_version"] = "9.0.0"
    manifest["tables"]["task_runs"] = {"partition_by": None, "rows": 7, "files": {}}
    manifest_path.write_text(json.dumps(manifest))
    before = _files(out)
    _refused_each(out, db, [[], ["--since", "1d"]], before, "written by flowsync 9.0.0")


def test_replace_exports_another_file_over_an_export(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export(db, out)
    other = tmp_path / "other.duckdb"
    shutil.copy(db, other)
    con = duckdb.connect(str(other))
    con.execute("DELETE FROM flow_runs WHERE id NOT IN (SELECT id FROM flow_runs LIMIT 5)")
    con.close()
    bad = run_cli("export", str(out), "--db", str(other), "--replace", "--since", "1d")
    assert bad.exit_code == 2 and "--replace" in bad.stderr and "--since" in bad.stderr
    summary = export(other, out, "--replace")
    assert summary["tables"]["flow_runs"]["rows_written"] == 5
    assert read_back(out, "flow_runs").height == 5
    manifest = json.loads((out / "_flowsync_manifest.json").read_text())
    assert manifest["source"]["db"] == str(other.resolve())
    export(other, out)  # its own export now


@pytest.mark.parametrize("name", ["exp:2026", "file:rel", "s3:foo"])
def test_a_relative_folder_with_a_colon_in_its_name_is_a_folder(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Arrow reads a relative path such as ``exp:2026/...`` as a URL: the manifest's counts
    are read through open files, so the export completes there, with its manifest."""
    monkeypatch.chdir(tmp_path)
    result = run_cli("export", name, "--db", str(db))
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / name / "_flowsync_manifest.json").read_text())
    assert manifest["tables"]["flow_runs"]["rows"] == scalar(db, "SELECT count(*) FROM flow_runs")


@pytest.mark.parametrize("url", ["file://localhost{path}", "file://{quoted}"])
def test_a_file_url_names_its_path_as_rfc_8089_says(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """``file://localhost/p`` is ``/p`` (not ``./localhost/p``), and a URL's path is
    percent-decoded (``sp%20ace`` is ``sp ace``)."""
    from urllib.parse import quote

    out = tmp_path / "sp ace"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    dest = url.format(path=quote(str(out)), quoted=quote(str(out)))
    result = run_cli("export", dest, "--db", str(db))
    assert result.exit_code == 0, result.output
    assert (out / "_flowsync_manifest.json").is_file()
    assert not (tmp_path / "sp%20ace").exists() and list(cwd.iterdir()) == []


class Recorded:
    """A ``Progress`` that keeps what it was told."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, int | None]] = []
        self.done: dict[str, int] = {}

    def phase(self, name: str, total: int | None = None) -> None:
        self.phases.append((name, total))
        self.done[name] = 0

    def advance(self, n: int) -> None:
        self.done[self.phases[-1][0]] += n

    def message(self, text: str) -> None:
        pass


def runs_in(db: Path) -> int:
    return int(scalar(db, "SELECT count(*) FROM flow_runs"))


def test_export_reports_each_tables_rows_as_it_writes_them(db: Path, tmp_path: Path) -> None:
    """A phase per table written, its total the rows it writes, advanced to that total (a
    --since export: what it rewrites). The command prints it as lines in a log."""
    from flowsync import operations

    progress = Recorded()
    exported = operations.export(db, tmp_path / "lib", progress=progress)
    written = {t.name: t.rows_written for t in exported.result.tables}
    assert written["flow_runs"] == runs_in(db) > 0
    assert progress.phases == [(f"export {name}", rows) for name, rows in written.items()]
    assert progress.done == {f"export {name}": rows for name, rows in written.items()}

    # --since: what it rewrites (the file was pulled a minute ago: all of it, partitioned)
    again = Recorded()
    since = operations.export(db, tmp_path / "lib", since="1d", progress=again)
    assert again.done == {f"export {t.name}": t.rows_written for t in since.result.tables}
    assert again.done["export flow_runs"] == runs_in(db)

    shown = run_cli("export", str(tmp_path / "cli"), "--db", str(db))
    assert shown.exit_code == 0, shown.output
    runs = written["flow_runs"]
    assert f"export flow_runs: {runs}/{runs} rows" in shown.stderr, shown.stderr
    quiet = run_cli("export", str(tmp_path / "quiet"), "--db", str(db), "--quiet")
    assert quiet.exit_code == 0 and "export flow_runs" not in quiet.stderr, quiet.stderr


def test_a_full_export_failing_at_its_manifest_leaves_every_listed_file_in_place(
    db: Path, tmp_path: Path
) -> None:
    """A full export removed the partitions the file no longer has, then failed writing its
    manifest: the previous manifest, still in place, listed a partition that was gone, and
    a reader of the manifest's files failed on it."""
    run_id, expected = a_run_alone_on_its_created_day(db)
    out = tmp_path / "export"
    export(db, out)
    assert (
        "date=1999-01-01/part-0.parquet"
        in json.loads((out / "_flowsync_manifest.json").read_text())["tables"]["flow_runs"]["files"]
    )
    con = duckdb.connect(str(db))  # the run got its first state: it moved to its day
    con.execute(
        "UPDATE flow_runs SET expected_start_time = CAST(? AS TIMESTAMPTZ) WHERE id = ?",
        [expected, run_id],
    )
    con.close()
    # The manifest cannot be written (a folder in the way of its temporary name).
    (out / f"._flowsync_manifest.json.tmp-{os.getpid()}").mkdir()
    result = run_cli("export", str(out), "--db", str(db), "--quiet")
    assert result.exit_code == 5 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    manifest = json.loads((out / "_flowsync_manifest.json").read_text())
    for table, entry in manifest["tables"].items():
        for rel in entry["files"]:
            assert (out / table / rel).is_file(), f"the manifest lists {table}/{rel}, not there"
    (out / f"._flowsync_manifest.json.tmp-{os.getpid()}").rmdir()
    again = export(db, out)  # converges: the stale partition goes, the manifest is whole
    assert again["tables"]["flow_runs"]["partitions_removed"] == ["date=1999-01-01"]
    manifest = json.loads((out / "_flowsync_manifest.json").read_text())
    assert set(manifest["tables"]["flow_runs"]["files"]) == {
        str(p.relative_to(out / "flow_runs")) for p in (out / "flow_runs").rglob("*.parquet")
    }


def test_an_export_killed_mid_partition_leaves_the_table_folders_readable(
    db: Path, tmp_path: Path
) -> None:
    """SIGKILL while a partition was written left its temporary file (part of a Parquet
    file) inside the partition folder, for good (the next export did not remove it):
    reading the folder (`pl.scan_parquet("export/flow_runs", hive_partitioning=True)`)
    failed on it ("directory contained paths with different file extensions")."""
    out = tmp_path / "export"
    export(db, out)
    written = {p for p in out.rglob("*") if p.is_file()}
    proc = subprocess.Popen(
        [sys.executable, "-c", EXPORT_SLOW_THIRD_PARTITION, "export", str(out), "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in set(out.rglob("*")) - written if p.is_file()):
            assert time.monotonic() < deadline, "the third partition was never begun"
            time.sleep(0.05)  # until the statement has written some of its file
    finally:
        proc.kill()
        proc.wait(timeout=60)
    runs = scalar(db, "SELECT count(*) FROM flow_runs")
    for attempt in ("after the kill", "after the next export"):
        frame = pl.scan_parquet(out / "flow_runs", hive_partitioning=True).collect()
        assert frame.height == frame["id"].n_unique() == runs, attempt
        if attempt == "after the kill":
            export(db, out)
    leftovers = [p for p in out.rglob("*") if p.name not in (MANIFEST, PART_FILE, *TABLES)]
    assert not [p for p in leftovers if not p.name.startswith("date=")], leftovers


def test_an_export_failing_midway_leaves_the_manifest_matching_the_files(
    db: Path, tmp_path: Path
) -> None:
    """The previous export stays whole when the next one fails half-way: each file its
    manifest lists holds the rows it says."""
    out = tmp_path / "export"
    export(db, out)
    con = duckdb.connect(str(db))  # a run more on the first day, and on the last
    for order in ("ASC", "DESC"):
        con.execute(
            "INSERT INTO flow_runs SELECT * REPLACE (uuid() AS id, now() AS synced_at) "
            f"FROM flow_runs WHERE expected_start_time IS NOT NULL "
            f"ORDER BY expected_start_time {order} LIMIT 1"
        )
    last = con.execute("SELECT max(CAST(expected_start_time AS DATE)) FROM flow_runs").fetchall()
    con.close()
    # The last day's partition cannot be written (a folder in the way of its file).
    blocked = out / "flow_runs" / f"date={last[0][0].isoformat()}" / PART_FILE
    blocked.unlink()
    blocked.mkdir()
    (blocked / "keep").write_text("x")
    result = run_cli("export", str(out), "--db", str(db), "--quiet")
    assert result.exit_code == 5, result.output
    assert "as it was" in result.output
    manifest = json.loads((out / MANIFEST).read_text())
    for rel, rows in manifest["tables"]["flow_runs"]["files"].items():
        path = out / "flow_runs" / rel
        if path.is_file():
            assert pl.read_parquet(path).height == rows, rel
    assert not list((out / TMP_DIR).iterdir() if (out / TMP_DIR).is_dir() else [])


@pytest.mark.parametrize("blocked", [False, True], ids=["exported", "refused"])
def test_an_export_onto_a_file_system_without_hard_links_keeps_the_old_files_by_copy(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocked: bool
) -> None:
    """Where the file system has no hard links (a FUSE mount of object storage, SMB), the
    old files are kept aside by copy: the export works, and one that fails (a folder in the
    way of a partition) still leaves every file its manifest lists as it was."""
    out = tmp_path / "export"
    export(db, out)
    before = json.loads((out / MANIFEST).read_text())["tables"]
    with duckdb.connect(str(db)) as con:  # a run more on the last day: that partition changes
        con.execute(
            "INSERT INTO flow_runs SELECT * REPLACE (uuid() AS id, now() AS synced_at) "
            "FROM flow_runs WHERE expected_start_time IS NOT NULL "
            "ORDER BY expected_start_time DESC LIMIT 1"
        )
    if blocked:
        first = out / "flow_runs" / sorted(before["flow_runs"]["files"])[0]
        first.unlink()
        first.mkdir()

    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    result = run_cli("export", str(out), "--db", str(db), "--quiet")
    manifest = json.loads((out / MANIFEST).read_text())
    if blocked:
        assert result.exit_code == 5, result.output
        assert manifest["tables"] == before
    else:
        assert result.exit_code == 0, result.output
        assert manifest["tables"]["flow_runs"]["rows"] == before["flow_runs"]["rows"] + 1
    for rel, rows in manifest["tables"]["flow_runs"]["files"].items():
        path = out / "flow_runs" / rel
        if path.is_file():
            assert pl.read_parquet(path).height == rows, rel
    assert not (out / TMP_DIR).exists() or not list((out / TMP_DIR).iterdir())


def test_a_full_export_never_deletes_a_file_it_did_not_write(db: Path, tmp_path: Path) -> None:
    """A partition folder the file no longer has was removed whole (``rmtree``), with the
    files a user kept there: only the export's own file goes."""
    out = tmp_path / "export"
    mine = out / "flow_runs" / "date=2020-01-01" / "notes.parquet"
    mine.parent.mkdir(parents=True)
    pl.DataFrame({"note": ["kept by hand"]}).write_parquet(mine)
    export(db, out)
    assert mine.is_file()
    stale = out / "flow_runs" / "date=1999-01-01"  # a partition of the export the file lost
    shutil.copytree(next((out / "flow_runs").glob("date=2026-*")), stale)
    (stale / "README.txt").write_text("a user's note\n")
    summary = export(db, out)
    assert summary["tables"]["flow_runs"]["partitions_removed"] == ["date=1999-01-01"]
    assert mine.is_file() and (stale / "README.txt").is_file()
    assert not (stale / PART_FILE).exists()
    again = export(db, out)  # the folder left holds no partition: nothing more to remove
    assert again["tables"]["flow_runs"]["partitions_removed"] == []
