"""``export``: the synced tables as day-partitioned Parquet, for warehouses, Spark, Trino.

Owns: the layout of an export directory and its manifest. Layout (hive style)::

    DIR/flows/part-0.parquet                      (small: one file)
    DIR/deployments/part-0.parquet
    DIR/flow_runs/date=YYYY-MM-DD/part-0.parquet  (UTC day of expected_start_time)
    DIR/_flowsync_manifest.json                   (files and row counts on disk, the source)

Flow runs are partitioned by the UTC day of ``expected_start_time`` (the day a
run was meant to start, what analysts filter on), or ``created`` for a run that
never had a state. Prefect sets ``expected_start_time`` once, at a run's first
state, and never moves it (retries and reschedules change
``next_scheduled_start_time``), so a run stays in one partition; the one move
possible, from its created day once it gets a first state, is covered because
``--since`` rewrites both days of every changed run. Every partition is one file. An
export first writes all of its files whole under ``DIR/.flowsync-tmp/`` (outside the
table folders: a reader of a folder never meets one, and the next export removes
those a killed one left), then renames them over the old ones and writes the
manifest, the old files kept aside until the manifest is in place: an export that
fails (a file it cannot write, a rename, the manifest) leaves the export there as
it was, and a reader sees the old or the new partition, never half of one;
re-running replaces rather than adds. Only a SIGKILL in the renames (milliseconds,
once everything is written) can leave some partitions new under the old manifest;
the next export puts that right. The staging needs room for one whole export
beside the old one. A
full export removes the partitions the DB no longer has (their ``part-0.parquet``,
never a file it did not write) after its manifest is in place, so the manifest there at any time lists only files that are there.
Runs deleted on the server are exported too, with ``deleted_at`` set.

An export mirrors one file: the manifest names its ``source`` (the DuckDB file,
resolved, and the server it was pulled from), and an export into a destination
whose manifest names another file or server, or from a file with no completed
pull into a destination that holds an export, is refused before anything is
written (a full export would delete every partition the other file does not
have); ``replace`` (``--replace``) takes a destination over with a full export.
An export a newer flowsync wrote (its manifest's ``flowsync_version``) is refused
too, unless ``replace``.

Must not: print, or run SQL itself (the store's ``parquet`` module does).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from flowsync import __version__
from flowsync.errors import ConfigError, StoreError, StoreLockedError
from flowsync.progress import NullProgress, Progress
from flowsync.store import Store, parquet, sync_log, synced_tables
from flowsync.store.connect import version_key
from flowsync.store.files import owner_alive
from flowsync.store.locks import after_waiting

FORMATS = ("parquet",)
# table -> the columns whose first non-null value's UTC day names its partition (empty: one file)
PARTITION_BY: dict[str, tuple[str, ...]] = {
    "flows": (),
    "deployments": (),
    "flow_runs": ("expected_start_time", "created"),
}
TABLES = tuple(PARTITION_BY)
PART_FILE = "part-0.parquet"
TMP_DIR = ".flowsync-tmp"  # files being written, renamed into the table folders when whole
MANIFEST = "_flowsync_manifest.json"
_PARTITION_DIR = re.compile(r"^date=\d{4}-\d{2}-\d{2}$")
# A published snapshot of DB: DB.snapshots/00000007.duckdb (flowsync.store.snapshot)
_SNAPSHOT = re.compile(r"^(?P<db>.+)\.snapshots[/\\]\d+\.duckdb$")


@dataclass(frozen=True)
class Source:
    """What an export is of: the DuckDB file (resolved; the live file, not a snapshot of
    it), the server it is bound to (None before its first pull) and the URLs that server
    had before (the file followed it, ``flowsync.sync.identity``); ``pulled``: it has a
    completed pull."""

    db: str
    api_url: str | None
    earlier_urls: tuple[str, ...] = ()
    pulled: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"db": self.db, "api_url": self.api_url}

    def describe(self) -> str:
        return f"{self.db} ({self.api_url})" if self.api_url else self.db


def _live_path(path: str | Path) -> str:
    """The file ``path`` is (or is a published snapshot of), resolved."""
    m = _SNAPSHOT.match(str(path))
    return str(Path(m.group("db") if m else path).resolve())


def source_of(store: Store, db: str | Path | None = None) -> Source:
    """The source an export of ``store`` (opened from ``db``, default its own path) names."""
    api_url = sync_log.read_state(store, "api_url")  # flowsync.sync.identity.URL_KEY
    if api_url is None:  # not bound yet: the server of the last pull, if any
        api_url = (sync_log.status_summary(store)["last_pull"] or {}).get("api_url")
    moves = sync_log.read_state(store, "api_url_moves") or []  # identity.MOVES_KEY
    return Source(
        _live_path(db if db is not None else store.path),
        str(api_url) if api_url else None,
        tuple(str(m.get("from")) for m in moves if isinstance(m, dict) and m.get("from")),
        sync_log.last_pull_at(store) is not None,
    )


def manifest_source(manifest: dict[str, Any]) -> Source:
    """The source a manifest names; one written before manifests had ``source`` names
    the file it read (``source_db``, maybe a snapshot of it)."""
    found = manifest.get("source")
    if isinstance(found, dict) and found.get("db"):
        api_url = found.get("api_url")
        return Source(str(found["db"]), str(api_url) if api_url else None)
    db = manifest.get("source_db")
    if db and not Path(_SNAPSHOT.sub(r"\g<db>", str(db))).is_absolute():
        # as it was given to that export (relative to where it ran): its name is what is known
        return Source(Path(_SNAPSHOT.sub(r"\g<db>", str(db))).name, None)
    return Source(_live_path(db) if db else "an unknown file", None)


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest in ``out_dir`` (``{}`` when unreadable), None when there is none."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def holds_export(out_dir: Path) -> bool:
    """``out_dir`` has a manifest or a table's Parquet file."""
    return (out_dir / MANIFEST).exists() or any(
        next((out_dir / name).rglob("*.parquet"), None) is not None
        for name in TABLES
        if (out_dir / name).is_dir()
    )


