"""Each command is one call into the library: the command and the call give the same result.

``flowsync plan`` against ``flowsync.plan`` is in test_policy_plan.py; the reports' commands
against ``flowsync.report`` in the report tests. Here: pull, apply and export.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

import flowsync
from flowsync import operations
from flowsync.config import ApiSettings
from flowsync.errors import ApiError, PolicyLimitError, StoreLockedError
from flowsync.operations import export
from harness.built import BuiltHistory
from harness.seed import new_deployment, runs_in_state
from harness.server import Server, free_port
from tests.helpers import copy_db, query, run_cli

COLUMNS = (
    "CAST(id AS VARCHAR), name, CAST(flow_id AS VARCHAR), CAST(deployment_id AS VARCHAR), "
    "state_type, state_name, tags, expected_start_time, start_time, end_time, deleted_at IS NULL"
)


def _runs(db: Path) -> list[tuple[Any, ...]]:
    return query(db, f"SELECT {COLUMNS} FROM flow_runs ORDER BY id")


def _policy(folder: Path, deployment: str) -> Path:
    path = folder / f"retention-{deployment}.yaml"
    path.write_text(
        f"""version: 1
rules:
  - name: purge-failed
    action: delete
    keep_newest: 2
    sql: |
      SELECT id FROM flow_runs
      WHERE deleted_at IS NULL AND state_type = 'FAILED'
        AND deployment_id = '{deployment}'
"""
    )
    return path


def _audit(db: Path) -> list[tuple[Any, ...]]:
    """Each audited run's outcome, by its rank among the deployment's runs (oldest first)."""
    return query(
        db,
        """
        SELECT r.rank, a.rule, a.action, a.state_type_before, a.outcome FROM policy_actions a
        JOIN (SELECT id, row_number() OVER (PARTITION BY deployment_id ORDER BY expected_start_time) AS rank
              FROM flow_runs) r ON r.id = a.flow_run_id
        ORDER BY r.rank""",
    )


def test_pull_and_apply_do_what_their_commands_do(fresh_server: Server, tmp_path: Path) -> None:
    url = fresh_server.url
    deployments = {side: new_deployment(url, f"library-{side}") for side in ("cli", "lib")}
    for dep in deployments.values():
        runs_in_state(url, dep, 6, "FAILED", "library", timedelta(minutes=5))
    cli_db, lib_db = tmp_path / "cli.duckdb", tmp_path / "lib.duckdb"

    pulled = run_cli("pull", "--api-url", url, "--db", str(cli_db))
    assert pulled.exit_code == 0, pulled.output
    result = flowsync.pull(lib_db, api=ApiSettings(url=url))
    assert result.result.tables["flow_runs"]["inserted"] == 12
    assert _runs(cli_db) == _runs(lib_db) and len(_runs(lib_db)) == 12
    # both published the readers' snapshot: flowsync.connect sees the runs
    for db in (cli_db, lib_db):
        with flowsync.connect(db) as con:
            assert con.execute("SELECT count(*) FROM flow_runs").fetchone() == (12,)

    cli_policy = _policy(tmp_path, deployments["cli"])
    lib_policy = _policy(tmp_path, deployments["lib"])
    applied_cli = run_cli(
        "apply", str(cli_policy), "--db", str(cli_db), "--api-url", url, "--yes", "--json"
    )
    assert applied_cli.exit_code == 0, applied_cli.output
    applied_lib = flowsync.apply(lib_db, lib_policy, api=ApiSettings(url=url))
    assert applied_lib.result is not None
    timing = ("apply_id", "policy_sha256", "seconds", "reread_to_call_seconds")
    by_cli = json.loads(applied_cli.stdout)["result"]
    by_library = applied_lib.result.to_json()
    for key in timing:
        del by_cli[key], by_library[key]
    assert by_cli == by_library
    assert by_cli["rules"] == {"purge-failed": {"deleted": 4}}
    assert _audit(cli_db) == _audit(lib_db) and len(_audit(lib_db)) == 4
    # the server kept the two newest of each deployment, and each file knows what it deleted
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        for dep in deployments.values():
            body = {"deployments": {"id": {"any_": [dep]}}}
            assert c.post("flow_runs/count", json=body).json() == 2
    deleted = "SELECT count(*) FROM flow_runs WHERE deleted_at IS NOT NULL"
    assert query(cli_db, deleted) == query(lib_db, deleted) == [(4,)]


def test_export_does_what_the_command_does(built: BuiltHistory, tmp_path: Path) -> None:
    db = copy_db(built.path, tmp_path)
    by_cli, by_library = tmp_path / "cli", tmp_path / "lib"
    exported = run_cli("export", str(by_cli), "--db", str(db))
    assert exported.exit_code == 0, exported.output
    export(db, by_library)
    files = sorted(p.relative_to(by_cli) for p in by_cli.rglob("*.parquet"))
    assert files and files == sorted(
        p.relative_to(by_library) for p in by_library.rglob("*.parquet")
    )
    for name in files:
        assert pq.read_table(by_cli / name).equals(pq.read_table(by_library / name)), name


UNREACHABLE = ApiSettings(url="http://127.0.0.1:9/api")


def _purge_completed(folder: Path, max_actions: int) -> Path:
    """``folder/purge.yaml``: one rule deleting the file's live COMPLETED runs."""
    policy = folder / "purge.yaml"
    policy.write_text(
        f"version: 1\nmax_actions: {max_actions}\nrules:\n  - name: purge-completed\n"
        "    action: delete\n    sql: SELECT id FROM flow_runs WHERE deleted_at IS NULL "
        "AND state_type = 'COMPLETED'\n"
    )
    return policy


