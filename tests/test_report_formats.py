"""Report output formats (fast lane: a built file, no server): markdown reads like the
terminal table, --html with --format writes both, nothing is silently dropped."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import polars as pl
import pytest

from tests.helpers import run_cli
from tests.policy_db import DEPLOYMENTS, built_db, run


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = [
        run(n, "FAILED" if n % 4 == 0 else "COMPLETED", n / 10, tags=["etl", "ml"])
        for n in range(1, 41)
    ]
    return built_db(tmp_path_factory.mktemp("formats") / "runs.duckdb", runs)


def report(db: Path, *args: str) -> str:
    result = run_cli("report", *args, "--db", str(db))
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def test_markdown_is_readable_names_and_percentages(built: Path) -> None:
    md = report(built, "failures", "--since", "30d", "--format", "markdown").splitlines()
    assert md[0].startswith("| flow/deployment | runs | failed | failure rate |")
    assert md[1].startswith("|---|---:|---:|---:|")
    row = next(line for line in md[2:] if "etl/prod" in line)
    assert "25.0%" in row
    assert DEPLOYMENTS["prod"] not in "\n".join(md)  # ids only with --ids
    with_ids = report(built, "failures", "--since", "30d", "--format", "markdown", "--ids")
    assert DEPLOYMENTS["prod"] in with_ids


def test_tags_join_the_same_way_in_every_text_format(built: Path) -> None:
    query = "SELECT tags FROM flow_runs LIMIT 1"
    csv = run_cli("sql", query, "-f", "csv", "--db", str(built)).stdout
    md = run_cli("sql", query, "-f", "markdown", "--db", str(built)).stdout
    line = run_cli("sql", query, "-f", "line", "--db", str(built)).stdout
    assert pl.read_csv(io.StringIO(csv))["tags"][0] == "etl, ml"
    assert "| etl, ml |" in md and line == "tags = etl, ml\n"
    assert json.loads(run_cli("sql", query, "-f", "json", "--db", str(built)).stdout) == [
        {"tags": ["etl", "ml"]}
    ]


@pytest.mark.parametrize("command", ["failures", "health"])
def test_html_with_format_writes_both(built: Path, tmp_path: Path, command: str) -> None:
    page = tmp_path / "page.html"
    out = report(built, command, "--since", "30d", "--html", str(page), "--format", "json")
    assert page.read_text().lower().startswith("<!doctype html>")
    assert json.loads(out)  # the data was not silently dropped
    page.unlink()
    assert report(built, command, "--since", "30d", "--html", str(page)) == ""
    assert page.exists()


@pytest.mark.parametrize("bad", ["--output", "--html"])
def test_html_and_output_are_both_checked_before_either_is_written(
    built: Path, tmp_path: Path, bad: str
) -> None:
    """``--html`` with ``--output``: one of them in a folder that does not exist is one line
    (exit 2), and the other is not written either (the page was, before the data failed)."""
    (folder := tmp_path / "out").mkdir()
    good = {"--html": folder / "page.html", "--output": folder / "data.csv"}
    paths = {**good, bad: folder / "missing" / "x"}
    args = ["--html", str(paths["--html"]), "--format", "csv", "--output", str(paths["--output"])]
    result = run_cli("report", "health", "--since", "30d", *args, "--db", str(built))
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: Cannot write {bad} {paths[bad]}: No such file or directory. Choose a writable path."
    ]
    assert sorted(folder.iterdir()) == []


MARKUP = "etl [/x] [red]"  # Rich markup: a closing tag with no opening one, and a style


@pytest.fixture(scope="module")
def bracketed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built file whose flow's name reads as Rich markup."""
    from flowsync.store import Store

    runs = [run(n, "FAILED" if n % 2 else "COMPLETED", n / 10) for n in range(1, 11)]
    db = built_db(tmp_path_factory.mktemp("bracketed") / "runs.duckdb", runs)
    with Store.writer(db) as store:
        store.execute("UPDATE flows SET name = ?", [MARKUP])
    return db


