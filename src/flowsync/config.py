"""Where flowsync finds its settings: the API URL and credentials, and the DB path.

Owns: resolving each setting the way the Prefect CLI does (flag, then
environment, then the active profile in ``$PREFECT_HOME/profiles.toml``; the
request budget ``FLOWSYNC_MAX_REQUESTS_PER_MINUTE`` and the run retention
``FLOWSYNC_RUN_RETENTION_DAYS`` likewise, so a profile can hold a Cloud
workspace's share of its quota and its plan's retention), and
masking secrets for display. Must not: open connections, print, or write the
API key anywhere; secrets stay in ``pydantic.SecretStr`` until the HTTP layer
puts them in a header.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from flowsync.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_DB = "flowsync.duckdb"

# `flowsync pull` defaults: the CLI's option defaults and ``PullOptions`` both read these.
PULL_CONCURRENCY = 2  # pages in flight during a full pull; more slows the server down
PULL_OVERLAP_MINUTES = 10.0  # events re-read before the cursor (late events, client clocks)
PULL_EVENTS_HORIZON_DAYS = 6.0  # assumed only when the server does not say how long it keeps events
PULL_STALENESS_HOURS = 24.0  # every live run re-read at least this often (edits emit no event)
# The most each may be (``PullOptions`` refuses more, for the CLI and the library alike):
# past them a span means nothing to a pull, and a huge one is no date (OverflowError).
PULL_OVERLAP_MAX_MINUTES = 7 * 24 * 60.0  # a week: Prefect keeps events 7 days by default
PULL_EVENTS_HORIZON_MAX_DAYS = 365.0
PULL_STALENESS_MAX_HOURS = 365 * 24.0  # every live run re-read at least once a year
# How long a rule's SQL may run: the policy's rule_timeout_seconds is at most the largest,
# and --rule-timeout (the library's plan and apply ``timeout=``), which overrides it, too.
RULE_TIMEOUT_MIN_SECONDS = 0.1
RULE_TIMEOUT_MAX_SECONDS = 3600.0
# The bounds of the options a command and its library call share: the CLI's options declare
# them, ``PullOptions`` and ``operations.apply`` refuse what is outside (``check_number``).
PULL_CONCURRENCY_MIN, PULL_CONCURRENCY_MAX = 1, 8  # --concurrency: requests in flight
MEMORY_LIMIT_MIN_MB = 0  # --memory-limit: 0 is DuckDB's own default; below it, no cap at all
MEMORY_LIMIT_MAX_MB = 2**24  # 16 TiB: more than any machine has; DuckDB refuses 2**44 MB
SETTLE_MIN_SECONDS = 0.0  # apply --settle-seconds


def check_wait(wait: object) -> float:
    """``wait`` (seconds to wait for a file's lock) if it is a number from 0; else a
    ``ConfigError``: a library caller's (the command line's --wait is checked as parsed)."""
    if isinstance(wait, bool) or not isinstance(wait, numbers.Real) or not float(wait) >= 0:
        raise ConfigError(f"wait={wait!r} is not a number of seconds from 0: pass wait=SECONDS.")
    return float(wait)


def check_number(
    flag: str,
    value: object,
    *,
    whole: bool = False,
    low: float | None = None,
    high: float | None = None,
    metavar: str = "N",
) -> Any:
    """``value`` if it is a number (``whole``: an int) from ``low`` up to ``high``, and
    finite; else a ``ConfigError`` naming ``flag``: the command line's own check, for a
    library caller (NaN and infinity are no setting, and ``NaN < 0`` is False)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (whole and not isinstance(value, int))
    ):
        raise ConfigError(
            f"{flag} {value!r} is not {'a whole number' if whole else 'a number'}: pass {metavar}."
        )
    least = -math.inf if low is None else low
    most = math.inf if high is None else high
    finite = isinstance(value, int) or math.isfinite(value)  # an int may be past any float
    if not (finite and least <= value <= most):
        span = f"from {low:g}" if low is not None else "any"
        raise ConfigError(
            f"{flag} {value!r} is out of range: use {span}"
            + (f" up to {high:g}." if high is not None else " (a finite number).")
        )
    return value


def check_memory_limit(value: object) -> int | None:
    """``--memory-limit`` (``memory_limit_mb=``): None (flowsync sizes it), 0 (DuckDB's own
    default) or more MB; a negative one would lift DuckDB's cap altogether."""
    if value is None:
        return None
    limit: int = check_number(
        "--memory-limit",
        value,
        whole=True,
        low=MEMORY_LIMIT_MIN_MB,
        high=MEMORY_LIMIT_MAX_MB,
        metavar="MB",
    )
    return limit


