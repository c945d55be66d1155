"""What each command does, as one call: the library the CLI, recipes and notebooks share.

Owns: the whole sequence behind ``flowsync plan`` and ``flowsync apply`` (which
file to open and how — snapshot or live, read-only or writer, sandboxed, memory
capped —, the re-read of ``plan --refresh``, the confirmation hook, publishing
the readers' snapshot after an apply), so a Python caller gets exactly what
the command does. ``flowsync.plan`` and ``flowsync.apply`` are these functions.
Must not: print or parse arguments (the CLI renders what they return), or hold
the API key anywhere but the client's header.

    pull(db, *, api, options=None, progress=None, wait=0.0) -> Pulled
    export(db, dest, *, fmt="parquet", tables=None, since=None, live=False) -> Exported
    plan(db, policy, *, refresh=None, live=False, wait=0.0, timeout=None) -> Plan
    apply(db, policy, *, api, confirm=None, progress=None, ...) -> Applied

Errors: ``PolicyError`` (exit 7: the file or a rule; ``PolicyLimitError``, exit 8:
over max_actions), ``ApiError``/``AuthError`` (3/4), ``StoreError`` (5),
``StoreLockedError`` (6); see ``flowsync.errors``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flowsync import api as http  # looked up per call: tests swap the client class
from flowsync import export as export_tables
from flowsync import objectstore
from flowsync.config import ApiSettings
from flowsync.errors import FlowsyncError
from flowsync.policy import ApplyResult, Plan, apply_plan, load_policy, make_plan
from flowsync.policy.apply import (
    SETTLE_SECONDS,
    check_guards,
    new_result,
    reread_runs,
)
from flowsync.policy.plan import selected_ids
from flowsync.store import Store, locks
from flowsync.store.snapshot import PublishResult, publish
from flowsync.sync import Progress, PullOptions, PullResult
from flowsync.sync import pull as pull_runs

__all__ = ["Applied", "Exported", "Pulled", "apply", "export", "plan", "pull"]


@dataclass
class Pulled:
    """A pull's result, and the snapshot readers now see (published, or kept unchanged)."""

    result: PullResult
    snapshot: PublishResult


def pull(
    db: Path,
    *,
    api: ApiSettings,
    options: PullOptions | None = None,
    progress: Progress | None = None,
    wait: float = 0.0,
    on_retry: Callable[[str], None] | None = None,
) -> Pulled:
    """Bring ``db`` up to date with the API, then publish the snapshot readers open.

    Creates and upgrades the file, holds its write lock (``wait`` seconds for
    it), refuses another server's file, caps DuckDB's memory, records the pull
    in ``sync_runs``; a pull that changed nothing keeps the current snapshot."""
    with (
        Store.writer(Path(db), wait=wait) as store,
        http.PrefectClient(api, on_retry=on_retry) as client,
    ):
        result = pull_runs(client, store, options, progress)
        changed = bool(result.inserted or result.updated or result.marked_deleted)
        return Pulled(result, publish(store, pull_id=result.pull_id, changed=changed))


def plan(
    db: Path,
    policy: Path,
    *,
    refresh: ApiSettings | None = None,
    live: bool = False,
    wait: float = 0.0,
    timeout: float | None = None,
    lock_context: str | None = None,
) -> Plan:
    """What ``policy`` would do to the runs in ``db``; changes nothing on the server.

    Reads the latest published snapshot (``live``: the live file). With
    ``refresh`` (the API to read from) every run the rules select is first
    re-read from the server into the live file, and the plan is made on it. Rule
    SQL always runs on a read-only, sandboxed connection. ``lock_context`` says how
    a lock on the live file is explained (``store.locks``)."""
    loaded = load_policy(policy)
    db = Path(db)
    if refresh is not None:
        # Which runs to re-read, from the live file opened read-only; the re-read on a
        # writable connection that runs no rule SQL; the plan read-only again.
        with Store.sandboxed(db, live=True, wait=wait, lock_context=locks.WRITE) as store:
            ids = selected_ids(make_plan(store, loaded))
        with (
            Store.writer(db, wait=wait, lock_context=locks.WRITE) as store,
            http.PrefectClient(refresh) as client,
        ):
            reread_runs(client, store, ids)
            publish(store)  # readers see the runs the refresh re-read
        with Store.sandboxed(db, live=True, wait=wait, lock_context=locks.WRITE) as store:
            made = make_plan(store, loaded, timeout=timeout)
        made.refreshed = len(ids)
        return made
    # `plan` reads the published snapshot (what the last pull or apply left); `apply`
    # decides on the live file, which equals that snapshot unless a pull is running.
    with Store.sandboxed(db, live=live, wait=wait, lock_context=lock_context) as store:
        return make_plan(store, loaded, timeout=timeout)


