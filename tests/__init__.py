"""flowsync's tests (fixtures and tiers: ``tests/conftest.py``)."""

import os

# pytest-xdist's worker processes start with COLUMNS and LINES set (80x24), and a rich
# Console given both when it is created (the CLI's, at import) keeps that size for good;
# without them it reads COLUMNS at each print, which ``isolated_env`` sets per test.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)
