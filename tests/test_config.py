"""Settings are found the way the Prefect CLI finds them; secrets are never shown."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from flowsync.config import ApiSettings, mask_url, resolve_api, resolve_db_path
from flowsync.errors import ConfigError


def write_profiles(home: Path, text: str) -> None:
    (home / "profiles.toml").write_text(text)


def test_flag_beats_env_beats_profile(isolated_env: Path) -> None:
    write_profiles(
        isolated_env,
        'active = "cloud"\n[profiles.cloud]\nPREFECT_API_URL = "https://api.prefect.cloud/api/accounts/a/workspaces/w"\n'
        'PREFECT_API_KEY = "pnu_profile"\n',
    )
    env = {"PREFECT_HOME": str(isolated_env)}
    s = resolve_api(env=env)
    assert s.url.endswith("/workspaces/w") and s.api_key is not None
    assert s.api_key.get_secret_value() == "pnu_profile" and "profile 'cloud'" in s.source
    s = resolve_api(
        env={**env, "PREFECT_API_URL": "http://127.0.0.1:4200/api/", "PREFECT_API_KEY": "pnu_env"}
    )
    assert s.url == "http://127.0.0.1:4200/api" and s.source == "$PREFECT_API_URL"
    assert s.api_key is not None and s.api_key.get_secret_value() == "pnu_env"
    s = resolve_api("http://h:1/api", "pnu_flag", env=env)
    assert (
        s.url == "http://h:1/api"
        and s.api_key is not None
        and s.api_key.get_secret_value() == "pnu_flag"
    )


def test_prefect_profile_env_selects_profile(isolated_env: Path) -> None:
    write_profiles(
        isolated_env,
        'active = "a"\n[profiles.a]\nPREFECT_API_URL = "http://a/api"\n[profiles.b]\nPREFECT_API_URL = "http://b/api"\n',
    )
    assert (
        resolve_api(env={"PREFECT_HOME": str(isolated_env), "PREFECT_PROFILE": "b"}).url
        == "http://b/api"
    )
    with pytest.raises(ConfigError, match="'zzz'"):
        resolve_api(env={"PREFECT_HOME": str(isolated_env), "PREFECT_PROFILE": "zzz"})


def test_an_active_profile_the_file_does_not_hold_is_named(isolated_env: Path) -> None:
    """`active = "ghost"` with no [profiles.ghost]: the error says so, not only "no URL"."""
    write_profiles(
        isolated_env, 'active = "ghost"\n[profiles.a]\nPREFECT_API_URL = "http://a/api"\n'
    )
    with pytest.raises(ConfigError, match=r"active profile 'ghost' in .* is not defined there"):
        resolve_api(env={"PREFECT_HOME": str(isolated_env)})


def test_auth_string_is_basic_auth_and_masked(isolated_env: Path) -> None:
    s = resolve_api(env={"PREFECT_API_URL": "http://h/api", "PREFECT_API_AUTH_STRING": "admin:pw"})
    assert s.auth_kind == "auth string (basic)"
    assert "pw" not in repr(s)


def test_broken_profiles_file_is_one_clear_error(isolated_env: Path) -> None:
    """Its advice is one that works: setting PREFECT_API_URL does not (settings may come from
    the file, so it is read even then); pointing PREFECT_PROFILES_PATH elsewhere does."""
    write_profiles(isolated_env, "active = [unclosed\n")
    env = {"PREFECT_HOME": str(isolated_env), "PREFECT_API_URL": "http://h/api"}
    with pytest.raises(ConfigError, match="profiles file") as raised:
        resolve_api(env=env)
    assert "point PREFECT_PROFILES_PATH at a readable one" in str(raised.value)
    assert "or set PREFECT_API_URL" not in str(raised.value)
    elsewhere = isolated_env / "other.toml"
    elsewhere.write_text("", encoding="utf-8")
    assert resolve_api(env={**env, "PREFECT_PROFILES_PATH": str(elsewhere)}).url == "http://h/api"


def test_mask_url_hides_userinfo() -> None:
    assert (
        mask_url("https://user:secret@example.com:8443/api") == "https://***@example.com:8443/api"
    )
    assert mask_url("http://127.0.0.1:4200/api") == "http://127.0.0.1:4200/api"


def test_settings_never_show_the_urls_password_nor_the_key() -> None:
    settings = resolve_api("http://flowsync:s3cret-pw@127.0.0.1:4200/api", "pnu_KEY", env={})
    assert settings.display_url == "http://***@127.0.0.1:4200/api"
    for shown in (repr(settings), str(settings), f"{settings}", repr([settings])):
        assert "s3cret-pw" not in shown and "pnu_KEY" not in shown, shown
        assert "http://***@127.0.0.1:4200/api" in shown
    assert settings.url == "http://flowsync:s3cret-pw@127.0.0.1:4200/api"  # what is sent
    assert settings == resolve_api(settings.url, "pnu_KEY", env={})


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"url": "http://[::1:4311/api"}, "--api-url 'http://[::1:4311/api' is not a valid URL"),
        ({"url": "ftp://h/api"}, "is not an http(s) URL"),
        ({"url": "http://prefect..example.com/api"}, "cannot be looked up"),
        ({"verify": "/nonexistent/ca.pem"}, "ApiSettings verify '/nonexistent/ca.pem' does not"),
        ({"verify": "a directory"}, "is a directory"),
        ({"api_key": "pnu_KEY"}, "ApiSettings api_key must be a pydantic SecretStr"),
        ({"auth_string": "u:pw"}, "ApiSettings auth_string must be a pydantic SecretStr"),
        ({"max_requests_per_minute": -1.0}, "ApiSettings max_requests_per_minute '-1.0' is not"),
        ({"max_requests_per_minute": float("nan")}, "max_requests_per_minute 'nan' is not"),
        ({"max_requests_per_minute": 0.5}, "max_requests_per_minute '0.5' is below 1 request"),
        ({"run_retention_days": 0}, "ApiSettings run_retention_days '0' is not a number"),
    ],
)
def test_settings_built_by_hand_are_checked_as_resolve_api_checks_them(
    tmp_path: Path, settings: dict[str, Any], says: str
) -> None:
    """The library's ``api=`` is an ApiSettings: one built by hand was used unchecked (a
    ValueError, a FileNotFoundError or an AttributeError from the client, a budget of
    NaN or 0.5 a minute); now the same ConfigError as the settings resolve_api reads."""
    if settings.get("verify") == "a directory":
        settings["verify"] = str(tmp_path)
        says = f"ApiSettings verify '{tmp_path}' is a directory"
    with pytest.raises(ConfigError, match=re.escape(says)):
        ApiSettings(**{"url": "http://127.0.0.1:4200/api", **settings})
    ApiSettings(url="http://127.0.0.1:4200/api", max_requests_per_minute=0)  # 0: no budget


def test_db_path_resolution(tmp_path: Path) -> None:
    assert resolve_db_path(None, env={}) == Path("flowsync.duckdb")
    assert (
        resolve_db_path(None, env={"FLOWSYNC_DB": str(tmp_path / "x.duckdb")})
        == tmp_path / "x.duckdb"
    )
    assert (
        resolve_db_path(tmp_path / "y.duckdb", env={"FLOWSYNC_DB": "ignored"})
        == tmp_path / "y.duckdb"
    )


@pytest.mark.parametrize(
    ("cert", "problem"),
    [
        ("/nonexistent.pem", "does not exist"),
        ("a directory", "is a directory"),
        ("not a certificate\n", "holds no PEM certificate"),  # a DER one, a key, a typo
    ],
)
def test_cert_file_must_be_a_file_of_pem_certificates(
    tmp_path: Path, cert: str, problem: str
) -> None:
    """Checked when the settings are read, one line naming the setting: not an ssl.SSLError
    traceback when the client is built, nor "does not exist" for a directory."""
    if cert == "a directory":
        cert = str(tmp_path)
    elif not cert.startswith("/"):
        (tmp_path / "ca.pem").write_text(cert)
        cert = str(tmp_path / "ca.pem")
    named = re.escape(f"PREFECT_API_SSL_CERT_FILE '{cert}'")
    with pytest.raises(ConfigError, match=rf"^{named} .*{problem}"):
        resolve_api(env={"PREFECT_API_URL": "https://h/api", "PREFECT_API_SSL_CERT_FILE": cert})


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://[::1:4311/api", "Invalid IPv6 URL"),
        ("http://127.0.0.1:99999/api", "Port out of range"),
        ("http://h:abc/api", "Port could not be cast"),
    ],
)
def test_a_url_python_cannot_read_is_one_config_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"^--api-url .* is not a valid URL \({problem}"):
        resolve_api(url, env={})
    with pytest.raises(ConfigError, match=r"^API URL .* \(from \$PREFECT_API_URL\) is not a valid"):
        resolve_api(env={"PREFECT_API_URL": url})


def test_mask_url_hides_userinfo_of_a_url_it_cannot_read() -> None:
    assert mask_url("http://user:secret@[::1/api") == "http://***@[::1/api"


def test_empty_api_url_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^--api-url is empty"):
        resolve_api("", env={"PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    with pytest.raises(ConfigError, match=r"^--api-url is empty"):
        resolve_api("  ", env={"PREFECT_API_URL": "http://127.0.0.1:4200/api"})


@pytest.mark.parametrize("flag", ["", " "])
def test_an_empty_api_key_flag_is_refused_not_replaced_by_the_environment(flag: str) -> None:
    env = {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "PREFECT_API_KEY": "pnu_env"}
    with pytest.raises(ConfigError, match=r"^--api-key is empty") as raised:
        resolve_api(None, flag, env=env)
    assert "pnu_env" not in str(raised.value)
    assert resolve_api(None, None, env=env).api_key is not None  # left out: the environment's


@pytest.mark.parametrize(
    ("value", "message"),
    [(0.01, "is below 1 request per minute"), (float("inf"), "is not a number of requests")],
)
def test_request_budget_errors_name_the_flag_it_came_from(value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^--max-requests-per-minute '{value}' {message}"):
        resolve_api("http://h/api", env={}, max_requests_per_minute=value)
    with pytest.raises(
        ConfigError, match=rf"^FLOWSYNC_MAX_REQUESTS_PER_MINUTE '{value}' \(from \$"
    ):
        resolve_api("http://h/api", env={"FLOWSYNC_MAX_REQUESTS_PER_MINUTE": str(value)})


@pytest.mark.parametrize("active", ['["a"]', '{ name = "a" }', "5"])
def test_an_active_profile_that_is_no_name_is_one_config_error(
    isolated_env: Path, active: str
) -> None:
    write_profiles(
        isolated_env, f'active = {active}\n[profiles.a]\nPREFECT_API_URL = "http://a/api"\n'
    )
    with pytest.raises(ConfigError, match=r"`active` must be a profile's name, in quotes"):
        resolve_api(env={"PREFECT_HOME": str(isolated_env)})
    # PREFECT_PROFILE chooses the profile: `active` is not read, as the line advises
    chosen = resolve_api(env={"PREFECT_HOME": str(isolated_env), "PREFECT_PROFILE": "a"})
    assert chosen.url == "http://a/api"


@pytest.mark.parametrize(
    ("key", "source"),
    [
        ("pnu_sec\u201dret", "$PREFECT_API_KEY"),
        ("pnu_a\nb", "$PREFECT_API_KEY"),
        ("pnu_\x00", "flag"),
    ],
)
def test_a_key_no_http_header_can_carry_is_refused_without_showing_it(
    key: str, source: str
) -> None:
    env = {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}
    if source == "flag":
        call = lambda: resolve_api(None, key, env=env)  # noqa: E731
        start = "--api-key holds"
    else:
        call = lambda: resolve_api(env={**env, "PREFECT_API_KEY": key})  # noqa: E731
        start = "the API key (from $PREFECT_API_KEY) holds"
    with pytest.raises(ConfigError, match=r"an HTTP header cannot carry") as raised:
        call()
    assert str(raised.value).startswith(start)
    assert "pnu_" not in str(raised.value)


def test_space_or_a_line_break_around_a_key_is_not_part_of_it() -> None:
    env = {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "PREFECT_API_KEY": " pnu_key\n"}
    settings = resolve_api(env=env)
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "pnu_key"


@pytest.mark.parametrize("password", ["pa/ss9w", "pa?ss9w", "pa#ss9w", "12/ss9w"])
@pytest.mark.parametrize("where", ["flag", "env", "profile"])
def test_a_password_with_a_slash_question_mark_or_hash_in_the_url_is_refused_never_shown(
    isolated_env: Path, password: str, where: str
) -> None:
    """``http://admin:pa/ss@host/api``: Python reads the URL's authority only up to the first
    ``/``, ``?`` or ``#``, so the password reads as a port (or the user as the host): the URL
    is refused with one line that says to percent-encode it, and neither the message nor a
    masked display of the URL holds the password (or any part of it past that character)."""
    url = f"http://admin:{password}@127.0.0.1:4200/api"
    secret = password.partition(password[2])[2]  # what follows the / ? or #
    env = {"PREFECT_API_URL": url} if where == "env" else {}
    if where == "profile":
        (isolated_env / "profiles.toml").write_text(
            f'active = "p"\n[profiles.p]\nPREFECT_API_URL = "{url}"\n'
        )
        env = {"PREFECT_HOME": str(isolated_env)}
    with pytest.raises(ConfigError) as raised:
        resolve_api(url if where == "flag" else None, env=env)
    message = str(raised.value)
    assert "percent-encode" in message and "\n" not in message, message
    assert password not in message and secret not in message, message
    assert secret not in mask_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/api?token=qs-secret-9f2",
        "http://127.0.0.1:9/api?api_key=qs-secret-9f2&x=1",
        "http://127.0.0.1:9/api#qs-secret-9f2",
    ],
    ids=["query", "query-two", "fragment"],
)
def test_a_url_with_a_query_or_fragment_is_refused_never_printed_nor_stored(
    tmp_path: Path, url: str
) -> None:
    """A key pasted into the URL's query string (``?token=...``, as some proxies take it):
    Prefect reads credentials from headers only, and httpx would send every request to
    ``/api?token=...flows/filter``. The pull is refused with one line before anything is
    sent or written, and neither that line nor the file holds the query."""
    from tests.helpers import run_cli

    db = tmp_path / "q.duckdb"
    result = run_cli("pull", "--api-url", url, "--db", str(db))
    assert result.exit_code == 2, result.output
    assert "qs-secret-9f2" not in result.output, result.output
    assert "query" in result.stderr or "fragment" in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert not db.exists() or b"qs-secret-9f2" not in db.read_bytes()
    assert "qs-secret-9f2" not in mask_url(url)


@pytest.mark.parametrize("key", ["pnu_hand\x00made9", "pnu_hand\nmade9", "pnu_hand\u201cmade9"])
def test_a_key_built_by_hand_is_checked_as_resolve_api_checks_it_never_shown(
    tmp_path: Path, key: str
) -> None:
    """The library's ``api=ApiSettings(url, api_key=SecretStr(key))`` with a key no HTTP header
    can carry (a NUL, a line break inside it, a pasted curly quote): one
    ``ConfigError`` before anything is sent, as ``resolve_api`` gives, never an error or a
    retry line quoting the header (``Illegal header value b'Bearer pnu_...'``) seven times,
    nor a ``UnicodeEncodeError`` from httpx."""
    import socket

    from pydantic import SecretStr

    import flowsync

    told: list[str] = []
    with socket.socket() as listening:  # connections are made; nothing ever answers
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        url = f"http://127.0.0.1:{listening.getsockname()[1]}/api"
        with pytest.raises(ConfigError, match="an HTTP header cannot carry") as raised:
            api = ApiSettings(url=url, api_key=SecretStr(key))
            flowsync.pull(tmp_path / "k.duckdb", api=api, on_retry=told.append)
    for shown in [str(raised.value), *told]:
        assert "made9" not in shown and "pnu_hand" not in shown, shown


def test_space_or_a_line_break_around_a_key_built_by_hand_is_not_part_of_it() -> None:
    from pydantic import SecretStr

    settings = ApiSettings(url="http://127.0.0.1:4200/api", api_key=SecretStr(" pnu_key\n"))
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "pnu_key"


@pytest.mark.parametrize("char", ["\uff1f", "\uff0f", "\uff03", "\uff20", "\u2100"])
@pytest.mark.parametrize("where", ["flag", "env", "library"])
def test_a_password_with_a_character_that_normalizes_to_a_url_delimiter_is_never_shown(
    tmp_path: Path, char: str, where: str
) -> None:
    """``http://admin:hunter2？zz@host/api`` (a fullwidth ？ typed on a CJK keyboard; ／ ＃ ＠ ℀
    likewise): Python's urlsplit refuses a netloc whose NFKC form holds / ? # @ or :, quoting
    the whole netloc, password included. The URL is refused with one line that holds no part
    of the password: the CLI's error, and the library's ConfigError (str and repr)."""
    import flowsync
    from tests.helpers import run_cli

    password = f"hunter2{char}zz9q"
    url = f"http://admin:{password}@127.0.0.1:9/api"
    db = tmp_path / "n.duckdb"
    if where == "library":
        with pytest.raises(ConfigError) as raised:
            flowsync.pull(db, api=ApiSettings(url=url))
        said = f"{raised.value} {raised.value!r}"
    else:
        env = {"PREFECT_API_URL": url} if where == "env" else None
        flag = ["--api-url", url] if where == "flag" else []
        result = run_cli("pull", "--db", str(db), *flag, env=env)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        said = result.output
    assert "hunter2" not in said and "zz9q" not in said, said
    assert "***@127.0.0.1:9" in said, said  # still says which URL it refuses
    assert not db.exists()


@pytest.mark.parametrize("where", ["auth-string", "url"])
def test_credentials_holding_a_byte_that_is_not_utf8_are_one_line_never_shown(
    tmp_path: Path, where: str
) -> None:
    """An auth string (or a URL's password) set from a shell in another encoding: Python
    reads the byte into os.environ as a lone surrogate, which Basic auth cannot encode. It is
    one line naming the setting (exit 2, no traceback, nothing written), never a
    UnicodeEncodeError whose text (and, from the library, whose repr) quotes the secret."""
    from pydantic import SecretStr

    import flowsync
    from tests.helpers import run_cli

    password = "hunt\udce4r2pw9q"
    url = "http://127.0.0.1:9/api"
    env = {"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": f"admin:{password}"}
    if where == "url":
        url = f"http://admin:{password}@127.0.0.1:9/api"
        env = {"PREFECT_API_URL": url}
    db = tmp_path / "n.duckdb"
    result = run_cli("pull", "--db", str(db), env=env)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "PREFECT_API_AUTH_STRING" in result.stderr or "PREFECT_API_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    with pytest.raises(ConfigError) as raised:
        secret = SecretStr(f"admin:{password}") if where == "auth-string" else None
        flowsync.pull(db, api=ApiSettings(url=url, auth_string=secret))
    assert raised.value.__context__ is None and raised.value.__cause__ is None
    for said in (result.output, str(raised.value), repr(raised.value)):
        assert "hunt" not in said and "r2pw9q" not in said and "\udce4" not in said, said
    assert not db.exists()


CLOUD_PROFILE = (
    'active = "cloud"\n[profiles.cloud]\n'
    'PREFECT_API_URL = "https://api.prefect.cloud/api/accounts/a/workspaces/w"\n'
    'PREFECT_API_KEY = "pnu_profile"\nPREFECT_API_AUTH_STRING = "admin:profilepw"\n'
)


@pytest.mark.parametrize("via", ["flag", "env"])
def test_a_profiles_secret_goes_only_to_the_profiles_own_host(isolated_env: Path, via: str) -> None:
    """A Cloud profile is active and the URL comes from --api-url or PREFECT_API_URL for
    another host (a local server, a mistyped one): the profile's key and auth string were
    given for its own server and are not sent there; a 401 says why. The same host (another
    workspace) still gets the key, and a key given beside the URL is always sent."""
    import httpx

    from flowsync.api import PrefectClient
    from flowsync.errors import AuthError

    write_profiles(isolated_env, CLOUD_PROFILE)
    env = {"PREFECT_HOME": str(isolated_env)}
    other = "http://127.0.0.1:4200/api"
    s = (
        resolve_api(other, env=env)
        if via == "flag"
        else resolve_api(env={**env, "PREFECT_API_URL": other})
    )
    assert (s.api_key, s.auth_string, s.auth_kind) == (None, None, "none")
    assert s.withheld is not None and "profile 'cloud'" in s.withheld
    assert "profilepw" not in repr(s) and "pnu_profile" not in repr(s)
    seen: list[httpx.Headers] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(401, json={"detail": "Unauthorized"})

    with (
        PrefectClient(s, transport=httpx.MockTransport(refuse)) as c,
        pytest.raises(AuthError, match=r"API key and auth string of profile 'cloud'.*not sent"),
    ):
        c.count("flow_runs")
    assert seen and all("authorization" not in h for h in seen)

    same_host = "https://API.prefect.cloud:443/api/accounts/b/workspaces/v"
    s = resolve_api(same_host, env=env)
    assert s.api_key is not None and s.api_key.get_secret_value() == "pnu_profile"
    assert s.withheld is None
    s = resolve_api(env={**env, "PREFECT_API_URL": other, "PREFECT_API_KEY": "pnu_env"})
    assert s.api_key is not None and s.api_key.get_secret_value() == "pnu_env"
    assert s.withheld is None  # the auth string is not used beside a key
    s = resolve_api(other, "pnu_flag", env=env)
    assert s.api_key is not None and s.api_key.get_secret_value() == "pnu_flag"
    # a profile holding a key and no URL names no host it is for: none gets it
    write_profiles(isolated_env, 'active = "k"\n[profiles.k]\nPREFECT_API_KEY = "pnu_profile"\n')
    s = resolve_api(env={**env, "PREFECT_API_URL": other})
    assert s.api_key is None and s.withheld is not None
    assert "profile 'k' (which names no URL of its own)" in s.withheld


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (
            'PREFECT_API_KEY = ["pnu_a", "pnu_b"]',
            "PREFECT_API_KEY in profile 'p' .* is a TOML list",
        ),
        ("PREFECT_API_KEY = true", "PREFECT_API_KEY in profile 'p' .* is a TOML bool, not text"),
        ("PREFECT_API_SSL_CERT_FILE = 5", "is a TOML int, not text in quotes"),
        ("PREFECT_API_TLS_INSECURE_SKIP_VERIFY = [true]", "is a TOML list, not a single value"),
        (
            'PREFECT_API_TLS_INSECURE_SKIP_VERIFY = "ture"',
            "PREFECT_API_TLS_INSECURE_SKIP_VERIFY .* is 'ture', neither true nor false",
        ),
    ],
)
def test_a_profile_setting_of_the_wrong_kind_is_one_config_error(
    isolated_env: Path, line: str, says: str
) -> None:
    """A list or a boolean where a key belongs was sent as the key "['pnu_a', 'pnu_b']" (a
    401 that named no cause); "ture" for skipping TLS checks was read as false, unsaid.
    Each is one ConfigError naming the setting and the profile, never the value of a key."""
    write_profiles(
        isolated_env, f'active = "p"\n[profiles.p]\nPREFECT_API_URL = "http://h/api"\n{line}\n'
    )
    with pytest.raises(ConfigError, match=says) as e:
        resolve_api(env={"PREFECT_HOME": str(isolated_env)})
    assert "pnu_a" not in str(e.value)
    write_profiles(
        isolated_env,
        'active = "p"\n[profiles.p]\nPREFECT_API_URL = "http://h/api"\n'
        "PREFECT_API_TLS_INSECURE_SKIP_VERIFY = true\nFLOWSYNC_MAX_REQUESTS_PER_MINUTE = 600\n",
    )
    s = resolve_api(env={"PREFECT_HOME": str(isolated_env)})  # TOML's own bool and number
    assert s.verify is False and s.max_requests_per_minute == 600
    for word, skips in (("1.0", True), ("0.0", False)):  # a TOML float, as pydantic reads it
        write_profiles(
            isolated_env,
            'active = "p"\n[profiles.p]\nPREFECT_API_URL = "http://h/api"\n'
            f"PREFECT_API_TLS_INSECURE_SKIP_VERIFY = {word}\n",
        )
        assert (resolve_api(env={"PREFECT_HOME": str(isolated_env)}).verify is False) is skips


def test_the_request_timeout_is_prefects_setting_from_env_or_profile(isolated_env: Path) -> None:
    """A server that answers /health but hangs on reads held a pull ~7 minutes (60 s a try,
    7 tries) with no way to shorten it: ``PREFECT_API_REQUEST_TIMEOUT``, as Prefect's own
    client reads it (environment, then the active profile), bounds each request."""
    import socket
    import threading
    import time

    from flowsync.api import PrefectClient, RetryPolicy
    from flowsync.errors import ApiError

    write_profiles(
        isolated_env,
        'active = "p"\n[profiles.p]\nPREFECT_API_URL = "http://h/api"\n'
        "PREFECT_API_REQUEST_TIMEOUT = 5\n",
    )
    env = {"PREFECT_HOME": str(isolated_env)}
    assert resolve_api(env=env).request_timeout == 5
    assert resolve_api(env={**env, "PREFECT_API_REQUEST_TIMEOUT": "0.5"}).request_timeout == 0.5
    assert resolve_api("http://h/api", env={}).request_timeout is None
    assert resolve_api(env={**env, "PREFECT_API_REQUEST_TIMEOUT": "7200"}).request_timeout == 7200
    for bad in ("slow", "0", "-1", "nan", "inf"):
        with pytest.raises(
            ConfigError, match=r"PREFECT_API_REQUEST_TIMEOUT .* not a number of seconds"
        ):
            resolve_api(env={**env, "PREFECT_API_REQUEST_TIMEOUT": bad})
    with pytest.raises(ConfigError, match="request_timeout"):
        ApiSettings(url="http://h/api", request_timeout=-3)

    # a server that takes the connection and never answers
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    settings = resolve_api(url, env={"PREFECT_API_REQUEST_TIMEOUT": "0.3"})
    began = time.monotonic()
    try:
        with (
            PrefectClient(settings, retry=RetryPolicy(attempts=2, base_delay=0.01)) as client,
            pytest.raises(ApiError, match=r"timed out|Timeout"),
        ):
            client.count("flows")
    finally:
        stop.set()
        for conn in held:
            conn.close()
        listener.close()
    assert time.monotonic() - began < 5  # two tries of 0.3 s, not 60 s
