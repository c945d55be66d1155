"""Scheduled pulls as documented in docs/deploy: cron, systemd, and a Prefect flow.

Each example file is run (or verified) as written, with only its paths
substituted: the cron line against the test server, the systemd units through
``systemd-analyze verify``, the Prefect flow in a subprocess against a server
of its own (it writes: a flow run, a deployment, and the policy's deletes).
"""

from __future__ import annotations

import configparser
import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from harness.seed import seed
from harness.server import Server
from tests.helpers import SeededServer, scalar

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy"
FLOWSYNC = Path(sys.executable).with_name("flowsync")


def cron_command(state_dir: Path, wait: str | None = None) -> str:
    """The crontab.example job's command, with its paths pointed at this test."""
    jobs = [
        line
        for line in (DEPLOY / "crontab.example").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#") and "=" not in line.split()[0]
    ]
    assert len(jobs) == 1, jobs
    fields = jobs[0].split(None, 5)
    assert fields[:5] == ["*/15", "*", "*", "*", "*"]
    command = (
        fields[5]
        .replace("/usr/local/bin/flowsync", str(FLOWSYNC))
        .replace("/var/lib/flowsync", str(state_dir))
    )
    if wait is not None:
        command = command.replace("--wait 120", f"--wait {wait}")
    return command


def cron_path() -> str:
    """The crontab's PATH line, its ~/.local/bin (where pipx and uv put flowsync) being
    where this test's flowsync is."""
    [line] = [
        line
        for line in (DEPLOY / "crontab.example").read_text().splitlines()
        if line.startswith("PATH=")
    ]
    return line.removeprefix("PATH=").replace("/home/me/.local/bin", str(FLOWSYNC.parent))


