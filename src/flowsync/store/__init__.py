"""The local DuckDB file. The only package that imports duckdb.

Open it in a role (``flowsync.store.connect``): ``Store.writer``, ``Store.reader``,
``Store.sandboxed`` or ``Store.sandboxed_writer``; each returns its type."""

from flowsync.store.connect import Store
from flowsync.store.roles import Reader, Sandbox, SandboxedWriter, Writer

__all__ = ["Reader", "Sandbox", "SandboxedWriter", "Store", "Writer"]
