"""Throwaway PostgreSQL clusters and Redis servers for production-shaped Prefect servers.

``postgres_cluster`` runs ``initdb`` and ``pg_ctl`` from Debian's versioned bin
directory (``/usr/lib/postgresql/<N>/bin``, not on PATH) into a temp dir, on a
free loopback port with its unix socket in that dir, and removes it on exit.
As root the binaries run as the ``postgres`` user (PostgreSQL refuses root).
Each Prefect server gets a database of its own, copied from a template that
Prefect's migrations already ran on (``CREATE DATABASE ... TEMPLATE``), so a
fresh server starts as fast as a SQLite one. ``redis_server`` does the same for
``redis-server`` (the messaging broker several API workers need).

Used by the tests and benchmarks; never by ``src/``.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import harness

HOW_TO_GET = (
    "PostgreSQL server binaries not found (initdb/pg_ctl in /usr/lib/postgresql/<version>/bin "
    "or on PATH): run scripts/setup as root (it installs Debian's `postgresql` package), "
    "or `apt-get install postgresql`, or set FLOWSYNC_PG_BIN to a directory holding initdb and pg_ctl."
)
REDIS_HOW_TO_GET = (
    "redis-server not found: run scripts/setup as root or `apt-get install redis-server`."
)
TEMPLATE_DB = "prefect_template"


class Unavailable(RuntimeError):
    """The binaries a harness needs are not installed (tests skip with this message)."""


def pg_bin_dir() -> Path:
    """The directory with initdb and pg_ctl: $FLOWSYNC_PG_BIN, Debian's newest, or PATH."""
    candidates = [os.environ.get("FLOWSYNC_PG_BIN", "")]
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    found = shutil.which("initdb")
    candidates.append(str(Path(found).parent) if found else "")
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise Unavailable(HOW_TO_GET)


def _as_owner() -> tuple[list[str], int | None, int | None]:
    """Command prefix and uid/gid to run PostgreSQL as: `postgres` when we are root."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError as e:
        raise Unavailable(
            "running as root but there is no `postgres` user to run PostgreSQL as; " + HOW_TO_GET
        ) from e
    return ["runuser", "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid


@dataclass
class PgCluster:
    bin: Path
    dir: Path
    port: int
    log: Path
    _dbs: itertools.count = field(default_factory=lambda: itertools.count(1))  # type: ignore[type-arg]

    def url(self, database: str) -> str:
        """The SQLAlchemy URL Prefect's server takes (PREFECT_API_DATABASE_CONNECTION_URL)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres", *, tuples: bool = True) -> str:
        """Run SQL with psql (trust auth on loopback); returns its unaligned output."""
        cmd = [
            str(self.bin / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            self.dsn(database),
        ]
        if tuples:
            cmd += ["-A", "-t"]
        proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def create_database(self, name: str | None = None, template: str | None = TEMPLATE_DB) -> str:
        """A new empty Prefect database (from the migrated template when it exists)."""
        name = name or f"prefect_{os.getpid()}_{next(self._dbs)}"
        if template and not self.has_database(template):
            template = None
        self.psql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def has_database(self, name: str) -> bool:
        return self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip() == "1"


def _pg_ctl(cluster_bin: Path, data: Path, *args: str, timeout: float = 120) -> None:
    prefix, _, _ = _as_owner()
    proc = subprocess.run(
        [*prefix, str(cluster_bin / "pg_ctl"), "-D", str(data), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pg_ctl {args[0]} failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")


@contextmanager
def postgres_cluster(
    base: Path | None = None,
    port: int | None = None,
    *,
    tuned: bool = False,
    keep_at: Path | None = None,
) -> Iterator[PgCluster]:
    """A running PostgreSQL cluster in a temp dir, stopped and removed on exit.

    ``keep_at`` keeps the cluster in that directory instead (created on first
    use, started again later; benchmarks seed it once). ``tuned`` gives the
    bigger buffers a benchmark at a million runs wants; fsync stays off
    either way (a throwaway cluster, never production data).
    """
    from harness.server import free_port

    harness.may_start("a PostgreSQL cluster")
    bin_dir = pg_bin_dir()
    prefix, uid, gid = _as_owner()
    if keep_at is not None:
        root = keep_at
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="flowsync-pg-", dir=base))
    data, sock, log = root / "data", root / "sock", root / "postgres.log"
    sock.mkdir(exist_ok=True)
    if uid is not None and gid is not None:
        for p in (root, sock):
            os.chown(p, uid, gid)
        root.chmod(0o755)
    port = port or free_port()
    try:
        if not (data / "PG_VERSION").exists():
            proc = subprocess.run(
                [
                    *prefix,
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"initdb failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "unix_socket_directories": f"'{sock}'",
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                "max_connections": "200",
            }
            if tuned:
                settings.update(
                    shared_buffers="'1GB'",
                    work_mem="'32MB'",
                    maintenance_work_mem="'512MB'",
                    max_wal_size="'8GB'",
                    checkpoint_timeout="'30min'",
                )
            with (data / "postgresql.conf").open("a") as conf:
                conf.write("\n# flowsync test cluster\n")
                conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        if uid is not None and gid is not None:
            log.touch()
            os.chown(log, uid, gid)
        # The socket folder given at each start: a kept cluster still starts after its folder moved.
        options = f"-p {port} -k {sock}"
        _pg_ctl(bin_dir, data, "start", "-w", "-t", "300", "-l", str(log), "-o", options)
        try:
            yield PgCluster(bin_dir, root, port, log)
        finally:
            with contextlib.suppress(Exception):
                _pg_ctl(
                    bin_dir,
                    data,
                    "stop",
                    "-m",
                    "fast" if keep_at else "immediate",
                    "-w",
                    "-t",
                    "120",
                )
    finally:
        if keep_at is None:
            shutil.rmtree(root, ignore_errors=True)


def migrate_template(cluster: PgCluster, home: Path) -> None:
    """Prepare the template database new servers are copied from, once.

    A one-worker server runs on it once: that applies Prefect's migrations and
    registers the built-in block types. Two API workers starting on an empty
    database race to register those and one of them dies on a unique
    violation (``uq_block_type__slug``); on a prepared copy neither does.
    """
    from harness.server import prefect_server

    if cluster.has_database(TEMPLATE_DB):
        return
    cluster.create_database(TEMPLATE_DB, template=None)
    try:
        with prefect_server(home=home, database_url=cluster.url(TEMPLATE_DB), timeout=300):
            pass
    except BaseException:
        cluster.drop_database(TEMPLATE_DB)
        raise


@dataclass
class Redis:
    port: int
    process: subprocess.Popen[bytes]


@contextmanager
def redis_server(base: Path | None = None) -> Iterator[Redis]:
    """A throwaway redis-server on a free loopback port, no persistence; stopped on exit."""
    from harness.server import free_port

    exe = shutil.which("redis-server")
    if not exe:
        raise Unavailable(REDIS_HOW_TO_GET)
    root = Path(tempfile.mkdtemp(prefix="flowsync-redis-", dir=base))
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
            "--logfile",
            str(root / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=1) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server not ready after 30s")
            time.sleep(0.1)
        yield Redis(port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def redis_env(redis: Redis) -> dict[str, str]:
    """The settings `prefect server start --workers N` asks for (messaging, cache, ordering, leases)."""
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1",
        "PREFECT_REDIS_MESSAGING_PORT": str(redis.port),
        "PREFECT_REDIS_MESSAGING_DB": "0",
    }
