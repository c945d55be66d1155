"""The calls that change data, and what the client knows of its server.

Against real servers, the current pin and an old release without bulk
endpoints (3.4.25, its own virtualenv): ``capabilities()`` reads the version
once; the per-run ``delete_flow_run`` and ``set_flow_run_state`` work on both;
a bulk call to the old server says the server lacks it (not "is this a Prefect
API URL?"). Through a fake transport (faults no server makes on demand): a
call that changes data is sent exactly once, whatever comes back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowsync.api import Capabilities, PrefectClient, RetryPolicy
from flowsync.config import ApiSettings
from flowsync.errors import (
    ApiError,
    AuthError,
    NotFoundError,
    NotSentError,
    ThrottledError,
    UnavailableError,
    UncertainError,
    UnsupportedError,
)
from harness.seed import Seeded, seed
from harness.server import PER_RUN_VERSION, Server, installed_prefect_version
from tests.helpers import wait_for_state_events

OLD = PER_RUN_VERSION
RUN = "6a0e2f4c-3f3a-4b8e-9c1d-2b9f0e1a7c55"


@pytest.fixture(scope="module", params=["current", OLD])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, start_server: Any
) -> Iterator[tuple[Server, Seeded]]:
    version = None if request.param == "current" else str(request.param)
    home = tmp_path_factory.mktemp(f"prefect-writes-{request.param}")
    with start_server(home=home, version=version) as s:
        seeded = seed(s.url, runs=12, flows=1, deployments_per_flow=1, seed_value=5)
        # The server stores the seeding's state events a few seconds later; a write of ours
        # meeting that write on SQLite is answered 503 (once, under load), which a call that
        # changes data may not resend. Start once those writes are done.
        for state_type in ("COMPLETED", "FAILED"):
            wait_for_state_events(
                s.url, [i for i, t in seeded.runs.items() if t == state_type], state_type
            )
        yield s, seeded


def client(url: str, **kwargs: object) -> PrefectClient:
    return PrefectClient(ApiSettings(url=url), **kwargs)  # type: ignore[arg-type]


def run_state(url: str, run_id: str) -> str | None:
    r = httpx.get(f"{url}/flow_runs/{run_id}", timeout=30)
    return None if r.status_code == 404 else str(r.json()["state"]["type"])


def test_capabilities_are_read_once(server: tuple[Server, Seeded]) -> None:
    s, _ = server
    with client(s.url) as c:
        caps = c.capabilities()
        sent = c.requests
        assert c.capabilities() is caps
        assert c.requests == sent == 1
    expected = s.version or installed_prefect_version()
    assert caps.version == expected
    assert caps.bulk is (s.version != OLD)
    assert not caps.cloud


def test_delete_flow_run_and_again(server: tuple[Server, Seeded]) -> None:
    s, seeded = server
    victim = next(i for i, t in seeded.runs.items() if t == "COMPLETED")
    with client(s.url) as c:
        first = c.delete_flow_run(victim)
        second = c.delete_flow_run(victim)
    assert (first.run_id, first.deleted) == (victim, True)
    assert (second.run_id, second.deleted) == (victim, False)  # already gone: no error
    assert run_state(s.url, victim) is None


def test_set_flow_run_state_orchestrated_and_forced(server: tuple[Server, Seeded]) -> None:
    s, seeded = server
    target = next(i for i, t in seeded.runs.items() if t == "FAILED")
    with client(s.url) as c:
        running = c.set_flow_run_state(target, {"type": "RUNNING", "name": "Running"}, force=False)
        # Prefect's rules refuse PENDING for a run already RUNNING unless forced.
        refused = c.set_flow_run_state(target, {"type": "PENDING", "name": "Pending"}, force=False)
        assert run_state(s.url, target) == "RUNNING"
        forced = c.set_flow_run_state(target, {"type": "PENDING", "name": "Pending"}, force=True)
        with pytest.raises(NotFoundError):
            c.set_flow_run_state(RUN, {"type": "CANCELLED", "name": "Cancelled"}, force=True)
    assert running.accepted and running.state is not None and running.state["type"] == "RUNNING"
    assert not refused.accepted and refused.status in ("REJECT", "ABORT", "WAIT")
    assert forced.accepted and run_state(s.url, target) == "PENDING"


def test_bulk_calls_say_when_the_server_lacks_them(server: tuple[Server, Seeded]) -> None:
    s, seeded = server
    if s.version != OLD:
        pytest.skip("the current server has the bulk endpoints")
    run_id = next(iter(seeded.runs))
    with client(s.url) as c:
        with pytest.raises(UnsupportedError) as sent:
            c.bulk_delete([run_id], ["COMPLETED"])  # sent: the client did not know yet
        assert c.capabilities().bulk is False
        before = c.requests
        with pytest.raises(UnsupportedError) as known:
            c.bulk_set_state([run_id], {"type": "CANCELLED"}, force=False, state_types=None)
        assert c.requests == before  # known to be missing: not sent at all
    for e in (sent.value, known.value):
        assert e.version == OLD and e.needs == "3.6.16"
        assert "Is this a Prefect API URL" not in str(e)
    assert f"Prefect {OLD} < 3.6.16" in str(sent.value)
    assert "bulk_delete" in str(sent.value) and "bulk_set_state" in str(known.value)


# -- sent exactly once: faults through a fake transport -------------------------------------------


def gzip_that_is_not() -> httpx.Response:
    """What a proxy that says it compressed a body it did not sends (httpx: DecodingError)."""
    return httpx.Response(
        200,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        stream=httpx.ByteStream(b"[]"),
    )


Answer = httpx.Response | Exception | Callable[[], httpx.Response]


def faulty(answer: Answer) -> tuple[httpx.MockTransport, list[str]]:
    """A transport giving every request ``answer`` (a callable: a new one each time)."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if isinstance(answer, Exception):
            raise answer
        return answer if isinstance(answer, httpx.Response) else answer()

    return httpx.MockTransport(handler), seen


