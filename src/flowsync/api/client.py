"""One client for one Prefect API: ``PrefectClient``, the session and its endpoints as one object.

``PrefectClient`` is an ``ApiSession`` (``api/session.py``, the only httpx user:
auth, retries, typed errors, request counts, the request budget) with the
endpoint groups on it, as Prefect's own client gathers its endpoint clients over
one base: ``ServerInfo`` (``api/server.py``: health, clock, version,
capabilities, retention settings), ``Reads`` (``api/reads.py``: filters, counts,
history, events, a run's states) and ``Writes`` (``api/writes.py``: the calls
that change runs, each sent once). ``Page``, ``RetryPolicy`` and the API's limits
(``PAGE_LIMIT``, ``BULK_LIMIT``, ``EVENTS_QUERY_SPAN``) stay importable from
here. Must not: import httpx, send requests of its own, print, or touch the store.
"""

from __future__ import annotations

from flowsync.api.reads import EVENTS_QUERY_SPAN, PAGE_LIMIT, Page, Reads
from flowsync.api.session import RetryPolicy
from flowsync.api.writes import BULK_LIMIT, Writes

__all__ = ["BULK_LIMIT", "EVENTS_QUERY_SPAN", "PAGE_LIMIT", "Page", "PrefectClient", "RetryPolicy"]


class PrefectClient(Writes, Reads):
    """A synchronous client; safe to share between the threads of one pull."""

    def __enter__(self) -> PrefectClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
