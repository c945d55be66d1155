"""The server's own view of its runs, to compare a pulled DB against."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.helpers import query


def server_runs(url: str) -> dict[str, str]:
    """Every flow run id on the server with its state type (offset pages, deduplicated)."""
    out: dict[str, str] = {}
    with httpx.Client(base_url=url + "/", timeout=60) as c:
        offset = 0
        while True:
            page = c.post(
                "flow_runs/filter", json={"limit": 200, "offset": offset, "sort": "ID_DESC"}
            ).json()
            for r in page:
                out[r["id"]] = r["state_type"]
            if len(page) < 200:
                return out
            offset += len(page)


def local_runs(db: Path) -> dict[str, str]:
    return {
        str(i): s
        for i, s in query(db, "SELECT id, state_type FROM flow_runs WHERE deleted_at IS NULL")
    }


def assert_matches_server(db: Path, url: str) -> None:
    server = server_runs(url)
    local = local_runs(db)
    missing = set(server) - set(local)
    extra = set(local) - set(server)
    wrong = {i for i in set(server) & set(local) if server[i] != local[i]}
    assert not missing and not extra and not wrong, (
        f"{len(missing)} missing, {len(extra)} extra (deleted on server), {len(wrong)} with a stale state"
    )
