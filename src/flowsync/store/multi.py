"""Several flowsync files read as one: prod, staging and dev side by side, with a ``source`` column.

Owns: the in-memory DuckDB session behind ``Store.reader`` of several files,
which attaches each file (its latest published snapshot, or the live file with
``live``) read-only under its source name, and defines every table and view of the files once more as
``SELECT '<source>' AS source, * FROM <source>.<name> UNION ALL BY NAME ...``.
Each attached view is bound inside its own file, so a figure of one source
is computed from that source's rows only; the union only stacks them. Every
file keeps holding one server's history (pull each into its own file). Must
not: write to any file, or know about the API.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import duckdb

from flowsync import __version__
from flowsync.config import check_utf8
from flowsync.errors import ConfigError, NewerFileWarning, OlderSchemaError, StoreError
from flowsync.store import migrations
from flowsync.store.connect import session_settings, version_key
from flowsync.store.files import check_path, storage_error
from flowsync.store.snapshot import current

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Sources = Mapping[str, "str | os.PathLike[str]"] | Sequence["str | os.PathLike[str]"]


def parse_sources(sources: Sources) -> dict[str, Path]:
    """``{"prod": "prod.duckdb"}``, or paths (``NAME=PATH`` or a path whose stem names it)."""
    items: list[tuple[str, Path]] = []
    if isinstance(sources, Mapping):
        items = [(str(k), Path(_path_text(v)).expanduser()) for k, v in sources.items()]
    elif isinstance(sources, (str, bytes)) or not isinstance(sources, Iterable):
        raise ConfigError(
            f"{sources!r} is not a file to read: pass a path, a list of paths or a dict of "
            "name to path (e.g. {'prod': 'prod.duckdb'})."
        )
    else:
        for raw in sources:
            text = _path_text(raw)
            name, sep, rest = text.partition("=")
            if sep and _NAME.match(name):
                items.append((name, Path(rest).expanduser()))
            elif sep and not Path(text).expanduser().exists():
                # NAME=PATH with a name that is no name (a path with "=" in it is taken whole)
                raise ConfigError(
                    f"Source name {name!r} (in {text!r}) must be letters, digits and _ "
                    "(e.g. prod=prod.duckdb)."
                )
            else:
                stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(text).name.split(".")[0]) or "source"
                items.append(("_" + stem if stem[0].isdigit() else stem, Path(text).expanduser()))
    out: dict[str, Path] = {}
    for name, file in items:
        if not _NAME.match(name):
            raise ConfigError(
                f"Source name {name!r} must be letters, digits and _ (e.g. prod=prod.duckdb)."
            )
        if name.lower() in {n.lower() for n in out} or name.lower() in {
            "main",
            "memory",
            "system",
            "temp",
        }:
            raise ConfigError(
                f"Source name {name!r} is used twice or reserved; name each file, e.g. --db prod=runs.duckdb."
            )
        out[name] = file
    if not out:
        raise ConfigError("No files to read: pass at least one --db.")
    return out


def _path_text(raw: object) -> str:
    """A source's path as text; anything that is no path (a number, bytes) a ``ConfigError``."""
    text = os.fspath(raw) if isinstance(raw, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise ConfigError(f"{raw!r} is not a path: pass a DuckDB file's path, e.g. prod.duckdb.")
    return check_utf8(text, "--db")


def _attach(con: duckdb.DuckDBPyConnection, name: str, db: Path, live: bool) -> None:
    for _ in range(5):
        info = None if live else current(db)
        path = info.path if info else db
        check_path(path, read_only=True)
        try:
            con.execute(f'ATTACH ? AS "{name}" (READ_ONLY)', [str(path)])
            return
        except duckdb.IOException as e:
            if info is not None and not info.path.exists():
                continue  # replaced by a newer snapshot between resolving and attaching
            from flowsync.store import locks

            if "lock" in str(e).lower():
                how = locks.LIVE if live else locks.FALLBACK
                raise locks.locked_error(db, str(e), read_only=True, how=how) from e
            raise storage_error(path, e) or StoreError(
                f"Cannot open {path}: {str(e).splitlines()[0]}"
            ) from e
        except duckdb.Error as e:
            raise storage_error(path, e) or StoreError(
                f"Cannot open {path}: {str(e).splitlines()[0]}"
            ) from e
    raise StoreError(f"The snapshots of {db} kept changing while opening one; try again.")


def _check_schema(con: duckdb.DuckDBPyConnection, name: str, db: Path) -> str | None:
    """The checks one ``--db`` gets (``Store.migrate`` on a reader), for an attached source: a
    file that is not flowsync's, or of an older schema, is refused; one a newer flowsync
    wrote is read with a ``NewerFileWarning``, and who wrote it is returned ("flowsync 9.0.0",
    or "a newer flowsync"; None for a file of this flowsync's schema)."""
    try:
        applied = {
            str(r[0])
            for r in con.execute(f'SELECT name FROM "{name}"._flowsync_migrations').fetchall()
        }
    except duckdb.CatalogException:
        raise StoreError(
            f"{db} is not a flowsync file (no flowsync schema in it); pass only files "
            "flowsync pull wrote."
        ) from None
    except duckdb.Error as e:  # a damaged file that attached (its first blocks read)
        raise _unreadable(db, e) from e
    known = {migration for migration, _ in migrations.MIGRATIONS}
    pending = known - applied
    if pending:
        raise OlderSchemaError(
            f"{db} has an older schema ({len(pending)} migrations pending); "
            f"run `flowsync pull --db {db}` once to upgrade it.",
            path=str(db),
        )
    unknown = sorted(applied - known)
    if not unknown:
        return None
    try:
        row = con.execute(
            f"SELECT value FROM \"{name}\"._flowsync_file WHERE key = 'written_by'"
        ).fetchone()
    except duckdb.Error:
        row = None
    written_by = str(row[0]) if row and row[0] else ""
    if written_by and version_key(written_by) <= version_key(__version__):
        written_by = ""  # not the version that added the migration: do not name it
    who = f"flowsync {written_by}" if written_by else "a newer flowsync"
    warnings.warn(
        NewerFileWarning(
            f"{db} was written by {who} (schema {unknown[-1]}); this flowsync "
            f"{__version__} reads it read-only and may miss what that version added: upgrade "
            "flowsync to see it."
        ),
        stacklevel=5,
    )
    return who


def connect_sources(
    sources: Sources, *, live: bool = False
) -> tuple[duckdb.DuckDBPyConnection, Path]:
    """An in-memory session whose tables and views stack every source, with a ``source``
    column first, and the label naming its files (``Store.reader`` wraps them)."""
    named = parse_sources(sources)
    con = duckdb.connect(":memory:")
    try:
        session_settings(con)
        newer: dict[str, str | None] = {}
        for name, db in named.items():
            _attach(con, name, db, live)
            newer[name] = _check_schema(con, name, db)
        found: dict[str, list[str]] = {}
        columns: dict[tuple[str, str], dict[str, str]] = {}
        for name, db in named.items():  # each file's catalog read on its own: a damaged one named
            try:
                for (table,) in con.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'main' AND table_catalog = ? ORDER BY table_name",
                    [name],
                ).fetchall():
                    found.setdefault(str(table), []).append(name)
                if newer[name]:
                    for table, column, kind in con.execute(
                        "SELECT table_name, column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = 'main' AND table_catalog = ? ORDER BY ordinal_position",
                        [name],
                    ).fetchall():
                        columns.setdefault((name, str(table)), {})[str(column)] = str(kind)
            except duckdb.Error as e:
                raise _unreadable(db, e) from e
        found = {table: found[table] for table in sorted(found)}
        for table, catalogs in found.items():
            # Source and object names are checked identifiers or come from the files' own catalogs.
            union = " UNION ALL BY NAME ".join(
                f"SELECT '{c}' AS source, *{_missing(table, c, catalogs, named, newer, columns)} "
                f'FROM "{c}".main."{table}"'
                for c in named
                if c in catalogs
            )
            try:
                con.execute(f'CREATE VIEW "{table}" AS {union}')
            except duckdb.Error as e:
                raise _unstackable(con, table, catalogs, named, newer, e) from None
    except BaseException:
        con.close()
        raise
    return con, Path(" + ".join(str(p) for p in named.values()))


