"""The DuckDB file under faults of its own: versions, damaged snapshots, full or read-only
disks, unwritable WALs, truncated and bit-flipped files, SIGTERM, and locks.

Each fault asserts the exit code, exactly one line on stderr (no traceback),
and, where a pull can follow, the file equal to the server after that pull.
Tests without a server build their file through ``Store`` and ``publish``;
the others pull from the session server (``prefect``, read-only: nothing here
changes its data). Disk faults use small tmpfs mounts (root only; skipped
with the reason elsewhere); WAL and read-only faults use a read-only mount,
which holds even for root where file modes do not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

import flowsync
from flowsync import views
from flowsync.config import ApiSettings
from flowsync.errors import (
    DamagedFileError,
    NewerFileError,
    NewerFileWarning,
    StoreError,
    StoreLockedError,
)
from flowsync.store import Store, migrations, sync_log
from flowsync.store.locks import classify
from flowsync.store.snapshot import CURRENT, publish, snapshot_dir
from harness.seed import seed
from harness.server import Server
from tests.apply_cases import live, pulled_runs
from tests.helpers import SeededServer, query, run_cli, scalar
from tests.policy_db import empty_file
from tests.server_truth import assert_matches_server

# -- helpers -------------------------------------------------------------------------------------

POLICY = """\
version: 1
max_actions: 1000
rules:
  - name: purge-completed
    action: delete
    sql: SELECT id FROM flow_runs WHERE deleted_at IS NULL AND state_type = 'COMPLETED'
"""
UNREACHABLE = "http://127.0.0.1:9/api"  # never reached: every fault here stops the command first


def stderr_lines(result: Any) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def one_line(result: Any, code: int) -> str:
    """The command exited ``code`` with exactly one line on stderr; returns it."""
    lines = stderr_lines(result)
    assert result.exit_code == code, result.output
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def built(folder: Path, runs: int = 2000) -> Path:
    """A file with ``runs`` flow runs and one published snapshot, without a server."""
    db = empty_file(folder / "runs.duckdb")
    with Store.writer(db) as store:
        store.execute(
            "INSERT INTO flow_runs (id, name, state_type, synced_at) "
            "SELECT uuid(), 'run-' || i, 'COMPLETED', now() FROM range(?) r(i)",
            [runs],
        )
        publish(store)
    return db


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def flip_bits(path: Path) -> None:
    """Flip a byte in every 256 KiB block after the headers: DuckDB's checksums catch each."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        for offset in range(12288 + 100, size, 262144):
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))


