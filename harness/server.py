"""Start and stop a real Prefect server for tests, the demo and benchmarks.

Runs ``prefect server start`` from the dev dependency group on a free loopback
port, with its own PREFECT_HOME and the analytics and cancellation-cleanup
services off. Three backends (``BACKENDS``): ``sqlite`` (the database file
lives in the home), ``postgres`` (a database of its own in a throwaway
cluster, see ``harness.postgres``) and ``postgres-2w`` (PostgreSQL,
Redis for messaging, ``--workers 2`` and the background services in a
separate ``prefect server services start`` process, as production runs them).

Server versions: by default the ``prefect`` pinned in the dev group (the
running interpreter's environment). ``prefect_server(version="3.4.25")`` runs
that release instead, from a virtualenv of its own built on first use under
``FLOWSYNC_TEST_SERVERS`` (default ``~/.cache/flowsync-test-servers/<version>``,
installed with the dev group's uv) and reused afterwards; ``python -m harness
prepare`` builds ahead what the tests will start (``scripts/check`` runs it during
its setup). ``SERVER_VERSIONS`` holds the latest patch of every supported minor;
``server_versions()`` says which of them this run tests
(``FLOWSYNC_TEST_SERVER_VERSIONS``). Never used by ``src/``.

Start-up cost: a new SQLite server starts from a copy of a migrated database of its own
Prefect version (``sqlite_template``: built once by that version's own start on an empty
home, cached beside the version venvs), with migrations and block registration at start
turned off (``PREPARED_DATABASE_ENV``), as the PostgreSQL backends copy a template
database. A home that already holds a database (a restart) starts the ordinary way.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

import harness
from harness import zygote
from harness.zygote import Child, Zygote

if TYPE_CHECKING:
    from harness.postgres import PgCluster

BACKENDS = ("sqlite", "postgres", "postgres-2w")

# The latest patch of every Prefect 3 minor (`pip index versions prefect`, 2026-12-04).
SERVER_VERSIONS = {
    "3.0": "3.0.11",
    "3.1": "3.1.15",
    "3.2": "3.2.15",
    "3.3": "3.3.7",
    "3.4": "3.4.25",
    "3.5": "3.5.0",
    "3.6": "3.6.29",
    "3.7": "3.7.8",
    "3.8": "3.8.8",
    "3.9": "3.9.1",
}
# What CI tests besides the pinned default: the oldest and the newest supported.
CI_SERVER_VERSIONS = (SERVER_VERSIONS["3.0"], SERVER_VERSIONS["3.9"])
# A release without the bulk endpoints: the tests of apply's call-per-run path run on it.
PER_RUN_VERSION = SERVER_VERSIONS["3.4"]
VERSIONS_ENV = "FLOWSYNC_TEST_SERVER_VERSIONS"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


def server_versions(value: str | None = None) -> list[str]:
    """The server versions a compatibility run covers: ``FLOWSYNC_TEST_SERVER_VERSIONS``
    as ``all`` (every minor's latest patch), ``ci`` (the oldest and newest, the default)
    or a comma-separated list of versions or minors (``3.4,3.9.1``)."""
    value = (value if value is not None else os.environ.get(VERSIONS_ENV, "")).strip() or "ci"
    if value == "all":
        return list(SERVER_VERSIONS.values())
    if value == "ci":
        return list(CI_SERVER_VERSIONS)
    out = []
    for item in (v.strip() for v in value.split(",")):
        if item:
            out.append(SERVER_VERSIONS.get(item, item))
    return out


def version_pins(version: str) -> list[str]:
    """What an old release needs pinned beside it to start (found by starting each): newer
    FastAPI releases break 3.0-3.7 (``Body(min_items=...)``; 3.7 needs one from
    0.139 on, so it gets the one 3.8.8 runs with), 3.0-3.6 import
    ``importlib_metadata`` without declaring it, and 3.0 needs an older pydantic."""
    v = version_tuple(version)
    pins = [f"prefect=={version}"]
    if v < (3, 7):
        pins.append("fastapi==0.115.12")
    elif v < (3, 8):
        pins.append("fastapi==0.154.0")  # 3.7 wants >=0.139; what 3.8.8 runs with here
    if v < (3, 7):  # 3.0-3.5, and 3.6.15 and 3.6.16 too (prefect/workers/base.py)
        pins.append("importlib_metadata")
    if v < (3, 1):
        pins.append("pydantic==2.9.2")
    return pins


def _interpreter(version: str) -> str:
    """A Python for this release: 3.9 needs 3.11+, the older ones run on any 3.10+."""
    if version_tuple(version) < (3, 9) or sys.version_info >= (3, 11):
        return sys.executable
    for name in ("python3.11", "python3.12", "python3.13"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(f"prefect {version} needs Python 3.11 or newer: install python3.11.")


def new_venv(
    venv: Path, python: str = sys.executable, *, compile_bytecode: bool = True
) -> list[str]:
    """A new virtualenv at ``venv`` (made by ``python``), and the command that installs
    packages into it: the dev group's uv (4 s for a server's virtualenv on a fresh machine,
    bytecode compiled, against 21 s with pip), else that virtualenv's own pip, which only
    then is put into it (ensurepip: about 3 CPU-s a virtualenv)."""
    uv = Path(sys.executable).parent / "uv"
    without_pip = ["--without-pip"] if uv.exists() else []
    subprocess.run([python, "-m", "venv", *without_pip, str(venv)], check=True, capture_output=True)
    if uv.exists():
        compiled = ["--compile-bytecode"] if compile_bytecode else []
        return [
            str(uv),
            "pip",
            "install",
            "-q",
            *compiled,
            "--python",
            str(venv / "bin" / "python"),
        ]
    cache = str(servers_cache() / "pip-cache")
    return [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
            "--disable-pip-version-check", "--cache-dir", cache]  # fmt: skip


def servers_cache() -> Path:
    default = Path.home() / ".cache" / "flowsync-test-servers"
    return Path(os.environ.get("FLOWSYNC_TEST_SERVERS") or default)


def installed_prefect_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("prefect")
    except metadata.PackageNotFoundError:
        return None


def server_venv(version: str) -> Path:
    """The bin directory of a virtualenv holding ``prefect==version``; built once, then reused.

    Built under a file lock (parallel test processes wait for one build) and marked
    complete only at the end, so a build cut short is redone rather than reused."""
    root = servers_cache()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / version
    done = venv / ".flowsync-complete"
    with (root / f".{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = " ".join(version_pins(version))
        if not done.exists() or done.read_text().strip() != wanted:  # new pins: build again
            shutil.rmtree(venv, ignore_errors=True)
            install = new_venv(venv, _interpreter(version))
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            proc = subprocess.run(
                [*install, *version_pins(version)], env=env, capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise RuntimeError(
                    f"could not install prefect {version} into {venv}:\n{proc.stderr[-3000:]}"
                )
            done.write_text(wanted + "\n")
    return venv / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefect_executable(version: str | None = None) -> str:
    """The ``prefect`` command: the dev group's, or ``version``'s own virtualenv's."""
    if version is not None and version != installed_prefect_version():
        return str(server_venv(version) / "prefect")
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
    process: subprocess.Popen[bytes] | Child  # a Child: forked by the zygote
    log: Path
    backend: str = "sqlite"
    database_url: str | None = None  # PostgreSQL backends: where the server keeps its rows
    workers: int = 1
    version: str | None = None  # None: the dev group's pinned prefect

    def wait_ready(self, timeout: float = 90.0) -> Server:
        """Return once the server answers ``/health``; raise with its log's tail if it exits
        or is not ready after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited with {self.process.returncode}:\n"
                    f"{self.log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"prefect server not ready after {timeout}s:\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.3)

    def env(self) -> dict[str, str]:
        """Environment for a Prefect client (e.g. a real @flow) pointed at this server."""
        return {
            **os.environ,
            "PREFECT_API_URL": self.url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }


# Seconds between the event persister's flushes on the servers the tests start (set by
# tests/conftest.py; unset, as for the benchmarks and the demo: Prefect's own 5 s). A test
# waits for a state change's event before it pulls or applies: 28% of the server tests'
# time went to those waits. A test of the window before a flush sets its own (extra_env).
EVENT_FLUSH_ENV = "FLOWSYNC_TEST_EVENT_FLUSH_SECONDS"


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
    flush = os.environ.get(EVENT_FLUSH_ENV)
    if flush:
        env["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL"] = flush
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


# A database that a server of this Prefect already migrated and registered the built-in
# block types in (a copy of the SQLite template, or of the PostgreSQL template database):
# what a server does at start to prepare it is already done.
PREPARED_DATABASE_ENV = {
    "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    # The memo around the registration hashes every block type first (about 0.2 CPU-s a
    # start) to decide whether to register them, which the setting above skips anyway.
    "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
}
SQLITE_DB = "prefect.db"


def sqlite_template(version: str | None = None) -> Path:
    """A migrated, empty ``prefect.db`` of ``version`` (None: the dev group's Prefect), with
    its built-in block types.

    Built once per version (and its pins) by starting a server of that version on an empty
    home (its own migrations and block registration), then copied with ``VACUUM INTO`` (one
    consistent file, no WAL) and renamed into place under a file lock, so a copy is never
    half written."""
    version = version or installed_prefect_version()
    pins = hashlib.sha1(" ".join(version_pins(str(version))).encode()).hexdigest()[:8]
    root = servers_cache()
    root.mkdir(parents=True, exist_ok=True)
    template = root / f"sqlite-template-{version}-{pins}.db"
    with (root / f".{template.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            partial = root / f".{template.name}.partial"
            partial.unlink(missing_ok=True)
            with tempfile.TemporaryDirectory(prefix="flowsync-template-") as tmp:
                with prefect_server(home=Path(tmp), version=version, template=False):
                    pass
                con = sqlite3.connect(Path(tmp) / SQLITE_DB)
                try:
                    con.execute("VACUUM INTO ?", (str(partial),))
                finally:
                    con.close()
            os.replace(partial, template)
    return template


def _stop(proc: subprocess.Popen[bytes] | Child) -> None:
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
    version: str | None = None,
    template: bool = True,
    prepared_database: bool = False,
    wait: bool = True,
) -> Iterator[Server]:
    """A running server; stopped (and its temp home removed) on exit.

    ``version`` runs that Prefect release from its own virtualenv (see the module
    docstring); None runs the dev group's. A SQLite server on a home without a database
    starts from ``sqlite_template(version)`` unless ``template`` is False.
    ``prepared_database``: ``database_url`` is a copy of a prepared template. With
    ``wait=False`` (one worker only) it yields as soon as the process is launched, to be
    started in the background while something else runs: ``Server.wait_ready`` before use.

    With ``workers`` > 1 the API processes run no background services (Prefect
    turns them off), so they run in a ``prefect server services start``
    process of their own: without it no event would ever be stored.
    """
    # Several workers each import the server and check the database: slower to start on a
    # loaded machine than one.
    harness.may_start("a Prefect server")
    timeout = timeout or (90.0 if workers == 1 else 300.0)
    own_home = home is None
    home = Path(tempfile.mkdtemp(prefix="flowsync-prefect-")) if home is None else home
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = home / "server.log"
    env = {**server_env(home, quiet_services, database_url), **(extra_env or {})}
    fresh_sqlite = database_url is None and not (home / SQLITE_DB).exists()
    if template and fresh_sqlite:
        shutil.copyfile(sqlite_template(version), home / SQLITE_DB)
        env.update(PREPARED_DATABASE_ENV)
    elif prepared_database:
        env.update(PREPARED_DATABASE_ENV)
    prefect = prefect_executable(version)
    cmd = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    proc: subprocess.Popen[bytes] | Child
    if workers == 1 and prefect == prefect_executable() and zygote.enabled():
        log.write_bytes(b"")
        proc = Zygote.get().spawn(cmd[1:], env, log)
    else:
        with log.open("wb") as log_f:
            proc = subprocess.Popen(
                cmd, env=env, stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True
            )
    services: subprocess.Popen[bytes] | None = None
    url = f"http://127.0.0.1:{port}/api"
    server = Server(url, home, proc, log, backend, database_url, workers, version)
    try:
        if wait or workers > 1:
            server.wait_ready(timeout)
        if workers > 1:
            with (home / "services.log").open("wb") as log_f:
                services = subprocess.Popen(
                    [prefect, "server", "services", "start"],
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
    from harness.postgres import TEMPLATE_DB

    prepared = cluster.has_database(TEMPLATE_DB)
    db = cluster.create_database()
    try:
        workers = 1 if backend == "postgres" else 2
        with postgres_server(
            cluster.url(db), workers, home, backend=backend, prepared_database=prepared, **kwargs
        ) as server:
            yield server
    finally:
        cluster.drop_database(db)


@contextmanager
def postgres_server(
    database_url: str, workers: int = 1, home: Path | None = None, **kwargs: object
) -> Iterator[Server]:
    """A server on a PostgreSQL database: one API worker, or ``workers`` sharing a Redis
    (with a services process); ``kwargs`` go to ``prefect_server``."""
    from harness.postgres import redis_env, redis_server

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


def prepare(
    versions: list[str] | None = None, on_ready: Callable[[str, float], None] | None = None
) -> list[str]:
    """Build ahead what the tests start: the virtualenv and SQLite template of each server
    version ``server_versions()`` names, of ``PER_RUN_VERSION`` and of the dev group's
    Prefect; two at a time. What is built already is reused (a lock per version).
    ``on_ready(version, seconds)`` is called as each is ready. Returns what it prepared."""
    from concurrent.futures import ThreadPoolExecutor

    wanted = [None, PER_RUN_VERSION, *(server_versions() if versions is None else versions)]
    distinct = list(dict.fromkeys(wanted))

    def build(version: str | None) -> str:
        started = time.monotonic()
        if version is not None and version != installed_prefect_version():
            server_venv(version)
        sqlite_template(version)
        name = version or str(installed_prefect_version())
        if on_ready is not None:
            on_ready(name, time.monotonic() - started)
        return name

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(build, distinct))
