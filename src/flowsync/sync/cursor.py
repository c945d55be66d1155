"""The runs' cursors: where a pull's state-events window starts, and whether the server
still holds the events in it.

Owns: the two cursors a pull leaves for the next, and their rules.

- ``flow_runs.cursor``: when the last pull began by the server's ``Date`` header
  (``pulled_from``). What is counted on that clock: the age of the last pull against
  the server's events retention, the daily verification.
- ``flow_runs.newest_event``: when the newest state event a pull read occurred, exactly;
  the next pull asks whether the server still holds it (``events_lost``).
- ``flow_runs.events_cursor``: where the next events window starts (before the
  overlap), on the clock of the events themselves. Every state change after a pull
  must be asked for by the next one, whatever the ``Date`` says: a reverse proxy
  sets its own (nginx), a missing header leaves this machine's clock, and a server
  clock that ran ahead during one pull and was put right would put a cursor taken
  from it in the future. So it is the newest ``occurred`` of the state events a pull
  was answered with (Prefect stamps them with the server's clock: nothing that
  happens later is older), and stays where it was when there were none. Bounded by
  the ``Date`` at the pull's start: never later (a server clock that stepped back
  brings the window back with it), and never earlier than ``DATE_LEAD_MAX`` before
  the last pull's start (an idle server's cursor stays at its last event for days:
  the window need not reach back past what the last pull read).

Must not: open DuckDB or HTTP directly (store and api own those).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from flowsync.api import PrefectClient
from flowsync.api.pagination import iso, parse_ts
from flowsync.config import PULL_EVENTS_HORIZON_DAYS
from flowsync.errors import ApiError
from flowsync.store import Store, sync_log

CURSOR = "flow_runs.cursor"
EVENTS_CURSOR = "flow_runs.events_cursor"
# When the newest state event a pull read occurred, exactly (the events cursor is that bounded
# by the Date, or where the window began): a server that no longer holds it lost events
# newer than the ones it has (restored from a backup, events deleted), which no later window
# would ask for again.
NEWEST_EVENT = "flow_runs.newest_event"
# How far the Date header may run ahead of the server's clock with every state change still
# asked for once the events cursor is older than this before the last pull (an idle server).
# Also how far back the window reaches when no event vouched for a cursor (a full pass on a
# server holding none, a file of an older flowsync).
DATE_LEAD_MAX = timedelta(days=1)
# The events query's upper end past the Date: a Date a little behind loses nothing (a later
# event is asked for by the next pull, whose window starts at the newest one this one saw).
DATE_LAG_MAX = timedelta(hours=1)
# A last pull older than this has the server's per-type event retention checked too.
OVERRIDES_AFTER = timedelta(hours=1)


def window_start(store: Store, now: datetime) -> datetime:
    """Where this pull's events window starts (before the overlap is taken off): the events
    cursor, at least ``DATE_LEAD_MAX`` before the last pull's start, at most ``now`` (the
    ``Date`` at this pull's start). Needs a file some pull completed (``CURSOR`` set)."""
    pulled = parse_ts(sync_log.get_state(store, CURSOR))
    value = sync_log.get_state(store, EVENTS_CURSOR)
    return bounded(parse_ts(value) if value else None, pulled, now)


def bounded(cursor: datetime | None, pulled: datetime, now: datetime) -> datetime:
    """``cursor`` (None: no event vouched for one) between ``pulled`` − ``DATE_LEAD_MAX``
    and ``now``."""
    floor = pulled - DATE_LEAD_MAX
    return min(max(cursor, floor) if cursor is not None else floor, now)


def next_cursor(start: datetime, newest: datetime | None, now: datetime) -> str:
    """The events cursor after a pull whose window began at ``start`` and whose newest state
    event occurred at ``newest`` (None: it was answered with none); never past ``now``."""
    return iso(min(max(start, newest) if newest is not None else start, now))


def newest_event(client: PrefectClient, now: datetime) -> datetime | None:
    """When the newest flow-run state event the server holds occurred (looking back 14 days
    from ``now`` + ``DATE_LAG_MAX``), or None: where a full pass starts its cursor."""
    try:
        return client.flow_run_event_before(now + DATE_LAG_MAX)
    except ApiError:
        return None  # no events API: the incremental pull falls back to unfinished runs


