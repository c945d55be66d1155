"""The scheduling recipes say what a first install needs (fast lane; tests/test_scheduling.py
runs them against a server): the flowsync user is created, the Prefect profile is where
ProtectHome does not hide it, cron finds flowsync where pipx and uv put it and mails failures."""

from __future__ import annotations

import configparser
from pathlib import Path

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
