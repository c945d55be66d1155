"""The ``flowsync`` command line: parse options, call one library function, render.

Owns: typer/rich. No SQL, no HTTP and no loops over API items live here.
Every command module registers its commands below.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flowsync import __version__
from flowsync.cli import analysis_cmds, export_cmds, sync_cmds
from flowsync.cli.policy_cmds import apply_cmd, plan_cmd, policy_app

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


def main() -> None:
    app()
