"""flowsync sql prints every DuckDB type in every format (fast lane: a built file, no server).

Table-driven: each row is a query returning one DuckDB type, and what its value reads as
in CSV and in JSON (one formatting per format, docs/analysis.md "Output formats"); every
other format must print it without a traceback, and Parquet must read back.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flowsync.cli import render
from flowsync.store import Store
from tests.helpers import run_cli
from tests.policy_db import built_db, run

# (sql, CSV cell, JSON value)
TYPES: list[tuple[str, str, Any]] = [
    ("SELECT INTERVAL 3 DAY + INTERVAL 5 MINUTE AS v", "3 days 00:05:00", "3 days 00:05:00"),
    (
        "SELECT age(TIMESTAMP '2020-01-01', TIMESTAMP '2019-11-30') AS v",
        "1 month 1 day",
        "1 month 1 day",
    ),
    (
        "SELECT max(end_time - start_time) AS v FROM flow_runs_enriched",
        "00:01:00",
        "00:01:00",
    ),
    ("SELECT 1.25::DECIMAL(10,2) AS v", "1.25", 1.25),
    (
        "SELECT 170141183460469231731687303715884105727::HUGEINT AS v",
        "170141183460469231731687303715884105727",
        170141183460469231731687303715884105727,
    ),
    (
        "SELECT 340282366920938463463374607431768211455::UHUGEINT AS v",
        "340282366920938463463374607431768211455",
        "340282366920938463463374607431768211455",
    ),
    ("SELECT sum(i) AS v FROM range(4) t(i)", "6", 6),
    (
        "SELECT 12345678901234567890123::VARINT AS v",
        "12345678901234567890123",
        "12345678901234567890123",
    ),
    ("SELECT MAP {'a': 1, 'b': 2} AS v", '{"a": 1, "b": 2}', {"a": 1, "b": 2}),
    ("SELECT histogram(i % 2) AS v FROM range(3) t(i)", '{"0": 2, "1": 1}', {"0": 2, "1": 1}),
    ("SELECT {'a': 1, 'b': [1, 2]} AS v", '{"a": 1, "b": [1, 2]}', {"a": 1, "b": [1, 2]}),
    ("SELECT union_value(num := 2)::UNION(num INT, str VARCHAR) AS v", "2", "2"),
    ("SELECT '\\xAA\\xBB'::BLOB AS v", "\\xAA\\xBB", "\\xAA\\xBB"),
    ("SELECT TIME '12:34:56' AS v", "12:34:56.000000", "12:34:56.000000"),
    ("SELECT TIMETZ '12:34:56+02' AS v", "12:34:56+02", "12:34:56+02"),
    ("SELECT [[1, 2], [3]] AS v", "[[1, 2], [3]]", [[1, 2], [3]]),
    ("SELECT ['a', 'b'] AS v", "a, b", ["a", "b"]),
    ("SELECT [1, 2, 3]::INT[3] AS v", "1, 2, 3", [1, 2, 3]),
    ("SELECT [{'a': INTERVAL 1 DAY}] AS v", '[{"a": "1 day"}]', [{"a": "1 day"}]),
    ("SELECT 'a'::ENUM('a', 'b') AS v", "a", "a"),
    (
        "SELECT '00000000-0000-0000-0000-000000000001'::UUID AS v",
        "00000000-0000-0000-0000-000000000001",
        "00000000-0000-0000-0000-000000000001",
    ),
    ("SELECT '{\"a\": [1, 2]}'::JSON AS v", '{"a": [1, 2]}', {"a": [1, 2]}),
    # DuckDB 2's VARIANT reached Polars as its binary encoding: csv and json stopped with a
    # traceback. Read as the JSON it holds.
    ("SELECT {'a': [1, 2]}::VARIANT AS v", '{"a":[1,2]}', {"a": [1, 2]}),
    ("SELECT 1::VARIANT AS v", "1", 1),
    ("SELECT ['x', NULL]::VARIANT AS v", '["x",null]', ["x", None]),
    ("SELECT '0101'::BIT AS v", "0101", "0101"),
    (
        "SELECT TIMESTAMPTZ '2026-01-02 03:04:05+00' AS v",
        "2026-01-02T03:04:05.000000+00:00",
        "2026-01-02T03:04:05.000000+00:00",
    ),
    (
        "SELECT TIMESTAMP '2026-01-02 03:04:05' AS v",
        "2026-01-02T03:04:05.000000",
        "2026-01-02T03:04:05.000000",
    ),
    ("SELECT DATE '2026-01-02' AS v", "2026-01-02", "2026-01-02"),
    ("SELECT true AS v", "true", True),
    ("SELECT NULL AS v", "", None),
    ("SELECT 'nan'::DOUBLE AS v", "NaN", None),
    # DuckDB's infinite times: written as DuckDB writes them, never a Rust panic
    *(
        (f"SELECT '{sign}infinity'::{kind} AS v", f"{sign}infinity", f"{sign}infinity")
        for kind in ("TIMESTAMP", "TIMESTAMPTZ", "TIMESTAMP_MS", "TIMESTAMP_S", "DATE")
        for sign in ("", "-")
    ),
    ("SELECT ['infinity'::TIMESTAMP_S] AS v", "infinity", ["infinity"]),
    # times past year 9999 (Python's last) and 262143 (Polars'): as Polars writes them
    (
        "SELECT TIMESTAMP '294247-01-10 04:00:54.775806' AS v",
        "+294247-01-10T04:00:54.775806",
        "+294247-01-10T04:00:54.775806",
    ),
    (
        "SELECT TIMESTAMP '290000-03-01 (BC) 12:00:00' AS v",
        "-289999-03-01T12:00:00.000000",
        "-289999-03-01T12:00:00.000000",
    ),
    ("SELECT DATE '5000000-02-29' AS v", "+5000000-02-29", "+5000000-02-29"),
    (
        "SELECT TIMESTAMP_MS '290000-01-01 01:00:00' AS v",
        "+290000-01-01T01:00:00.000000",
        "+290000-01-01T01:00:00.000000",
    ),
    ("SELECT [DATE '5881580-07-10'] AS v", "+5881580-07-10", ["+5881580-07-10"]),
    (
        "SELECT {'d': DATE '12000-03-01', 't': TIMESTAMPTZ '290000-01-01 00:00:00+00'} AS v",
        '{"d": "+12000-03-01", "t": "+290000-01-01T00:00:00.000000+00:00"}',
        {"d": "+12000-03-01", "t": "+290000-01-01T00:00:00.000000+00:00"},
    ),
    (
        "SELECT ['infinity'::TIMESTAMP, TIMESTAMP '2026-01-02 03:04:05'] AS v",
        "infinity, 2026-01-02T03:04:05.000000",
        ["infinity", "2026-01-02T03:04:05.000000"],
    ),
    (
        "SELECT ['-infinity'::DATE, DATE '2026-01-02'] AS v",
        "-infinity, 2026-01-02",
        ["-infinity", "2026-01-02"],
    ),
    ("SELECT {'d': '-infinity'::DATE} AS v", '{"d": "-infinity"}', {"d": "-infinity"}),
    (
        "SELECT {'t': 'infinity'::TIMESTAMPTZ, 'u': TIMESTAMPTZ '2026-01-02 03:04:05+00'} AS v",
        '{"t": "infinity", "u": "2026-01-02T03:04:05.000000+00:00"}',
        {"t": "infinity", "u": "2026-01-02T03:04:05.000000+00:00"},
    ),
    # maps whose keys JSON cannot hold (lists, structs): DuckDB's own text
    ("SELECT MAP {[1]: 2} AS v", "{[1]=2}", "{[1]=2}"),
    # keys and values a map cannot be cast to hold (a DATE key), read from its entries
    ("SELECT MAP {DATE '2020-01-01': 1} AS v", '{"2020-01-01": 1}', {"2020-01-01": 1}),
    (
        "SELECT [[TIMESTAMP '2020-01-01']]::TIMESTAMP[1][1] AS v",  # an array of arrays
        '[["2020-01-01T00:00:00.000000"]]',
        [["2020-01-01T00:00:00.000000"]],
    ),
    (
        "SELECT ['infinity'::DATE, NULL, DATE '2026-01-02'] AS v",
        "infinity, NULL, 2026-01-02",
        ["infinity", None, "2026-01-02"],
    ),
    ("SELECT MAP {{'a': 1}: 2} AS v", "{{'a': 1}=2}", "{{'a': 1}=2}"),
    ("SELECT {'m': MAP {[1]: 2}} AS v", '{"m": "{[1]=2}"}', {"m": "{[1]=2}"}),
    ("SELECT [MAP {[1]: 2}] AS v", '["{[1]=2}"]', ["{[1]=2}"]),
]


# A terminal (table, markdown, line) reads times the way a person does.
TERMINAL = {
    "SELECT TIMESTAMPTZ '2026-01-02 03:04:05+00' AS v": "2026-01-02 03:04:05",
    "SELECT TIMESTAMP '2026-01-02 03:04:05' AS v": "2026-01-02 03:04:05",
    "SELECT 'nan'::DOUBLE AS v": "nan",
    "SELECT NULL AS v": "NULL",
    "SELECT TIMESTAMP '294247-01-10 04:00:54.775806' AS v": "+294247-01-10 04:00:54.775806",
    "SELECT TIMESTAMP '290000-03-01 (BC) 12:00:00' AS v": "-289999-03-01 12:00:00",
    "SELECT TIMESTAMP_MS '290000-01-01 01:00:00' AS v": "+290000-01-01 01:00:00",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_db(
        tmp_path_factory.mktemp("types") / "runs.duckdb",
        [run(1, "FAILED", 1), run(2, "COMPLETED", 2), run(3, "RUNNING", 0.1)],
    )


def sql(db: Path, query: str, fmt: str) -> Any:
    result = run_cli("sql", query, "--format", fmt, "--db", str(db))
    assert result.exit_code == 0, (fmt, query, result.output)
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize(("query", "csv_cell", "json_value"), TYPES, ids=[t[0] for t in TYPES])
def test_every_type_prints_in_every_format(
    built: Path, query: str, csv_cell: str, json_value: Any
) -> None:
    csv = sql(built, query, "csv").stdout
    assert csv.splitlines()[0] == "v"
    assert pl.read_csv(io.StringIO(csv), infer_schema=False)["v"].fill_null("")[0] == csv_cell
    assert json.loads(sql(built, query, "json").stdout) == [{"v": json_value}]
    for fmt in ("table", "markdown", "line"):
        text = sql(built, query, fmt).stdout
        assert TERMINAL.get(query, csv_cell) in text, (fmt, text)
    frame = pl.read_parquet(io.BytesIO(sql(built, query, "parquet").stdout_bytes))
    assert frame.columns == ["v"] and frame.height == 1


# Maps with keys JSON cannot hold, in every shape their text takes: what flowsync writes
# must be what DuckDB itself writes for them (``::VARCHAR``).
MAPS = [
    "MAP {[1]: 2, [3, NULL]: 4}",
    "MAP {{'a': 1}: 2}",
    "MAP {{'a': 'x y', 'b': NULL, 'c d': 1.5}: [true, false]}",
    "MAP {['x', 'a b', 'c,d', '', NULL, 'it''s', '[q]', 'e=f', '{g}', ' lead', 'null', 'NULL']: 1}",
    "MAP {['a:b', 'back\\slash', 'quote\"d', '(p)']: 'v=w'}",
    "MAP {[1.5::DOUBLE, 2]: MAP {'k': 'v'}}",
    "MAP {[[1, 2], [3]]: NULL}",
    "MAP {[1]: {'k': 'it''s', 'n': [NULL]}}",
    "MAP {[DATE '2020-01-01']: 'infinity'::DATE}",
    "MAP {[1]: 1.25::DECIMAL(5,2)}",
    "MAP {[true]: 'NULL'}",
    "MAP {[1]: 'infinity'::DOUBLE}",
    "MAP {[1]: [TIMESTAMP '2020-01-01 01:02:03.5', 'infinity'::TIMESTAMP, NULL]}",
    "MAP {[1]: TIMESTAMPTZ '2020-01-01 01:02:03.25+00'}",
    "MAP {[1]: TIMESTAMP_NS '2020-01-01 01:02:03.123456789'}",
    "MAP {[TIME '12:34:56.5']: 0.1::FLOAT}",
    "MAP {[1]: '\\xAA'::BLOB}",
]


@pytest.mark.parametrize("expr", MAPS)
def test_maps_with_nested_keys_read_as_duckdb_writes_them(built: Path, expr: str) -> None:
    query = f"SELECT m, m::VARCHAR AS duckdb FROM (SELECT {expr} AS m)"
    rows = json.loads(sql(built, query, "json").stdout)
    assert rows[0]["m"] == rows[0]["duckdb"]
    csv = pl.read_csv(io.StringIO(sql(built, query, "csv").stdout), infer_schema=False)
    assert csv["m"][0] == csv["duckdb"][0]


def test_json_columns_are_json_and_times_agree_across_formats(built: Path) -> None:
    query = "SELECT parameters, start_time FROM flow_runs WHERE id = '00000000-0000-0000-0000-000000000001'"
    with Store.reader(built, live=True) as store:
        store.execute("SELECT 1")
    rows = json.loads(sql(built, query, "json").stdout)
    csv = pl.read_csv(io.StringIO(sql(built, query, "csv").stdout), infer_schema=False)
    assert rows[0]["start_time"] == csv["start_time"][0]
    assert rows[0]["start_time"].endswith("+00:00") and "T" in rows[0]["start_time"]
    assert not isinstance(rows[0]["parameters"], str)


def test_numbers_right_aligned_and_cut_cells_noted() -> None:
    headers = ["name", "n", "message"]
    rows = [["run_" + "x" * 60, "7", "y" * 200], ["short", "12345", "z"]]
    fitted = render.result_table(headers, rows, [False, True, False], width=60)
    assert fitted.cut_cells >= 2 and fitted.hidden_columns == []
    columns = fitted.table.columns
    assert columns[1].justify == "right" and columns[0].justify == "left"
    wide = [f"c{i}" for i in range(40)]
    fitted = render.result_table(wide, [["v" * 10] * 40], [False] * 40, width=80)
    assert fitted.hidden_columns and fitted.hidden_columns[-1] == "c39"


def test_line_mode_shows_every_value_whole(built: Path) -> None:
    long = "x" * 500
    text = sql(built, f"SELECT 1 AS n, '{long}' AS long_text", "line").stdout
    assert text == f"        n = 1\nlong_text = {long}\n"


def test_sql_from_stdin_and_file(built: Path, tmp_path: Path) -> None:
    result = run_cli("sql", "-", "-f", "csv", "--db", str(built), input="SELECT 42 AS answer")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["answer", "42"]
    query = tmp_path / "q.sql"
    query.write_text("-- how many\nSELECT count(*) AS runs FROM flow_runs;\n")
    result = run_cli("sql", "--file", str(query), "-f", "csv", "--db", str(built))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["runs", "3"]
    result = run_cli("sql", "SELECT 1", "--file", str(query), "--db", str(built))
    assert result.exit_code == 2 and "not both" in result.stderr
    result = run_cli("sql", "--file", str(tmp_path / "nope.sql"), "--db", str(built))
    assert result.exit_code == 2 and "Cannot read --file" in result.stderr
    result = run_cli("sql", "--db", str(built))
    assert result.exit_code == 2 and "--tables" in result.stderr


def test_tables_lists_tables_views_and_macros_with_columns(built: Path) -> None:
    rows = json.loads(run_cli("sql", "--tables", "-f", "json", "--db", str(built)).stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["flow_runs"]["kind"] == "table"
    assert "id UUID" in by_name["flow_runs"]["columns"]
    assert by_name["flow_runs_enriched"]["kind"] == "view"
    assert by_name["failure_rates"]["kind"] == "table macro"
    assert "since" in by_name["failure_rates"]["columns"]
    assert by_name["signature_of"]["kind"] == "macro"


@pytest.mark.parametrize(
    ("query", "headline", "hint"),
    [
        (
            "SELECT * FROM flowruns",
            "Table with name flowruns does not exist!",
            'Did you mean "flow_runs"?',
        ),
        ("SELECT nme FROM flow_runs", 'Referenced column "nme" not found', '"name"'),
        (
            "SELECT * FROM failure_rates('deployment')",
            "does not support the supplied arguments",
            "failure_rates(per, since, until, prev_start, include_deleted",
        ),
        ("SELEC 1", 'syntax error at or near "SELEC"', "LINE 1: SELEC 1"),
    ],
)
def test_errors_keep_duckdbs_hints(built: Path, query: str, headline: str, hint: str) -> None:
    result = run_cli("sql", query, "--db", str(built))
    assert result.exit_code == 5 and result.stdout == ""
    first, *rest = result.stderr.rstrip().splitlines()
    assert first.startswith("error: Query failed:") and headline in first
    assert rest and all(line.startswith("  ") for line in rest), result.stderr
    assert hint in "\n".join(rest)
    assert "Traceback" not in result.output
