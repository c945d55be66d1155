"""The Parquet export on object storage: a real S3-compatible server (moto's, in its own
process), credentials from the standard AWS variables, read back by DuckDB and Polars."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import httpx
import polars as pl
import pytest
import s3fs

from flowsync.objectstore import check_destination, is_remote
from flowsync.store import Store
from harness.built import BuiltHistory
from tests.helpers import (
    EXPORT_SLOW_THIRD_PARTITION,
    a_run_alone_on_its_created_day,
    run_cli,
    scalar,
)

SECRET = "flowsync-test-secret-never-printed"
BUCKET = "history"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/moto-api/", timeout=2).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "moto server did not start"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def aws_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> s3fs.S3FileSystem:
    """Credentials and endpoint the way every AWS SDK reads them; a fresh bucket."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "flowsync-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    for key in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(key, raising=False)
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, key="flowsync-test-key", secret=SECRET)
    httpx.post(s3_server + "/moto-api/reset")
    fs.mkdir(BUCKET)
    fs.invalidate_cache()
    return fs


@pytest.fixture(scope="module")
def pulled(built_week: BuiltHistory) -> Path:
    return built_week.path


def test_export_to_s3_reads_back_in_duckdb_and_polars(
    pulled: Path, aws_env: s3fs.S3FileSystem, s3_server: str
) -> None:
    url = f"s3://{BUCKET}/flowsync/prod"
    result = run_cli("export", url, "--db", str(pulled), "--json")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    summary = json.loads(result.stdout)
    runs = scalar(pulled, "SELECT count(*) FROM flow_runs")
    assert summary["tables"]["flow_runs"]["rows_written"] == runs
    assert summary["upload"]["files_uploaded"] == summary["files_written"] + 1  # + the manifest
    # Without --json (and no terminal): a line per phase, the upload's in files.
    shown = run_cli("export", url, "--db", str(pulled))
    assert shown.exit_code == 0, shown.output
    files = summary["upload"]["files_uploaded"]
    assert f"upload: {files}/{files} files" in shown.stderr, shown.stderr

    fs = aws_env
    fs.invalidate_cache()
    manifest = json.loads(fs.cat(f"{BUCKET}/flowsync/prod/_flowsync_manifest.json"))
    assert manifest["tables"]["flow_runs"]["rows"] == runs
    assert manifest["location"] == url
    listed = fs.glob(f"{BUCKET}/flowsync/prod/flow_runs/date=*/part-0.parquet")
    assert len(listed) == len(manifest["tables"]["flow_runs"]["files"])

    # DuckDB, through the same fsspec filesystem another machine would configure.
    con = duckdb.connect()
    con.register_filesystem(fs)
    got = con.execute(
        f"SELECT count(*), count(DISTINCT id), min(date), max(date) FROM read_parquet('s3://{BUCKET}/flowsync/prod/flow_runs/*/*.parquet', hive_partitioning = true)"
    ).fetchall()[0]
    assert got[0] == runs and got[1] == runs and got[2] is not None
    by_state = dict(
        con.execute(
            f"SELECT state_type, count(*) FROM read_parquet('s3://{BUCKET}/flowsync/prod/flow_runs/*/*.parquet') GROUP BY 1"
        ).fetchall()
    )
    local = dict(
        duckdb.connect(str(pulled), read_only=True)
        .execute("SELECT state_type, count(*) FROM flow_runs GROUP BY 1")
        .fetchall()
    )
    assert by_state == local

    # Polars, with its own (Rust) S3 client and the standard variables.
    frame = (
        pl.scan_parquet(
            f"s3://{BUCKET}/flowsync/prod/flow_runs/**/*.parquet",
            hive_partitioning=True,
            storage_options={
                "aws_endpoint_url": s3_server,
                "aws_allow_http": "true",
                "aws_region": "us-east-1",
            },
        )
        .select(pl.len(), pl.col("id").n_unique())
        .collect()
    )
    assert frame.row(0) == (runs, runs)
    flows = pl.read_parquet(
        f"s3://{BUCKET}/flowsync/prod/flows/part-0.parquet",
        storage_options={
            "aws_endpoint_url": s3_server,
            "aws_allow_http": "true",
            "aws_region": "us-east-1",
        },
    )
    assert flows.height == scalar(pulled, "SELECT count(*) FROM flows")


