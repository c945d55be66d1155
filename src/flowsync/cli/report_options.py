"""The options of the ``flowsync report`` commands, made from the report registry.

Owns: the shared options' names, help texts and defaults, and ``report_command``,
which turns one ``flowsync.registry.Report`` into a Typer command: its own options
(``--by`` with the report's groupings, its ``Param``s), then the shared ones it
takes, with the report's help text, handing their values to one run function
as a ``ReportOptions`` and a dict of its own options.
Must not: open the store or render (that is ``analysis_cmds``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from flowsync.cli.common import DbOption, LiveOption, WaitOption, no_default_option
from flowsync.registry import Param, Report
from flowsync.states import STATE_TYPES

FORMATS = ("table", "line", "csv", "json", "markdown", "parquet")


def complete(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    """Shell completion offering ``choices`` (``--install-completion`` sets it up)."""

    def offer(incomplete: str) -> list[str]:
        return [c for c in choices if c.startswith(incomplete)]

    return offer


def format_option(formats: tuple[str, ...], help_text: str) -> Any:
    """A ``--format`` option offering ``formats``."""
    return Annotated[
        str | None,
        no_default_option(
            "--format",
            "-f",
            help=help_text,
            metavar="[" + "|".join(formats) + "]",
            autocompletion=complete(formats),
        ),
    ]


FormatOption = format_option(
    FORMATS,
    "table, line, csv, json, markdown or parquet. Default: what --output's extension names "
    "(.csv, .json, .parquet, .md), else table on a terminal, csv otherwise.",
)
HEALTH_FORMATS = (*FORMATS, "openmetrics")
HealthFormatOption = format_option(
    HEALTH_FORMATS,
    "table, line, csv, json, markdown, parquet or openmetrics (Prometheus textfile "
    "collector). Default: what --output's extension names (.csv, .json, .parquet, .md, "
    ".prom), else table on a terminal, csv otherwise.",
)


def _stdout_as_dash(value: Path | None) -> Path | None:
    """``-o -``: stdout, as ``sql -`` reads stdin (it wrote a file named ``-``)."""
    return None if value is not None and str(value) == "-" else value


OutputOption = Annotated[
    Path | None,
    no_default_option(
        "--output",
        "-o",
        help="Write the data to this file instead of stdout (- is stdout).",
        metavar="FILE",
        callback=_stdout_as_dash,
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
    no_default_option(
        "--html",
        help="Write the self-contained health page plus this table to FILE (with --format "
        "or --output, the data is written too).",
        metavar="FILE",
    ),
]
HealthHtmlOption = Annotated[
    Path | None,
    no_default_option(
        "--html",
        help="Write the health page (one self-contained HTML file) to FILE (with --format "
        "or --output, the figures are written too).",
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
        no_default_option(name, help=help_text, metavar=metavar, **extra),
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

    since: str | None = None
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


def _option(name: str, annotation: Any, default: object) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
    )


def _by_option(choices: tuple[str, ...]) -> Any:
    return Annotated[
        str,
        typer.Option(
            "--by",
            help=f"Group by: {', '.join(choices)}.",
            metavar="[" + "|".join(choices) + "]",
            autocompletion=complete(choices),
        ),
    ]


def _param_option(param: Param) -> Any:
    """A report's own option, within ``param.min`` .. ``param.top`` (a count without a
    declared maximum is bounded: a huge one is an argument error, not a failed query)."""
    return Annotated[
        param.type,
        typer.Option(
            param.flag, help=param.help, min=param.min, max=param.top, metavar=param.metavar
        ),
    ]


def _own(spec: Report) -> list[inspect.Parameter]:
    """The report's own options, in ``--help`` order: --by, its params; for a report
    without a window that says why, a hidden --since (the library refuses it)."""
    own = []
    if spec.groupings:
        own.append(_option("by", _by_option(spec.groupings), spec.default_by))
    own += [_option(p.name, _param_option(p), p.default) for p in spec.params]
    if spec.since is None and spec.no_since:
        hidden = Annotated[str | None, typer.Option("--since", hidden=True)]
        own.append(_option("no_since", hidden, None))
    return own


def _shared(spec: Report) -> list[inspect.Parameter]:
    health = spec.query is None
    return [
        *([_option("since", SinceOption, spec.since)] if spec.since is not None else []),
        *(
            [_option("include_deleted", IncludeDeletedOption, False)]
            if spec.include_deleted
            else []
        ),
        _option("fmt", HealthFormatOption if health else FormatOption, None),
        _option("output", OutputOption, None),
        _option("html", HealthHtmlOption if health else HtmlOption, None),
        *([_option("ids", IdsOption, False)] if spec.ids else []),
        *[_option(name, FILTERS[name], None) for name in spec.filters],
        _option("db", DbOption, None),
        _option("wait", WaitOption, 0.0),
        _option("live", LiveOption, False),
    ]


def report_command(
    spec: Report, run: Callable[[Report, ReportOptions, dict[str, Any]], None]
) -> Callable[..., None]:
    """``spec`` as a Typer command that calls ``run(spec, options, own options)``.

    Typer reads the command's signature and docstring, so the function carries the
    combined signature and the report's help text."""
    own, shared = _own(spec), _shared(spec)
    names = [p.name for p in shared]

    def command(**kwargs: Any) -> None:
        opts = ReportOptions(**{name: kwargs.pop(name) for name in names if name in kwargs})
        if spec.since is None:  # a hidden --since reaches the library, which says why not
            opts = dataclasses.replace(opts, since=kwargs.pop("no_since", None))
        run(spec, opts, kwargs)

    command.__name__ = f"{spec.name}_cmd"
    command.__doc__ = spec.help
    command.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    return command
