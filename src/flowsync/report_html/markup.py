"""The HTML pieces every part of the health page is built from: escaping, a section,
the note for an empty one, table cells.

Owns: how a value becomes safe text in the page (``esc``: every value the page
shows goes through it; ``isolated``: text from outside, such as a flow's name or a
run's error, in a bidi isolate of its own, so a right-to-left override in it
cannot reverse the rest of its cell) and the markup the charts, tables and page
share. Must
not: read figures, format values (``flowsync.present`` does), or know a section's
content.
"""

from __future__ import annotations

import html
from typing import Any

from flowsync.present import printable


def esc(value: Any) -> str:
    """``value`` as HTML text (None as nothing), quotes escaped for attributes too; a control
    character from outside (a terminal escape in a state message) shown escaped (``\\x1b``),
    as the terminal and markdown tables show it (``present.printable``; a bidi override
    stays: ``isolated`` keeps it in its cell)."""
    return html.escape(printable("" if value is None else str(value), bidi=False), quote=True)


def isolated(value: Any) -> str:
    """``value`` as HTML text in a ``<bdi>``: its direction its own, an override in it
    ending where it ends."""
    return f"<bdi>{esc(value)}</bdi>"


def section(title: str, body: str, note: str = "", section_id: str = "") -> str:
    """A titled section of the page; ``note`` is HTML (already escaped)."""
    sid = f' id="{section_id}"' if section_id else ""
    note_html = f'<p class="muted">{note}</p>' if note else ""
    return f"<section{sid}><h2>{esc(title)}</h2>{note_html}{body}</section>"


def empty(text: str) -> str:
    """What a section shows when it has nothing to show."""
    return f'<p class="empty">{esc(text)}</p>'


def th(text: str, num: bool = False) -> str:
    """A header cell; ``num`` aligns it with a column of numbers."""
    return f'<th class="num">{esc(text)}</th>' if num else f"<th>{esc(text)}</th>"


def td(text: str, kind: str = "") -> str:
    """A cell of ``text`` (isolated: it may come from outside), of class ``kind`` (num,
    name, text) when given."""
    return f'<td class="{kind}">{isolated(text)}</td>' if kind else f"<td>{isolated(text)}</td>"