def add_future_migration(db: Path, version: str = "9.0.0") -> None:
    """What a newer flowsync leaves: a migration this one does not know, a column it added."""
    con = duckdb.connect(str(db))
    try:
        con.execute("INSERT INTO _flowsync_migrations VALUES ('m999_from_the_future', now())")
        con.execute("ALTER TABLE flow_runs ADD COLUMN future_column VARCHAR")
        con.execute("UPDATE flow_runs SET future_column = 'kept'")
        con.execute("UPDATE _flowsync_file SET value = ? WHERE key = 'written_by'", [version])
        con.execute("CHECKPOINT")
    finally:
        con.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs("2m")``: a fresh tmpfs of that size, unmounted afterwards (root only)."""
    mounted: list[Path] = []

    def mount(size: str, options: str = "") -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def remount(point: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True)


# -- 1. versioned files ----------------------------------------------------------------------------


def test_the_file_records_which_flowsync_wrote_it(tmp_path: Path) -> None:
    db = built(tmp_path, runs=1)
    with Store.reader(db, live=True) as store:
        versions = store.file_versions()
    assert versions["written_by"] == flowsync.__version__
    assert versions["schema"] == migrations.MIGRATIONS[-1][0]


def test_a_newer_file_is_never_written_and_read_only_with_one_warning(tmp_path: Path) -> None:
    db = built(tmp_path, runs=50)
    add_future_migration(db)
    before = sha256(db)

    refused = run_cli("pull", "--full", "--api-url", UNREACHABLE, "--db", str(db))
    line = one_line(refused, 5)
    assert "written by flowsync 9.0.0" in line and f"this flowsync {flowsync.__version__}" in line
    assert "Upgrade flowsync" in line and "another --db" in line
    with pytest.raises(NewerFileError) as caught:
        Store.writer(db)
    assert caught.value.written_by == "9.0.0" and caught.value.unknown == ["m999_from_the_future"]
    assert sha256(db) == before and not Path(f"{db}.wal").exists()

    read = run_cli("sql", "SELECT count(future_column) FROM flow_runs", "--live", "--db", str(db))
    assert read.exit_code == 0, read.output
    assert "50" in read.stdout
    (warning,) = stderr_lines(read)
    assert warning.startswith("warning:") and "read-only" in warning and "9.0.0" in warning
    assert sha256(db) == before


def leave_a_wal(db: Path, sql: str) -> None:
    """``sql`` run by a process killed before it checkpointed: the file keeps a write-ahead
    log, which the next read-write open replays into it."""
    code = (
        "import duckdb, os, sys\n"
        "con = duckdb.connect(sys.argv[1])\n"
        "con.execute('CHECKPOINT')\n"
        "con.execute(\"SET checkpoint_threshold = '1GB'\")\n"
        "con.execute(sys.argv[2])\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db), sql], check=True)
    assert Path(f"{db}.wal").exists()


@pytest.mark.parametrize("whose", ["another program's", "a newer flowsync's"])
def test_a_file_with_a_leftover_wal_is_refused_before_the_wal_is_replayed(
    tmp_path: Path, whose: str
) -> None:
    if whose == "a newer flowsync's":
        db = built(tmp_path, runs=5)
        add_future_migration(db)
        leave_a_wal(db, "UPDATE flow_runs SET future_column = 'newer'")
        needle = "written by flowsync 9.0.0"
    else:
        db = tmp_path / "sales.duckdb"
        leave_a_wal(db, "CREATE TABLE sales AS SELECT 1 AS amount")
        needle = "not a flowsync file (it holds table sales)"
    wal = Path(f"{db}.wal")
    before = (sha256(db), sha256(wal))
    for args in (["pull"], ["apply", "p.yaml", "--yes"]):
        if args[0] == "apply":
            (tmp_path / "p.yaml").write_text(POLICY)
            args[1] = str(tmp_path / "p.yaml")
        result = run_cli(*args, "--api-url", UNREACHABLE, "--db", str(db))
        # (apply's plan reads a newer file first, with its warning)
        assert result.exit_code == 5 and needle in stderr_lines(result)[-1], result.output
        assert "Traceback" not in result.output
        assert (sha256(db), sha256(wal)) == before, args


def test_a_leftover_wal_without_its_file_does_not_stop_the_first_pull(tmp_path: Path) -> None:
    """`rm runs.duckdb` after a killed pull leaves its log: the next pull creates the file."""
    db = tmp_path / "runs.duckdb"
    Path(f"{db}.wal").write_bytes(b"")
    with Store.writer(db) as store:
        assert store.applied_migrations() == {name for name, _ in migrations.MIGRATIONS}


def test_a_writer_held_by_another_process_is_explained_as_for_a_writer(tmp_path: Path) -> None:
    """Another process writes the file (its log on disk): the second writer is told about the
    writer that holds it, at once (``wait`` 0), not as a reader of the live file."""
    db = tmp_path / "runs.duckdb"
    code = (
        "import sys, time\n"
        "from flowsync.store import Store\n"
        "s = Store.writer(sys.argv[1])\n"
        "s.execute('UPDATE _flowsync_file SET updated_at = now()')\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"ready"
        assert Path(f"{db}.wal").exists()
        with pytest.raises(StoreLockedError) as raised:
            Store.writer(db)
        said = str(raised.value)
        assert f"(PID {holder.pid}), which blocks writers" in said, said
    finally:
        holder.kill()
        holder.wait()


def test_status_while_a_pull_writes_shows_the_published_snapshot_and_who_writes(
    tmp_path: Path,
) -> None:
    """A long first pull (or any writer) holds the file: status shows what readers see, and
    who writes it, instead of refusing."""
    db = built(tmp_path, runs=30)
    code = (
        "import sys, time\n"
        "from flowsync.store import Store\n"
        "s = Store.writer(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(db), "pull"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"ready"
        said = run_cli("status", "--db", str(db))
        assert said.exit_code == 0, said.output
        assert f"(PID {holder.pid}) is writing the file now" in said.stdout, said.stdout
        assert "30" in said.stdout  # the snapshot's runs
        status = json.loads(run_cli("status", "--db", str(db), "--json").stdout)
        assert status["writing_now"]["pid"] == holder.pid
        assert status["flow_runs"]["live"] == 30
    finally:
        holder.kill()
        holder.wait()
    assert json.loads(run_cli("status", "--db", str(db), "--json").stdout)["writing_now"] is None


def test_a_write_through_a_link_to_the_file_publishes_where_its_readers_look(
    tmp_path: Path,
) -> None:
    """``--db link.duckdb`` (a symbolic link to runs.duckdb): its pull published into
    link.duckdb.snapshots, and readers of runs.duckdb kept seeing the snapshot before."""
    db = built(tmp_path, runs=3)
    link = tmp_path / "link.duckdb"
    link.symlink_to(db.name)
    with Store.writer(link) as store:
        store.execute(
            "INSERT INTO flow_runs (id, name, state_type, synced_at) "
            "SELECT uuid(), 'new', 'COMPLETED', now()"
        )
        publish(store)
    assert not (tmp_path / "link.duckdb.snapshots").exists()
    for path in (db, link):
        assert run_cli(
            "sql", "SELECT count(*) AS n FROM flow_runs", "--db", str(path), "--format", "csv"
        ).stdout.split() == ["n", "4"]


@pytest.mark.parametrize("snapshot", ["truncated", "missing", "older"])
def test_status_while_a_pull_writes_says_who_when_the_snapshot_cannot_be_read(
    tmp_path: Path, snapshot: str
) -> None:
    """The snapshot is damaged, gone, or an older flowsync's (the pull holding the file is
    the one upgrading it): status says who writes the file (exit 6), not the snapshot's
    fault with a remedy that does not apply."""
    db = built(tmp_path, runs=3)
    published = snapshot_dir(db) / os.readlink(snapshot_dir(db) / CURRENT)
    if snapshot == "truncated":
        truncate(published)
    elif snapshot == "missing":
        published.unlink()
    else:
        with duckdb.connect(str(published)) as con:
            con.execute(
                "DELETE FROM _flowsync_migrations WHERE name = ?", [migrations.MIGRATIONS[-1][0]]
            )
        metadata = published.with_suffix(".json")
        held = json.loads(metadata.read_text())
        metadata.write_text(json.dumps({**held, "bytes": published.stat().st_size}))
    holder = _holder(db, "flowsync", "pull")
    try:
        line = one_line(run_cli("status", "--db", str(db)), 6)
        assert one_line(run_cli("status", "--db", str(db), "--json"), 6) == line
    finally:
        holder.kill()
        holder.wait()
    assert f"a running `flowsync pull` (PID {holder.pid})" in line


def test_a_file_whose_first_migration_never_committed_is_taken_up_by_the_next_pull(
    tmp_path: Path,
) -> None:
    """The migrations' record is created before the first migration's transaction: a writer
    killed (or out of disk) inside it leaves only that empty table. Ours, not foreign."""
    db = tmp_path / "runs.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(
            "CREATE TABLE _flowsync_migrations (name VARCHAR PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL)"
        )
    with Store.writer(db) as store:
        assert store.applied_migrations() == {name for name, _ in migrations.MIGRATIONS}


def test_a_writer_killed_inside_a_later_migration_leaves_the_older_schema_to_finish(
    tmp_path: Path,
) -> None:
    """A file of an older flowsync (m001, m002) upgraded by a writer SIGKILLed inside m003,
    after it dropped flow_runs and before the copy took its name: the migration and its
    record commit together, so readers see the older schema (told to pull, not an empty
    history) and the next writer migrates it with every run."""
    db = tmp_path / "runs.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(
            "CREATE TABLE _flowsync_migrations (name VARCHAR PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL)"
        )
        for name, fn in migrations.MIGRATIONS[:2]:
            fn(con)
            con.execute("INSERT INTO _flowsync_migrations VALUES (?, now())", [name])
        con.execute(
            "INSERT INTO flow_runs (id, name, state_type, synced_at) "
            "SELECT uuid(), 'run-' || i, 'COMPLETED', now() FROM range(3000) r(i)"
        )
    code = (
        "import os, sys\n"
        "from flowsync.store import Store, migrations\n"
        "def killed(con):\n"
        "    con.execute('CREATE TABLE flow_runs_m003 AS SELECT * FROM flow_runs; "
        "DROP TABLE flow_runs')\n"
        "    os.kill(os.getpid(), 9)\n"
        "migrations.MIGRATIONS[2] = (migrations.MIGRATIONS[2][0], killed)\n"
        "Store.writer(sys.argv[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(db)], check=False)
    assert done.returncode == -signal.SIGKILL
    line = one_line(run_cli("sql", "SELECT count(*) FROM flow_runs", "--db", str(db)), 5)
    assert "older schema" in line and f"flowsync pull --db {db}" in line
    with Store.writer(db) as store:
        assert store.applied_migrations() == {name for name, _ in migrations.MIGRATIONS}
        assert store.execute("SELECT count(*) FROM flow_runs").scalar() == 3000


@pytest.mark.parametrize(
    ("sql", "held"),
    [
        ("CREATE VIEW sales AS SELECT 1 AS amount", "view sales"),
        ("CREATE SEQUENCE order_ids", "sequence order_ids"),
        ("CREATE MACRO twice(x) AS x * 2", "macro twice"),
        # a table of flowsync's name in another schema is not flowsync's record
        (
            "CREATE SCHEMA staging; CREATE TABLE staging._flowsync_migrations (name VARCHAR)",
            "table staging._flowsync_migrations",
        ),
    ],
)
def test_a_duckdb_file_holding_no_table_but_other_objects_is_not_taken_over(
    tmp_path: Path, sql: str, held: str
) -> None:
    db = tmp_path / "other.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(sql)
    before = sha256(db)
    line = one_line(run_cli("pull", "--api-url", UNREACHABLE, "--db", str(db)), 5)
    assert f"not a flowsync file (it holds {held})" in line
    assert sha256(db) == before


def test_a_snapshot_an_older_flowsync_published_names_the_file_to_pull(tmp_path: Path) -> None:
    """After an upgrade that adds a migration, the snapshot readers open is the older
    flowsync's: the line says to pull the file (--db), not the snapshot's own path."""
    db = built(tmp_path, runs=5)
    snapshot = snapshot_dir(db) / os.readlink(snapshot_dir(db) / CURRENT)
    with duckdb.connect(str(snapshot)) as con:  # as the older flowsync published it
        con.execute(
            "DELETE FROM _flowsync_migrations WHERE name = ?", [migrations.MIGRATIONS[-1][0]]
        )
    metadata = snapshot.with_suffix(".json")
    published = json.loads(metadata.read_text())
    metadata.write_text(json.dumps({**published, "bytes": snapshot.stat().st_size}))
    line = one_line(run_cli("sql", "SELECT 1", "--db", str(db)), 5)
    assert line == (
        f"error: {db}'s published snapshot has an older schema (an older flowsync published "
        f"it); run `flowsync pull --db {db}` once to upgrade the file and publish it again."
    )


@pytest.mark.parametrize("server", ['"3.9.1"', '[{"version": "3.9.1"}]'])
def test_status_reads_a_newer_files_server_record_of_another_shape(
    tmp_path: Path, server: str
) -> None:
    """A newer flowsync may keep the server's record (``sync_state`` ``server``) in another
    shape: status shows the rest, with the newer file's warning, as plan does."""
    db = built(tmp_path, runs=5)
    add_future_migration(db)
    with duckdb.connect(str(db)) as con:
        con.execute("INSERT INTO sync_state VALUES ('server', CAST(? AS JSON), now())", [server])
    for args in ([], ["--json"]):
        result = run_cli("status", "--db", str(db), *args)
        assert result.exit_code == 0, result.output
        (warning,) = stderr_lines(result)
        assert "written by flowsync 9.0.0" in warning
    assert json.loads(result.stdout)["server"] is None


