"""Terminal tables: the reports' (names first, readable values) and any ``flowsync sql`` result.

Owns: laying out a report's columns (declared with their kinds and priorities in
``flowsync.registry``) in a terminal and dropping the least important first when
the terminal is narrow. Names are never cut: columns are dropped instead,
lowest priority first, until the table fits (``COLUMNS`` or the terminal's
width). Ids appear only with ``--ids``; machine formats keep everything.
Values read through ``flowsync.present``. A ``flowsync sql`` result is shown
like the duckdb CLI shows it (``result_table``): numbers right-aligned, one line
per row, long cells cut with ``…`` and columns past the edge hidden, and the
caller told what was cut. The reports' markdown is the same readable table
without a width (``readable_markdown``). Every header and cell is plain text (``Text``),
never Rich markup: a value such as ``[/data]`` in a run's name or error shows as it is;
and its control characters and bidi overrides show escaped (``present.printable``, which
``formats.text_rows`` applies to line and markdown output too), so a flow's error cannot
drive the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from flowsync import present, registry
from flowsync.cli import formats

if TYPE_CHECKING:
    import polars as pl

WRAPPING = {"error_text", "latest_error_text"}  # long texts wrap; names never do
MIN_WRAP = 28


def _text(value: str) -> Text:
    """A header, title or cell for a terminal: plain text, never markup, controls escaped."""
    return Text(present.printable(value))


def _name_header(columns: list[str]) -> str:
    if "deployment_name" in columns:
        return "flow/deployment"
    for c in ("flow_name", "work_pool_name", "tag"):
        if c in columns:
            return present.label(c)
    return ""


def _readable_columns(columns: list[str], report: str, ids: bool) -> list[tuple[str, str, int]]:
    """(key, header, priority) of what a person sees of a report, names first."""
    shown: list[tuple[str, str, int]] = []
    name_header = _name_header(columns) if report != "errors" else ""
    if name_header:
        shown.append(("__name__", name_header, 11))
    if ids:
        shown += [(c, present.label(c), 10) for c in columns if present.is_id(c)]
    declared = registry.REPORTS[report].columns if report in registry.REPORTS else ()
    shown += [(c.name, present.label(c.name), c.priority) for c in declared if c.name in columns]
    if report == "errors" and "deployment_name" in columns:
        shown.append(("__name__", "example in", 5))
    return shown


def _readable_cells(
    frame: pl.DataFrame, report: str, shown: list[tuple[str, str, int]]
) -> dict[str, list[str]]:
    rows = frame.to_dicts()
    spec = registry.REPORTS.get(report)

    def cell(key: str, row: dict[str, Any]) -> str:
        if key == "__name__":
            return present.printable(present.group_name(row))
        return present.printable(present.show(spec.kind_of(key) if spec else "text", row.get(key)))

    return {key: [cell(key, r) for r in rows] for key, _, _ in shown}


def _is_numeric(frame: pl.DataFrame, key: str) -> bool:
    dtype = frame.schema.get(key)
    return key not in WRAPPING and dtype is not None and dtype.is_numeric()


def readable_markdown(frame: pl.DataFrame, report: str, *, ids: bool) -> str:
    """A report as a person pastes it into a ticket: the terminal's columns and values."""
    shown = _readable_columns(list(frame.columns), report, ids)
    cells = _readable_cells(frame, report, shown)
    rows = [[cells[key][i] for key, _, _ in shown] for i in range(frame.height)]
    right = [_is_numeric(frame, key) for key, _, _ in shown]
    return formats.markdown_table([h for _, h, _ in shown], rows, right)


