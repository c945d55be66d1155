"""The output formats of ``flowsync sql`` and the reports: one formatting of values per format.

Owns: how a result frame becomes csv, json, markdown, parquet or line text, and the
text of a cell in a terminal table. Each kind of value is written one way per format
(docs/analysis.md, "Output formats"):

- times: ISO 8601 with a ``T``, microseconds and, with a time zone, ``+00:00``
  (``2026-01-01T09:30:00.000000+00:00``), the same in CSV and JSON; in markdown, line and
  table as a person reads them, ``2026-01-01 09:30:00`` (UTC); dates ``2026-01-01``;
- lists of plain values (tags): ``a, b`` in csv, markdown, line and table; JSON arrays in JSON;
- structs, maps and nested lists: JSON text in csv, markdown, line and table; JSON in JSON;
- JSON columns (``parameters``, ``labels``, ...): their JSON as it is in csv and the
  terminal; parsed into the document in JSON (never a string holding JSON);
- blobs: DuckDB's ``\\xAA\\xBB`` text; NaN and infinity: ``NaN``/``inf`` in text, null in JSON;
- DuckDB's infinite times and dates: ``infinity``/``-infinity`` (as DuckDB writes them) in
  every format but Parquet, nested ones too (Polars holds them as the largest and smallest
  integers, which it cannot format); ``TIMESTAMP_S`` arrives as ``TIMESTAMP``
  (``Store.typed_frame``: DuckDB's handover turned its infinity into 1969-12-31T23:59:59);
- times past year 9999 as Polars writes them, ``+12000-01-01T00:00:00.000000``, nested ones
  and those past Polars' own years (262143) too;
- maps whose keys are nested (lists, structs), which neither JSON nor a Python dict can
  hold: DuckDB's own text (``{[1]=2}``, as ``::VARCHAR`` writes it) in every format but Parquet;
- decimals and HUGEINTs: exact digits in text, JSON numbers in JSON;
- Parquet keeps every type as Polars holds it.

DuckDB types Polars cannot hold (intervals, unions, ...) arrive here already as
DuckDB's own text (``Store.typed_frame``). Must not: run SQL or open the store.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from flowsync import present

if TYPE_CHECKING:
    import polars as pl

LIST_SEPARATOR = ", "
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.6f"
TIME_FORMAT = "%H:%M:%S%.6f"
DATE_FORMAT = "%Y-%m-%d"


def _timestamp_format(dtype: pl.Datetime) -> str:
    fmt = TIMESTAMP_FORMAT.replace("%.6f", "%.9f") if dtype.time_unit == "ns" else TIMESTAMP_FORMAT
    return fmt + ("%:z" if dtype.time_zone else "")


def blob_text(value: bytes) -> str:
    return "".join(f"\\x{b:02X}" for b in value)


# -- DuckDB's infinite times --------------------------------------------------------


def _infinity(dtype: Any) -> int | None:
    """The physical integer Polars holds DuckDB's ``infinity`` of a time type as (its
    negation is ``-infinity``): the largest of epoch microseconds (milliseconds,
    nanoseconds) or epoch days. None for any other type."""
    import polars as pl

    if isinstance(dtype, pl.Datetime):
        return 2**63 - 1
    if dtype == pl.Date:
        return 2**31 - 1
    return None


# Polars formats times only within years -262143..262143 (chrono's); DuckDB's run to
# 294247 (dates to 5881580, and back to 290309 BC). The Gregorian calendar repeats every
# 400 years to the day, so a time past year 100,000 either way is formatted whole cycles
# nearer (in 1970..2369), then given its own year.
_CYCLE_DAYS = 146097  # days in 400 Gregorian years
_FAR_DAYS = _CYCLE_DAYS * 245  # about 98,000 years from 1970


def _per_day(dtype: Any) -> int:
    """Units of ``dtype``'s physical integer in a day (1 for a date)."""
    import polars as pl

    return 1 if dtype == pl.Date else 86400 * _PER_SECOND[dtype.time_unit]


