"""The scheduling recipes say what a first install needs (fast lane; tests/test_scheduling.py
runs them against a server): the flowsync user is created, the Prefect profile is where
ProtectHome does not hide it, cron finds flowsync where pipx and uv put it and mails failures."""

from __future__ import annotations

import configparser
import importlib.util
import shlex
from pathlib import Path
from typing import Any

from flowsync.errors import ApiError, AuthError, ConfigError, StoreError, StoreLockedError

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy"


def test_systemd_unit_creates_its_user_and_keeps_the_profile_visible() -> None:
    text = (DEPLOY / "flowsync-pull.service").read_text()
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(text)
    service = unit["Service"]
    user = service["User"]
    assert f"useradd --system --home-dir /var/lib/{service['StateDirectory']}" in text
    assert text.split("useradd", 1)[1].split("\n", 1)[0].rstrip().endswith(user)
    env = dict(
        e.split("=", 1) for e in text.splitlines() if e.startswith("Environment=") for e in [e[12:]]
    )
    home = env["PREFECT_HOME"]
    assert service["ProtectHome"] == "true"
    assert home.startswith(f"/var/lib/{service['StateDirectory']}/")  # not under /home or /root


def test_cron_finds_flowsync_where_pipx_puts_it_and_mails_failures() -> None:
    lines = [
        line
        for line in (DEPLOY / "crontab.example").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    path = next(line for line in lines if line.startswith("PATH="))
    assert ".local/bin" in path and "~" not in path and "$" not in path
    [job] = [line for line in lines if line.startswith("*/15")]
    assert " flowsync pull --quiet" in job and "/usr/local/bin/flowsync" not in job
    assert ">>" not in job and "2>&1" not in job  # cron mails what --quiet prints: errors


def _prefect_recipe() -> Any:
    spec = importlib.util.spec_from_file_location("prefect_flow", DEPLOY / "prefect_flow.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Failed:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def result(self) -> None:
        raise self.error


def test_prefect_recipe_retries_only_what_may_pass_and_needs_no_root_directory() -> None:
    recipe = _prefect_recipe()
    assert not recipe.worth_retrying(None, None, _Failed(StoreError("Directory x does not exist")))
    assert not recipe.worth_retrying(None, None, _Failed(ConfigError("no API URL")))
    assert recipe.worth_retrying(None, None, _Failed(StoreLockedError("held by a pull")))
    assert recipe.worth_retrying(None, None, _Failed(ApiError("503 after retries")))
    assert recipe.pull_history.retry_condition_fn is recipe.worth_retrying
    default = Path(recipe.DEFAULT_DB)
    assert default.is_relative_to(Path.home()) and not str(default).startswith("/var/lib")
    assert (
        "Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)"
        in (DEPLOY / "prefect_flow.py").read_text()
    )


def test_prefect_recipe_does_not_retry_a_refused_api_key() -> None:
    """A key the server refuses (401/403, exit 4) is a setting: it fails the run at once with
    its message, as the recipe says, not after two retries a minute apart."""
    recipe = _prefect_recipe()
    assert not recipe.worth_retrying(None, None, _Failed(AuthError("401: the API key was refused")))


def test_duckdb_cli_recipe_says_where_the_cli_comes_from_and_runs_through_flowsync_sql(
    tmp_path: Path,
) -> None:
    from tests.helpers import run_cli
    from tests.policy_db import built_db, run

    text = (DEPLOY.parent / "ecosystem.md").read_text()
    section = text.split("### duckdb CLI", 1)[1].split("\n### ", 1)[0]
    assert "neither flowsync nor its dev setup" in section and "duckdb.org" in section
    sql = shlex.split(section.split("```sh", 1)[1].split("```", 1)[0])[-1]
    db = built_db(tmp_path / "flowsync.duckdb", [run(1), run(2, "FAILED")])
    result = run_cli("sql", sql, "-f", "csv", "--db", str(db))  # the same query, no CLI needed
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "state_type,runs"


def test_readme_cron_line_finds_flowsync_where_pipx_puts_it() -> None:
    """The README's cron block runs under cron's own PATH (/usr/bin:/bin) unless it sets
    one: it names the directory pipx and uv install flowsync into, as crontab.example does."""
    readme = (DEPLOY.parent.parent / "README.md").read_text()
    block = readme.split("```cron\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line and not line.startswith("#")]
    paths = [line for line in lines if line.startswith("PATH=")]
    assert paths and ".local/bin" in paths[0] and "~" not in paths[0] and "$" not in paths[0]
    assert any(" flowsync pull --quiet" in line for line in lines if line.startswith("*/15"))
