"""``python -m harness prepare``: build the Prefect servers the tests start, ahead of them
(``harness.server.prepare``; which versions: ``FLOWSYNC_TEST_SERVER_VERSIONS``)."""

from __future__ import annotations

import sys
import time

from harness.server import prepare

if __name__ == "__main__":
    if sys.argv[1:] != ["prepare"]:
        sys.exit("usage: python -m harness prepare")

    def ready(version: str, seconds: float) -> None:
        if seconds >= 1:  # built now (a fresh machine: tens of seconds in all), not reused
            print(f"test server {version}: built in {seconds:.0f} s", flush=True)

    started = time.monotonic()
    done = prepare(on_ready=ready)
    print(f"test servers ready: {', '.join(done)} ({time.monotonic() - started:.0f} s)")