def _time_text(expr: pl.Expr, dtype: Any, fmt: str) -> pl.Expr:
    """``expr.dt.to_string(fmt)`` (``fmt`` starts with the year), DuckDB's infinite times
    as ``infinity``/``-infinity`` (formatting them would panic in Polars: they are kept
    from it), and times past Polars' years written as it writes years past 9999
    (``+290000-01-01``)."""
    import polars as pl

    top = _infinity(dtype)
    assert top is not None
    physical = expr.to_physical()
    finite = (physical < top) & (physical > -top)
    if isinstance(dtype, pl.Datetime) and dtype.time_unit == "ns":  # never that far
        text = pl.when(finite).then(expr).dt.to_string(fmt)
    else:
        span = _CYCLE_DAYS * _per_day(dtype)
        far = finite & (physical.abs() > _FAR_DAYS * _per_day(dtype))
        cycles = pl.when(far).then(physical // span).otherwise(0)
        near = pl.when(finite).then(physical - cycles * span).cast(dtype).dt.to_string(fmt)
        year = near.str.extract(r"^([+-]?\d+)", 1).cast(pl.Int64) + 400 * cycles.cast(pl.Int64)
        moved = pl.concat_str(
            pl.when(year > 9999).then(pl.lit("+")).otherwise(pl.lit("")),
            year.cast(pl.String),
            near.str.replace(r"^[+-]?\d+", ""),
        )
        text = pl.when(far).then(moved).otherwise(near)
    return (
        pl.when(physical == top)
        .then(pl.lit("infinity"))
        .when(physical == -top)
        .then(pl.lit("-infinity"))
        .otherwise(text)
    )


_EPOCH = datetime(1970, 1, 1)
_PER_SECOND = {"ns": 10**9, "us": 10**6, "ms": 10**3}


def _time_value(value: int, dtype: Any) -> date | datetime | str:
    """A time held as its integer (``_python_dtype``) as Python's value, or DuckDB's
    ``infinity``/``-infinity``."""
    import polars as pl

    top = _infinity(dtype)
    if value == top:
        return "infinity"
    if top is not None and value == -top:
        return "-infinity"
    try:
        if dtype == pl.Date:
            return _EPOCH.date() + timedelta(days=value)
        seconds, fraction = divmod(value, _PER_SECOND[dtype.time_unit])
        when = _EPOCH + timedelta(
            seconds=seconds, microseconds=fraction * 10**6 // _PER_SECOND[dtype.time_unit]
        )
    except OverflowError:  # past year 9999, which DuckDB allows and Python does not
        return _far_time(value, dtype)
    if dtype.time_zone:
        return when.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(dtype.time_zone))
    return when


def _far_time(value: int, dtype: Any) -> str:
    """A time past Python's years (1..9999) as ISO text, its year written as Polars writes
    it (``+12000-01-01T01:02:03.000000``): formatted whole 400-year cycles nearer."""
    cycles = value // _per_day(dtype) // _CYCLE_DAYS
    near = _time_value(value - cycles * _CYCLE_DAYS * _per_day(dtype), dtype)
    assert isinstance(near, date)
    text = near.isoformat(timespec="microseconds") if isinstance(near, datetime) else str(near)
    year = near.year + 400 * cycles
    return ("+" if year > 9999 else "") + str(year) + text[4:]


# -- values Python cannot hold as Polars hands them over ---------------------------


def _python_dtype(dtype: Any) -> Any:
    """The type a nested column is cast to before its values reach Python, or None when
    it reaches Python as it is: times as their integers (DuckDB's infinite times have no
    Python value) and maps whose keys are nested as their entries (no dict holds them).
    ``_shaped`` turns the values back by ``dtype``."""
    import polars as pl

    if _infinity(dtype) is not None:
        return pl.Int64 if isinstance(dtype, pl.Datetime) else pl.Int32
    if isinstance(dtype, pl.Map):
        key, value = _python_dtype(dtype.key), _python_dtype(dtype.value)
        if not dtype.key.is_nested() and key is None and value is None:
            return None
        # As its entries: a map's keys cannot be cast (a DATE key to its integer), nor held
        # in a dict when nested; ``_shaped`` rebuilds it.
        return pl.List(pl.Struct({"key": key or dtype.key, "value": value or dtype.value}))
    if isinstance(dtype, (pl.List, pl.Array)):
        inner = _python_dtype(dtype.inner)
        if inner is None:
            return None
        return pl.List(inner) if isinstance(dtype, pl.List) else pl.Array(inner, dtype.size)
    if isinstance(dtype, pl.Struct):
        fields = [(f.name, f.dtype, _python_dtype(f.dtype)) for f in dtype.fields]
        if all(cast is None for _, _, cast in fields):
            return None
        return pl.Struct({name: cast or own for name, own, cast in fields})
    return None


def _cell(value: Any) -> Any:
    return value.to_list() if hasattr(value, "to_list") else value  # a list cell is a Series


