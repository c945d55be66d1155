"""flowsync: Prefect run history in DuckDB, with reports and bulk cleanup policies."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
