"""Column specs of the synced tables, and API objects -> Polars batches.

Owns: which API fields become which typed columns, and turning a page of API
objects into one columnar batch (nested objects serialised as JSON, unknown
fields kept in ``extra`` so nothing the API returns is dropped). Pure: no I/O.
The DDL itself lives in migrations; ``tests/test_store.py`` checks the two agree
(same columns, same types).
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowsync import __version__
from flowsync.errors import ApiError

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa


# kind -> DuckDB type of the column
SQL_TYPES = {
    "uuid": "UUID",
    "ts": "TIMESTAMPTZ",
    "str": "VARCHAR",
    "json": "JSON",
    "list": "VARCHAR[]",
    "float": "DOUBLE",
    "int": "INTEGER",
    "bool": "BOOLEAN",
}

# kind -> (Polars type of the batch column, by name, SQL expression template to cast it).
# Polars is imported only when a batch frame is built (pages with unknown fields):
# the usual pull never needs it.
_KINDS: dict[str, tuple[str, str]] = {
    "uuid": ("Utf8", "CAST({c} AS UUID)"),  # no UUID: refused (``TableSpec.unfit``), not NULL
    "ts": ("Utf8", "CAST({c} AS TIMESTAMPTZ)"),
    "str": ("Utf8", "{c}"),
    "json": ("Utf8", "CAST({c} AS JSON)"),
    "list": ("List[Utf8]", "{c}"),
    "float": ("Float64", "{c}"),
    "int": ("Int64", "CAST({c} AS INTEGER)"),
    "bool": ("Boolean", "{c}"),
}


# What each kind takes from the server's JSON (``bool`` is an ``int`` to Python: named
# apart). A value of another JSON type is refused, never coerced: pyarrow reads a string as
# a list of its characters and truncates 3.7 to 3, DuckDB's from_json reads what does not
# fit as NULL, ``int()``/``bool()``/``str()`` truncate, read "false" as true and write a
# Python repr.
_SCALAR = (str, int, float)


def _fits(kind: str, value: Any) -> bool:
    if value is None or kind == "json":
        return True
    if isinstance(value, bool):
        return kind == "bool"
    if kind in ("uuid", "ts"):
        return isinstance(value, str)
    if kind == "str":
        return isinstance(value, _SCALAR)
    if kind == "list":
        return isinstance(value, list) and all(
            isinstance(v, _SCALAR) and not isinstance(v, bool) for v in value
        )
    if kind == "int":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind == "float":
        return isinstance(value, (int, float))
    return False  # bool


_EXPECTED = {
    "uuid": "a string (a UUID)",
    "ts": "a string (a time)",
    "str": "a string",
    "list": "a list of strings",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
}


def _polars_type(name: str) -> Any:
    import polars as pl

    return pl.List(pl.Utf8) if name == "List[Utf8]" else getattr(pl, name)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    source: str | None = None  # dotted path in the API object; default: name

    def extract(self, obj: Mapping[str, Any]) -> Any:
        value = _value_at(obj, self)
        if value is None:
            return None
        if self.kind == "json":
            return json.dumps(value, separators=(",", ":"), sort_keys=True)
        if self.kind == "list":
            return [str(v) for v in value] if isinstance(value, list) else None
        if self.kind == "float":
            return float(value)
        if self.kind == "int":
            return int(value)
        if self.kind == "bool":
            return bool(value)
        return str(value) if not isinstance(value, str) else value

    @property
    def cast_sql(self) -> str:
        return _KINDS[self.kind][1].format(c=f'"{self.name}"')


def _cols(spec: str) -> tuple[Column, ...]:
    out = []
    for line in spec.strip().splitlines():
        parts = line.split()
        out.append(Column(parts[0], parts[1], parts[2] if len(parts) > 2 else None))
    return tuple(out)


FLOW_COLUMNS = _cols(
    """
    id uuid
    created ts
    updated ts
    name str
    tags list
    labels json
    """
)

DEPLOYMENT_COLUMNS = _cols(
    """
    id uuid
    created ts
    updated ts
    name str
    version str
    description str
    flow_id uuid
    paused bool
    status str
    schedules json
    concurrency_limit int
    global_concurrency_limit json
    concurrency_options json
    job_variables json
    parameters json
    tags list
    labels json
    work_queue_name str
    work_queue_id uuid
    work_pool_name str
    last_polled ts
    parameter_openapi_schema json
    path str
    pull_steps json
    entrypoint str
    storage_document_id uuid
    infrastructure_document_id uuid
    created_by json
    updated_by json
    enforce_parameter_schema bool
    """
)

FLOW_RUN_COLUMNS = _cols(
    """
    id uuid
    created ts
    updated ts
    name str
    flow_id uuid
    deployment_id uuid
    deployment_version str
    work_pool_id uuid
    work_pool_name str
    work_queue_id uuid
    work_queue_name str
    flow_version str
    parameters json
    idempotency_key str
    context json
    empirical_policy json
    tags list
    labels json
    parent_task_run_id uuid
    state_id uuid
    state_type str
    state_name str
    state_message str state.message
    state_timestamp ts state.timestamp
    state_details json state.state_details
    state_data json state.data
    run_count int
    expected_start_time ts
    next_scheduled_start_time ts
    start_time ts
    end_time ts
    total_run_time float
    estimated_run_time float
    estimated_start_time_delta float
    auto_scheduled bool
    infrastructure_document_id uuid
    infrastructure_pid str
    created_by json
    job_variables json
    """
)

# Top-level API fields consumed by the flattened columns above (not "extra").
_CONSUMED = {"state"}


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    # A row can change on the server without its `updated` stamp moving (a deployment's
    # schedules are rows of another table there): the upsert compares every column but
    # ``POLLED``, which Prefect moves on every worker poll, keeping `updated` as it was.
    compare_rows: bool = False

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def known_fields(self) -> set[str]:
        return {c.name for c in self.columns if c.source is None} | _CONSUMED

    def check_fit(self, objects: Sequence[Mapping[str, Any]]) -> None:
        """Refuse (``ApiError``) the first value whose JSON type its column does not take
        (``_fits``): a newer Prefect's format, or something between rewriting the answers.
        Kept or refused, never stored as something else."""
        for obj in objects:
            for c in self.columns:
                value = _value_at(obj, c)
                if not _fits(c.kind, value):
                    shown = json.dumps(value, default=str)[:60]
                    raise self.unfit(
                        f"row {obj.get('id')} with {c.source or c.name} = {shown}, where this "
                        f"flowsync {__version__} reads {_EXPECTED[c.kind]}"
                    )

    def unfit(self, what: str) -> ApiError:
        """The error for a page of this table holding ``what`` (a value it cannot store)."""
        return ApiError(
            f"The server sent {self.name} {what}: a newer Prefect's format, or something "
            "between rewriting its answers. Nothing of the page was written; upgrade "
            "flowsync (pip install -U flowsync)."
        )

    def batch(self, objects: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
        """One page of API objects as a typed frame, deduplicated by id (newest ``updated`` wins)."""
        self.check_fit(objects)
        rows = newest_by_id(objects)
        data: dict[str, list[Any]] = {c.name: [c.extract(o) for o in rows] for c in self.columns}
        known = self.known_fields
        data["extra"] = [_extra(o, known) for o in rows]
        import polars as pl

        schema: dict[str, Any] = {c.name: _polars_type(_KINDS[c.kind][0]) for c in self.columns}
        schema["extra"] = pl.Utf8
        return pl.DataFrame(data, schema=schema)

    def arrow_batch(self, objects: Sequence[Mapping[str, Any]]) -> pa.Table | None:
        """Pages of API objects without unknown fields as one Arrow table, deduplicated by id
        (newest ``updated`` wins), for ``select_sql`` to cast; None when a value does not
        fit its column's batch type (the caller then lets DuckDB read the JSON text).

        Nested objects become JSON text (orjson, key order kept), which
        ``select_sql(..., rewrite_json=True)`` has DuckDB write again exactly as its
        ``from_json`` stores it; ``extra`` is NULL.
        """
        import orjson
        import pyarrow as pa

        rows = newest_by_id(objects)
        read, where = _row_reader(self.columns)
        checked = False  # the page's values checked in full (``check_fit``)
        try:
            # Row by row, then transposed: one pass over each object (column by column
            # touched each of ~2,000 objects 39 times, 3x the CPU).
            flat = list(zip(*map(read, rows))) if rows else [()] * len(where)
            if any(
                c.kind in _COERCED and not all(map(_COERCED[c.kind], flat[i]))
                for c, i in zip(self.columns, where, strict=True)
            ):
                self.check_fit(rows)  # a value pyarrow would take as something else
                checked = True
            data: dict[str, Any] = {}
            for c, i in zip(self.columns, where, strict=True):
                values = flat[i]
                if c.kind == "json":
                    values = tuple(None if v is None else orjson.dumps(v).decode() for v in values)
                data[c.name] = pa.array(values, _arrow_type(c.kind))
            data["extra"] = pa.nulls(len(rows), pa.string())
        except (TypeError, ValueError, AttributeError, orjson.JSONEncodeError, pa.ArrowException):
            # DuckDB's from_json reads the page then, and reads what does not fit as NULL:
            # only values that fit go that way (an integer beyond 64 bits, NaN).
            if not checked:
                self.check_fit(rows)
            return None
        return pa.table(data)

    def unknown_fields(self, objects: Sequence[Mapping[str, Any]]) -> set[str]:
        """Top-level fields no column holds (they go to ``extra``)."""
        return set().union(*(o.keys() for o in objects)) - self.known_fields

    def json_select_sql(self) -> str:
        """SELECT that turns one JSON array parameter (``?``) into typed rows, in DuckDB.

        Duplicate ids keep the newest ``updated``. For pages whose objects have
        no unknown fields (``extra`` is NULL); others go through ``batch``.
        """
        structure: dict[str, Any] = {}
        for c in self.columns:
            *parents, leaf = (c.source or c.name).split(".")
            node = structure
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = SQL_TYPES[c.kind]
        # The structure is built from our own column specs, never from input. The page
        # array is parsed by one from_json (casting it to JSON[] first and parsing each
        # element again cost 16% more CPU a row).
        literal = json.dumps(structure).replace("'", "''")
        fields = ", ".join(
            "r." + ".".join(f'"{p}"' for p in (c.source or c.name).split(".")) + f' AS "{c.name}"'
            for c in self.columns
        )
        return f"""
            SELECT {fields}, CAST(NULL AS JSON) AS "extra"
            FROM (SELECT unnest(from_json(CAST(? AS VARCHAR), '[{literal}]')) AS r)
            QUALIFY row_number() OVER (PARTITION BY r.id ORDER BY r.updated DESC NULLS LAST) = 1
        """

    def select_sql(self, source: str, *, rewrite_json: bool = False) -> str:
        """SELECT list that casts a batch's string columns to the table's types.

        ``rewrite_json``: JSON columns are parsed and written again by DuckDB
        (``json()``), the text its ``from_json`` stores (orjson writes ``1e+16``
        where DuckDB writes ``10000000000000000.0``).
        """
        casts = [
            f'json("{c.name}") AS "{c.name}"'
            if rewrite_json and c.kind == "json"
            else f'{c.cast_sql} AS "{c.name}"'
            for c in self.columns
        ]
        casts.append('CAST("extra" AS JSON) AS "extra"')
        return f"SELECT {', '.join(casts)} FROM {source}"


# The kinds pyarrow coerces without a word (a string into a list of its characters, 3.7
# into 3, true into 1.0): a page's column is checked in full when a value is not plainly
# of its type (one cheap pass over the few columns of these kinds).
_COERCED: dict[str, Callable[[Any], bool]] = {
    "list": lambda v: v is None or type(v) is list,
    "int": lambda v: v is None or type(v) is int,
    "float": lambda v: v is None or type(v) in (int, float),
}


def _value_at(obj: Mapping[str, Any], column: Column) -> Any:
    value: Any = obj
    for part in (column.source or column.name).split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def newest_by_id(objects: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One object per id: the one with the newest ``updated`` (the later one on a tie)."""
    newest: dict[str, Mapping[str, Any]] = {}
    for obj in objects:
        key = str(obj["id"])
        prev = newest.get(key)
        if prev is None or str(obj.get("updated") or "") >= str(prev.get("updated") or ""):
            newest[key] = obj
    return list(newest.values())


