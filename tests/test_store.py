"""The column specs (``store/tables.py``) agree with the DDL the migrations create.

A pull writes what the specs say; the tables are created by the migrations. A
column added to one and not the other would fail on the first pull that meets
it, so this compares them on a freshly migrated file: same columns, same types.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flowsync.errors import QueryError, StoreLockedError
from flowsync.store import Store
from flowsync.store.tables import SQL_TYPES, TABLES

# Columns the store adds to every synced table; they do not come from the API.
BOOKKEEPING = {
    "extra": "JSON",
    "synced_at": "TIMESTAMPTZ",
    "seen_pull": "BIGINT",
    "deleted_at": "TIMESTAMPTZ",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    path: Path = tmp_path_factory.mktemp("store") / "flowsync.duckdb"
    with Store.writer(path) as opened:
        yield opened


def _normalised(store: Store, sql_type: str) -> str:
    """DuckDB's own name for a type (``TIMESTAMPTZ`` is ``TIMESTAMP WITH TIME ZONE``)."""
    return str(store.execute(f"SELECT typeof(CAST(NULL AS {sql_type}))").scalar())


@pytest.mark.parametrize("table", sorted(TABLES))
def test_column_specs_match_the_ddl(store: Store, table: str) -> None:
    ddl = dict(
        store.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = ? AND table_schema = 'main' ORDER BY ordinal_position",
            [table],
        ).rows()
    )
    expected = {c.name: SQL_TYPES[c.kind] for c in TABLES[table].columns} | BOOKKEEPING
    assert set(ddl) == set(expected), (
        f"{table}: only in the DDL {sorted(set(ddl) - set(expected))}, "
        f"only in the specs {sorted(set(expected) - set(ddl))}"
    )
    wrong = {c: (ddl[c], t) for c, t in expected.items() if ddl[c] != _normalised(store, t)}
    assert not wrong, f"{table}: column types differ (DDL, spec): {wrong}"


def test_every_spec_kind_has_a_type() -> None:
    kinds = {c.kind for spec in TABLES.values() for c in spec.columns}
    assert kinds <= set(SQL_TYPES)


def test_atomic_commits_together_alone_and_joins_an_open_transaction(tmp_path: Path) -> None:
    # upsert_pages deletes the rows it replaces, then inserts them: never a commit in between.
    with Store.writer(tmp_path / "atomic.duckdb") as s:
        s.execute("CREATE TABLE t (i INTEGER PRIMARY KEY)")
        s.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(QueryError), s.atomic():
            s.execute("DELETE FROM t")
            s.execute("INSERT INTO t VALUES (2), (2)")
        assert s.execute("SELECT list(i) FROM t").scalar() == [1]
        with pytest.raises(QueryError), s.transaction():
            with s.atomic():  # no second BEGIN
                s.execute("DELETE FROM t")
            s.execute("INSERT INTO t VALUES (3), (3)")
        assert s.execute("SELECT list(i) FROM t").scalar() == [1]
        with s.atomic():
            s.execute("DELETE FROM t")
            s.execute("INSERT INTO t VALUES (1)")
        assert s.execute("SELECT list(i) FROM t").scalar() == [1]


def test_no_connection_draws_duckdbs_progress_bar(tmp_path: Path) -> None:
    # DuckDB draws its progress bar on stdout, into `--json` and csv output, when a query
    # runs over 2 s (the m003 migration of a million-run file printed one).
    path = tmp_path / "runs.duckdb"
    Store.writer(path).close()
    for role in (Store.writer, Store.reader, Store.sandboxed, Store.sandboxed_writer):
        with role(path) as opened:
            assert opened.execute("SELECT current_setting('enable_progress_bar')").scalar() is False
    with Store.reader({"a": path, "b": path}, live=True) as stacked:
        assert stacked.execute("SELECT current_setting('enable_progress_bar')").scalar() is False


def test_applys_writer_runs_duckdb_on_one_thread_and_keeps_it(tmp_path: Path) -> None:
    # Its batches touch ~50 rows each; worker threads' hand-offs only take CPU from the server.
    path = tmp_path / "runs.duckdb"
    Store.writer(path).close()
    with Store.sandboxed_writer(path) as store:
        assert store.execute("SELECT current_setting('threads')").scalar() == 1
        with pytest.raises(Exception, match="configuration"):
            store.execute("SET threads = 4")  # rule SQL cannot change it either


