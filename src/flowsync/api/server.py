"""What the server is and can do: a Prefect API at all, its clock, its version and
capabilities, how long it keeps events and runs.

Owns: ``ServerInfo``, the calls that ask the server about itself. ``check``
fails clearly unless the URL is a reachable Prefect API and returns the server's
clock (its ``Date``; None without one: the caller says so; ``server_now`` reads it
again). What the server can do
(``capabilities()``) is read once per client, from ``GET /admin/version``: the
bulk endpoints exist from Prefect 3.6.16. Prefect Cloud does not say its version;
it runs current code and has them. Every self-hosted 3.x server says its version,
so one that does not (a proxy hiding ``/admin``) is taken to be current too;
should a bulk endpoint then answer 404 (or 405, as 3.0-3.2 do), the call raises
``UnsupportedError`` (made here, ``_unsupported``), naming the release that has it:
apply stops there, rather than fall back to the per-run endpoints for a server whose
version it could not read (it takes them only on a server that says it is older). ``events_retention`` and ``run_retention`` read ``GET
/admin/settings`` where the server exposes it. Must not: import httpx (requests
go through ``ApiSession.request``), print, or touch the store.
"""

from __future__ import annotations

import email.utils
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from flowsync.api.models import BULK_SINCE, NOT_STATE_EVENTS, Capabilities, RunRetention
from flowsync.api.session import ApiSession
from flowsync.config import cloud_workspace
from flowsync.errors import (
    ApiError,
    AuthError,
    NotFoundError,
    UnavailableError,
    UnsupportedError,
)


