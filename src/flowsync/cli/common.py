"""Shared CLI plumbing: consoles, the error boundary, progress, output helpers.

Owns: everything that prints. Errors become one line on stderr and the exit
code documented in ``flowsync.errors``; data goes to stdout only. Inside
``errors()`` SIGTERM (how systemd and Kubernetes stop a process) is handled
like Ctrl-C: it raises ``SignalInterrupt`` where the program is, so what was
committed is kept and a pull records itself ``interrupted``, then exits 143;
and each ``FlowsyncWarning`` (a newer flowsync wrote the file) is one line on
stderr, once.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn
from uuid import UUID

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from flowsync import present
from flowsync.config import MEMORY_LIMIT_MAX_MB, MEMORY_LIMIT_MIN_MB
from flowsync.errors import INTERRUPTED_EXIT, FlowsyncError, FlowsyncWarning, SignalInterrupt

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def no_default_option(*names: str, **settings: Any) -> Any:
    """An option whose --help shows no default: it has none, or its help says where it
    comes from (an environment variable, the Prefect profile, the terminal)."""
    return typer.Option(*names, show_default=False, **settings)


DbOption = Annotated[
    Path | None,
    no_default_option(
        "--db",
        help="DuckDB file. Default: $FLOWSYNC_DB, else ./flowsync.duckdb.",
        metavar="PATH",
    ),
]
WaitOption = Annotated[
    float,
    typer.Option(
        "--wait",
        help="Seconds to wait for another flowsync process to release the file.",
        min=0,
        metavar="SECONDS",
    ),
]
LiveOption = Annotated[
    bool,
    typer.Option(
        "--live",
        help="Read the live DuckDB file instead of its latest published snapshot (conflicts with a running pull: see --wait).",
    ),
]
MemoryLimitOption = Annotated[
    int | None,
    no_default_option(
        "--memory-limit",
        help="DuckDB memory cap in MB (default 64; 0: DuckDB's own default, 80% of RAM).",
        min=MEMORY_LIMIT_MIN_MB,
        max=MEMORY_LIMIT_MAX_MB,
        metavar="MB",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")
]
ApiUrlOption = Annotated[
    str | None,
    no_default_option(
        "--api-url",
        help="Prefect API URL. Default: $PREFECT_API_URL, else the active Prefect profile.",
        metavar="URL",
    ),
]
ApiKeyOption = Annotated[
    str | None,
    no_default_option(
        "--api-key",
        help="Prefect Cloud API key. Default: $PREFECT_API_KEY, else the profile. Never printed or stored.",
        metavar="KEY",
    ),
]

MaxRequestsOption = Annotated[
    float | None,
    no_default_option(
        "--max-requests-per-minute",
        help="Request budget: send at most this many requests a minute (pull, apply, plan "
        "--refresh), paced before the server has to say 429; for a share of a Prefect Cloud "
        "account's quota. "
        "Default: $FLOWSYNC_MAX_REQUESTS_PER_MINUTE, else the active Prefect profile's, else none.",
        min=0,
    ),
]


def quiet_option(what: str) -> Any:
    """``--quiet``/``-q`` of a command that writes ``what`` (progress, a summary) to stderr:
    errors only, for cron."""
    return typer.Option("--quiet", "-q", help=f"No {what}; errors only (for cron).")


def fail(e: FlowsyncError) -> NoReturn:
    """One line saying what failed; the error's ``hint`` (DuckDB's suggestions), if any,
    on the lines after it, indented, so ``grep error:`` still finds one line."""
    err.print(f"[bold red]error:[/] {escape(present.one_line(str(e)))}", highlight=False)
    for line in e.hint.splitlines():
        err.print(f"  {escape(present.one_line(line))}", highlight=False)
    raise typer.Exit(e.exit_code)


# The SIGTERM this command received, if any: DuckDB turns the SignalInterrupt raised in a
# statement into its own "Query interrupted", which the store raises as KeyboardInterrupt.
_received: list[SignalInterrupt] = []


def _on_sigterm(signum: int, frame: object) -> None:
    # One-shot: a second SIGTERM must not break the bookkeeping the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _received.append(SignalInterrupt(signum, signal.Signals(signum).name))
    raise _received[-1]


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread (a test runner's worker, say)
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _received.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _warnings_once() -> Iterator[None]:
    shown: set[str] = set()

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, FlowsyncWarning):
            if str(message) not in shown:
                shown.add(str(message))
                err.print(
                    f"[yellow]warning:[/] {escape(present.one_line(str(message)))}", highlight=False
                )
            return
        original(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        original = warnings.showwarning
        warnings.simplefilter("always", FlowsyncWarning)
        warnings.showwarning = show
        yield


# The interruptions ``errors`` has said; typer turns a Ctrl-C outside it (while it parses the
# arguments) into exit 130 without a word, which ``flowsync.cli.main`` then says.
interrupt_told: list[str] = []


@contextmanager
def errors() -> Iterator[None]:
    """The one place flowsync errors become a line on stderr and an exit code."""
    with _sigterm_as_interrupt(), _warnings_once():
        try:
            yield
        except FlowsyncError as e:
            fail(e)
        except KeyboardInterrupt as e:
            if not isinstance(e, SignalInterrupt) and _received:
                e = _received[-1]  # met inside a DuckDB statement, which hid it
            if isinstance(e, SignalInterrupt):
                name, code = e.signal_name, e.exit_code
            else:
                name, code = "SIGINT", INTERRUPTED_EXIT
            err.print(
                f"[yellow]interrupted[/] ({name}); what was committed is kept, run the command "
                "again to continue.",
                highlight=False,
            )
            interrupt_told.append(name)
            raise typer.Exit(code) from None


def ask(question: str) -> bool:
    """``question [y/N]:`` on stderr, answered on the terminal's stdin: y or yes is True; n, no,
    nothing or the end of input False; anything else asks again. Read in short waits, not
    one blocking read: a Ctrl-C the kernel hands to another thread (DuckDB's, a pool's) does
    not interrupt a read blocked in the main thread, which then waited for Enter; between
    waits the main thread takes it (``KeyboardInterrupt``)."""
    import select

    while True:
        err.print(escape(f"{question} [y/N]: "), end="", highlight=False)
        try:
            while not select.select([sys.stdin], [], [], 0.2)[0]:
                pass
        except (OSError, ValueError):  # no selectable stdin (not POSIX): one blocking read
            pass
        line = sys.stdin.readline()
        answer = line.strip().lower()
        if not line or answer in ("", "n", "no"):
            return False
        if answer in ("y", "yes"):
            return True
        err.print("Answer y or n.", highlight=False)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (UUID, Path)):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2) + "\n")
    sys.stdout.flush()


# What a phase counts: apply counts runs, a pull's phases count rows of a table.
_UNITS = {"apply": "runs", "re-read": "runs", "refresh": "runs", "upload": "files"}


def _unit(phase: str) -> str:
    return _UNITS.get(phase, "rows")


def _eta(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class TerminalProgress:
    """A live bar per phase on a terminal."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self._task: Any = None
        self._started = time.monotonic()
        self._done = 0
        self._unit = "rows"

    def __enter__(self) -> TerminalProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No live display while a question is asked: its redraws garble the prompt, and its
        thread may take the Ctrl-C that should stop the question (a read blocked in the
        main thread is not interrupted by a signal another thread handles)."""
        self._progress.stop()
        try:
            yield
        finally:
            self._progress.start()

    def phase(self, name: str, total: int | None = None) -> None:
        self._task = self._progress.add_task(name, total=total, rate="")
        self._started = time.monotonic()
        self._done = 0
        self._unit = _unit(name)

    def advance(self, n: int) -> None:
        if self._task is None:
            return
        self._done += n
        rate = self._done / max(time.monotonic() - self._started, 1e-6)
        self._progress.update(self._task, advance=n, rate=f"{rate:,.0f} {self._unit}/s")

    def message(self, text: str) -> None:
        self._progress.console.print(f"  {escape(text)}", highlight=False)


class LineProgress:
    """Quiet, line-oriented progress for cron and logs: a line per phase and every 10 s,
    with the rate since the phase began and, when its total is known, an ETA."""

    def __init__(self, quiet: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet = quiet
        self._clock = clock
        self._name = ""
        self._total: int | None = None
        self._done = 0
        self._last = self._started = clock()

    def __enter__(self) -> LineProgress:
        return self

    @contextmanager
    def paused(self) -> Iterator[None]:
        """(Nothing live to pause: lines only.)"""
        yield

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:  # an error or a signal is its own one line: no progress beside it
            self._flush()

    def _flush(self) -> None:
        if self._name and not self.quiet:
            unit = _unit(self._name)
            line = f"{self._name}: {self._done}{f'/{self._total}' if self._total else ''} {unit}"
            elapsed = self._clock() - self._started
            if self._done and elapsed > 0:
                rate = self._done / elapsed
                line += f", {rate:,.0f} {unit}/s"
                if self._total and self._done < self._total:
                    line += f", eta {_eta((self._total - self._done) / rate)}"
            err.print(line, highlight=False, markup=False)

    def phase(self, name: str, total: int | None = None) -> None:
        self._flush()
        self._name, self._total, self._done = name, total, 0
        self._last = self._started = self._clock()

    def advance(self, n: int) -> None:
        self._done += n
        if self._clock() - self._last > 10:
            self._flush()
            self._last = self._clock()

    def message(self, text: str) -> None:
        if not self.quiet:
            err.print(text, highlight=False, markup=False)


def make_progress(quiet: bool) -> TerminalProgress | LineProgress:
    if not quiet and err.is_terminal:
        return TerminalProgress()
    return LineProgress(quiet=quiet)