def readable_table(
    frame: pl.DataFrame, report: str, *, ids: bool, width: int, title: str | None
) -> Fitted:
    """A report in ``width`` columns: long names fold onto more lines (never cut) past a
    third of the width, so that one long name does not push the figures out; then the
    least important columns are dropped until the table fits, and ``Fitted`` names them."""
    shown = _readable_columns(list(frame.columns), report, ids)
    cells = _readable_cells(frame, report, shown)
    fold_at = max(MIN_WRAP, width // 3)

    def needed(key: str, header: str) -> int:
        longest = max((len(v) for v in cells[key]), default=0)
        if key in WRAPPING:
            longest = min(longest, MIN_WRAP)
        elif key == "__name__":
            longest = min(longest, fold_at)
        return max(len(header), longest) + 3

    hidden: list[str] = []
    while sum(needed(k, h) for k, h, _ in shown) + 1 > width:
        droppable = [(p, i) for i, (_, _, p) in enumerate(shown) if p < 10]
        if not droppable:
            break
        hidden.append(shown.pop(min(droppable)[1])[1])
    table = Table(title=_text(title) if title else None, title_justify="left")
    for key, header, _ in shown:
        folds = key in WRAPPING or key == "__name__"
        table.add_column(
            _text(header),
            justify="right" if _is_numeric(frame, key) else "left",
            no_wrap=not folds,
            overflow="fold",
            min_width=MIN_WRAP if key in WRAPPING else None,
            max_width=fold_at if key == "__name__" else None,
        )
    for i in range(frame.height):
        table.add_row(*(_text(cells[key][i]) for key, _, _ in shown))
    return Fitted(table, hidden, 0)


# -- any result (flowsync sql) ------------------------------------------------------

MIN_COLUMN = 8  # a column narrower than this is hidden rather than squeezed
ELLIPSIS = "…"


@dataclass(frozen=True)
class Fitted:
    """A result fitted to the terminal: the table, and what was left out to fit."""

    table: Table
    hidden_columns: list[str]
    cut_cells: int


def _fit(natural: list[int], width: int) -> tuple[int, list[int]]:
    """How many leading columns fit ``width`` and how wide each may be: every column its
    natural width if all fit, else the widest ones cut to a common cap (water-filling)."""
    shown = len(natural)
    while shown > 1 and sum(min(n, MIN_COLUMN) + 3 for n in natural[:shown]) + 1 > width:
        shown -= 1
    wanted = natural[:shown]
    budget = width - 1 - 3 * shown
    if sum(wanted) <= budget:
        return shown, wanted
    low, high = 1, max(wanted)
    while low < high:  # the largest cap at which the columns still fit
        mid = (low + high + 1) // 2
        if sum(min(n, mid) for n in wanted) <= budget:
            low = mid
        else:
            high = mid - 1
    return shown, [min(n, max(low, 1)) for n in wanted]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + ELLIPSIS


def result_table(
    headers: list[str],
    rows: list[list[str]],
    right: list[bool],
    *,
    width: int,
    title: str | None = None,
) -> Fitted:
    """Any result in a terminal, like the duckdb CLI: numbers right-aligned, one line per
    row; when it is wider than ``width``, long cells are cut with ``…`` and columns past
    the edge hidden, and ``Fitted`` says what was cut so the caller can say so."""
    headers = [present.printable(h) for h in headers]  # as shown, and as the note names them
    rows = [[present.printable(v) for v in row] for row in rows]
    natural = [max(len(h), *(len(r[i]) for r in rows), 1) for i, h in enumerate(headers)]
    shown, widths = _fit(natural, max(width, 20))
    table = Table(title=_text(title) if title else None, title_justify="left")
    for header, w, r in zip(headers[:shown], widths, right):
        table.add_column(
            _text(_cut(header, w)), justify="right" if r else "left", no_wrap=True, width=w
        )
    cut = 0
    for row in rows:
        cells = []
        for text, w in zip(row[:shown], widths):
            one_line = text.replace("\n", "⏎")
            cells.append(_text(_cut(one_line, w)))
            cut += len(one_line) > w
        table.add_row(*cells)
    return Fitted(table, headers[shown:], cut)


def headline_table(row: dict[str, Any], title: str | None) -> Table:
    """The health headline as figure / this window / previous window / change."""
    table = Table(title=_text(title) if title else None, title_justify="left")
    for header, justify in (
        ("figure", "left"),
        ("this window", "right"),
        ("previous", "right"),
        ("change", "right"),
    ):
        table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for f in registry.HEADLINE:
        previous = present.show(f.kind, row.get(f.previous)) if f.previous else present.NONE
        delta = (
            present.show(present.CHANGE_OF[f.kind], row.get(f.change)) if f.change else present.NONE
        )
        table.add_row(f.label, present.show(f.kind, row.get(f.column)), previous, delta)
    return table