def _shaped(value: Any, dtype: Any) -> Any:
    """A value of a column cast to ``_python_dtype(dtype)`` as ``jsonable`` reads it: times
    back to times (or ``infinity``), a map with nested keys as DuckDB's text of it."""
    import polars as pl

    value = _cell(value)
    if value is None:
        return None
    if _infinity(dtype) is not None:
        return _time_value(value, dtype)
    if isinstance(dtype, pl.Map):
        if dtype.key.is_nested():
            return duckdb_text(value, dtype)
        pairs = (
            value.items() if isinstance(value, dict) else ((e["key"], e["value"]) for e in value)
        )
        return {_shaped(k, dtype.key): _shaped(v, dtype.value) for k, v in pairs}
    if isinstance(dtype, (pl.List, pl.Array)):
        return [_shaped(v, dtype.inner) for v in value]
    if isinstance(dtype, pl.Struct):
        return {f.name: _shaped(value.get(f.name), f.dtype) for f in dtype.fields}
    return value


def _in_python(col: pl.Expr, dtype: Any, write: Callable[[Any], str | None]) -> pl.Expr:
    """``write`` of each (non-null) value of a nested column, which reaches it as
    ``_shaped`` returns it."""
    import polars as pl

    cast = _python_dtype(dtype)
    return (col if cast is None else col.cast(cast)).map_elements(
        lambda v: write(_shaped(v, dtype)), return_dtype=pl.String, skip_nulls=True
    )


# -- DuckDB's text of a nested value (maps with nested keys) -----------------------

# A value inside a list, struct or map is quoted when it holds one of these, is empty,
# reads as NULL, or starts or ends with a space (as DuckDB's ``::VARCHAR`` does).
_SPECIAL = frozenset("\"'(),:=[]{}\\")
_SPACE = " \t\n\v\f\r"


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _element_text(text: str) -> str:
    plain = (
        text
        and text.upper() != "NULL"
        and text[0] not in _SPACE
        and text[-1] not in _SPACE
        and _SPECIAL.isdisjoint(text)
    )
    return text if plain else _quoted(text)


def _float_text(value: float, dtype: Any) -> str:
    import polars as pl

    if dtype == pl.Float32 and math.isfinite(value):  # the shortest text that reads back
        for digits in range(1, 10):
            text = f"{value:.{digits}g}"
            if struct.unpack("f", struct.pack("f", float(text)))[0] == value:
                return repr(float(text))
    return repr(value)


def _fraction(value: int, digits: int) -> str:
    return f".{value:0{digits}d}".rstrip("0") if value else ""


def _duckdb_time(value: int, dtype: Any) -> str:
    """A time held as its integer as DuckDB writes it: ``2026-01-02 03:04:05.5+00``."""
    import polars as pl

    shown = _time_value(value, dtype)
    if not isinstance(dtype, pl.Datetime) or isinstance(shown, str):  # a date, or infinity
        return str(shown)
    per = _PER_SECOND[dtype.time_unit]
    fraction = value % per
    whole = _time_value(value - fraction, dtype)
    assert isinstance(whole, datetime)
    text = f"{whole:%Y-%m-%d %H:%M:%S}" + _fraction(fraction, len(str(per)) - 1)
    if whole.utcoffset() is not None:
        offset = f"{whole:%z}"
        text += offset[:3] + (f":{offset[3:]}" if offset[3:] != "00" else "")
    return text


def _scalar_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return blob_text(value)
    if isinstance(value, time):
        return f"{value:%H:%M:%S}" + _fraction(value.microsecond, 6)
    return str(value)


def duckdb_text(value: Any, dtype: Any) -> str:
    """A value as DuckDB's ``::VARCHAR`` writes it (``{[1]=2}``, ``[a, 'b,c']``,
    ``{'k': v}``): the text of a map whose keys are nested. ``value`` is as Polars hands
    it over once cast to ``_python_dtype(dtype)`` (times as integers, maps as entries)."""
    import polars as pl

    value = _cell(value)
    if value is None:
        return "NULL"
    if isinstance(dtype, pl.Map):
        pairs = (
            value.items() if isinstance(value, dict) else ((e["key"], e["value"]) for e in value)
        )
        inner = ", ".join(
            f"{duckdb_text(k, dtype.key)}={duckdb_text(v, dtype.value)}" for k, v in pairs
        )
        return "{" + inner + "}"
    if isinstance(dtype, (pl.List, pl.Array)):
        return "[" + ", ".join(duckdb_text(v, dtype.inner) for v in value) + "]"
    if isinstance(dtype, pl.Struct):
        fields = (
            f"{_quoted(f.name)}: {duckdb_text(value.get(f.name), f.dtype)}" for f in dtype.fields
        )
        return "{" + ", ".join(fields) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if _infinity(dtype) is not None:
        return _element_text(_duckdb_time(value, dtype))
    if isinstance(value, float):
        return _float_text(value, dtype)
    if isinstance(value, (int, Decimal)):
        return str(value)
    return _element_text(_scalar_text(value))