def fake_client(transport: httpx.BaseTransport, sleeps: list[float]) -> PrefectClient:
    return PrefectClient(
        ApiSettings(url="http://127.0.0.1:9/api"),
        transport=transport,
        retry=RetryPolicy(attempts=5, base_delay=0.01),
        sleep=sleeps.append,
    )


@pytest.mark.parametrize("status", [404, 405])
def test_a_server_that_hides_its_version_and_lacks_a_bulk_endpoint_says_which_release_has_it(
    status: int,
) -> None:
    """A proxy hides /admin/version: the server is taken to have the bulk endpoints; when one
    answers 404 (or 405, as 3.0-3.2 do), the error names the release that has it."""
    transport, _ = faulty(httpx.Response(status, json={"detail": "Not Found"}))
    with fake_client(transport, []) as c, pytest.raises(UnsupportedError) as refused:
        c.bulk_delete([RUN], ["COMPLETED"])
    message = str(refused.value)
    assert refused.value.version is None and refused.value.needs == "3.6.16"
    assert "does not say its version" in message and "older than 3.6.16" in message, message
    assert "(HTTP 404/405)" in message and "answered 404, the first" not in message


WRITES = {
    "delete": lambda c: c.delete_flow_run(RUN),
    "set_state": lambda c: c.set_flow_run_state(RUN, {"type": "CANCELLED"}, force=False),
    "bulk_delete": lambda c: c.bulk_delete([RUN], ["COMPLETED"]),
    "bulk_set_state": lambda c: c.bulk_set_state(
        [RUN], {"type": "CANCELLED"}, force=False, state_types=None
    ),
}


