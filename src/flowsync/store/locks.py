"""Who holds a DuckDB file, and what to do about it: the text of ``StoreLockedError``.

Owns: turning DuckDB's "Conflicting lock is held in PROGRAM (PID n)" into a
role a user recognises (a ``flowsync pull``, an ``apply``, a reader such as a
notebook kernel) and the advice that fits it. The role comes from the
holder's command line (``/proc/PID/cmdline`` on Linux); elsewhere the program
and PID are all there is. The advice fits both sides: the opener says how it
reads (``how``: a writer, a reader that asked for the live file with
``--live``, a reader that falls back to it because no snapshot is published,
or a command that always reads the live file, such as ``status`` and the plan
``apply`` decides on), so no command is told to drop an option it does not
have; and a reader holding the file is said to use ``--live`` only when its
command line has it. Must not: open files or signal processes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from flowsync.errors import StoreLockedError

_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")
_WRITERS = {"pull", "apply", "plan"}  # plan: only `plan --refresh` (classify)
_READERS = {"sql", "report", "plan", "status", "export", "policy"}
_BRIEF_READERS = {"flowsync status", "flowsync report"}
# How long a writer waits, whatever its --wait, for a brief reader to let the file go.
BRIEF_HOLD_GRACE = 3.0


@dataclass(frozen=True)
class Holder:
    """The process holding the lock: ``role`` is pull, apply, plan (``plan --refresh``, a
    writer), reader, notebook or unknown."""

    pid: int | None
    program: str
    role: str
    command: str
    live: bool = False  # its command line asked for the live file (--live)

    @property
    def brief(self) -> bool:
        """It holds the live file for a moment: ``status`` reads the summary there, and a
        report the last pull's time (one query each), not a reader's whole session."""
        return self.role == "reader" and self.command in _BRIEF_READERS and not self.live

    def describe(self) -> str:
        pid = f" (PID {self.pid})" if self.pid else ""
        if self.role in _WRITERS:
            return f"a running `{self.command}`{pid}"
        if self.role == "notebook":
            return f"a notebook kernel{pid}, reading it"
        if self.role == "reader":
            how = " with --live" if self.live else ""
            return f"`{self.command}`{pid}, reading it{how}"
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
            if sub == "plan" and "--refresh" in argv:
                return "plan", "flowsync plan --refresh"
            if sub in _WRITERS - {"plan"}:
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
    argv = _cmdline(pid)
    role, command = classify(argv)
    return Holder(pid, m.group("program"), role, command, live="--live" in argv)


# How the opener reads or writes the file (``lock_context`` of ``Store.writer``, ``.reader``, ``.sandboxed``).
WRITE = "write"  # pull, apply, plan --refresh, connect(read_only=False)
LIVE = "live"  # a reader that asked for the live file: --live, connect(live=True)
FALLBACK = "fallback"  # a reader on a file with no published snapshot yet
LIVE_ONLY = "live-only"  # always reads the live file (status; the plan apply decides on)


def locked_error(
    path: Path, text: str, *, read_only: bool, how: str | None = None
) -> StoreLockedError:
    """The error for a refused open of ``path``: who holds it (as data too) and what to do."""
    holder = holder_from_error(text)
    message = _message(path, holder, how or (LIVE_ONLY if read_only else WRITE))
    return StoreLockedError(
        message, holder_pid=holder.pid, holder_role=holder.role, brief=holder.brief
    )


def after_waiting(locked: StoreLockedError, wait: float) -> StoreLockedError:
    """``locked`` as said after waiting ``wait`` seconds for the file: the line says so and
    asks for a longer wait, not for the ``--wait`` already given."""
    if wait <= 0 or "--wait SECONDS" not in str(locked):
        return locked
    told = StoreLockedError(
        str(locked).replace("--wait SECONDS", f"a --wait longer than the {wait:g} s waited"),
        holder_pid=locked.holder_pid,
        holder_role=locked.holder_role,
        brief=locked.brief,
    )
    told.__cause__ = locked.__cause__
    return told


def _message(path: Path, holder: Holder, how: str) -> str:
    who = holder.describe()
    if how == LIVE:
        return (
            f"{path} is held by {who}. Read the published snapshot instead (drop --live, or "
            "`flowsync.connect()` without live=True), or wait with --wait SECONDS."
        )
    if how == FALLBACK:
        return (
            f"{path} has no published snapshot yet and is held by {who}; "
            + (
                "the first pull of this flowsync version publishes one when it finishes: "
                if holder.role == "pull"
                else "the next pull publishes one: "
            )
            + "wait with --wait SECONDS."
        )
    if how == LIVE_ONLY:
        finish = "wait for it to finish" if holder.role in _WRITERS else "wait for it to close"
        return f"{path} is held by {who}; this command reads the live file: {finish}, or pass --wait SECONDS."
    if holder.role in _WRITERS:
        return f"{path} is held by {who}; wait for it to finish, or pass --wait SECONDS."
    if holder.brief:
        return (
            f"{path} is held by {who}: it reads the live file (the last pull's record; a "
            "report all of it while no snapshot is published) and held it longer than the "
            f"{BRIEF_HOLD_GRACE:g} s a writer waits for that; pass --wait SECONDS."
        )
    if holder.role == "reader" and not holder.live:
        # It did not ask for the live file: the snapshot folder is missing (or was never
        # published), so it fell back to it. The next publish gives readers a snapshot again.
        return (
            f"{path} is held by {who}: it reads the live file because {path} has no published "
            "snapshot (the snapshot folder is missing). Wait for it to finish (--wait SECONDS); "
            "this pull then publishes a snapshot, which readers open instead of the live file."
        )
    if holder.role == "reader":
        return (
            f"{path} is held by {who}, which blocks writers. Wait for it to finish (--wait SECONDS); "
            "run it without --live to read the published snapshot, which never blocks a pull."
        )
    if holder.role in {"notebook", "unknown"}:
        return (
            f"{path} is held by {who}, which blocks writers. Close that connection "
            "(con.close(), or restart the kernel); notebooks should open the published snapshot "
            "(`flowsync.connect()` without live=True), which never blocks a pull. "
            "Or pass --wait SECONDS."
        )
    return f"{path} is in use by {who}; wait for it, or pass --wait SECONDS."
