"""The test tiers: a test's fixtures say whether it starts a server, and the fast lane
(``scripts/check --fast``, ``-m "not server and not slow"``) cannot start one by accident."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import harness
from harness.postgres import postgres_cluster
from harness.server import prefect_server

ROOT = Path(__file__).resolve().parent.parent


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
