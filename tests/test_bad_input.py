"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing changed."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flowsync.store import Store
from harness.server import free_port
from tests.helpers import SeededServer, copy_db, query, run_cli

# The --db path is checked before any request: a URL nobody answers shows it (exit 5, not 3).
NOBODY = f"http://127.0.0.1:{free_port()}/api"


def built_and_purge(built: Any, folder: Path, top: str = "") -> tuple[Path, Path]:
    """A copy of the built file, and a policy deleting its COMPLETED runs (``top``: more of
    the policy's top-level keys, as YAML lines)."""
    db = copy_db(built.path, folder)
    policy = folder / "policy.yaml"
    policy.write_text(
        f"version: 1\n{top}rules:\n  - name: r\n    action: delete\n"
        "    sql: SELECT id FROM flow_runs WHERE state_type = 'COMPLETED'\n"
    )
    return db, policy


def one_clear_line(result: object, code: int, *needles: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)  # type: ignore[attr-defined]
    stderr = result.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    assert len(stderr.splitlines()) == 1, stderr
    for needle in needles:
        assert needle in stderr, stderr
    return str(stderr)


def test_unreachable_server_names_the_url(db_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    result = run_cli("pull", "--api-url", url, "--db", str(db_path))
    one_clear_line(result, 3, url)


def test_url_without_api_suffix(prefect: SeededServer, db_path: Path) -> None:
    url = prefect.url.removesuffix("/api")
    result = run_cli("pull", "--api-url", url, "--db", str(db_path))
    one_clear_line(result, 3, "does not look like a Prefect API", "/api")


def test_not_a_url(db_path: Path) -> None:
    one_clear_line(
        run_cli("pull", "--api-url", "localhost:4200", "--db", str(db_path)),
        2,
        "not an http(s) URL",
    )


def test_no_url_anywhere(db_path: Path) -> None:
    one_clear_line(run_cli("pull", "--db", str(db_path)), 2, "PREFECT_API_URL")


def test_a_first_pull_that_cannot_reach_the_server_leaves_no_file(tmp_path: Path) -> None:
    (folder := tmp_path / "data").mkdir()
    db = folder / "runs.duckdb"
    one_clear_line(run_cli("pull", "--api-url", NOBODY, "--db", str(db)), 3, "Connection refused")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("missing/x.duckdb", "does not exist"),
        ("afile/x.duckdb", "Not a directory"),
        ("self", "symbolic link that leads to no file"),
    ],
)
def test_a_first_pull_through_a_symlink_is_refused_where_it_leads(
    tmp_path: Path, target: str, said: str
) -> None:
    (tmp_path / "afile").touch()
    db = tmp_path / "runs.duckdb"
    db.symlink_to(db if target == "self" else tmp_path / target)
    one_clear_line(run_cli("pull", "--api-url", NOBODY, "--db", str(db)), 5, said)


def test_a_first_pull_to_a_file_name_too_long_for_the_system_is_one_line(tmp_path: Path) -> None:
    one_clear_line(
        run_cli("pull", "--api-url", NOBODY, "--db", str(tmp_path / ("r" * 300 + ".duckdb"))),
        5,
        "File name too long",
    )


def test_a_first_pull_to_a_long_file_name_gets_past_the_place_check(tmp_path: Path) -> None:
    """A name as long as DuckDB, its .wal and its .snapshots folder can take (240 bytes): the
    place check's probe, of a name of its own, does not refuse it; the server is asked next."""
    (folder := tmp_path / "data").mkdir()
    db = folder / ("r" * 233 + ".duckdb")
    one_clear_line(run_cli("pull", "--api-url", NOBODY, "--db", str(db)), 3, "Connection refused")
    assert list(folder.iterdir()) == []


def test_db_is_a_directory(tmp_path: Path) -> None:
    one_clear_line(run_cli("pull", "--api-url", NOBODY, "--db", str(tmp_path)), 5, "is a directory")


@pytest.mark.parametrize("where", [".", "/"])
@pytest.mark.parametrize(
    "command",
    [
        ["pull", "--api-url", NOBODY],
        ["status"],
        ["sql", "SELECT 1"],
        ["report", "failures"],
        ["export", "OUT"],
        ["plan", "POLICY"],
    ],
    ids=lambda c: c[0] if isinstance(c, list) else c,
)
def test_a_db_path_with_no_file_name_is_a_directory_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, command: list[str]
) -> None:
    """``--db .`` or ``--db /``: a path whose file name is empty (``Path.with_name`` raises on
    it) is the directory it names, refused in one line by every command, nothing written."""
    monkeypatch.chdir(tmp_path)
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nrules: [{name: r, action: delete, sql: SELECT id FROM flow_runs}]\n"
    )
    args = [{"OUT": str(tmp_path / "out"), "POLICY": str(policy)}.get(a, a) for a in command]
    before = sorted(tmp_path.iterdir())
    one_clear_line(run_cli(*args, "--db", where), 5, f"--db {where} is a directory")
    assert sorted(tmp_path.iterdir()) == before