def test_since_uploads_only_changed_partitions_and_keeps_the_manifest_whole(
    pulled: Path, aws_env: s3fs.S3FileSystem
) -> None:
    url = f"s3://{BUCKET}/inc"
    assert run_cli("export", url, "--db", str(pulled)).exit_code == 0
    fs = aws_env
    fs.invalidate_cache()
    before = json.loads(fs.cat(f"{BUCKET}/inc/_flowsync_manifest.json"))
    now = datetime.now(timezone.utc).isoformat()  # nothing was synced since
    again = run_cli("export", url, "--db", str(pulled), "--since", now, "--json")
    assert again.exit_code == 0, again.output
    assert (
        json.loads(again.stdout)["upload"]["files_uploaded"] == 1
    )  # nothing changed: the manifest only
    fs.invalidate_cache()
    after = json.loads(fs.cat(f"{BUCKET}/inc/_flowsync_manifest.json"))
    assert after["tables"]["flow_runs"]["files"] == before["tables"]["flow_runs"]["files"]
    assert after["tables"]["flow_runs"]["rows"] == scalar(pulled, "SELECT count(*) FROM flow_runs")


def test_since_removes_a_partition_the_db_no_longer_has_and_its_manifest_entry(
    pulled: Path, aws_env: s3fs.S3FileSystem, tmp_path: Path
) -> None:
    """A run alone on its day moves to another (its first state's expected start): an
    export `--since` removes the partition left of no row, object and manifest entry, after
    the manifest (it kept both: the run twice, the manifest counting it twice)."""
    db = tmp_path / "runs.duckdb"
    shutil.copy(pulled, db)
    run_id, expected = a_run_alone_on_its_created_day(db)
    url = f"s3://{BUCKET}/moved"
    assert run_cli("export", url, "--db", str(db), "--live").exit_code == 0
    con = duckdb.connect(str(db))
    con.execute(
        "UPDATE flow_runs SET expected_start_time = CAST(? AS TIMESTAMPTZ), synced_at = now() "
        "WHERE id = ?",
        [expected, run_id],
    )
    con.close()
    again = run_cli("export", url, "--db", str(db), "--live", "--since", "1d", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["upload"]["partitions_removed"] == ["flow_runs/date=1999-01-01"]
    fs = aws_env
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/moved/flow_runs/date=1999-01-01/part-0.parquet")
    manifest = json.loads(fs.cat(f"{BUCKET}/moved/_flowsync_manifest.json"))["tables"]["flow_runs"]
    assert "date=1999-01-01/part-0.parquet" not in manifest["files"]
    assert manifest["rows"] == scalar(db, "SELECT count(*) FROM flow_runs")


def test_bad_credentials_are_one_clear_line_without_the_secret(
    pulled: Path, aws_env: s3fs.S3FileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_cli("export", "s3://no-such-bucket/x", "--db", str(pulled))
    assert result.exit_code == 5, result.output
    assert "Upload to s3://no-such-bucket/x failed" in result.stderr
    assert SECRET not in result.output and "Traceback" not in result.output
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET


def test_an_export_of_another_file_is_refused_and_kept(
    pulled: Path, aws_env: s3fs.S3FileSystem, tmp_path: Path
) -> None:
    url = f"s3://{BUCKET}/shared"
    assert run_cli("export", url, "--db", str(pulled)).exit_code == 0
    fs = aws_env
    fs.invalidate_cache()

    def remote() -> dict[str, bytes]:
        fs.invalidate_cache()
        return {str(p): fs.cat(p) for p in fs.find(f"{BUCKET}/shared")}

    before = remote()
    assert any("/flow_runs/date=" in p for p in before)
    empty = tmp_path / "empty.duckdb"
    Store.writer(empty).close()
    other = tmp_path / "other.duckdb"
    shutil.copy(pulled, other)
    for db, needle in (
        (empty, f"{empty} has no completed pull"),
        (other, f"{url} holds an export of {pulled.resolve()}"),
    ):
        result = run_cli("export", url, "--db", str(db), "--json")
        assert result.exit_code == 2, result.output
        assert needle in result.stderr and "--replace" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert remote() == before
    replaced = run_cli("export", url, "--db", str(empty), "--replace", "--json")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(replaced.stdout)["upload"]["partitions_removed"]
    fs.invalidate_cache()
    manifest = json.loads(fs.cat(f"{BUCKET}/shared/_flowsync_manifest.json"))
    assert manifest["source"]["db"] == str(empty.resolve())
    assert "flow_runs" not in manifest["tables"]  # the empty file has no runs
    assert not fs.glob(f"{BUCKET}/shared/flow_runs/date=*")


@pytest.mark.parametrize(
    "url",
    [
        "s3://b/p",
        "s3a://b",
        "gs://b/p",
        "gcs://b/p",
        "az://c/p",
        "abfs://c@acct.dfs.core.windows.net/p",
        "abfss://c/p",
    ],
)
def test_every_supported_scheme_with_a_bucket_is_accepted(url: str) -> None:
    check_destination(url)  # no error: the check reaches no network
    assert is_remote(url)


@pytest.mark.parametrize("dest", ["exports", "./exports", "/tmp/exports", "file:///tmp/x"])
def test_local_destinations_are_accepted(dest: str) -> None:
    check_destination(dest)
    assert not is_remote(dest)


def test_a_tables_export_to_s3_keeps_the_other_tables_in_the_manifest(
    pulled: Path, aws_env: s3fs.S3FileSystem
) -> None:
    """`export s3://... --tables flows` (no --since) wrote a manifest of flows alone: the
    flow runs and deployments still in the prefix were no longer listed."""
    url = f"s3://{BUCKET}/some"
    assert run_cli("export", url, "--db", str(pulled)).exit_code == 0
    fs = aws_env
    fs.invalidate_cache()
    before = json.loads(fs.cat(f"{BUCKET}/some/_flowsync_manifest.json"))
    again = run_cli("export", url, "--db", str(pulled), "--tables", "flows", "--json")
    assert again.exit_code == 0, again.output
    fs.invalidate_cache()
    after = json.loads(fs.cat(f"{BUCKET}/some/_flowsync_manifest.json"))
    assert set(after["tables"]) == set(before["tables"]) == {"flows", "deployments", "flow_runs"}
    assert after["tables"]["flow_runs"] == before["tables"]["flow_runs"]
    assert fs.glob(f"{BUCKET}/some/flow_runs/date=*/part-0.parquet")


def test_a_full_export_to_s3_whose_manifest_is_refused_keeps_every_listed_file(
    pulled: Path, aws_env: s3fs.S3FileSystem, tmp_path: Path
) -> None:
    """A full export deleted the remote partitions the file no longer has, then its manifest
    PUT was refused (a bucket policy): the previous manifest, still there, listed a
    partition that was gone."""
    db = tmp_path / "runs.duckdb"
    shutil.copy(pulled, db)  # without its snapshots: the export reads the file as changed here
    run_id, expected = a_run_alone_on_its_created_day(db)
    url = f"s3://{BUCKET}/moved"
    assert run_cli("export", url, "--db", str(db)).exit_code == 0
    con = duckdb.connect(str(db))  # the run got its first state: it moved to its day
    con.execute(
        "UPDATE flow_runs SET expected_start_time = CAST(? AS TIMESTAMPTZ) WHERE id = ?",
        [expected, run_id],
    )
    con.close()
    denied = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:PutObject",
        "Resource": f"arn:aws:s3:::{BUCKET}/moved/_flowsync_manifest.json",
    }
    fs = aws_env  # (its own S3 client: the policy binds every other one too)
    fs.call_s3(
        "put_bucket_policy",
        Bucket=BUCKET,
        Policy=json.dumps({"Version": "2012-10-17", "Statement": [denied]}),
    )
    result = run_cli("export", url, "--db", str(db), "--quiet")
    assert result.exit_code == 5, result.output
    assert f"Upload to {url} failed" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    fs.invalidate_cache()
    manifest = json.loads(fs.cat(f"{BUCKET}/moved/_flowsync_manifest.json"))
    for table, entry in manifest["tables"].items():
        for rel in entry["files"]:
            assert fs.exists(f"{BUCKET}/moved/{table}/{rel}"), f"listed, not there: {rel}"
    fs.call_s3("delete_bucket_policy", Bucket=BUCKET)
    again = run_cli("export", url, "--db", str(db), "--json")  # converges
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["upload"]["partitions_removed"] == ["flow_runs/date=1999-01-01"]
    fs.invalidate_cache()
    manifest = json.loads(fs.cat(f"{BUCKET}/moved/_flowsync_manifest.json"))
    listed = {f"{BUCKET}/moved/flow_runs/{rel}" for rel in manifest["tables"]["flow_runs"]["files"]}
    assert listed == set(fs.glob(f"{BUCKET}/moved/flow_runs/date=*/part-0.parquet"))


def test_a_prefix_an_export_left_without_its_manifest_is_neither_emptied_nor_half_listed(
    pulled: Path, aws_env: s3fs.S3FileSystem, tmp_path: Path
) -> None:
    """A first export whose manifest PUT failed leaves its partitions without a manifest.
    Then a file never pulled exported over it deleted every partition (the guard read only
    the manifest; a folder's looks for the files), and an export --since wrote a manifest
    of the partitions it uploaded alone, the others there but not listed."""
    url = f"s3://{BUCKET}/unfinished"
    fs = aws_env
    denied = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:PutObject",
        "Resource": f"arn:aws:s3:::{BUCKET}/unfinished/_flowsync_manifest.json",
    }
    fs.call_s3(
        "put_bucket_policy",
        Bucket=BUCKET,
        Policy=json.dumps({"Version": "2012-10-17", "Statement": [denied]}),
    )
    assert run_cli("export", url, "--db", str(pulled), "--quiet").exit_code == 5
    fs.call_s3("delete_bucket_policy", Bucket=BUCKET)

    def remote() -> dict[str, bytes]:
        fs.invalidate_cache()
        return {str(p): fs.cat(p) for p in fs.find(f"{BUCKET}/unfinished")}

    before = remote()
    assert before and f"{BUCKET}/unfinished/_flowsync_manifest.json" not in before
    empty = tmp_path / "empty.duckdb"
    Store.writer(empty).close()
    refused = run_cli("export", url, "--db", str(empty), "--quiet")
    assert refused.exit_code == 2, refused.output
    assert f"{empty} has no completed pull" in refused.stderr
    assert remote() == before
    now = datetime.now(timezone.utc).isoformat()  # nothing was synced since
    since = run_cli("export", url, "--db", str(pulled), "--since", now, "--quiet")
    if since.exit_code == 0:  # then its manifest lists every file there
        fs.invalidate_cache()
        manifest = json.loads(fs.cat(f"{BUCKET}/unfinished/_flowsync_manifest.json"))
        listed = {
            f"{BUCKET}/unfinished/flow_runs/{rel}"
            for rel in manifest["tables"].get("flow_runs", {}).get("files", {})
        }
        assert listed == set(fs.glob(f"{BUCKET}/unfinished/flow_runs/date=*/part-0.parquet"))
    else:  # or it is refused, nothing written, saying how to finish the export
        assert since.exit_code == 2 and "without --since" in since.stderr, since.output
        assert len(since.stderr.strip().splitlines()) == 1
        assert remote() == before
    again = run_cli("export", url, "--db", str(pulled), "--quiet")  # finishes it
    assert again.exit_code == 0, again.output
    fs.invalidate_cache()
    assert fs.exists(f"{BUCKET}/unfinished/_flowsync_manifest.json")


