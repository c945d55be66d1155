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
- decimals and HUGEINTs: exact digits in text, JSON numbers in JSON;
- Parquet keeps every type as Polars holds it.

DuckDB types Polars cannot hold (intervals, unions, ...) arrive here already as
DuckDB's own text (``Store.typed_frame``). Must not: run SQL or open the store.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

LIST_SEPARATOR = ", "
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.6f"
TIME_FORMAT = "%H:%M:%S%.6f"


def _timestamp_format(dtype: pl.Datetime) -> str:
    fmt = TIMESTAMP_FORMAT.replace("%.6f", "%.9f") if dtype.time_unit == "ns" else TIMESTAMP_FORMAT
    return fmt + ("%:z" if dtype.time_zone else "")


def blob_text(value: bytes) -> str:
    return "".join(f"\\x{b:02X}" for b in value)


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
    if hasattr(value, "to_list"):  # Polars hands a list cell over as a Series
        value = value.to_list()
    return None if value is None else json.dumps(jsonable(value), ensure_ascii=False)


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
            cols.append(col.dt.to_string(_timestamp_format(dtype)))
        elif isinstance(dtype, pl.Time):
            cols.append(col.dt.to_string(TIME_FORMAT))
        elif isinstance(dtype, pl.Array) and _is_plain_list(dtype):
            cols.append(
                col.arr.to_list()
                .list.eval(pl.element().cast(pl.String).fill_null("NULL"))
                .list.join(LIST_SEPARATOR, ignore_nulls=False)
            )
        elif isinstance(dtype, pl.List) and _is_plain_list(dtype) and dtype.inner != pl.Binary:
            inner = dtype.inner
            element = (
                pl.element().dt.to_string(_timestamp_format(inner))
                if isinstance(inner, pl.Datetime)
                else pl.element().cast(pl.String)
            ).fill_null("NULL")
            cols.append(col.list.eval(element).list.join(LIST_SEPARATOR, ignore_nulls=False))
        elif dtype.is_nested():
            cols.append(col.map_elements(_json_text, return_dtype=pl.String, skip_nulls=True))
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
            col = col.dt.to_string(_timestamp_format(dtype))
        elif isinstance(dtype, pl.Time):
            col = col.dt.to_string(TIME_FORMAT)
        elif dtype == pl.Binary:
            col = col.map_elements(blob_text, return_dtype=pl.String, skip_nulls=True)
        elif isinstance(dtype, (pl.Categorical, pl.Enum)):
            col = col.cast(pl.String)
        elif dtype.is_nested() and _needs_python(dtype):
            raw = col.map_elements(_json_text, return_dtype=pl.String, skip_nulls=True)
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
    """Headers and cell texts of any frame, for the terminal, markdown and line output."""
    shown = _terminal_times(frame)
    return list(frame.columns), [[cell_text(v) for v in row] for row in textual(shown).iter_rows()]


def _terminal_times(frame: pl.DataFrame) -> pl.DataFrame:
    """Times a person reads: ``2026-01-01 09:30:00`` (UTC; fractions only when present)."""
    import polars as pl

    cols = [
        pl.col(name).dt.to_string("%Y-%m-%d %H:%M:%S%.f").alias(name)
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