@pytest.mark.parametrize("call", ["read", "bulk_delete", "delete"])
def test_a_redirect_is_one_error_naming_where_it_leads(call: str) -> None:
    """A proxy moving http to https answers 301 (a path without /api, 307): not followed, not
    retried seven times as an unreadable body, and no write counted as maybe applied."""
    moved = httpx.Response(
        301, headers={"Location": "https://prefect.example.com/api/flows/filter"}
    )
    transport, seen = faulty(moved)
    sleeps: list[float] = []
    with fake_client(transport, sleeps) as c, pytest.raises(ApiError) as raised:
        if call == "read":
            c.filter_page("flows", {"limit": 1, "offset": 0})
        else:
            WRITES[call](c)
    assert type(raised.value) is ApiError and len(seen) == 1 and sleeps == []
    assert "redirected (301) to https://prefect.example.com/api/flows/filter" in str(raised.value)
    assert "nothing was applied" in str(raised.value)


@pytest.mark.parametrize("call", sorted(WRITES))
@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            httpx.Response(429, headers={"Retry-After": "7"}, json={"detail": "slow"}),
            ThrottledError,
        ),
        (httpx.ConnectError("refused"), NotSentError),
        (httpx.Response(503, text="busy"), UncertainError),
        (httpx.ReadError("reset"), UncertainError),
        (gzip_that_is_not, UncertainError),
    ],
    ids=["429", "never-connected", "503", "dropped", "body-not-gzip"],
)
def test_a_call_that_changes_data_is_sent_once(
    call: str, answer: Answer, error: type[ApiError]
) -> None:
    transport, seen = faulty(answer)
    sleeps: list[float] = []
    with fake_client(transport, sleeps) as c, pytest.raises(error) as raised:
        WRITES[call](c)
    assert len(seen) == 1 and sleeps == []
    if isinstance(raised.value, ThrottledError):
        assert raised.value.retry_after == 7.0
    assert "http://127.0.0.1:9/api" in str(raised.value)


@pytest.mark.parametrize(
    ("answer", "finished"),
    [
        (httpx.Response(500, json={"exception_message": "Internal Server Error"}), True),
        (httpx.Response(503, json={"exception_message": "Service Unavailable"}), True),
        (httpx.Response(504, text="upstream request timeout"), False),
        (httpx.Response(502, text="<html><h1>502 Bad Gateway</h1></html>"), False),
        (httpx.Response(503, json={"message": "no healthy upstream"}), False),
    ],
    ids=["prefect-500", "prefect-503", "gateway-504", "gateway-502", "proxy-503"],
)
def test_a_5xx_means_the_server_finished_only_when_prefect_itself_answered(
    answer: httpx.Response, finished: bool
) -> None:
    """A gateway's 5xx may stand for a call the server behind it is still running: apply
    then reads the runs for the whole settle bound, not once."""
    from flowsync.policy.answers import Lost, from_error

    transport, seen = faulty(answer)
    with fake_client(transport, []) as c, pytest.raises(UncertainError) as raised:
        WRITES["bulk_delete"](c)
    lost = from_error(raised.value)
    assert isinstance(lost, Lost) and lost.finished is finished
    assert len(seen) == 1


def test_a_body_that_does_not_decode_as_it_says_is_retried_then_one_error() -> None:
    """A proxy answering ``Content-Encoding: gzip`` with a body that is not: a read is retried
    as an unreadable body, then fails as a server that did not answer (not httpx's own
    exception, which the CLI would print as a traceback)."""
    transport, seen = faulty(gzip_that_is_not)
    sleeps: list[float] = []
    with fake_client(transport, sleeps) as c, pytest.raises(UnavailableError) as raised:
        c.count("flow_runs")
    assert len(seen) == 5 and len(sleeps) == 4
    assert "DecodingError" in str(raised.value) and "http://127.0.0.1:9/api" in str(raised.value)


