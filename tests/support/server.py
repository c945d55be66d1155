"""Start and stop a real Prefect server for tests, the demo and benchmarks.

Runs ``prefect server start`` from the dev dependency group on a free loopback
port, with its own PREFECT_HOME and the analytics and cancellation-cleanup
services off. Three backends (``BACKENDS``): ``sqlite`` (the database file
lives in the home), ``postgres`` (a database of its own in a throwaway
cluster, see ``tests.support.postgres``) and ``postgres-2w`` (PostgreSQL,
Redis for messaging, ``--workers 2`` and the background services in a
separate ``prefect server services start`` process, as production runs them).
Never used by ``src/``.
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
from typing import TYPE_CHECKING

import httpx

from tests import support

if TYPE_CHECKING:
    from tests.support.postgres import PgCluster

BACKENDS = ("sqlite", "postgres", "postgres-2w")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefect_executable() -> str:
    here = Path(sys.executable).parent / "prefect"
    found = str(here) if here.exists() else shutil.which("prefect")
    if not found:
        raise RuntimeError(
            "prefect is not installed: install the dev group (`pip install --group dev -e .`)."
        )
    return found


@dataclass
class Server:
    url: str
    home: Path
    process: subprocess.Popen[bytes]
    log: Path
    backend: str = "sqlite"
    database_url: str | None = None  # PostgreSQL backends: where the server keeps its rows
    workers: int = 1

    def env(self) -> dict[str, str]:
        """Environment for a Prefect client (e.g. a real @flow) pointed at this server."""
        return {
            **os.environ,
            "PREFECT_API_URL": self.url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }


def server_env(
    home: Path, quiet_services: bool = True, database_url: str | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    if quiet_services:
        # Background services that write to the SQLite file on their own schedule:
        # they slow seeding down (lock contention) and change runs behind a test's back.
        for name in (
            "SCHEDULER",
            "LATE_RUNS",
            "FOREMAN",
            "PAUSE_EXPIRATIONS",
            "REPOSSESSOR",
            "TRIGGERS",
        ):
            env[f"PREFECT_SERVER_SERVICES_{name}_ENABLED"] = "false"
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def prefect_server(
    home: Path | None = None,
    port: int | None = None,
    timeout: float | None = None,
    quiet_services: bool = True,
    *,
    database_url: str | None = None,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    backend: str = "sqlite",
) -> Iterator[Server]:
    """A running server; stopped (and its temp home removed) on exit.

    With ``workers`` > 1 the API processes run no background services (Prefect
    turns them off), so they run in a ``prefect server services start``
    process of their own: without it no event would ever be stored.
    """
    # Several workers each import the server and check the database: slower to start on a
    # loaded machine than one.
    support.may_start("a Prefect server")
    timeout = timeout or (90.0 if workers == 1 else 300.0)
    own_home = home is None
    home = Path(tempfile.mkdtemp(prefix="flowsync-prefect-")) if home is None else home
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = home / "server.log"
    env = {**server_env(home, quiet_services, database_url), **(extra_env or {})}
    cmd = [prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    with log.open("wb") as log_f:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True
        )
    services: subprocess.Popen[bytes] | None = None
    url = f"http://127.0.0.1:{port}/api"
    server = Server(url, home, proc, log, backend, database_url, workers)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"prefect server not ready after {timeout}s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.3)
        if workers > 1:
            with (home / "services.log").open("wb") as log_f:
                services = subprocess.Popen(
                    [prefect_executable(), "server", "services", "start"],
                    env=env,
                    stdout=log_f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            time.sleep(2)
            if services.poll() is not None:
                raise RuntimeError(
                    f"prefect server services exited:\n{(home / 'services.log').read_text()[-3000:]}"
                )
        yield server
    finally:
        if services is not None:
            _stop(services)
        _stop(proc)
        if own_home:
            shutil.rmtree(home, ignore_errors=True)


@contextmanager
def backend_server(
    backend: str, home: Path | None = None, cluster: PgCluster | None = None, **kwargs: object
) -> Iterator[Server]:
    """A fresh, empty server on ``backend`` (one of ``BACKENDS``); PostgreSQL ones need ``cluster``."""
    if backend == "sqlite":
        with prefect_server(home=home, **kwargs) as server:  # type: ignore[arg-type]
            yield server
        return
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: one of {', '.join(BACKENDS)}")
    if cluster is None:
        raise ValueError(f"backend {backend!r} needs a PostgreSQL cluster")
    db = cluster.create_database()
    try:
        workers = 1 if backend == "postgres" else 2
        with postgres_server(cluster.url(db), workers, home, backend=backend, **kwargs) as server:
            yield server
    finally:
        cluster.drop_database(db)


@contextmanager
def postgres_server(
    database_url: str, workers: int = 1, home: Path | None = None, **kwargs: object
) -> Iterator[Server]:
    """A server on a PostgreSQL database: one API worker, or ``workers`` sharing a Redis
    (with a services process); ``kwargs`` go to ``prefect_server``."""
    from tests.support.postgres import redis_env, redis_server

    if workers == 1:
        with prefect_server(
            home=home,
            database_url=database_url,
            **kwargs,  # type: ignore[arg-type]
        ) as server:
            yield server
        return
    with (
        redis_server() as redis,
        prefect_server(
            home=home,
            database_url=database_url,
            workers=workers,
            extra_env=redis_env(redis),
            **kwargs,  # type: ignore[arg-type]
        ) as server,
    ):
        yield server