@dataclass
class Applied:
    """What an apply did: the plan it confirmed, its result (None: nothing to do, or not
    confirmed), and an error publishing the readers' snapshot after the calls."""

    plan: Plan
    result: ApplyResult | None
    confirmed: bool
    publish_error: FlowsyncError | None = None


def apply(
    db: Path,
    policy: Path,
    *,
    api: ApiSettings,
    confirm: Callable[[Plan], bool] | None = None,
    progress: Progress | None = None,
    wait: float = 0.0,
    memory_limit_mb: int | None = None,
    timeout: float | None = None,
    result: ApplyResult | None = None,
    on_retry: Callable[[str], None] | None = None,
    settle_seconds: float = SETTLE_SECONDS,
) -> Applied:
    """Plan ``policy`` on the live file, ask ``confirm`` (None: yes), apply it, publish.

    Every batch is re-read and re-decided right before its call (see
    ``flowsync.policy.apply``); DuckDB's memory is capped like a pull's. Pass
    ``result`` (``ApplyResult.new()``) to keep what was done when this raises:
    the outcomes are in it and in ``policy_actions`` whatever stops the apply."""
    db = Path(db)
    # apply has no --live: it always decides on the live file
    made = plan(db, policy, live=True, wait=wait, timeout=timeout, lock_context=locks.LIVE_ONLY)
    if made.total == 0:
        return Applied(made, None, confirmed=False)
    check_guards(made)
    if confirm is not None and not confirm(made):
        return Applied(made, None, confirmed=False)
    held = result or new_result(made)
    held.policy_sha256 = made.policy.sha256
    # Capped like a pull: uncapped, DuckDB kept every block the batches' writes touched
    # (977 MB for 10,000 deletes at a million runs).
    with (
        Store.sandboxed_writer(db, wait=wait, memory_limit_mb=memory_limit_mb) as store,
        http.PrefectClient(api, on_retry=on_retry) as client,
        store.memory_guard(),
    ):
        apply_plan(
            client, store, made, progress=progress, result=held, settle_seconds=settle_seconds
        )
        try:
            publish(store)  # readers (and the next `plan`) see what apply changed
        except FlowsyncError as e:
            # The calls are done and audited: the caller shows the summary, then this.
            return Applied(made, held, confirmed=True, publish_error=e)
    return Applied(made, held, confirmed=True)


@dataclass
class Exported:
    """What an export wrote, and for an object-store destination what it uploaded."""

    result: export_tables.ExportResult
    uploaded: objectstore.UploadResult | None = None


def export(
    db: Path,
    dest: str | Path,
    *,
    fmt: str = "parquet",
    tables: list[str] | None = None,
    since: datetime | None = None,
    live: bool = False,
    wait: float = 0.0,
) -> Exported:
    """The tables as Parquet partitioned by day under ``dest`` (a folder, or ``s3://``,
    ``gs://``, ``az://``), each partition replaced atomically, with a manifest; with
    ``since``, only the partitions changed since then. Reads the latest snapshot
    (``live``: the live file), so it never blocks a pull."""
    remote = objectstore.is_remote(str(dest))
    out_dir = Path(str(dest).removeprefix("file://"))
    if not remote:
        export_tables.check_request(out_dir, fmt, tables)
    with Store.reader(Path(db), live=live, wait=wait) as store:
        if remote:
            result, uploaded = objectstore.export_remote(
                store, str(dest), fmt=fmt, tables=tables, since=since
            )
            return Exported(result, uploaded)
        return Exported(export_tables.export(store, out_dir, fmt=fmt, tables=tables, since=since))
