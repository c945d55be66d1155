"""``--since``: the one parser of a start time a user types, for reports and export alike.

Owns: turning ``30m`` / ``30min``, ``12h``, ``7d``, ``2w`` (an age before now), a
date ``2026-01-01`` (UTC midnight), an ISO time (UTC when it has no offset) or
``all`` (no start) into an aware datetime in UTC (a time with another offset is
converted: what shows it as UTC shows that instant), and the one-line errors for
anything else, an empty age, a time in the future, or a start before 1900 (an age
too large for a date included: no run is that old, and a report's previous window
of the same length must still be a date), each naming the option it came from
(``--since``, ``report stuck --history``). Must not: know what the time is used for
(``reports.Window``, ``export``'s changed partitions).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from flowsync.errors import ConfigError

_AGE = re.compile(r"^\s*(\d+)\s*(m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# Months and years (and a capital M, which means a month to many and a minute here): refused,
# so that `3M` is never read as three minutes.
_CALENDAR = re.compile(r"^\s*\d+\s*(?:M|(?i:mo|mons?|months?|y|yrs?|years?))\s*$")
# Where all history begins, for the pull's walks and counts by expected start and for the
# reports' ``all``: before any run's (one scheduled before 1970, a negative timestamp, is a
# run too; only runs without an expected start are not). Also the earliest start a user may
# give: earlier is no run's time, and an age past year 1 is no date at all (OverflowError).
HISTORY_START = datetime(1900, 1, 1, tzinfo=timezone.utc)


def parse_since(
    text: str | datetime | None, now: datetime, *, option: str = "--since"
) -> datetime | None:
    """The start ``text`` names, in UTC, relative to ``now``; None for no text or ``all``; a
    library's datetime as it is (``check_start``). ``option`` is the flag the text came
    from, named in the errors."""
    if isinstance(text, datetime):
        return check_start(text, now, option=option)
    if text is not None and not isinstance(text, str):
        raise ConfigError(
            f"{option} {text!r} is not an age or a time: pass text such as 7d, 12h, "
            "2026-11-01 or all."
        )
    if text is None or text.strip().lower() == "all":
        return None
    if _CALENDAR.match(text):
        raise ConfigError(
            f"{option} {text!r}: months and years are not ages flowsync takes (and M could be "
            "minutes); use days or weeks (90d, 52w), or minutes as 30min."
        )
    match = _AGE.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        if amount <= 0:
            raise ConfigError(
                f"{option} {text!r} is an empty window; use a positive amount such as 7d."
            )
        try:
            start = now - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:  # past year 1, or more than timedelta holds
            start = None
        if start is None or start < HISTORY_START:
            raise _too_early(text, option)
        return start
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{option} {text!r} is not a time window: use an age such as 7d, 12h, 30m or 2w, "
            "a date such as 2026-01-01, an ISO time, or 'all'."
        ) from None
    return check_start(parsed, now, option=option, text=text)


def check_start(
    start: datetime, now: datetime, *, option: str = "--since", text: str | None = None
) -> datetime:
    """A start given as a time (a library's ``since=datetime``, or an ISO ``text``): UTC
    when it has no offset; one in the future or before 1900 is refused as its text is."""
    shown = start.isoformat() if text is None else text
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    start = start.astimezone(timezone.utc)  # described in UTC: "10:00+05:00" is 05:00 UTC
    if start >= now:
        raise ConfigError(
            f"{option} {shown!r} is in the future; pick a time before now ({now:%Y-%m-%d %H:%M} UTC)."
        )
    if start < HISTORY_START:
        raise _too_early(shown, option)
    return start


def _too_early(text: str, option: str) -> ConfigError:
    return ConfigError(
        f"{option} {text!r} starts before {HISTORY_START:%Y-%m-%d}, earlier than any run; "
        "use a later start, or 'all' for all history."
    )