def _own_empty(manifest: dict[str, Any] | None, source: Source) -> bool:
    """``manifest`` is of an export of ``source`` that holds no rows."""
    if manifest is None or manifest_source(manifest).db != source.db:
        return False
    tables = manifest.get("tables")
    if not isinstance(tables, dict):
        return False
    return all(isinstance(t, dict) and t.get("rows") == 0 for t in tables.values())


def check_source(manifest: dict[str, Any] | None, holds: bool, source: Source, where: str) -> None:
    """Refuse to export ``source`` into ``where`` when that would replace an export of
    another file or server (its ``manifest``), or when ``source`` has no completed pull
    and ``where`` ``holds`` an export: a full export would remove its partitions; or when
    a newer flowsync wrote that export (a layout this version does not know)."""
    written_by = (manifest or {}).get("flowsync_version")
    if isinstance(written_by, str) and version_key(written_by) > version_key(__version__):
        raise ConfigError(
            f"{where} holds an export written by flowsync {written_by}, newer than this "
            f"flowsync {__version__}; upgrade flowsync (pip install -U flowsync) where this "
            "command runs, or export to another destination."
        )
    if not source.pulled and (holds or manifest is not None) and not _own_empty(manifest, source):
        raise ConfigError(
            f"{source.db} has no completed pull, and exporting it would empty the export in "
            f"{where}; run flowsync pull with --db {source.db} first, export to another "
            "destination, or pass --replace to replace that export."
        )
    if manifest is None:
        return
    theirs = manifest_source(manifest)
    named = theirs.db == source.db or (
        not Path(theirs.db).is_absolute() and theirs.db == Path(source.db).name
    )
    same = named and (
        theirs.api_url is None
        or source.api_url is None
        or theirs.api_url in (source.api_url, *source.earlier_urls)
    )
    if not same:
        raise ConfigError(
            f"{where} holds an export of {theirs.describe()}, not of {source.describe()}; "
            "export to another destination, or pass --replace to replace that export "
            "(partitions this file does not have are deleted)."
        )


@dataclass
class TableExport:
    name: str
    partition_by: tuple[str, ...]
    rows_written: int = 0
    files_written: list[str] = field(default_factory=list)
    partitions_removed: list[str] = field(default_factory=list)
    # the partition folders (``date=...``) the table holds: any other is stale
    partitions: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "partition_by": describe_partitioning(self.name),
            "rows_written": self.rows_written,
            "files_written": len(self.files_written),
            "partitions_removed": self.partitions_removed,
        }


