"""The runs of one plan, kept in a DuckDB file of their own and read back a page at a time.

Owns: the plan's store, a scratch DuckDB file in a private temporary folder (never
the user's file; removed by ``close`` or at the end of the process, and a folder left by
a process that was killed is removed by the next plan), its memory
capped so it stays flat however many runs a policy selects. It
holds every run each rule's SQL returned, in the rule's rank order, with the
columns apply and the plan's listing need and why a guard skipped it (NULL:
planned); and the plan itself (``Plan``, ``RulePlan``: counts in memory, runs read
from that store). ``plan.make_plan`` fills both. Must not:
decide anything (the guards are ``plan``'s), read the user's file, call the API,
or print.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowsync.errors import StoreError
from flowsync.policy.model import DeleteRule, LoadedPolicy, SetStateRule
from flowsync.store import Store
from flowsync.store.files import owner_alive

if TYPE_CHECKING:
    import polars as pl


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


_PREFIX = "flowsync-plan-"
_OWNER = "owner.pid"  # the process that made the folder


def sweep_orphans(root: Path) -> list[Path]:
    """Remove the plan folders under ``root`` whose process is gone (a plan's process killed
    with -9 cannot remove its own); a folder of a live process, or without an owner, stays."""
    removed = []
    for folder in root.glob(f"{_PREFIX}*"):
        with contextlib.suppress(OSError, ValueError):
            pid = int((folder / _OWNER).read_text())
            if pid != os.getpid() and not owner_alive(pid):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


class PlanRuns:
    """One plan's runs, in a scratch DuckDB file. Safe to read from several threads."""

    def __init__(self) -> None:
        sweep_orphans(Path(tempfile.gettempdir()))
        made: Path | None = None
        try:
            made = Path(tempfile.mkdtemp(prefix=_PREFIX))
            (made / _OWNER).write_text(str(os.getpid()))
        except OSError as e:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            raise StoreError(
                f"Cannot create the plan's scratch folder in {tempfile.gettempdir()}: "
                f"{e.strerror}; point TMPDIR at a writable folder with room."
            ) from e
        self.folder = made
        self._lock = threading.Lock()
        try:
            self._store: Store = Store.scratch(
                self.folder / "plan.duckdb", memory_limit_mb=RUNS_MEMORY_MB
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

    def _column(self, sql: str, params: list[Any]) -> list[Any]:
        """The one column ``sql`` selects."""
        return [r[0] for r in self._rows(sql, params)]

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
        return set(
            self._column(
                "SELECT id FROM plan_runs WHERE reason IS NULL "
                "AND id IN (SELECT unnest(CAST(? AS VARCHAR[])))",
                [ids],
            )
        )

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
        return self._column(
            "SELECT state_type FROM plan_runs WHERE rule = ? AND reason IS NULL "
            "GROUP BY state_type ORDER BY min(pos)",
            [rule],
        )

    def sample(self, rule: int, limit: int | None) -> list[PlannedRun]:
        """The first ``limit`` planned runs of a rule (None: every one)."""
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
        found = self._column(
            "SELECT id FROM plan_runs WHERE reason IS NULL "
            "AND list_has_any(tags, CAST(? AS VARCHAR[])) LIMIT 1",
            [tags],
        )
        return str(found[0]) if found else None

    def skipped_among(self, rule: int, reason: str, among: set[str]) -> set[str]:
        """Which of ``among`` the rule skipped for ``reason``."""
        return set(
            self._column(
                "SELECT id FROM plan_runs WHERE rule = ? AND reason = ? "
                "AND id IN (SELECT unnest(CAST(? AS VARCHAR[])))",
                [rule, reason, sorted(among)],
            )
        )

    def selected(self, besides: str) -> list[str]:
        """Every run any rule's SQL returned, planned or skipped, but not for ``besides``."""
        return self._column(
            "SELECT id FROM plan_runs WHERE reason IS DISTINCT FROM ? "
            "GROUP BY id ORDER BY min(rule), min(pos)",
            [besides],
        )


# -- what a plan is (``plan.make_plan`` makes it) ----------------------------------------


RuleModel = DeleteRule | SetStateRule


def per_run_path(server: str, plan: Plan) -> str:
    """How apply calls ``server``, which lacks the bulk endpoints, for ``plan``'s rules."""
    calls = [
        call
        for kind, call in (
            (DeleteRule, "DELETE /flow_runs/{id}"),
            (SetStateRule, "POST /flow_runs/{id}/set_state"),
        )
        if any(isinstance(rp.rule, kind) and rp.planned for rp in plan.rules)
    ]
    # Neither call can name the state it expects: a run that moves on between its re-read
    # and its call is changed anyway (Prefect's orchestration judges a set_state from the
    # state the run is in then: RUNNING -> CANCELLED passes).
    unguarded = (
        f"; {' and '.join(calls)} {'have' if len(calls) > 1 else 'has'} no server-side state guard"
    )
    return (
        f"per-run: {server} lacks the bulk endpoints (3.6.16+); apply sends one call per run, "
        "re-checked in batches of 10"
        + (unguarded if calls else "")
        + ("; forced states are refused" if plan.forcing_rules else "")
    )


def _forces(rule: RuleModel) -> bool:
    return isinstance(rule, SetStateRule) and rule.force


@dataclass(frozen=True)
class PlannedRun:
    """A run a rule would act on, as last pulled."""

    id: str
    name: str | None
    flow_name: str | None
    deployment_name: str | None
    state_type: str
    state_name: str | None
    tags: tuple[str, ...]
    expected_start_time: datetime | None
    end_time: datetime | None
    deployment_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "flow": self.flow_name,
            "deployment": self.deployment_name,
            "state_type": self.state_type,
            "state_name": self.state_name,
            "tags": list(self.tags),
            "expected_start_time": self.expected_start_time,
            "end_time": self.end_time,
        }


