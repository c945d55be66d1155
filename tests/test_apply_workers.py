"""apply against a production-shaped server: PostgreSQL, Redis, two API workers.

``prefect server start --workers 2`` serves consecutive requests of one client from
different processes (a batch's re-read, its bulk call, the read-back after a lost
answer) and stores events in a third (the services process). Every apply decision
must still rest on the server as it is at the call: a write another client made
through one worker is seen by the re-read the other serves, a call the client gave up
on that one worker completes later is read back through the other and attributed to
this apply, and nothing outside the plan is touched. (The setup and audit helpers
are tests/apply_cases.py's, shared with test_apply_paths.py.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from harness.server import Server
from tests.apply_cases import (
    acting,
    audit_rows,
    batch_ids,
    bulk_ids,
    checks,
    failed_runs_to_reschedule,
    library_apply,
    live,
    marked_deleted,
    outcomes,
    policy_file,
    pulled_runs,
    purge,
    set_again_while_out,
    set_state,
)
from tests.helpers import Fault, another_client, forwarding, outside, patch_run

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def by_id(ids: list[str], state: str) -> str:
    """The SQL of a rule selecting exactly ``ids`` while they are in ``state``."""
    listed = ", ".join(f"'{i}'" for i in ids)
    return f"SELECT id FROM flow_runs WHERE id IN ({listed}) AND state_type = '{state}'"


def any_worker(fault: Fault | None = None) -> Fault:
    """``fault``, and every request of the apply on a connection of its own
    (``Connection: close``): each is served by whichever worker accepts it, never by the
    one a kept-alive connection is bound to (the re-read, the call and the read-back of
    one batch are not all one process's)."""

    def hook(request: httpx.Request, n: int) -> httpx.Response | None:
        request.headers["Connection"] = "close"
        return fault(request, n) if fault is not None else None

    return hook


def delete_run(server: Server, run: str) -> None:
    assert another_client(server.url, "DELETE", f"flow_runs/{run}").status_code == 204


def test_delete_and_set_state_policies_against_two_workers_with_another_client_changing_runs(
    two_workers: Server, tmp_path: Path
) -> None:
    """16 FAILED runs: a delete rule takes the first 8, a set_state (CANCELLED) rule the last 8,
    4 a batch. After the pull another client moves on, deletes and protects runs of the
    delete rule's batches; while the first bulk call is on its way it does the same to runs
    of the set_state rule's last batch (re-read after that call was answered, maybe by the
    other worker). Every run's audit row says what the server did: the changed ones are
    skipped or gone, the rest deleted or accepted, and nothing else on the server moved."""
    server = two_workers
    with pulled_runs(server, tmp_path, 16, "FAILED", "w2mix") as (ids, db, _):
        policy = policy_file(
            tmp_path,
            [
                {"name": "purge", "action": "delete", "sql": by_id(ids[:8], "FAILED")},
                {
                    "name": "cancel",
                    "action": "set_state",
                    "state": {"type": "CANCELLED"},
                    "force": True,
                    "sql": by_id(ids[8:], "FAILED"),
                },
            ],
            protect_tags=["keep"],
        )
        # the delete rule's two batches go first: the set_state rule's are re-read after
        # the first call was answered
        assert [set(b) <= set(ids[:8]) for b in batch_ids(db, policy, 4)] == [True] * 2 + [
            False
        ] * 2
        # Before the apply, through whichever worker answers: the first delete batch's.
        set_state(server, ids[:1], "COMPLETED")
        delete_run(server, ids[1])
        patch_run(server.url, ids[2], {"tags": ["w2mix", "keep"]})
        changed = threading.Event()
        calls: list[tuple[str, list[str]]] = []

        def during(request: httpx.Request, n: int) -> None:
            if "/bulk_" in request.url.path:
                calls.append((request.url.path.rsplit("/", 1)[-1], bulk_ids(request)))
                if not changed.is_set():  # the first call: batch 4 is re-read after its answer
                    changed.set()
                    set_state(server, ids[12:13], "COMPLETED")
                    delete_run(server, ids[13])
                    patch_run(server.url, ids[14], {"tags": ["w2mix", "keep"]})

        result = library_apply(server, db, policy, forwarding(any_worker(during)), batch_size=4)
        expected = {
            ids[0]: "skipped",
            ids[1]: "gone",
            ids[2]: "skipped",
            **dict.fromkeys(ids[3:8], "deleted"),
            **dict.fromkeys(ids[8:12], "accepted"),
            ids[12]: "skipped",
            ids[13]: "gone",
            ids[14]: "skipped",
            ids[15]: "accepted",
        }
        assert outcomes(db, ids) == expected
        assert audit_rows(db) == len(ids)
        assert live(server, ids) == {
            ids[0]: "COMPLETED",
            ids[2]: "FAILED",
            **dict.fromkeys(ids[8:12], "CANCELLED"),
            ids[12]: "COMPLETED",
            ids[14]: "FAILED",
            ids[15]: "CANCELLED",
        }
        # no call carried a run it was not to change
        assert {i for _, sent in calls for i in sent} <= set(ids) - {ids[1], ids[13]}
        assert sorted(marked_deleted(db, ids)) == sorted([ids[1], ids[13], *ids[3:8]])
        assert result.counts == {
            "purge": {"deleted": 5, "skipped": 2, "gone": 1},
            "cancel": {"accepted": 5, "skipped": 2, "gone": 1},
        }


@pytest.mark.parametrize("action", ["delete", "set_state"])
def test_a_timed_out_call_one_worker_completes_later_is_read_back_through_the_other(
    two_workers: Server, tmp_path: Path, action: str
) -> None:
    """The client gives up on the bulk call (a read timeout) while it is still on its way;
    another client sets one of its runs FAILED again (a new state the call's guard still
    meets), and only once the read-back has seen that does the call reach the server. The
    read-back keeps reading (each read maybe another worker's) until the call lands: every
    run, the one set again too, is this apply's, and nothing is sent twice."""
    server = two_workers
    tag = f"w2late-{action}"
    rule = acting(action, tag, "FAILED")
    with pulled_runs(server, tmp_path, 4, "FAILED", tag, [rule]) as (ids, db, policy):
        out = set_again_while_out(server, ids, ids[1], "FAILED")
        transport = forwarding(any_worker(out.fault), out.after)
        result = library_apply(server, db, policy, transport, settle_seconds=15)
        assert out.landed.wait(30)
        assert len(out.sent) == 1  # never sent again
        if action == "delete":
            assert live(server, ids) == {}
            assert outcomes(db, ids) == dict.fromkeys(ids, "deleted")
            assert result.counts == {"purge": {"deleted": 4}}
        else:
            assert live(server, ids) == dict.fromkeys(ids, "CANCELLED")
            assert outcomes(db, ids) == dict.fromkeys(ids, "accepted")
            assert result.counts == {"purge": {"accepted": 4}}
        assert audit_rows(db) == len(ids)


@pytest.mark.parametrize("action", ["delete", "set_state"])
def test_an_answer_lost_after_the_server_acted_is_read_back_through_the_other_worker(
    two_workers: Server, tmp_path: Path, action: str
) -> None:
    """The server carries the first call out and its answer is lost on the way back (a
    dropped connection), while the second batch's call is out too; before the read-back
    another client deletes a run of the third batch. The read-back (another request, maybe
    the other worker's) sees what the call did: its runs are this apply's, never sent again;
    the third batch, re-read after that answer, leaves its deleted run out (gone)."""
    server = two_workers
    tag = f"w2lost-{action}"
    rule = acting(action, tag, "FAILED")
    with pulled_runs(server, tmp_path, 9, "FAILED", tag, [rule]) as (ids, db, policy):
        first, second, third = batch_ids(db, policy, 3)
        sent: list[list[str]] = []
        dropped: list[str] = []

        def count(request: httpx.Request, n: int) -> None:
            if "/bulk_" in request.url.path:
                sent.append(bulk_ids(request))

        def drop(request: httpx.Request, response: httpx.Response) -> None:
            if (
                "/bulk_" in request.url.path
                and not dropped
                and set(bulk_ids(request)) == set(first)
            ):
                assert response.status_code == 200, response.text
                dropped.append(response.text)
                delete_run(server, third[0])  # another client, before the read-back
                raise httpx.RemoteProtocolError("connection dropped", request=request)

        result = library_apply(
            server, db, policy, forwarding(any_worker(count), drop), settle_seconds=10, batch_size=3
        )
        assert dropped
        # the first call never sent again; the third without its deleted run
        assert sorted(sorted(s) for s in sent) == sorted(
            [sorted(first), sorted(second), sorted(third[1:])]
        )
        done = "deleted" if action == "delete" else "accepted"
        taken = [*first, *second, *third[1:]]
        assert outcomes(db, ids) == {**dict.fromkeys(taken, done), third[0]: "gone"}
        assert audit_rows(db) == len(ids)
        if action == "delete":
            assert live(server, ids) == {}
            assert sorted(marked_deleted(db, ids)) == sorted(ids)
        else:
            assert live(server, ids) == dict.fromkeys(taken, "CANCELLED")
        assert result.counts == {"purge": {done: 8, "gone": 1}}


def test_runs_refused_inside_an_http_200_whose_answer_is_lost_are_sent_again_and_refused(
    two_workers: Server, tmp_path: Path
) -> None:
    """Failed runs rescheduled without ``force``: Prefect aborts the three with no deployment
    and accepts the others, run by run inside an HTTP 200. Batch 1's answer (three aborted,
    one accepted) is lost on the way back: the read-back, through either worker, shows the
    accepted run SCHEDULED (this apply's) and the aborted ones unchanged for the whole bound;
    those are re-read and sent again, and their audit rows carry Prefect's own refusal."""
    server = two_workers
    orphans, deployed, db, policy = failed_runs_to_reschedule(server, tmp_path, "w2refuse")
    ids = orphans + deployed
    others = outside(server, ids)
    first, second = batch_ids(db, policy, 4)
    assert set(orphans) < set(first)  # the oldest first
    bodies: list[tuple[list[str], list[str]]] = []
    dropped: list[httpx.Request] = []  # (batch 2's call may be answered before batch 1's)

    def seen(request: httpx.Request, response: httpx.Response) -> None:
        if request.url.path.endswith("bulk_set_state"):
            assert response.status_code == 200, response.text
            bodies.append(
                (bulk_ids(request), sorted(r["status"] for r in response.json()["results"]))
            )
            if not dropped and set(bulk_ids(request)) == set(first):
                dropped.append(request)
                raise httpx.ReadError("connection reset", request=request)

    result = library_apply(
        server, db, policy, forwarding(any_worker(), seen), settle_seconds=2, batch_size=4
    )
    assert outside(server, ids) == others  # nothing outside the selection touched
    assert dropped
    assert sorted((sorted(b), s) for b, s in bodies) == sorted(
        [
            (sorted(first), ["ABORT"] * 3 + ["ACCEPT"]),
            (sorted(second), ["ACCEPT"] * 2),
            (sorted(orphans), ["ABORT"] * 3),  # sent again once unchanged for the bound
        ]
    )
    assert live(server, ids) == {
        **dict.fromkeys(orphans, "FAILED"),
        **dict.fromkeys(deployed, "SCHEDULED"),
    }
    assert outcomes(db, ids) == {
        **dict.fromkeys(orphans, "aborted"),
        **dict.fromkeys(deployed, "accepted"),
    }
    assert result.counts == {"rerun": {"aborted": 3, "accepted": 3}}
    assert audit_rows(db) == len(ids)


def test_keep_newest_re_reads_the_kept_runs_after_another_client_deleted_one_mid_apply(
    two_workers: Server, tmp_path: Path
) -> None:
    """keep_newest 2 over 10 FAILED runs: the plan deletes the 8 oldest, 4 a batch. While batch
    1's call is on its way another client deletes the newest kept run (no event says so). Batch
    2 is re-read after that answer, with the runs that outrank it (maybe by the other worker):
    the deleted one is gone, so the newest of batch 2 is now one of the two newest FAILED runs
    and is kept."""
    server = two_workers
    rules = [purge("w2keep", "FAILED", keep_newest=2)]
    with pulled_runs(server, tmp_path, 10, "FAILED", "w2keep", rules) as (ids, db, policy):
        first, second = batch_ids(db, policy, 4)
        assert (set(first), set(second)) == (set(ids[:4]), set(ids[4:8]))  # the oldest first
        deleted: list[str] = []

        def during(request: httpx.Request, n: int) -> None:
            if "/bulk_" in request.url.path and not deleted:
                deleted.append(ids[9])
                delete_run(server, ids[9])  # another client, before batch 1 is answered

        result = library_apply(server, db, policy, forwarding(any_worker(during)), batch_size=4)
        assert deleted
        assert live(server, ids) == dict.fromkeys(ids[7:9], "FAILED")
        assert outcomes(db, ids[:8]) == {**dict.fromkeys(ids[:7], "deleted"), ids[7]: "skipped"}
        assert checks(db, ids[7:8]) == {ids[7]: "keep_newest"}
        assert audit_rows(db) == 8
        assert result.counts == {"purge": {"deleted": 7, "skipped": 1}}


def hold_row(dsn: str, run: str, locked: threading.Event, release: threading.Event) -> None:
    """Another client's write transaction on the run's row (PostgreSQL), open until ``release``."""
    import asyncio
    import uuid

    import asyncpg  # type: ignore[import-untyped]

    async def main() -> None:
        con = await asyncpg.connect(dsn)
        try:
            async with con.transaction():
                await con.execute("SELECT 1 FROM flow_run WHERE id = $1 FOR UPDATE", uuid.UUID(run))
                locked.set()
                while not release.is_set():
                    await asyncio.sleep(0.05)
        finally:
            await con.close()

    asyncio.run(main())


@pytest.mark.xfail(
    strict=True,
    reason="Prefect's bulk_delete reads the runs its filter (the state guard) matches, then "
    "deletes them by id in a second statement of the same transaction; on PostgreSQL (READ "
    "COMMITTED) a state change another client commits between the two is not re-checked, and "
    "the run is deleted in its new state. No call flowsync can send closes that window.",
)
def test_a_run_another_client_starts_while_the_guarded_bulk_delete_runs_is_not_deleted(
    two_workers: Server, tmp_path: Path
) -> None:
    """A purge of COMPLETED runs. When its bulk_delete reaches the server, another client's
    write transaction holds one run's row (a worker of the server setting it RUNNING waits
    behind it, as does the delete once it has read its runs). The row is released: the run
    is RUNNING first, then the delete, guarded by COMPLETED, acts. A run no longer COMPLETED
    must not be deleted (the state guard, docs/policies.md); it is `skipped`."""
    server = two_workers
    assert server.database_url is not None
    dsn = server.database_url.replace("+asyncpg", "")
    with pulled_runs(server, tmp_path, 3, "COMPLETED", "w2guard") as (ids, db, policy):
        victim = ids[1]
        locked, release, started = threading.Event(), threading.Event(), threading.Event()
        answers: list[str] = []

        def start() -> None:  # another client: the run is retried and starts
            started.set()
            r = httpx.post(
                f"{server.url}/flow_runs/{victim}/set_state",
                json={"state": {"type": "RUNNING", "name": "Running"}, "force": True},
                timeout=60,
            )
            answers.append(r.json()["status"])

        def during(request: httpx.Request, n: int) -> None:
            if "/bulk_delete" in request.url.path and not locked.is_set():
                threading.Thread(target=hold_row, args=(dsn, victim, locked, release)).start()
                assert locked.wait(10)
                threading.Thread(target=start).start()
                assert started.wait(10)
                time.sleep(0.5)  # its set_state waits behind the row
                threading.Timer(1.0, release.set).start()  # then the delete reads, and waits

        library_apply(server, db, policy, forwarding(any_worker(during)))
        assert answers == ["ACCEPT"]  # the run was set RUNNING before the delete acted
        assert live(server, ids) == {victim: "RUNNING"}
        assert outcomes(db, ids) == {**dict.fromkeys(ids, "deleted"), victim: "skipped"}
