"""``--since``: the one parser of a start time a user types, for reports and export alike.

Owns: turning ``30m`` / ``30min``, ``12h``, ``7d``, ``2w`` (an age before now), a
date ``2026-01-01`` (UTC midnight), an ISO time (UTC when it has no offset) or
``all`` (no start) into an aware datetime, and the one-line errors for
anything else, an empty age, or a time in the future. Must not: know what the
time is used for (``reports.Window``, ``export``'s changed partitions).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from flowsync.errors import ConfigError

_AGE = re.compile(r"^\s*(\d+)\s*(m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """The start ``text`` names, relative to ``now``; None for no text or ``all``."""
    if text is None or text.strip().lower() == "all":
        return None
    match = _AGE.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        if amount <= 0:
            raise ConfigError(
                f"--since {text!r} is an empty window; use a positive amount such as 7d."
            )
        return now - timedelta(**{_UNITS[unit]: amount})
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is not a time window: use an age such as 7d, 12h, 30m or 2w, "
            "a date such as 2026-01-01, an ISO time, or 'all'."
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    if parsed >= now:
        raise ConfigError(
            f"--since {text!r} is in the future; pick a time before now ({now:%Y-%m-%d %H:%M} UTC)."
        )
    return parsed
