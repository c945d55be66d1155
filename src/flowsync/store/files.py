"""The DuckDB file as the filesystem holds it: checked before DuckDB opens it, and its faults.

Owns: refusing a path that cannot be flowsync's file (DuckDB's ``:memory:`` and
MotherDuck names, a directory, a missing folder, an empty or non-DuckDB file) before DuckDB touches it, and turning the
disk refusing a write (full, read-only, no permission: ``StorageError``) or a
truncated or corrupt file (``DamagedFileError``, naming the remedy: restore the
last snapshot, or pull again) into typed errors. The one place that reads
those words in DuckDB's and the OS's messages. Must not: open a connection
(``store/connect.py`` does) or know about the API.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import duckdb

from flowsync.errors import (
    ConfigError,
    DamagedFileError,
    StorageError,
    StoreError,
    StoreLockedError,
)

DUCKDB_MAGIC_OFFSET = 8
DUCKDB_MAGIC = b"DUCK"
SNAPSHOTS_SUFFIX = ".snapshots"


def owner_alive(pid: int) -> bool:
    """Process ``pid`` runs (here): the owner of a temporary file or folder (a plan's runs,
    an export's parts) that only a process killed before it removed them leaves behind."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def snapshot_dir(db: Path) -> Path:
    """``runs.duckdb`` -> ``runs.duckdb.snapshots`` (where ``store/snapshot.py`` publishes),
    beside the file a link names. A path with no file name (``.``, ``/``) is refused as the directory it is."""
    if not db.name:
        raise _a_directory(db)
    # Beside the file itself: a --db given through a symbolic link publishes where readers
    # of the file's own path look (the lock is the file's own already).
    real = Path(os.path.realpath(db))
    return real.with_name(real.name + SNAPSHOTS_SUFFIX)


def _a_directory(path: Path) -> StoreError:
    return StoreError(
        f"--db {path} is a directory; pass a file path such as {path / 'flowsync.duckdb'}."
    )


def damaged_error(path: Path, detail: str) -> DamagedFileError:
    """A truncated or corrupt file, with the remedy that fits: a snapshot is replaced by the
    next pull; the live file is restored from its last snapshot, or moved away and re-pulled."""
    path = Path(path)
    if path.parent.name.endswith(SNAPSHOTS_SUFFIX):
        live = path.parent.with_name(path.parent.name[: -len(SNAPSHOTS_SUFFIX)])
        return DamagedFileError(
            f"The published snapshot {path} is damaged ({detail}); run `flowsync pull --db {live}` "
            "to publish a new one, or read the live file (--live).",
            path=str(path),
            detail=detail,
        )
    last = snapshot_dir(path) / "current"
    target = Path(os.path.realpath(last)) if last.is_symlink() else None
    if target is not None and target.is_file():
        restore = f"restore it from the last snapshot (cp {target} {path}), or move it away and"
    else:
        restore = "move it away and"
    return DamagedFileError(
        f"{path} is damaged ({detail}): {restore} run `flowsync pull --db {path}` to read the "
        "history again from the server.",
        path=str(path),
        detail=detail,
    )


def check_creatable(path: Path) -> None:
    """A writer's file that does not exist yet: its place refused as the writer's open would
    refuse it (a directory, a missing folder, a folder the filesystem or this user will not
    let it be made in; through a symbolic link, where it leads), leaving nothing behind: a
    probe file of a name of its own is made beside it and removed at once (never the file's
    name: a process killed in between, or another first pull, would find it empty)."""
    if path.is_symlink():
        real = Path(os.path.realpath(path))
        if real.is_symlink() or real == path:
            raise StoreError(
                f"--db {path} is a symbolic link that leads to no file; choose another --db."
            )
        path = real
    check_path(path, read_only=False)
    try:
        fd, probe = tempfile.mkstemp(prefix=".flowsync-probe-", dir=path.parent)
    except OSError as e:
        known = storage_error(path, e)
        raise known or StoreError(
            f"Cannot create {path}: {e.strerror or e}. Choose another --db."
        ) from e
    os.close(fd)
    os.unlink(probe)


# (words in the message, StorageError.reason, the one line: {path}, {name}, {parent}, {detail})
_REFUSALS = (
    (
        ("No space left on device", "Disk quota exceeded", "File too large"),
        "full",
        "The disk holding {path} is full ({detail}); nothing from this step was saved. "
        "Free disk space, then run the command again.",
    ),
    (
        ("Read-only file system",),
        "read-only",
        "Cannot write {path}: a read-only filesystem refused it or its write-ahead log "
        "{name}.wal ({detail}). Remount it read-write, or choose another --db.",
    ),
    (
        ("Permission denied", "Operation not permitted"),
        "permission",
        "Cannot write {path} or its write-ahead log {path}.wal in {parent} "
        "(permission denied: {detail}). Make the file and its directory writable for this "
        "user, or choose another --db.",
    ),
)
_DAMAGED = (
    "Could not read enough bytes",
    "Corrupt database file",
    "not a valid DuckDB database",
)


def first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def storage_error(path: Path, e: BaseException, *, query: bool = False) -> StoreError | None:
    """The typed error for a filesystem or corruption failure in ``e`` (DuckDB's or the OS's),
    or None when ``e`` is something else. The one place that reads those words.

    ``query``: ``e`` came from a statement, where a user's own ``COPY`` can meet a full
    disk too; only failures on this file (or its WAL, or at COMMIT) are the file's."""
    text = str(e)
    detail = first_line(e) if isinstance(e, Exception) else text
    if isinstance(e, OSError) and e.strerror:
        detail = e.strerror
    if "Corrupt database file" in text:  # DuckDB's checksum of a block of this file
        return damaged_error(path, detail)
    if query and not (path.name in text or "Failed to commit" in text or "invalidated" in text):
        return None
    if "storage version" in text and "newer version of DuckDB" in text:
        return StoreError(
            f"{path} was written by a newer DuckDB than this flowsync's DuckDB "
            f"{duckdb.__version__} reads ({detail}); upgrade flowsync and duckdb "
            "(pip install -U flowsync duckdb) where this command runs, or use another --db."
        )
    for words, reason, line in _REFUSALS:
        if any(w in text for w in words):
            message = line.format(path=path, name=path.name, parent=path.parent, detail=detail)
            return StorageError(message, path=str(path), reason=reason, detail=detail)
    if any(w in text for w in _DAMAGED):
        return damaged_error(path, detail)
    if "database has been invalidated" in text or "Could not write file" in text:
        return StorageError(
            f"Writing {path} failed ({detail}); nothing from this step was saved. "
            "Check the disk, then run the command again.",
            path=str(path),
            reason="io",
            detail=detail,
        )
    return None


# Names DuckDB reads as no file: its in-memory database, MotherDuck's databases.
DUCKDB_SPECIAL_NAMES = (":memory:", "md:", "motherduck:")


def published_by(path: Path) -> Path | None:
    """The live file whose snapshot folder holds ``path`` (``runs.duckdb.snapshots/current``,
    a generation, or a new name there; through symbolic links, where it leads), else None."""
    folder = Path(os.path.realpath(path)).parent
    if not folder.name.endswith(SNAPSHOTS_SUFFIX):
        return None
    live = folder.with_name(folder.name[: -len(SNAPSHOTS_SUFFIX)])
    return live if live.is_file() else None


def check_not_snapshot(path: Path) -> None:
    """Refuse to write in a published snapshot's folder: the snapshot readers open would be
    changed under them (reported damaged), and the pull's rows kept out of the live file."""
    live = published_by(path)
    if live is not None:
        raise StoreError(
            f"--db {path} is in the published snapshot folder of {live}, which readers open "
            f"and flowsync never writes to; pass the live file: --db {live}."
        )


def looks_like_duckdb(path: Path) -> bool:
    """Whether ``path`` starts as a DuckDB database does (False if it cannot be read)."""
    try:
        with path.open("rb") as f:
            head = f.read(DUCKDB_MAGIC_OFFSET + len(DUCKDB_MAGIC))
    except OSError:
        return False
    return head[DUCKDB_MAGIC_OFFSET:] == DUCKDB_MAGIC


def check_not_a_database(path: Path, option: str) -> None:
    """Refuse a command's output file (``--output``, ``--html``) that would replace a DuckDB
    file (the live file, through a link too, or any other) or land in a published snapshot
    folder: a report or a query written over ``runs.duckdb`` loses the history."""
    real = Path(os.path.realpath(path))
    live = published_by(real)
    if live is not None:
        raise ConfigError(
            f"{option} {path} is in the published snapshot folder of {live}, which readers "
            "open; name a file elsewhere."
        )
    # not there yet, or no file (a pipe is never opened here: it would wait); an unreadable
    # file is left to the write to say what is wrong
    if real.is_file() and looks_like_duckdb(real):
        raise ConfigError(
            f"{option} {path} is a DuckDB database, which the output would replace; name "
            "another file (the database to read goes in --db)."
        )


# DuckDB creates a file, then writes its header: a file with nothing where it goes, written
# this recently, is taken to be one another flowsync is creating (a first pull a moment ago).
CREATING_FOR = 10.0


def _being_created(path: Path) -> None:
    """``StoreLockedError`` (the opener waits for it, as for a lock) when ``path``, empty or
    zeros where DuckDB's header goes, was written within ``CREATING_FOR`` s."""
    age = time.time() - path.stat().st_mtime
    if -1.0 <= age <= CREATING_FOR:
        raise StoreLockedError(
            f"{path} holds no database yet and was written {max(age, 0):.1f} s ago: another "
            "flowsync (a first pull) is likely creating it; wait for it (--wait SECONDS). If "
            "nothing is, remove it or choose another --db.",
        )


def check_path(path: Path, *, read_only: bool) -> None:
    """Refuse what cannot be flowsync's file before DuckDB touches it (so nothing is written
    to it): one of DuckDB's special names, a directory, a pipe or a device, a missing folder,
    a file that is empty or not DuckDB's; a writer also a path in a published snapshot's
    folder; a reader a file that does not exist yet."""
    if str(path).lower().startswith(DUCKDB_SPECIAL_NAMES):
        raise StoreError(
            f"--db {path} is no file to DuckDB (its in-memory database, or MotherDuck's): "
            "flowsync keeps the history in a file; pass a file path such as ./flowsync.duckdb "
            "(an absolute one for a name that starts so)."
        )
    if path.is_dir():
        raise _a_directory(path)
    if path.exists() and not path.is_file():
        # Reading a pipe's header waits for a writer that may never come; a device is no
        # file to remove.
        raise StoreError(
            f"--db {path} is not a regular file (a pipe, a device or a socket); pass a file "
            "path such as ./flowsync.duckdb."
        )
    if not read_only:
        check_not_snapshot(path)
    if read_only and not path.exists():
        raise StoreError(f"{path} does not exist: run `flowsync pull --db {path}` first.")
    if not path.parent.exists():
        raise StoreError(
            f"Directory {path.parent} does not exist: create it or choose another --db."
        )
    if path.exists():
        try:
            with path.open("rb") as f:
                head = f.read(DUCKDB_MAGIC_OFFSET + 4)
        except OSError as e:
            raise StoreError(
                f"Cannot read {path}: {e.strerror}. Check its permissions or choose another --db."
            ) from e
        if not head.strip(b"\0"):  # empty, or nothing written yet where the header goes
            _being_created(path)
        if path.stat().st_size > 0 and head[DUCKDB_MAGIC_OFFSET:] != DUCKDB_MAGIC:
            raise StoreError(f"{path} is not a DuckDB database; choose another --db path.")
        if path.stat().st_size == 0:
            raise StoreError(
                f"{path} is an empty file, not a DuckDB database; remove it or choose another --db."
            )