def test_reads_still_retry_429() -> None:
    transport, seen = faulty(httpx.Response(429, headers={"Retry-After": "3"}))
    sleeps: list[float] = []
    with fake_client(transport, sleeps) as c, pytest.raises(ApiError):
        c.count("flow_runs")
    assert len(seen) == 5 and sleeps == [3.0] * 4


def test_run_ids_never_become_paths() -> None:
    transport, seen = faulty(httpx.Response(204))
    with fake_client(transport, []) as c, pytest.raises(ValueError):
        c.delete_flow_run("../../admin/database/clear")
    assert seen == []


@pytest.mark.parametrize(
    ("version", "cloud", "bulk"),
    [
        ("3.0.11", False, False),
        ("3.6.15", False, False),
        ("3.6.16", False, True),
        ("3.9.1", False, True),
        ("3.10.0rc1", False, True),
        (None, True, True),  # Prefect Cloud does not say its version; it has the endpoints
        (None, False, True),  # a server hiding /admin: tried, and a 404 says it lacks them
        ("0.8.4", True, True),  # a Cloud version route's own numbering is no Prefect release
    ],
)
def test_capabilities_from_the_version(version: str | None, cloud: bool, bulk: bool) -> None:
    caps = Capabilities.of(version, cloud=cloud)
    assert (caps.bulk, caps.cloud, caps.version) == (bulk, cloud, version)


def test_cloud_capabilities_without_admin_version(tmp_path: Path) -> None:
    url = (
        "https://api.prefect.cloud/api/accounts/0b1f4e2a-6d0c-4f57-9a2e-5c1d3e7f9a10"
        "/workspaces/7c3e9d21-84b6-4f0a-b2d5-1e6f8a9c0d34"
    )
    transport = httpx.MockTransport(lambda r: httpx.Response(404, json={"detail": "Not Found"}))
    with PrefectClient(ApiSettings(url=url), transport=transport) as c:
        caps = c.capabilities()
    assert (caps.version, caps.cloud, caps.bulk) == (None, True, True)
    assert caps.describe() == "Prefect Cloud"