@dataclass
class ExportResult:
    out_dir: Path
    format: str
    since: datetime | None
    tables: list[TableExport] = field(default_factory=list)

    @property
    def rows_written(self) -> int:
        return sum(t.rows_written for t in self.tables)

    @property
    def files_written(self) -> int:
        return sum(len(t.files_written) for t in self.tables)

    def to_json(self) -> dict[str, Any]:
        return {
            "dir": str(self.out_dir),
            "format": self.format,
            "since": self.since.isoformat() if self.since else None,
            "rows_written": self.rows_written,
            "files_written": self.files_written,
            "tables": {t.name: t.to_json() for t in self.tables},
            "manifest": str(self.out_dir / MANIFEST),
        }


def describe_partitioning(table: str) -> str | None:
    """``date = UTC day of coalesce(expected_start_time, created)``, or None for one file."""
    columns = PARTITION_BY[table]
    return f"date = UTC day of coalesce({', '.join(columns)})" if columns else None


@dataclass(frozen=True)
class ExportRequest:
    """What one export writes, checked once, when it is made: the format, the tables (each
    once, in the order given; all by default), ``since`` (only the partitions changed since
    then) and ``replace`` (take a destination over, a full export only). A bad value is a
    ``ConfigError`` here, before any file is opened."""

    fmt: str = "parquet"
    tables: tuple[str, ...] = TABLES
    since: datetime | None = None
    replace: bool = False

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ConfigError(
                f"Unknown export format {self.fmt!r}; supported: {', '.join(FORMATS)}."
            )
        chosen = tuple(dict.fromkeys(self.tables))
        if not chosen:
            raise ConfigError(
                "--tables names no table; pass one or more of flows, deployments, flow_runs "
                "(or leave it out for all)."
            )
        unknown = [t for t in chosen if t not in PARTITION_BY]
        if unknown:
            raise ConfigError(
                f"Unknown table {unknown[0]!r} for --tables; choose from: {', '.join(TABLES)}."
            )
        if self.replace and (self.since is not None or set(chosen) != set(TABLES)):
            raise ConfigError(
                "--replace rewrites the whole export from this file: pass it without --since "
                "and --tables."
            )
        object.__setattr__(self, "tables", chosen)


def check_dir(out_dir: Path, request: ExportRequest) -> None:
    """The local folder ``request`` would write into is one (or can be made), before the DB is
    opened: not a file, nor holding a file where a table's folder goes."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(
            f"Export directory {out_dir} is a file; pass a directory path (it is created if missing)."
        )
    for name in request.tables:
        if (out_dir / name).exists() and not (out_dir / name).is_dir():
            raise ConfigError(
                f"{out_dir / name} is a file, not a table directory; move it or choose another export directory."
            )


def _remove_leftovers(out_dir: Path) -> None:
    """The temporary files (``TMP_DIR``) of exports killed before they renamed them: their
    process is gone. Those of a live export stay."""
    tmp_dir = out_dir / TMP_DIR
    if not tmp_dir.is_dir():
        return
    for entry in tmp_dir.iterdir():
        pid = entry.name.split("-", 1)[0]
        if entry.is_file() and pid.isdigit() and not owner_alive(int(pid)):
            entry.unlink(missing_ok=True)


def _replace_atomically(
    write: Callable[[Path], object], dest: Path, tmp: Path | None = None
) -> None:
    """Write ``dest`` through ``write(tmp)``, then rename: a reader sees the old file or the
    new one. ``tmp`` (default next to ``dest``) must be on ``dest``'s filesystem."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _tmp_for(out_dir: Path, table: str, rel: str) -> Path:
    """Where the file ``table/rel`` is written before its rename: under ``TMP_DIR``, outside
    the table folders (a reader of a folder never finds it, even one a SIGKILL left),
    named by this process (``_remove_leftovers``)."""
    return out_dir / TMP_DIR / f"{os.getpid()}-{table}-{rel.replace('/', '-')}"


