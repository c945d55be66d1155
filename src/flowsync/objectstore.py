"""The Parquet export on object storage: ``s3://``, ``gs://``, ``az://`` (``EXTRAS``).

Owns: copying an export directory written by ``flowsync.export`` to a remote
prefix with the same layout, and keeping the remote manifest whole. Each file
is one object PUT, which S3, GCS and Azure Blob make visible whole or not at
all, so a reader sees the old or the new partition, never half of one; the
manifest goes last, so every file it lists is already there. With ``since``,
only the partitions that export rewrote are uploaded and the remote manifest
is updated for them; a full export also deletes remote partitions the DB no
longer has, after the manifest that no longer lists them. A destination is checked before anything is written
(``check_destination``: a supported scheme, with its bucket), and so is the
remote manifest's source (``check_remote``, ``flowsync.export.check_source``; without a
manifest, the Parquet files there count as an export). Filesystems come from fsspec (``s3fs``, ``gcsfs``, ``adlfs``,
the ``flowsync[s3]``/``[gcs]``/``[azure]`` extras) and find credentials the
way each cloud's own SDK does (``AWS_*`` variables, ``~/.aws`` profiles,
instance roles; ``GOOGLE_APPLICATION_CREDENTIALS``; ``AZURE_STORAGE_*``); a
custom endpoint (MinIO, Ceph, R2) is ``AWS_ENDPOINT_URL``. flowsync never
reads, stores or prints a credential. Must not: print, or query DuckDB.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from flowsync.config import check_utf8
from flowsync.errors import ConfigError, StoreError
from flowsync.export import MANIFEST, PART_FILE, TABLES, ExportResult, Source, check_source
from flowsync.progress import NullProgress, Progress
from flowsync.store.files import owner_alive

_URL = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://(?P<rest>.*)$", re.DOTALL)
# The schemes export writes to, each with the extra that brings its filesystem.
EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
}
# ``s3:/bucket``: a scheme export writes to with a slash missing, which would otherwise be
# a local folder ``s3:`` holding ``bucket`` (``s3:name``, no slash, is a folder of that name).
_SLASH_MISSING = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*):/(?!/)")
_SUPPORTED = "a directory, file://, " + ", ".join(f"{s}://" for s in EXTRAS)


def is_remote(dest: str) -> bool:
    """``s3://bucket/prefix`` and friends; a plain path (or ``file://``) is local."""
    m = _URL.match(dest)
    return m is not None and m.group("scheme").lower() != "file"


def local_dir(dest: str) -> Path:
    """The directory a local destination names: a path, or a ``file://`` URL (RFC 8089: no
    host or ``localhost``, the path percent-decoded)."""
    if dest[:7].lower() != "file://":
        return Path(dest)
    parts = urlsplit(dest)
    if parts.netloc.lower() not in ("", "localhost"):
        raise ConfigError(
            f"Export URL {dest} names the host {parts.netloc!r}; a file URL names this machine's "
            "files: use file:///path/to/dir or the path itself."
        )
    path = unquote(parts.path)
    if not path.strip("/").strip():
        raise ConfigError(
            f"Export URL {dest} names no directory; use file:///path/to/dir or the path itself."
        )
    return Path(path)