def test_apply_on_a_newer_file_refuses_before_it_asks(tmp_path: Path) -> None:
    """apply refuses a newer flowsync's file before its plan reads it (no reading warning)
    and before its question, as its writer would after them."""
    from flowsync.config import ApiSettings

    db = built(tmp_path, runs=5)
    add_future_migration(db)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    asked: list[int] = []

    def confirm(plan: Any) -> bool:
        asked.append(plan.total)
        return True

    with warnings.catch_warnings():
        warnings.simplefilter("error", NewerFileWarning)
        with pytest.raises(NewerFileError):
            flowsync.apply(db, policy, api=ApiSettings(url=UNREACHABLE), confirm=confirm)
    assert asked == []


@pytest.mark.parametrize(
    "command",
    [["apply", "POLICY", "--yes"], ["plan", "POLICY", "--refresh"]],
    ids=["apply", "plan --refresh"],
)
def test_a_writer_command_on_a_newer_file_refuses_in_one_line_without_a_reading_warning(
    tmp_path: Path, command: list[str]
) -> None:
    """apply and plan --refresh read the file first (the plan, the runs to re-read), then
    write it: on a newer file they said 'reads it read-only' and then that they will not
    write it. The refusal alone, before any read, as pull's."""
    db = built(tmp_path, runs=5)
    add_future_migration(db)
    before = sha256(db)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    args = [str(policy) if a == "POLICY" else a for a in command]
    line = one_line(run_cli(*args, "--api-url", UNREACHABLE, "--db", str(db)), 5)
    assert line.startswith("error:") and "written by flowsync 9.0.0" in line
    assert "Upgrade flowsync" in line
    assert sha256(db) == before


def test_a_notebook_reading_a_newer_file_gets_a_warning_and_cannot_write_it(
    tmp_path: Path,
) -> None:
    db = built(tmp_path, runs=3)
    add_future_migration(db)
    with pytest.warns(NewerFileWarning, match="9.0.0"):
        con = flowsync.connect(db, live=True)
    try:
        assert con.execute("SELECT count(future_column) FROM flow_runs").fetchone() == (3,)
    finally:
        con.close()
    with pytest.raises(NewerFileError):
        flowsync.connect(db, read_only=False)


def test_a_newer_file_whose_tables_changed_fails_each_reader_saying_to_upgrade(
    tmp_path: Path,
) -> None:
    """A newer flowsync's migration renamed or dropped a column this flowsync reads (m003
    rebuilt a table; a later one may do more): each reader says the file is newer and to
    upgrade, not DuckDB's binder error on flowsync's own SQL alone; nothing changes."""
    db = built(tmp_path, runs=5)
    add_future_migration(db)
    with duckdb.connect(str(db)) as con:
        con.execute("ALTER TABLE sync_runs RENAME COLUMN api_url TO source_url")
        con.execute("ALTER TABLE flow_runs DROP COLUMN state_name")
    published = snapshot_dir(db) / os.readlink(snapshot_dir(db) / CURRENT)
    shutil.copyfile(db, published)  # as the newer flowsync publishes it
    meta = published.with_suffix(".json")
    meta.write_text(
        json.dumps(
            {
                **json.loads(meta.read_text()),
                "bytes": published.stat().st_size,
                "flowsync_version": "9.0.0",
            }
        )
    )
    before = (sha256(db), sha256(published))
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    for command in (
        ["status"],
        ["report", "failures"],
        ["report", "runs", "--live"],
        ["export", str(tmp_path / "out")],
        ["plan", str(policy)],
    ):
        result = run_cli(*command, "--db", str(db))
        assert result.exit_code == 5, (command, result.output)
        assert "Traceback" not in result.output
        (line,) = [x for x in stderr_lines(result) if x.startswith("error:")]
        assert "was written by flowsync 9.0.0" in line, (command, line)
        assert f"newer than this flowsync {flowsync.__version__}" in line, (command, line)
        assert "upgrade flowsync (pip install -U flowsync)" in line, (command, line)
    assert (sha256(db), sha256(published)) == before


