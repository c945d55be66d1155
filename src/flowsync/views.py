"""The analysis views: ``sql/*.sql`` files applied with ``CREATE OR REPLACE VIEW``.

Owns: finding the shipped SQL (inside the wheel as ``flowsync/sql``, or the
repository's ``sql/`` in a development checkout) and rebuilding every view.
Views are derived: they are rebuilt on every pull and never migrated.
"""

from __future__ import annotations

from pathlib import Path

from flowsync.errors import QueryError, StoreError
from flowsync.store import Store


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


def rebuild(store: Store) -> list[str]:
    """Create or replace every view, in file-name order (later views may use earlier ones)."""
    names = []
    with store.transaction():
        for path in view_files():
            try:
                store.execute(path.read_text(encoding="utf-8"))
            except QueryError as e:
                raise StoreError(f"View {path.name} failed to build: {e.detail}") from e
            names.append(path.stem)
    return names