def test_a_time_limit_past_what_a_timer_can_wait_is_no_limit(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``inf`` or ``1e10`` s (past ``threading.TIMEOUT_MAX``): the statement runs, and no
    time-limit thread dies of an OverflowError; a NaN or negative limit is refused."""
    import threading

    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    for seconds in (float("inf"), 1e10):
        assert store.execute("SELECT 1", timeout=seconds).scalar() == 1
    for seconds in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="positive number of seconds"):
            store.execute("SELECT 1", timeout=seconds)
    assert died == []


def test_ctrl_c_during_a_statement_is_a_keyboard_interrupt(tmp_path: Path) -> None:
    """DuckDB catches SIGINT mid-statement and raises an error of its own; the store hands it
    on as the Ctrl-C it was, so every command stops as interrupted (inside a transaction too).

    Now and then DuckDB lets a statement finish without seeing the signal (measured: 1 run
    in 3 of this statement, whose Ctrl-C then came 8.7 s late, and once none at all), so
    Ctrl-C is pressed again every 0.3 s, as a user would, until the command stops; the
    first KeyboardInterrupt ends the presses. On one thread: DuckDB 1.x sees the signal
    during a connection's first statement on several threads only after ~11 s (0.3 s on
    one, and for every later statement)."""
    import os
    import signal
    import threading

    long = "SELECT count(*) FROM range(100000000000) a"
    armed = [True]

    def ctrl_c(signum: int, frame: object) -> None:
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, ctrl_c)
    try:
        with Store.writer(tmp_path / "runs.duckdb") as store, store.single_threaded():
            for inside in (False, True):
                armed[0] = True
                stop = threading.Event()

                def press(stop: threading.Event = stop) -> None:
                    while not stop.wait(0.3):
                        os.kill(os.getpid(), signal.SIGINT)

                presser = threading.Thread(target=press)
                presser.start()
                try:
                    with pytest.raises(KeyboardInterrupt):
                        while True:
                            if inside:
                                with store.transaction():
                                    store.execute(long).rows()
                            else:
                                store.execute(long).rows()
                finally:
                    stop.set()
                    presser.join()
            assert store.execute("SELECT 1").scalar() == 1  # the store is still usable
    finally:
        signal.signal(signal.SIGINT, previous)


def test_checkpoint_early_checkpoints_only_near_the_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowsync.store import roles

    monkeypatch.setattr(roles, "WRITE_CHECKPOINT", 4 * 2**20)
    monkeypatch.setattr(roles, "CHECKPOINT_MARGIN", 2 * 2**20)
    wal = Path(f"{tmp_path / 'x.duckdb'}.wal")
    with Store.writer(tmp_path / "x.duckdb") as store:
        with store.transaction():
            store.execute(
                "CREATE TABLE t AS SELECT repeat('x', 1000) || i AS v FROM range(500) r(i)"
            )
        assert 0 < wal.stat().st_size < 2 * 2**20 and not store.checkpoint_early()
        with store.transaction():
            store.execute("INSERT INTO t SELECT repeat('y', 1000) || i FROM range(2500) r(i)")
        assert wal.stat().st_size >= 2 * 2**20  # within the margin, below the threshold
        assert store.checkpoint_early()
        assert not wal.exists() or wal.stat().st_size < 2**20
        assert store.execute("SELECT count(*) FROM t").scalar() == 3000


def test_a_writer_closed_after_a_chdir_lets_go_of_its_own_file_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold of this process's writer on its file is released by the key it was taken
    with: a relative path closed from another directory released another file's hold."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(a)
    first = Store.writer("runs.duckdb")
    monkeypatch.chdir(b)
    with Store.writer("runs.duckdb"):  # b/runs.duckdb, held
        first.close()  # a/runs.duckdb, closed from b
        with pytest.raises(StoreLockedError, match="held by a writer of this process"):
            Store.writer(b / "runs.duckdb").close()
    with Store.writer(a / "runs.duckdb", wait=0.5):
        pass


def test_a_writer_closed_twice_lets_go_of_no_later_writer(tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    first = Store.writer(db)
    first.close()
    with Store.writer(db):
        first.close()  # again (an explicit close, then its with block's)
        with pytest.raises(StoreLockedError, match="held by a writer of this process"):
            Store.writer(db).close()


@pytest.mark.parametrize("mode", ["full", "apply"])
def test_a_record_its_killed_process_left_running_says_so_for_a_pull_and_an_apply(
    tmp_path: Path, mode: str
) -> None:
    """An apply killed (kill -9) was shown as "process ended before the pull finished"."""
    from flowsync.store import sync_log

    with Store.writer(tmp_path / "runs.duckdb") as store:
        store.execute(
            "INSERT INTO sync_runs (started_at, status, api_url, mode) "
            "VALUES (now(), 'running', 'http://x/api', ?)",
            [mode],
        )
        summary = sync_log.status_summary(store, none_running=True)
    record = summary["last_apply" if mode == "apply" else "last_pull"]
    assert record["status"] == "interrupted"
    assert record["error"] == "its process ended before it finished (killed, or out of memory)"


def test_a_local_state_stamped_ahead_of_the_servers_clock_proves_no_later_change(
    tmp_path: Path,
) -> None:
    """A state written while the server's clock ran 30 minutes ahead, then the clock put right
    and the run moved on: its new state event is older than the stamp the file holds, which
    was taken for proof that the file had it. A stamp after the pull's start proves nothing."""
    from datetime import datetime, timedelta, timezone

    from flowsync.store import synced_tables

    now = datetime(2026, 12, 7, 12, tzinfo=timezone.utc)
    runs = {
        "00000000-0000-4000-8000-000000000001": now + timedelta(minutes=30),  # stamped ahead
        "00000000-0000-4000-8000-000000000002": now - timedelta(minutes=1),  # holds it
        "00000000-0000-4000-8000-000000000003": now - timedelta(minutes=10),  # behind
    }
    with Store.writer(tmp_path / "runs.duckdb") as store:
        for run_id, stamp in runs.items():
            store.execute(
                "INSERT INTO flow_runs (id, name, state_type, state_timestamp, synced_at) "
                "VALUES (?, 'r', 'RUNNING', ?, now())",
                [run_id, stamp],
            )
        changed = dict.fromkeys(runs, now - timedelta(minutes=5))
        behind = synced_tables.runs_behind(store, changed, now)
    assert sorted(behind) == [
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000003",
    ]