@dataclass(frozen=True)
class ApiSettings:
    """How to reach one Prefect API. ``source`` says where the URL came from."""

    url: str
    api_key: SecretStr | None = None
    auth_string: SecretStr | None = None
    verify: bool | str = True
    source: str = "flag"
    max_requests_per_minute: float | None = None  # the request budget; None: unpaced
    # How long the server keeps runs, when it cannot say (Prefect Cloud: 7, 14 or 30 days by plan).
    run_retention_days: float | None = None
    # Seconds a request may take before it counts as lost (Prefect's PREFECT_API_REQUEST_TIMEOUT;
    # None: its default, 60).
    request_timeout: float | None = None
    # The profile's credential left unsent because the URL came from elsewhere and names
    # another host than the profile's own URL (a 401 then says so); None: none was left.
    withheld: str | None = None

    def __post_init__(self) -> None:
        """One built by hand (the library's ``api=``) is checked as ``resolve_api`` checks
        what it reads, so a bad one is a ``ConfigError`` before anything is read or written:
        the URL, the secrets kept in ``SecretStr``, the CA file, the budget, the retention."""
        _check_url(self.url, self.source)
        for name in ("api_key", "auth_string"):
            if not isinstance(getattr(self, name), (SecretStr, type(None))):
                raise ConfigError(
                    f"ApiSettings {name} must be a pydantic SecretStr (or None), so that it "
                    f"is never shown: pass {name}=SecretStr(...)."
                )
        if self.auth_string is not None:
            _check_auth_string(self.auth_string.get_secret_value(), "ApiSettings auth_string")
        if self.api_key is not None:  # as resolve_api reads one: stripped, then a header's
            key = _check_key(self.api_key.get_secret_value(), "ApiSettings api_key")
            object.__setattr__(self, "api_key", SecretStr(key))
        if isinstance(self.verify, str):
            named = f"ApiSettings verify {self.verify!r}"
            object.__setattr__(self, "verify", _ca_file(self.verify, named))
        elif not isinstance(self.verify, bool):
            raise ConfigError(
                f"ApiSettings verify {self.verify!r} is neither True, False nor the path of a "
                "file of PEM CA certificates."
            )
        _budget(_as_text(self.max_requests_per_minute), BUILT)
        _retention(_as_text(self.run_retention_days), BUILT)
        _request_timeout(_as_text(self.request_timeout), BUILT)

    def __repr__(self) -> str:
        """Its fields with the URL masked (``display_url``): a password in the URL is never
        shown (the key and the auth string are ``SecretStr``)."""
        shown = (
            f"{f.name}={self.display_url if f.name == 'url' else getattr(self, f.name)!r}"
            for f in fields(self)
        )
        return f"ApiSettings({', '.join(shown)})"

    @property
    def display_url(self) -> str:
        return mask_url(self.url)

    @property
    def auth_kind(self) -> str:
        if self.api_key is not None:
            return "api key (Bearer)"
        if self.auth_string is not None:
            return "auth string (basic)"
        return "none"


_CLOUD = re.compile(
    r"/api/accounts/(?P<account>[0-9a-f-]{36})/workspaces/(?P<workspace>[0-9a-f-]{36})$",
    re.IGNORECASE,
)


def cloud_workspace(url: str) -> tuple[str, str] | None:
    """(account id, workspace id) of a Prefect Cloud workspace URL, else None."""
    m = _CLOUD.search(url.rstrip("/"))
    return (m.group("account").lower(), m.group("workspace").lower()) if m else None


_USERINFO = re.compile(r"(//)[^/?#]*@")
_TO_LAST_AT = re.compile(r"(//).*@")
_STRAY_AT = re.compile(r"//[^/?#]*[/?#].*@")


def _stray_at(url: str) -> bool:
    """An ``@`` past a ``/``, ``?`` or ``#`` after the host: a password holding one of
    them unencoded (``http://admin:pa/ss@host/api``), which Python reads as part of the path
    (the password's start then reads as a port, or the user as the host)."""
    return _STRAY_AT.search(url) is not None


