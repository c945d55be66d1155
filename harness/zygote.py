"""Prefect servers forked from a process that has already imported Prefect.

``prefect server start`` spends about 4 of its 6 CPU-seconds importing Prefect's CLI and
server. A test run starts a server for nearly every server test, on a machine the servers'
CPU already bounds: ``Zygote`` imports them once, in a process of its own, and forks a
child per server, which sets its own environment (``PREFECT_HOME``, the database, the
services), refreshes Prefect's settings from it and runs ``prefect server start`` as the
command would. The child is the server: in its own session, writing its own log, stopped
with a signal to its process group, as a launched one is.

Used when ``FLOWSYNC_TEST_FORK_SERVERS=1``: the test suite sets it (tests/conftest.py;
``FLOWSYNC_TEST_FORK_SERVERS=0`` there turns it off); the demo and the benchmarks start
one server, or measure servers, and launch them as the command does. Only the
interpreter's own Prefect (the dev group's) with one API worker comes from here;
``harness.server`` launches other versions and several workers as processes of their own.
Imports nothing but the standard library at module level: ``serve`` runs in the zygote's
own interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ENABLED_ENV = "FLOWSYNC_TEST_FORK_SERVERS"


def enabled() -> bool:
    return os.environ.get(ENABLED_ENV) == "1"


class Child:
    """A server forked by the zygote: what ``harness.server`` asks of a ``Popen``. Its exit
    status is the zygote's to reap, so an exited child reports ``returncode`` -1."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not _alive(self.pid):
            self.returncode = -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"server {self.pid}", timeout or 0)
            time.sleep(0.05)
        return self.returncode  # type: ignore[return-value]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


class Zygote:
    """The zygote of this process: started on first use, stopped with this process."""

    _lock = threading.Lock()
    _instance: Zygote | None = None

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="flowsync-zygote-"))
        self.socket = self.dir / "zygote.sock"
        root = Path(__file__).resolve().parent.parent
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")])),
            PREFECT_HOME=str(self.dir / "home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_LEVEL="WARNING",
        )
        with (self.dir / "zygote.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "harness.zygote", str(self.socket), str(os.getpid())],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the server zygote did not start:\n{(self.dir / 'zygote.log').read_text()}"
                )
            time.sleep(0.05)

    @classmethod
    def get(cls) -> Zygote:
        with cls._lock:
            if cls._instance is None or cls._instance.process.poll() is not None:
                cls._instance = cls()
            return cls._instance

    def spawn(self, argv: list[str], env: dict[str, str], log: Path) -> Child:
        """Fork a child running ``prefect <argv>`` with exactly ``env``, its output to ``log``."""
        request = json.dumps({"argv": argv, "env": env, "log": str(log)}).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(self.socket))
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            answer = _read_all(s)
        return Child(int(json.loads(answer)["pid"]))


def _read_all(s: socket.socket) -> bytes:
    return b"".join(iter(lambda: s.recv(65536), b""))


# -- the zygote's own side (its interpreter) ------------------------------------------------


def serve(path: str, parent: int) -> None:
    # what each server would import, imported once: the CLI and the server, ``prefect.main``
    # (imported lazily at the first ``prefect.<name>``, with its logging set-up: 0.2 CPU-s a
    # child), and the installed collections (prefect-redis) the app loads
    import prefect.cli
    import prefect.cli.server
    import prefect.main
    import prefect.plugins
    import prefect.server.api.server

    prefect.plugins.load_prefect_collections()

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the servers
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial = path + ".partial"
    listener.bind(partial)
    listener.listen(16)
    listener.settimeout(1.0)
    os.replace(partial, path)
    try:
        while os.getppid() == parent:  # until the process that started it exits
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                request = json.loads(_read_all(conn))
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    _child(request)
                conn.sendall(json.dumps({"pid": pid}).encode())
    finally:
        listener.close()
        shutil.rmtree(Path(path).parent, ignore_errors=True)


def _child(request: dict) -> None:  # type: ignore[type-arg]
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.environ.clear()
        os.environ.update(request["env"])
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
        sys.argv = ["prefect", *request["argv"]]
        from prefect.cli import app

        try:
            app()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