def test_a_snapshot_from_a_newer_flowsync_is_read_with_one_warning(tmp_path: Path) -> None:
    db = built(tmp_path, runs=5)
    published = snapshot_dir(db) / os.readlink(snapshot_dir(db) / CURRENT)
    add_future_migration(published)  # as a newer flowsync publishes it, with its metadata:
    meta = published.with_suffix(".json")
    info = json.loads(meta.read_text())
    meta.write_text(
        json.dumps({**info, "bytes": published.stat().st_size, "flowsync_version": "9.0.0"})
    )
    read = run_cli("sql", "SELECT count(future_column) FROM flow_runs", "--db", str(db))
    assert read.exit_code == 0, read.output
    (warning,) = stderr_lines(read)
    assert str(published) in warning and "9.0.0" in warning


@pytest.mark.parametrize("output", [["--format", "openmetrics"], ["--html", "HTML"]])
def test_the_health_figures_of_a_newer_file_warn_once(tmp_path: Path, output: list[str]) -> None:
    """health reads the snapshot, and the live file for one figure (when the last pull
    finished): a newer file's warning came twice, once per path, into cron's mail."""
    db = built(tmp_path, runs=5)
    with Store.writer(db) as store:
        views.rebuild(store)
    add_future_migration(db)
    published = snapshot_dir(db) / os.readlink(snapshot_dir(db) / CURRENT)
    shutil.copyfile(db, published)  # as the newer flowsync publishes it
    meta = published.with_suffix(".json")
    info = json.loads(meta.read_text())
    meta.write_text(
        json.dumps({**info, "bytes": published.stat().st_size, "flowsync_version": "9.0.0"})
    )
    args = [str(tmp_path / "health.html") if a == "HTML" else a for a in output]
    result = run_cli("report", "health", *args, "--db", str(db))
    assert result.exit_code == 0, result.output
    warnings_shown = [x for x in stderr_lines(result) if x.startswith("warning:")]
    assert len(warnings_shown) == 1, warnings_shown
    assert str(published) in warnings_shown[0] and "9.0.0" in warnings_shown[0]


# -- 2. snapshots that cannot be confused ----------------------------------------------------------


def test_a_file_where_the_snapshot_folder_goes_is_named_not_the_disk(tmp_path: Path) -> None:
    """``runs.duckdb.snapshots`` a file: publishing said 'File exists ... free disk space or
    fix permissions', a remedy that never helps; it names the file and says to move it."""
    db = tmp_path / "runs.duckdb"
    folder = snapshot_dir(db)
    folder.write_text("notes\n")
    with Store.writer(db) as store, pytest.raises(StoreError) as caught:
        publish(store)
    assert str(caught.value) == (
        f"Cannot publish a snapshot of {db}: {folder} is a file, not its snapshot folder. What "
        "the pull or apply wrote is saved; move that file away, then pull again."
    )
    assert folder.read_text() == "notes\n"


