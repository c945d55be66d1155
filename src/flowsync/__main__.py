"""``python -m flowsync`` and the ``flowsync`` command's entry point.

Owns: the moment before the CLI is imported. A Ctrl-C while Python imports the CLI (typer,
rich: a few tenths of a second, before any command's own handling is in place) ends in
one line and exit 130, not a traceback.
Must not: import anything heavy at module level.
"""

from __future__ import annotations

import sys

from flowsync.errors import INTERRUPTED_EXIT  # stdlib only: light


def main() -> None:
    try:
        from flowsync.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write(
            "interrupted (SIGINT) before the command began; nothing was read or changed.\n"
        )
        raise SystemExit(INTERRUPTED_EXIT) from None
    run()  # (it says a Ctrl-C met outside a command's own handling)


if __name__ == "__main__":
    main()