def test_a_bad_ca_bundle_in_openssls_variables_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE (which httpx honours, as OpenSSL does) naming no file, or a file of no
    PEM certificate: one line naming the variable, before any file is made (a traceback
    from the TLS context before)."""
    db = tmp_path / "runs.duckdb"
    for value in (str(tmp_path / "missing.pem"), str(db.with_name("p.yaml"))):
        db.with_name("p.yaml").write_text("not a certificate")
        monkeypatch.setenv("SSL_CERT_FILE", value)
        one_clear_line(
            run_cli("pull", "--api-url", NOBODY, "--db", str(db)), 2, f"SSL_CERT_FILE={value}"
        )
        assert not db.exists()


def test_a_profiles_file_that_is_a_device_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PREFECT_PROFILES_PATH at /dev/zero (or a pipe): never read to its end (it has none);
    no URL found is the one line, as with no profiles file."""
    monkeypatch.setenv("PREFECT_PROFILES_PATH", "/dev/zero")
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    one_clear_line(run_cli("pull", "--db", str(tmp_path / "x.duckdb")), 2, "No Prefect API URL")


def test_db_in_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "x.duckdb"
    one_clear_line(run_cli("pull", "--api-url", NOBODY, "--db", str(target)), 5, "does not exist")
    assert not target.parent.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        one_clear_line(
            run_cli("pull", "--api-url", NOBODY, "--db", str(locked / "x.duckdb")),
            5,
            "permission",
        )
    finally:
        locked.chmod(0o700)


def test_a_file_recording_migrations_without_their_tables_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    """A DuckDB file whose ``_flowsync_migrations`` says m001 ran, but which holds none of the
    tables m001 makes (made by hand, or changed): the pull names what is wrong instead of
    DuckDB's error from inside a later migration, and changes none of its rows."""
    import duckdb

    target = tmp_path / "hand.duckdb"
    with duckdb.connect(str(target)) as con:
        con.execute(
            "CREATE TABLE _flowsync_migrations (name VARCHAR PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL)"
        )
        con.execute("INSERT INTO _flowsync_migrations VALUES ('m001_initial', now())")
    one_clear_line(
        run_cli("pull", "--api-url", NOBODY, "--db", str(target)),
        5,
        "records flowsync migrations up to m001_initial but lacks what they made (",
        "flow_runs",
        "Nothing was changed; use another --db",
    )
    with duckdb.connect(str(target), read_only=True) as con:
        assert con.execute("SELECT name FROM _flowsync_migrations").fetchall() == [
            ("m001_initial",)
        ]


@pytest.mark.parametrize("name", ["new\nline", "esc\x1b[31mred", "tab\there"])
def test_a_control_character_in_a_path_is_shown_escaped_in_the_one_line(
    tmp_path: Path, name: str
) -> None:
    """A path (or a server's message) quoted in an error may hold a newline or a terminal's
    escape: the line shows it escaped, so it stays one line and drives no terminal."""
    target = tmp_path / name / "x.duckdb"
    line = one_clear_line(
        run_cli("pull", "--api-url", NOBODY, "--db", str(target)), 5, "does not exist"
    )
    assert name.encode("unicode_escape").decode() in line, line
    assert "\x1b" not in line and "\t" not in line, line
    assert not target.parent.exists()


def test_unwritable_path_as_root_too() -> None:
    # /proc is read-only for everyone, root included
    one_clear_line(
        run_cli("pull", "--api-url", NOBODY, "--db", "/proc/flowsync.duckdb"), 5, "/proc"
    )


@pytest.mark.parametrize(
    "content", [b"not a database at all\n" * 100, b"SQLite format 3\x00" + b"\x00" * 4096]
)
def test_file_that_is_not_duckdb_is_left_alone(tmp_path: Path, content: bytes) -> None:
    target = tmp_path / "notes.duckdb"
    target.write_bytes(content)
    one_clear_line(
        run_cli("pull", "--api-url", NOBODY, "--db", str(target)), 5, "not a DuckDB database"
    )
    assert target.read_bytes() == content
    assert not Path(str(target) + ".wal").exists()


