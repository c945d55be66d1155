"""Published snapshots: a read-only copy of the DuckDB file that readers open instead of it.

Owns: publishing a snapshot of the live file (by its one writer, after a pull
or an apply) and finding the latest one, which ``Store.reader`` and
``Store.sandboxed`` open. DuckDB allows one
writing process per file or many readers, never both; so readers (notebooks,
``flowsync sql``/``report``/``plan``) open a copy, and the writer never waits
for them. Layout, next to the live file ``runs.duckdb``::

    runs.duckdb.snapshots/00000007.duckdb   a complete DuckDB file, never written again
    runs.duckdb.snapshots/00000007.json     what it holds: pull id, time, flowsync version
    runs.duckdb.snapshots/current           symlink to the latest generation

Publishing: ``CHECKPOINT`` (so the file holds every commit and the WAL is
empty), clone (reflink, where the filesystem shares blocks) or copy the file to a hidden temporary name (the writer holds the
lock, so nothing changes it meanwhile), fsync, rename it to its generation
name, then swap the ``current`` symlink with a rename. A reader resolves
``current`` once and opens that generation: it keeps that view for as long as
it stays open, even after the file is unlinked (POSIX keeps an open file
alive), and a new connection resolves ``current`` again, so it sees the new
pull. Generation numbers never repeat for a file: the next one is one more
than the highest of a counter kept in the live file (``sync_state``
``snapshot_generation``, committed before the copy), the folder and
``current``; so even after the snapshot folder is deleted, a new generation
gets a path no process has open, and DuckDB's per-path instance cache (which
hands a new connection an already-open database of the same path) never
hands back an old view. (Restoring an old copy of the live file could bring
an old counter back; the folder's numbers still move past it unless the
folder went too.)

A publisher killed at any point leaves ``current`` on the previous complete
generation; its leftovers are removed by the next publish. A damaged
``current`` (not a link, pointing at a missing file, or at a generation whose
size is not what was published) is rebuilt by the next writer (pull, apply,
``plan --refresh``) even when nothing changed; readers meanwhile get
``DamagedFileError`` saying what happened and what to run. Must not: know
about the API or the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flowsync import __version__
from flowsync.errors import DamagedFileError, StorageError, StoreError
from flowsync.store import sync_log
from flowsync.store.files import looks_like_duckdb, snapshot_dir
from flowsync.store.roles import Sandbox, Writer

__all__ = [
    "CURRENT",
    "PublishResult",
    "SnapshotInfo",
    "current",
    "damaged",
    "inspect",
    "publish",
    "snapshot_dir",
]

CURRENT = "current"
_GENERATION = re.compile(r"^(\d{8})\.duckdb$")
# Generations kept besides the current one: a reader that resolved ``current``
# just before a swap still finds its file to open.
KEEP_PREVIOUS = 1


# sync_state key: the last generation number published from this file (never reused).
GENERATION_KEY = "snapshot_generation"
# sync_state: when a notebook last opened the live file for writing (its writes leave no
# sync_runs record; the next publish must copy them).
OPENED_FOR_WRITING = "opened_for_writing_at"


@dataclass(frozen=True)
class SnapshotInfo:
    """One published generation and what it holds."""

    path: Path
    generation: int
    published_at: datetime
    pull_id: int | None
    flowsync_version: str
    migrations: int
    seconds: float
    bytes: int
    # A later pull that found nothing changed: the snapshot holds the server's runs as of
    # when that pull started (readers' last_pull_at(), ``Store._confirmed``). None: its own.
    confirmed_at: datetime | None = None
    # What published it, when no finished pull did (a first pull that stopped part-way).
    by: str | None = None

    def describe(self) -> str:
        """``snapshot 3 (pull #12, published 2026-12-06 01:02:03 UTC)``; by an apply or a
        ``plan --refresh``, which have no pull number, or what ``by`` says, it says so; a later
        pull that found nothing changed, too."""
        by = (
            f"pull #{self.pull_id}"
            if self.pull_id is not None
            else self.by or "by an apply or a refresh"
        )
        confirmed = (
            f"; unchanged as of the pull at {self.confirmed_at:%Y-%m-%d %H:%M:%S %Z}"
            if self.confirmed_at is not None
            else ""
        )
        return (
            f"snapshot {self.generation} ({by}, published "
            f"{self.published_at:%Y-%m-%d %H:%M:%S %Z}{confirmed})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "generation": self.generation,
            "published_at": self.published_at.isoformat(),
            "pull_id": self.pull_id,
            "flowsync_version": self.flowsync_version,
            "migrations": self.migrations,
            "seconds": round(self.seconds, 3),
            "bytes": self.bytes,
            "confirmed_at": self.confirmed_at.isoformat() if self.confirmed_at else None,
            "by": self.by,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SnapshotInfo:
        return cls(
            path=Path(data["path"]),
            generation=int(data["generation"]),
            published_at=datetime.fromisoformat(data["published_at"]),
            pull_id=data.get("pull_id"),
            flowsync_version=str(data.get("flowsync_version", "")),
            migrations=int(data.get("migrations", 0)),
            seconds=float(data.get("seconds", 0.0)),
            bytes=int(data.get("bytes", 0)),
            confirmed_at=(
                datetime.fromisoformat(data["confirmed_at"]) if data.get("confirmed_at") else None
            ),
            by=str(data["by"]) if data.get("by") else None,
        )


@dataclass(frozen=True)
class PublishResult:
    """``published`` is False when the current snapshot already held everything."""

    published: bool
    snapshot: SnapshotInfo
    seconds: float
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            **{k: v for k, v in self.snapshot.to_json().items() if k != "seconds"},
        }


def _info(path: Path) -> SnapshotInfo | None:
    """What the generation at ``path`` holds (from its .json), or None if it is no generation."""
    try:
        data = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        data["path"] = str(path)
        return SnapshotInfo.from_json(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        # The metadata is a convenience (damaged, or of another shape: another flowsync's);
        # the generation file is what counts.
        m = _GENERATION.match(path.name)
        if not m:
            return None
        return SnapshotInfo(
            path, int(m.group(1)), datetime.fromtimestamp(0, timezone.utc), None, "", 0, 0.0, 0
        )


def inspect(db: Path) -> tuple[SnapshotInfo | None, str]:
    """The latest published generation of ``db`` and what is wrong with its pointer.

    ``(None, "")``: nothing published yet. ``(info, "")``: a sound pointer. A
    problem (``current`` is not a link, points at a missing or short file) comes
    back as text, with the generation it names when there is one.
    """
    folder = snapshot_dir(Path(db))
    pointer = folder / CURRENT
    try:
        target = os.readlink(pointer)
    except (FileNotFoundError, NotADirectoryError):
        return None, ""
    except OSError as e:  # EINVAL: a file or directory, not a link
        if pointer.exists():
            return None, f"{pointer} is not a link to a snapshot"
        return None, f"cannot read the snapshot pointer {pointer} ({e.strerror})"
    path = folder / target
    info = _info(path)
    if info is None:
        return None, f"{pointer} points at {target}, which is not a snapshot"
    try:
        size = path.stat().st_size
    except OSError:
        return info, f"{pointer} points at {path.name}, which is missing"
    if info.bytes and size != info.bytes:
        what = "truncated" if size < info.bytes else "written to after it was published"
        return info, f"{path} is {size:,} bytes where {info.bytes:,} were published ({what})"
    if not looks_like_duckdb(path):
        return info, f"{path} is not a DuckDB file any more (its header is gone)"
    return info, ""


def damaged(db: Path, problem: str) -> DamagedFileError:
    return DamagedFileError(
        f"The published snapshot of {db} is damaged: {problem}. Run `flowsync pull --db {db}` "
        "to publish a new one, or read the live file (--live).",
        path=str(snapshot_dir(Path(db)) / CURRENT),
        detail=problem,
    )


def current(db: Path) -> SnapshotInfo | None:
    """The latest published generation of ``db``, or None if none was published.

    A damaged pointer raises ``DamagedFileError`` (what happened, what to run)."""
    info, problem = inspect(db)
    if problem:
        raise damaged(Path(db), problem)
    return info


def _generations(folder: Path) -> list[int]:
    found = []
    for entry in folder.iterdir() if folder.is_dir() else []:
        m = _GENERATION.match(entry.name)
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Linux ioctl FICLONE: share the file's blocks (btrfs, XFS with reflink, bcachefs); writes
# to either file then copy only the blocks they touch, so publishing costs what changed.
_FICLONE = 0x40049409


def _reflink(src: Path, dest: Path) -> bool:
    try:
        import fcntl
    except ImportError:  # not on this platform
        return False
    try:
        with src.open("rb") as s, dest.open("wb") as d:
            fcntl.ioctl(d.fileno(), _FICLONE, s.fileno())
        return True
    except OSError:  # ext4, tmpfs, another filesystem: copy the bytes instead
        dest.unlink(missing_ok=True)
        return False


def _copy(src: Path, dest: Path) -> None:
    """Clone the file where the filesystem can, else copy its bytes (``sendfile``); then fsync."""
    if not _reflink(src, dest):
        shutil.copyfile(src, dest)
    with dest.open("rb+") as f:
        os.fsync(f.fileno())


def _readable(store: Writer, info: SnapshotInfo) -> bool:
    """The generation opens and answers (a no-change pull keeps it only then).

    Attached to the writer's own connection: opening a second DuckDB instance cost
    75-200 ms on a loaded 2-core machine, an ATTACH 10-40 ms. A sandboxed store (no
    files) relies on ``inspect``'s size and header check alone."""
    if isinstance(store, Sandbox):
        return True
    try:
        store.execute("ATTACH ? AS _flowsync_snapshot_check (READ_ONLY)", [str(info.path)])
        try:
            store.execute("SELECT count(*) FROM _flowsync_snapshot_check._flowsync_migrations")
        finally:
            store.execute("DETACH _flowsync_snapshot_check")
    except StoreError:
        return False
    return True


def _next_generation(store: Writer, folder: Path, latest: SnapshotInfo | None) -> int:
    """One more than any number this file ever published: never a path seen before."""
    counted = sync_log.get_state(store, GENERATION_KEY) or 0
    return max([*_generations(folder), latest.generation if latest else 0, int(counted)]) + 1


def _nothing_written_since(store: Writer, latest: SnapshotInfo) -> bool:
    """Every ``sync_runs`` record after the pull that published the snapshot is a pull that
    finished and wrote no row (nor found its server changed: ``server_changed`` in its
    details), or one that never reached the server (an apply, a refresh, a
    failed or killed pull may have written), and no notebook opened the file for writing
    since it was published (``flowsync.connect(read_only=False)``: ``OPENED_FOR_WRITING``)."""
    if latest.pull_id is None:  # published by an apply or a refresh: not known
        return False
    opened = sync_log.get_state(store, OPENED_FOR_WRITING)
    if opened is not None and datetime.fromisoformat(str(opened)) >= latest.published_at:
        return False
    written = store.execute(
        f"""
        SELECT count(*) FROM sync_runs
        WHERE id > ? AND NOT ({sync_log.UNREACHED})
          AND NOT (status = 'ok' AND mode IN ('full', 'incremental')
              AND coalesce(inserted, 0) + coalesce(updated, 0) + coalesce(marked_deleted, 0) = 0
              AND coalesce(TRY_CAST(json_extract_string(details, '$.server_changed') AS BOOLEAN),
                           false) = false)
        """,
        [latest.pull_id],
    ).scalar()
    return int(written or 0) == 0


def _confirm(store: Writer, latest: SnapshotInfo) -> SnapshotInfo:
    """The kept snapshot, confirmed by the pull that found nothing changed: its metadata
    says when that pull started (readers' ``last_pull_at()``: a run due since the snapshot
    was published and still not started counts as waiting now). Written by a rename, as
    its first; a failure leaves the earlier metadata, as stale as before."""
    at = sync_log.last_pull_at(store)
    if at is None or (latest.confirmed_at is not None and at <= latest.confirmed_at):
        return latest
    confirmed = replace(latest, confirmed_at=at)
    meta = latest.path.with_suffix(".json")
    tmp = meta.with_name(f".{meta.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(confirmed.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, meta)
    except OSError:
        tmp.unlink(missing_ok=True)
        return latest
    return confirmed


def publish(
    store: Writer, *, pull_id: int | None = None, changed: bool = True, by: str | None = None
) -> PublishResult:
    """Publish the live file as a new snapshot generation; the caller is its only writer.

    ``changed=False`` (a pull that wrote no rows) keeps the current snapshot
    when it was published by this flowsync version from the same schema, still
    opens, and nothing wrote the file since the pull that published it
    (``_nothing_written_since``: a publish that failed, or a pull or apply killed
    before its publish, left rows readers have not seen), so a no-change pull
    costs no copy. A damaged ``current`` is replaced (``reason`` says so).
    """
    began = time.monotonic()
    folder = snapshot_dir(store.path)
    migrations = len(store.applied_migrations())
    latest, problem = inspect(store.path)
    if (
        not changed
        and not problem
        and latest is not None
        and latest.flowsync_version == __version__
        and latest.migrations == migrations
        and _nothing_written_since(store, latest)
        and _readable(store, latest)
    ):
        return PublishResult(
            False,
            _confirm(store, latest),
            time.monotonic() - began,
            "nothing changed since the last snapshot",
        )
    reason = f"replaced a damaged snapshot: {problem}" if problem else ""
    if folder.exists() and not folder.is_dir():
        raise StoreError(
            f"Cannot publish a snapshot of {store.path}: {folder} is a file, not its snapshot "
            "folder. What the pull or apply wrote is saved; move that file away, then pull again."
        )
    try:
        folder.mkdir(exist_ok=True)
        _remove_leftovers(folder)
        generation = _next_generation(store, folder, latest)
        try:
            with store.transaction():  # committed first: a failed publish only skips a number
                sync_log.set_state(store, GENERATION_KEY, generation)
            with store._errors("CHECKPOINT"):
                store._con.execute("CHECKPOINT")
        except StorageError as e:
            raise StorageError(
                f"Cannot publish a snapshot of {store.path}: {e.detail}. What the pull or apply wrote is saved "
                "(in the file's write-ahead log); free disk space or fix permissions, then pull again.",
                path=e.path,
                reason=e.reason,
                detail=e.detail,
            ) from e
        name = f"{generation:08d}.duckdb"
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        try:
            _copy(store.path, tmp)
            info = SnapshotInfo(
                path=folder / name,
                generation=generation,
                published_at=datetime.now(timezone.utc),
                pull_id=pull_id,
                by=by,
                flowsync_version=__version__,
                migrations=migrations,
                seconds=time.monotonic() - began,
                bytes=tmp.stat().st_size,
            )
            meta_tmp = folder / f".{generation:08d}.json.tmp-{os.getpid()}"
            meta_tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n", encoding="utf-8")
            os.replace(meta_tmp, folder / f"{generation:08d}.json")
            os.replace(tmp, folder / name)
            link_tmp = folder / f".{CURRENT}.tmp-{os.getpid()}"
            link_tmp.unlink(missing_ok=True)
            os.symlink(name, link_tmp)
            pointer = folder / CURRENT
            if pointer.is_dir() and not pointer.is_symlink():
                # Not ours to delete: set aside, where the user can look at it.
                os.replace(pointer, folder / f"{CURRENT}.not-a-link-{generation:08d}")
            os.replace(link_tmp, pointer)  # the one step readers see
            _fsync_dir(folder)
        finally:
            tmp.unlink(missing_ok=True)
        _remove_old(folder, generation)
    except OSError as e:
        raise StoreError(
            f"Cannot publish a snapshot of {store.path} in {folder}: {e.strerror or e}. "
            "What the pull or apply wrote is saved; free disk space or fix permissions, then pull again."
        ) from e
    return PublishResult(True, info, time.monotonic() - began, reason)


@contextlib.contextmanager
def second_name(path: Path) -> Iterator[Path | None]:
    """Another name for the published generation ``path``, for one open, or None.

    DuckDB keeps one instance a path in a process and refuses a second open of it with
    other settings: a notebook's ``flowsync.connect()`` (the defaults) and a plan's rule
    SQL (locked settings) on one generation. A hard link is another path to the same file,
    which is never written again. It is unlinked once the caller opened it (the open keeps
    the file); one a killed process left is a leftover the next publish removes. None for
    anything but a generation (the live file is written to: never a second name) or where
    the file system refuses links."""
    if not (path.parent.name.endswith(".snapshots") and _GENERATION.match(path.name)):
        yield None
        return
    link = path.parent / f".{path.stem}.tmp-open-{os.getpid()}-{secrets.token_hex(4)}.duckdb"
    try:
        os.link(path, link)
    except OSError:
        yield None
        return
    try:
        yield link
    finally:
        link.unlink(missing_ok=True)


def _remove_leftovers(folder: Path) -> None:
    """Temporary files of a publisher that died (only one writer runs at a time), and second
    names of generations (``second_name``) a killed reader left."""
    for entry in folder.iterdir():
        if entry.name.startswith(".") and ".tmp-" in entry.name:
            entry.unlink(missing_ok=True)


def _remove_old(folder: Path, newest: int) -> None:
    # An open reader keeps its unlinked generation readable (POSIX); where the OS
    # refuses to remove an open file, the next publish tries again.
    for generation in _generations(folder):
        if generation < newest - KEEP_PREVIOUS:
            for suffix in (".duckdb", ".json", ".duckdb.wal"):
                with contextlib.suppress(OSError):
                    (folder / f"{generation:08d}{suffix}").unlink(missing_ok=True)
