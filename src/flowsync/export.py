"""``export``: the synced tables as day-partitioned Parquet, for warehouses, Spark, Trino.

Owns: the layout of an export directory and its manifest. Layout (hive style)::

    DIR/flows/part-0.parquet                      (small: one file)
    DIR/deployments/part-0.parquet
    DIR/flow_runs/date=YYYY-MM-DD/part-0.parquet  (UTC day of expected_start_time)
    DIR/_flowsync_manifest.json                   (files and row counts on disk)

Flow runs are partitioned by the UTC day of ``expected_start_time`` (the day a
run was meant to start, what analysts filter on), or ``created`` for a run that
never had a state. Prefect sets ``expected_start_time`` once, at a run's first
state, and never moves it (retries and reschedules change
``next_scheduled_start_time``), so a run stays in one partition; the one move
possible, from its created day once it gets a first state, is covered because
``--since`` rewrites both days of every changed run. Every partition is one file, written to a hidden
temporary name and renamed over the old one, so a reader sees the old or the
new partition, never half of one, and re-running replaces rather than adds.
Runs deleted on the server are exported too, with ``deleted_at`` set.

Must not: print, or run SQL itself (the store's ``parquet`` module does).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from flowsync import __version__
from flowsync.errors import ConfigError, StoreError
from flowsync.store import Store, parquet

FORMATS = ("parquet",)
# table -> the columns whose first non-null value's UTC day names its partition (empty: one file)
PARTITION_BY: dict[str, tuple[str, ...]] = {
    "flows": (),
    "deployments": (),
    "flow_runs": ("expected_start_time", "created"),
}
TABLES = tuple(PARTITION_BY)
PART_FILE = "part-0.parquet"
MANIFEST = "_flowsync_manifest.json"
_PARTITION_DIR = re.compile(r"^date=\d{4}-\d{2}-\d{2}$")


@dataclass
class TableExport:
    name: str
    partition_by: tuple[str, ...]
    rows_written: int = 0
    files_written: list[str] = field(default_factory=list)
    partitions_removed: list[str] = field(default_factory=list)

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


def check_request(out_dir: Path, fmt: str, tables: Iterable[str] | None) -> list[str]:
    """Validate everything about an export before the DB is opened; returns the tables."""
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format {fmt!r}; supported: {', '.join(FORMATS)}.")
    chosen = list(dict.fromkeys(tables or TABLES))
    unknown = [t for t in chosen if t not in PARTITION_BY]
    if unknown:
        raise ConfigError(
            f"Unknown table {unknown[0]!r} for --tables; choose from: {', '.join(TABLES)}."
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(
            f"Export directory {out_dir} is a file; pass a directory path (it is created if missing)."
        )
    for name in chosen:
        if (out_dir / name).exists() and not (out_dir / name).is_dir():
            raise ConfigError(
                f"{out_dir / name} is a file, not a table directory; move it or choose another export directory."
            )
    return chosen


def _replace_atomically(store: Store, table: str, dest: Path, **where: Any) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        parquet.write_parquet(store, table, tmp, **where)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _export_table(store: Store, out_dir: Path, name: str, since: datetime | None) -> TableExport:
    columns = PARTITION_BY[name]
    result = TableExport(name, columns)
    base = out_dir / name
    if not columns:
        if since is None or parquet.changed_rows(store, name, since):
            _replace_atomically(store, name, base / PART_FILE)
            result.files_written.append(PART_FILE)
            result.rows_written = parquet.row_count(store, name)
        return result
    days = parquet.day_counts(store, name, columns, since)
    for day, n in sorted(days.items()):
        rel = f"date={day.isoformat()}/{PART_FILE}"
        _replace_atomically(store, name, base / rel, day_columns=columns, day=day)
        result.files_written.append(rel)
        result.rows_written += n
    if since is None and base.is_dir():
        # A full export mirrors the DB: drop partitions the DB no longer has.
        keep = {f"date={d.isoformat()}" for d in days}
        for sub in sorted(base.iterdir()):
            if sub.is_dir() and _PARTITION_DIR.match(sub.name) and sub.name not in keep:
                shutil.rmtree(sub)
                result.partitions_removed.append(sub.name)
    return result


def _manifest(out_dir: Path, store: Store, since: datetime | None) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    for name in PARTITION_BY:
        base = out_dir / name
        if not base.is_dir():
            continue
        files = {
            str(p.relative_to(base)): int(pq.read_metadata(p).num_rows)
            for p in sorted(base.rglob(PART_FILE))
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
        "source_db": str(store.path),
        "since": since.isoformat() if since else None,
        "tables": tables,
    }


def export(
    store: Store,
    out_dir: Path,
    *,
    fmt: str = "parquet",
    tables: Sequence[str] | None = None,
    since: datetime | None = None,
) -> ExportResult:
    """Write the tables under ``out_dir``; with ``since``, rewrite only partitions changed since then.

    A partition "changed" when one of its rows was synced or marked deleted at
    or after ``since``; the whole partition is rewritten from the DB.
    """
    out_dir = Path(out_dir)
    chosen = check_request(out_dir, fmt, tables)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Cannot create export directory {out_dir}: {e.strerror}.") from e
    result = ExportResult(out_dir, fmt, since)
    try:
        for name in chosen:
            result.tables.append(_export_table(store, out_dir, name, since))
        manifest = json.dumps(_manifest(out_dir, store, since), indent=2, sort_keys=True)
        tmp = out_dir / f".{MANIFEST}.tmp-{os.getpid()}"
        tmp.write_text(manifest + "\n", encoding="utf-8")
        os.replace(tmp, out_dir / MANIFEST)
    except OSError as e:
        raise StoreError(
            f"Export to {out_dir} failed: {e}. Partitions already written are complete; run it again."
        ) from e
    return result
