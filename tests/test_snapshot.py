"""Readers read a published snapshot: a notebook kernel stays open while pulls and an apply run.

The reader is a real Jupyter kernel (what a notebook user keeps running for
hours); pulls and the apply run the real CLI against a real Prefect server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from jupyter_client.manager import KernelManager

from flowsync.errors import StoreLockedError
from flowsync.store import Store, locks
from flowsync.store import snapshot as snap
from flowsync.store.locks import classify
from harness.seed import delete_runs, seed
from harness.server import Server
from tests.helpers import query, run_cli, scalar


class Kernel:
    """A real ipykernel; ``run`` executes code and returns what it printed."""

    def __init__(self, cwd: Path) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd), env={**os.environ})
        self.kc = self.km.blocking_client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str) -> str:
        printed: list[str] = []
        errors: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                printed.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                errors.append("\n".join(msg["content"]["traceback"]))

        self.kc.execute_interactive(textwrap.dedent(code), output_hook=hook, timeout=120)
        assert not errors, errors[0]
        return "".join(printed).strip()

    @property
    def pid(self) -> int:
        provisioner = self.km.provisioner
        assert provisioner is not None
        return int(provisioner.pid)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    k = Kernel(tmp_path)
    try:
        yield k
    finally:
        k.close()


def server_count(url: str, body: dict[str, Any] | None = None) -> int:
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        r = c.post("flow_runs/count", json=body or {})
        r.raise_for_status()
        return int(r.json())


def pull(url: str, db: Path) -> dict[str, Any]:
    result = run_cli(
        "pull", "--api-url", url, "--db", str(db), "--json"
    )  # no --wait: must not block
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


LIVE = "SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL"


def test_an_open_notebook_never_blocks_pulls_or_apply(
    fresh_server: Server, tmp_path: Path, kernel: Kernel
) -> None:
    url, db = fresh_server.url, tmp_path / "runs.duckdb"
    seeded = seed(url, runs=120, flows=2, deployments_per_flow=2, seed_value=21)
    first = pull(url, db)
    assert first["snapshot"]["published"] and first["snapshot"]["generation"] == 1
    at_first = server_count(url)

    kernel.run(f"""
        import flowsync
        con = flowsync.connect({str(db)!r})
        print(con.execute({LIVE!r}).fetchone()[0])
    """)
    assert kernel.run(f"print(con.execute({LIVE!r}).fetchone()[0])") == str(at_first)

    # Two pulls while the notebook holds its connection: new runs, then deletions.
    seed(url, runs=40, flows=2, deployments_per_flow=2, seed_value=22)
    second = pull(url, db)
    assert second["inserted"] == 40 and second["snapshot"]["published"]
    delete_runs(url, list(seeded.runs)[:15])
    third = pull(url, db)
    assert third["marked_deleted"] == 15
    # ...and an apply (it also writes the live file, then publishes).
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        textwrap.dedent("""\
        version: 1
        rules:
          - name: drop-cancelled
            action: delete
            sql: SELECT id FROM flow_runs WHERE deleted_at IS NULL AND state_type = 'CANCELLED'
    """)
    )
    cancelled = server_count(url, {"flow_runs": {"state": {"type": {"any_": ["CANCELLED"]}}}})
    assert cancelled > 0
    applied = run_cli("apply", str(policy), "--db", str(db), "--api-url", url, "--yes", "--json")
    assert applied.exit_code == 0, applied.output
    assert server_count(url, {"flow_runs": {"state": {"type": {"any_": ["CANCELLED"]}}}}) == 0

    # The open connection still sees the first pull, whole and consistent (its file was unlinked).
    assert kernel.run(f"print(con.execute({LIVE!r}).fetchone()[0])") == str(at_first)
    assert (
        kernel.run(
            "print(con.execute('SELECT count(*) FROM failure_rates_by_deployment').fetchone()[0] > 0)"
        )
        == "True"
    )
    # A new connection in the same kernel sees the latest state: the server's, after the apply.
    now = server_count(url)
    assert now == at_first + 40 - 15 - cancelled
    assert kernel.run(f"""
        con2 = flowsync.connect({str(db)!r})
        print(con2.execute({LIVE!r}).fetchone()[0])
    """) == str(now)
    # The CLI readers see it too; --live reads the live file (the kernel holds only a snapshot).
    for extra in ([], ["--live"]):
        result = run_cli("sql", LIVE, "--db", str(db), "--format", "csv", *extra)
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[-1] == str(now)
    assert len(list(snap.snapshot_dir(db).glob("*.duckdb"))) == 2  # current + one previous


def test_no_change_pull_keeps_the_snapshot(fresh_server: Server, tmp_path: Path) -> None:
    url, db = fresh_server.url, tmp_path / "runs.duckdb"
    seed(url, runs=30, flows=1, deployments_per_flow=1, seed_value=23)
    assert pull(url, db)["snapshot"]["generation"] == 1
    again = pull(url, db)
    assert not again["snapshot"]["published"] and again["snapshot"]["generation"] == 1
    assert snap.current(db) is not None


def test_a_pull_that_changes_no_run_but_its_server_publishes(
    fresh_server: Server, tmp_path: Path
) -> None:
    """Changes no `updated` stamp shows: a schedule added to a deployment (a row of another
    table on the server), and the server upgraded in place (another version: plan's apply
    path reads it). Each is published, so readers see it."""
    url, db = fresh_server.url, tmp_path / "runs.duckdb"
    seed(url, runs=10, flows=1, deployments_per_flow=1, seed_value=37)
    pull(url, db)
    (deployment,) = [r[0] for r in query(db, "SELECT CAST(id AS VARCHAR) FROM deployments")]
    schedules = "SELECT json_array_length(schedules) FROM deployments"
    before = scalar(db, schedules)
    added = httpx.post(
        f"{url}/deployments/{deployment}/schedules",
        json=[{"schedule": {"interval": 3600}, "active": True}],
        timeout=60,
    )
    assert added.status_code in (200, 201), added.text
    scheduled = pull(url, db)
    assert scheduled["tables"]["deployments"]["updated"] == 1
    assert scheduled["snapshot"]["published"]
    assert scalar(snap.current(db).path, schedules) == before + 1  # type: ignore[union-attr]
    # The file last saw an older server (as after a pull before an in-place upgrade).
    with duckdb.connect(str(db)) as con:
        con.execute(
            """UPDATE sync_state SET value = '{"version": "3.4.25", "cloud": false, "bulk": false}'
               WHERE key = 'server'"""
        )
    upgraded = pull(url, db)
    assert upgraded["server_changed"] and upgraded["snapshot"]["published"]
    shown = "SELECT value->>'version' FROM sync_state WHERE key = 'server'"
    assert scalar(snap.current(db).path, shown) == "3.8.8"  # type: ignore[union-attr]
    assert not pull(url, db)["snapshot"]["published"]  # and then nothing new


def test_a_worker_polling_its_pool_does_not_make_a_pull_publish(
    fresh_server: Server, tmp_path: Path
) -> None:
    """A worker's poll moves its deployments' last_polled and status, keeping `updated`
    (Prefect's mark_deployments_ready): not a change readers wait for, so no new snapshot."""
    url, db = fresh_server.url, tmp_path / "runs.duckdb"
    seed(url, runs=10, flows=1, deployments_per_flow=2, seed_value=41)
    pull(url, db)
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        polled_before = {d["id"]: d["last_polled"] for d in c.post("deployments/filter").json()}
        polled = c.post("work_pools/seed-pool/get_scheduled_flow_runs", json={})
        assert polled.status_code == 200, polled.text
        for _ in range(60):
            now = {d["id"]: d["last_polled"] for d in c.post("deployments/filter").json()}
            if now != polled_before:
                break
            time.sleep(0.5)
    assert now != polled_before, "the poll moved no last_polled"
    after = pull(url, db)
    assert after["tables"]["deployments"]["updated"] == 0, after["tables"]
    assert not after["snapshot"]["published"]


def test_a_pull_whose_publish_fails_is_recorded_failed_and_the_next_one_publishes(
    fresh_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while the snapshot is copied: the pull's rows are saved, readers do not
    see them. It is recorded failed (it said ok), and the next pull, though the server has
    not changed, publishes them."""
    from flowsync import operations
    from flowsync.errors import StorageError

    url, db = fresh_server.url, tmp_path / "runs.duckdb"
    seed(url, runs=10, flows=1, deployments_per_flow=1, seed_value=29)
    pull(url, db)
    seed(url, runs=5, flows=1, deployments_per_flow=1, seed_value=31)
    with monkeypatch.context() as full:
        message = "Cannot publish a snapshot: No space left on device"

        def disk_full(*args: Any, **kwargs: Any) -> Any:
            raise StorageError(message, path=str(db), reason="full", detail="No space left")

        full.setattr(operations, "publish", disk_full)
        failed = run_cli("pull", "--api-url", url, "--db", str(db))
        assert failed.exit_code == 5, failed.output
    last = "SELECT status, error FROM sync_runs ORDER BY id DESC LIMIT 1"
    [(status, error)] = query(db, last)
    assert status == "failed" and "rows are saved, but no snapshot was published" in error
    current = snap.current(db)
    assert current is not None
    assert scalar(current.path, LIVE) == 10  # readers are on the last published snapshot
    again = pull(url, db)
    assert again["tables"]["flow_runs"]["inserted"] == 0 and again["snapshot"]["published"]
    assert run_cli("sql", LIVE, "--db", str(db), "--format", "csv").stdout.split()[-1] == "15"


def test_a_notebook_holding_the_live_file_is_named_in_the_pull_error(
    fresh_server: Server, tmp_path: Path, kernel: Kernel
) -> None:
    url, db = fresh_server.url, tmp_path / "runs.duckdb"
    seed(url, runs=10, flows=1, deployments_per_flow=1, seed_value=24)
    pull(url, db)
    kernel.run(f"import flowsync; con = flowsync.connect({str(db)!r}, live=True)")
    refused = run_cli("pull", "--api-url", url, "--db", str(db))
    assert refused.exit_code == 6
    line = " ".join(refused.stderr.split())
    assert f"notebook kernel (PID {kernel.pid})" in line, line
    assert "Close that connection" in line and "--wait" in line
    kernel.run("con.close()")
    assert pull(url, db)["mode"] == "incremental"


def test_a_running_pull_is_named_to_live_readers(tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    Store.writer(db).close()
    # A real process holding the write lock, whose command line reads `flowsync pull`.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ok', flush=True); time.sleep(30)",
            str(db),
            "flowsync",
            "pull",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        with pytest.raises(StoreLockedError) as caught:
            Store.reader(db, live=True)  # --live, connect(live=True)
        assert caught.value.holder_role == "pull" and caught.value.holder_pid == holder.pid
        assert f"a running `flowsync pull` (PID {holder.pid})" in str(caught.value)
        assert "drop --live" in str(caught.value)
        with pytest.raises(StoreLockedError) as caught:
            Store.reader(db, live=True, lock_context=locks.LIVE_ONLY)  # status: no --live to drop
        assert "--live" not in str(caught.value) and "--wait" in str(caught.value)
        with pytest.raises(StoreLockedError, match=r"no published snapshot yet .* pull .*--wait"):
            Store.reader(db)  # a file from before snapshots, mid-pull
        # Having waited, the line asks for a longer wait, not for the --wait it was given.
        with pytest.raises(StoreLockedError) as caught:
            Store.reader(db, live=True, wait=0.3)
        assert "a --wait longer than the 0.3 s waited" in str(caught.value)
        assert "--wait SECONDS" not in str(caught.value) and caught.value.holder_role == "pull"
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["/venv/bin/python", "/venv/bin/flowsync", "pull", "--db", "x"], "pull"),
        (["python", "-m", "flowsync", "apply", "p.yaml", "--yes"], "apply"),
        (["/venv/bin/flowsync", "report", "failures"], "reader"),
        (["/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "/tmp/k.json"], "notebook"),
        (["python", "script.py"], "unknown"),
    ],
)
def test_lock_holders_are_classified_by_command_line(argv: list[str], role: str) -> None:
    assert classify(argv)[0] == role


PUBLISH_LOOP = """
import sys
from pathlib import Path
from flowsync.store import Store, locks
from flowsync.store.snapshot import publish
with Store.writer(Path(sys.argv[1])) as store:
    while True:
        publish(store)
"""


def test_kill_9_during_publish_leaves_the_previous_snapshot_readable(tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    with Store.writer(db) as store:
        # Ballast so that copying takes long enough to be caught half-way.
        store.execute(
            "CREATE TABLE ballast AS SELECT range AS i, md5(CAST(range AS VARCHAR)) AS s FROM range(1500000)"
        )
        snap.publish(store)
    folder = snap.snapshot_dir(db)
    caught_mid_copy = 0
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", PUBLISH_LOOP, str(db)])
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if any(".tmp-" in p.name for p in folder.iterdir()):
                    time.sleep(0.002 * attempt)
                    break
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        caught_mid_copy += any(".tmp-" in p.name for p in folder.iterdir())
        with Store.reader(db) as opened:
            assert opened.path.parent == folder  # the snapshot, not the live file
            assert opened.execute("SELECT count(*) FROM ballast").scalar() == 1500000
            assert opened.execute("SELECT count(*) FROM _flowsync_migrations").scalar() > 0
    assert caught_mid_copy > 0  # the kill did land inside a copy at least once
    with Store.writer(db) as store:  # the next publish clears the dead one's leftovers
        result = snap.publish(store)
    assert not any(".tmp-" in p.name for p in folder.iterdir())
    with duckdb.connect(str(result.snapshot.path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM ballast").fetchone() == (1500000,)
    assert scalar(folder / snap.CURRENT, "SELECT count(*) FROM ballast") == 1500000


def test_a_no_change_pull_publishes_what_an_earlier_pull_wrote_but_never_published(
    tmp_path: Path,
) -> None:
    """A pull's publish failed (a full disk) or it was killed before publishing: its rows are
    in the live file only. The next pull, which changes nothing, must publish them; it kept
    the old snapshot, and readers stayed on it until the server changed again."""
    from flowsync.store import sync_log

    db = tmp_path / "runs.duckdb"

    def a_pull(store: Any, status: str = "ok", inserted: int = 0) -> int:
        with store.transaction():
            pull_id = sync_log.start_sync_run(store, "http://test/api")
            sync_log.finish_sync_run(
                store, pull_id, status=status, mode="incremental", inserted=inserted
            )
        return pull_id

    with Store.writer(db) as store:
        first = snap.publish(store, pull_id=a_pull(store, inserted=1), changed=True)
        store.execute("CREATE TABLE written AS SELECT 1 AS n")
        a_pull(store, inserted=1)  # ...whose publish failed
        kept = snap.publish(store, pull_id=a_pull(store), changed=False)
        assert kept.published and kept.snapshot.generation == first.snapshot.generation + 1
        unchanged = snap.publish(store, pull_id=a_pull(store), changed=False)
        assert not unchanged.published  # nothing written since: no copy
        store.execute("INSERT INTO written VALUES (2)")
        a_pull(store, status="interrupted")  # killed before its publish
        again = snap.publish(store, pull_id=a_pull(store), changed=False)
        assert again.published
        with store.transaction():  # a pull that never reached the server wrote nothing
            unreached = sync_log.start_sync_run(store, "http://test/api")
            sync_log.finish_sync_run(store, unreached, status="failed", error="refused")
        assert not snap.publish(store, pull_id=a_pull(store), changed=False).published
    assert scalar(snap.snapshot_dir(db) / snap.CURRENT, "SELECT count(*) FROM written") == 2
    # A notebook that opens the file for writing leaves no record of its own: still published.
    import flowsync

    notebook = flowsync.connect(db, read_only=False)
    notebook.execute("INSERT INTO written VALUES (3)")
    notebook.close()
    with Store.writer(db) as store:
        assert snap.publish(store, pull_id=a_pull(store), changed=False).published
    assert scalar(snap.snapshot_dir(db) / snap.CURRENT, "SELECT count(*) FROM written") == 3
    # A pull that wrote no row but found its server changed (a new URL, another version),
    # whose publish failed: the next no-change pull publishes.
    with Store.writer(db) as store:
        assert not snap.publish(store, pull_id=a_pull(store), changed=False).published
        with store.transaction():
            moved = sync_log.start_sync_run(store, "http://test/api")
            sync_log.finish_sync_run(
                store, moved, status="ok", mode="incremental", details={"server_changed": True}
            )
        assert snap.publish(store, pull_id=a_pull(store), changed=False).published


def test_a_snapshot_says_what_published_it() -> None:
    from datetime import datetime, timezone

    info = snap.SnapshotInfo(
        Path("x.duckdb"), 3, datetime(2026, 12, 6, 1, 2, 3, tzinfo=timezone.utc), 12, "1", 9, 0, 0
    )
    assert info.describe() == "snapshot 3 (pull #12, published 2026-12-06 01:02:03 UTC)"
    by_apply = snap.SnapshotInfo(**{**info.__dict__, "pull_id": None})
    assert by_apply.describe().startswith("snapshot 3 (by an apply or a refresh, published")
    stopped = snap.SnapshotInfo(**{**by_apply.__dict__, "by": "a first pull that stopped"})
    assert stopped.describe().startswith("snapshot 3 (a first pull that stopped, published")
    confirmed = snap.SnapshotInfo(
        **{**info.__dict__, "confirmed_at": datetime(2026, 12, 6, 2, 0, 0, tzinfo=timezone.utc)}
    )
    assert confirmed.describe() == (
        "snapshot 3 (pull #12, published 2026-12-06 01:02:03 UTC; unchanged as of the pull at "
        "2026-12-06 02:00:00 UTC)"
    )
    assert snap.SnapshotInfo.from_json(confirmed.to_json()) == confirmed
    assert snap.SnapshotInfo.from_json(stopped.to_json()) == stopped


def test_a_notebooks_open_connection_leaves_plan_and_check_policy_working(tmp_path: Path) -> None:
    """A notebook holds ``flowsync.connect(db)`` (the published snapshot, DuckDB's default
    settings) and then plans: rule SQL opens the same generation with its locked settings,
    which DuckDB refuses for a second open of one path in a process. The plan and the check
    read it under a second name; the notebook's connection reads on, and no name is left."""
    import flowsync
    from flowsync import operations
    from tests.policy_db import built_db, run

    db = built_db(tmp_path / "runs.duckdb", [run(n, "FAILED", 10) for n in range(1, 6)])
    with Store.writer(db) as store:
        snap.publish(store)
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nrules:\n  - name: old-failures\n    action: delete\n"
        "    sql: SELECT id FROM flow_runs WHERE state_type = 'FAILED'\n"
    )
    folder = snap.snapshot_dir(db)
    before = sorted(p.name for p in folder.iterdir())
    con = flowsync.connect(db)
    try:
        with flowsync.plan(db, policy) as planned:
            assert planned.total == 5
        _, counts = operations.check_policy(policy, db)
        assert counts == {"old-failures": 5}
        # ...and the other way round: a reader opened while a sandbox holds the generation.
        with Store.sandboxed(db) as sandbox, Store.reader(db) as reader:
            assert sandbox.execute("SELECT count(*) FROM flow_runs").scalar() == 5
            assert reader.execute("SELECT count(*) FROM flow_runs").scalar() == 5
        assert con.execute("SELECT count(*) FROM flow_runs").fetchall() == [(5,)]
    finally:
        con.close()
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_live_file_held_by_a_notebook_still_refuses_rule_sql_in_one_line(tmp_path: Path) -> None:
    """The live file (no snapshot published yet) is never opened under a second name (a
    writer may change it): plan says the file is open with other settings, close it first."""
    import flowsync
    from flowsync.errors import StoreError
    from tests.policy_db import built_db, run

    db = built_db(tmp_path / "runs.duckdb", [run(1, "FAILED", 10)])
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nrules:\n  - name: r\n    action: delete\n    sql: SELECT id FROM flow_runs\n"
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    con = flowsync.connect(db)
    try:
        with pytest.raises(StoreError, match="already open in this process with other settings"):
            flowsync.plan(db, policy)
    finally:
        con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_second_name_a_killed_reader_left_is_removed_by_the_next_publish(tmp_path: Path) -> None:
    """A process killed between linking a generation's second name and opening it leaves
    the link: the next publish removes it with a publisher's leftovers; readers never see it."""
    from tests.policy_db import built_db, run

    db = built_db(tmp_path / "runs.duckdb", [run(1, "FAILED", 10)])
    with Store.writer(db) as store:
        first = snap.publish(store).snapshot
    left = first.path.with_name(f".{first.path.stem}.tmp-open-99999-0badcafe.duckdb")
    os.link(first.path, left)
    with Store.reader(db) as reader:
        assert reader.execute("SELECT count(*) FROM flow_runs").scalar() == 1
    with Store.writer(db) as store:
        store.execute("INSERT INTO flows (id, name, synced_at) VALUES (uuid(), 'x', now())")
        assert snap.publish(store).published
    assert not left.exists()


def test_a_first_pull_stopped_part_way_publishes_what_it_pulled(
    fresh_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first pull stopped part-way (Ctrl-C, here at a page of runs after a slow one made it
    write what it had) published nothing, so readers read the live file, and a notebook's
    ``flowsync.connect()`` then blocked the pull that would finish it (exit 6). It publishes
    what it pulled: readers open that snapshot, warned that it is partial; a second stop
    publishes again, what it has then; and the pull that finishes publishes beside an open
    notebook connection."""
    import warnings

    import flowsync
    from flowsync.api import PrefectClient
    from flowsync.config import ApiSettings
    from flowsync.errors import PartialFileWarning
    from flowsync.sync import PullOptions
    from tests.helpers import forwarding

    url, db = fresh_server.url, tmp_path / "runs.duckdb"
    seed(url, runs=50, flows=1, deployments_per_flow=1, seed_value=3)
    paged = PullOptions(page_size=10)  # five pages of runs

    def stopped(page: int) -> int:
        """A pull stopped at its ``page``-th page of runs; how many runs readers then see."""
        pages = [0]

        def stop(request: httpx.Request, n: int) -> None:
            if request.url.path.endswith("/flow_runs/filter"):
                pages[0] += 1
                if pages[0] == page - 2:
                    time.sleep(2.5)  # the pages read are written after 2 s
                if pages[0] == page:
                    raise KeyboardInterrupt

        with monkeypatch.context() as m:
            m.setattr(
                "flowsync.api.PrefectClient",
                lambda settings, **kw: PrefectClient(settings, transport=forwarding(stop), **kw),
            )
            with pytest.raises(KeyboardInterrupt):
                flowsync.pull(db, api=ApiSettings(url=url), options=paged)
        with pytest.warns(PartialFileWarning, match="first pull stopped before it finished"):
            reader = flowsync.connect(db)
        seen = reader.execute("SELECT count(*) FROM flow_runs").fetchone()
        reader.close()
        assert seen is not None and 0 < seen[0] < 50
        return int(seen[0])

    first = stopped(4)
    assert stopped(4) > first  # the second stop's runs too
    with pytest.warns(PartialFileWarning):
        notebook = flowsync.connect(db)
    try:
        pulled = flowsync.pull(db, api=ApiSettings(url=url), options=paged)
    finally:
        notebook.close()
    assert pulled.snapshot.published
    with warnings.catch_warnings():
        warnings.simplefilter("error", PartialFileWarning)
        whole = flowsync.connect(db)
    assert whole.execute("SELECT count(*) FROM flow_runs").fetchone() == (50,)
    whole.close()


def test_a_file_whose_first_pull_stopped_is_read_with_one_warning_that_it_is_partial(
    tmp_path: Path,
) -> None:
    """A first pull killed or failed part-way publishes no snapshot, so readers read the
    live file: its runs are part of the server's. Every reader says so in one warning
    line (the CLI, ``flowsync.connect``, a plan); a pull that finishes ends it, and a file
    no pull wrote (a notebook's own) is not partial."""
    import warnings

    import flowsync
    from flowsync.errors import PartialFileWarning
    from tests.policy_db import built_db, run

    db = built_db(tmp_path / "runs.duckdb", [run(n, "FAILED", 10) for n in range(1, 4)])
    read = run_cli("sql", "SELECT count(*) AS n FROM flow_runs", "--db", str(db))
    assert read.exit_code == 0 and "warning" not in read.stderr  # no pull ever wrote it
    with Store.writer(db) as store:
        store.execute(
            "INSERT INTO sync_runs (started_at, status, api_url, mode) "
            "VALUES (now(), 'interrupted', 'http://x/api', 'full')"
        )
    read = run_cli("sql", "SELECT count(*) AS n FROM flow_runs", "--db", str(db))
    assert read.exit_code == 0, read.output
    (line,) = [x for x in read.stderr.splitlines() if x.strip()]
    assert line.startswith("warning:") and "first pull stopped" in line and "3 runs" in line
    assert f"flowsync pull --db {db}" in " ".join(read.stderr.split())
    with pytest.warns(PartialFileWarning):
        flowsync.connect(db).close()
    with Store.writer(db) as store:
        store.execute(
            "INSERT INTO sync_runs (started_at, finished_at, status, api_url, mode) "
            "VALUES (now(), now(), 'ok', 'http://x/api', 'incremental')"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", PartialFileWarning)
        flowsync.connect(db).close()
    assert "warning" not in run_cli("sql", "SELECT 1", "--db", str(db)).stderr