@functools.lru_cache(maxsize=8)
def _row_reader(
    columns: tuple[Column, ...],
) -> tuple[Callable[[Mapping[str, Any]], tuple[Any, ...]], list[int]]:
    """A function: API object -> its column values (None where missing), and where each
    column is in that tuple.

    Paths are one field or one level down (``state.message``).
    """
    paths = [(c.source or c.name).split(".") for c in columns]
    if any(len(p) > 2 for p in paths):
        raise ValueError("column paths go at most one level down")
    top = [p[0] for p in paths if len(p) == 1]
    parents = sorted({p[0] for p in paths if len(p) == 2})
    inner = {parent: [p[1] for p in paths if len(p) == 2 and p[0] == parent] for parent in parents}
    order = [*top, *(f"{a}.{b}" for a in parents for b in inner[a])]
    where = [order.index(".".join(p)) for p in paths]
    get_top = _getter(top)
    get_inner = {a: _getter(inner[a]) for a in parents}
    none = {a: (None,) * len(inner[a]) for a in parents}

    def values(obj: Mapping[str, Any]) -> tuple[Any, ...]:
        try:
            flat = get_top(obj)
        except KeyError:
            flat = tuple(obj.get(k) for k in top)
        for a in parents:
            sub = obj.get(a)
            if sub is None:
                flat += none[a]
                continue
            try:
                flat += get_inner[a](sub)
            except KeyError:
                flat += tuple(sub.get(k) for k in inner[a])
        return flat

    return values, where