@pytest.mark.parametrize("status", [403, 401])
def test_a_proxy_denying_admin_hides_the_version_but_a_refused_key_stops(status: int) -> None:
    """nginx's ``deny all`` in front of /admin answers 403: the server does not say its
    version (as for a 404), and the reads go on; a 401 there is the credentials refused."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/admin/version"):
            return httpx.Response(status, text="<html>403 Forbidden</html>")
        return httpx.Response(200, json=7)

    with PrefectClient(
        ApiSettings(url="http://127.0.0.1:9/api"), transport=httpx.MockTransport(answer)
    ) as c:
        if status == 401:
            with pytest.raises(AuthError):
                c.capabilities()
            return
        caps = c.capabilities()
        assert (caps.version, caps.bulk, caps.read) == (None, True, True)
        assert c.count("flow_runs") == 7


@pytest.mark.parametrize(
    "credential",
    [
        {"api_key": "pnu_SUPERSECRET123"},
        {"auth_string": 'admin:hunter"2'},
        {"url": "alice:hunter2pw"},  # http://alice:hunter2pw@host/api: Basic auth too
        {"auth_string": "admin:p@ss w/rd+x?>>"},  # its Basic token holds "/" and "="
    ],
    ids=["api-key", "auth-string", "url-userinfo", "auth-string-token-slash"],
)
@pytest.mark.parametrize("status", [502, 400])
@pytest.mark.parametrize("written", ["as-sent", "percent-encoded", "json-escaped-slash"])
def test_an_answer_that_echoes_the_credentials_never_shows_them(
    credential: dict[str, str], status: int, written: str
) -> None:
    """A proxy's error body quoting the request's Authorization header, as sent,
    percent-encoded (a login redirect's query) or JSON with ``/`` escaped: the retry lines and
    the errors (which the pull also writes to ``sync_runs``) hold *** in its place, and its
    terminal controls escaped."""
    import base64
    import json
    import re
    from urllib.parse import quote

    from pydantic import SecretStr

    secret = next(iter(credential.values()))
    token = base64.b64encode(secret.encode()).decode()
    # the token up to its first character an encoding rewrites: what any echo of it holds
    forms = {secret, json.dumps(secret)[1:-1], token, re.split(r"[+/=]", token)[0]}
    if "url" in credential:
        forms.add(secret.partition(":")[2])  # nor the password alone

    def echo(request: httpx.Request) -> httpx.Response:
        said = request.headers["authorization"]
        if written == "percent-encoded":
            said = quote(said, safe="")
        body = json.dumps({"detail": f"upstream said: {said} \x1b[2J"})
        if written == "json-escaped-slash":
            body = body.replace("/", "\\/")  # as PHP's json_encode writes it
        return httpx.Response(status, text=body, headers={"content-type": "application/json"})

    told: list[str] = []
    settings = ApiSettings(
        url=f"http://{credential['url']}@127.0.0.1:9/api"
        if "url" in credential
        else "http://127.0.0.1:9/api",
        api_key=SecretStr(credential["api_key"]) if "api_key" in credential else None,
        auth_string=SecretStr(credential["auth_string"]) if "auth_string" in credential else None,
    )
    retry = RetryPolicy(attempts=3, base_delay=0.01)
    with PrefectClient(
        settings,
        transport=httpx.MockTransport(echo),
        retry=retry,
        sleep=lambda s: None,
        on_retry=told.append,
    ) as c:
        with pytest.raises(ApiError) as read:
            c.count("flow_runs")
        with pytest.raises(ApiError) as write:
            WRITES["bulk_delete"](c)
    messages = [str(read.value), str(write.value), *told]
    assert all("***" in m for m in messages[:2]), messages
    for message in messages:
        assert not any(form in message for form in forms), message
        assert "\x1b" not in message, message  # nor a terminal control (it clears the screen)


def test_a_version_answer_that_echoes_the_credentials_is_kept_without_them() -> None:
    """A proxy answering ``GET /admin/version`` with the request's Authorization header in
    the text: the version the pull stores (``sync_state``, ``sync_runs``) and ``status``
    prints holds *** in its place, as every other text a server answers."""
    from pydantic import SecretStr

    def echo(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/admin/version"):
            return httpx.Response(200, json="3.8.8+" + request.headers["authorization"])
        return httpx.Response(200, json=7)

    settings = ApiSettings(url="http://127.0.0.1:9/api", api_key=SecretStr("pnu_KEYSECRET_9f8e7d"))
    with PrefectClient(settings, transport=httpx.MockTransport(echo)) as c:
        caps = c.capabilities()
    assert caps.version is not None and "pnu_KEYSECRET" not in caps.version
    assert caps.version.startswith("3.8.8+") and "***" in caps.version
    assert "pnu_KEYSECRET" not in caps.describe()


def test_a_token_given_as_the_urls_user_name_alone_is_never_shown() -> None:
    """https://TOKEN@host/api (no password: how some proxies take a token): a proxy's
    answer naming the user it refused shows *** for it, as for a password."""
    import base64

    token = "ghp_Zx81TOKENonly4242"

    def refuse(request: httpx.Request) -> httpx.Response:
        user = base64.b64decode(request.headers["authorization"].split()[1]).decode()
        return httpx.Response(400, json={"detail": f"user {user.rstrip(':')!r} is not allowed"})

    told: list[str] = []
    settings = ApiSettings(url=f"http://{token}@127.0.0.1:9/api")
    with (
        PrefectClient(
            settings,
            transport=httpx.MockTransport(refuse),
            retry=RetryPolicy(attempts=2, base_delay=0.01),
            sleep=lambda s: None,
            on_retry=told.append,
        ) as c,
        pytest.raises(ApiError) as read,
    ):
        c.count("flow_runs")
    for message in (str(read.value), *told):
        assert token not in message and "***" in message, message


@pytest.mark.parametrize(
    ("retry_after", "waits"),
    [
        ("nan", None),  # not a number of seconds: the backoff applies
        ("inf", None),
        ("-5", None),  # RFC 9110: delay-seconds are digits; a negative one says nothing
        ("Wed, 21 Oct 2015 07:28:00 -0000", 0.0),  # RFC 5322's "no zone": GMT, and past
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 120.0),  # held to the retry policy's bound
        ("1e300", 120.0),
    ],
)
def test_a_retry_after_that_is_no_wait_or_a_huge_one_is_bounded_never_a_crash(
    retry_after: str, waits: float | None
) -> None:
    """A 429's Retry-After as a server or proxy may write it: a read waits as it says, at most
    the retry policy's bound, or backs off when it says nothing usable (it never sleeps NaN,
    which time.sleep refuses, nor resends at once); a call that changes data raises
    ThrottledError with a finite, bounded wait or None, and one short line."""
    answer = httpx.Response(429, headers={"Retry-After": retry_after}, json={"detail": "slow"})
    transport, _seen = faulty(answer)
    sleeps: list[float] = []
    with fake_client(transport, sleeps) as c:
        with pytest.raises(ApiError) as read:
            c.count("flow_runs")
        with pytest.raises(ThrottledError) as write:
            WRITES["bulk_delete"](c)
    assert type(read.value) is UnavailableError and len(sleeps) == 4
    if waits is None:
        assert all(0 < s <= 30.0 for s in sleeps), sleeps  # the backoff: bounded, not 0
    else:
        assert sleeps == [waits] * 4
    assert write.value.retry_after == waits
    assert len(str(write.value)) < 200 and "nan" not in str(write.value)


def test_a_read_the_server_keeps_throttling_ends_saying_so_and_how_to_pace_it() -> None:
    """A read answered 429 on every attempt (a Cloud account's limit, shared with its workers)
    ends in one line that says the server kept asking to wait and names the request budget,
    not "check that the server is up and the URL is right" (it is, and it is)."""
    answer = httpx.Response(429, headers={"Retry-After": "1"}, json={"detail": "slow down"})
    transport, _seen = faulty(answer)
    with fake_client(transport, []) as c, pytest.raises(ApiError) as read:
        c.count("flow_runs")
    message = str(read.value)
    assert "HTTP 429" in message and "kept asking to wait" in message, message
    assert "--max-requests-per-minute" in message and "server is up" not in message, message


def test_a_threads_waits_go_through_what_it_sets_there_and_only_there() -> None:
    """``waits_through``: every wait the client makes this thread sleep (a read's retry after
    a 429, the request budget's, ``pause_for``) goes through the function set, which takes
    the seconds; another thread's waits, and this one's after the block, do not."""
    transport, _ = faulty(httpx.Response(429, headers={"Retry-After": "3"}))
    sleeps: list[float] = []
    through: list[float] = []

    def wait(seconds: float, sleep: Callable[[float], None]) -> None:
        through.append(seconds)
        sleep(seconds)

    client = PrefectClient(
        ApiSettings(url="http://127.0.0.1:9/api", max_requests_per_minute=6),
        transport=transport,
        retry=RetryPolicy(attempts=2, base_delay=0.01),
        sleep=sleeps.append,
    )
    with client, client.waits_through(wait):
        client.pause_for(2.0)
        with pytest.raises(ApiError):
            client.count("flow_runs")  # a 429 (Retry-After 3), then the budget's slot
        elsewhere = threading.Thread(target=client.pause_for, args=(7.0,))
        elsewhere.start()
        elsewhere.join()
    client.pause_for(5.0)
    assert through[0] == 2.0 and 3.0 in through and 7.0 not in through and 5.0 not in through
    assert len(through) >= 3  # the budget's wait for the retry's slot went through it too
    assert sorted(sleeps) == sorted([*through, 7.0, 5.0])