def mask_url(url: str) -> str:
    """The URL with any user:password part, query and fragment replaced, safe to print and
    store (also a URL Python cannot read: a bracket left open, a port that is no number, a
    password that holds an unencoded ``/``, ``?`` or ``#``: masked up to its last ``@``)."""
    if _stray_at(url):
        return _TO_LAST_AT.sub(r"\1***@", url, count=1)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is no port
    except ValueError:
        return _USERINFO.sub(r"\1***@", url, count=1)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=f"***@{host}")
    if parts.query:  # ?token=...: a key some proxies take there
        parts = parts._replace(query="***")
    if parts.fragment:
        parts = parts._replace(fragment="***")
    return urlunsplit(parts)


def prefect_home(env: Mapping[str, str]) -> Path:
    return Path(env.get("PREFECT_HOME") or "~/.prefect").expanduser()


def load_profile(env: Mapping[str, str]) -> tuple[str | None, dict[str, Any], Path]:
    """The active profile's name and settings, as Prefect would pick them."""
    path = Path(
        env.get("PREFECT_PROFILES_PATH") or prefect_home(env) / "profiles.toml"
    ).expanduser()
    if not path.is_file():
        return None, {}, path
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(
            f"Cannot read Prefect profiles file {path}: {e}. Fix the file, or point "
            "PREFECT_PROFILES_PATH at a readable one (settings may come from it, so it is "
            "read even when PREFECT_API_URL or --api-url is set)."
        ) from e
    active = data.get("active")
    if not env.get("PREFECT_PROFILE") and active is not None and not isinstance(active, str):
        raise ConfigError(
            f"Prefect profiles file {path}: `active` must be a profile's name, in quotes "
            '(e.g. active = "local"); fix the file, or choose a profile with PREFECT_PROFILE.'
        )
    name = env.get("PREFECT_PROFILE") or active or "ephemeral"
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"Prefect profiles file {path}: [profiles] must be a table.")
    settings = profiles.get(name)
    if settings is None:
        if env.get("PREFECT_PROFILE"):
            raise ConfigError(
                f"Prefect profile {name!r} (from PREFECT_PROFILE) is not in {path}; "
                f"known: {', '.join(sorted(profiles)) or 'none'}."
            )
        return name, {}, path
    if not isinstance(settings, dict):
        raise ConfigError(f"Prefect profiles file {path}: profile {name!r} must be a table.")
    return name, {str(k): v for k, v in settings.items()}, path


def _dangling_active(path: Path) -> str | None:
    """The ``active`` profile named by the profiles file at ``path`` when it holds no such
    profile (``prefect profile use`` was undone by hand), else None."""
    if not path.is_file():  # (a device or a pipe would be read without end)
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    active = data.get("active")
    profiles = data.get("profiles") or {}
    if not isinstance(active, str) or not active or not isinstance(profiles, dict):
        return None
    return active if active not in profiles else None


_TRUE = {"1", "1.0", "true", "yes", "on", "t", "y"}  # "1.0": a TOML float, as pydantic takes
_FALSE = {"0", "0.0", "false", "no", "off", "f", "n", ""}


def _truthy(value: object, where: str) -> bool:
    """A yes/no setting as pydantic (Prefect's settings) reads it; else a ``ConfigError``
    naming ``where`` it came from (``ture`` was read as false: TLS checked, unasked)."""
    word = str(value).strip().lower()
    if word not in _TRUE | _FALSE:
        raise ConfigError(f"{where} is {value!r}, neither true nor false: set true or false.")
    return word in _TRUE


# Settings a profile holds as text only (a TOML list or number there is a mistake).
_TEXT_KEYS = frozenset(
    {"PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_API_SSL_CERT_FILE"}
)
BUDGET_KEY = "FLOWSYNC_MAX_REQUESTS_PER_MINUTE"
RETENTION_KEY = "FLOWSYNC_RUN_RETENTION_DAYS"
TIMEOUT_KEY = "PREFECT_API_REQUEST_TIMEOUT"  # Prefect's own setting, its default 60 s


