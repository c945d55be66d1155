"""A file follows its server to a new URL after an identity check; another server is refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowsync.api import PrefectClient
from flowsync.config import ApiSettings
from flowsync.errors import ApiError, ConfigError
from flowsync.store import Store, sync_log
from flowsync.sync import identity
from harness.seed import seed
from harness.server import Server, free_port
from tests.helpers import forwarding, run_cli, scalar, wait_for_state_events
from tests.server_truth import assert_matches_server


def scalar_count(url: str) -> int:
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        return int(c.post("flow_runs/count", json={}).json())


def pull(url: str, db: Path) -> tuple[dict[str, object], str]:
    result = run_cli("pull", "--api-url", url, "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout)), result.stderr


def pull_and_purge(url: str, db: Path) -> tuple[Any, Any]:
    """``flowsync pull``, then ``flowsync apply --yes`` of a policy deleting every live run
    in the file, against ``url``: the click Results, unchecked."""
    policy = db.with_name("purge.yaml")
    policy.write_text(
        "version: 1\nmax_actions: 1000\nrules:\n  - name: purge\n    action: delete\n"
        "    sql: SELECT id FROM flow_runs WHERE deleted_at IS NULL\n"
    )
    pulled = run_cli("pull", "--api-url", url, "--db", str(db))
    return pulled, run_cli("apply", str(policy), "--api-url", url, "--db", str(db), "--yes")


def test_same_server_by_another_name_is_followed_and_another_server_refused(
    fresh_server: Server, start_server: Any, tmp_path: Path
) -> None:
    url = fresh_server.url
    assert "127.0.0.1" in url
    seed(url, runs=60, flows=2, deployments_per_flow=2, seed_value=31)
    db = tmp_path / "runs.duckdb"
    pull(url, db)
    runs = scalar(db, "SELECT count(*) FROM flow_runs")

    other_name = url.replace("127.0.0.1", "localhost")
    summary, _ = pull(other_name, db)
    assert summary["mode"] == "incremental" and summary["inserted"] == 0
    assert summary["moved"] == {
        "from": url,
        "to": other_name,
        "evidence": "it has 2 of the file's 2 flows, checked by id",
    }
    shown = run_cli(
        "pull", "--api-url", url, "--db", str(db)
    )  # and back, with the message on stderr
    assert shown.exit_code == 0 and "the file now follows" in shown.stderr
    assert pull(other_name, db)[0]["moved"]
    assert scalar(db, "SELECT count(*) FROM flow_runs") == runs
    with Store.reader(db, live=True) as store:
        assert sync_log.get_state(store, identity.URL_KEY) == other_name
        moves = sync_log.get_state(store, identity.MOVES_KEY)
    # No row changed, but readers (report links, plan) see the URL the file follows now.
    with Store.reader(db) as snapshot:
        assert sync_log.get_state(snapshot, identity.URL_KEY) == other_name
    assert [(m["from"], m["to"]) for m in moves] == [
        (url, other_name),
        (other_name, url),
        (url, other_name),
    ]
    assert_matches_server(db, other_name)

    # Same flow names, deployments and seed on another server: still another server.
    with start_server(home=tmp_path / "second-prefect") as second:
        seed(second.url, runs=60, flows=2, deployments_per_flow=2, seed_value=31)
        # apply re-reads its runs by id and marks the ones the server lacks deleted:
        # against another server it must refuse before reading, or the history is lost.
        refused, applied = pull_and_purge(second.url, db)
        second_runs = scalar_count(second.url)
    assert applied.exit_code == 2, applied.output
    assert (
        "is a different server" in " ".join(applied.stderr.split())
        and "Traceback" not in applied.output
    )
    assert second_runs == 60  # nothing was sent to the other server
    assert scalar(db, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NOT NULL") == 0
    assert scalar(db, "SELECT count(*) FROM policy_actions") == 0
    assert refused.exit_code == 2
    line = " ".join(refused.stderr.split())
    assert "is a different server (it has none of the file's 2 flows, checked by id" in line, line
    assert "another --db" in line and "Traceback" not in refused.output
    with Store.reader(db, live=True) as store:
        assert sync_log.get_state(store, identity.URL_KEY) == other_name  # nothing changed
    assert scalar(db, "SELECT count(*) FROM flow_runs") == runs


def test_another_server_started_at_the_files_own_url_is_refused(
    start_server: Any, tmp_path: Path
) -> None:
    """A new database at the same address (a reset, a container recreated with a new volume)
    knows none of the file's flows: pull and apply refuse it, as they do at a new URL; the
    pull had marked the file's whole history deleted and mixed the two servers' runs."""
    port, db = free_port(), tmp_path / "runs.duckdb"
    with start_server(home=tmp_path / "first", port=port) as first:
        seed(first.url, runs=40, flows=2, deployments_per_flow=1, days=5, seed_value=3)
        pull(first.url, db)
    with start_server(home=tmp_path / "second", port=port) as second:
        assert second.url == first.url
        seed(second.url, runs=40, flows=2, deployments_per_flow=1, days=5, seed_value=4)
        refused, applied = pull_and_purge(second.url, db)
        assert scalar_count(second.url) == 40
    for result in (refused, applied):
        line = " ".join(result.stderr.split())
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "the server there now has none of the file's 2 flows, checked by id" in line, line
    assert scalar(db, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NOT NULL") == 0
    assert scalar(db, "SELECT count(*) FROM flow_runs") == 40


def test_a_file_whose_flows_were_all_deleted_refuses_another_server_until_nothing_can_tell(
    start_server: Any, tmp_path: Path
) -> None:
    """Every flow of the file deleted on its server and pulled (the file holds them all
    marked deleted): it was taken for a file that holds no flows yet, so a new database at
    its URL was followed without a word, its runs written beside the old server's."""
    import sqlite3

    import duckdb

    port, db = free_port(), tmp_path / "runs.duckdb"
    with start_server(home=tmp_path / "first", port=port) as first:
        seed(first.url, runs=20, flows=1, deployments_per_flow=1, days=5, seed_value=3)
        pull(first.url, db)
        with httpx.Client(base_url=first.url + "/", timeout=60) as c:
            for flow in c.post("flows/filter", json={}).json():
                assert c.delete(f"flows/{flow['id']}").status_code == 204
        pull(first.url, db)  # the same server: it holds the state events of the file's runs
        assert scalar(db, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL") == 0
    with start_server(home=tmp_path / "second", port=port) as second:
        seed(second.url, runs=25, flows=1, deployments_per_flow=1, days=5, seed_value=4)
        refused, applied = pull_and_purge(second.url, db)
        assert scalar_count(second.url) == 25
    assert applied.exit_code == 0, applied.output  # the file's runs all deleted: nothing to do
    line = " ".join(refused.stderr.split())
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    assert "every flow the file holds was deleted on its server" in line, line
    assert scalar(db, "SELECT count(*) FROM flow_runs") == 20
    # A week and more later at its own address: the first server's events have aged out and
    # the file's runs are as old, so nothing can tell. Taken to be the same server, not
    # refused for good (another address would still be refused).
    with sqlite3.connect(tmp_path / "first" / "prefect.db") as server_db:
        server_db.execute("DELETE FROM event_resources")
        server_db.execute("DELETE FROM events")
    server_db.close()
    with duckdb.connect(str(db)) as file:
        file.execute("UPDATE flow_runs SET state_timestamp = state_timestamp - INTERVAL 8 DAY")
    with start_server(home=tmp_path / "first", port=port) as first:
        seed(first.url, runs=10, flows=1, deployments_per_flow=1, days=1, seed_value=5)
        summary, _ = pull(first.url, db)
    assert summary["mode"] == "incremental", summary
    assert scalar(db, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL") == 10


def test_a_server_whose_flows_were_all_deleted_is_still_the_files_server(
    fresh_server: Server, tmp_path: Path
) -> None:
    """Every flow the file holds deleted on the server (their runs with them) and one
    deployed again under the same name (a new id): the same database, which still holds the
    state events of the file's runs. It was refused as another server, for good."""
    url, db = fresh_server.url, tmp_path / "runs.duckdb"
    seed(url, runs=30, flows=1, deployments_per_flow=1, days=5, seed_value=5)
    pull(url, db)
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        for flow in c.post("flows/filter", json={}).json():
            assert c.delete(f"flows/{flow['id']}").status_code == 204
    # The events query that tells it failing (a 401, a server error after the retries) is
    # that failure, not "another server": it was taken as "no events", and refused so.
    for status in (401, 500):

        def fault(request: httpx.Request, n: int, status: int = status) -> httpx.Response | None:
            return httpx.Response(status) if request.url.path.endswith("/events/filter") else None

        with (
            Store.writer(db) as store,
            PrefectClient(
                ApiSettings(url=url), transport=forwarding(fault), sleep=lambda s: None
            ) as client,
            pytest.raises(ApiError) as failed,
        ):
            identity.bind(client, store)
        assert str(status) in str(failed.value), failed.value
    seeded = seed(url, runs=10, flows=1, deployments_per_flow=1, days=5, seed_value=6)
    assert scalar_count(url) == 10
    # A pull finds the new runs by their state events: it must not start before Prefect's
    # event persister has stored them (every 5 s; later on a loaded machine). Before that,
    # only the history check could tell, and a bucket where an old run and a new one of the
    # same state trade places counts the same on both sides.
    for state_type in set(seeded.runs.values()):
        wait_for_state_events(
            url, [i for i, s in seeded.runs.items() if s == state_type], state_type
        )
    pulled, applied = pull_and_purge(url, db)
    assert pulled.exit_code == 0 and applied.exit_code == 0, pulled.stderr + applied.stderr
    # the 30 gone with their flows, then the 10 new ones the purge deleted
    gone = scalar(db, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NOT NULL")
    assert gone == 40, pulled.stdout + applied.stdout
    assert scalar_count(url) == 0


ACCOUNT = "5f1c2e2a-0000-4000-8000-000000000001"
WORKSPACE = "5f1c2e2a-0000-4000-8000-000000000002"


def _cloud(host: str, workspace: str = WORKSPACE) -> PrefectClient:
    return PrefectClient(
        ApiSettings(url=f"https://{host}/api/accounts/{ACCOUNT}/workspaces/{workspace}")
    )


def test_cloud_workspaces_are_bound_by_their_ids(tmp_path: Path) -> None:
    db = tmp_path / "cloud.duckdb"
    with Store.writer(db) as store:
        with _cloud("api.prefect.cloud") as client:
            assert identity.bind(client, store) is None
        # Through a corporate proxy: same account and workspace ids.
        with _cloud("prefect-proxy.example.com") as client:
            moved = identity.bind(client, store)
        assert moved is not None and "same Cloud account and workspace ids" in moved.evidence
        with (
            _cloud("api.prefect.cloud", workspace="5f1c2e2a-0000-4000-8000-000000000003") as client,
            pytest.raises(ConfigError, match="another Cloud account or workspace"),
        ):
            identity.bind(client, store)
        with (
            PrefectClient(ApiSettings(url="http://127.0.0.1:4200/api")) as client,
            pytest.raises(ConfigError, match="Cloud and a self-hosted server"),
        ):
            identity.bind(client, store)
        assert sync_log.get_state(store, identity.URL_KEY).startswith(
            "https://prefect-proxy.example.com/"
        )


WORKSPACE = (
    "accounts/5f1c2e2a-0000-4000-8000-000000000001/workspaces/5f1c2e2a-0000-4000-8000-000000000002"
)


def empty_workspace(
    version: list[int | type[BaseException]],
) -> Callable[[httpx.Request], httpx.Response]:
    """A Prefect Cloud workspace holding nothing, at any host; ``/admin/version`` answers
    3.8.8 with the status ``version[0]``, or raises it (an exception: Ctrl-C meanwhile)."""

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path.split(WORKSPACE, 1)[-1].strip("/")
        if path == "health":
            return httpx.Response(200, json=True, headers={"date": "Sun, 06 Dec 2026 01:00:00 GMT"})
        if path == "admin/version":
            if not isinstance(version[0], int):
                raise version[0]
            return httpx.Response(version[0], json="3.8.8")
        if path.endswith("/count"):
            return httpx.Response(200, json=0)
        return httpx.Response(404 if path == "admin/settings" else 200, json=[])

    return handler


def pulled_and_published(db: Path, url: str, version: list[int | type[BaseException]]) -> bool:
    """A pull of ``empty_workspace`` at ``url`` into ``db``, then its publish: published?"""
    from flowsync.store import snapshot as snap
    from flowsync.sync import pull as pull_runs

    transport = httpx.MockTransport(empty_workspace(version))
    with (
        Store.writer(db) as store,
        PrefectClient(ApiSettings(url=url), transport=transport, sleep=lambda s: None) as client,
    ):
        result = pull_runs(client, store)
        return snap.publish(store, pull_id=result.pull_id, changed=result.changed).published


@pytest.mark.parametrize("stop", [401, KeyboardInterrupt], ids=["401", "ctrl-c"])
def test_a_url_move_whose_pull_then_failed_is_published_by_the_next_pull(
    tmp_path: Path, stop: int | type[BaseException]
) -> None:
    """The file follows its workspace to a new URL (the move is written), then the same pull
    stops (a key the new address refuses: 401 on /admin/version; or Ctrl-C meanwhile). The
    next pull, which sees no move (the URL is already the file's) and the same server, still
    publishes: readers see the new URL."""
    from flowsync.errors import AuthError

    old, new = (f"https://{host}/api/{WORKSPACE}" for host in ("api.prefect.cloud", "proxy.test"))
    db = tmp_path / "runs.duckdb"
    version: list[int | type[BaseException]] = [200]
    pulled_and_published(db, old, version)
    version[0] = stop
    with pytest.raises(AuthError if stop == 401 else KeyboardInterrupt):
        pulled_and_published(db, new, version)
    version[0] = 200
    assert pulled_and_published(db, new, version)
    with Store.reader(db) as snapshot:
        assert sync_log.get_state(snapshot, identity.URL_KEY) == new


def test_a_version_the_server_failed_to_say_changes_no_record_and_publishes_nothing(
    tmp_path: Path,
) -> None:
    """/admin/version answers 503 (twice: a blip): the server's record stays as the last pull
    left it, rather than 'no version, so bulk endpoints' and back, two needless publishes."""
    url, db = f"https://api.prefect.cloud/api/{WORKSPACE}", tmp_path / "r.duckdb"
    version: list[int | type[BaseException]] = [200]
    pulled_and_published(db, url, version)
    version[0] = 503
    assert not pulled_and_published(db, url, version)
    version[0] = 200
    assert not pulled_and_published(db, url, version)
    with Store.reader(db, live=True) as store:
        assert sync_log.get_state(store, identity.SERVER_KEY)["version"] == "3.8.8"