def jsonable(value: Any) -> Any:
    """A nested value (a struct, map or list element) as JSON values, times as ISO 8601."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, time):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return blob_text(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _json_text(value: Any) -> str | None:
    value = _cell(value)
    return None if value is None else json.dumps(jsonable(value), ensure_ascii=False)


def _list_element(inner: Any) -> pl.Expr:
    """A plain list's element as text: times in the one ISO format, null as ``NULL``."""
    import polars as pl

    element = pl.element()
    if isinstance(inner, pl.Datetime):
        text = _time_text(element, inner, _timestamp_format(inner))
    elif inner == pl.Date:
        text = _time_text(element, inner, DATE_FORMAT)
    else:
        text = element.cast(pl.String)
    return text.fill_null("NULL")


def _is_time_list(dtype: Any) -> bool:
    """A list or array (one level) of dates or timestamps."""
    import polars as pl

    return isinstance(dtype, (pl.List, pl.Array)) and _infinity(dtype.inner) is not None


def _time_list_json(col: pl.Expr, dtype: Any) -> pl.Expr:
    """A list of dates or timestamps as JSON text: each an ISO string (or ``infinity``)."""
    import polars as pl

    inner = dtype.inner
    fmt = _timestamp_format(inner) if isinstance(inner, pl.Datetime) else DATE_FORMAT
    quoted = pl.concat_str([pl.lit('"'), _time_text(pl.element(), inner, fmt), pl.lit('"')])
    items = (col.arr.to_list() if isinstance(dtype, pl.Array) else col).list.eval(
        quoted.fill_null("null")
    )
    return pl.concat_str([pl.lit("["), items.list.join(","), pl.lit("]")])


def _is_plain_list(dtype: pl.DataType) -> bool:
    import polars as pl

    return isinstance(dtype, (pl.List, pl.Array)) and not dtype.inner.is_nested()