def _unreadable(db: Path, e: duckdb.Error) -> StoreError:
    """The error for a source whose schema could not be read (damaged past its first blocks)."""
    return storage_error(db, e) or StoreError(
        f"Cannot read {db}: {str(e).splitlines()[0]}; check the file, or leave it out."
    )


def _missing(
    table: str,
    catalog: str,
    catalogs: list[str],
    named: Mapping[str, Path],
    newer: Mapping[str, str | None],
    columns: Mapping[tuple[str, str], Mapping[str, str]],
) -> str:
    """For a source a newer flowsync wrote: the columns of ``table`` that this flowsync's
    schema or the other sources have and it lacks (a newer migration renamed or dropped
    them), each as an error raised only when a query reads it. Stacked by name, they would
    read as NULL for its rows (a wrong figure), where the file alone refuses the query."""
    who = newer.get(catalog)
    if not who:
        return ""
    own = columns.get((catalog, table), {})
    expected: dict[str, str] = dict(_known_columns().get(table, {}))
    for other in catalogs:
        if not newer.get(other):
            expected.update(columns.get((other, table), {}))
    gone = [(c, kind) for c, kind in expected.items() if c not in own]
    message = (
        f"{named[catalog]}'s {table} has no column {{}}: written by {who}, newer than this "
        f"flowsync {__version__}, which may not know its tables and columns: upgrade flowsync "
        "(pip install -U flowsync) where this command runs, or leave the file out"
    )
    return "".join(
        f', CAST(error({_quote(message.format(c))}) AS {kind}) AS "{c}"' for c, kind in gone
    )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@functools.cache
