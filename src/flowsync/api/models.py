"""What the Prefect API answers about itself and to calls that change data, as types.

Owns: ``Capabilities`` (what a server can do, from its version: the bulk
endpoints from 3.6.16), ``RunRetention`` (how long it keeps runs), and the
per-run answers ``DeleteResult`` and ``OrchestrationResult``. Plain data: must
not send requests (that is ``api.client``), print, or touch the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

# Events named like a flow run's state events that are none: Prefect's flow engine emits a
# heartbeat per running flow (``PREFECT_RUNNER_HEARTBEAT_FREQUENCY``), stamped by the clock
# of the machine running it, not the server's. Left out of the events a pull asks for: one
# stamped ahead of the server would move the events cursor past state changes not yet read.
NOT_STATE_EVENTS = ["prefect.flow-run.heartbeat"]

# The first release with POST /flow_runs/bulk_delete and /flow_runs/bulk_set_state.
BULK_SINCE = (3, 6, 16)


SUPPORTED_MAJOR = 3  # the Prefect whose API flowsync speaks (3.0 to 3.9 tested)


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """``"3.6.16"`` -> ``(3, 6, 16)``; pre-release or local suffixes are dropped; None if unreadable."""
    match = re.match(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not match:
        return None
    return tuple(int(g) for g in match.groups() if g is not None)


@dataclass(frozen=True)
class Capabilities:
    """What one Prefect API can do, from its version.

    ``version``: as the server says it (None: it does not say, e.g. Prefect
    Cloud); ``parsed``: that as numbers; ``cloud``: a Prefect Cloud workspace URL;
    ``bulk``: it has ``bulk_delete`` and ``bulk_set_state`` (3.6.16+; taken as
    True when the version is unknown or the URL is Prefect Cloud's, see the module docstring); ``read``: False when
    asking failed (a 5xx, a dropped connection), not the server declining to say."""

    version: str | None
    parsed: tuple[int, ...] | None
    cloud: bool
    bulk: bool
    read: bool = True

    @classmethod
    def of(cls, version: str | None, *, cloud: bool, read: bool = True) -> Capabilities:
        parsed = parse_version(version)
        # No version: Prefect Cloud, or a server hiding /admin (see the module docstring).
        # Prefect Cloud runs the current API whatever a version route of its may say (its
        # own numbering is not Prefect's releases): never the per-run path, which has no
        # state guard.
        bulk = True if parsed is None or cloud else parsed >= BULK_SINCE
        return cls(version, parsed, cloud, bulk, read)

    @property
    def supported(self) -> bool:
        """A Prefect 3 server, or one that does not say its version (Prefect Cloud runs the
        current API): the calls apply sends, and the guards they carry, are Prefect 3's."""
        if self.cloud or not self.version:
            return True
        # a version said but not read as N.N (e.g. "4", "Prefect 4.0.0") is not known to be 3
        return self.parsed is not None and self.parsed[0] == SUPPORTED_MAJOR

    def describe(self) -> str:
        if self.version:
            return f"Prefect {self.version}"
        return "Prefect Cloud" if self.cloud else "a Prefect server that does not say its version"

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "cloud": self.cloud, "bulk": self.bulk}


@dataclass(frozen=True)
class RunRetention:
    """How long the server keeps flow runs before it deletes them itself.

    ``known``: whether that could be told; ``period``: None when it never does
    (or is not known); ``source``: where this came from, in words."""

    known: bool
    period: timedelta | None
    source: str

    def to_json(self) -> dict[str, Any]:
        seconds = self.period.total_seconds() if self.period is not None else None
        return {"known": self.known, "seconds": seconds, "source": self.source}


@dataclass(frozen=True)
class DeleteResult:
    """``DELETE /flow_runs/{id}``: ``deleted`` False means the server had no such run (already gone)."""

    run_id: str
    deleted: bool


@dataclass(frozen=True)
class OrchestrationResult:
    """``POST /flow_runs/{id}/set_state``: Prefect's answer. ``status`` is ACCEPT, REJECT,
    ABORT or WAIT; ``state`` the run's state after the call (the new one on ACCEPT);
    ``details`` why (``reason``, ``delay_seconds`` for WAIT)."""

    run_id: str
    status: str
    state: dict[str, Any] | None
    details: dict[str, Any]

    @property
    def accepted(self) -> bool:
        return self.status == "ACCEPT"