class ServerInfo(ApiSession):
    """The server's own answers about itself: health, clock, version, capabilities, retention."""

    # Read once per client by ``capabilities()``, under the session's lock.
    _capabilities: Capabilities | None = None

    def check(self) -> datetime | None:
        """Fail clearly unless the URL is a reachable Prefect API; return the server's clock
        (its ``Date`` header), or None when the answer carried no readable one."""
        try:
            # Two quick tries: a wrong URL or a stopped server should fail in a second, not minutes.
            answer, _text, headers = self.request("GET", "health", attempts=2, raw=True)
        except ApiError as e:
            msg = str(e)
            if "answered 404" in msg or "unreadable JSON" in msg:
                raise ApiError(
                    f"{self.settings.display_url} does not look like a Prefect API "
                    "(GET /health did not answer true). The URL usually ends in /api, "
                    "e.g. http://127.0.0.1:4200/api."
                ) from e
            raise
        if answer is not True:
            raise ApiError(
                f"{self.settings.display_url} does not look like a Prefect API "
                f"(GET /health answered {self._said(json.dumps(answer), 60)}). The URL usually ends in /api."
            )
        return _server_date(headers.get("date"))

    def server_version(self) -> str | None:
        """What ``GET /admin/version`` says, or None when the server does not say (Cloud, a
        proxy hiding ``/admin``: 404, 405, or 403 as nginx's ``deny all`` answers; a 403 of
        the credentials is met again on the next read). Any other failure raises ``ApiError``."""
        try:
            answer = self.request("GET", "admin/version", attempts=2)
        except NotFoundError:
            return None
        except AuthError as e:
            if e.status != 403:
                raise
            return None
        # Stored and shown: without the credentials (a proxy may echo the Authorization
        # header) or terminal controls, as any other text a server answers.
        return self._said(str(answer)) if answer is not None else None

    def capabilities(self) -> Capabilities:
        """What this server can do; its version is read once per client (thread-safe)."""
        with self._lock:
            known = self._capabilities
        if known is not None:
            return known
        cloud = cloud_workspace(self.settings.url) is not None
        try:
            found = Capabilities.of(self.server_version(), cloud=cloud)
        except AuthError:
            raise
        except ApiError:  # a 5xx, a dropped connection: not known (taken to be current)
            found = Capabilities.of(None, cloud=cloud, read=False)
        with self._lock:
            if self._capabilities is None:
                self._capabilities = found
            return self._capabilities

    def _unsupported(self, endpoint: str, caps: Capabilities) -> UnsupportedError:
        needs = ".".join(map(str, BULK_SINCE))
        if caps.version and not caps.bulk:
            has = f"{caps.describe()} < {needs}, the first release with it"
        else:
            has = (
                f"{caps.describe()}, and the endpoint is not there (HTTP 404/405): older than "
                f"{needs}, the first release with it"
            )
        return UnsupportedError(
            f"Prefect API at {self.settings.display_url} has no POST /{endpoint} ({has}); "
            "upgrade the server to use it.",
            endpoint=endpoint,
            version=caps.version,
            needs=needs,
        )

    def events_retention(self, *, overrides_only: bool = False) -> timedelta | None:
        """How long the server keeps flow-run state events (its settings: the shortest of its
        retention period and any state event type's own), or None if it does not say.
        ``overrides_only``: the shortest of the types' own alone (None: none has one)."""
        try:
            settings = self.request("GET", "admin/settings")
        except UnavailableError:
            raise  # throttled or down: how long it keeps events is not known, nor "not said"
        except ApiError:
            return None  # Prefect Cloud and locked-down servers do not expose settings
        try:
            server = settings["server"]
            default = _duration(server["events"]["retention_period"])
            overrides = (server.get("services", {}).get("db_vacuum", {}) or {}).get(
                "event_retention_overrides"
            ) or {}
            own = [
                _duration(v)
                for k, v in overrides.items()
                if str(k).startswith("prefect.flow-run.") and str(k) not in NOT_STATE_EVENTS
            ]  # a heartbeat's own retention is no state event's (the pull never asks for them)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if overrides_only:
            return min(own, default=None)
        return min([default, *own])

    def run_retention(self) -> RunRetention:
        """Whether and when the server deletes flow runs on its own: Prefect's ``db_vacuum``
        (3.6.19+) with ``flow_runs`` enabled deletes runs whose end is older than its
        ``retention_period``. Unknown where the settings are not exposed (Prefect Cloud)."""
        try:
            settings = self.request("GET", "admin/settings", attempts=2)
        except (AuthError, UnavailableError):
            raise  # throttled or down: what the server keeps is not known, nor "not said"
        except ApiError:
            return RunRetention(False, None, "the server does not expose its settings")
        try:
            services = settings["server"]["services"]
            vacuum = services.get("db_vacuum") if isinstance(services, dict) else None
            if not isinstance(vacuum, dict):
                return RunRetention(True, None, "this server version deletes no runs on its own")
            enabled = vacuum.get("enabled")
            kinds = (
                {"flow_runs"}
                if enabled is True
                else set(enabled.split(",") if isinstance(enabled, str) else enabled or [])
            )
            if "flow_runs" not in {str(k).strip() for k in kinds}:
                return RunRetention(True, None, "db_vacuum does not delete flow runs")
            period = _duration(vacuum["retention_period"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return RunRetention(False, None, "the server's settings did not say")
        return RunRetention(True, period, "the server's db_vacuum retention_period")

    def server_now(self) -> datetime:
        """The server's clock (from the Date header), so cursors never depend on ours."""
        _answer, _text, headers = self.request("GET", "health", attempts=2, raw=True)
        return _server_date(headers.get("date")) or datetime.now(timezone.utc)


_ISO_DURATION = re.compile(
    r"^P(?:(?P<days>\d+(?:\.\d+)?)D)?(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def _duration(value: Any) -> timedelta:
    """A settings duration as pydantic writes it: seconds, or ISO 8601 (``P7D``, ``PT1H30M``)."""
    if isinstance(value, (int, float)):
        return timedelta(seconds=float(value))
    match = _ISO_DURATION.match(str(value))
    if not match or str(value) == "P":
        raise ValueError(f"not a duration: {value!r}")
    return timedelta(**{k: float(v) for k, v in match.groupdict().items() if v})


def _server_date(value: str | None) -> datetime | None:
    """A ``Date`` header's time, or None when there is none or it does not read as a date."""
    if value:
        try:
            return email.utils.parsedate_to_datetime(value).astimezone(timezone.utc)
        except (TypeError, ValueError):
            pass
    return None
