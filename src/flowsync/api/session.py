"""An open HTTP session to one Prefect API: the only module that imports httpx.

Owns: every request flowsync makes (``ApiSession.request``): the auth header
(a ``user:password@`` in the URL included, sent as basic auth),
retries, what each failure becomes, request counts. Read-only calls retry 429
(honouring ``Retry-After``, at most ``RetryPolicy.max_retry_after``), 500/502/503/504,
transport errors and unreadable bodies, with bounded exponential backoff and full jitter;
a read answered 429 holds the client's other reads too (every thread's, a rate limit being
the account's) until its wait is over, but not the calls that change runs nor the reads of
a batch's window (``unpaced``), which go out at once as with the request budget.
Calls that change data (``idempotent=False``: the bulk endpoints, ``delete_flow_run``,
``set_flow_run_state``) are sent exactly once and never resent by this
transport: a 429 raises ``ThrottledError`` (with ``retry_after``), a connection
that was never made raises ``NotSentError`` (neither was applied), and anything
that may have been applied (5xx, a dropped connection, a timeout, an
unreadable body) raises ``UncertainError``; the caller re-reads and re-decides
before it sends again (a run may have been protected while the server asked us to
wait). Everything else becomes ``ApiError``/``AuthError``
(``NotFoundError`` for a 404 or 405) with one line that names the URL.

With a request budget (``ApiSettings.max_requests_per_minute``, from
``--max-requests-per-minute``, the environment or the profile) every request,
retries included, first takes a slot from a ``RequestBudget`` shared by every
thread of the client, so the client stays under its share of a quota before the
server has to say 429 (a call that changes runs, and every request of a batch's re-read
-> call window, take their slots without waiting, the batch having waited for one first:
``unpaced``, ``budget.py``); ``on_retry`` also hears when the budget, not the
server, holds requests back (at most every 30 s). Must not: know what an
endpoint's answer means (``server``, ``reads`` and ``writes`` send through
``request`` and read their answers), print, touch the store, or let the API key
out of the ``Authorization`` header.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import json
import math
import os
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

import httpx
import orjson

from flowsync import __version__, present
from flowsync.api.budget import RequestBudget
from flowsync.config import ApiSettings
from flowsync.errors import (
    ApiError,
    AuthError,
    ConfigError,
    NotFoundError,
    NotSentError,
    ThrottledError,
    UnavailableError,
    UncertainError,
)


def tls_context(verify: bool | str) -> ssl.SSLContext:
    """The TLS context a session verifies the server with: ``True``, the CA bundle httpx
    would load (``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` when set, else certifi's); a path, the
    PEM CA file there; ``False``, none (``PREFECT_API_TLS_INSECURE_SKIP_VERIFY``).

    Built once a process for each setting and CA file (its path, size, change time and
    inode), and shared by the sessions after: loading a CA bundle takes about 25 ms of CPU,
    which every session paid, for an ``http://`` URL too (httpx builds its context up
    front). A context holds no per-connection state, and one is used from many threads by
    design."""
    source = verify if isinstance(verify, str) else None
    if verify is True:
        source = os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR")
    try:
        stamp = os.stat(source) if source else None
    except OSError:
        stamp = None  # loading it says what is wrong (config checked a PEM file exists)
    try:
        return _tls_context(
            verify,
            os.environ.get("SSL_CERT_FILE"),
            os.environ.get("SSL_CERT_DIR"),
            (stamp.st_size, stamp.st_mtime_ns, stamp.st_ino) if stamp else None,
        )
    except (OSError, ssl.SSLError, ValueError) as e:
        # SSL_CERT_FILE / SSL_CERT_DIR (OpenSSL's, honoured as httpx does) naming no file of
        # PEM certificates: one line naming the variable, as config does for Prefect's own.
        if isinstance(verify, str):
            named = f"PREFECT_API_SSL_CERT_FILE ({source})"
        elif source:
            named = (
                f"{'SSL_CERT_FILE' if os.environ.get('SSL_CERT_FILE') else 'SSL_CERT_DIR'}={source}"
            )
        else:
            named = "the CA bundle (certifi)"
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise ConfigError(
            f"{named}: no PEM CA certificates could be loaded from it ({reason}); point it at "
            "a file of PEM CA certificates, or unset it."
        ) from None


@functools.lru_cache(maxsize=8)
def _tls_context(verify: bool | str, *_key: object) -> ssl.SSLContext:
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context(verify=verify)


# Read-only calls (filters, counts, history) are safe to repeat after any of these: the
# SQLite-backed server answers 500/503 for "database is locked" under write load.
READ_RETRY_STATUS = {429, 500, 502, 503, 504}
# A body that does not decode as its Content-Encoding says (a proxy's gzip header on a plain
# body) is httpx's DecodingError, not a TransportError: the answer came and cannot be read,
# as a body cut short (a read tries again; a write may have been applied).
TRANSPORT_ERRORS = (httpx.TransportError, httpx.DecodingError)
# The request never reached the server: a call that changes data was not applied.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _untrusted(error: BaseException) -> str | None:
    """OpenSSL's reason when ``error`` (or what caused it) is a failed certificate check."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(seen))
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 7  # total tries for one request
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        # full jitter: uniform in [0, min(cap, base * 2^attempt)]
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


def _unbind(response: httpx.Response) -> None:
    """Break the reference cycle httpx leaves between a read response and its stream.

    ``Client.send`` wraps the stream in one that points back at the response, so
    every response, its body (a page: ~300 KB) and httpcore's request objects
    could only be freed by Python's cyclic collector, never when the last
    reference goes. The body is read by then (``request`` never streams).
    """
    response.stream = httpx.ByteStream(b"")


def _from_prefect(response: httpx.Response) -> bool:
    """The 5xx is the Prefect server's own: its error handlers answer JSON with an
    ``exception_message`` (500 "Internal Server Error", 503 "Service Unavailable") once the
    request's transaction is over."""
    try:
        payload = response.json()
    except ValueError:
        return False
    return isinstance(payload, dict) and "exception_message" in payload


def _echoed_forms(secrets: list[str]) -> tuple[str, ...]:
    """Each secret as an answer may echo it: as sent, as a JSON body quotes it (``\\/`` for
    ``/`` too), percent-encoded as a redirect's query or a URL would carry it; longest first."""
    forms = set()
    for x in secrets:
        quoted = json.dumps(x)[1:-1]
        forms |= {x, quoted, quoted.replace("/", "\\/"), quote(x, safe=""), quote(x), quote_plus(x)}
    return tuple(sorted((x for x in forms if x), key=len, reverse=True))


def _retry_after(response: httpx.Response, most: float) -> float | None:
    """The seconds a 429's ``Retry-After`` asks for, at most ``most``: delay-seconds, or an
    HTTP-date (a past one: 0; RFC 5322's ``-0000`` zone read as GMT, as HTTP-dates are). None
    when it says no usable wait (absent, unreadable, negative, NaN, infinite): the backoff
    applies then, never a wait of NaN (``time.sleep`` refuses it) nor a resend at once."""
    value = (response.headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    if not (math.isfinite(seconds) and seconds >= 0):
        return None
    return min(seconds, most)


def _decode(body: bytes) -> Any:
    """A JSON body: orjson (about 30% less CPU than json on a page of runs), else json.

    json takes what orjson refuses (NaN, integers beyond 64 bits), so nothing
    decodes differently; its errors are the caller's "unreadable body".
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def short(text: str, limit: int = 120) -> str:
    """``text`` on one line, cut at ``limit`` characters (for one-line error messages)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# A user name with no password in the URL at least this long is taken for a token (as a
# proxy takes https://TOKEN@host/api) and masked alone too; a shorter one ("me") is a name,
# masking which would blank that text in every message.
_TOKEN_AS_USER = 8


def _userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its ``user:password@`` part, and that part's user and password
    (percent-decoded, as Basic auth sends them); None when the URL holds none."""
    parts = urlsplit(url)
    info, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = info.partition(":")
    bare = urlunsplit(parts._replace(netloc=host))
    return bare, (unquote(user), unquote(password)) if user or password else None


def _bare(path: str) -> str:
    return path.lstrip("/").split("?")[0]


@dataclass
class Window:
    """A batch's re-read -> call window (``ApiSession.unpaced``): when its first read answered
    (monotonic), and the seconds its reads were held back by the server after that (a 429's
    Retry-After, a retry's backoff; before it, nothing read had aged)."""

    answered_at: float | None = None
    slept: float = 0.0

    def answered(self) -> None:
        if self.answered_at is None:
            self.answered_at = time.monotonic()


class ApiSession:
    """One httpx client and its retries for one Prefect API; safe to share between threads."""

    def __init__(
        self,
        settings: ApiSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[str], None] | None = None,
        budget: RequestBudget | None = None,
    ) -> None:
        self.settings = settings
        # a request's limit: the caller's, else the settings' (PREFECT_API_REQUEST_TIMEOUT), else 60 s
        timeout = timeout or settings.request_timeout or 60.0
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._waits = threading.local()  # .through: this thread's waits go through it
        if budget is None and settings.max_requests_per_minute:
            budget = RequestBudget(settings.max_requests_per_minute, sleep=self._wait)
        self.budget = budget
        self._budget_told = -1e9  # when on_retry last heard that the budget is the limit
        self._unpaced = threading.local()  # .window: this thread's requests take slots unwaited
        self._on_retry = on_retry
        self._lock = threading.Lock()
        # A read answered 429 holds every read of this client until its wait is over (a rate
        # limit is the account's, not one request's): when (monotonic), and in each thread
        # the hold that thread has slept through itself (its own retry's wait).
        self._held_until = 0.0
        self._held = threading.local()
        self.requests = 0
        self.retries = 0
        headers = {"User-Agent": f"flowsync/{__version__}", "Accept": "application/json"}
        secrets: list[str] = []
        base, userinfo = _userinfo(settings.url)
        basic = None
        if userinfo is not None:
            # http://user:password@host/api: Basic auth, over a key as httpx would send it, but
            # sent (and so masked) by this session like the auth string.
            basic = ":".join(userinfo)
            secrets.append(userinfo[1])  # the password alone too
            if not userinfo[1] and len(userinfo[0]) >= _TOKEN_AS_USER:
                secrets.append(userinfo[0])  # https://TOKEN@host/api: the token is the user
        elif settings.api_key is not None:
            secrets.append(settings.api_key.get_secret_value())
            headers["Authorization"] = f"Bearer {secrets[0]}"
        elif settings.auth_string is not None:
            basic = settings.auth_string.get_secret_value()
        if basic is not None:
            token = base64.b64encode(basic.encode()).decode()
            secrets += [basic, token]
            headers["Authorization"] = f"Basic {token}"
        # What a server or proxy may echo back (an error body quoting the request's headers):
        # removed from every text of an answer before it reaches a message, a log or the file.
        self._secrets = _echoed_forms(secrets)
        self._base = base.rstrip("/") + "/"
        self._host = urlsplit(self._base).netloc
        try:
            self._http = httpx.Client(
                base_url=self._base,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                verify=tls_context(settings.verify),
                transport=transport,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
            )
        except httpx.InvalidURL as e:  # a host name IDNA 2008 refuses (config checks the rest)
            raise ConfigError(
                f"API URL {settings.display_url!r} cannot be used: {e}; fix the host name."
            ) from None

    # -- plumbing ---------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def _count(self, retried: bool) -> None:
        with self._lock:
            self.requests += 1
            if retried:
                self.retries += 1

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        idempotent: bool = True,
        expect_json: bool = True,
        attempts: int | None = None,
        raw: bool = False,
    ) -> Any:
        """Send one request with retries; return the decoded JSON (or None for 204).

        With ``raw``, return ``(decoded, body bytes, response headers)``. With
        ``idempotent=False`` a failure the server may have acted on raises
        ``UncertainError``, ``ThrottledError`` or ``NotSentError`` at once and
        is never sent twice (see the module docstring)."""
        attempts = 1 if not idempotent else (attempts or self.retry.attempts)
        url = path if path.startswith("http") else path.lstrip("/")
        if url.startswith("http") and urlsplit(url).netloc != self._host:
            # Never send credentials to another host, e.g. via a next-page link.
            raise ApiError(
                f"Prefect API returned a link to another host ({urlsplit(url).netloc}); refusing to follow it."
            )
        where = (
            f"{self.settings.display_url}/{path.lstrip('/')}"
            if not path.startswith("http")
            else path
        )
        last_problem = ""
        for attempt in range(attempts):
            self._count(attempt > 0)
            retry_after: float | None = None
            # A call that changes runs (and a read inside a batch's window: ``unpaced``) goes
            # out at once, its slot charged to the requests after it: waiting here would
            # stretch the window since the re-read that checked it.
            window: Window | None = getattr(self._unpaced, "window", None)
            paced = idempotent and window is None
            if paced:
                self._wait_out_hold()
            throttled = False
            if self.budget is not None and self.budget.acquire(wait=paced) > 0:
                self._budget_notice()
            try:
                response = self._http.request(method, url, json=body)
            except TRANSPORT_ERRORS as e:
                untrusted = _untrusted(e)
                if untrusted is not None:  # trying again changes nothing: the setting does
                    raise ApiError(
                        f"Prefect API at {self.settings.display_url}: its TLS certificate is not "
                        f"trusted ({untrusted}); set PREFECT_API_SSL_CERT_FILE to a PEM file of "
                        "the CA that signed it (or, to skip the check, "
                        "PREFECT_API_TLS_INSECURE_SKIP_VERIFY=true)."
                    ) from e
                last_problem = f"{type(e).__name__}: {self._said(str(e)) or 'connection failed'}"
                if not idempotent and isinstance(e, NOT_SENT_ERRORS):
                    raise NotSentError(
                        f"Prefect API at {self.settings.display_url}: {method} /{_bare(path)} "
                        f"was not sent ({last_problem}); nothing was applied."
                    ) from e
                if not idempotent:
                    raise self._uncertain(method, path, last_problem) from e
            else:
                _unbind(response)
                status = response.status_code
                if status in (401, 403):
                    raise AuthError(
                        f"Prefect API at {self.settings.display_url} refused the request "
                        f"({status} {response.reason_phrase}): check PREFECT_API_KEY / "
                        "PREFECT_API_AUTH_STRING or --api-key"
                        + (
                            f" ({self.settings.withheld} was not sent to this other host)."
                            if self.settings.withheld
                            else "."
                        ),
                        status,
                    )
                if status == 429 and not idempotent:
                    after = _retry_after(response, self.retry.max_retry_after)
                    raise ThrottledError(
                        f"Prefect API at {self.settings.display_url} throttled {method} /{_bare(path)} "
                        f"(429{f', retry after {after:.0f}s' if after is not None else ''}); "
                        "nothing was applied.",
                        after,
                    )
                if status in READ_RETRY_STATUS and idempotent:
                    throttled = status == 429
                    retry_after = (
                        _retry_after(response, self.retry.max_retry_after) if throttled else None
                    )
                    last_problem = f"HTTP {status} {self._said(response.text)}"
                elif status >= 500 and not idempotent:
                    # Finished only if Prefect itself answered: a gateway's 502/504 (or any other
                    # body) may stand for a call the server behind it is still running.
                    raise self._uncertain(
                        method,
                        path,
                        f"HTTP {status} {self._said(response.text)}",
                        status if _from_prefect(response) else None,
                    )
                elif 300 <= status < 400:
                    # A proxy moving http to https, a path without /api: nothing reached
                    # Prefect's endpoint (not followed: a write must not go elsewhere).
                    moved = self._said(response.headers.get("location", ""), 200) or "elsewhere"
                    raise ApiError(
                        f"Prefect API at {self.settings.display_url}: {method} /{_bare(path)} "
                        f"was redirected ({status}) to {moved}; nothing was applied. Use the "
                        "address it names as the API URL (--api-url / PREFECT_API_URL)."
                    )
                elif status in (404, 405):
                    raise NotFoundError(self._status_message(method, where, response), path, status)
                elif status >= 400:
                    raise ApiError(self._status_message(method, where, response))
                elif status == 204 or not expect_json:
                    if window is not None:
                        window.answered()
                    return None
                else:
                    try:
                        decoded = _decode(response.content)
                        if window is not None:
                            window.answered()
                        return (decoded, response.content, response.headers) if raw else decoded
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        # A truncated body is usually a dropped connection: try again.
                        last_problem = f"unreadable JSON body ({self._said(response.text, 60)!r})"
                        if not idempotent:
                            raise self._uncertain(method, path, last_problem, status) from None
            if attempt + 1 < attempts:
                delay = self.retry.delay(attempt, retry_after)
                if throttled:
                    self._hold(delay)
                if self._on_retry and attempts > 2:
                    self._on_retry(
                        f"{method} {path.split('?')[0]}: {last_problem}; retrying in {delay:.1f}s"
                    )
                if window is not None and window.answered_at is not None:
                    window.slept += delay
                self._wait(delay)
        hint = (
            "The server kept asking to wait (a rate limit, shared with its workers): set "
            "--max-requests-per-minute (or FLOWSYNC_MAX_REQUESTS_PER_MINUTE) under it, or run "
            "again later."
            if last_problem.startswith("HTTP 429")
            else "Check that the server is up and the URL is right, then run again."
        )
        raise UnavailableError(
            f"Prefect API at {self.settings.display_url} failed {method} /{path.lstrip('/').split('?')[0]} "
            f"after {attempts} attempts: {last_problem}. {hint}"
        )

    def _hold(self, seconds: float) -> None:
        """A 429: every paced request of this client waits ``seconds`` from now (this thread
        sleeps them as its retry's wait)."""
        until = time.monotonic() + seconds
        with self._lock:
            self._held_until = max(self._held_until, until)
        self._held.through = max(until, getattr(self._held, "through", 0.0))

    def _wait_out_hold(self) -> None:
        """Sleep until the server's last 429 lets requests go again (unless this thread has
        slept that wait already)."""
        with self._lock:
            until = self._held_until
        if until <= getattr(self._held, "through", 0.0):
            return
        self._held.through = until
        wait = until - time.monotonic()
        if wait > 0:
            self._wait(wait)

    def may_send_now(self) -> bool:
        """Whether a request could go out now without waiting for the request budget."""
        return self.budget is None or self.budget.due_now()

    def budget_waits(self) -> int:
        """How many times the request budget has held a request back so far (0: no budget)."""
        return 0 if self.budget is None else self.budget.stats().waits

    @contextmanager
    def unpaced(self) -> Iterator[Window]:
        """A batch's re-read -> call window: first wait for a free slot of the request
        budget; inside, this thread's requests take their slots without waiting (the
        requests after the window wait for them), so no wait for the budget falls inside
        it. What the server made its reads wait inside it (a 429's Retry-After, a retry's
        backoff) is counted in the ``Window`` it yields."""
        if self.budget is not None and self.budget.wait_due() > 0:
            self._budget_notice()
        before = getattr(self._unpaced, "window", None)
        window = self._unpaced.window = Window()
        try:
            yield window
        finally:
            self._unpaced.window = before

    def backoff(self, attempt: int) -> float:
        """How long the retry policy waits before try ``attempt + 1`` (for callers that resend themselves)."""
        return self.retry.delay(attempt, None)

    def _budget_notice(self) -> None:
        if self._on_retry is None or self.budget is None:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._budget_told < 30:
                return
            self._budget_told = now
        stats = self.budget.stats()
        self._on_retry(
            f"the request budget ({stats.per_minute:g}/min), not the server, is the limit: "
            f"{stats.waits} of {stats.requests} requests waited {stats.waited_seconds:.1f}s so far"
        )

    def pause(self, attempt: int) -> None:
        """Sleep as the retry policy would before try ``attempt + 1`` (for callers that resend themselves)."""
        self._wait(self.retry.delay(attempt, None))

    def pause_for(self, seconds: float) -> None:
        """Sleep ``seconds`` with the client's clock (tests give it a fake one)."""
        if seconds > 0:
            self._wait(seconds)

    @contextmanager
    def waits_through(
        self, wait: Callable[[float, Callable[[float], None]], None]
    ) -> Iterator[None]:
        """Inside, every wait this client makes this thread sleep (a retry's backoff, a 429's
        Retry-After or its hold on the other requests, the request budget's, ``pause``,
        ``pause_for``) is ``wait(seconds, sleep)``: it must take ``seconds`` and may do what
        must be done before and while this thread sleeps (apply records a call still out
        that the server answered 429 meanwhile). Other threads sleep as before."""
        before = getattr(self._waits, "through", None)
        self._waits.through = wait
        try:
            yield
        finally:
            self._waits.through = before

    def _wait(self, seconds: float) -> None:
        through = getattr(self._waits, "through", None)
        if through is None:
            self._sleep(seconds)
        else:
            through(seconds, self._sleep)

    def _said(self, text: str, limit: int = 80) -> str:
        """Text the server (or something between) answered, shortened, without the credentials
        this client sends (a proxy's error page may quote the Authorization header)."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return short(present.printable(text), limit)  # no terminal controls either

    def _uncertain(
        self, method: str, path: str, problem: str, status: int | None = None
    ) -> UncertainError:
        return UncertainError(
            f"Prefect API at {self.settings.display_url}: {method} /{_bare(path)} "
            f"failed in transit ({problem}); the server may have applied it.",
            problem,
            status,
        )

    def _status_message(self, method: str, where: str, response: httpx.Response) -> str:
        detail = response.text
        try:
            payload = response.json()
            if isinstance(payload, dict) and "detail" in payload:
                detail = json.dumps(payload["detail"])
        except ValueError:
            pass
        hint = ""
        if response.status_code == 404:
            hint = " Is this a Prefect API URL? It usually ends in /api."
        return f"{method} {where} answered {response.status_code}: {self._said(detail, 200)}.{hint}"
