"""What the apply tests share (test_apply_paths.py, test_apply_workers.py): runs on a real
server, a pulled file and a policy file; the audit read back; apply through a transport
that forwards to the server (``tests.helpers.forwarding``) and the requests it sees."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import httpx
import yaml

from flowsync.api import PrefectClient, RetryPolicy
from flowsync.config import ApiSettings
from flowsync.policy import ApplyResult, Plan, apply_plan, make_plan, parse_policy
from flowsync.store import SandboxedWriter, Store
from harness.seed import new_deployment, post_json, runs_in_state, set_states
from harness.server import Server
from tests.helpers import (
    outside,
    pulled_db,
    query,
    run_cli,
    wait_for_state_events,
)


def deployment(server: Server) -> str:
    """A new flow and deployment of its own (each test ranks only its own runs)."""
    return new_deployment(server.url, f"paths-{uuid.uuid4().hex[:8]}")


def runs(server: Server, dep: str, n: int, state: str, tag: str) -> list[str]:
    """``n`` runs of ``dep`` in ``state``, tagged ``tag``, oldest first (a day apart)."""
    return runs_in_state(server.url, dep, n, state, tag, timedelta(days=1))


def set_state(server: Server, ids: list[str], state: str) -> None:
    with httpx.Client(base_url=server.url + "/", timeout=60) as c:
        set_states(c, ids, state, state.title())


def live(server: Server, ids: list[str]) -> dict[str, str]:
    """run id -> state type, for the runs of ``ids`` the server still has."""
    found = httpx.post(
        f"{server.url}/flow_runs/filter",
        json={"flow_runs": {"id": {"any_": ids}}, "limit": 200},
        timeout=60,
    ).json()
    return {r["id"]: r["state_type"] for r in found}


class Case(NamedTuple):
    """Runs of a deployment of their own, a file pulled after they were made, and a policy
    file for them."""

    ids: list[str]
    db: Path
    policy: Path


def policy_file(folder: Path, rules: list[dict[str, Any]], **top: Any) -> Path:
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump({"version": 1, **top, "rules": rules}, sort_keys=False))
    return path


def tagged(tag: str, state: str | None = None) -> str:
    """The live runs tagged ``tag`` (in ``state``, if given)."""
    sql = f"SELECT id FROM flow_runs WHERE deleted_at IS NULL AND list_contains(tags, '{tag}')"
    return sql if state is None else f"{sql} AND state_type = '{state}'"


def purge(
    tag: str, state: str | None = None, name: str = "purge", **options: Any
) -> dict[str, Any]:
    """A rule: delete the runs tagged ``tag`` (in ``state``, if given)."""
    return {"name": name, "action": "delete", **options, "sql": tagged(tag, state)}


def cancelling(sql: str, name: str = "cancel") -> dict[str, Any]:
    """A rule: set the runs ``sql`` selects CANCELLED, forced."""
    return {
        "name": name,
        "action": "set_state",
        "state": {"type": "CANCELLED"},
        "force": True,
        "sql": sql,
    }


def acting(action: str, tag: str, state: str) -> dict[str, Any]:
    """A rule named ``purge`` on the runs tagged ``tag`` in ``state``: ``delete`` them, or
    (``set_state``) cancel them, forced."""
    return cancelling(tagged(tag, state), "purge") if action == "set_state" else purge(tag, state)


@contextmanager
def pulled_runs(
    server: Server,
    folder: Path,
    n: int,
    state: str,
    tag: str,
    rules: list[dict[str, Any]] | None = None,
    **top: Any,
) -> Iterator[Case]:
    """``runs`` of a new ``deployment``, a pull into ``folder``, and a policy file of
    ``rules`` (by default one ``purge`` of them); on the way out, checks that every other
    run on the server is as it was before (nothing outside the selection touched)."""
    ids = runs(server, deployment(server), n, state, tag)
    # The server stores the runs' state events in the background; on SQLite a write of the
    # apply's meeting that one is answered 503 (a lost answer, settled and resent by design),
    # which would change the calls a test counts.
    wait_for_state_events(server.url, ids, state)
    db = pulled_db(server.url, folder)
    others = outside(server, ids)
    yield Case(ids, db, policy_file(folder, rules or [purge(tag, state)], **top))
    assert outside(server, ids) == others  # nothing outside the selection touched


def marked_deleted(db: Path, ids: list[str]) -> list[str]:
    """The runs of ``ids`` the file marks deleted."""
    rows = query(
        db,
        "SELECT CAST(id AS VARCHAR) FROM flow_runs WHERE deleted_at IS NOT NULL AND id IN "
        "(SELECT unnest(CAST(? AS UUID[])))",
        [ids],
    )
    return [r[0] for r in rows]


def audited(db: Path, ids: list[str], column: str) -> dict[str, Any]:
    """run -> ``column`` of its audit row (an expression over ``policy_actions``)."""
    rows = query(
        db,
        f"SELECT CAST(flow_run_id AS VARCHAR), {column} FROM policy_actions "
        "WHERE flow_run_id IN (SELECT unnest(CAST(? AS UUID[])))",
        [ids],
    )
    return {r[0]: r[1] for r in rows}


def outcomes(db: Path, ids: list[str]) -> dict[str, str]:
    return audited(db, ids, "outcome")


def checks(db: Path, ids: list[str]) -> dict[str, str | None]:
    """run -> the check its audit row names (``details.check``), for the runs of ``ids``."""
    return audited(db, ids, "details->>'check'")


def audit_rows(db: Path) -> int:
    """The file's audit rows, every apply's: with ``outcomes`` equal to what a test expects for
    its runs, one row a run says the audit is exact (no run twice, none outside them)."""
    return int(query(db, "SELECT count(*) FROM policy_actions")[0][0])


def apply_cli(server: Server, db: Path, policy: Path, *extra: str) -> Any:
    return run_cli(
        "apply", str(policy), "--db", str(db), "--api-url", server.url, "--yes", "--json", *extra
    )


@contextmanager
def planned(db: Path, policy: Path) -> Iterator[tuple[SandboxedWriter, Plan]]:
    """The store apply writes to, and the plan of ``policy`` on it."""
    loaded = parse_policy(policy.read_bytes(), str(policy))
    with Store.sandboxed_writer(db) as store:
        yield store, make_plan(store, loaded)


def fault_client(
    server: Server, transport: httpx.BaseTransport, retry: RetryPolicy, sleep: Any = time.sleep
) -> PrefectClient:
    """A client of the real server with a fault ``transport`` in front of it."""
    return PrefectClient(ApiSettings(url=server.url), transport=transport, retry=retry, sleep=sleep)


def library_apply(
    server: Server,
    db: Path,
    policy: Path,
    transport: httpx.BaseTransport,
    sleep: Any = time.sleep,
    settle_seconds: float = 10.0,
    batch_size: int = 50,
    result: ApplyResult | None = None,
) -> ApplyResult:
    """apply through the library, with a fault transport in front of the real server;
    ``result``: filled as the apply goes (read it when the apply raises)."""
    with planned(db, policy) as (store, plan):
        retry = RetryPolicy(attempts=3, base_delay=0.05)
        with fault_client(server, transport, retry, sleep) as client:
            return apply_plan(
                client,
                store,
                plan,
                settle_seconds=settle_seconds,
                batch_size=batch_size,
                result=result,
            )


def batch_ids(db: Path, policy: Path, size: int) -> list[list[str]]:
    """The runs of each batch an apply of ``policy`` sends, in order, ``size`` at most each."""
    from flowsync.policy.apply import batches

    with planned(db, policy) as (_, plan):
        return [b.ids for b in batches(plan, size)]


def bulk_ids(request: httpx.Request) -> list[str]:
    return list(json.loads(request.content)["flow_runs"]["id"]["any_"])


def reads(request: httpx.Request, ids: list[str] | set[str] | frozenset[str]) -> bool:
    """The request is a re-read (``/flow_runs/filter`` by id) of exactly the runs ``ids``."""
    if not request.url.path.endswith("flow_runs/filter"):
        return False
    try:
        return set(json.loads(request.content)["flow_runs"]["id"]["any_"] or ()) == set(ids)
    except (KeyError, TypeError, ValueError):
        return False


def flow_only_runs(server: Server, dep: str, n: int, state: str, tag: str) -> list[str]:
    """``n`` runs of ``dep``'s flow but of no deployment, in ``state``, tagged ``tag``, older
    than any run ``runs`` makes (a month back, a day apart)."""
    flow_id = httpx.get(f"{server.url}/deployments/{dep}", timeout=60).json()["flow_id"]
    now = datetime.now(timezone.utc)
    ids = []
    with httpx.Client(base_url=server.url + "/", timeout=60) as c:
        for i in range(n):
            when = (now - timedelta(days=30 + n - i)).isoformat()
            body = {
                "flow_id": flow_id,
                "tags": [tag],
                "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": when}},
            }
            ids.append(str(post_json(c, "flow_runs/", body)["id"]))
        set_states(c, ids, state, state.title())
    return ids


def failed_runs_to_reschedule(
    server: Server, tmp_path: Path, tag: str
) -> tuple[list[str], list[str], Path, Path]:
    """Three FAILED runs with no deployment (the oldest) and three of a deployment, tagged
    ``tag``, pulled into a file; and a policy rescheduling them without ``force`` (Prefect
    aborts the ones with no deployment): (no deployment, deployed, the file, the policy)."""
    dep = deployment(server)
    orphans = flow_only_runs(server, dep, 3, "FAILED", tag)
    deployed = runs(server, dep, 3, "FAILED", tag)
    wait_for_state_events(server.url, orphans + deployed, "FAILED")
    db = pulled_db(server.url, tmp_path)
    rule = {
        "name": "rerun",
        "action": "set_state",
        "state": {"type": "SCHEDULED", "name": "Scheduled"},
        "sql": tagged(tag, "FAILED"),
    }
    return orphans, deployed, db, policy_file(tmp_path, [rule])


def lands_after(
    request: httpx.Request,
    change: Callable[[], None],
    seen: threading.Event,
    landed: threading.Event,
) -> NoReturn:
    """The client gives up on ``request`` (a read timeout) while it is still on its way:
    another client's ``change`` comes first; once the apply's read-back has seen it (``seen``),
    the request reaches the real server (then ``landed``)."""
    method, url = request.method, str(request.url)
    body, headers = request.content, dict(request.headers)

    def later() -> None:
        change()  # another client
        seen.wait(30)
        time.sleep(0.3)
        httpx.request(method, url, content=body, headers=headers, timeout=60)
        landed.set()

    threading.Thread(target=later, daemon=True).start()
    raise httpx.ReadTimeout("timed out", request=request)


def state_id_on_server(server: Server, run: str) -> str:
    return str(httpx.get(f"{server.url}/flow_runs/{run}", timeout=60).json()["state_id"])


class SetAgain(NamedTuple):
    """``set_again_while_out``'s hooks for ``forwarding(fault, after)``, the bulk calls sent
    (their ids, in order) and the event set once the first reached the server."""

    fault: Callable[[httpx.Request, int], httpx.Response | None]
    after: Callable[[httpx.Request, httpx.Response], None]
    sent: list[list[str]]
    landed: threading.Event


def set_again_while_out(server: Server, ids: list[str], moved: str, state: str) -> SetAgain:
    """The first bulk call is given up on by the client (``lands_after``: a read timeout)
    while another client sets ``moved`` in ``state`` again (a new state the call's guard still
    meets); it reaches the server once a read-back of ``ids`` (or of ``moved``) has seen that."""
    before = state_id_on_server(server, moved)
    sent: list[list[str]] = []
    seen, landed = threading.Event(), threading.Event()

    def fault(request: httpx.Request, n: int) -> httpx.Response | None:
        if "/bulk_" in request.url.path:
            sent.append(bulk_ids(request))
            if len(sent) == 1:
                lands_after(request, lambda: set_state(server, [moved], state), seen, landed)
        return None

    def after(request: httpx.Request, response: httpx.Response) -> None:
        if reads(request, ids) or reads(request, [moved]):
            found = {r["id"]: r.get("state_id") for r in response.json()}
            if found.get(moved) not in (None, before):
                seen.set()

    return SetAgain(fault, after, sent, landed)
