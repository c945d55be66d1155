"""The request budget: paced before the server says 429, shared by every thread of a client.

The bucket runs on a fake clock (no sleeps, no timing assertions): what is
checked is the schedule it hands out. One pull against a real server checks
the option reaches the client and the summary.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from flowsync.api import PrefectClient, RequestBudget
from flowsync.config import resolve_api
from flowsync.errors import ConfigError
from harness.seed import seed
from harness.server import Server
from tests.helpers import run_cli


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_the_bucket_paces_after_a_burst() -> None:
    clock = FakeClock()
    budget = RequestBudget(
        120, burst=2, clock=clock, sleep=clock.sleep
    )  # 2 at once, then 1 per 0.5 s
    waits = [budget.acquire() for _ in range(5)]
    assert waits == [0.0, 0.0, 0.5, 1.0, 1.5]
    clock.now = 10.0  # a quiet spell refills the burst, no more
    assert [budget.acquire() for _ in range(3)] == [0.0, 0.0, 0.5]
    stats = budget.stats()
    assert (stats.requests, stats.waits, stats.waited_seconds) == (8, 4, 3.5)


def test_concurrent_threads_share_one_schedule() -> None:
    clock = FakeClock()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)  # one a second, burst 1
    start = threading.Barrier(16)
    waits: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        start.wait()
        for _ in range(4):
            w = budget.acquire()
            with lock:
                waits.append(w)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 64 requests, each its own second: never two in the same slot, whichever thread sent it.
    assert sorted(waits) == [float(i) for i in range(64)]


def test_by_default_requests_are_evenly_spaced() -> None:
    clock = FakeClock()
    budget = RequestBudget(600, clock=clock, sleep=clock.sleep)  # 10/s: one per 0.1 s, no burst
    waits = [budget.acquire() for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_a_slot_taken_without_waiting_is_waited_for_by_the_next_request() -> None:
    """A call that changes runs goes right after its re-read (``wait=False``); the rate holds."""
    clock = FakeClock()
    budget = RequestBudget(60, clock=clock, sleep=clock.sleep)  # one a second
    assert budget.acquire() == 0.0 and not budget.due_now()  # the re-read
    assert budget.acquire(wait=False) == 0.0  # its call, at once
    assert clock.slept == [] and not budget.due_now()
    assert budget.acquire() == 2.0  # the next re-read waits for both slots
    clock.now = 3.0
    assert budget.due_now()
    assert budget.stats().requests == 3


def test_a_budget_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError):
        RequestBudget(0)


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), -float("inf")])
def test_a_budget_of_nan_or_infinity_is_refused_not_silently_no_pacing(rate: float) -> None:
    """``RequestBudget(nan)`` passed ``nan <= 0`` (False): its interval NaN, every request
    went at once, the budget unheeded without a word."""
    with pytest.raises(ValueError, match="positive"):
        RequestBudget(rate)


def test_the_client_takes_a_slot_for_every_request_and_says_so() -> None:
    sleeps: list[float] = []
    notices: list[str] = []
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(200, json=3)

    settings = resolve_api("http://127.0.0.1:9/api", env={}, max_requests_per_minute=30)
    with PrefectClient(
        settings,
        transport=httpx.MockTransport(handler),
        sleep=sleeps.append,
        on_retry=notices.append,
    ) as c:
        assert c.budget is not None
        for _ in range(3):
            c.count("flow_runs")
    assert len(sent) == 3
    assert len(sleeps) == 2 and all(s > 0 for s in sleeps)  # the 2nd and 3rd waited for their slot
    assert len(notices) == 1  # at most one notice per 30 s
    assert "request budget (30/min), not the server, is the limit" in notices[0]


def test_the_budget_comes_from_flag_env_or_profile(isolated_env: Path) -> None:
    (isolated_env / "profiles.toml").write_text(
        'active = "cloud"\n[profiles.cloud]\nPREFECT_API_URL = "http://h/api"\n'
        "FLOWSYNC_MAX_REQUESTS_PER_MINUTE = 250\n"
    )
    env = {"PREFECT_HOME": str(isolated_env)}
    assert resolve_api(env=env).max_requests_per_minute == 250
    env_set = {**env, "FLOWSYNC_MAX_REQUESTS_PER_MINUTE": "120"}
    assert resolve_api(env=env_set).max_requests_per_minute == 120
    assert resolve_api(env=env_set, max_requests_per_minute=60).max_requests_per_minute == 60
    assert resolve_api(env=env_set, max_requests_per_minute=0).max_requests_per_minute is None
    assert resolve_api("http://h/api", env={}).max_requests_per_minute is None
    for bad in ("fast", "-5", "0.5", "inf"):
        with pytest.raises(ConfigError, match="FLOWSYNC_MAX_REQUESTS_PER_MINUTE"):
            resolve_api(env={**env, "FLOWSYNC_MAX_REQUESTS_PER_MINUTE": bad})


def test_pull_under_a_budget(
    fresh_server: Server, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(fresh_server.url, runs=30, flows=1, deployments_per_flow=1, seed_value=2)
    monkeypatch.setenv("FLOWSYNC_MAX_REQUESTS_PER_MINUTE", "6000")
    result = run_cli("pull", "--api-url", fresh_server.url, "--db", str(db_path), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["budget"]["max_requests_per_minute"] == 6000
    assert summary["budget"]["requests"] == summary["requests"]
    text = run_cli(
        "pull", "--api-url", fresh_server.url, "--db", str(db_path),
        "--max-requests-per-minute", "3000",
    )  # fmt: skip
    assert text.exit_code == 0, text.output
    assert "budget 3000/min" in text.stderr


def test_plan_refresh_reads_under_the_budget_it_is_given(
    fresh_server: Server, db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`plan --refresh` re-reads every run the rules select (a request per 200; on Prefect
    Cloud, from the quota the production workers share): `--max-requests-per-minute` paces
    those requests as it paces pull's and apply's, and says when the budget, not the server,
    is the limit. plan had no such option (only the environment's and the profile's budget
    reached it), and said nothing of a budget's waits or a request's retries."""
    monkeypatch.delenv("FLOWSYNC_MAX_REQUESTS_PER_MINUTE", raising=False)
    seed(fresh_server.url, runs=30, flows=1, deployments_per_flow=1, seed_value=2)
    pulled = run_cli("pull", "--api-url", fresh_server.url, "--db", str(db_path), "--quiet")
    assert pulled.exit_code == 0, pulled.output
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nrules:\n  - name: all\n    action: delete\n    sql: SELECT id FROM flow_runs\n"
    )
    made: list[PrefectClient] = []

    def recording(settings: object, **kw: object) -> PrefectClient:
        made.append(PrefectClient(settings, **kw))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr("flowsync.api.PrefectClient", recording)
    result = run_cli(
        "plan", str(policy), "--db", str(db_path), "--refresh", "--api-url", fresh_server.url,
        "--max-requests-per-minute", "60",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "30 selected runs re-read from the server just now" in result.stdout
    [client] = made
    assert client.budget is not None
    stats = client.budget.stats()
    assert stats.per_minute == 60
    assert stats.requests >= 2 and stats.waits >= 1  # every request took its slot, paced
    assert "the request budget (60/min), not the server, is the limit" in result.stderr