def check_destination(dest: str) -> None:
    """Refuse, before anything is written, a destination export cannot write: an empty
    one (it would be the current directory), a URL of a scheme export does not support,
    one without its bucket (container) or a ``file://`` without a directory."""
    if not dest.strip():
        raise ConfigError(
            "Export destination is empty; pass a directory (created if missing) or a URL "
            "such as s3://bucket/prefix."
        )
    check_utf8(dest, "The export destination")
    m = _URL.match(dest)
    if m is None:
        short = _SLASH_MISSING.match(dest)
        if short and short.group("scheme").lower() in (*EXTRAS, "file"):
            scheme = short.group("scheme").lower()
            raise ConfigError(
                f"Export destination {dest} is a {scheme}:// URL with a slash missing; write "
                f"{scheme}://{dest[short.end() :]} (or ./{dest} for a local folder)."
            )
        return  # a local path
    scheme, rest = m.group("scheme").lower(), m.group("rest")
    user, at, _ = rest.split("/", 1)[0].rpartition("@")
    if (at and ":" in user) or "?" in rest:
        # A key in the URL (key:secret@, a SAS token's ?sig=) would be printed, logged and
        # kept in the export's manifest: refused without echoing it. (abfs://container@account
        # names no secret.)
        raise ConfigError(
            f"The export URL ({scheme}://...) holds credentials or a query (user:secret@ "
            "before its bucket, or a ?); pass credentials as the provider's SDK reads them "
            "(environment, its config files, an instance role), never in the URL."
        )
    if scheme == "file":
        local_dir(dest)
        return
    if scheme not in EXTRAS:
        raise ConfigError(f"Cannot export to {scheme}:// ({dest}); export writes to {_SUPPORTED}.")
    bucket = "container" if EXTRAS[scheme] == "azure" else "bucket"
    if not rest.split("/", 1)[0].strip():
        raise ConfigError(
            f"Export URL {dest} names no {bucket}; use {scheme}://{bucket.upper()}/prefix."
        )


@dataclass
class UploadResult:
    url: str
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    partitions_removed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # every field, by its name


def _filesystem(url: str) -> tuple[Any, str]:
    scheme = url.split("://", 1)[0].lower()
    try:
        import fsspec
    except ImportError:
        raise ConfigError(
            f"Exporting to {scheme}:// needs fsspec: pip install 'flowsync[{EXTRAS.get(scheme, 's3')}]'."
        ) from None
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        extra = EXTRAS.get(scheme)
        hint = f"pip install 'flowsync[{extra}]'" if extra else "use s3://, gs:// or az://"
        raise ConfigError(
            f"Cannot export to {scheme}:// URLs here ({str(e).splitlines()[0]}): {hint}."
        ) from None
    return fs, str(root).rstrip("/")


_SDKS = {"botocore", "aiobotocore", "google", "azure", "s3fs", "gcsfs", "adlfs"}


def _sdk_error(e: Exception) -> bool:
    """An error of the storage itself: the OS's, or the SDKs' own types (they vary)."""
    return isinstance(e, (OSError, ValueError, RuntimeError)) or (
        type(e).__module__.split(".")[0] in _SDKS
    )


def _failed(
    doing: str, e: Exception, state: str = "Files already uploaded are complete"
) -> StoreError:
    """The one line for a storage error ``e`` while ``doing`` (``Upload to URL``); ``state``:
    what is there now."""
    # Messages from the cloud SDKs name the bucket and the error code, never a secret.
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return StoreError(
        f"{doing} failed: {first}. {state}; fix access (credentials come from the "
        "environment or your cloud profile) and run it again."
    )


def remote_manifest(url: str) -> dict[str, Any] | None:
    """The manifest of the export at ``url`` (``{}`` when unreadable), None when there is
    none; read before anything is written there."""
    fs, root = _filesystem(url)
    try:
        return _remote_manifest(fs, root)
    except Exception as e:
        if not _sdk_error(e):
            raise
        raise _failed(f"Reading {url}/{MANIFEST}", e, "Nothing was written") from e


def check_remote(url: str, source: Source, since: datetime | None) -> None:
    """``flowsync.export.check_source`` for the export at ``url``, before anything is written
    there: its manifest, or, without one, its Parquet files (an export whose manifest never
    landed), which an export ``since`` cannot list whole (it refuses)."""
    found = remote_manifest(url)
    holds = found is not None
    if found is None:
        fs, root = _filesystem(url)
        try:
            holds = any(
                str(p).endswith(".parquet")
                for name in TABLES
                if fs.exists(f"{root}/{name}")
                for p in fs.find(f"{root}/{name}")
            )
        except Exception as e:
            if not _sdk_error(e):
                raise
            raise _failed(f"Listing {url}", e, "Nothing was written") from e
    check_source(found, holds, source, url)
    if found is None and holds and since is not None:
        raise ConfigError(
            f"{url} holds Parquet files but no {MANIFEST} (an export that did not finish); "
            "run the export without --since to complete it."
        )