def _known_columns() -> dict[str, dict[str, str]]:
    """This flowsync's tables and their columns, as its migrations make them (in memory)."""
    con = duckdb.connect(":memory:")
    try:
        for _, fn in migrations.MIGRATIONS:
            fn(con)
        known: dict[str, dict[str, str]] = {}
        for table, column, kind in con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' ORDER BY ordinal_position"
        ).fetchall():
            known.setdefault(str(table), {})[str(column)] = str(kind)
        return known
    finally:
        con.close()


def _unstackable(
    con: duckdb.DuckDBPyConnection,
    table: str,
    catalogs: list[str],
    named: Mapping[str, Path],
    newer: Mapping[str, str | None],
    error: duckdb.Error,
) -> StoreError:
    """Why ``table`` of the sources could not be stacked, naming the file: one whose own
    ``table`` no longer reads (a view left by a newer flowsync's migration, or a damaged one),
    else the files whose ``table`` differ too much to stack."""
    broken = []
    for c in catalogs:
        try:
            con.execute(f'SELECT * FROM "{c}".main."{table}" LIMIT 0')
        except duckdb.Error:
            broken.append(c)
    detail = str(error).splitlines()[0]
    culprits = broken or catalogs
    named_newer = [newer[c] for c in culprits if newer.get(c)]
    files = ", ".join(str(named[c]) for c in culprits)
    if named_newer:
        return StoreError(
            f"{files}: {table} cannot be read ({detail}); written by {named_newer[0]}, newer than "
            f"this flowsync {__version__}, which may not know its tables and columns: upgrade "
            "flowsync (pip install -U flowsync) where this command runs, or leave it out."
        )
    return StoreError(
        f"{files}: {table} cannot be read ({detail}); run `flowsync pull --db FILE` on "
        "each once to rebuild its views, or leave it out."
    )
