"""What a report is asked for: its window (``--since``), grouping (``--by``) and filters
(``--flow``, ``--deployment``, ``--tag``, ``--state``), and the macro parameters they become.

Owns: the --by choices every grouped macro of ``sql/`` offers, the window type and its
one parser, and resolving filter names to ids (a name the file does not hold is an
error, not an empty report). Must not: run a report's query (that is ``reports.py``),
import Polars or DuckDB at import time (the CLI reads ``GROUPS`` for its help), or print.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from flowsync.config import check_utf8
from flowsync.errors import ConfigError
from flowsync.since import HISTORY_START
from flowsync.since import parse_since as since_time
from flowsync.states import STATE_TYPES

if TYPE_CHECKING:
    from flowsync.store import Store


@dataclass(frozen=True)
class Grouping:
    """A --by choice: the group columns a report shows, out of the ones every
    grouped macro in ``sql/`` returns (``GROUP_COLUMNS``; see 12_grouped_runs.sql)."""

    columns: tuple[str, ...]


GROUPS: dict[str, Grouping] = {
    "flow": Grouping(("flow_id", "flow_name")),
    "deployment": Grouping(("deployment_id", "flow_name", "deployment_name")),
    "work_pool": Grouping(("work_pool_name",)),
    "tag": Grouping(("tag",)),
}
DURATION_GROUPS = ("flow", "deployment", "work_pool", "tag")
# Groupings used inside flowsync (the health page, OpenMetrics), not offered as --by.
INTERNAL_GROUPS: dict[str, Grouping] = {
    "all": Grouping(()),
    "day": Grouping(("run_day",)),
    "hour": Grouping(("run_hour",)),
    "day_deployment": Grouping(("run_day", "deployment_id", "flow_name", "deployment_name")),
}
GROUP_COLUMNS = (
    "run_day",
    "run_hour",
    "flow_id",
    "flow_name",
    "deployment_id",
    "deployment_name",
    "work_pool_name",
    "tag",
)


@dataclass(frozen=True)
class Window:
    """Runs whose ``run_at`` is in [since, until); ``since=None`` means all history."""

    since: datetime | None
    until: datetime

    @property
    def start(self) -> datetime:
        return self.since if self.since is not None else HISTORY_START

    @property
    def previous_start(self) -> datetime:
        """Start of the previous window of the same length (ends where this one starts)."""
        if self.since is None:
            return HISTORY_START
        return self.since - (self.until - self.since)

    @property
    def last_instant(self) -> datetime:
        """The window's last instant in UTC (it is [since, until)): its last day and hour."""
        return self.until.astimezone(timezone.utc) - timedelta(microseconds=1)

    def describe(self) -> str:
        if self.since is None:
            return f"all runs before {self.until:%Y-%m-%d %H:%M} UTC"
        return f"{self.since:%Y-%m-%d %H:%M} to {self.until:%Y-%m-%d %H:%M} UTC"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def parse_since(
    text: str | datetime | None, now: datetime | None = None, *, option: str = "--since"
) -> Window:
    """``7d``, ``12h``, ``30m``, ``2w``, a date ``2026-01-01``, an ISO time, or ``all``
    (``flowsync.since.parse_since``, which export uses too), as a window ending now;
    ``option`` is the flag the errors name (``--history``)."""
    now = now or utcnow()
    return Window(since_time(text, now, option=option), now)


@dataclass(frozen=True)
class Filters:
    """Which runs a report counts (``--flow``, ``--deployment``, ``--tag``, ``--state``);
    empty means all. Deployments are ``flow/deployment`` or a deployment name."""

    flows: tuple[str, ...] = ()
    deployments: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    states: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.flows or self.deployments or self.tags or self.states)


def filter_params(store: Store, filters: Filters | None) -> dict[str, Any]:
    """The ``only_*`` parameters of the macros (see ``sql/06_run_selected.sql``): names
    resolved to ids, each name checked so a typo is an error, not an empty report."""
    f = filters or Filters()
    for flag, names in (("--flow", f.flows), ("--deployment", f.deployments), ("--tag", f.tags)):
        for name in names:
            check_utf8(name, flag)
    params: dict[str, Any] = {
        "only_flows": None,
        "only_deployments": None,
        "only_tags": list(f.tags) or None,
        "only_states": None,
    }
    if f.flows:
        rows = store.execute(
            "SELECT name, CAST(id AS VARCHAR) FROM flows WHERE list_contains($names, name)",
            {"names": list(f.flows)},
        ).rows()
        found = _ids_by_name(rows)
        _unknown("--flow", [n for n in f.flows if n not in found], "SELECT name FROM flows")
        params["only_flows"] = [i for ids in found.values() for i in ids]
    if f.deployments:
        rows = store.execute(
            """
            SELECT n.name, CAST(d.id AS VARCHAR)
            FROM unnest($names) AS n(name)
            JOIN deployments AS d ON d.name = n.name
                OR (SELECT f.name FROM flows AS f WHERE f.id = d.flow_id) || '/' || d.name = n.name
            """,
            {"names": list(f.deployments)},
        ).rows()
        found = _ids_by_name(rows)
        _unknown(
            "--deployment",
            [n for n in f.deployments if n not in found],
            "SELECT flow_name || '/' || deployment_name FROM failure_rates_by_deployment",
        )
        params["only_deployments"] = [i for ids in found.values() for i in ids]
    if f.tags:
        rows = store.execute(
            "SELECT DISTINCT tag FROM (SELECT unnest(tags) AS tag FROM flow_runs) "
            "WHERE list_contains($names, tag)",
            {"names": list(f.tags)},
        ).rows()
        carried = {str(r[0]) for r in rows}
        _unknown(
            "--tag",
            [t for t in f.tags if t not in carried],
            "SELECT DISTINCT unnest(tags) AS tag FROM flow_runs ORDER BY 1",
            what="no run in the file carries this tag",
        )
    if f.states:
        states = [s.upper() for s in f.states]
        bad = [s for s in states if s not in STATE_TYPES]
        if bad:
            raise ConfigError(
                f"--state {bad[0]!r} is not a Prefect state type; choose from: {', '.join(STATE_TYPES)}."
            )
        params["only_states"] = states
    return params


def _ids_by_name(rows: list[tuple[Any, ...]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, id_ in rows:
        found.setdefault(name, []).append(id_)
    return found


def _unknown(
    option: str, names: list[str], sql: str, what: str = "no such name in the file"
) -> None:
    if names:
        raise ConfigError(f'{option} {names[0]!r}: {what}; list them with flowsync sql "{sql}".')


ONLY = (
    "only_flows := $only_flows, only_deployments := $only_deployments, "
    "only_tags := $only_tags, only_states := $only_states"
)


def check_by(by: str, allowed: tuple[str, ...]) -> Grouping:
    """``by`` as a grouping: one of ``allowed`` (the --by choices), or one of the
    groupings the health figures use (``all``: one row over everything)."""
    if by in INTERNAL_GROUPS:
        return INTERNAL_GROUPS[by]
    if by not in allowed:
        raise ConfigError(
            f"--by {by!r} is not a grouping of this report; choose one of: {', '.join(allowed)}."
        )
    return GROUPS[by]
