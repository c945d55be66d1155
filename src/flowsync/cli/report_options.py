"""The options every ``flowsync report`` command shares, declared once.

Owns: their names, help texts and defaults. Must not: open the store or render
(that is ``analysis_cmds``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="table, csv, json, markdown or parquet. Default: table on a terminal, csv otherwise.",
        show_default=False,
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Write the data to this file instead of stdout.", show_default=False
    ),
]
SinceOption = Annotated[
    str,
    typer.Option(
        "--since",
        help="Window of runs (by expected start): 7d, 12h, 30m, 2w, a date 2026-01-01, or 'all'.",
    ),
]
HtmlOption = Annotated[
    Path | None,
    typer.Option(
        "--html",
        help="Write the self-contained health page plus this table to FILE instead.",
        show_default=False,
    ),
]
IncludeDeletedOption = Annotated[
    bool,
    typer.Option(
        "--include-deleted",
        help="History: also count runs deleted on the server (live runs only by default).",
    ),
]
IdsOption = Annotated[
    bool,
    typer.Option(
        "--ids", help="Show ids in the terminal table too (csv, json and parquet always have them)."
    ),
]
