"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.server import free_port
from tests.helpers import SeededServer, run_cli

# The --db path is checked before any request: a URL nobody answers shows it (exit 5, not 3).
NOBODY = f"http://127.0.0.1:{free_port()}/api"


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


def test_db_is_a_directory(tmp_path: Path) -> None:
    one_clear_line(run_cli("pull", "--api-url", NOBODY, "--db", str(tmp_path)), 5, "is a directory")


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
