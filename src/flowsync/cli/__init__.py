"""The ``flowsync`` command line: parse options, call one library function, render.

Owns: typer/rich. No SQL, no HTTP and no loops over API items live here.
Every command module registers its commands below.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, TextIO, cast

import typer

from flowsync import __version__
from flowsync.cli import analysis_cmds, common, export_cmds, sync_cmds
from flowsync.cli.policy_cmds import apply_cmd, plan_cmd, policy_app
from flowsync.errors import INTERRUPTED_EXIT

app = typer.Typer(
    name="flowsync",
    help="Prefect run history in DuckDB: pull it, analyse it, clean it up with reviewed policies.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold the API key
    add_completion=True,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"flowsync {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Prefect run history in DuckDB: pull it, analyse it, clean it up with reviewed policies."""


app.command("pull")(sync_cmds.pull_cmd)
app.command("status")(sync_cmds.status_cmd)
app.command("sql")(analysis_cmds.sql_cmd)
app.add_typer(analysis_cmds.report_app, name="report")
app.command("export")(export_cmds.export_cmd)
app.command("plan")(plan_cmd)
app.command("apply")(apply_cmd)
app.add_typer(policy_app, name="policy")


class _PipeSafe:
    """Standard output that a reader may close early (``flowsync plan | head -1``): once a
    write meets the closed pipe, the rest goes nowhere and the command runs to its end, so
    its exit code (8, 10, 9...) is still the one a script with ``pipefail`` sees."""

    def __init__(self, inner: Any, owner: _PipeSafe | None = None) -> None:
        self._inner = inner
        self._owner = owner or self
        self._broken = False

    @property
    def buffer(self) -> _PipeSafe:
        return _PipeSafe(self._inner.buffer, self)

    def write(self, data: Any) -> int:
        if not self._owner._broken:
            try:
                return int(self._inner.write(data))
            except BrokenPipeError:
                self._owner._close()
        return len(data)

    def flush(self) -> None:
        if not self._owner._broken:
            try:
                self._inner.flush()
            except BrokenPipeError:
                self._owner._close()

    def _close(self) -> None:
        self._broken = True
        # What is still buffered, and the flush at exit, go to /dev/null, not to an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._inner.fileno())
        os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def main() -> None:
    if sys.stdout is not None:  # (None: started with stdout closed; Rich writes nowhere)
        sys.stdout = cast(TextIO, _PipeSafe(sys.stdout))
    common.interrupt_told.clear()  # (a process may run the CLI more than once)
    # A Ctrl-C outside a command's own handling (``common.errors``): met before typer's
    # (building the command), or turned by typer into exit 130 without a word (parsing).
    try:
        app()
    except (KeyboardInterrupt, SystemExit) as e:
        if isinstance(e, SystemExit) and e.code != INTERRUPTED_EXIT:
            raise
        if not common.interrupt_told:
            common.err.print("[yellow]interrupted[/] (SIGINT).", highlight=False)
        raise SystemExit(INTERRUPTED_EXIT) from None
