"""How a long operation (a pull, an apply, an export) reports its progress.

Owns the ``Progress`` protocol the library's operations report to, and ``NullProgress``,
which ignores it. The CLI renders it (``cli/common.py``: a bar on a terminal, lines
with the rate and an ETA in a log); a Python caller passes its own or none. Must not
print.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NullProgress", "Progress"]


class Progress(Protocol):
    """Phases, each with its total when known, and the work done in it."""

    def phase(self, name: str, total: int | None = None) -> None: ...
    def advance(self, n: int) -> None: ...
    def message(self, text: str) -> None: ...


class NullProgress:
    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass
