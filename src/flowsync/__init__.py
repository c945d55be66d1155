"""flowsync: Prefect run history in DuckDB, with reports and bulk cleanup policies.

``import flowsync`` stays light: ``flowsync.connect`` is loaded on first use,
so duckdb is imported only when a connection is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "connect"]

if TYPE_CHECKING:
    from flowsync.store.notebook import connect


def __getattr__(name: str) -> Any:
    if name == "connect":
        from flowsync.store.notebook import connect

        return connect
    raise AttributeError(f"module 'flowsync' has no attribute {name!r}")