def pulled_from(store: Store) -> datetime | None:
    """When the last pull began by the server's clock (its runs cursor): the runs in the file
    are as the server had them then or later. The pull's record's own time (this machine's
    clock) for a file without a cursor; None for a file no pull completed."""
    cursor = sync_log.get_state(store, CURSOR)
    return parse_ts(cursor) if cursor else sync_log.last_pull_at(store)


def events_cover(
    client: PrefectClient,
    since: datetime,
    now: datetime,
    horizon: timedelta = timedelta(days=PULL_EVENTS_HORIZON_DAYS),
    *,
    read_to: datetime | None = None,
) -> str | None:
    """Why the server's state events may no longer cover [since, now], or None when they do.

    Prefect trims events oldest first (its retention period, ``db_vacuum``), so one
    flow-run event held at or before ``since`` proves the window whole (one request),
    but for a state event type with a retention of its own shorter than the time since
    the last pull (``_overridden``: the settings read for a last pull over an hour ago).
    Without one, the server's own retention decides
    when it says (``/admin/settings``), else ``horizon``: counted from ``read_to``
    (on ``now``'s clock: the last pull's start, less the overlap, when the events
    before it were read; ``since`` when not given). Raises ``ApiError`` when the
    server has no events API.
    """
    age = now - (since if read_to is None else read_to)
    if client.flow_run_event_before(since) is not None:
        return _overridden(client, since, age)
    retention = client.events_retention()
    if retention is not None:
        if age < retention:
            return None
        return (
            f"the server keeps flow-run events for {in_words(retention)} and holds none from before the "
            f"last pull ({iso(since)})"
        )
    if age <= horizon:
        return None
    return f"last pull is older than {in_words(horizon)} (--events-horizon) and the server holds no earlier events"


def _overridden(client: PrefectClient, since: datetime, age: timedelta) -> str | None:
    """With an event held from before ``since``: why a state event type's own retention
    (``db_vacuum``'s ``event_retention_overrides``, trimmed on its own clock, not oldest first
    with the rest) may still have lost some of the window, or None. Asked of the server's
    settings only for a last pull more than ``OVERRIDES_AFTER`` ago (a pull every 15 minutes
    pays nothing); a settings read that fails leaves the held event's proof."""
    if age <= OVERRIDES_AFTER:
        return None
    try:
        retention = client.events_retention(overrides_only=True)
    except ApiError:
        return None
    if retention is None or age < retention:
        return None
    return (
        f"the server keeps some flow-run state events for {in_words(retention)} "
        f"(event_retention_overrides), less than the time since the last pull ({iso(since)})"
    )


def events_lost(client: PrefectClient, store: Store, now: datetime) -> str | None:
    """Why the server's state events went back in time, or None: it no longer holds the newest
    one the last pull read, though it holds an older one (one request; Prefect trims events
    oldest first, so that one goes last). A server restored from a backup (with as many runs
    as the file: no total tells) or whose events were deleted: the changes since are in no
    events window. None when it holds none from the 14 days before it (an idle server's
    events all aged out), or when a state event type's own retention (``db_vacuum``'s
    ``event_retention_overrides``, trimmed on its own clock) may have taken it: the
    settings are read then, and only then."""
    held = sync_log.get_state(store, NEWEST_EVENT)
    if not held:
        return None
    newest = parse_ts(held)
    found = client.flow_run_event_before(newest)
    if found is None or found >= newest:
        return None
    try:
        own = client.events_retention(overrides_only=True)
    except ApiError:
        own = None  # not known: a busy server's settings; the held older event decides
    if own is not None and now - newest >= own:
        return None
    return (
        f"the server no longer holds the newest state event the last pull read ({held}), "
        f"though it holds an older one ({iso(found)}): restored from a backup, or its events "
        "deleted"
    )


def record_newest(store: Store, newest: datetime | None, *, replace: bool = False) -> None:
    """Keep when the newest state event a pull read occurred (None: it read none; the last
    one kept stays, unless ``replace``: a full pass, which starts from the server's newest).
    Inside the caller's transaction."""
    if newest is not None:
        sync_log.set_state(store, NEWEST_EVENT, iso(newest))
    elif replace:
        sync_log.delete_state(store, NEWEST_EVENT)


def in_words(value: timedelta) -> str:
    hours = value.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 24 else f"{hours:g} hours"
