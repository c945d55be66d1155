"""Every command has help text with an example and appears in the README."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer.main

from flowsync.cli import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def all_commands() -> list[tuple[str, Any]]:
    root = typer.main.get_command(app)
    out: list[tuple[str, Any]] = []

    def walk(prefix: str, cmd: Any) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(f"{prefix} {name}".strip(), sub)
        else:
            out.append((prefix, cmd))

    walk("", root)
    return out


def test_there_are_commands() -> None:
    names = {n for n, _ in all_commands()}
    assert {"pull", "status"} <= names


def test_every_command_is_in_the_readme() -> None:
    missing = [n for n, _ in all_commands() if f"flowsync {n}" not in README]
    assert not missing, f"commands missing from README.md: {missing}"


def test_every_command_has_help_with_an_example() -> None:
    bad = [n for n, c in all_commands() if not c.help or "Example:" not in c.help]
    assert not bad, f"commands without help or an example: {bad}"


def test_readme_opens_with_the_two_commands() -> None:
    head = README.split("```", 2)[1]
    assert "scripts/demo" in head and "scripts/check" in head


def test_ci_runs_the_readme_test_command() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "scripts/check" in ci


ROOT = Path(__file__).resolve().parent.parent


def _layout_block() -> str:
    development = README.split("## Development", 1)[1]
    return development.split("```text", 1)[1].split("```", 1)[0]


def test_readme_layout_matches_the_tree() -> None:
    """Every module under src/flowsync/ is in the README's layout, and every listed path exists."""
    block = _layout_block()
    package = ROOT / "src" / "flowsync"
    modules = sorted(
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and p.parent.name != "cli"
    )
    listed = re.findall(r"^ {4}([\w/]+(?:\.py|/))\s", block, re.MULTILINE)
    missing = [m for m in modules if m not in listed]
    assert not missing, f"modules missing from README's layout: {missing}"
    gone = [p for p in listed if not (package / p).exists()]
    assert not gone, f"README's layout lists paths that do not exist: {gone}"


def test_readme_names_every_sync_runs_mode() -> None:
    """The modes sync_runs rows are written with (a pull, or a RunReader's re-reads) are the ones the README describes."""
    code = "\n".join(
        (ROOT / "src" / "flowsync" / f).read_text() for f in ("sync/pull.py", "policy/apply.py")
    )
    modes = (
        set(re.findall(r'\bmode(?:, reason)? = "(\w+)"', code))
        | set(re.findall(r'\bmode="(\w+)"', code))
        | set(re.findall(r'\bRunReader\(\w+, \w+, "([\w-]+)"\)', code))
    )
    assert {"full", "incremental", "apply", "plan-refresh"} <= modes
    bullet = README.split("- `sync_runs` has one row per pull", 1)[1].split("\n- ", 1)[0]
    undocumented = [m for m in sorted(modes) if f"`{m}`" not in bullet]
    assert not undocumented, f"sync_runs modes the README does not describe: {undocumented}"
    named = set(re.findall(r"`([\w-]+)`", bullet.split("Mode is", 1)[1]))
    unwritten = sorted(named - modes)
    assert not unwritten, f"sync_runs modes the README names that no code writes: {unwritten}"


def test_readme_pull_synopsis_lists_every_pull_option() -> None:
    pull = dict(all_commands())["pull"]
    synopsis = README.split("### `flowsync pull`", 1)[1].split("```", 2)[1]
    options = [o for p in pull.params for o in p.opts if o.startswith("--") and o != "--help"]
    missing = [o for o in options if o not in synopsis]
    assert not missing, f"pull options missing from README's synopsis: {missing}"


def test_readme_exit_code_table_covers_every_error() -> None:
    from flowsync import errors

    table = README.split("### Exit codes", 1)[1].split("\n\n", 2)[1]
    codes = {int(c) for c in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.FlowsyncError)
    ]
    used = {c.exit_code for c in classes} | {errors.PARTIAL_FAILURE_EXIT, errors.INTERRUPTED_EXIT}
    assert used <= codes, f"exit codes missing from README's table: {sorted(used - codes)}"


ANALYSIS = (ROOT / "docs" / "analysis.md").read_text()