@pytest.mark.parametrize(
    "command", [["status"], ["sql", "SELECT 1", "--live"], ["pull", "--api-url", NOBODY]]
)
def test_a_pipe_as_db_is_refused_in_one_line_not_waited_on(
    tmp_path: Path, command: list[str]
) -> None:
    """A named pipe no one writes to: reading its header waited forever (every command)."""
    fifo = tmp_path / "runs.duckdb"
    os.mkfifo(fifo)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "flowsync", *command, "--db", str(fifo)],
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"flowsync {command[0]} --db FIFO still waiting after 20 s")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 5 and len(lines) == 1, done.stderr
    assert f"--db {fifo} is not a regular file" in lines[0], lines[0]


@pytest.mark.parametrize("content", [b"", b"\0" * 4096])
def test_a_file_a_first_pull_is_creating_is_waited_for_not_called_empty(
    tmp_path: Path, content: bytes
) -> None:
    """A second command in the first moment of a first pull: DuckDB has made the file but not
    written its header. It was told "an empty file (not a DuckDB database): remove it",
    though the pull was writing it; it is a lock to wait for (exit 6, --wait), and a file left
    so for longer than that is still called what it is."""
    import threading

    target = tmp_path / "runs.duckdb"
    target.write_bytes(content)
    line = one_clear_line(run_cli("sql", "SELECT 1", "--db", str(target)), 6, str(target))
    assert "likely creating it" in line and "--wait" in line, line
    done = threading.Timer(0.5, target.unlink)  # the first pull's file, replaced (here: gone)
    done.start()
    with Store.writer(target, wait=10) as store:
        assert store.execute("SELECT 1").scalar() == 1
    done.join()
    old = tmp_path / "old.duckdb"
    old.write_bytes(content)
    os.utime(old, (os.path.getmtime(old) - 3600,) * 2)
    line = one_clear_line(run_cli("sql", "SELECT 1", "--db", str(old)), 5, str(old))
    assert ("an empty file" if not content else "not a DuckDB database") in line, line


@pytest.mark.parametrize("command", [["status"], ["pull", "--api-url", NOBODY]])
def test_a_device_as_db_is_not_called_an_empty_file_to_remove(command: list[str]) -> None:
    line = one_clear_line(run_cli(*command, "--db", "/dev/null"), 5, "/dev/null")
    assert "is not a regular file" in line and "remove" not in line


def test_status_on_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.duckdb"
    one_clear_line(run_cli("status", "--db", str(missing)), 5, "does not exist", "flowsync pull")
    assert not missing.exists()


def test_other_server_into_same_file_is_refused(
    prefect: SeededServer, fresh_server: object, db_path: Path
) -> None:
    assert run_cli("pull", "--api-url", prefect.url, "--db", str(db_path)).exit_code == 0
    other = fresh_server.url  # type: ignore[attr-defined]
    one_clear_line(
        run_cli("pull", "--api-url", other, "--db", str(db_path)),
        2,
        "holds runs from",
        "another --db",
    )


# -- arguments refused before anything is read, written or sent --------------------------

# Nobody listens on port 9 (discard): a pull that got past its arguments fails on the
# connection (exit 3) after creating the file; a refused argument does neither.
UNREACHABLE = "http://127.0.0.1:9/api"


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    """What is in ``folder``: each file's size and modification time (a write changes one)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def empty_folder(tmp_path: Path) -> Path:
    """A folder of its own (``tmp_path`` holds the test's PREFECT_HOME)."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def refused(result: object, option: str) -> str:
    """Exit 2 with no traceback, its error naming ``option``: a ``ConfigError``'s one line
    (``error: --history ...``) or Click's usage error for a number out of its range."""
    assert result.exit_code == 2, (result.exit_code, result.output)  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    stderr = str(result.stderr)  # type: ignore[attr-defined]
    errors = [line for line in stderr.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1, stderr
    assert option in errors[0], stderr
    return errors[0]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        *(
            (["report", "failures", "--since", too_far], "--since")
            for too_far in ("99999999d", "1000000000h", "100000000000000000000w", "0001-01-01")
        ),
        *((["report", "health", "--since", v], "--since") for v in ("0001-01-01", "99999999d")),
        *((["report", "stuck", "--history", v], "--history") for v in ("99999999d", "0001-01-01")),
        (["report", "stuck", "--history", "abc"], "--history 'abc'"),
        *(
            (["report", name, flag, "100000000000000000000"], flag)
            for name, flag in (("runs", "--last"), ("flaky", "--last"), ("stuck", "--min-runs"))
        ),
    ],
)
def test_report_arguments_out_of_range_are_one_clear_refusal(
    built: object, args: list[str], option: str
) -> None:
    db = built.path  # type: ignore[attr-defined]
    before = files_under(db.parent)
    line = refused(run_cli(*args, "--db", str(db), "--format", "csv"), option)
    assert "--since" not in line or option == "--since", line
    assert files_under(db.parent) == before


