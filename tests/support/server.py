"""Start and stop a real Prefect server for tests, the demo and benchmarks.

Runs ``prefect server start`` from the dev dependency group on a free loopback
port, with its own PREFECT_HOME (its SQLite database lives there) and the
analytics and cancellation-cleanup services off. Never used by ``src/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefect_executable() -> str:
    here = Path(sys.executable).parent / "prefect"
    found = str(here) if here.exists() else shutil.which("prefect")
    if not found:
        raise RuntimeError("prefect is not installed: install the dev group (`pip install --group dev -e .`).")
    return found


@dataclass
class Server:
    url: str
    home: Path
    process: subprocess.Popen[bytes]
    log: Path

    def env(self) -> dict[str, str]:
        """Environment for a Prefect client (e.g. a real @flow) pointed at this server."""
        return {
            **os.environ,
            "PREFECT_API_URL": self.url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }


def server_env(home: Path, quiet_services: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    if quiet_services:
        # Background services that write to the SQLite file on their own schedule:
        # they slow seeding down (lock contention) and change runs behind a test's back.
        for name in ("SCHEDULER", "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS", "REPOSSESSOR", "TRIGGERS"):
            env[f"PREFECT_SERVER_SERVICES_{name}_ENABLED"] = "false"
    return env


@contextmanager
def prefect_server(
    home: Path | None = None, port: int | None = None, timeout: float = 90.0, quiet_services: bool = True
) -> Iterator[Server]:
    """A running server; stopped (and its temp home removed) on exit."""
    own_home = home is None
    home = Path(tempfile.mkdtemp(prefix="flowsync-prefect-")) if home is None else home
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = home / "server.log"
    with log.open("wb") as log_f:
        proc = subprocess.Popen(
            [prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env(home, quiet_services),
            stdout=log_f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    server = Server(url, home, proc, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not ready after {timeout}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if own_home:
            shutil.rmtree(home, ignore_errors=True)
