"""The local DuckDB file. The only package that imports duckdb."""

from flowsync.store.connect import Store

__all__ = ["Store"]
