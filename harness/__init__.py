"""Harness shared by the tests, the benchmarks and the demo: real Prefect servers, PostgreSQL
and Redis, seeders, the demo's history, real flows. Imports nothing from ``bench/``.

``servers_allowed`` is the test suite's tier guard: ``tests/conftest.py`` sets it per test
(False for a test not marked ``server``), and every harness that starts a server or a
cluster calls ``may_start`` first, so a fast-lane test cannot start one by accident. It stays
None outside pytest (benchmarks, the demo). Never imported by ``src/``.
"""

from __future__ import annotations

servers_allowed: bool | None = None


def may_start(what: str) -> None:
    """Raise if the running test is in the fast lane (not marked ``server``)."""
    if servers_allowed is False:
        raise RuntimeError(
            f"this test starts {what} but is not marked `server`: take the `start_server` "
            "fixture (or `prefect`, `fresh_server`, `pg_cluster`) instead of starting it inline "
            "(tests/conftest.py)"
        )
