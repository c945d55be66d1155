"""Published snapshots: a read-only copy of the DuckDB file that readers open instead of it.

Owns: publishing a snapshot of the live file (by its one writer, after a pull
or an apply) and opening the latest one for readers. DuckDB allows one
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
pull. Each generation has its own path, so DuckDB's per-path instance cache
never hands a new connection an old view. A publisher killed at any point
leaves ``current`` on the previous complete generation; its leftovers are
removed by the next publish. Must not: know about the API or the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flowsync import __version__
from flowsync.errors import StoreError, StoreLockedError
from flowsync.store.connect import Store

CURRENT = "current"
_GENERATION = re.compile(r"^(\d{8})\.duckdb$")
# Generations kept besides the current one: a reader that resolved ``current``
# just before a swap still finds its file to open.
KEEP_PREVIOUS = 1


def snapshot_dir(db: Path) -> Path:
    """``runs.duckdb`` -> ``runs.duckdb.snapshots``."""
    return db.with_name(db.name + ".snapshots")


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


def current(db: Path) -> SnapshotInfo | None:
    """The latest published generation of ``db``, or None if none was published."""
    folder = snapshot_dir(Path(db))
    try:
        target = os.readlink(folder / CURRENT)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise StoreError(
            f"Cannot read the snapshot pointer {folder / CURRENT}: {e.strerror}."
        ) from e
    path = folder / target
    try:
        data = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        data["path"] = str(path)
        return SnapshotInfo.from_json(data)
    except (OSError, ValueError, KeyError):
        # The metadata is a convenience; the generation file is what counts.
        m = _GENERATION.match(path.name)
        if not m:
            return None
        return SnapshotInfo(
            path, int(m.group(1)), datetime.fromtimestamp(0, timezone.utc), None, "", 0, 0.0, 0
        )


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


def publish(store: Store, *, pull_id: int | None = None, changed: bool = True) -> PublishResult:
    """Publish the live file as a new snapshot generation; the caller is its only writer.

    ``changed=False`` (a pull that wrote no rows) keeps the current snapshot
    when it was published by this flowsync version from the same schema, so a
    no-change pull costs no copy.
    """
    if store.read_only:
        raise StoreError(f"{store.path} is open read-only; only its writer publishes snapshots.")
    began = time.monotonic()
    folder = snapshot_dir(store.path)
    migrations = len(store.applied_migrations())
    latest = current(store.path)
    if (
        not changed
        and latest is not None
        and latest.path.exists()
        and latest.flowsync_version == __version__
        and latest.migrations == migrations
    ):
        return PublishResult(
            False, latest, time.monotonic() - began, "nothing changed since the last snapshot"
        )
    try:
        folder.mkdir(exist_ok=True)
        _remove_leftovers(folder)
        generation = max([*_generations(folder), latest.generation if latest else 0]) + 1
        name = f"{generation:08d}.duckdb"
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        try:
            store._con.execute("CHECKPOINT")
            _copy(store.path, tmp)
            info = SnapshotInfo(
                path=folder / name,
                generation=generation,
                published_at=datetime.now(timezone.utc),
                pull_id=pull_id,
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
            os.replace(link_tmp, folder / CURRENT)  # the one step readers see
            _fsync_dir(folder)
        finally:
            tmp.unlink(missing_ok=True)
        _remove_old(folder, generation)
    except OSError as e:
        raise StoreError(
            f"Cannot publish a snapshot of {store.path} in {folder}: {e.strerror or e}. "
            "The pull itself is saved; free disk space or fix permissions, then pull again."
        ) from e
    return PublishResult(True, info, time.monotonic() - began)


def _remove_leftovers(folder: Path) -> None:
    """Temporary files of a publisher that died (only one writer runs at a time)."""
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


def open_latest(db: Path, *, attempts: int = 5, sandbox: bool = False) -> Store | None:
    """A read-only Store on the latest snapshot of ``db``, or None if none was published.

    ``sandbox``: files, network and extensions off (for policy rule SQL; see ``Store.open``)."""
    for _ in range(attempts):
        info = current(db)
        if info is None:
            return None
        try:
            return Store.open(info.path, read_only=True, sandbox=sandbox)
        except StoreError:
            # Removed between resolving ``current`` and opening it: a newer one exists.
            if info.path.exists():
                raise
    raise StoreError(
        f"The snapshots of {db} changed {attempts} times while opening one; try again."
    )


def open_for_reading(
    db: Path, *, live: bool = False, wait: float = 0.0, sandbox: bool = False
) -> Store:
    """What readers open: the latest snapshot, or the live file with ``live`` or before any publish.

    A file last written by an older flowsync has no snapshot yet; reading it
    live is what that version did (its next pull publishes one).
    """
    db = Path(db)
    if live:
        return Store.open(db, read_only=True, wait=wait, sandbox=sandbox)
    store = open_latest(db, sandbox=sandbox)
    if store is not None:
        return store
    try:
        return Store.open(db, read_only=True, wait=wait, sandbox=sandbox)
    except StoreLockedError as e:
        raise StoreLockedError(
            f"{db} has no published snapshot yet and is held by {e.holder_role if e.holder_role != 'unknown' else 'another process'}"
            + (f" (PID {e.holder_pid})" if e.holder_pid else "")
            + "; the first pull of this flowsync version publishes one when it finishes: wait with --wait SECONDS.",
            holder_pid=e.holder_pid,
            holder_role=e.holder_role,
        ) from e
