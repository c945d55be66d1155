"""The test tiers: a test's fixtures say whether it starts a server, and the fast lane
(``scripts/check --fast``, ``-m "not server and not slow"``) cannot start one by accident."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import harness
from harness.postgres import postgres_cluster
from harness.server import prefect_server

ROOT = Path(__file__).resolve().parent.parent
COUNTED = ("flows", "deployments", "flow_runs", "task_runs", "work_pools", "variables")


def test_a_test_without_a_server_fixture_is_in_the_fast_lane(
    request: pytest.FixtureRequest,
) -> None:
    assert request.node.get_closest_marker("server") is None
    assert harness.servers_allowed is False


def test_a_server_fixture_marks_its_test(start_server: Any, request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("server") is not None
    assert harness.servers_allowed is True


def test_the_harness_refuses_a_server_to_a_fast_test(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not marked `server`"), prefect_server(home=tmp_path):
        pass
    with pytest.raises(RuntimeError, match="not marked `server`"), postgres_cluster(tmp_path):
        pass
    assert not (tmp_path / "server.log").exists()  # refused before anything started


def test_the_marker_follows_fixtures_through_other_fixtures() -> None:
    """A module fixture that starts a server marks every test using it (test_apply_recheck's
    ``server``); a test taking only ``tmp_path`` stays fast."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-m",
            "server",
            "tests/test_tiers.py",
            "tests/test_identity.py",
            "tests/test_apply_recheck.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    selected = {line.split("::")[1] for line in out.splitlines() if "::" in line}
    assert "test_a_server_fixture_marks_its_test" in selected
    assert "test_same_server_by_another_name_is_followed_and_another_server_refused" in selected
    assert "test_runs_the_rule_no_longer_selects_are_left_alone" in selected
    assert "test_cloud_workspaces_are_bound_by_their_ids" not in selected
    assert "test_the_harness_refuses_a_server_to_a_fast_test" not in selected


def test_a_server_from_the_template_is_as_empty_and_prepared_as_one_started_cold(
    start_server: Any, tmp_path: Path
) -> None:
    """A fresh SQLite server starts from a copy of a migrated database with migrations and
    block registration off (``harness.server.sqlite_template``): it must hold what a cold
    start's server holds (no flows, deployments, runs or events; the same block types and
    schemas) and still be a server of its own (its own file, its own flow ids)."""

    def holdings(url: str) -> dict[str, Any]:
        with httpx.Client(base_url=url + "/", timeout=60) as c:
            counts = {k: c.post(f"{k}/count", json={}).json() for k in COUNTED}
            events = c.post("events/filter", json={"limit": 1}).json()["total"]
            blocks = sorted(b["slug"] for b in c.post("block_types/filter", json={}).json())
            schemas = sorted(s["checksum"] for s in c.post("block_schemas/filter", json={}).json())
        return {**counts, "events": events, "block_types": blocks, "block_schemas": schemas}

    with start_server(home=tmp_path / "cold", template=False) as cold:
        expected = holdings(cold.url)
    with (
        start_server(home=tmp_path / "warm") as warm,
        start_server(home=tmp_path / "other") as other,
    ):
        assert (tmp_path / "warm" / "prefect.db").exists()
        assert holdings(warm.url) == holdings(other.url) == expected
        assert expected["block_types"] and expected["flows"] == 0 and expected["events"] == 0
        flow = httpx.post(f"{warm.url}/flows/", json={"name": "only-here"}, timeout=60).json()
        assert httpx.get(f"{other.url}/flows/{flow['id']}", timeout=60).status_code == 404


FRESH_TURNS: list[int] = []


@pytest.mark.xdist_group("fresh-spares")  # both turns in one process: its spare is the other's
@pytest.mark.parametrize("turn", [1, 2])
def test_each_fresh_server_is_new_and_empty_and_the_next_starts_meanwhile(
    fresh_server: Any, fresh_servers: Any, turn: int
) -> None:
    """``fresh_server`` launches the next such test's server while this one runs (a spare);
    each is still a new, empty server."""
    with httpx.Client(base_url=fresh_server.url + "/", timeout=60) as c:
        assert c.post("flows/count", json={}).json() == 0
        assert c.post("flows/", json={"name": f"turn-{turn}"}).status_code in (200, 201)
    FRESH_TURNS.append(turn)
    if len(FRESH_TURNS) == 1:  # whichever runs first: the other's server is already launched
        assert "sqlite" in fresh_servers.spares