def test_an_export_to_s3_killed_mid_way_leaves_no_local_copy_once_run_again(
    pulled: Path, aws_env: s3fs.S3FileSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export to object storage writes the whole export to a local temporary folder
    first: SIGKILL (the OOM killer) left that copy in the temporary directory for good,
    one more each time."""
    temp = tmp_path / "temp"
    temp.mkdir()
    url = f"s3://{BUCKET}/killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", EXPORT_SLOW_THIRD_PARTITION, "export", url, "--db", str(pulled)],
        env={**os.environ, "TMPDIR": str(temp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert [p for p in temp.rglob("*") if p.is_file()]  # the killed export's copy
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert run_cli("export", url, "--db", str(pulled), "--quiet").exit_code == 0
    assert not list(temp.iterdir())


def test_a_full_export_to_s3_never_deletes_an_object_it_did_not_write(
    pulled: Path, aws_env: s3fs.S3FileSystem
) -> None:
    """A remote partition the file no longer has was deleted whole (``rm -r``), with the
    objects a user kept under it: only the export's own file goes."""
    url = f"s3://{BUCKET}/kept"
    fs = aws_env
    mine = f"{BUCKET}/kept/flow_runs/date=2020-01-01/notes.parquet"
    fs.pipe(mine, b"a user's own object")
    assert run_cli("export", url, "--db", str(pulled), "--quiet").exit_code == 0
    fs.invalidate_cache()
    first = sorted(fs.glob(f"{BUCKET}/kept/flow_runs/date=2026-*/part-0.parquet"))[0]
    fs.copy(first, f"{BUCKET}/kept/flow_runs/date=1999-01-01/part-0.parquet")
    fs.pipe(f"{BUCKET}/kept/flow_runs/date=1999-01-01/README.txt", b"a user's note")
    again = run_cli("export", url, "--db", str(pulled), "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["upload"]["partitions_removed"] == ["flow_runs/date=1999-01-01"]
    fs.invalidate_cache()
    assert fs.exists(mine) and fs.exists(f"{BUCKET}/kept/flow_runs/date=1999-01-01/README.txt")
    assert not fs.exists(f"{BUCKET}/kept/flow_runs/date=1999-01-01/part-0.parquet")
    third = run_cli("export", url, "--db", str(pulled), "--json")
    assert json.loads(third.stdout)["upload"]["partitions_removed"] == []
