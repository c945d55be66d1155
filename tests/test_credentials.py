"""The credentials flowsync sends (an auth string, a password in the API URL) against a real
server that demands them (Prefect's ``PREFECT_SERVER_API_AUTH_STRING``): every command, on
success and on failure, neither prints nor stores them, nor does a pull whose answers (a
proxy's, through a transport in front of the server) quote the Authorization header."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydantic import SecretStr

from flowsync.api import PrefectClient, RetryPolicy
from flowsync.config import ApiSettings
from flowsync.errors import ApiError
from flowsync.store import Store
from flowsync.sync import pull
from harness.seed import new_deployment, runs_in_state
from harness.server import Server
from tests.apply_cases import policy_file, tagged
from tests.helpers import forwarding, run_cli

PASSWORD = "S3cr-Pw_q7Zx9k"
AUTH = f"admin:{PASSWORD}"


def forms(auth: str = AUTH) -> list[str]:
    """Every form of the credentials that could leak: the password, the auth string, the
    Basic token (without its ``=`` padding: a percent-encoded echo holds that much of it)."""
    return [auth.partition(":")[2], auth, base64.b64encode(auth.encode()).decode().rstrip("=")]


def with_password(url: str, auth: str = AUTH) -> str:
    return url.replace("http://", f"http://{auth}@", 1)


@pytest.fixture(scope="module")
def guarded(
    start_server: Callable[..., AbstractContextManager[Server]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """A server that refuses every request (but GET /health) without the auth string."""
    home = tmp_path_factory.mktemp("guarded") / "prefect"
    with start_server(home=home, extra_env={"PREFECT_SERVER_API_AUTH_STRING": AUTH}) as server:
        yield server


def seeded(server: Server, tag: str) -> list[str]:
    dep = new_deployment(with_password(server.url), f"cred-{uuid.uuid4().hex[:8]}")
    return runs_in_state(with_password(server.url), dep, 3, "FAILED", tag, timedelta(days=1))


def unseen(outputs: list[str], folder: Path, auth: str = AUTH) -> None:
    for text in outputs:
        for form in forms(auth):
            assert form not in text, text
    for path in folder.rglob("*"):
        if path.is_file():
            body = path.read_bytes()
            for form in forms(auth):
                assert form.encode() not in body, f"{form} in {path}"


@pytest.mark.parametrize("how", ["auth-string", "url-password"])
def test_every_command_against_a_server_demanding_basic_auth_never_shows_or_stores_it(
    guarded: Server, tmp_path: Path, how: str
) -> None:
    """pull (text and --json, --verify), status, sql, report --html, export, policy check,
    plan --refresh and apply, each with the credentials from PREFECT_API_AUTH_STRING or in
    the URL (http://admin:password@host/api): their output, the DuckDB file, its snapshots,
    the export and the page hold neither the password, the auth string nor its Basic token;
    nor does a pull with a wrong password (401) or to a closed port."""
    tag = f"cred{uuid.uuid4().hex[:6]}"
    ids = seeded(guarded, tag)
    if how == "auth-string":
        env = {"PREFECT_API_URL": guarded.url, "PREFECT_API_AUTH_STRING": AUTH}
        wrong = {**env, "PREFECT_API_AUTH_STRING": f"admin:x{PASSWORD}"}
    else:
        env = {"PREFECT_API_URL": with_password(guarded.url)}
        wrong = {"PREFECT_API_URL": with_password(guarded.url, f"admin:x{PASSWORD}")}
    closed = with_password("http://127.0.0.1:9/api")
    db, out = str(tmp_path / "runs.duckdb"), tmp_path / "out"
    out.mkdir()
    policy = policy_file(tmp_path, [{"name": "r", "action": "delete", "sql": tagged(tag)}])
    said: list[str] = []

    def cli(code: int, *args: str, on: dict[str, str] | None = None) -> None:
        result = run_cli(*args, env=on or env)
        said.append(result.stdout + result.stderr)
        assert result.exit_code == code, said[-1]

    cli(0, "pull", "--db", db)
    cli(0, "pull", "--db", db, "--json", "--verify")
    cli(0, "status", "--db", db, "--json")
    cli(0, "status", "--db", db)
    cli(0, "sql", "SELECT * FROM sync_runs, _flowsync_file", "--db", db, "-f", "json")
    cli(0, "report", "health", "--db", db, "--html", str(out / "health.html"))
    cli(0, "export", str(out / "export"), "--db", db, "--json")
    cli(0, "policy", "check", str(policy), "--db", db)
    cli(0, "plan", str(policy), "--db", db, "--refresh", "--json")
    cli(0, "apply", str(policy), "--db", db, "--yes", "--json")
    cli(0, "sql", "SELECT * FROM policy_actions", "--db", db, "-f", "json")
    assert sum(f'"{run}"' in said[-1] for run in ids) == 3, said[-1]  # each deleted, audited
    cli(4, "pull", "--db", db, on=wrong)  # 401
    cli(3, "pull", "--db", str(tmp_path / "closed.duckdb"), "--api-url", closed)
    assert "***@" in said[-1] if how == "url-password" else True
    unseen(said, tmp_path)
    unseen(said, tmp_path, f"admin:x{PASSWORD}")


def test_a_first_pull_with_credentials_the_server_refuses_leaves_no_file(
    guarded: Server, tmp_path: Path
) -> None:
    """Prefect answers GET /health without the auth string it demands elsewhere: a first pull
    with a wrong one got past the health check and left a new file holding a failed pull.
    A read that needs the credentials refuses it (401, exit 4) before the file is made."""
    folder = tmp_path / "data"
    folder.mkdir()
    env = {"PREFECT_API_URL": guarded.url, "PREFECT_API_AUTH_STRING": f"admin:x{PASSWORD}"}
    result = run_cli("pull", "--db", str(folder / "runs.duckdb"), env=env)
    assert result.exit_code == 4, result.output
    assert list(folder.iterdir()) == []


def echoing(
    status: int, header: str = "", encode: Callable[[str], str] = str
) -> Callable[[httpx.Request, int], Any]:
    """A proxy in front of the server answering every flow_runs/filter ``status`` with a
    page quoting the request's Authorization header (in ``header`` too, e.g. Location),
    written as ``encode`` writes it."""

    def fault(request: httpx.Request, n: int) -> httpx.Response | None:
        if not request.url.path.endswith("/flow_runs/filter"):
            return None
        said = encode(request.headers["authorization"])
        headers = {header: f"https://proxy.example/login?auth={said}"} if header else {}
        body = f"<html>bad gateway; you sent Authorization: {said}</html>"
        return httpx.Response(status, headers=headers, text=body)

    return fault


def chain(e: BaseException | None) -> Iterator[BaseException]:
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


@pytest.mark.parametrize(
    ("status", "header", "encode"),
    [
        (502, "", str),
        (400, "", str),
        (302, "location", str),
        (302, "location", lambda s: quote(s, safe="")),
    ],
    ids=["502", "400", "302", "302-percent-encoded"],
)
@pytest.mark.parametrize("how", ["auth-string", "url-password"])
def test_a_pull_whose_answers_quote_the_authorization_header_never_shows_or_stores_it(
    guarded: Server,
    tmp_path: Path,
    how: str,
    status: int,
    header: str,
    encode: Callable[[str], str],
) -> None:
    """A proxy quoting the request's Authorization header in its error page (or a redirect's
    Location), as sent or percent-encoded (the token's ``=`` as ``%3D``): the pull fails, and neither the
    error (str, repr, its chained causes), the retry lines nor the file (its sync_runs error
    row) hold the credentials."""
    seeded(guarded, f"cred{uuid.uuid4().hex[:6]}")
    settings = (
        ApiSettings(url=guarded.url, auth_string=SecretStr(AUTH))
        if how == "auth-string"
        else ApiSettings(url=with_password(guarded.url))
    )
    told: list[str] = []
    db = tmp_path / "runs.duckdb"
    with (
        Store.writer(db) as store,
        PrefectClient(
            settings,
            transport=forwarding(echoing(status, header, encode)),
            retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02),
            sleep=lambda s: None,
            on_retry=told.append,
        ) as client,
        pytest.raises(ApiError) as raised,
    ):
        pull(client, store)
    assert told if status == 502 else not told
    said = [text for e in chain(raised.value) for text in (str(e), repr(e))]
    assert "***" in str(raised.value), str(raised.value)
    unseen([*said, *told, repr(settings)], tmp_path)