@dataclass
class Decided:
    """One rule decided over a few runs held in memory (apply's batch decision, the guards'
    tests): the runs it would act on, and why each run its SQL returned was skipped."""

    rule: RuleModel
    chosen: list[str] = field(default_factory=list)  # run ids, in the order decided
    selected: int = 0  # distinct ids the SQL returned
    reasons: dict[str, str] = field(default_factory=dict)  # skipped run id -> reason

    @property
    def skipped(self) -> dict[str, int]:
        """reason -> runs skipped for it."""
        counts: dict[str, int] = {}
        for reason in self.reasons.values():
            counts[reason] = counts.get(reason, 0) + 1
        return counts


@dataclass
class RulePlan:
    """One rule's share of a plan: counts held here, its runs in the plan's store (read them
    in pages: ``ids``, ``sample``), so memory does not grow with the runs selected."""

    rule: RuleModel
    planned: int = 0  # runs the rule would act on
    selected: int = 0  # distinct ids the SQL returned
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> runs, first met first
    by_state: dict[str, int] = field(default_factory=dict)  # state type -> planned runs
    number: int = -1  # the rule's key in the plan's store (-1: a disabled rule, no runs)
    runs_store: PlanRuns | None = field(default=None, repr=False, compare=False)

    def sample(self, limit: int | None) -> list[PlannedRun]:
        """The first ``limit`` planned runs, oldest first (None: all of them)."""
        if self.runs_store is None or not self.planned or limit == 0:
            return []
        return self.runs_store.sample(self.number, limit)

    def ids(self) -> Iterator[list[str]]:
        """Every planned run id, in rank order, a page at a time."""
        if self.runs_store is None or not self.planned:
            return
        for page in self.runs_store.planned(self.number):
            yield [run_id for run_id, _, _ in page]

    def to_json(self, sample: int | None = None, *, ids: bool = True) -> dict[str, Any]:
        """The rule's part of ``Plan.to_json``; ``ids=False`` leaves the ``ids`` list out
        (a caller writing the JSON streams them from ``ids()``)."""
        out: dict[str, Any] = {
            "rule": self.rule.name,
            "action": self.rule.action,
            "enabled": self.rule.enabled,
            "runs": self.planned,
            "selected_by_sql": self.selected,
            "skipped": dict(self.skipped),
            "by_state": dict(self.by_state),
        }
        if ids:
            out["ids"] = [i for page in self.ids() for i in page]
        out["sample"] = [r.to_json() for r in self.sample(sample)]
        if isinstance(self.rule, SetStateRule):
            out["state"] = self.rule.state.to_api()
            out["force"] = self.rule.force
        return out