@pytest.mark.parametrize("value", ["inf", "1e10", "nan", "3601"])
def test_a_rule_timeout_past_the_policys_own_bound_is_refused(
    built: object, tmp_path: Path, value: str
) -> None:
    """The policy's rule_timeout_seconds is at most 3600, and so is the flag (and the
    library's ``timeout=``) that overrides it: ``inf`` killed the time limit's thread with a
    traceback, and the rule's SQL ran with no limit."""
    import flowsync
    from flowsync.errors import ConfigError

    db = built.path  # type: ignore[attr-defined]
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nrules:\n  - name: r\n    action: delete\n"
        "    sql: SELECT id FROM flow_runs WHERE state_type = 'COMPLETED'\n"
    )
    refused(
        run_cli("plan", str(policy), "--db", str(db), "--rule-timeout", value), "--rule-timeout"
    )
    with pytest.raises(ConfigError, match="--rule-timeout"):
        flowsync.plan(db, policy, timeout=float(value))


def test_export_since_too_far_back_writes_nothing(built: object, tmp_path: Path) -> None:
    db = built.path  # type: ignore[attr-defined]
    out = tmp_path / "out"
    for since in ("99999999d", "100000000000000000000w", "0001-01-01"):
        refused(run_cli("export", str(out), "--since", since, "--db", str(db)), "--since")
        assert not out.exists()


def test_plan_sample_too_large_is_an_argument_error(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules: []\n")
    db = tmp_path / "runs.duckdb"
    refused(
        run_cli("plan", str(policy), "--sample", "100000000000000000000", "--db", str(db)),
        "--sample",
    )
    assert not db.exists()


SPANS = ("--staleness", "--overlap", "--events-horizon")
BAD_URLS = (
    "http://[::1:4311/api",
    "http://127.0.0.1:99999/api",
    "http://h:abc/api",
    # host names the resolver cannot be asked for: a doubled dot, a part past 63
    # characters, an xn-- part that is no name (the snowman, one IDNA 2008 refuses, below)
    "http://prefect..example.com/api",
    "http://" + "a" * 64 + ".example.com/api",
    "http://xn--zz.example.com/api",
)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        *(([flag, value], flag) for flag in SPANS for value in ("inf", "1e12")),
        (["--max-requests-per-minute", "0.01"], "--max-requests-per-minute '0.01'"),
        (["--max-requests-per-minute", "inf"], "--max-requests-per-minute 'inf'"),
        *((["--api-url", url], "--api-url") for url in BAD_URLS),
        (["--api-url", "http://\N{SNOWMAN}.example/api"], "http://\N{SNOWMAN}.example/api"),
    ],
)
def test_pull_arguments_are_refused_before_any_connection_or_write(
    tmp_path: Path, args: list[str], option: str
) -> None:
    here = empty_folder(tmp_path)
    db = here / "runs.duckdb"
    url = [] if "--api-url" in args else ["--api-url", UNREACHABLE]
    refused(run_cli("pull", *url, *args, "--db", str(db)), option)
    assert files_under(here) == {}


def test_staleness_from_the_environment_is_bounded_too(tmp_path: Path) -> None:
    here = empty_folder(tmp_path)
    db = here / "runs.duckdb"
    result = run_cli(
        "pull", "--api-url", UNREACHABLE, "--db", str(db), env={"FLOWSYNC_STALENESS_HOURS": "inf"}
    )
    refused(result, "--staleness")
    assert files_under(here) == {}


@pytest.mark.parametrize("command", ["plan", "apply"])
@pytest.mark.parametrize("value", ["0.01", "inf"])
def test_a_budget_for_a_policy_command_is_refused_before_any_connection_or_write(
    built: object, tmp_path: Path, command: str, value: str
) -> None:
    """`plan --refresh` and `apply` take `--max-requests-per-minute` as pull does: a budget
    below one request a minute, or an endless one, is one line, before a request or a write."""
    db = copy_db(built.path, tmp_path)  # type: ignore[attr-defined]
    before = db.read_bytes()
    mode = ["--refresh"] if command == "plan" else ["--yes"]
    result = run_cli(
        command, "docs/examples/retention.yaml", *mode, "--db", str(db), "--api-url", NOBODY,
        "--max-requests-per-minute", value,
    )  # fmt: skip
    refused(result, f"--max-requests-per-minute '{value}'")
    assert db.read_bytes() == before