def run_cron(command: str, api_url: str, home: Path) -> subprocess.CompletedProcess[str]:
    # What cron gives a job: a bare environment (plus the crontab's own settings), /bin/sh,
    # no terminal. Whatever the job prints is what cron mails.
    env = {
        "PATH": cron_path(),
        "HOME": str(home),
        "SHELL": "/bin/sh",
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home / ".prefect"),
    }
    return subprocess.run(
        ["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=300
    )


def hold_db(db: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process with the DuckDB file open for writing, as a notebook or an apply would."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
            "print('ready', flush=True); time.sleep(float(sys.argv[2]))",
            str(db),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture(scope="module")
def cron_state(prefect: SeededServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/var/lib/flowsync after the first scheduled pull."""
    state = tmp_path_factory.mktemp("var-lib-flowsync")
    result = run_cron(cron_command(state), prefect.url, state)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout == result.stderr == ""  # --quiet: cron mails nothing
    return state


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock (util-linux) is not installed")
def test_cron_line_runs_quietly_as_written(prefect: SeededServer, cron_state: Path) -> None:
    db = cron_state / "flowsync.duckdb"
    assert scalar(db, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NULL") == prefect.count()
    again = run_cron(cron_command(cron_state), prefect.url, cron_state)
    assert again.returncode == 0
    assert again.stdout == again.stderr == ""  # no mail for a pull that worked


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock (util-linux) is not installed")
def test_cron_overlaps_skip_wait_or_fail_with_documented_codes(
    prefect: SeededServer, cron_state: Path
) -> None:
    # The previous cron pull is still running: this one is skipped, exit 75.
    with (cron_state / "pull.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # what flock(1) in the running job holds
        skipped = run_cron(cron_command(cron_state), prefect.url, cron_state)
    assert skipped.returncode == 75

    db = cron_state / "flowsync.duckdb"
    # Another process holds the file briefly: --wait rides it out.
    holder = hold_db(db, 2)
    waited = run_cron(cron_command(cron_state), prefect.url, cron_state)
    holder.wait()
    assert waited.returncode == 0, waited.stderr

    # Held for longer than --wait: exit 6 and one line in the log.
    holder = hold_db(db, 30)
    try:
        refused = run_cron(cron_command(cron_state, wait="1"), prefect.url, cron_state)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 6
    mail = (refused.stdout + refused.stderr).strip().splitlines()  # what cron mails
    assert len(mail) == 1 and "held by another process" in mail[0] and "--wait" in mail[0], mail


def test_exit_codes_in_the_examples_match_flowsync() -> None:
    from flowsync.errors import (
        ApiError,
        AuthError,
        ConfigError,
        FlowsyncError,
        StoreError,
        StoreLockedError,
    )

    codes: dict[type[FlowsyncError], str] = {
        ConfigError: "2 bad settings",
        ApiError: "3 API failed",
        AuthError: "4 auth",
        StoreError: "5 DuckDB file unusable",
        StoreLockedError: "6 ",
    }
    for name in ("crontab.example", "flowsync-pull.service"):
        text = " ".join((DEPLOY / name).read_text().replace("#", " ").split())
        for cls, phrase in codes.items():
            assert str(cls.exit_code) == phrase.split()[0]
            assert phrase in text, (name, phrase)


def _units(tmp_path: Path) -> tuple[Path, Path]:
    service = tmp_path / "flowsync-pull.service"
    service.write_text(
        (DEPLOY / "flowsync-pull.service")
        .read_text()
        .replace("/usr/local/bin/flowsync", str(FLOWSYNC))
    )
    timer = tmp_path / "flowsync-pull.timer"
    shutil.copy(DEPLOY / "flowsync-pull.timer", timer)
    return service, timer


def test_systemd_units_are_consistent(tmp_path: Path) -> None:
    service, timer = _units(tmp_path)
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(service)
    assert unit["Service"]["Type"] == "oneshot"  # systemd never overlaps two runs of it
    exec_start = unit["Service"]["ExecStart"].split()
    assert (
        exec_start[0] == str(FLOWSYNC)
        and exec_start[1:3] == ["pull", "--quiet"]
        and "--wait" in exec_start
    )
    tick = configparser.ConfigParser(strict=False, interpolation=None)
    tick.optionxform = str  # type: ignore[assignment,method-assign]
    tick.read(timer)
    assert tick["Timer"]["Unit"] == service.name
    assert tick["Install"]["WantedBy"] == "timers.target"
    # The command line itself parses: flowsync accepts every option the unit passes.
    help_run = subprocess.run([*exec_start, "--help"], capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0, help_run.stderr


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (apt-get install systemd)",
)
def test_systemd_units_verify(tmp_path: Path) -> None:
    service, timer = _units(tmp_path)
    for args in ([str(service), str(timer)], ["calendar", "*:0/15"]):
        cmd = (
            ["systemd-analyze", "verify", "--man=no", *args]
            if args[0] != "calendar"
            else ["systemd-analyze", *args]
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        if args[0] != "calendar":
            assert proc.stderr.strip() == "", (
                proc.stderr
            )  # unknown keys are only warnings: none allowed


def _prefect_env(url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOWSYNC_"))}
    env.update(
        PREFECT_API_URL=url,
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PYTHONPATH=str(DEPLOY),
    )
    return env


def test_prefect_flow_pulls_then_applies_a_policy(fresh_server: Server, tmp_path: Path) -> None:
    seeded = seed(fresh_server.url, runs=30, flows=1, deployments_per_flow=2, days=20, seed_value=3)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        textwrap.dedent("""\
        version: 1
        protect_tags: [keep]
        rules:
          - name: purge-finished
            action: delete
            sql: SELECT id FROM flow_runs WHERE deleted_at IS NULL AND state_type IN ('COMPLETED', 'FAILED')
        """)
    )
    db = tmp_path / "runs.duckdb"
    code = (
        "import json; from prefect_flow import flowsync_pull_and_clean as f; "
        f"print(json.dumps(f(db={str(db)!r}, policy={str(policy)!r}, apply=True)))"
    )
    env = _prefect_env(fresh_server.url, tmp_path / "prefect-home")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pull"]["mode"] == "full" and out["pull"]["inserted"] >= 30
    selectable = [rid for rid, st in seeded.runs.items() if st in ("COMPLETED", "FAILED")]
    assert out["policy"]["planned"] > 0
    assert out["policy"]["apply"]["status"] == "success"
    assert out["policy"]["apply"]["done"] == out["policy"]["planned"]
    with httpx.Client(base_url=fresh_server.url + "/") as c:
        left = c.post("flow_runs/count", json={"flow_runs": {"id": {"any_": selectable}}}).json()
        protected = c.post(
            "flow_runs/count",
            json={"flow_runs": {"id": {"any_": selectable}, "tags": {"all_": ["keep"]}}},
        ).json()
        assert left == protected  # everything selected was deleted, except the protected runs
        # The flow ran as a real Prefect flow run, and completed.
        runs = c.post(
            "flow_runs/filter", json={"flows": {"name": {"any_": ["flowsync-pull-and-clean"]}}}
        ).json()
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
    assert (
        scalar(db, "SELECT count(*) FROM flow_runs WHERE deleted_at IS NOT NULL")
        == out["policy"]["apply"]["done"]
    )

    # The deployment in the __main__ block registers with its schedule (apply() instead of serve()).
    code = "from prefect_flow import build_deployment; print(build_deployment(db='/tmp/x.duckdb').apply())"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with httpx.Client(base_url=fresh_server.url + "/") as c:
        dep = c.get("deployments/name/flowsync-pull-and-clean/every-15-minutes").json()
    assert dep["schedules"][0]["schedule"]["cron"] == "*/15 * * * *"
    assert dep["parameters"] == {"db": "/tmp/x.duckdb", "policy": None, "apply": False}
    main_block = (DEPLOY / "prefect_flow.py").read_text().split('if __name__ == "__main__":', 1)[1]
    assert "serve(build_deployment())" in main_block and ".deploy(" in main_block
    # Planned only, a policy over its max_actions fails the flow run, as `flowsync plan`
    # exits 8 (apply would refuse it).
    over = tmp_path / "over.yaml"
    over.write_text(
        "version: 1\nmax_actions: 1\nrules:\n  - name: all\n    action: delete\n"
        "    sql: SELECT id FROM flow_runs WHERE deleted_at IS NULL\n"
    )
    code = (
        "from prefect_flow import flowsync_pull_and_clean as f; "
        f"f(db={str(db)!r}, policy={str(over)!r})"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "more than max_actions (1)" in proc.stderr, proc.stderr[-3000:]