def resolve_api(
    api_url: str | None = None,
    api_key: str | None = None,
    env: Mapping[str, str] | None = None,
    *,
    max_requests_per_minute: float | None = None,
) -> ApiSettings:
    """Each setting from the flag, else the environment, else the active profile."""
    env = os.environ if env is None else env
    profile_name, profile, profile_path = load_profile(env)

    def pick(flag: str | None, key: str) -> tuple[str | None, str]:
        if flag:
            return flag, "flag"
        if env.get(key):
            return env[key], f"${key}"
        value = profile.get(key)
        if value is None or value == "":
            return None, ""
        where = f"profile {profile_name!r} in {profile_path}"
        if isinstance(value, (list, dict)) or (key in _TEXT_KEYS and not isinstance(value, str)):
            # (the value is never shown: it may be a key)
            raise ConfigError(
                f"{key} in {where} is a TOML {type(value).__name__}, not "
                + ("text in quotes" if key in _TEXT_KEYS else "a single value")
                + "; fix the file."
            )
        return str(value), where

    if api_url is not None and not api_url.strip():
        raise ConfigError(
            "--api-url is empty: pass the Prefect API URL (e.g. http://127.0.0.1:4200/api), "
            "or leave the flag out to use PREFECT_API_URL or the active Prefect profile."
        )
    url, source = pick(api_url, "PREFECT_API_URL")
    if not url:
        active = _dangling_active(profile_path) if not env.get("PREFECT_PROFILE") else None
        raise ConfigError(
            "No Prefect API URL: pass --api-url, set PREFECT_API_URL "
            "(e.g. http://127.0.0.1:4200/api), or activate a Prefect profile that has one"
            + (
                f" (the active profile {active!r} in {profile_path} is not defined there)."
                if active
                else "."
            )
        )
    url = url.strip().rstrip("/")
    _check_url(url, source)
    if api_key is not None and not api_key.strip():
        raise ConfigError(
            "--api-key is empty (an unset shell variable?): pass the key, or leave the flag "
            "out to use PREFECT_API_KEY or the active Prefect profile's."
        )
    key, key_source = pick(api_key, "PREFECT_API_KEY")
    auth, auth_source = pick(None, "PREFECT_API_AUTH_STRING")
    auth_used = "" if key and not key_source.startswith("profile ") else auth_source
    withheld = _foreign_profile_secret(url, source, profile, profile_name, key_source, auth_used)
    if withheld is not None:  # a profile's secret goes only to its own URL's host
        key = None if key_source.startswith("profile ") else key
        auth = None if auth_source.startswith("profile ") else auth
    if key:
        key = _check_key(
            key, "--api-key" if key_source == "flag" else f"the API key (from {key_source})"
        )
    if auth and not key:
        _check_auth_string(auth, f"PREFECT_API_AUTH_STRING (from {auth_source})")

    verify: bool | str = True
    insecure, insecure_source = pick(None, "PREFECT_API_TLS_INSECURE_SKIP_VERIFY")
    cert_file, cert_source = pick(None, "PREFECT_API_SSL_CERT_FILE")
    if insecure and _truthy(
        insecure, f"PREFECT_API_TLS_INSECURE_SKIP_VERIFY (from {insecure_source})"
    ):
        verify = False
    elif cert_file:
        verify = _ca_file(cert_file, _named("PREFECT_API_SSL_CERT_FILE", cert_file, cert_source))

    flag_budget = None if max_requests_per_minute is None else str(max_requests_per_minute)
    budget, budget_source = pick(flag_budget, BUDGET_KEY)
    return ApiSettings(
        url=url,
        api_key=SecretStr(key) if key else None,
        auth_string=SecretStr(auth) if auth and not key else None,
        verify=verify,
        source=source,
        max_requests_per_minute=_budget(budget, budget_source),
        run_retention_days=_retention(*pick(None, RETENTION_KEY)),
        request_timeout=_request_timeout(*pick(None, TIMEOUT_KEY)),
        withheld=withheld,
    )


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) a request to ``url`` goes to, the default port filled in; None
    when Python cannot read it."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return None
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port)


def _foreign_profile_secret(
    url: str,
    source: str,
    profile: Mapping[str, Any],
    profile_name: str | None,
    key_source: str,
    auth_source: str,
) -> str | None:
    """What the profile's API key or auth string is, named, when the URL came from the flag
    or the environment and names another host than the profile's own ``PREFECT_API_URL``:
    that secret was given for the profile's server, and sending it to another (a local
    server, a mistyped or hostile host) would hand it over. None when nothing is withheld."""
    from_profile = [
        what
        for what, where in (("API key", key_source), ("auth string", auth_source))
        if where.startswith("profile ")
    ]
    own = profile.get("PREFECT_API_URL")
    if not from_profile or source.startswith("profile "):
        return None
    if isinstance(own, str) and own.strip() and _origin(own) == _origin(url):
        return None
    # (a profile with no URL of its own names no host its secret is for: none but its own)
    whose = f"the {' and '.join(from_profile)} of profile {profile_name!r}"
    if isinstance(own, str) and own.strip():
        return f"{whose} (for {mask_url(own.strip().rstrip('/'))})"
    return f"{whose} (which names no URL of its own)"


