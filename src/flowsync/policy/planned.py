"""The runs of one plan, kept in a DuckDB file of their own and read back a page at a time.

Owns: the plan's store, a scratch DuckDB file in a private temporary folder (never
the user's file; removed by ``close`` or at the end of the process), its memory
capped so it stays flat however many runs a policy selects. It
holds every run each rule's SQL returned, in the rule's rank order, with the
columns apply and the plan's listing need and why a guard skipped it (NULL:
planned). ``plan.make_plan`` fills it; ``Plan`` and ``RulePlan`` read it. Must not:
decide anything (the guards are ``plan``'s), read the user's file, call the API,
or print.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowsync.errors import StoreError
from flowsync.store import Store

if TYPE_CHECKING:
    import polars as pl

    from flowsync.policy.plan import PlannedRun

# Runs read back per query: a page of the plan in memory at a time.
PAGE = 10_000
# DuckDB's memory cap on the plan's store (MB): it only appends and reads ranges back.
RUNS_MEMORY_MB = 32

# What a rule's page holds (see ``plan._LISTED``), plus the guard's verdict.
_COLUMNS = (
    "pos, id, name, flow_name, deployment_name, state_type, state_name, tags, "
    "expected_start_time, end_time, deployment_id"
)
_CREATE = """
CREATE TABLE plan_runs (
    rule INTEGER NOT NULL,            -- the rule's number in the plan
    pos BIGINT NOT NULL,              -- its rank in the rule: oldest first
    id VARCHAR NOT NULL,
    name VARCHAR, flow_name VARCHAR, deployment_name VARCHAR,
    state_type VARCHAR, state_name VARCHAR, tags VARCHAR[],
    expected_start_time TIMESTAMPTZ, end_time TIMESTAMPTZ,
    deployment_id VARCHAR,
    reason VARCHAR                    -- why a guard skipped it; NULL: planned
)
"""


def _remove(store: Store, folder: Path) -> None:
    try:
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class PlanRuns:
    """One plan's runs, in a scratch DuckDB file. Safe to read from several threads."""

    def __init__(self) -> None:
        try:
            self.folder = Path(tempfile.mkdtemp(prefix="flowsync-plan-"))
        except OSError as e:
            raise StoreError(
                f"Cannot create the plan's scratch folder in {tempfile.gettempdir()}: "
                f"{e.strerror}; point TMPDIR at a writable folder with room."
            ) from e
        self._lock = threading.Lock()
        try:
            self._store = Store.open(
                self.folder / "plan.duckdb",
                migrate=False,
                memory_cap=True,
                memory_limit_mb=RUNS_MEMORY_MB,
            )
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self._closed = weakref.finalize(self, _remove, self._store, self.folder)
        self._store.execute(_CREATE)

    def close(self) -> None:
        with self._lock:
            self._closed()

    @property
    def closed(self) -> bool:
        return not self._closed.alive

    def _rows(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            if not self._closed.alive:
                raise RuntimeError("the plan was closed: its runs can no longer be read")
            return self._store.execute(sql, params).rows()

    # -- filling (plan.make_plan) ------------------------------------------------------

    def add(self, rule: int, page: pl.DataFrame) -> None:
        """A page of a rule's rows (``_COLUMNS`` and ``reason``), in rank order."""
        # as Arrow: DuckDB reads Polars' string views slower than Arrow's strings
        with self._lock, self._store.registered("plan_page", page.to_arrow()):
            self._store.execute(
                f"INSERT INTO plan_runs SELECT ?, {_COLUMNS}, reason FROM plan_page", [rule]
            )

    def taken(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` an earlier rule already plans."""
        rows = self._rows(
            "SELECT id FROM plan_runs WHERE reason IS NULL "
            "AND id IN (SELECT unnest(CAST(? AS VARCHAR[])))",
            [ids],
        )
        return {r[0] for r in rows}

    # -- reading -----------------------------------------------------------------------

    def planned(
        self, rule: int, state_type: str | None = None
    ) -> Iterator[list[tuple[str, str, str | None]]]:
        """A rule's planned runs in rank order (of one state type), a page at a time:
        (id, state type, deployment id)."""
        last = self._rows("SELECT max(pos) FROM plan_runs WHERE rule = ?", [rule])[0][0] or 0
        where = "rule = ? AND pos > ? AND pos <= ? AND reason IS NULL"
        if state_type is not None:
            where += " AND state_type = ?"
        # pos is 1..n in each rule, stored in order: a page is a range of it
        for after in range(0, last, PAGE):
            params: list[Any] = [rule, after, after + PAGE]
            page = self._rows(
                f"SELECT id, state_type, deployment_id FROM plan_runs WHERE {where} ORDER BY pos",
                params + ([state_type] if state_type is not None else []),
            )
            if page:
                yield [(r[0], r[1], r[2]) for r in page]

    def state_types(self, rule: int) -> list[str]:
        """The state types of a rule's planned runs, in the order its ranking meets them."""
        rows = self._rows(
            "SELECT state_type FROM plan_runs WHERE rule = ? AND reason IS NULL "
            "GROUP BY state_type ORDER BY min(pos)",
            [rule],
        )
        return [r[0] for r in rows]

    def sample(self, rule: int, limit: int | None) -> list[PlannedRun]:
        """The first ``limit`` planned runs of a rule (None: every one)."""
        from flowsync.policy.plan import PlannedRun

        rows = self._rows(
            "SELECT id, name, flow_name, deployment_name, state_type, state_name, tags, "
            "expected_start_time, end_time, deployment_id FROM plan_runs "
            "WHERE rule = ? AND reason IS NULL ORDER BY pos LIMIT ?",
            [rule, limit],
        )
        return [
            PlannedRun(
                id=r[0],
                name=r[1],
                flow_name=r[2],
                deployment_name=r[3],
                state_type=r[4],
                state_name=r[5],
                tags=tuple(r[6] or ()),
                expected_start_time=r[7],
                end_time=r[8],
                deployment_id=r[9],
            )
            for r in rows
        ]

    def with_tags(self, tags: list[str]) -> str | None:
        """A planned run (of any rule) carrying one of ``tags``."""
        rows = self._rows(
            "SELECT id FROM plan_runs WHERE reason IS NULL "
            "AND list_has_any(tags, CAST(? AS VARCHAR[])) LIMIT 1",
            [tags],
        )
        return str(rows[0][0]) if rows else None

    def skipped_among(self, rule: int, reason: str, among: set[str]) -> set[str]:
        """Which of ``among`` the rule skipped for ``reason``."""
        rows = self._rows(
            "SELECT id FROM plan_runs WHERE rule = ? AND reason = ? "
            "AND id IN (SELECT unnest(CAST(? AS VARCHAR[])))",
            [rule, reason, sorted(among)],
        )
        return {r[0] for r in rows}

    def selected(self, besides: str) -> list[str]:
        """Every run any rule's SQL returned, planned or skipped, but not for ``besides``."""
        rows = self._rows(
            "SELECT id FROM plan_runs WHERE reason IS DISTINCT FROM ? "
            "GROUP BY id ORDER BY min(rule), min(pos)",
            [besides],
        )
        return [r[0] for r in rows]
