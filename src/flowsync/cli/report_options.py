"""The options every ``flowsync report`` command shares, declared once.

Owns: their names, help texts and defaults, and ``report_options``, the decorator
that adds them after a report command's own options and hands their values to it
as one ``ReportOptions``. A command then states only what is its own: its
grouping, its ``--since`` default, its extra options and its build function.
Must not: open the store or render (that is ``analysis_cmds``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Concatenate, ParamSpec

import typer

from flowsync.cli.common import DbOption, LiveOption, WaitOption
from flowsync.reports import Filters
from flowsync.states import STATE_TYPES

P = ParamSpec("P")

FORMATS = ("table", "line", "csv", "json", "markdown", "parquet")


def complete(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    """Shell completion offering ``choices`` (``--install-completion`` sets it up)."""

    def offer(incomplete: str) -> list[str]:
        return [c for c in choices if c.startswith(incomplete)]

    return offer


FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="table, line, csv, json, markdown or parquet. Default: table on a terminal, csv otherwise.",
        show_default=False,
        metavar="[" + "|".join(FORMATS) + "]",
        autocompletion=complete(FORMATS),
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Write the data to this file instead of stdout.",
        show_default=False,
        metavar="FILE",
    ),
]
SinceOption = Annotated[
    str,
    typer.Option(
        "--since",
        help="Window of runs (by expected start): 7d, 12h, 30m, 2w, a date 2026-01-01, or 'all'.",
        metavar="AGE|DATE|all",
        autocompletion=complete(("24h", "7d", "30d", "all")),
    ),
]
HtmlOption = Annotated[
    Path | None,
    typer.Option(
        "--html",
        help="Write the self-contained health page plus this table to FILE (with --format "
        "or --output, the data is written too).",
        show_default=False,
        metavar="FILE",
    ),
]
IncludeDeletedOption = Annotated[
    bool,
    typer.Option(
        "--include-deleted",
        help="History: also count runs deleted on the server (live runs only by default).",
    ),
]


def _filter_option(name: str, help_text: str, metavar: str, **extra: Any) -> Any:
    return Annotated[
        list[str] | None,
        typer.Option(name, help=help_text, show_default=False, metavar=metavar, **extra),
    ]


FlowFilter = _filter_option("--flow", "Only runs of this flow (repeat for several).", "NAME")
DeploymentFilter = _filter_option(
    "--deployment",
    "Only runs of this deployment: FLOW/DEPLOYMENT or a deployment name (repeat for several).",
    "FLOW/NAME",
)
TagFilter = _filter_option("--tag", "Only runs with this tag (repeat: any of them).", "TAG")
StateFilter = _filter_option(
    "--state",
    "Only runs in this state type: COMPLETED, FAILED, CRASHED, RUNNING ... (repeat for several).",
    "STATE",
    autocompletion=complete(STATE_TYPES),
)
FILTERS = {
    "flow": FlowFilter,
    "deployment": DeploymentFilter,
    "tag": TagFilter,
    "state": StateFilter,
}


IdsOption = Annotated[
    bool,
    typer.Option(
        "--ids", help="Show ids in the terminal table too (csv, json and parquet always have them)."
    ),
]


@dataclass(frozen=True)
class ReportOptions:
    """The shared options' values; a command without one of them gets its default here."""

    since: str = "all"
    include_deleted: bool = False
    fmt: str | None = None
    output: Path | None = None
    html: Path | None = None
    ids: bool = False
    db: Path | None = None
    wait: float = 0.0
    live: bool = False
    flow: list[str] | None = None
    deployment: list[str] | None = None
    tag: list[str] | None = None
    state: list[str] | None = None

    @property
    def filters(self) -> Filters:
        return Filters(
            tuple(self.flow or ()),
            tuple(self.deployment or ()),
            tuple(self.tag or ()),
            tuple(self.state or ()),
        )


def _option(name: str, annotation: Any, default: object) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
    )


def report_options(
    *,
    since: str | None,
    include_deleted: bool = True,
    fmt: Any = FormatOption,
    html: Any = HtmlOption,
    ids: bool = True,
    filters: tuple[str, ...] = ("flow", "deployment", "tag", "state"),
) -> Callable[[Callable[Concatenate[ReportOptions, P], None]], Callable[..., None]]:
    """Give a report command the shared options, after its own, in ``--help`` order.

    The command takes a ``ReportOptions`` as its first parameter and declares only
    its own options after it. ``since=None``: no --since (the window is all runs);
    ``include_deleted``/``ids`` False: no such flag. ``filters``: which of --flow,
    --deployment, --tag, --state the report takes. ``fmt``/``html``: another
    option for --format or --html, with its own help (``report health``).
    Typer reads the command's signature, so the wrapper carries the combined one.
    """
    shared = [
        *([_option("since", SinceOption, since)] if since is not None else []),
        *([_option("include_deleted", IncludeDeletedOption, False)] if include_deleted else []),
        _option("fmt", fmt, None),
        _option("output", OutputOption, None),
        _option("html", html, None),
        *([_option("ids", IdsOption, False)] if ids else []),
        *[_option(name, FILTERS[name], None) for name in filters],
        _option("db", DbOption, None),
        _option("wait", WaitOption, 0.0),
        _option("live", LiveOption, False),
    ]
    names = [p.name for p in shared]

    def decorate(command: Callable[Concatenate[ReportOptions, P], None]) -> Callable[..., None]:
        own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]
        call: Callable[..., None] = command  # typer passes the command's own options by name

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            opts = ReportOptions(**{name: kwargs.pop(name) for name in names})
            call(opts, **kwargs)

        wrapper.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
        return wrapper

    return decorate
