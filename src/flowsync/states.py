"""Prefect's state types: the one list the policy schema, the report filters and the
shell completion read.

Owns: the names of Prefect 3's state types (``StateType``, ``STATE_TYPES``) and
which of them count as failed (``FAILED_STATES``; the SQL views say the same in
``sql/10_flow_run_measures.sql``). Must not: import anything of flowsync's.
"""

from __future__ import annotations

from typing import Literal, get_args

StateType = Literal[
    "SCHEDULED",
    "PENDING",
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "CRASHED",
    "PAUSED",
    "CANCELLING",
]
STATE_TYPES: tuple[str, ...] = get_args(StateType)
FAILED_STATES = ("FAILED", "CRASHED")