@pytest.mark.parametrize("name", [":memory:", "md:runs", "MotherDuck:runs"])
@pytest.mark.parametrize("how", ["pull", "status", "FLOWSYNC_DB"])
def test_db_names_duckdb_reads_as_no_file_are_refused_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, how: str
) -> None:
    """``:memory:`` (a pull read the whole server, kept nothing, then said it was saved) and
    MotherDuck's names: refused before the server is asked (exit 5, not 3), nothing made."""
    monkeypatch.chdir(here := empty_folder(tmp_path))
    args = ["status", "--db", name] if how == "status" else ["pull", "--api-url", NOBODY]
    if how == "pull":
        args += ["--db", name]
    result = run_cli(*args, env={"FLOWSYNC_DB": name} if how == "FLOWSYNC_DB" else None)
    one_clear_line(result, 5, f"--db {name} is no file to DuckDB")
    assert files_under(here) == {}


def test_a_bad_url_never_shows_its_password(tmp_path: Path) -> None:
    here = empty_folder(tmp_path)
    db = here / "runs.duckdb"
    line = refused(
        run_cli("pull", "--api-url", "http://u:secret@[::1/api", "--db", str(db)), "--api-url"
    )
    assert "secret" not in line and "***@" in line, line
    assert files_under(here) == {}


@pytest.mark.parametrize("command", [["pull"], ["apply", "POLICY", "--yes"]])
def test_an_empty_api_url_or_key_is_refused_not_replaced_by_the_environment(
    tmp_path: Path, command: list[str]
) -> None:
    here = empty_folder(tmp_path)
    policy = here / "policy.yaml"
    policy.write_text("rules: []\n")
    args = [str(policy) if a == "POLICY" else a for a in command]
    db = here / "runs.duckdb"
    result = run_cli(*args, "--api-url", "", "--db", str(db), env={"PREFECT_API_URL": UNREACHABLE})
    refused(result, "--api-url is empty")
    assert sorted(files_under(here)) == ["policy.yaml"]
    result = run_cli(*args, "--api-key", "", "--db", str(db), env={"PREFECT_API_URL": UNREACHABLE})
    refused(result, "--api-key is empty")
    assert sorted(files_under(here)) == ["policy.yaml"]


def test_apply_refuses_a_bad_url_before_the_file(tmp_path: Path) -> None:
    here = empty_folder(tmp_path)
    policy = here / "policy.yaml"
    policy.write_text("rules: []\n")
    db = here / "runs.duckdb"
    result = run_cli(
        "apply", str(policy), "--yes", "--api-url", "http://[::1:4311/api", "--db", str(db)
    )
    refused(result, "--api-url")
    assert sorted(files_under(here)) == ["policy.yaml"]