@contextlib.contextmanager
def _held_in_a_thread(
    monkeypatch: pytest.MonkeyPatch, step: str, call: Callable[[], object]
) -> Iterator[None]:
    """``call`` on another thread, held inside ``operations.<step>`` (its writer open) until
    the block ends."""
    inside, release = threading.Event(), threading.Event()

    def hold(*args: object, **kwargs: object) -> None:
        inside.set()
        release.wait(60)

    def run() -> None:
        with contextlib.suppress(Exception):  # (its own ending is not what is tested)
            call()

    monkeypatch.setattr(operations, step, hold)
    thread = threading.Thread(target=run)
    thread.start()
    assert inside.wait(60)
    try:
        yield
    finally:
        release.set()
        thread.join()


def test_a_pull_waits_for_a_writer_of_its_own_process_as_for_another_process(
    built: BuiltHistory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB's file lock is its process's: a pull or apply on another thread of the same
    service held the file, and a second pull got it as well (or an exit-5 StoreError for an
    apply's other settings), ignoring ``wait``. Now it waits, then says who holds it (6)."""
    db = copy_db(built.path, tmp_path)
    pulls = len(query(db, "SELECT id FROM sync_runs"))
    policy = _purge_completed(tmp_path, 100_000)
    holders = {
        "pull": ("pull_runs", lambda: flowsync.pull(db, api=UNREACHABLE)),
        "apply": ("apply_plan", lambda: flowsync.apply(db, policy, api=UNREACHABLE)),
    }
    for step, call in holders.values():
        with _held_in_a_thread(monkeypatch, step, call):
            started = time.monotonic()
            with pytest.raises(StoreLockedError, match="held by a writer of this process"):
                flowsync.pull(db, api=UNREACHABLE, wait=0.5)
            assert time.monotonic() - started >= 0.5
            with pytest.raises(StoreLockedError):
                flowsync.report(db, "runs", live=True)
    assert len(query(db, "SELECT id FROM sync_runs")) == pulls  # the held pull never read


def _refuse(plan: object) -> bool:
    raise KeyboardInterrupt  # the confirm hook stopped: a prompt's Ctrl-C


@pytest.mark.parametrize(
    ("max_actions", "confirm", "error"),
    [(10, None, PolicyLimitError), (100_000, _refuse, KeyboardInterrupt)],
    ids=["over-max-actions", "confirm-raises"],
)
def test_a_refused_apply_leaves_no_plan_scratch_behind(
    built: BuiltHistory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    max_actions: int,
    confirm: Any,
    error: type[BaseException],
) -> None:
    """The plan's scratch file was left while the error lived on (a Prefect task's state,
    a notebook's last traceback): an apply that raises closes its plan."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where plans keep their runs
    db = copy_db(built.path, tmp_path)
    policy = _purge_completed(tmp_path, max_actions)
    with pytest.raises(error) as refused:
        flowsync.apply(db, policy, api=UNREACHABLE, confirm=confirm)
    assert refused.value is not None  # still held
    assert list(scratch.iterdir()) == []


def test_status_does_what_the_command_does(built: BuiltHistory, tmp_path: Path) -> None:
    """``flowsync status --json`` is ``flowsync.status(db).to_json()`` (the command only
    prints what the call returns)."""
    from flowsync.cli.common import to_jsonable

    db = copy_db(built.path, tmp_path)
    shown = run_cli("status", "--db", str(db), "--json")
    assert shown.exit_code == 0, shown.output
    called = flowsync.status(db)
    assert json.loads(shown.stdout) == to_jsonable(called.to_json())
    assert called.writing is None and called.snapshot is not None
    # any real number of seconds waits (numpy's int64, a Fraction: not a Python int or float)
    assert lib.status(db, wait=Fraction(1, 2)).summary == called.summary
    live = "SELECT id FROM flow_runs WHERE deleted_at IS NULL"
    assert called.summary["flow_runs"]["live"] == len(query(db, live))


def test_status_of_a_pulled_file_without_its_servers_address_says_so(
    built: BuiltHistory, tmp_path: Path
) -> None:
    """A pulled file whose record of the server's address is gone (a file built by hand, or
    an older or newer flowsync's): status said "from (never pulled)" above its last pull."""
    import shutil

    from flowsync.store import Store

    db = copy_db(built.path, tmp_path)
    shutil.rmtree(db.with_name(db.name + ".snapshots"))  # read live: no snapshot to read
    with Store.writer(db) as writer:
        writer.execute("DELETE FROM sync_state WHERE key = 'api_url'")
    shown = run_cli("status", "--db", str(db))
    assert shown.exit_code == 0, shown.output
    first = shown.stdout.splitlines()[0]
    assert first.endswith("from (a server it does not name)") and "never" not in first
    assert "last pull #" in shown.stdout


def test_every_call_reads_a_path_from_home_as_its_command_and_connect_do(
    built: BuiltHistory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--db ~/runs.duckdb`` (quoted, or from $FLOWSYNC_DB) and ``flowsync.connect`` and
    ``flowsync.status`` expand the ``~``; ``flowsync.report``, ``.plan``, ``.export``,
    ``.pull``, ``.apply`` and ``check_policy`` took it for a folder named ``~`` (a report:
    "does not exist: run `flowsync pull --db ~/runs.duckdb` first")."""
    monkeypatch.setenv("HOME", str(tmp_path))
    db = copy_db(built.path, tmp_path)
    home = "~/runs.duckdb"
    nobody = ApiSettings(url=f"http://127.0.0.1:{free_port()}/api")
    policy = Path(__file__).parents[1] / "docs" / "examples" / "retention.yaml"
    command = run_cli("report", "failures", "--db", home, "--format", "json")
    assert command.exit_code == 0, command.output
    assert flowsync.status(home).path == db
    flowsync.connect(home).close()
    assert flowsync.report(home, "failures").frame.height == len(json.loads(command.stdout))
    with flowsync.plan(home, policy) as made, flowsync.plan(db, policy) as expected:
        assert made.total == expected.total
    assert operations.check_policy(policy, home)[1] == operations.check_policy(policy, db)[1]
    assert export(home, tmp_path / "out").result.rows_written > 0
    refused = flowsync.apply(home, policy, api=nobody, confirm=lambda p: False)
    refused.plan.close()
    assert not refused.confirmed and refused.plan.total > 0
    with pytest.raises(ApiError):  # the file is found: the server is asked next
        flowsync.pull(home, api=nobody)


API = ApiSettings(url="http://127.0.0.1:9/api")  # never reached: each call is refused first


def _one_rule(tmp_path: Path) -> Path:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nrules: [{name: r, action: delete, sql: 'SELECT id FROM flow_runs'}]\n"
    )
    return policy


# (typed Any: the calls below pass what their signatures refuse, on purpose)
lib: Any = flowsync
ops: Any = operations


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda p: lib.status(5), "db 5 is not a path"),
        (lambda p: lib.report(123, "failures"), "db 123 is not a path"),
        (lambda p: lib.report(b"/tmp/x.duckdb", "failures"), "is not a path"),
        (lambda p: lib.pull(5, api=API), "db 5 is not a path"),
        (lambda p: lib.plan(p / "r.duckdb", None), "policy None is not a path"),
        (lambda p: lib.plan(p / "r.duckdb", {"version": 1}), "is not a path"),
        (lambda p: ops.check_policy(5), "policy 5 is not a path"),
        (lambda p: ops.check_policy(_one_rule(p), 5), "db 5 is not a path"),
        (lambda p: lib.pull(p / "r.duckdb", api=API, options={}), "not a PullOptions"),
        (lambda p: ops.export(p / "r.duckdb", p / "out", tables="flows"), "pass tables=['flows']"),
        (lambda p: lib.status(p / "r.duckdb", wait="x"), "wait='x' is not a number"),
        (lambda p: lib.status(p / "r.duckdb", wait=-1), "wait=-1 is not a number"),
        (lambda p: lib.status(p / "r.duckdb", wait=float("nan")), "is not a number"),
        (
            lambda p: lib.apply(p / "r.duckdb", _one_rule(p), api=API, confirm=5),
            "confirm is not a function (int 5)",
        ),
    ],
    ids=[
        "status-db",
        "report-db",
        "report-bytes",
        "pull-db",
        "plan-policy-none",
        "plan-policy-dict",
        "check-policy",
        "check-policy-db",
        "pull-options",
        "export-tables-text",
        "wait-text",
        "wait-negative",
        "wait-nan",
        "apply-confirm",
    ],
)
def test_a_library_argument_of_the_wrong_kind_is_flowsyncs_own_error(
    tmp_path: Path, call: Callable[[Path], object], says: str
) -> None:
    """A library call given an argument of the wrong type or a wait no command takes: a
    ``FlowsyncError`` saying which, before anything is read or written (a raw TypeError or
    AttributeError before, and a negative or NaN wait was taken)."""
    from flowsync.errors import FlowsyncError

    before = sorted(tmp_path.iterdir())
    with pytest.raises(FlowsyncError, match=re.escape(says)):
        call(tmp_path)
    assert sorted(p for p in tmp_path.iterdir() if p.name != "policy.yaml") == [
        p for p in before if p.name != "policy.yaml"
    ]


def test_the_librarys_hooks_wait_and_since_are_checked_as_documented(
    built: Any, tmp_path: Path
) -> None:
    """A `progress` that is no Progress raised AttributeError once the pull had begun (and left
    a failed pull's row); `wait=-1` passed plan and connect; `report(since=datetime)` was "not
    an age or a time" though export takes one. Each is one ConfigError before anything is
    read or written, and a datetime is a start."""
    from datetime import datetime, timedelta, timezone

    import flowsync
    from flowsync.config import resolve_api
    from flowsync.errors import ConfigError
    from tests.helpers import copy_db, query

    db = copy_db(built.path, tmp_path)
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nrules:\n  - {name: r, action: delete, sql: SELECT id FROM flow_runs}\n"
    )
    api = resolve_api("http://127.0.0.1:9/api", env={})
    runs = query(db, "SELECT count(*) FROM sync_runs")
    calls = {
        "pull progress": lambda: flowsync.pull(db, api=api, progress=5),  # type: ignore[arg-type]
        "pull on_retry": lambda: flowsync.pull(db, api=api, on_retry="x"),  # type: ignore[arg-type]
        "plan progress": lambda: flowsync.plan(db, policy, progress=object()),  # type: ignore[arg-type]
        "apply progress": lambda: flowsync.apply(db, policy, api=api, progress=[]),  # type: ignore[arg-type]
        "plan wait": lambda: flowsync.plan(db, policy, wait=-1),
        "connect wait": lambda: flowsync.connect(db, wait=-1),
    }
    for what, call in calls.items():
        with pytest.raises(ConfigError, match=r"^(progress|on_retry|wait=)"):
            call()
        assert query(db, "SELECT count(*) FROM sync_runs") == runs, what
    start = datetime.now(timezone.utc) - timedelta(days=30)
    by_time = flowsync.report(db, "failures", since=start)
    by_text = flowsync.report(db, "failures", since=start.isoformat())
    assert by_time.frame.equals(by_text.frame)
    assert by_time.frame.height > 0
    with pytest.raises(ConfigError, match="is in the future"):
        flowsync.report(db, "failures", since=datetime.now(timezone.utc) + timedelta(days=1))