@dataclass
class Plan:
    """What a policy would do. The planned and skipped runs live in the plan's own store
    (``PlanRuns``: a scratch DuckDB file in a temporary folder, never the user's file),
    read back a page at a time; ``close()`` (or the end of the process) removes it."""

    policy: LoadedPolicy
    rules: list[RulePlan]
    generated_at: datetime
    last_pull_at: datetime | None = None  # the data planned on: last successful pull
    oldest_read_at: datetime | None = None  # ... and the oldest read of a planned run
    refreshed: int | None = None  # runs re-read from the server before planning (plan --refresh)
    statements: dict[str, str] = field(default_factory=dict)  # rule name -> its checked SQL
    timeout: float | None = None  # seconds each rule statement may run
    # rule name -> why its SQL may decide a run from other runs' rows (see reads_other_runs)
    reads_other_runs: dict[str, str] = field(default_factory=dict)
    # rule name -> which of flows and deployments its SQL may read (rulesql.reads_lookups):
    # apply re-reads those of the runs it decides on
    reads_lookups: dict[str, frozenset[str]] = field(default_factory=dict)
    # the server as the last pull saw it ({"version", "cloud", "bulk", "seen_at"}), if known
    server: dict[str, Any] | None = None
    runs_store: PlanRuns | None = field(default=None, repr=False, compare=False)

    def close(self) -> None:
        """Remove the plan's store (its runs can no longer be read)."""
        if self.runs_store is not None:
            self.runs_store.close()

    def __enter__(self) -> Plan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def apply_path(self) -> str:
        """Which calls apply will make, as the last pull saw the server (apply asks it again)."""
        if not self.server or self.server.get("bulk", True):
            return "bulk"
        return per_run_path(f"Prefect {self.server.get('version') or '?'} (as last pulled)", self)

    @property
    def forced_per_run(self) -> list[str]:
        """The rules apply would refuse on the server as last pulled: ones that force a state
        on a server without the bulk endpoints (no state to guard it by; ``apply``)."""
        return [] if self.apply_path == "bulk" else self.forcing_rules

    @property
    def forcing_rules(self) -> list[str]:
        """The rules with runs planned that force a state."""
        return [rp.rule.name for rp in self.rules if _forces(rp.rule) and rp.planned]

    @property
    def total(self) -> int:
        return sum(r.planned for r in self.rules)

    @property
    def over_max(self) -> bool:
        return self.total > self.policy.policy.max_actions

    def batches(self, size: int) -> Iterator[tuple[RuleModel, str, list[tuple[str, str | None]]]]:
        """Per rule, per planned state type (in the order the rule first meets it), its
        planned runs in rank order, ``size`` at a time: (run id, deployment id) pairs."""
        size = max(1, size)
        for rp in self.rules:
            if rp.runs_store is None or not rp.planned:
                continue
            for state_type in rp.runs_store.state_types(rp.number):
                chunk: list[tuple[str, str | None]] = []
                for page in rp.runs_store.planned(rp.number, state_type):
                    for run_id, _, deployment_id in page:
                        chunk.append((run_id, deployment_id))
                        if len(chunk) == size:
                            yield rp.rule, state_type, chunk
                            chunk = []
                if chunk:
                    yield rp.rule, state_type, chunk

    def protected_run(self, tags: list[str]) -> str | None:
        """A planned run carrying one of ``tags`` (None: none does)."""
        if self.runs_store is None or not tags or not self.total:
            return None
        return self.runs_store.with_tags(tags)

    def skipped_for(self, rule: RuleModel, reason: str, among: set[str]) -> set[str]:
        """Which of ``among`` the plan skipped for ``reason`` under ``rule``."""
        planned = next((rp for rp in self.rules if rp.rule.name == rule.name), None)
        if planned is None or planned.runs_store is None or not among:
            return set()
        return planned.runs_store.skipped_among(planned.number, reason, among)

    def to_json(self, sample: int | None = 10, *, ids: bool = True) -> dict[str, Any]:
        return {
            "policy": self.policy.source,
            "policy_sha256": self.policy.sha256,
            "generated_at": self.generated_at,
            "total": self.total,
            "max_actions": self.policy.policy.max_actions,
            "over_max_actions": self.over_max,
            "data": {
                "last_pull_at": self.last_pull_at,
                "oldest_read_at": self.oldest_read_at,
                "refreshed": self.refreshed,
            },
            "rules": [r.to_json(sample, ids=ids) for r in self.rules],
            "reads_other_runs": self.reads_other_runs,
            "reads_lookups": {name: sorted(t) for name, t in self.reads_lookups.items()},
            "apply_path": self.apply_path,
            "refused_forced_rules": self.forced_per_run,
        }