@pytest.mark.parametrize(
    "args",
    [
        ("report", "failures", "--since", "30d", "--format", "table"),
        ("report", "runs", "--since", "30d", "--format", "table"),
        ("sql", 'SELECT name AS "[b]flow" FROM flows', "--format", "table"),
    ],
    ids=["report failures", "report runs", "sql"],
)
def test_names_that_read_as_markup_are_shown_as_they_are(
    bracketed: Path, args: tuple[str, ...]
) -> None:
    """A terminal table shows names, headers and values as text: `[/x]` in a flow's name
    neither stops the command (Rich's MarkupError) nor vanishes as a style."""
    result = run_cli(*args, "--db", str(bracketed), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert MARKUP in result.stdout
    if args[0] == "sql":
        assert "[b]flow" in result.stdout


def test_progress_lines_show_messages_as_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    """Progress without a terminal (cron, logs) prints a message as text: a server's error
    such as `[/flow_runs/filter]` must not stop an apply midway."""
    from flowsync.cli.common import LineProgress

    progress = LineProgress()
    progress.phase("apply [/x]", total=10)
    progress.message("batch 3: lost (HTTP 503 [database is locked]) at [/flow_runs/filter]")
    progress.advance(10)
    progress.phase("done", total=None)
    err = capsys.readouterr().err
    assert "batch 3: lost (HTTP 503 [database is locked]) at [/flow_runs/filter]" in err
    assert "apply [/x]: 10/10" in err


def test_paths_that_read_as_markup_are_printed_as_they_are(tmp_path: Path) -> None:
    """`x[/y]` is a valid path and a Rich closing tag: status, sql --output and export
    print it as it is."""
    folder = tmp_path / "x[" / "y]"
    folder.mkdir(parents=True)
    db = built_db(folder / "runs.duckdb", [run(n) for n in range(1, 4)])
    status = run_cli("status", "--db", str(db), env={"COLUMNS": "300"})
    assert status.exit_code == 0, status.output
    assert str(db) in status.stdout
    csv = folder / "out.csv"
    sql = run_cli("sql", "SELECT 1 AS one", "--db", str(db), "-f", "csv", "-o", str(csv))
    assert sql.exit_code == 0, sql.output
    assert f"to {csv}" in sql.stderr.replace("\n", "")
    export = run_cli("export", str(folder / "parquet"), "--db", str(db), env={"COLUMNS": "300"})
    assert export.exit_code == 0, export.output
    assert f"to {folder / 'parquet'}" in export.stderr.replace("\n", "")


def test_a_hidden_column_whose_name_reads_as_markup_is_named_as_it_is(bracketed: Path) -> None:
    """The note on what a narrow terminal left out names the columns as they are."""
    wide = ", ".join(f"repeat('v', 30) AS c{i}" for i in range(6))
    query = f'SELECT {wide}, 1 AS "[/x]"'
    result = run_cli("sql", query, "--db", str(bracketed), "-f", "table", env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    assert "[/x]" in result.stderr and "not shown" in result.stderr


# A state message and names from the server with terminal controls and a right-to-left override.
HOSTILE = "boom \x1b[31mANSI\x1b[0m \u202eevil\u202c \x07 \x9b2J"
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built file whose runs' messages, run names and flow name hold control characters."""
    from flowsync.store import Store

    runs = [run(n, "FAILED", n / 10) for n in range(1, 4)]
    db = built_db(tmp_path_factory.mktemp("hostile") / "runs.duckdb", runs)
    with Store.writer(db) as store:
        store.execute(
            "UPDATE flow_runs SET state_message = ?, name = ?", [HOSTILE, "run\x1b]0;x\x07"]
        )
        store.execute("UPDATE flows SET name = ?", ["etl\u202e"])
    return db


TERMINAL = [
    ("report", "runs", "--last", "1", "--format", "line"),
    ("report", "runs", "--last", "1", "--format", "table"),
    ("report", "runs", "--last", "1", "--format", "markdown"),
    ("report", "errors", "--since", "30d", "--format", "table"),
    ("report", "failures", "--since", "30d", "--format", "table"),
    ("report", "unresolved", "--format", "markdown"),
    ("sql", "SELECT name, state_message FROM flow_runs", "--format", "table"),
    ("sql", "SELECT name, state_message FROM flow_runs", "--format", "line"),
    ("sql", "SELECT name, state_message FROM flow_runs", "--format", "markdown"),
    ("sql", 'SELECT state_message AS "h\x1b[1m", [name] AS l FROM flow_runs', "--format", "table"),
]


@pytest.mark.parametrize("args", TERMINAL, ids=[" ".join(a) for a in TERMINAL])
def test_outside_text_reaches_a_terminal_escaped(hostile: Path, args: tuple[str, ...]) -> None:
    """A flow's error message cannot drive the terminal it is printed on: its ESC, BEL and
    C1 controls and bidi overrides are shown escaped, in every terminal format."""
    result = run_cli(*args, "--db", str(hostile), env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert not UNSAFE.search(result.stdout), repr(result.stdout)
    assert not UNSAFE.search(result.stderr), repr(result.stderr)
    if "failures" not in args:  # the message, its numbers masked in the normalised text
        assert "\\x1b[" in result.stdout and "mANSI" in result.stdout, result.stdout
    assert "\\u202e" in result.stdout, result.stdout


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_data_formats_keep_outside_text_byte_exact(hostile: Path, fmt: str) -> None:
    out = run_cli("sql", "SELECT state_message FROM flow_runs", "-f", fmt, "--db", str(hostile))
    assert out.exit_code == 0, out.output
    assert HOSTILE in (json.loads(out.stdout)[0]["state_message"] if fmt == "json" else out.stdout)
    rep = run_cli("report", "runs", "--last", "1", "-f", fmt, "--db", str(hostile))
    assert rep.exit_code == 0, rep.output
    assert HOSTILE in (json.loads(rep.stdout)[0]["state_message"] if fmt == "json" else rep.stdout)


def test_output_dash_is_stdout(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-o -` wrote a file named `-` ("wrote 1 rows to -"); as `sql -` reads stdin, it is
    stdout: the rows there, nothing written."""
    monkeypatch.chdir(tmp_path)
    result = run_cli("sql", "SELECT 1 AS one", "-o", "-", "--db", str(built))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["one", "1"]
    report = run_cli(
        "report", "failures", "--since", "30d", "-o", "-", "-f", "json", "--db", str(built)
    )
    assert report.exit_code == 0, report.output
    assert isinstance(json.loads(report.stdout), list)
    assert not (tmp_path / "-").exists()


def test_without_format_the_output_files_extension_names_it(built: Path, tmp_path: Path) -> None:
    """`-o failures.parquet` without `--format` wrote CSV under that name (a reader then fails
    on it); the extension now names the format, and one it does not know stays CSV."""
    query = "SELECT name, state_type FROM flow_runs ORDER BY name LIMIT 3"
    out = {ext: tmp_path / f"rows{ext}" for ext in (".parquet", ".json", ".md", ".CSV", ".txt")}
    for path in out.values():
        result = run_cli("sql", query, "-o", str(path), "--db", str(built))
        assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out[".parquet"])
    assert frame.columns == ["name", "state_type"] and frame.height == 3
    assert [r["name"] for r in json.loads(out[".json"].read_text())] == frame["name"].to_list()
    assert out[".md"].read_text().startswith("| name")
    assert out[".CSV"].read_text().splitlines()[0] == "name,state_type"
    assert out[".txt"].read_text().splitlines()[0] == "name,state_type"
    health = tmp_path / "health.prom"
    result = run_cli("report", "health", "-o", str(health), "--db", str(built))
    assert result.exit_code == 0, result.output
    assert "# TYPE flowsync_" in health.read_text()
    report_out = tmp_path / "failures.parquet"
    result = run_cli(
        "report", "failures", "--since", "30d", "-o", str(report_out), "--db", str(built)
    )
    assert result.exit_code == 0, result.output
    assert "failure_rate" in pl.read_parquet(report_out).columns
