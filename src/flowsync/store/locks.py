"""Who holds a DuckDB file, and what to do about it: the text of ``StoreLockedError``.

Owns: turning DuckDB's "Conflicting lock is held in PROGRAM (PID n)" into a
role a user recognises (a ``flowsync pull``, an ``apply``, a reader such as a
notebook kernel) and the advice that fits it. The role comes from the
holder's command line (``/proc/PID/cmdline`` on Linux); elsewhere the program
and PID are all there is. Must not: open files or signal processes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from flowsync.errors import StoreLockedError

_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")
_WRITERS = {"pull", "apply"}
_READERS = {"sql", "report", "plan", "status", "export", "policy"}


@dataclass(frozen=True)
class Holder:
    """The process holding the lock: ``role`` is pull, apply, reader, notebook or unknown."""

    pid: int | None
    program: str
    role: str
    command: str

    def describe(self) -> str:
        pid = f" (PID {self.pid})" if self.pid else ""
        if self.role in _WRITERS:
            return f"a running `flowsync {self.role}`{pid}"
        if self.role == "notebook":
            return f"a notebook kernel{pid}, reading it"
        if self.role == "reader":
            return f"`{self.command}`{pid}, reading it"
        if self.program:
            return f"another process {self.program}{pid}"
        return "another process"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def classify(argv: list[str]) -> tuple[str, str]:
    """(role, short command) from a process's argv."""
    for i, arg in enumerate(argv):
        name = Path(arg).name
        if name in {"flowsync", "flowsync.exe"} or arg in {"flowsync", "flowsync.cli"}:
            rest = [a for a in argv[i + 1 :] if not a.startswith("-")]
            sub = rest[0] if rest else ""
            if sub in _WRITERS:
                return sub, f"flowsync {sub}"
            if sub in _READERS:
                return "reader", f"flowsync {sub}"
    if any("ipykernel" in a or "jupyter" in Path(a).name for a in argv):
        return "notebook", "a Jupyter kernel"
    return "unknown", " ".join(Path(a).name for a in argv[:3])


def holder_from_error(text: str) -> Holder:
    m = _HOLDER.search(text)
    if not m:
        return Holder(None, "", "unknown", "")
    pid = int(m.group("pid"))
    role, command = classify(_cmdline(pid))
    return Holder(pid, m.group("program"), role, command)


def locked_error(path: Path, text: str, *, read_only: bool) -> StoreLockedError:
    """The error for a refused open of ``path``: who holds it (as data too) and what to do."""
    holder = holder_from_error(text)
    message = _message(path, holder, read_only=read_only)
    return StoreLockedError(message, holder_pid=holder.pid, holder_role=holder.role)


def _message(path: Path, holder: Holder, *, read_only: bool) -> str:
    who = holder.describe()
    if read_only:
        # Only a --live reader (or a file without a snapshot yet) meets a lock.
        return (
            f"{path} is held by {who}. Read the published snapshot instead (drop --live; "
            "`flowsync.connect()` does by default), or wait with --wait SECONDS."
        )
    if holder.role in _WRITERS:
        return f"{path} is held by {who}; wait for it to finish, or pass --wait SECONDS."
    if holder.role in {"notebook", "reader", "unknown"}:
        return (
            f"{path} is held by {who}, which blocks writers. Close that connection "
            "(con.close(), or restart the kernel); readers should open the published snapshot "
            "(`flowsync.connect()` without live=True, commands without --live), which never "
            "blocks a pull. Or pass --wait SECONDS."
        )
    return f"{path} is in use by {who}; wait for it, or pass --wait SECONDS."