def test_generations_never_repeat_so_a_notebook_never_gets_an_old_view(tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    count = "SELECT count(*) FROM flows"
    with Store.writer(db) as store:
        store.execute("INSERT INTO flows (id, name, synced_at) VALUES (uuid(), 'a', now())")
        first = publish(store).snapshot
        notebook = flowsync.connect(db)  # a long-lived kernel keeps this open
        assert notebook.execute(count).fetchone() == (1,)
        shutil.rmtree(snapshot_dir(db))  # someone cleans up
        store.execute("INSERT INTO flows (id, name, synced_at) VALUES (uuid(), 'b', now())")
        second = publish(store).snapshot
    assert second.generation > first.generation and second.path != first.path
    fresh = flowsync.connect(db)  # same process: DuckDB's per-path cache must not answer
    try:
        assert fresh.execute(count).fetchone() == (2,)
        assert notebook.execute(count).fetchone() == (1,)  # its own view, as documented
    finally:
        fresh.close()
        notebook.close()


def _damage_pointer(db: Path, kind: str) -> None:
    folder = snapshot_dir(db)
    pointer = folder / CURRENT
    target = folder / os.readlink(pointer)
    if kind == "file":
        pointer.unlink()
        pointer.write_text("00000001.duckdb\n")
    elif kind == "directory":
        pointer.unlink()
        pointer.mkdir()
    elif kind == "dangling":
        target.unlink()
    elif kind == "truncated":
        truncate(target)


@pytest.mark.parametrize("kind", ["file", "directory", "dangling", "truncated"])
def test_a_damaged_current_is_reported_to_readers_and_rebuilt_by_the_next_writer(
    tmp_path: Path, kind: str
) -> None:
    db = built(tmp_path, runs=20)
    _damage_pointer(db, kind)
    refused = run_cli("sql", "SELECT count(*) FROM flow_runs", "--db", str(db))
    line = one_line(refused, 5)
    assert "snapshot" in line and "damaged" in line and f"flowsync pull --db {db}" in line
    assert "--live" in line and "changed 5 times" not in line
    with pytest.raises(DamagedFileError):
        flowsync.connect(db)
    status = run_cli("status", "--db", str(db))  # reads the live file: reports, never fails
    assert status.exit_code == 0 and "readers cannot open the snapshot" in status.stdout

    with Store.writer(db) as store:  # a writer that changed nothing (a no-change pull)
        result = publish(store, changed=False)
    assert result.published and "damaged" in result.reason
    read = run_cli("sql", "SELECT count(*) FROM flow_runs", "--db", str(db), "--format", "csv")
    assert read.exit_code == 0, read.output
    assert read.stdout.splitlines()[-1] == "20"


@pytest.mark.parametrize(
    "metadata", ["null", "[]", '{"generation": null}', '{"generation": 1, "published_at": 5}']
)
def test_a_snapshots_metadata_of_another_shape_is_passed_over(
    tmp_path: Path, metadata: str
) -> None:
    """The ``.json`` beside a generation is a convenience (another flowsync may write another
    shape): readers read the generation, and the next pull publishes as usual."""
    db = built(tmp_path, runs=20)
    (generation,) = snapshot_dir(db).glob("*.json")
    generation.write_text(metadata)
    read = run_cli("sql", "SELECT count(*) FROM flow_runs", "--db", str(db), "--format", "csv")
    assert read.exit_code == 0, read.output
    assert read.stdout.splitlines()[-1] == "20"
    assert run_cli("status", "--db", str(db)).exit_code == 0
    with Store.writer(db) as store:
        store.execute("UPDATE flow_runs SET name = 'renamed' WHERE name = 'run-1'")
        assert publish(store).published
    renamed = "SELECT count(*) FROM flow_runs WHERE name = 'renamed'"
    assert (
        run_cli("sql", renamed, "--db", str(db), "--format", "csv").stdout.splitlines()[-1] == "1"
    )


# -- 5. lock messages that fit the command and the holder -----------------------------------------


def _holder(db: Path, *argv: str, hold: float = 60) -> subprocess.Popen[str]:
    """A real process holding ``db`` for ``hold`` seconds, whose command line reads ``argv``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ok', flush=True); "
            f"time.sleep({hold}); c.close(); time.sleep(60)",
            str(db),
            *argv,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
    return proc


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["apply", "POLICY", "--yes", "--api-url", UNREACHABLE],
        ["plan", "POLICY", "--refresh", "--api-url", UNREACHABLE],
    ],
)
def test_commands_without_live_are_never_told_to_drop_it(
    tmp_path: Path, command: list[str]
) -> None:
    db = built(tmp_path, runs=1)
    if command == ["status"]:  # (with a snapshot, status shows it instead: see above)
        shutil.rmtree(snapshot_dir(db))
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    holder = _holder(db, "flowsync", "pull")
    try:
        args = [str(policy) if a == "POLICY" else a for a in command]
        line = one_line(run_cli(*args, "--db", str(db)), 6)
    finally:
        holder.kill()
        holder.wait()
    assert f"a running `flowsync pull` (PID {holder.pid})" in line
    assert "--live" not in line and "--wait" in line


def test_a_reader_that_fell_back_to_the_live_file_is_not_said_to_use_live(
    tmp_path: Path,
) -> None:
    db = built(tmp_path, runs=1)
    shutil.rmtree(snapshot_dir(db))  # readers now read the live file
    holder = _holder(db, "flowsync", "sql", "SELECT 1")
    try:
        line = one_line(run_cli("pull", "--api-url", UNREACHABLE, "--db", str(db)), 6)
    finally:
        holder.kill()
        holder.wait()
    assert f"`flowsync sql` (PID {holder.pid})" in line
    assert "no published snapshot" in line and "--live" not in line


@pytest.mark.parametrize("command", [["status"], ["report", "health"]])
def test_a_pull_waits_a_moment_for_a_reader_of_the_live_files_last_pull(
    tmp_path: Path, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``status`` and a report's last-pull time (a Prometheus textfile job beside the scheduled
    pull) hold the live file for one query: a pull meeting one (no --wait) failed with exit 6,
    told the snapshot folder was missing. It waits a moment for it; a holder that keeps the
    file past that is named with what it does."""
    from flowsync.store import locks

    monkeypatch.setattr(locks, "BRIEF_HOLD_GRACE", 1.5)  # (3 s: a test need not wait it)
    db = built(tmp_path, runs=1)
    holder = _holder(db, "flowsync", *command, hold=0.5)
    try:
        with Store.writer(db) as store:
            assert store.execute("SELECT count(*) FROM flow_runs").scalar() == 1
    finally:
        holder.kill()
        holder.wait()
    holder = _holder(db, "flowsync", *command)
    try:
        line = one_line(run_cli("pull", "--api-url", UNREACHABLE, "--db", str(db)), 6)
    finally:
        holder.kill()
        holder.wait()
    assert f"`flowsync {command[0]}` (PID {holder.pid})" in line, line
    assert "reads the live file (the last pull's record" in line, line
    assert "snapshot folder" not in line, line


def test_plan_refresh_is_a_writer_and_other_plans_are_readers() -> None:
    assert classify(["/venv/bin/flowsync", "plan", "p.yaml", "--refresh"]) == (
        "plan",
        "flowsync plan --refresh",
    )
    assert classify(["/venv/bin/flowsync", "plan", "p.yaml"])[0] == "reader"


def test_a_live_reader_is_named_as_one(tmp_path: Path) -> None:
    db = built(tmp_path, runs=1)
    holder = _holder(db, "flowsync", "report", "failures", "--live")
    try:
        line = one_line(run_cli("pull", "--api-url", UNREACHABLE, "--db", str(db)), 6)
    finally:
        holder.kill()
        holder.wait()
    assert "reading it with --live" in line and "without --live" in line


# -- 3 and 6. an unreadable file: one line, exit 5, the remedy, for every command ------------------

COMMANDS = {
    "pull": ["pull", "--api-url", UNREACHABLE],
    "sql": ["sql", "SELECT count(*) FROM flow_runs", "--live"],
    "report": ["report", "failures", "--live"],
    "status": ["status"],
    "export": ["export", "--format", "parquet", "OUT", "--live"],
    "plan": ["plan", "POLICY", "--live"],
    "apply": ["apply", "POLICY", "--yes", "--api-url", UNREACHABLE],
}


def each_command_on(
    db: Path, tmp_path: Path, commands: dict[str, list[str]], code: int
) -> Iterator[tuple[str, str]]:
    """Each command run on ``db`` (POLICY: a policy file, OUT: a folder in ``tmp_path``),
    with the one line it must end in with exit ``code``."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    for name, command in commands.items():
        args = [
            str(policy) if a == "POLICY" else str(tmp_path / "out") if a == "OUT" else a
            for a in command
        ]
        yield name, one_line(run_cli(*args, "--db", str(db)), code)


@pytest.mark.parametrize("damage", [truncate, flip_bits], ids=["truncated", "bit-flipped"])
def test_a_damaged_file_is_exit_5_with_the_remedy_for_every_command(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    db = built(tmp_path)
    snapshot = snapshot_dir(db) / os.readlink(snapshot_dir(db) / CURRENT)
    damage(db)
    for name, line in each_command_on(db, tmp_path, COMMANDS, 5):
        assert f"{db} is damaged" in line, (name, line)
        assert f"restore it from the last snapshot (cp {snapshot} {db})" in line, (name, line)
        assert f"flowsync pull --db {db}" in line, (name, line)
    # The snapshot readers use by default is intact: they go on working.
    read = run_cli("sql", "SELECT count(*) FROM flow_runs", "--db", str(db), "--format", "csv")
    assert read.exit_code == 0 and read.stdout.splitlines()[-1] == "2000", read.output


def stamp_storage_version(path: Path, version: int) -> None:
    """Give the file's header another storage version, as a DuckDB of another storage
    format writes it: the main header's version number, its checksum recomputed as DuckDB
    computes it (each 8-byte word times a constant, XORed, seeded with 5381)."""
    mask = (1 << 64) - 1
    with path.open("r+b") as f:
        header = bytearray(f.read(4096))
        header[12:20] = version.to_bytes(8, "little")
        checksum = 5381
        for i in range(8, 4096, 8):
            checksum ^= (int.from_bytes(header[i : i + 8], "little") * 0xBF58476D1CE4E5B9) & mask
        header[0:8] = checksum.to_bytes(8, "little")
        f.seek(0)
        f.write(header)


@pytest.mark.parametrize("where", ["the live file", "the published snapshot"])
def test_a_file_from_a_newer_duckdb_says_to_upgrade_for_every_command_and_stays_unchanged(
    tmp_path: Path, where: str
) -> None:
    """A flowsync whose DuckDB writes a newer storage format: every command refuses in one
    line naming the file and the upgrade, not DuckDB's 'storage version' alone, nor
    'damaged' (a pull again would not help)."""
    db = built(tmp_path, runs=5)
    newer = (
        db
        if where == "the live file"
        else snapshot_dir(db) / os.readlink(snapshot_dir(db) / CURRENT)
    )
    stamp_storage_version(newer, 1000)
    if newer != db:
        meta = newer.with_suffix(".json")
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "bytes": newer.stat().st_size}))
    before = {p: sha256(p) for p in (db, newer)}
    commands = (
        COMMANDS
        if newer == db
        else {
            "sql": ["sql", "SELECT 1"],
            "report": ["report", "failures"],
            "plan": ["plan", "POLICY"],
        }
    )
    for name, line in each_command_on(db, tmp_path, commands, 5):
        assert f"{newer} was written by a newer DuckDB" in line, (name, line)
        assert f"this flowsync's DuckDB {duckdb.__version__}" in line, (name, line)
        assert "upgrade flowsync and duckdb" in line and "damaged" not in line, (name, line)
    assert {p: sha256(p) for p in (db, newer)} == before


def test_a_file_whose_own_bookkeeping_has_another_shape_is_one_line_for_every_command(
    tmp_path: Path,
) -> None:
    """flowsync's migration record with a column renamed (a newer flowsync's, or a hand's):
    every command said DuckDB's four-line binder error. Now one line naming the file and
    what to do, exit 5, and the file unchanged."""
    db = built(tmp_path, runs=5)
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE _flowsync_migrations RENAME COLUMN name TO migration")
    con.close()
    before = sha256(db)
    for name, line in each_command_on(db, tmp_path, COMMANDS, 5):
        assert f"{db}: flowsync's own bookkeeping in it is of a shape" in line, (name, line)
        assert "upgrade flowsync, or use another --db" in line, (name, line)
    assert sha256(db) == before


# -- against the session server: the fault, its one line, then the next pull matches the server ---


def pull_cli(url: str, db: Path, *extra: str) -> Any:
    return run_cli("pull", "--api-url", url, "--db", str(db), "--quiet", *extra)


def test_pull_full_by_an_older_flowsync_leaves_a_newer_file_untouched(
    prefect: SeededServer, tmp_path: Path
) -> None:
    db = tmp_path / "runs.duckdb"
    assert pull_cli(prefect.url, db).exit_code == 0
    add_future_migration(db)
    before, rows = sha256(db), query(db, "SELECT * FROM flow_runs ORDER BY id")
    line = one_line(pull_cli(prefect.url, db, "--full"), 5)
    assert "written by flowsync 9.0.0" in line
    assert sha256(db) == before and query(db, "SELECT * FROM flow_runs ORDER BY id") == rows
    assert scalar(db, "SELECT count(*) FROM flow_runs WHERE future_column = 'kept'") == len(rows)


def in_another_shape(db: Path, key: str, version: str = "9.0.0") -> None:
    """What a newer flowsync may leave at the same schema: ``sync_state`` ``key`` kept in
    another shape (a value, not a migration), the file saying that version wrote it."""
    with duckdb.connect(str(db)) as con:
        (old,) = con.execute("SELECT value FROM sync_state WHERE key = ?", [key]).fetchone() or (
            None,
        )
        value = json.dumps([{"format": 2}, json.loads(old) if old else None])
        con.execute(
            "INSERT INTO sync_state VALUES (?, CAST(? AS JSON), now()) ON CONFLICT (key) "
            "DO UPDATE SET value = excluded.value",
            [key, value],
        )
        con.execute("UPDATE _flowsync_file SET value = ? WHERE key = 'written_by'", [version])


def test_a_pull_on_a_file_whose_state_a_newer_flowsync_keeps_in_another_shape_refuses_in_one_line(
    prefect: SeededServer, tmp_path: Path
) -> None:
    """A newer flowsync may keep a cursor, a counter or a full pass in ``sync_state`` in
    another shape with no migration (a value, as an audit outcome is): an older pull read
    it as its own and stopped with a Python traceback deep inside the pull (after its
    record was written), or wrote its own value over the newer one's. It refuses in one
    line naming the value and the version, before it writes anything."""
    pulled = tmp_path / "pulled.duckdb"
    assert pull_cli(prefect.url, pulled).exit_code == 0
    # every value a pull leaves has its shape checked, or is read around another shape
    around = {"server", "flow_runs.rescheduled_looked", "run_retention"}
    left = {k for (k,) in query(pulled, "SELECT key FROM sync_state")}
    assert left - around <= set(sync_log.STATE_SHAPES), left - around - set(sync_log.STATE_SHAPES)
    # ...and each of them, and a full pass a newer flowsync left to resume, is refused
    for key in sorted(left - around | {"flow_runs.full_pass"}):
        db = tmp_path / f"{key}.duckdb"
        shutil.copyfile(pulled, db)
        in_another_shape(db, key)
        before = [query(db, f"SELECT * FROM {t} ORDER BY ALL") for t in ("sync_state", "sync_runs")]
        line = one_line(pull_cli(prefect.url, db), 5)
        assert f"sync_state {key!r}" in line and "flowsync 9.0.0, which wrote the file" in line, (
            line
        )
        assert "Upgrade flowsync" in line and "another --db" in line, line
        after = [query(db, f"SELECT * FROM {t} ORDER BY ALL") for t in ("sync_state", "sync_runs")]
        assert after == before, key


def test_readers_of_a_file_whose_state_a_newer_flowsync_keeps_in_another_shape_show_the_rest(
    tmp_path: Path,
) -> None:
    """Readers read a newer flowsync's file, every ``sync_state`` value of ``STATE_SHAPES`` in
    another shape at once (the server's URL an object, its moves a number...): `status` crashed
    with a traceback on the URL, `export` on the moves, or wrote a Python repr as the URL
    into its manifest. Each reads what it can: exit 0, no traceback, a value it cannot read
    taken as unknown, the file unchanged."""
    from harness.built import build

    db = build(tmp_path / "runs.duckdb", days=6).path
    with duckdb.connect(str(db)) as con:
        for key, check in sync_log.STATE_SHAPES.items():
            value = next(v for v in ([{"format": 2}], 5, {"url": "x"}) if check(v) is not None)
            con.execute(
                "INSERT INTO sync_state VALUES (?, CAST(? AS JSON), now()) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value",
                [key, json.dumps(value)],
            )
        con.execute("UPDATE _flowsync_file SET value = '9.0.0' WHERE key = 'written_by'")
    before = sha256(db)
    out = tmp_path / "export"
    for args in (
        ["status"],
        ["status", "--json"],
        ["sql", "SELECT count(*) FROM flow_runs", "--live"],
        ["report", "failures", "--live"],
        ["export", str(out), "--live"],
    ):
        result = run_cli(*args, "--db", str(db))
        assert result.exit_code == 0 and "Traceback" not in result.output, (args, result.output)
    assert sha256(db) == before
    # the URL the export names: the last pull's (sync_runs), not the value it cannot read
    manifest = json.loads((out / "_flowsync_manifest.json").read_text())
    last_pull = scalar(db, "SELECT api_url FROM sync_runs ORDER BY id DESC LIMIT 1")
    assert manifest["source"]["api_url"] == last_pull and last_pull.startswith("http")


def test_apply_on_a_file_whose_state_a_newer_flowsync_keeps_in_another_shape_sends_nothing(
    fresh_server: Server, tmp_path: Path
) -> None:
    """apply publishes the readers' snapshot after its calls, numbering it from
    ``snapshot_generation``: kept in another shape by a newer flowsync, the older apply
    deleted the runs, then stopped with a traceback and no snapshot. It refuses before the
    question, as for a newer schema: no call, no audit row, the runs still on the server."""
    with pulled_runs(fresh_server, tmp_path, 2, "COMPLETED", "shape") as (ids, db, policy):
        in_another_shape(db, "snapshot_generation")
        asked: list[int] = []

        def confirm(plan: Any) -> bool:
            asked.append(plan.total)
            return True

        with pytest.raises(StoreError) as refused:
            flowsync.apply(db, policy, api=ApiSettings(url=fresh_server.url), confirm=confirm)
        assert "sync_state 'snapshot_generation'" in str(refused.value)
        assert asked == []
        assert set(live(fresh_server, ids)) == set(ids)
        assert scalar(db, "SELECT count(*) FROM policy_actions") == 0
        line = one_line(
            run_cli("apply", str(policy), "--yes", "--api-url", fresh_server.url, "--db", str(db)),
            5,
        )
        assert "sync_state 'snapshot_generation'" in line and "Upgrade flowsync" in line
        assert set(live(fresh_server, ids)) == set(ids)


def test_a_no_change_pull_replaces_a_truncated_current_snapshot(
    prefect: SeededServer, tmp_path: Path
) -> None:
    db = tmp_path / "runs.duckdb"
    assert pull_cli(prefect.url, db).exit_code == 0
    _damage_pointer(db, "truncated")
    one_line(run_cli("sql", "SELECT count(*) FROM flow_runs", "--db", str(db)), 5)
    assert pull_cli(prefect.url, db).exit_code == 0  # nothing changed on the server
    read = run_cli("sql", "SELECT count(*) FROM flow_runs", "--db", str(db), "--format", "csv")
    assert read.exit_code == 0, read.output
    assert_matches_server(db, prefect.url)


@pytest.mark.parametrize("damage", [truncate, flip_bits], ids=["truncated", "bit-flipped"])
def test_a_damaged_file_restored_from_its_snapshot_then_pulled_matches_the_server(
    prefect: SeededServer, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    db = tmp_path / "runs.duckdb"
    assert pull_cli(prefect.url, db).exit_code == 0
    snapshot = snapshot_dir(db) / os.readlink(snapshot_dir(db) / CURRENT)
    damage(db)
    line = one_line(pull_cli(prefect.url, db), 5)
    assert f"cp {snapshot} {db}" in line
    shutil.copyfile(snapshot, db)  # the remedy the line names
    assert pull_cli(prefect.url, db).exit_code == 0
    assert_matches_server(db, prefect.url)


# Fractions of a full pull's file size: full at open, mid-pull (twice), at the snapshot copy,
# and room for everything.
DISK_SIZES = [0.05, 0.4, 0.8, 1.3, 3.0]


@pytest.mark.parametrize("fraction", DISK_SIZES)
def test_a_full_disk_is_one_line_exit_5_recorded_and_the_next_pull_matches(
    prefect: SeededServer,
    tmp_path: Path,
    tmpfs: Callable[[str], Path],
    fraction: float,
) -> None:
    reference = tmp_path / "reference.duckdb"
    assert pull_cli(prefect.url, reference).exit_code == 0
    size = max(int(reference.stat().st_size * fraction) // 4096 * 4096, 4096)
    disk = tmpfs(str(size))
    db = disk / "runs.duckdb"
    result = pull_cli(prefect.url, db)
    assert (result.exit_code == 0) == (fraction >= 3), result.output  # each size below fails
    if result.exit_code != 0:
        line = one_line(result, 5)
        assert "No space left on device" in line, line
        assert "Free disk space" in line or "free disk space" in line, line
        if db.exists() and db.stat().st_size > 0:
            try:
                last = query(db, "SELECT status, error FROM sync_runs ORDER BY id DESC LIMIT 1")
            except duckdb.Error:
                last = []  # full before the file had its schema
            for status, error in last:
                # failed with the disk's words, or ok when only the publish after it failed
                assert status in {"failed", "ok"}, (status, error)
                if status == "failed":
                    assert "No space left on device" in error
                else:
                    assert "What the pull or apply wrote is saved" in line
    remount(disk, "size=256m")
    again = pull_cli(prefect.url, db)
    assert again.exit_code == 0, again.output
    assert_matches_server(db, prefect.url)


def test_a_read_only_mount_refuses_writers_in_one_line_and_readers_go_on(
    prefect: SeededServer, tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    disk = tmpfs("64m")
    db = disk / "runs.duckdb"
    assert pull_cli(prefect.url, db).exit_code == 0
    remount(disk, "ro")
    line = one_line(pull_cli(prefect.url, db), 5)
    assert "read-only" in line and "Remount it read-write" in line
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    applied = run_cli("apply", str(policy), "--yes", "--api-url", prefect.url, "--db", str(db))
    assert "read-only" in one_line(applied, 5)
    for reader in (
        ["sql", "SELECT count(*) FROM flow_runs"],
        ["sql", "SELECT count(*) FROM flow_runs", "--live"],
        ["status"],
        ["report", "failures"],
        ["export", "--format", "parquet", str(tmp_path / "out"), "--quiet"],
    ):
        read = run_cli(*reader, "--db", str(db))
        assert read.exit_code == 0 and not read.stderr.strip(), (reader, read.output)
    remount(disk, "rw")
    assert pull_cli(prefect.url, db).exit_code == 0
    assert_matches_server(db, prefect.url)


def test_an_unwritable_wal_is_one_line_exit_5(
    prefect: SeededServer, tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    db = tmp_path / "runs.duckdb"
    assert pull_cli(prefect.url, db).exit_code == 0
    readonly = tmpfs("1m")
    remount(readonly, "ro")
    wal = Path(f"{db}.wal")
    wal.symlink_to(readonly / "runs.duckdb.wal")  # the WAL can be neither created nor written
    line = one_line(pull_cli(prefect.url, db, "--full"), 5)
    assert "runs.duckdb.wal" in line and "read-only" in line
    wal.unlink()
    assert pull_cli(prefect.url, db).exit_code == 0
    assert_matches_server(db, prefect.url)


# A pull that stops right after committing its first page of runs, until a signal comes.
PAUSED_PULL = """
import signal, sys
from flowsync.sync import context
original = context.PullContext.write_pages
def write_pages(self, spec, pages, state=None):
    n = original(self, spec, pages, state)
    if spec.name == "flow_runs":
        print("committed", flush=True)
        signal.pause()  # until the test's SIGTERM
    return n
context.PullContext.write_pages = write_pages
from flowsync.cli import app
app(sys.argv[1:], prog_name="flowsync")
"""


def test_sigterm_keeps_committed_runs_records_the_signal_and_exits_143(
    prefect: SeededServer, tmp_path: Path
) -> None:
    db = tmp_path / "runs.duckdb"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PAUSED_PULL,
            "pull",
            "--db",
            str(db),
            "--quiet",
            "--concurrency",
            "1",
        ],
        env={**os.environ, "PREFECT_API_URL": prefect.url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "committed"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted (SIGTERM)" in lines[0], stderr
    assert "what was committed is kept" in lines[0]
    assert scalar(db, "SELECT count(*) FROM flow_runs") > 0  # the committed page
    status, error = query(db, "SELECT status, error FROM sync_runs ORDER BY id DESC LIMIT 1")[0]
    assert status == "interrupted" and "SIGTERM" in error
    assert pull_cli(prefect.url, db).exit_code == 0
    assert_matches_server(db, prefect.url)


# A command that says when it is inside a DuckDB statement that runs for a second or two:
# the test's SIGTERM lands in DuckDB, which turns it into its own "Query interrupted" (when
# DuckDB looks for signals in time: it does not always, and the statement then ends on its
# own and the signal is met in Python, with the same outcome).
IN_A_STATEMENT = """
import sys
from flowsync.store import parquet, session
LONG = "SELECT count(*) AS n FROM range(400000000) t(i) WHERE i % 7 = 3"
def started():
    print("in a statement", flush=True)
typed_frame = session.Session.typed_frame
def slow_frame(self, sql, params=None):
    started()
    return typed_frame(self, LONG)
session.Session.typed_frame = slow_frame
write = parquet._write
def slow_write(store, sql, params, dest):
    started()
    return write(store, LONG, [], dest)
parquet._write = slow_write
from flowsync.cli import app
app(sys.argv[1:], prog_name="flowsync")
"""


@pytest.mark.parametrize("command", ["sql", "export"])
def test_sigterm_inside_a_duckdb_statement_is_one_line_and_exits_143(
    command: str, tmp_path: Path
) -> None:
    """systemd stops a command mid-statement: DuckDB hides the signal (its "Query
    interrupted"), which must still read as SIGTERM with 143, in one line, not as a Ctrl-C
    (130) or a traceback (export wrote through DuckDB unguarded)."""
    db = built(tmp_path, runs=10)
    out = tmp_path / "out"
    args = {"sql": ["sql", "SELECT 1"], "export": ["export", str(out)]}[command]
    proc = subprocess.Popen(
        [sys.executable, "-c", IN_A_STATEMENT, *args, "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "in a statement"
    time.sleep(0.5)  # inside: the statement runs for seconds
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted (SIGTERM)" in lines[0], stderr
    if command == "export":
        assert not [p for p in out.rglob("*") if p.is_file()]  # no part file, no temp file


def test_apply_whose_publish_fails_shows_its_summary_then_one_error(
    fresh_server: Server, tmp_path: Path
) -> None:
    url, db = fresh_server.url, tmp_path / "runs.duckdb"
    seed(url, runs=12, flows=1, deployments_per_flow=1, seed_value=20)
    assert pull_cli(url, db).exit_code == 0
    shutil.rmtree(snapshot_dir(db))
    snapshot_dir(db).write_text("in the way\n")  # publishing after the calls fails
    policy = tmp_path / "purge.yaml"
    policy.write_text(POLICY.replace("AND state_type = 'COMPLETED'", ""))
    applied = run_cli("apply", str(policy), "--yes", "--api-url", url, "--db", str(db))
    assert applied.exit_code == 5, applied.output
    lines = stderr_lines(applied)
    assert any(line.startswith("success: 12 done") for line in lines), applied.stderr
    assert (
        lines[-1].startswith("error: Cannot publish a snapshot")
        and "Traceback" not in applied.output
    )
    snapshot_dir(db).unlink()
    assert pull_cli(url, db).exit_code == 0
    assert_matches_server(db, url)
