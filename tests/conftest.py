"""Shared fixtures: a real Prefect server, seeded data, an isolated environment.

``prefect`` is one server per test session and backend, seeded once
(SEED_RUNS runs plus real @flow executions): tests must treat it as
read-only. Tests that change server data (deletes, state changes, churn) take
``fresh_server``, a new empty server of their own, and seed what they need
with ``harness.seed``. Tests of figures, rendering and commands over a
populated file take ``built`` instead: a realistic file built without a server
(``harness.built``) with the answers the server would give about it.

Backends: every server fixture runs on ``backend`` (``sqlite`` unless a test
module asks for more). A module marked ``pytest.mark.backends("sqlite",
"postgres")`` runs each of its tests once per backend; the PostgreSQL ones
carry the ``postgres`` marker (deselect with ``-m "not postgres"``) and share
one throwaway cluster per session (``pg_cluster``), started only when needed.
Without PostgreSQL binaries they skip, saying how to install them, unless
FLOWSYNC_TEST_REQUIRE_POSTGRES=1 (CI) turns that into a failure.

Tiers: every test whose fixtures start a server or a cluster (``SERVER_FIXTURES``,
directly or through another fixture) gets the ``server`` marker at collection; the rest
are the fast lane (``scripts/check --fast`` runs ``-m "not server and not slow"``;
``slow`` marks the packaging tests, which build and install the wheel). A test or fixture
that starts its own server takes ``start_server`` (or ``start_backend_server``) rather
than calling the harness inline, and the harness refuses to start one for a test
without the marker (``harness.may_start``), so the lanes cannot drift.

Processes: ``scripts/check`` runs both lanes in two processes more than there are cores
(``-n N --dist loadgroup``). The tests of one session server (``prefect``), of a module
server of another Prefect release (``ONE_PROCESS_FIXTURES``), the PostgreSQL ones and a
test's own ``xdist_group`` run in one process (``GROUP``, ``pytest_xdist_make_scheduler``);
the rest wherever a process is free.

Servers of the dev group's Prefect with one API worker are forked from a process that has
already imported Prefect (``harness.zygote``: about 0.6 CPU-seconds a start instead of 6);
``FLOWSYNC_TEST_FORK_SERVERS=0`` launches each as ``prefect server start`` instead.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import httpx._transports.default
import pytest

import harness
from flowsync.api.session import tls_context
from harness.built import BuiltHistory, build
from harness.postgres import (
    PgCluster,
    Unavailable,
    migrate_template,
    pg_bin_dir,
    postgres_cluster,
)
from harness.seed import run_real_flows, seed
from harness.server import BACKENDS, EVENT_FLUSH_ENV, Server, backend_server, prefect_server
from harness.zygote import ENABLED_ENV
from tests.helpers import SeededServer

# Every httpx client builds its TLS context up front, loading certifi's CA bundle (about 25 ms
# of CPU), for an http:// URL too: the clients the tests and the harness make themselves (a
# few thousand) spent a quarter of test_apply_paths.py's CPU there. They share flowsync's
# contexts instead (one a process for each setting, ``tls_context``); a context passed in,
# as flowsync's sessions pass theirs, is used as it is.
_create_ssl_context = httpx._transports.default.create_ssl_context  # type: ignore[attr-defined]


def _shared_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
    if cert is None and trust_env and isinstance(verify, bool):
        return tls_context(verify)
    return _create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)


httpx._transports.default.create_ssl_context = _shared_ssl_context  # type: ignore[attr-defined]

os.environ.setdefault(ENABLED_ENV, "1")
os.environ.setdefault(EVENT_FLUSH_ENV, "0.5")

SEED_RUNS = 400
# The fixtures that start a Prefect server or a PostgreSQL cluster: a test whose fixture
# closure holds one of them is marked ``server`` (not in the fast lane).
SERVER_FIXTURES = frozenset(
    {
        "prefect",
        "prefect_on_sqlite",
        "prefect_on_postgres",
        "fresh_server",
        "pg_cluster",
        "start_server",
        "start_backend_server",
        "s3_server",  # tests/test_objectstore.py: moto's S3 server, a process of its own
    }
)


# Which tests must share one process when the suite runs on several (``-n N --dist
# loadgroup``, as scripts/check does): the users of one seeded ``prefect`` server, every test
# on PostgreSQL (one cluster a session), and a test's own ``xdist_group``. The rest go
# wherever a process is free. (pytest-xdist's own grouping renames node ids, which pytest 9.2
# no longer allows: each worker writes the groups it collected to GROUPS_FILE, and the
# controller's scheduler reads them.)
GROUP = pytest.StashKey[str]()
GROUPS_FILE = "FLOWSYNC_TEST_GROUPS"
# The test this process runs next (pytest's own ``nextitem``): under xdist the session's
# items are every process's, so a spare server is launched only for this process's tests.
NEXT = pytest.StashKey["pytest.Item | None"]()


# Modules whose module-scoped fixture costs much (a server it starts and seeds, flows it runs,
# a wheel it builds): their tests share one process, which sets it up once, rather than each
# process that takes one of them setting it up again. Their PostgreSQL tests and their users
# of the seeded session server stay in those groups' processes.
ONE_PROCESS = {
    "tests.test_apply_recheck": "apply-recheck",
    "tests.test_demo_data": "demo",
    "tests.test_error_signatures": "failing-flows",
    "tests.test_policy_apply": "policy-apply",
    "tests.test_staleness": "staleness",
    "tests.test_objectstore": "s3",  # its S3 server (moto: 3 CPU-s to start)
    # the wheel's, with the seeded SQLite server that one of them pulls from
    "tests.test_packaging": "prefect-sqlite",
}


# Module-scoped fixtures that launch a server of another Prefect release (its own virtualenv,
# started, not forked from the zygote) and seed it: 5-16 s a process that sets one up. Their
# tests share one process per server (per parameter: one per version), which sets it up once:
# spread over three processes, test_server_versions.py took 311 s of their time, 216 s so.
ONE_PROCESS_FIXTURES = ("versioned", "old_server")


def _group(item: pytest.Item) -> str | None:
    names = set(getattr(item, "fixturenames", ()))
    backend = _backend_of(item)
    if backend.startswith("postgres") or "pg_cluster" in names:
        return "postgres"  # first: a test on PostgreSQL elsewhere would start a second cluster
    marked = item.get_closest_marker("xdist_group")  # a test's own: kept together on purpose
    if marked is not None:
        return str(marked.args[0] if marked.args else marked.kwargs["name"])
    for fixture in ONE_PROCESS_FIXTURES:
        if fixture in names:
            callspec = getattr(item, "callspec", None)
            param = callspec.params.get(fixture) if callspec else None
            return fixture if param is None else f"{fixture}-{param}"
    if "prefect" in names:
        return f"prefect-{backend}"
    return ONE_PROCESS.get(item.module.__name__ if item.module else "")  # type: ignore[attr-defined]


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and config.getoption("dist", "no") == "loadgroup":
        folder = Path(tempfile.mkdtemp(prefix="flowsync-test-groups-"))
        os.environ[GROUPS_FILE] = str(folder / "groups.json")  # the workers inherit it
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups: dict[str, str] = {}
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
        group = _group(item)
        if group is not None:
            item.stash[GROUP] = group
            groups[item.nodeid] = group
    target = os.environ.get(GROUPS_FILE)
    if hasattr(config, "workerinput") and target:
        partial = Path(f"{target}.{config.workerinput['workerid']}")
        partial.write_text(json.dumps(groups))
        os.replace(partial, target)  # every worker collects the same groups


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``: the tests of a group go to one process, each other test alone."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class ByGroup(LoadScopeScheduling):  # type: ignore[misc]
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # asked once every worker has collected
                self.groups = json.loads(Path(os.environ[GROUPS_FILE]).read_text())
            return self.groups.get(nodeid, nodeid)

    return ByGroup(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    item.stash[NEXT] = nextitem


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    harness.servers_allowed = item.get_closest_marker("server") is not None


@pytest.fixture(scope="session")
def start_server() -> Callable[..., AbstractContextManager[Server]]:
    """``prefect_server`` for a test or fixture that starts a server of its own; taking this
    fixture is what marks the test ``server``."""
    return prefect_server


@pytest.fixture(scope="module")
def module_server(
    start_server: Any, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """A Prefect server (the dev group's, SQLite) that the tests of one module share; the
    module's own ``server`` fixture takes it (and seeds it, where the module needs runs)."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    with start_server(home=tmp_path_factory.mktemp(f"{name}-prefect")) as s:
        yield s


@pytest.fixture(scope="module")
def server(module_server: Server) -> Server:
    """The module's shared server as it starts, for a module that needs nothing on it first;
    one that seeds it defines its own ``server`` over ``module_server``."""
    return module_server


@pytest.fixture(scope="session")
def start_backend_server() -> Callable[..., AbstractContextManager[Server]]:
    """``backend_server``, as ``start_server`` (a server on a given backend)."""
    return backend_server


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Modules marked ``backends(...)`` run every test once per backend named."""
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is None or "backend" not in metafunc.fixturenames:
        return
    unknown = set(marker.args) - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(f"unknown backend(s) {sorted(unknown)}: use {', '.join(BACKENDS)}")
    params = [
        pytest.param(b, id=b, marks=[pytest.mark.postgres] if b.startswith("postgres") else [])
        for b in marker.args
    ]
    metafunc.parametrize("backend", params, indirect=True, scope="session")


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    """Which Prefect database backend the server fixtures start (see the module docstring)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the session, with Prefect's migrated template database."""
    try:
        pg_bin_dir()
    except Unavailable as e:
        if os.environ.get("FLOWSYNC_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(str(e))
        pytest.skip(str(e))
    with postgres_cluster() as cluster:
        migrate_template(cluster, tmp_path_factory.mktemp("pg-template-home"))
        yield cluster


def _cluster_for(backend: str, request: pytest.FixtureRequest) -> PgCluster | None:
    return request.getfixturevalue("pg_cluster") if backend.startswith("postgres") else None


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No PREFECT_* / FLOWSYNC_* from the machine leaks into a test; HOME-like dirs are temp.
    The harness's own FLOWSYNC_TEST_* stay (flowsync reads none): a server a test starts
    itself is forked and flushes events as the fixtures' servers do."""
    for key in list(os.environ):
        if key.startswith(("PREFECT_", "FLOWSYNC_")) and not key.startswith("FLOWSYNC_TEST_"):
            monkeypatch.delenv(key)
    home = tmp_path / "prefect-home"
    home.mkdir()
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    return home


def _seeded(
    backend: str, tmp: pytest.TempPathFactory, cluster: PgCluster | None
) -> Iterator[SeededServer]:
    home = tmp.mktemp(f"prefect-session-{backend}")
    with backend_server(backend, home, cluster) as server:
        seeded = seed(
            server.url, runs=SEED_RUNS, flows=4, deployments_per_flow=3, days=45, seed_value=7
        )
        real = run_real_flows(server.url, home)
        yield SeededServer(server, seeded, real)


@pytest.fixture(scope="session")
def prefect_on_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeededServer]:
    yield from _seeded("sqlite", tmp_path_factory, None)


@pytest.fixture(scope="session")
def prefect_on_postgres(
    pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeededServer]:
    yield from _seeded("postgres", tmp_path_factory, pg_cluster)


@pytest.fixture(scope="module")
def prefect(backend: str, request: pytest.FixtureRequest) -> SeededServer:
    """The session's seeded server on this test's backend (read-only for tests). Each backend's
    is a session fixture of its own, not one that takes ``backend``: pytest keys such a
    fixture's value by how the test got ``backend`` (a module marked ``backends`` or not), so
    the 400-run server was stopped, started and seeded again each time the suite went from
    one kind of module to the other (three times a run, 40 s each on a loaded machine)."""
    if backend not in ("sqlite", "postgres"):
        raise pytest.UsageError(f"no seeded session server on {backend}: use sqlite or postgres")
    return request.getfixturevalue(f"prefect_on_{backend}")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def two_workers(
    pg_cluster: PgCluster,
    start_backend_server: Callable[..., AbstractContextManager[Server]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """A production-shaped server: PostgreSQL, two API workers and a services process of
    its own, shared by the tests of both modules that need one (test_apply_workers.py,
    test_workers.py: one process, the PostgreSQL group), which each start three cold Prefect
    processes: about 12 CPU-s a start. Its tests select their own runs by id, or compare a
    fresh file with the whole server, so runs another test left do not change them."""
    home = tmp_path_factory.mktemp("prefect-2w")
    with start_backend_server("postgres-2w", home, pg_cluster) as server:
        assert server.workers == 2
        yield server


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltHistory:
    """A realistic flowsync file as a full pull leaves it, built without a server in ~2 s
    (``harness.built``), with the server's answers about it; read-only for tests."""
    # 45 days, as the seeded server: the reports' 20-day window has a whole previous one
    return build(tmp_path_factory.mktemp("built") / "runs.duckdb", days=45)


@pytest.fixture(scope="session")
def built_week(tmp_path_factory: pytest.TempPathFactory) -> BuiltHistory:
    """``built`` over 6 days: for tests that write a file out per day (exports write and
    upload each day's partition, a few times a test; 45 days cost seconds a test)."""
    return build(tmp_path_factory.mktemp("built-week") / "runs.duckdb", days=6)


def _backend_of(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    return str(callspec.params.get("backend", "sqlite")) if callspec else "sqlite"


class FreshServers:
    """Where ``fresh_server`` gets its servers: each one new and empty, for one test. When a
    later test will take one on the same backend, its server is launched now (a spare) and
    starts while the tests before it run: any later test for SQLite, a later test of the same
    module for PostgreSQL (its database lives in the session's cluster, which must outlive
    it). A spare nobody took is stopped with its module (PostgreSQL) or the session."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self.tmp = tmp
        self.spares: dict[str, tuple[ExitStack, Server]] = {}

    def launch(self, backend: str, cluster: PgCluster | None) -> tuple[ExitStack, Server]:
        stack = ExitStack()
        home = self.tmp.mktemp("fresh-prefect")
        server = stack.enter_context(backend_server(backend, home, cluster, wait=False))
        return stack, server

    def take(self, backend: str, cluster: PgCluster | None) -> tuple[ExitStack, Server]:
        return self.spares.pop(backend, None) or self.launch(backend, cluster)

    def spare_for(self, item: pytest.Item, backend: str, cluster: PgCluster | None) -> None:
        """Launch the server of the next test that takes one on ``backend``, if any."""
        items = item.session.items
        later = items[items.index(item) + 1 :]
        if hasattr(item.config, "workerinput"):  # xdist: this process's next test, its group's
            group = item.stash.get(GROUP, None)
            later = [i for i in later if group is not None and i.stash.get(GROUP, None) == group]
            following = item.stash.get(NEXT, None)
            if following is not None:
                later.append(following)
        if backend not in self.spares and any(
            "fresh_server" in getattr(i, "fixturenames", ())
            and _backend_of(i) == backend
            and (backend == "sqlite" or i.module is item.module)  # type: ignore[attr-defined]
            for i in later
        ):
            self.spares[backend] = self.launch(backend, cluster)
            module = item.getparent(pytest.Module)
            if backend != "sqlite" and module is not None:  # stopped with its module
                module.addfinalizer(lambda: self.discard(backend))

    def discard(self, backend: str) -> None:
        spare = self.spares.pop(backend, None)
        if spare is not None:
            spare[0].close()

    def close(self) -> None:
        for backend in list(self.spares):
            self.discard(backend)


@pytest.fixture(scope="session")
def fresh_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreshServers]:
    pool = FreshServers(tmp_path_factory)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def fresh_server(
    backend: str, request: pytest.FixtureRequest, fresh_servers: FreshServers
) -> Iterator[Server]:
    """A new, empty server of this test's own (started from the template database; see
    ``FreshServers`` for when it starts)."""
    cluster = _cluster_for(backend, request)
    stack, server = fresh_servers.take(backend, cluster)
    with stack:
        server.wait_ready()
        fresh_servers.spare_for(request.node, backend, cluster)
        yield server


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "flowsync.duckdb"