def _check_key(key: str, where: str) -> str:
    """An API key as it goes in the header: without the space or line break around it (never
    part of it), else a ``ConfigError`` naming ``where`` it came from, never the key, when it
    holds a character a header cannot carry (httpx and h11 would refuse it at the first
    request, quoting the header)."""
    key = key.strip()
    if not (key.isascii() and key.isprintable()):
        raise ConfigError(
            f"{where} holds a character an HTTP header cannot carry (not printable ASCII: a "
            "pasted curly quote or a line break?); copy the key again from Prefect."
        )
    return key


def _check_url(url: object, source: str) -> None:
    """An http(s) URL Python can read, with a host the resolver can be asked for; else a
    ``ConfigError`` naming it, masked, and where it came from (``source``)."""
    if not isinstance(url, str):
        raise ConfigError(
            f"ApiSettings url is {type(url).__name__}, not text: pass the Prefect API URL, "
            "e.g. http://127.0.0.1:4200/api."
        )
    if not _utf8(url):  # a password typed in another encoding: Basic auth cannot send it
        raise ConfigError(
            f"{'--api-url' if source == 'flag' else f'The API URL (from {source})'} holds a "
            "byte that is not UTF-8 (set from a shell in another encoding?); set it again in "
            "UTF-8, or percent-encode the user and password."
        )
    shown = mask_url(url)
    named = f"--api-url {shown!r}" if source == "flag" else f"API URL {shown!r} (from {source})"
    if _stray_at(url):
        raise ConfigError(
            f"{named} has an @ after a /, ? or # (a password holding one?): percent-encode "
            "them in the user and password (/ as %2F, ? as %3F, # as %23, @ as %40), e.g. "
            "http://user:pa%2Fss@127.0.0.1:4200/api."
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is no number, or past 65535, raises here
    except ValueError as e:
        raise ConfigError(
            f"{named} is not a valid URL ({_without_userinfo(str(e), url)}); expected e.g. "
            "http://127.0.0.1:4200/api."
        ) from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(
            f"{named} is not an http(s) URL; expected e.g. http://127.0.0.1:4200/api."
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        # Prefect reads credentials from headers only; httpx would send every request to
        # /api?...flows/filter, and the URL is shown and stored (a key in it with it).
        raise ConfigError(
            f"{named} has a query string or fragment (after ? or #), which a Prefect API URL "
            "never has: remove it; a key goes in PREFECT_API_KEY (or --api-key), basic auth "
            "in PREFECT_API_AUTH_STRING."
        )
    _check_host(parts.hostname, named)


def _without_userinfo(text: str, url: str) -> str:
    """``text``, an error about ``url``, with the URL's ``user:password@`` masked as
    ``mask_url`` masks it (urlsplit's check of a netloc's NFKC form quotes the netloc)."""
    netloc = re.split(r"[/?#]", url.partition("//")[2], maxsplit=1)[0]
    info = netloc.rpartition("@")[0]
    return text.replace(f"{info}@", "***@") if info else text


def _utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: not so a byte of another encoding that Python read
    from the environment (a lone surrogate). Checked without raising where the caller would:
    a ``UnicodeEncodeError`` quotes the whole text (its repr, its ``object``)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_utf8(text: str, what: str) -> str:
    """``text`` (a path, SQL, a name) if it is UTF-8; else a ``ConfigError`` naming ``what``
    and showing the bytes that are not (DuckDB and the file system would fail on them with a
    traceback, or match nothing)."""
    if _utf8(text):
        return text
    bad = next(i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff")
    start, end = max(0, bad - 40), bad + 20  # around the first such byte
    part = text[start:end]
    try:
        shown = os.fsencode(part).decode("utf-8", "backslashreplace")  # the byte as read
    except UnicodeEncodeError:  # a surrogate no file system name decodes to
        shown = part.encode("utf-8", "backslashreplace").decode()
    shown = ("..." if start else "") + shown + ("..." if end < len(text) else "")
    raise ConfigError(
        f"{what} holds a byte that is not UTF-8 ({shown}); "
        "write it in UTF-8 (typed in a shell of another encoding?)."
    )


def _check_auth_string(auth: str, where: str) -> None:
    if not _utf8(auth):
        raise ConfigError(
            f"{where} holds a byte that is not UTF-8 (set from a shell in another encoding?); "
            "set it again in UTF-8."
        )


def _ca_file(value: str, named: str) -> str:
    """PREFECT_API_SSL_CERT_FILE (``named``: the setting and where it came from): a file of
    PEM CA certificates, loaded here once as the API client will load it, so that a file
    of anything else (a DER certificate, a key, another file) is one line naming the
    setting, not an ``ssl.SSLError`` at the first request."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise ConfigError(
            f"{named} is a directory; point it at a file of PEM CA certificates (e.g. ca.pem)."
        )
    if not path.is_file():
        raise ConfigError(f"{named} does not exist; point it at a file of PEM CA certificates.")
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError, ValueError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise ConfigError(
            f"{named} holds no PEM certificate Python can load ({reason}); point it at a file "
            "of PEM CA certificates (a DER one: openssl x509 -inform der -in FILE -out ca.pem)."
        ) from None
    return str(path)


def _check_host(host: str, named: str) -> None:
    """A host name the resolver can be asked for, checked as the socket layer encodes it
    (IDNA: no empty part, none longer than 63 characters) and an ``xn--`` part decodes."""
    try:
        host.encode("idna").decode("idna")
    except UnicodeError:
        raise ConfigError(
            f"{named} has a host name that cannot be looked up ({host!r}: a doubled dot, a "
            "part longer than 63 characters, or an xn-- part that is no name?); fix the host, "
            "e.g. http://127.0.0.1:4200/api."
        ) from None


def _number(
    key: str,
    value: str | None,
    source: str,
    valid: Callable[[float], bool],
    unit: str,
    example: str,
) -> float | None:
    """A numeric setting from the environment or a profile: None when unset or empty; a
    ``ConfigError`` naming the key, its value and where it came from when it is not a
    number ``valid`` accepts."""
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")  # valid() refuses it, as it does a NaN spelt out
    if not valid(number):
        raise ConfigError(
            f"{_named(key, value, source)} is not a number of {unit}; expected e.g. {example}."
        )
    return number


def _named(key: str, value: str | None, source: str) -> str:
    """A setting and its value as an error names them: the flag when it came from one
    (``--max-requests-per-minute '0.01'``), else the key and where it was found."""
    if source == "flag":
        return f"--{key.removeprefix('FLOWSYNC_').lower().replace('_', '-')} {value!r}"
    if source == BUILT:
        return f"ApiSettings {key.removeprefix('FLOWSYNC_').lower()} {value!r}"
    return f"{key} {value!r} (from {source})"


BUILT = "ApiSettings"  # the source of a setting an ApiSettings was built with by hand


def _as_text(value: object) -> str | None:
    """A number an ApiSettings holds, as the text its setting is read from (anything else,
    a bool too, as text no number reads from)."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return None if value is None else str(value)
    return repr(value)


def _retention(value: str | None, source: str) -> float | None:
    return _number(
        RETENTION_KEY,
        value,
        source,
        lambda days: 0 < days < 100_000,
        "days",
        "14 (Prefect Cloud keeps runs 7, 14 or 30 days, by plan)",
    )


def _request_timeout(value: str | None, source: str) -> float | None:
    return _number(TIMEOUT_KEY, value, source, lambda s: 0 < s < float("inf"), "seconds", "30")


def _budget(value: str | None, source: str) -> float | None:
    """A request budget: a positive number of requests per minute; 0 or empty: none."""
    rate = _number(
        BUDGET_KEY,
        value,
        source,
        lambda rate: 0 <= rate < float("inf"),
        "requests per minute",
        "300 (0 turns the budget off)",
    )
    if rate is not None and 0 < rate < 1:
        raise ConfigError(
            f"{_named(BUDGET_KEY, value, source)} is below 1 request per minute; use 1 or more "
            "(or 0 for no budget)."
        )
    return rate or None


def resolve_db_path(
    db: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Path:
    """The DuckDB file: --db, else $FLOWSYNC_DB, else ./flowsync.duckdb."""
    env = os.environ if env is None else env
    if db is not None and not isinstance(db, (str, os.PathLike)):
        raise ConfigError(
            f"db {db!r} is not a path: pass the DuckDB file's path as text or a pathlib.Path."
        )
    raw = os.fspath(db or env.get("FLOWSYNC_DB") or DEFAULT_DB)
    if not isinstance(raw, str):  # a path of bytes
        raise ConfigError(f"db {raw!r} is a path of bytes: pass it as text or a pathlib.Path.")
    return Path(check_utf8(raw, "--db")).expanduser()