def _getter(keys: list[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """``operator.itemgetter``, always returning a tuple (KeyError when a key is missing)."""
    if len(keys) == 1:
        key = keys[0]
        return lambda obj: (obj[key],)
    return operator.itemgetter(*keys)


def _arrow_type(kind: str) -> Any:
    import pyarrow as pa

    return {
        "uuid": pa.string(),
        "ts": pa.string(),
        "str": pa.string(),
        "json": pa.string(),
        "list": pa.list_(pa.string()),
        "float": pa.float64(),
        "int": pa.int64(),
        "bool": pa.bool_(),
    }[kind]


def _extra(obj: Mapping[str, Any], known: Iterable[str]) -> str | None:
    rest = {k: v for k, v in obj.items() if k not in known}
    return json.dumps(rest, separators=(",", ":"), sort_keys=True) if rest else None


# Set on each poll of a deployment's work pool (Prefect's ``mark_deployments_ready``), its
# `updated` untouched: not a change a pull publishes a snapshot for.
POLLED = frozenset({"last_polled", "status"})
FLOWS = TableSpec("flows", FLOW_COLUMNS, compare_rows=True)
DEPLOYMENTS = TableSpec("deployments", DEPLOYMENT_COLUMNS, compare_rows=True)
FLOW_RUNS = TableSpec("flow_runs", FLOW_RUN_COLUMNS)
TABLES = {t.name: t for t in (FLOWS, DEPLOYMENTS, FLOW_RUNS)}