def _doc_table(heading: str) -> dict[str, list[str]]:
    """docs/analysis.md's table under ``heading``: its first cell's name -> the column names
    its last cell lists before any ``;`` (backticked, comma-separated; ``…``, ``prev_*`` and
    "every `view` column" dropped)."""
    section = ANALYSIS.split(heading, 1)[1]
    table = "\n|" + section.split("\n|", 1)[1].split("\n\n", 1)[0]
    out: dict[str, list[str]] = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        for name in re.findall(r"`(\w+)[`(]", cells[0]):
            text = re.sub(r"`\w+` columns?", "", cells[-1].split(";", 1)[0])  # "every `x` column"
            listed = ", ".join(re.findall(r"`([^`]*)`", text))
            out[name] = [c.split()[0] for c in listed.split(",") if re.fullmatch(r"\s*\w+\b.*", c)]
            out[name] = [c for c in out[name] if "*" not in c]
    return out


_MACRO_CALLS = {
    "grouped_runs": "grouped_runs('hour', now() - INTERVAL 7 DAY, now(), false)",
    "failure_rates": "failure_rates('hour', now() - INTERVAL 7 DAY, now(), now(), false)",
    "duration_percentiles": "duration_percentiles('flow', now() - INTERVAL 7 DAY, now(), now(), false)",
    "lateness": "lateness('flow', now() - INTERVAL 7 DAY, now(), 60, false)",
    "error_signatures": "error_signatures(now() - INTERVAL 7 DAY, now(), now(), false)",
}


def test_analysis_doc_views_and_macros_have_the_columns_it_lists(built: Any) -> None:
    """Every column docs/analysis.md lists for a view or a table macro is one it returns, and
    every `per` the SQL accepts is one the doc names."""
    import duckdb

    views = _doc_table("## Views")
    macros = _doc_table("## Table macros")
    assert {"flow_runs_enriched", "deleted_runs"} <= views.keys()
    assert _MACRO_CALLS.keys() <= macros.keys()
    con = duckdb.connect(str(built.path), read_only=True)
    try:
        wrong = {}
        for name, call in [*((v, v) for v in views), *_MACRO_CALLS.items()]:
            has = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {call}").fetchall()}
            listed = views.get(name) or macros[name]
            if missing := [c for c in listed if c not in has]:
                wrong[name] = missing
        assert not wrong, f"docs/analysis.md lists columns these do not return: {wrong}"
        call = _MACRO_CALLS["failure_rates"]  # listed whole, but for its prev_* columns
        returned = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {call}").fetchall()]
        unlisted = [
            c for c in returned if c not in macros["failure_rates"] and not c.startswith("prev_")
        ]
        assert not unlisted, f"failure_rates columns docs/analysis.md does not list: {unlisted}"
    finally:
        con.close()
    sql = (ROOT / "sql" / "12_grouped_runs.sql").read_text()
    pers = set(re.findall(r"^--   (\w+) ", sql, re.MULTILINE))
    row = ANALYSIS.split("| `grouped_runs(", 1)[1].split("\n", 1)[0]
    undocumented = [p for p in sorted(pers) if f"`{p}`" not in row]
    assert not undocumented, (
        f"grouped_runs `per` values docs/analysis.md does not name: {undocumented}"
    )
    keys = {c for c in macros["grouped_runs"] if c.startswith("g_")}
    assert keys == set(re.findall(r"AS (g_\w+)", sql)), "docs/analysis.md: grouped_runs' g_* keys"


def test_analysis_doc_names_the_filters_each_report_takes() -> None:
    """docs/analysis.md's `flowsync report` synopsis: every report but health takes the four
    filters, except the ones it names as taking only --flow and --deployment."""
    synopsis = ANALYSIS.split("    filters:", 1)[1].split("\nflowsync report health", 1)[0]
    only_two = re.search(r"\(each repeatable;\s*([\w, ]+): --flow and --deployment\)", synopsis)
    assert only_two, "the filters line of docs/analysis.md's report synopsis"
    narrow = set(re.split(r",\s*|\s+and\s+", only_two.group(1).strip()))
    four = {"--flow", "--deployment", "--tag", "--state"}
    wrong = {}
    for name, cmd in all_commands():
        if not name.startswith("report ") or name == "report health":
            continue
        takes = {o for p in cmd.params for o in p.opts} & four
        if takes != ({"--flow", "--deployment"} if name.split()[1] in narrow else four):
            wrong[name] = sorted(takes)
    assert not wrong, f"reports whose filters docs/analysis.md misstates: {wrong}"