def test_pull_options_refuse_spans_the_pull_cannot_use() -> None:
    from datetime import timedelta

    from flowsync.errors import ConfigError
    from flowsync.sync import PullOptions

    for bad in (
        {"overlap": timedelta(days=-1)},
        {"overlap": timedelta(days=999_999_999)},
        {"staleness": timedelta(0)},
        {"staleness": timedelta(days=999_999_999)},
        {"events_horizon": timedelta(0)},
        {"events_horizon": timedelta(days=999_999_999)},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            PullOptions(**bad)  # type: ignore[arg-type]
    PullOptions(overlap=timedelta(0), staleness=timedelta(seconds=3))  # the tests' own values


def test_a_span_past_its_most_says_the_most_in_its_own_unit() -> None:
    """``FLOWSYNC_STALENESS_HOURS=inf`` (or ``--staleness-hours``) said "use at most 365
    days, 0:00:00": Python's text for a timedelta, in no unit the setting takes."""
    from flowsync.errors import ConfigError
    from flowsync.sync.context import span

    with pytest.raises(
        ConfigError, match=r"^--staleness inf is out of range: use at most 8760 hours\.$"
    ):
        span("--staleness", float("inf"), "hours")


@pytest.mark.parametrize(
    "bad",
    [
        {"page_size": 0},  # asked for pages of none, forever
        {"page_size": 201},
        {"page_size": 50.0},
        {"segment_rows": 0},
        {"full": "yes"},
        {"verify": 1},
        {"verify_every": timedelta(hours=-1)},
        {"verify_every": 24},
        {"overlap": 5},  # a TypeError comparing it
        {"events_horizon": "7d"},
    ],
    ids=lambda bad: next(iter(bad)) + "=" + repr(next(iter(bad.values()))),
)
def test_pull_options_a_pull_cannot_use_are_one_config_error(bad: dict[str, Any]) -> None:
    """``PullOptions`` a library caller builds by hand: each wrong value is a ``ConfigError``
    naming it, before anything is opened (``page_size=0`` had the pull ask for pages of
    none, with no end; a number for a span was a TypeError)."""
    from flowsync.errors import ConfigError
    from flowsync.sync import PullOptions

    with pytest.raises(ConfigError, match=rf"PullOptions.{next(iter(bad))} "):
        PullOptions(**bad)
    PullOptions(page_size=1, segment_rows=1, verify_every=timedelta(0))  # the least


def test_pull_options_refuse_what_the_pull_flags_refuse(tmp_path: Path) -> None:
    """--concurrency 1..8 and --memory-limit from 0, for the command and ``PullOptions``
    alike: DuckDB read ``memory_limit_mb=-1`` (``SET memory_limit='-1MiB'``) as no cap."""
    from flowsync.errors import ConfigError
    from flowsync.sync import PullOptions

    here = empty_folder(tmp_path)
    for flag, value in (
        ("--memory-limit", "-1"),
        ("--memory-limit", str(2**44)),  # DuckDB's "Memory value out of range", with a traceback
        ("--concurrency", "0"),
        ("--concurrency", "9"),
    ):
        args = ("pull", "--api-url", UNREACHABLE, flag, value, "--db", str(here / "runs.duckdb"))
        refused(run_cli(*args), flag)
    assert files_under(here) == {}
    for bad, flag in (
        ({"memory_limit_mb": -1}, "--memory-limit"),
        ({"memory_limit_mb": "64"}, "--memory-limit"),  # was a TypeError mid-pull
        ({"memory_limit_mb": 2**44}, "--memory-limit"),
        ({"concurrency": 0}, "--concurrency"),
        ({"concurrency": 500}, "--concurrency"),
        ({"concurrency": 2.5}, "--concurrency"),
    ):
        with pytest.raises(ConfigError, match=rf"^{flag} "):
            PullOptions(**bad)
    PullOptions(memory_limit_mb=0, concurrency=8)  # DuckDB's own default; the most


@pytest.mark.parametrize(
    ("option", "flag"),
    [
        ({"memory_limit_mb": -1}, "--memory-limit"),  # no cap, as a pull's
        ({"memory_limit_mb": 2**44}, "--memory-limit"),  # DuckDB's ParserException
        ({"settle_seconds": -1.0}, "--settle-seconds"),
        ({"settle_seconds": float("nan")}, "--settle-seconds"),
    ],
)
def test_apply_refuses_what_its_flags_refuse_before_the_plan(
    built: object, tmp_path: Path, option: dict[str, object], flag: str
) -> None:
    import flowsync
    from flowsync.config import ApiSettings
    from flowsync.errors import ConfigError

    db, policy = built_and_purge(built, tmp_path)
    actions = query(db, "SELECT count(*) FROM policy_actions")
    with pytest.raises(ConfigError, match=rf"^{flag} "):
        flowsync.apply(db, policy, api=ApiSettings(url=UNREACHABLE), **option)  # type: ignore[arg-type]
    assert query(db, "SELECT count(*) FROM policy_actions") == actions


def test_export_refuses_what_the_command_refuses(built: object, tmp_path: Path) -> None:
    """No table (the command's empty --tables; the call exported every table), a start
    before 1900 as a datetime as well as text, and one in the future."""
    from datetime import datetime, timezone

    from flowsync.errors import ConfigError
    from flowsync.operations import export

    db = built.path  # type: ignore[attr-defined]
    out = tmp_path / "out"
    refused(run_cli("export", str(out), "--tables", ",", "--db", str(db)), "--tables")
    with pytest.raises(ConfigError, match=r"^--tables names no table"):
        export(db, out, tables=[])
    for since in (datetime(1899, 12, 31), datetime(2999, 1, 1, tzinfo=timezone.utc)):
        with pytest.raises(ConfigError, match=r"^--since '(1899-12-31|2999-01-01)"):
            export(db, out, since=since)
    assert not out.exists()


_PULL = ["pull", "--api-url", NOBODY]
_REFRESH = ["plan", "docs/examples/retention.yaml", "--refresh", "--api-url", NOBODY]
_APPLY = ["apply", "docs/examples/retention.yaml", "--yes", "--api-url", NOBODY]


@pytest.mark.parametrize(
    ("command", "inside"),
    [
        *(
            (command, inside)
            for command in (_PULL, _REFRESH, _APPLY)
            for inside in ("current", "00000001.duckdb")
        ),
        (_PULL, "new.duckdb"),
    ],
)
def test_a_writer_on_a_published_snapshot_is_refused_and_the_snapshot_kept(
    built: object, tmp_path: Path, command: list[str], inside: str
) -> None:
    """`--db runs.duckdb.snapshots/current` (the path a dashboard reads) wrote the pull into
    the published snapshot: readers of the live file then got 'snapshot damaged'."""
    db = copy_db(built.path, tmp_path)  # type: ignore[attr-defined]
    folder = db.with_name(db.name + ".snapshots")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    one_clear_line(
        run_cli(*command, "--db", str(folder / inside)),
        5,
        "published snapshot",
        f"--db {db}",
    )
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert {p.name for p in folder.iterdir()} == set(before)  # nothing made there either
    with Store.reader(db) as reader:  # readers still open the snapshot, undamaged
        assert reader.execute("SELECT count(*) FROM flow_runs").rows()[0][0] > 0


@pytest.mark.parametrize("call", ["apply", "plan-refresh"])
def test_apply_and_a_refresh_to_a_stopped_server_fail_at_its_health_not_after_retries(
    built: object, tmp_path: Path, call: str
) -> None:
    """apply read the file's flows from the server (to confirm it is the file's) before its
    quick health check: a stopped server took 7 tries and ~20 s of silent retries, and the
    line named `POST /flows/filter`. Now the health check comes first: two tries, the URL
    named, nothing written."""
    import flowsync
    from flowsync.config import resolve_api
    from flowsync.errors import ApiError

    db, policy = built_and_purge(built, tmp_path, "max_actions: 1000000\n")
    runs = query(db, "SELECT count(*) FROM sync_runs")
    retried: list[str] = []
    api = resolve_api(NOBODY, env={})
    with pytest.raises(ApiError) as info:
        if call == "apply":
            flowsync.apply(db, policy, api=api, on_retry=retried.append)
        else:
            flowsync.plan(db, policy, refresh=api, on_retry=retried.append)
    assert NOBODY.removesuffix("/api") in str(info.value) and "flows" not in str(info.value)
    assert len(retried) <= 1, retried
    assert query(db, "SELECT count(*) FROM sync_runs") == runs


@pytest.mark.parametrize("given", ["http://127.0.0.1:4200/api", {"url": "x"}, None])
@pytest.mark.parametrize("call", ["pull", "pull-new", "plan-refresh", "apply", "apply-nothing"])
def test_an_api_that_is_no_api_settings_is_one_config_error_before_anything(
    built: object, tmp_path: Path, call: str, given: object
) -> None:
    """``flowsync.pull(db, api="http://...")`` raised AttributeError ('str' object has no
    attribute 'max_requests_per_minute'), and an apply with nothing to do returned without
    ever looking at its ``api``: a ``ConfigError`` naming the type and what to pass."""
    import flowsync
    from flowsync.errors import ConfigError

    db = copy_db(built.path, tmp_path)  # type: ignore[attr-defined]
    policy = tmp_path / "policy.yaml"
    selects = "state_type = 'COMPLETED'" if call != "apply-nothing" else "false"
    policy.write_text(
        "version: 1\nmax_actions: 1000000\nrules:\n  - name: r\n    action: delete\n"
        f"    sql: SELECT id FROM flow_runs WHERE {selects}\n"
    )
    runs = query(db, "SELECT count(*) FROM sync_runs")
    calls = {
        "pull": lambda: flowsync.pull(db, api=given),  # type: ignore[arg-type]
        "pull-new": lambda: flowsync.pull(tmp_path / "new.duckdb", api=given),  # type: ignore[arg-type]
        "plan-refresh": lambda: flowsync.plan(db, policy, refresh=given or ""),  # type: ignore[arg-type]
        "apply": lambda: flowsync.apply(db, policy, api=given),  # type: ignore[arg-type]
        "apply-nothing": lambda: flowsync.apply(db, policy, api=given),  # type: ignore[arg-type]
    }
    with pytest.raises(
        ConfigError, match=r"^(api|refresh) is an? \w+, not an ApiSettings: .*resolve_api"
    ):
        calls[call]()
    assert query(db, "SELECT count(*) FROM sync_runs") == runs
    assert not (tmp_path / "new.duckdb").exists()


@pytest.mark.parametrize(
    "dest", ["s3:/bucket/flowsync", "gs:/bucket", "az:/container/x", "file:/tmp"]
)
def test_an_export_url_missing_a_slash_is_refused_not_written_to_a_local_folder(
    built: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dest: str
) -> None:
    """`flowsync export s3:/bucket` (one slash) exported, exit 0, into ./s3:/bucket (a folder
    `s3:` holding `bucket`); `s3:name`, no slash, stays a folder of that name (test_export)."""
    import flowsync.operations
    from flowsync.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    db = copy_db(built.path, tmp_path)  # type: ignore[attr-defined]
    before = sorted(p.name for p in tmp_path.iterdir())
    scheme = dest.split(":")[0]
    one_clear_line(run_cli("export", "--db", str(db), dest), 2, dest, f"{scheme}://", f"./{dest}")
    with pytest.raises(ConfigError, match="a slash missing"):
        flowsync.operations.export(db, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("command", "target"),
    [
        (["sql", "SELECT 1", "--format", "csv", "--output"], "runs.duckdb"),
        (["sql", "SELECT 1", "--format", "csv", "--output"], "runs.duckdb.snapshots/current"),
        (["sql", "SELECT 1", "--format", "csv", "--output"], "link.duckdb"),
        (["sql", "SELECT 1", "--format", "csv", "--output"], "runs.duckdb.snapshots/new.csv"),
        (["report", "failures", "--format", "parquet", "--output"], "runs.duckdb"),
        (["report", "health", "--format", "openmetrics", "--output"], "runs.duckdb"),
        (["report", "health", "--html"], "runs.duckdb"),
    ],
)
def test_an_output_that_names_the_duckdb_file_is_refused_and_the_file_kept(
    built: object, tmp_path: Path, command: list[str], target: str
) -> None:
    """`flowsync sql ... --output runs.duckdb` (a slip for --db) replaced the whole history
    with one CSV line, and `--output runs.duckdb.snapshots/current` the snapshot readers
    open: a read-only command lost the file."""
    db = copy_db(built.path, tmp_path)  # type: ignore[attr-defined]
    (tmp_path / "link.duckdb").symlink_to(db)
    folder = db.with_name(db.name + ".snapshots")
    files = [db, *(p for p in folder.iterdir() if p.is_file())]
    before = {p: p.read_bytes() for p in files}
    one_clear_line(run_cli(*command, str(tmp_path / target), "--db", str(db)), 2, target)
    assert {p: p.read_bytes() for p in files} == before
    assert {p.name for p in folder.iterdir()} == {p.name for p in files if p != db}


def test_an_output_to_a_named_pipe_is_still_written_as_it_is(built: object, tmp_path: Path) -> None:
    """The check that an output is no DuckDB file never opens a pipe (that would wait)."""
    fifo = tmp_path / "out.pipe"
    os.mkfifo(fifo)
    db = str(built.path)  # type: ignore[attr-defined]
    command = [sys.executable, "-m", "flowsync", "sql", "SELECT 42 AS n", "--format", "csv"]
    command += ["--output", str(fifo), "--db", db]
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert done.returncode == 0, done.stderr
        assert reader.communicate(timeout=10)[0] == b"n\n42\n"
    finally:
        reader.kill()


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["pull", "--api-url", NOBODY, "--db", "DIR/\udcff.duckdb"], "--db"),
        (["sql", "SELECT 1", "--db", "a=DIR/\udcff.duckdb"], "--db"),
        (["sql", "SELECT '\udcff'", "--db", "BUILT"], "The SQL"),
        (["export", "DIR/\udcffout", "--db", "BUILT"], "The export destination"),
        (["report", "failures", "--flow", "\udcff", "--db", "BUILT"], "--flow"),
    ],
    ids=["pull-db", "sql-db", "sql", "export", "report-flow"],
)
def test_a_byte_that_is_not_utf8_is_one_line_naming_where(
    built: object, tmp_path: Path, args: list[str], what: str
) -> None:
    """A path, SQL or a name with a byte of another encoding (Python reads it from argv as a
    lone surrogate): DuckDB stopped on it with a traceback (``std::bad_cast``, a TypeError),
    an export left its folder behind, a report filter failed as a query. One line naming
    the option and showing the byte; nothing made."""
    (folder := tmp_path / "here").mkdir()
    db = copy_db(built.path, tmp_path)  # type: ignore[attr-defined]
    args = [a.replace("DIR", str(folder)).replace("BUILT", str(db)) for a in args]
    before = db.read_bytes()
    line = one_clear_line(run_cli(*args), 2, f"{what} holds a byte that is not UTF-8", "\\xff")
    assert "\udcff" not in line
    assert list(folder.iterdir()) == [] and db.read_bytes() == before
