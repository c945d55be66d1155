"""A flowsync file holding N runs as a pull leaves them, built in DuckDB in seconds (no server).

Every column a real page fills is filled (names, ids, JSON parameters and state details,
tags, times), so the file's layout and compression are a pull's. ``changed_run`` is run
``i`` as the API returns it after a state change: one object of a page's JSON.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flowsync.store import Store

START = datetime(2026, 1, 1, tzinfo=timezone.utc)  # run i is expected i minutes later

_HISTORY_SQL = """
INSERT INTO flow_runs
SELECT _run_id(i), t - INTERVAL 1 HOUR, t + INTERVAL 5 MINUTE, 'brisk-otter-' || i, _run_id(1), _run_id(2),
       'a1b2c3d4', _run_id(3), 'default-pool', _run_id(4), 'default', md5(CAST(i % 7 AS VARCHAR)),
       json_object('date', CAST(t AS DATE), 'limit', i % 500, 'dry_run', false),
       'scheduled ' || _run_id(2) || ' ' || t, '{}',
       '{"max_retries":0,"retry_delay_seconds":0.0,"retries":0,"pause_keys":[],"resuming":false}',
       ['auto-scheduled', 'prod'], json_object('prefect.flow.id', _run_id(1)), NULL,
       _run_id(i + 10000000), s, s[1] || lower(s[2:]),
       CASE WHEN s = 'FAILED' THEN 'Flow run encountered an exception: ValueError(' || i || ')' END,
       t + INTERVAL 5 MINUTE,
       json_object('flow_run_id', _run_id(i), 'transition_id', _run_id(i + 20000000), 'deferred', false),
       NULL, 1, t, NULL, t + INTERVAL 2 SECOND, t + INTERVAL 5 MINUTE, 298.0 + i % 13, 298.0, 1.5, true, NULL,
       'pid-' || i, NULL, '{}', NULL, now(), 1, NULL
FROM (SELECT range AS i, CAST(? AS TIMESTAMPTZ) + range * INTERVAL 1 MINUTE AS t,
             CASE range % 10 WHEN 0 THEN 'FAILED' WHEN 1 THEN 'CANCELLED' ELSE 'COMPLETED' END AS s
      FROM range(?))
"""


def run_id(i: int, *, scattered: bool = False) -> str:
    if scattered:
        h = hashlib.md5(str(i).encode()).hexdigest()
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"
    return f"00000000-0000-4000-8000-{i:012x}"


# ``run_id(i, scattered=True)`` in SQL: ids spread like Prefect's uuid4s, not in id order.
_SCATTERED = "md5(CAST(i AS VARCHAR))"
_SCATTERED_ID = (
    f"CAST(substr({_SCATTERED}, 1, 8) || '-' || substr({_SCATTERED}, 9, 4) || '-4' || "
    f"substr({_SCATTERED}, 14, 3) || '-8' || substr({_SCATTERED}, 18, 3) || '-' || "
    f"substr({_SCATTERED}, 21, 12) AS UUID)"
)


def make_history(path: Path, runs: int, *, scattered: bool = False) -> Path:
    """A checkpointed flowsync file with runs 0..runs-1 (``seen_pull`` 1, ``run_count`` 1).

    ``scattered``: ids as ``run_id(i, scattered=True)``, in no order (as a real server's are),
    so that zone maps on ``id`` cannot narrow a lookup by id as they do for ordered ids."""
    with Store.writer(path, memory_limit_mb=0) as store:  # bulk seeding: no write-job cap
        macro = (
            _SCATTERED_ID
            if scattered
            else "CAST(printf('00000000-0000-4000-8000-%012x', i) AS UUID)"
        )
        store.execute(f"CREATE TEMP MACRO _run_id(i) AS {macro}")
        store.execute(_HISTORY_SQL, [START, runs])
        store.execute("CHECKPOINT")
    return path


def changed_run(i: int, *, scattered: bool = False) -> dict[str, Any]:
    """Run ``i`` after it was retried and completed (``run_count`` 2, tag ``retried``)."""
    t = START + timedelta(minutes=i)
    stamp = (t + timedelta(hours=2)).isoformat()
    return {
        "id": run_id(i, scattered=scattered),
        "created": (t - timedelta(hours=1)).isoformat(),
        "updated": stamp,
        "name": f"brisk-otter-{i}",
        "flow_id": run_id(1, scattered=scattered),
        "deployment_id": run_id(2, scattered=scattered),
        "parameters": {"date": t.date().isoformat(), "limit": i % 500, "dry_run": False},
        "tags": ["auto-scheduled", "prod", "retried"],
        "state_id": run_id(i + 30000000, scattered=scattered),
        "state_type": "COMPLETED",
        "state_name": "Completed",
        "state": {
            "id": run_id(i + 30000000, scattered=scattered),
            "type": "COMPLETED",
            "name": "Completed",
            "timestamp": stamp,
            "message": None,
            "data": None,
            "state_details": {"flow_run_id": run_id(i, scattered=scattered), "deferred": False},
        },
        "run_count": 2,
        "expected_start_time": t.isoformat(),
        "start_time": t.isoformat(),
        "end_time": stamp,
        "total_run_time": 7200.0,
        "auto_scheduled": True,
    }