def _remote_manifest(fs: Any, root: str) -> dict[str, Any] | None:
    """The manifest under ``root`` (``{}`` when it is no JSON object), None when there is none."""
    try:
        with fs.open(f"{root}/{MANIFEST}", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _merged_manifest(
    local: dict[str, Any],
    remote: dict[str, Any] | None,
    exported: list[str],
    full: bool,
    stale: Sequence[str] = (),
) -> dict[str, Any]:
    """The manifest of what is remote after this upload of the tables ``exported``: a table
    exported in full is the local one's (none when it has no file), one exported ``since``
    the remote files with the rewritten ones, without the ``stale`` partitions
    (``table/date=...``) it removes; a table not exported stays as it was."""
    if remote is None or (full and set(exported) >= set(TABLES)):
        return local
    written = local.get("tables") or {}
    tables = dict(remote.get("tables") or {})
    for name in exported:
        entry = written.get(name)
        if full:
            tables.pop(name, None)
        if entry is None:
            continue
        files = {
            rel: rows
            for rel, rows in {**(tables.get(name) or {}).get("files", {}), **entry["files"]}.items()
            if f"{name}/{rel.split('/', 1)[0]}" not in stale
        }
        tables[name] = {**entry, "files": files, "rows": sum(files.values())}
    return {**local, "tables": tables}


def upload(
    local_dir: Path, result: ExportResult, url: str, progress: Progress | None = None
) -> UploadResult:
    """Copy the files ``result`` wrote under ``local_dir`` to ``url``, then the manifest;
    ``progress`` gets an ``upload`` phase, its files the work."""
    fs, root = _filesystem(url)
    out = UploadResult(url)
    full = result.since is None
    progress = progress or NullProgress()
    progress.phase("upload", sum(len(t.files_written) for t in result.tables) + 1)
    try:
        stale: list[str] = []  # partitions the DB no longer has, removed after the manifest
        for table in result.tables:
            for rel in table.files_written:
                src = local_dir / table.name / rel
                fs.put_file(str(src), f"{root}/{table.name}/{rel}")
                out.files_uploaded += 1
                out.bytes_uploaded += src.stat().st_size
                progress.advance(1)
            if table.partition_by:
                # every day the DB holds (``since`` too: not only the days it wrote)
                keep = table.partitions
                for entry in (
                    fs.ls(f"{root}/{table.name}", detail=False)
                    if fs.exists(f"{root}/{table.name}")
                    else []
                ):
                    name = str(entry).rstrip("/").rsplit("/", 1)[-1]
                    if (
                        name.startswith("date=")
                        and name not in keep
                        and fs.exists(f"{root}/{table.name}/{name}/{PART_FILE}")
                    ):
                        stale.append(f"{table.name}/{name}")
        local = json.loads((local_dir / MANIFEST).read_text(encoding="utf-8"))
        manifest = _merged_manifest(
            local, _remote_manifest(fs, root), [t.name for t in result.tables], full, stale
        )
        manifest["location"] = url
        with fs.open(f"{root}/{MANIFEST}", "wb") as f:
            f.write((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        out.files_uploaded += 1
        progress.advance(1)
        # Only now: the manifest in place until here listed them.
        for partition in stale:  # its file: never an object export did not write
            fs.rm_file(f"{root}/{partition}/{PART_FILE}")
            out.partitions_removed.append(partition)
    except Exception as e:  # the SDKs' own error types (botocore, google, azure) vary
        if _sdk_error(e):
            raise _failed(f"Upload to {url}", e) from e
        raise
    return out


_STAGING = "flowsync-export-"
_STAGING_OF = re.compile(rf"^{_STAGING}(?P<pid>\d+)-")


def _remove_orphans(root: Path) -> None:
    """The staging folders under ``root`` of exports killed (SIGKILL, the OOM killer) before
    they could remove theirs: named by their process, which is gone."""
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            m = _STAGING_OF.match(entry.name)
            if m and entry.is_dir() and not owner_alive(int(m.group("pid"))):
                shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def staging(url: str) -> Iterator[Path]:
    """A local directory for an export bound for ``url``, removed after (and, when a
    kill left one, by the next export); a missing extra fails here, before any work."""
    _filesystem(url)
    _remove_orphans(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"{_STAGING}{os.getpid()}-") as tmp:
        yield Path(tmp)
