"""Which Prefect server a file belongs to: bound to the server's identity, not its URL string.

Owns: the rule "one file, one server" and the check that lets a file follow
its server to a new URL (``localhost`` instead of ``127.0.0.1``, a TLS proxy
in front, a move to another host). The identity of a Prefect Cloud workspace
is the account and workspace ids in its URL; an open-source server's is what
it holds: flow ids are random UUIDs minted by that server's database, so a
server that knows the file's flows by id is the same server (or a restore of
its database), and one that knows none of them is another server. A re-point
is recorded in ``sync_state`` (``api_url_moves``) and reported. What the
server said it is (its version, Cloud or not, bulk endpoints or not) is
recorded on every pull (``server``, see ``record_server``), for ``flowsync
status`` and for whoever reads the file later; so is how long it keeps runs
(``run_retention``, see ``record_retention``), on pulls that find runs gone, so
the ``deleted_runs`` view can tell a run the server aged out from one a person
deleted. Must not:
print (the message goes back to the caller), or touch flow runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from flowsync.api import Capabilities, PrefectClient, RunRetention
from flowsync.config import PULL_EVENTS_HORIZON_DAYS, cloud_workspace
from flowsync.errors import (
    ApiError,
    ConfigError,
    NotFoundError,
    UnavailableError,
    UnsupportedError,
)
from flowsync.store import Store, Writer, sync_log, synced_tables

URL_KEY = "api_url"
MOVES_KEY = "api_url_moves"
RETENTION_KEY = (
    "run_retention"  # {"known", "seconds", "source", "seen_at"}: read by sql/ deleted_runs
)
SERVER_KEY = sync_log.SERVER_KEY
# Flows checked by id when the URL changed: any match proves the same database.
SAMPLE = 200


@dataclass(frozen=True)
class Moved:
    """The file was bound to ``old_url`` and now follows ``new_url``; ``evidence`` says why."""

    old_url: str
    new_url: str
    evidence: str

    def to_json(self) -> dict[str, str]:
        return {"from": self.old_url, "to": self.new_url, "evidence": self.evidence}

    def describe(self) -> str:
        return (
            f"{self.new_url} is the server this file was pulled from as {self.old_url} "
            f"({self.evidence}); the file now follows {self.new_url}."
        )


def _refuse(store: Store, known: str, url: str, why: str) -> ConfigError:
    return ConfigError(
        f"{store.path} holds runs from {known}, and {url} is a different server ({why}); "
        "use another --db for this server."
    )


def _same_server(client: PrefectClient, store: Store, known: str, url: str) -> str:
    """Evidence that ``url`` serves the history in ``store``; raises ConfigError if it does not."""
    old_ws, new_ws = cloud_workspace(known), cloud_workspace(url)
    if old_ws or new_ws:
        if old_ws != new_ws:
            why = (
                "another Cloud account or workspace"
                if old_ws and new_ws
                else "Cloud and a self-hosted server"
            )
            raise _refuse(store, known, url, why)
        return "same Cloud account and workspace ids"
    evidence, lacks = _holds_its_history(client, store, same_url=False)
    if evidence is None:
        raise _refuse(store, known, url, f"it has {lacks}")
    return evidence


# Runs whose state events are asked for when none of the file's flows is found: run ids
# are random UUIDs too, and a run's events outlive it (until the server's retention).
EVENT_SAMPLE = 50


def _holds_its_history(
    client: PrefectClient, store: Store, *, same_url: bool
) -> tuple[str | None, str]:
    """Evidence that the server holds the file's history (a self-hosted one: it has some of
    the file's flows, by id, or, all of them deleted there, the state events of the file's
    newest runs); else None and what it lacks, for the refusal. One or two requests."""
    local, found = _flows_known(client, store)
    if not local:
        if not (
            synced_tables.holds_any(store, "flows") or synced_tables.holds_any(store, "flow_runs")
        ):
            return "the file holds no flows yet", ""
        # Every flow it holds was deleted on its server: only their runs can tell.
        if _holds_events_of_its_runs(client, store):
            return (
                "every flow the file holds was deleted on its server, and this one holds the "
                "state events of the file's newest runs",
                "",
            )
        if same_url and _too_old_to_tell(client, store):
            # Its address is the file's, and no server still keeps events that old: nothing
            # can tell, so it is taken to be the file's (as when the flows went), not refused
            # for good.
            return (
                "every flow the file holds was deleted on its server, at this address, longer "
                "ago than a server keeps state events: taken to be the same server",
                "",
            )
        return None, (
            "none of the state events of the file's newest runs (every flow the file holds "
            "was deleted on its server, so no flow id can tell)"
        )
    if found:
        return f"it has {found} of the file's {local} flows, checked by id", ""
    if _holds_events_of_its_runs(client, store):
        return (
            f"it has none of the file's {local} flows (deleted since) but holds the state "
            "events of the file's newest runs",
            "",
        )
    return None, (
        f"none of the file's {local} flows, checked by id, nor the state events of its newest runs"
    )


def _too_old_to_tell(client: PrefectClient, store: Store) -> bool:
    """Whether the file's newest state change is older than the server keeps state events
    (its settings; else ``PULL_EVENTS_HORIZON_DAYS``): no server, its own included, could
    show one of them. A settings read that fails says nothing (False)."""
    runs = synced_tables.newest_state_changes(store, 1)
    if not runs:
        return True
    try:
        kept = client.events_retention()
    except ApiError:
        return False
    kept = kept or timedelta(days=PULL_EVENTS_HORIZON_DAYS)
    return datetime.now(timezone.utc) - runs[0][1] >= kept


def _holds_events_of_its_runs(client: PrefectClient, store: Store) -> bool:
    """Whether the server holds a state event of one of the file's newest runs (one request):
    the same database after every flow the file knows was deleted (their runs with them), as
    a reset or another server does not. False when it cannot tell (no events API; the file's
    newest runs older than the server's event retention); a request that fails raises (a
    401 or a failing server is that, not another server)."""
    runs = synced_tables.newest_state_changes(store, EVENT_SAMPLE)
    if not runs:
        return False
    margin = timedelta(minutes=5)  # a state's timestamp and its event's are the server's
    since, until = min(t for _, t in runs) - margin, max(t for _, t in runs) + margin
    try:
        return client.flow_run_events_about([i for i, _ in runs], since, until)
    except (NotFoundError, UnsupportedError):
        return False  # no events API: it cannot tell (a 401, a 429, a failing server raise)


def _flows_known(client: PrefectClient, store: Store) -> tuple[int, int]:
    """How many of the file's live flows (up to ``SAMPLE``) were asked for by id, and how
    many of them the server has (one request; none asked when the file holds none)."""
    local = synced_tables.live_ids(store, "flows")[:SAMPLE]
    if not local:
        return 0, 0
    found = client.filter_page(
        "flows", {"flows": {"id": {"any_": local}}, "limit": len(local), "offset": 0}
    )
    return len(local), len(found.rows)


def _still_the_same(client: PrefectClient, store: Store, url: str) -> None:
    """The server at the file's own URL is still the one it was pulled from: another server
    started there (a new database, a ``prefect server database reset``) knows none of the
    file's flows, and a pull would mark the file's whole history deleted and mix the two.
    A Cloud URL names its workspace: nothing to ask."""
    if cloud_workspace(url):
        return
    evidence, lacks = _holds_its_history(client, store, same_url=True)
    if evidence is None:
        raise ConfigError(
            f"{store.path} holds runs from {url}, but the server there now has {lacks}: "
            "another server, or its database was reset. Use another --db for it (this file "
            "keeps the old server's history)."
        )


def bind(client: PrefectClient, store: Writer) -> Moved | None:
    """Bind the file to the client's server on the first pull; later, check its identity
    (one request): at the same URL, that the server still knows the file's flows; on a new
    URL, that it is the same server (``_same_server``).

    Returns what moved when the file now follows a new URL; raises ConfigError
    for a different server (nothing is written then).
    """
    url = client.settings.display_url
    known = sync_log.get_state(store, URL_KEY)
    if known == url:
        _still_the_same(client, store, url)
        return None
    if known is None:
        with store.transaction():
            sync_log.set_state(store, URL_KEY, url)
        return None
    evidence = _same_server(client, store, str(known), url)
    moves = list(sync_log.get_state(store, MOVES_KEY) or [])
    moves.append(
        {
            "from": known,
            "to": url,
            "at": datetime.now(timezone.utc).isoformat(),
            "evidence": evidence,
        }
    )
    with store.transaction():
        sync_log.set_state(store, URL_KEY, url)
        sync_log.set_state(store, MOVES_KEY, moves)
    return Moved(str(known), url, evidence)


def record_server(store: Store, caps: Capabilities) -> bool:
    """Record what the server said it is, as of this pull (its version changes on upgrades);
    True when that differs from what the file held. Not when asking failed (``caps.read``):
    the record stays as the last pull that could ask left it."""
    if not caps.read:
        return False
    before = sync_log.server_record(store)
    said = caps.to_json()
    with store.transaction():
        sync_log.set_state(
            store, SERVER_KEY, {**said, "seen_at": datetime.now(timezone.utc).isoformat()}
        )
    return before is None or {k: v for k, v in before.items() if k != "seen_at"} != said


def record_retention(client: PrefectClient, store: Store) -> RunRetention | None:
    """Record how long the server keeps runs: ``FLOWSYNC_RUN_RETENTION_DAYS`` when set (Prefect
    Cloud does not say: 7, 14 or 30 days by plan), else what the server's settings say. None,
    and the earlier record kept, when the settings read failed on every try (429, 5xx): a
    busy server is not one that does not say."""
    days = client.settings.run_retention_days
    if days is not None:
        retention = RunRetention(True, timedelta(days=days), "FLOWSYNC_RUN_RETENTION_DAYS")
    else:
        try:
            retention = client.run_retention()
        except UnavailableError:
            return None
    value = {**retention.to_json(), "seen_at": datetime.now(timezone.utc).isoformat()}
    with store.transaction():
        sync_log.set_state(store, RETENTION_KEY, value)
    return retention
