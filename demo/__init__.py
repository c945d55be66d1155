"""The demo the README's first command runs: ``scripts/demo`` or ``python -m demo``."""