def _written(
    write: Callable[[Path], object], dest: Path, tmp: Path, pending: list[tuple[Path, Path]]
) -> None:
    """``write(tmp)``: a whole file, to be renamed over ``dest`` with the export's others."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    pending.append((tmp, dest))  # first: a write that fails leaves its part to be removed
    write(tmp)


def _keep_aside(dest: Path, backup: Path) -> None:
    """``backup``: the file ``dest`` as it is, a hard link (no copy), or a copy where the
    file system has no hard links (FUSE mounts of object storage, SMB). A folder in the
    way of a file is refused (``OSError``)."""
    try:
        os.link(dest, backup, follow_symlinks=False)
    except OSError:
        if dest.is_dir() and not dest.is_symlink():
            raise
        shutil.copyfile(dest, backup, follow_symlinks=False)


@contextlib.contextmanager
def _swapped(pending: Sequence[tuple[Path, Path]]) -> Iterator[None]:
    """Rename every written file over its destination, keeping each old file aside (a hard
    link under ``TMP_DIR``) until the block is done: a failed rename, or an error in the
    block (the manifest's write), puts every old file back and removes every new one, so
    the destination is as it was. A SIGKILL among the renames (milliseconds, after all
    the writing) can still leave some partitions new under the old manifest."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for tmp, dest in pending:
            dest.parent.mkdir(parents=True, exist_ok=True)
            backup = None
            if dest.exists() or dest.is_symlink():
                backup = tmp.with_name(tmp.name + ".old")
                _keep_aside(dest, backup)
            done.append((dest, backup))
            os.replace(tmp, dest)
        yield
    except BaseException:
        for dest, backup in reversed(done):
            if backup is not None:
                os.replace(backup, dest)
            elif dest.is_file():
                dest.unlink()
        raise
    finally:
        for _, backup in done:
            if backup is not None:
                backup.unlink(missing_ok=True)


def _export_table(
    store: Store,
    out_dir: Path,
    name: str,
    since: datetime | None,
    progress: Progress,
    pending: list[tuple[Path, Path]],
) -> TableExport:
    """Write ``name``'s files under ``TMP_DIR`` (each added to ``pending`` with its
    destination; ``_swapped`` renames them)."""
    columns = PARTITION_BY[name]
    result = TableExport(name, columns)
    base = out_dir / name
    select = parquet.table_select(store, name)
    if not columns:
        if since is None or parquet.changed_rows(store, name, since):
            rows = parquet.row_count(store, name)
            progress.phase(f"export {name}", rows)
            _written(
                lambda tmp: parquet.write_parquet(store, select, tmp),
                base / PART_FILE,
                _tmp_for(out_dir, name, PART_FILE),
                pending,
            )
            result.files_written.append(PART_FILE)
            result.rows_written = rows
            progress.advance(rows)
        return result
    days = parquet.day_counts(store, name, columns, since)
    ordered = sorted(days)
    progress.phase(f"export {name}", sum(days.values()))
    for batch in synced_tables.packed(ordered, [days[d] for d in ordered], parquet.STAGE_ROWS):
        with parquet.staged(store, select, columns, batch) as write:
            for day in batch:
                rel = f"date={day.isoformat()}/{PART_FILE}"
                _written(
                    functools.partial(write, day),
                    base / rel,
                    _tmp_for(out_dir, name, rel),
                    pending,
                )
                result.files_written.append(rel)
                result.rows_written += days[day]
                progress.advance(days[day])
    # An export mirrors the DB: the partitions it no longer has go, once the manifest that no
    # longer lists them is in place (``export``). With ``since`` too: a run that left the
    # only day it was on (its first state set its expected start), or a partition a killed
    # export left, would stay beside the rows' new days (a run twice) until a full export.
    held = days if since is None else parquet.days_held(store, name, columns)
    result.partitions = {f"date={d.isoformat()}" for d in held}
    if base.is_dir():
        for sub in sorted(base.iterdir()):
            # (a folder holding only files of a user's own is not a partition: it stays)
            if (
                _PARTITION_DIR.match(sub.name)
                and sub.name not in result.partitions
                and (sub / PART_FILE).is_file()
            ):
                result.partitions_removed.append(sub.name)
    return result


def _rows_in(part: Path) -> int:
    """The rows of a Parquet file, read through an open file: Arrow would take a relative
    path such as ``exp:2026/...`` for a URL."""
    with part.open("rb") as f:
        return int(pq.read_metadata(f).num_rows)


def _manifest(
    out_dir: Path,
    store: Store,
    since: datetime | None,
    source: Source,
    removing: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The manifest of the files under ``out_dir``, but for the partitions ``removing``
    (table -> partition folders about to be removed)."""
    tables: dict[str, Any] = {}
    for name in PARTITION_BY:
        base = out_dir / name
        if not base.is_dir():
            continue
        gone = set((removing or {}).get(name, ()))
        files = {
            str(p.relative_to(base)): _rows_in(p)
            for p in sorted(base.rglob(PART_FILE))
            if p.relative_to(base).parts[0] not in gone
        }
        tables[name] = {
            "partition_by": describe_partitioning(name),
            "rows": sum(files.values()),
            "files": files,
        }
    return {
        "flowsync_version": __version__,
        "format": "parquet",
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "source_db": str(store.path),  # the file read: the live one or a snapshot of it
        "source": source.to_json(),
        "since": since.isoformat() if since else None,
        "tables": tables,
    }


def export(
    store: Store,
    out_dir: Path,
    request: ExportRequest | None = None,
    *,
    source: Source | None = None,
    progress: Progress | None = None,
    wait: float = 0.0,
) -> ExportResult:
    """Write ``request``'s tables (default: every table, in full) under ``out_dir``; with its
    ``since``, rewrite only partitions changed since then.

    A partition "changed" when one of its rows was synced or marked deleted at
    or after ``since``; the whole partition is rewritten from the DB. ``source`` is
    what the manifest names (default: ``source_of(store)``); an ``out_dir`` holding an
    export of another source is refused (``check_source``) unless ``request.replace``.
    ``progress`` gets a phase per table written (``export flow_runs``), its rows the work.
    One export writes into ``out_dir`` at a time: another waits ``wait`` seconds for it,
    then ``StoreLockedError``.
    """
    out_dir = Path(out_dir)
    request = request or ExportRequest()
    check_dir(out_dir, request)
    source = source or source_of(store)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Cannot create export directory {out_dir}: {e.strerror}.") from e
    with _only_export(out_dir, wait):
        if not request.replace:
            check_source(read_manifest(out_dir), holds_export(out_dir), source, str(out_dir))
        return _export(store, out_dir, request, source, progress)


@contextlib.contextmanager
def _only_export(out_dir: Path, wait: float) -> Iterator[None]:
    """The one export writing into ``out_dir`` from its check of the manifest to its last
    rename (an flock on the folder, released when the process ends, however): two at once
    could each find the other's source acceptable, then one replace the other's files, or
    remove them as a killed export's leftovers. Another export holds it: waited for up to
    ``wait`` seconds, then ``StoreLockedError``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (as before)
        yield
        return
    try:
        fd = os.open(out_dir, os.O_RDONLY)
    except OSError as e:
        raise ConfigError(f"Cannot open export directory {out_dir}: {e.strerror}.") from e
    try:
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    busy = StoreLockedError(
                        f"Another flowsync export is writing to {out_dir}; wait for it to "
                        "finish (pass --wait SECONDS), or export elsewhere."
                    )
                    raise after_waiting(busy, wait) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # (releases the lock)


def _export(
    store: Store,
    out_dir: Path,
    request: ExportRequest,
    source: Source,
    progress: Progress | None,
) -> ExportResult:
    since = request.since
    result = ExportResult(out_dir, request.fmt, since)
    progress = progress or NullProgress()
    pending: list[tuple[Path, Path]] = []
    try:
        _remove_leftovers(out_dir)
        for name in request.tables:
            result.tables.append(_export_table(store, out_dir, name, since, progress, pending))
        removing = {t.name: t.partitions_removed for t in result.tables}
        with _swapped(pending):  # every file written: all of them in place, or none
            manifest = json.dumps(
                _manifest(out_dir, store, since, source, removing), indent=2, sort_keys=True
            )
            _replace_atomically(
                lambda tmp: tmp.write_text(manifest + "\n", encoding="utf-8"),
                out_dir / MANIFEST,
            )
        # Only now: the manifest in place until here listed them.
        for table in result.tables:
            for name in table.partitions_removed:
                (out_dir / table.name / name / PART_FILE).unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # not empty: files export did not write
                    (out_dir / table.name / name).rmdir()
        with contextlib.suppress(OSError):  # not empty: another export's files
            (out_dir / TMP_DIR).rmdir()
    except OSError as e:
        raise StoreError(
            f"Export to {out_dir} failed: {e}. The export there is as it was; fix that, then "
            "run it again."
        ) from e
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
    return result
