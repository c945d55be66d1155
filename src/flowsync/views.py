"""The analysis views: ``sql/*.sql`` files applied with ``CREATE OR REPLACE VIEW``.

Owns: finding the shipped SQL (inside the wheel as ``flowsync/sql``, or the
repository's ``sql/`` in a development checkout) and rebuilding every view.
Views are derived: never migrated, brought up to date by every pull (rebuilt only
when needed: ``ensure_current`` says when).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from flowsync import __version__
from flowsync.errors import QueryError, StoreError
from flowsync.store import Store, sync_log
from flowsync.store.connect import version_key
from flowsync.store.migrations import MIGRATIONS

BUILT = "views_built"  # sync_state: what built the file's views, at which pull


def sql_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise StoreError(
        "The flowsync SQL views are missing from this installation; reinstall flowsync."
    )


def view_files() -> list[Path]:
    return sorted(sql_dir().glob("*.sql"))


def rebuild(store: Store, pull_id: int | None = None) -> list[str]:
    """Create or replace every view, in file-name order (later views may use earlier ones).

    Records what built them (``BUILT``), for ``ensure_current``."""
    files = _files()
    return _rebuild(store, files, _digest(files), pull_id)


def ensure_built(store: Store) -> bool:
    """A file whose views were never built (a pull's first step on a new file) gets them now,
    so that a first pull that stops early (a wrong URL, a 401, Ctrl-C) leaves a file every
    report and view can read (empty, or what was committed). Returns whether it built them."""
    if sync_log.get_state(store, BUILT) is not None:
        return False
    rebuild(store)
    return True


def ensure_current(
    store: Store, pull_id: int, *, force: bool = False, built_now: bool = False
) -> bool:
    """Pull ``pull_id``'s views: rebuilt unless this installation built or checked them at
    the pull just before and they are all still there.

    Skipped only when the file records, from the ``sync_runs`` row just before this one,
    the same digest (every view file's name and text, and the migrations this
    installation knows) and the same views: another flowsync's SQL, a pull in between
    (an older flowsync rebuilds its own views without recording), or a view dropped
    since, rebuilds; so does ``force`` (``pull --full``). The views a newer flowsync
    built (at this schema) stay while they are all there and nothing pulled in between,
    ``force`` too unless one of this flowsync's macros is gone: an older flowsync's pull
    does not put its older SQL back over them. ``built_now``: this pull's own first
    step built them (``ensure_built``), so the pull before does not matter. Returns
    whether it rebuilt (0.15-0.18 s; the check, about 1 ms)."""
    files = _files()
    digest, views = _digest(files), _views(store)
    built = sync_log.get_state(store, BUILT) or {}
    unbroken = built_now or (
        built.get("pull_id") is not None
        and built.get("pull_id") == sync_log.previous_run_id(store, pull_id)
    )
    if (
        _newer(built.get("by"))
        and built.get("views") == views
        and unbroken
        and not (force and _macros_missing(store, files))
    ):
        # A newer flowsync built them, at the schema this one knows (a newer schema is
        # refused before this): its SQL stays, never replaced by this older text, even on
        # --full. Only a view gone since, or a pull in between (one that rebuilds its own
        # views without recording: the file may no longer hold the newer SQL), rebuilds
        # (then with this flowsync's SQL); so does --full when a macro of this
        # flowsync's SQL is gone (dropped by hand: the views calling it are broken).
        with store.transaction():
            sync_log.set_state(store, BUILT, {**built, "pull_id": pull_id})
        return False
    current = (
        not force and built.get("digest") == digest and built.get("views") == views and unbroken
    )
    if not current:
        _rebuild(store, files, digest, pull_id)
        return True
    with store.transaction():
        sync_log.set_state(store, BUILT, _record(digest, views, pull_id))
    return False


def _record(digest: str, views: list[str], pull_id: int | None) -> dict[str, Any]:
    """What ``BUILT`` holds: the SQL and schema's digest, the views, the pull, and which
    flowsync built them (a newer one's views are kept by an older one's pulls)."""
    return {"digest": digest, "views": views, "pull_id": pull_id, "by": __version__}


def _newer(by: Any) -> bool:
    return isinstance(by, str) and version_key(by) > version_key(__version__)


def _rebuild(
    store: Store, files: list[tuple[Path, str]], digest: str, pull_id: int | None
) -> list[str]:
    names = []
    with store.transaction():
        for path, text in files:
            try:
                store.execute(text)
            except QueryError as e:
                raise StoreError(f"View {path.name} failed to build: {e.detail}") from e
            names.append(path.stem)
        sync_log.set_state(store, BUILT, _record(digest, _views(store), pull_id))
    return names


_MACRO = re.compile(r"\bCREATE\s+OR\s+REPLACE\s+MACRO\s+(\w+)", re.IGNORECASE)


def _macros_missing(store: Store, files: list[tuple[Path, str]]) -> bool:
    """Some macro the view files create is not in the file (~40 ms: DuckDB lists its
    macros only among all of its functions; asked on ``pull --full`` alone)."""
    wanted = {m.lower() for _, text in files for m in _MACRO.findall(text)}
    have = {
        str(r[0]).lower()
        for r in store.execute(
            "SELECT function_name FROM duckdb_functions() WHERE NOT internal "
            "AND database_name = current_database() "
            "AND function_type IN ('macro', 'table_macro')"
        ).rows()
    }
    return bool(wanted - have)


def _files() -> list[tuple[Path, str]]:
    return [(path, path.read_text(encoding="utf-8")) for path in view_files()]


def _digest(files: list[tuple[Path, str]]) -> str:
    h = hashlib.sha256()
    for name, _ in MIGRATIONS:
        h.update(f"migration {name}\n".encode())
    for path, text in files:
        h.update(f"{path.name}\n{len(text)}\n{text}\n".encode())
    return h.hexdigest()


def _views(store: Store) -> list[str]:
    """The file's own views, by name (DuckDB lists them in about 1 ms; its macros, only
    among all of its ~3,000 functions, in ~40 ms, so they are not listed)."""
    rows = store.execute(
        """
        SELECT view_name FROM duckdb_views()
        WHERE NOT internal AND database_name = current_database()
        ORDER BY view_name
        """
    ).rows()
    return [str(r[0]) for r in rows]