def textual(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame as csv, markdown, line and table write it: every nested or binary value as
    text, times in the one ISO format; numbers, strings and booleans as they are."""
    import polars as pl

    cols: list[pl.Expr] = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            cols.append(_time_text(col, dtype, _timestamp_format(dtype)))
        elif dtype == pl.Date:
            cols.append(_time_text(col, dtype, DATE_FORMAT))
        elif isinstance(dtype, pl.Time):
            cols.append(col.dt.to_string(TIME_FORMAT))
        elif isinstance(dtype, pl.Array) and _is_plain_list(dtype):
            cols.append(
                col.arr.to_list()
                .list.eval(_list_element(dtype.inner))
                .list.join(LIST_SEPARATOR, ignore_nulls=False)
            )
        elif isinstance(dtype, pl.List) and _is_plain_list(dtype) and dtype.inner != pl.Binary:
            cols.append(
                col.list.eval(_list_element(dtype.inner)).list.join(
                    LIST_SEPARATOR, ignore_nulls=False
                )
            )
        elif isinstance(dtype, pl.Map) and dtype.key.is_nested():
            cols.append(_in_python(col, dtype, str))  # DuckDB's text, as it is
        elif dtype.is_nested():
            cols.append(_in_python(col, dtype, _json_text))
        elif dtype == pl.Binary:
            cols.append(col.map_elements(blob_text, return_dtype=pl.String, skip_nulls=True))
        elif isinstance(dtype, pl.Decimal):
            cols.append(col.cast(pl.String))
        else:
            continue
        cols[-1] = cols[-1].alias(name)
    return frame.with_columns(cols) if cols else frame


def to_csv(frame: pl.DataFrame) -> bytes:
    return textual(frame).write_csv().encode()


def _needs_python(dtype: Any) -> bool:
    """Whether a nested type holds values Polars' JSON encoder writes its own way (times,
    decimals, blobs, maps): those cells are encoded by ``jsonable`` instead."""
    import polars as pl

    if isinstance(dtype, (pl.List, pl.Array)):
        return _needs_python(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_needs_python(f.dtype) for f in dtype.fields)
    if isinstance(dtype, (pl.Datetime, pl.Time, pl.Duration, pl.Decimal, pl.Object)):
        return True
    if dtype == pl.Date:  # DuckDB's infinite dates: Polars' encoder cannot write them
        return True
    return dtype == pl.Binary or (dtype.is_nested() and not isinstance(dtype, pl.Struct))


def to_json(frame: pl.DataFrame, json_columns: Iterable[str] = ()) -> bytes:
    """An array of objects, one per row, built by Polars column by column (a Python loop
    only for nested values holding times, decimals, blobs or maps). JSON columns are
    parsed into the document, decimals and HUGEINTs are exact JSON numbers."""
    import polars as pl

    if frame.is_empty():
        return b"[]\n"
    parsed = set(json_columns)
    parts: list[pl.Expr] = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        key = pl.lit(json.dumps(name, ensure_ascii=False) + ":")
        raw: pl.Expr | None = None  # text that is already JSON
        if name in parsed:
            raw = col
        elif isinstance(dtype, pl.Decimal):
            raw = col.cast(pl.String)  # the exact digits: a JSON number
        elif isinstance(dtype, pl.Datetime):
            col = _time_text(col, dtype, _timestamp_format(dtype))
        elif dtype == pl.Date:
            col = _time_text(col, dtype, DATE_FORMAT)
        elif isinstance(dtype, pl.Time):
            col = col.dt.to_string(TIME_FORMAT)
        elif dtype == pl.Binary:
            col = col.map_elements(blob_text, return_dtype=pl.String, skip_nulls=True)
        elif isinstance(dtype, (pl.Categorical, pl.Enum)):
            col = col.cast(pl.String)
        elif _is_time_list(dtype):  # each time by Polars (infinity too), not row by row
            raw = _time_list_json(col, dtype)
        elif dtype.is_nested() and _needs_python(dtype):
            raw = _in_python(col, dtype, _json_text)
        if raw is not None:
            parts.append(pl.concat_str([key, raw.fill_null("null")]))
        else:  # Polars escapes strings and writes NaN and infinity as null
            encoded = pl.struct(col.alias(name)).struct.json_encode()
            parts.append(encoded.str.strip_prefix("{").str.strip_suffix("}"))
    if not parts:
        return ("[" + ",".join(["{}"] * frame.height) + "]\n").encode()
    row = pl.concat_str([pl.lit("{"), pl.concat_str(parts, separator=","), pl.lit("}")])
    rows = frame.select(row.alias("row"))["row"].to_list()
    return ("[" + ",".join(rows) + "]\n").encode()


def to_parquet(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[bool]
) -> str:
    """A GitHub markdown table; ``right`` marks the columns aligned right (numbers)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "|".join("---:" if r else "---" for r in right) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def numeric_columns(frame: pl.DataFrame) -> list[bool]:
    return [dtype.is_numeric() for dtype in frame.schema.values()]


def cell_text(value: Any) -> str:
    """A value of a ``textual`` frame as a terminal or markdown cell: exact, like the duckdb CLI."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def text_rows(frame: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Headers and cell texts of any frame, for the terminal, markdown and line output:
    control characters and bidi overrides escaped (``present.printable``)."""
    shown = _terminal_times(frame)
    headers = [present.printable(h) for h in frame.columns]
    rows = [[present.printable(cell_text(v)) for v in row] for row in textual(shown).iter_rows()]
    return headers, rows


def _terminal_times(frame: pl.DataFrame) -> pl.DataFrame:
    """Times a person reads: ``2026-01-01 09:30:00`` (UTC; fractions only when present)."""
    import polars as pl

    cols = [
        _time_text(pl.col(name), dtype, "%Y-%m-%d %H:%M:%S%.f").alias(name)
        for name, dtype in frame.schema.items()
        if isinstance(dtype, pl.Datetime)
    ]
    return frame.with_columns(cols) if cols else frame


def to_markdown(frame: pl.DataFrame) -> str:
    headers, rows = text_rows(frame)
    return markdown_table(headers, rows, numeric_columns(frame))


def to_lines(frame: pl.DataFrame) -> str:
    """One ``column = value`` line per column, a blank line between rows (duckdb's ``.mode line``)."""
    headers, rows = text_rows(frame)
    width = max((len(h) for h in headers), default=0)
    blocks = ["\n".join(f"{h:>{width}} = {v}" for h, v in zip(headers, row)) for row in rows]
    return "\n\n".join(blocks) + ("\n" if blocks else "")
