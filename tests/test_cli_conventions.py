"""CLI conventions users of other tools expect: help with examples, completion,
NO_COLOR, --json, --version. Walks every registered command, including ones
added later, so a new command that skips a convention fails here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer

from flowsync.cli import app
from flowsync.store import Store
from tests.helpers import run_cli

FLOWSYNC = Path(sys.executable).with_name("flowsync")
# Commands whose output is JSON already, so a --json flag would mean nothing.
ALWAYS_JSON = {"policy schema"}
# SGR sequences that set a colour (foreground/background, 16/256/true colour).
COLOR_SGR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, (*path, name))


ALL = list(walk(typer.main.get_command(app)))
LEAVES = [(p, c) for p, c in ALL if not getattr(c, "commands", None)]


def ids(items: list[tuple[tuple[str, ...], Any]]) -> list[str]:
    return [" ".join(p) or "flowsync" for p, _ in items]


def test_the_walk_finds_the_known_commands() -> None:
    names = set(ids(LEAVES))
    assert {"pull", "status", "export"} <= names


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=ids(LEAVES))
def test_every_command_help_has_an_example(path: tuple[str, ...], command: Any) -> None:
    result = run_cli(*path, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.stdout, (
        f"`flowsync {' '.join(path)} --help` has no 'Example: flowsync ...' line"
    )
    example = result.stdout.split("Example:", 1)[1].split()
    assert example[0] == "flowsync", example[:3]


@pytest.mark.parametrize(("path", "command"), ALL, ids=ids(ALL))
def test_every_group_help_lists_its_commands(path: tuple[str, ...], command: Any) -> None:
    # A group's own help need not carry an example: each command it lists does.
    result = run_cli(*path, "--help")
    assert result.exit_code == 0
    for name in getattr(command, "commands", {}):
        assert name in result.stdout


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=ids(LEAVES))
def test_every_reporting_command_can_print_json(path: tuple[str, ...], command: Any) -> None:
    name = " ".join(path)
    if name in ALWAYS_JSON:
        return
    options = {o: p for p in command.params for o in p.opts}
    formats = options.get("--format")
    assert "--json" in options or (formats is not None and "json" in (formats.help or "")), (
        f"flowsync {name} has neither --json nor --format json"
    )


def test_json_output_parses(tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    Store.writer(db).close()  # an empty, migrated file
    status = run_cli("status", "--db", str(db), "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["flow_runs"]["live"] == 0
    exported = run_cli("export", str(tmp_path / "out"), "--db", str(db), "--json")
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["rows_written"] == 0


def test_version_matches_the_installed_distribution() -> None:
    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"flowsync {version('flowsync')}"


def test_bash_completion_script_and_completions() -> None:
    # Typer detects the shell from the process tree (shellingham): run it from bash, as a user would,
    # so the test does not depend on what started pytest (bash stays its parent: a lone command
    # is exec'd in bash's place, and what then sits above it varies).
    script = subprocess.run(
        ["bash", "-c", f'"{FLOWSYNC}" --show-completion bash; exit $?'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert script.returncode == 0, script.stderr
    assert "complete -o default -F _flowsync_completion flowsync" in script.stdout
    help_text = run_cli("--help").stdout
    assert "--install-completion" in help_text and "--show-completion" in help_text

    def complete(words: str) -> list[str]:
        env = {
            **os.environ,
            "_FLOWSYNC_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        }
        proc = subprocess.run([str(FLOWSYNC)], env=env, capture_output=True, text=True, timeout=60)
        return proc.stdout.split()

    assert complete("flowsync ex") == ["export"]
    assert "--tables" in complete("flowsync export --ta")


def _stderr_on_a_terminal(extra_env: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    env.update(FORCE_COLOR="1", TERM="xterm-256color", **extra_env)  # rich: behave as on a terminal
    proc = subprocess.run(
        [str(FLOWSYNC), "status", "--db", "/nonexistent/flowsync.duckdb"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 5
    return proc.stderr


def test_no_color_removes_colour_even_on_a_forced_terminal() -> None:
    assert COLOR_SGR.search(_stderr_on_a_terminal({})), "control: a forced terminal shows colour"
    plain = _stderr_on_a_terminal({"NO_COLOR": "1"})
    assert not COLOR_SGR.search(plain), repr(plain)
    assert "error:" in plain


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["status"], 0),
        (["plan", "{policy}", "--exit-code"], 10),
        (["plan", "{policy_over}"], 8),
    ],
    ids=["status", "plan-exit-code", "plan-over-max"],
)
def test_a_reader_that_closes_the_pipe_keeps_the_exit_code(
    built: Any, tmp_path: Path, args: list[str], code: int
) -> None:
    """`flowsync plan | head -1` in CI with pipefail: the command's own code, not 1 from a
    broken pipe (its reader is closed here before it writes a byte)."""
    rule = "rules: [{name: purge, action: delete, sql: \"SELECT id FROM flow_runs WHERE state_type = 'COMPLETED'\"}]\n"
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nmax_actions: 1000000\n" + rule)
    over = tmp_path / "over.yaml"
    over.write_text("version: 1\nmax_actions: 1\n" + rule)
    argv = [a.format(policy=policy, policy_over=over) for a in args]
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [str(FLOWSYNC), *argv, "--db", str(built.path)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_a_command_started_with_stdout_closed_runs(built: Any) -> None:
    """`flowsync status >&-` (stdout closed: Python has no sys.stdout): it runs and exits 0,
    as it did before standard output was wrapped for closed pipes."""
    done = subprocess.run(
        [str(FLOWSYNC), "status", "--db", str(built.path)],
        preexec_fn=lambda: os.close(1),
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [["sql", "SELECT 1 AS one"], ["report", "failures"]])
def test_output_to_a_device_or_through_a_link_writes_it_and_keeps_it(
    built: Any, tmp_path: Path, command: list[str]
) -> None:
    """`--output /dev/null` wrote a file beside the device and renamed it over it: as root
    that replaced /dev/null with a regular file. A device (or pipe) is written to as it is;
    a link keeps pointing at the file it names, which gets the output."""
    import stat

    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("making a device needs root")
    target = tmp_path / "real.csv"
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    for out in (device, link):
        result = run_cli(*command, "--db", str(built.path), "--format", "csv", "--output", str(out))
        assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(device.lstat().st_mode) and device.stat().st_rdev == os.makedev(1, 3)
    assert link.is_symlink() and target.read_text().startswith(("one\n", "deployment_id,"))
    assert {p.name for p in tmp_path.iterdir()} >= {"link.csv", "null", "real.csv"}
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # a pipe named by /dev/fd (`--output >(gzip > x.gz)`, `--output /dev/stdout | ...`)
    read, write = os.pipe()
    try:
        piped = run_cli(
            *command, "--db", str(built.path), "--format", "csv", "--output", f"/dev/fd/{write}"
        )
        assert piped.exit_code == 0, piped.output
    finally:
        os.close(write)
    with os.fdopen(read, "rb") as pipe:
        assert pipe.read().decode().startswith(("one\n", "deployment_id,"))


@pytest.mark.parametrize("how", ["console script", "python -m"])
@pytest.mark.parametrize("where", ["import", "arguments"])
def test_ctrl_c_before_a_command_begins_is_one_line_not_a_traceback(
    tmp_path: Path, how: str, where: str
) -> None:
    """A Ctrl-C while Python imports the CLI (before any command's own handling is in place),
    or while typer reads the arguments: one line and exit 130, no traceback, no file made.
    The SIGINT is stood for by a KeyboardInterrupt raised at that moment (a
    ``sitecustomize`` on the path: at the import of ``rich``, or as typer parses)."""
    hook = {
        "import": (
            "import builtins\n_real = builtins.__import__\n"
            "def _imp(name, *a, **k):\n"
            "    if name == 'rich' or name.startswith('rich.'):\n"
            "        raise KeyboardInterrupt\n"
            "    return _real(name, *a, **k)\n"
            "builtins.__import__ = _imp\n"
        ),
        "arguments": (  # inside typer's own handling, which exits 130 without a word
            "import typer.core\n"
            "def _parse(*a, **k):\n    raise KeyboardInterrupt\n"
            "typer.core.TyperGroup.make_context = _parse\n"
        ),
    }[where]
    (tmp_path / "sitecustomize.py").write_text(hook)
    path = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    cmd = (
        [str(Path(sys.executable).with_name("flowsync"))]
        if how == "console script"
        else [sys.executable, "-m", "flowsync"]
    )
    db = tmp_path / "runs.duckdb"
    done = subprocess.run(
        [*cmd, "status", "--db", str(db)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.startswith("interrupted (SIGINT)") and done.stderr.count("\n") == 1
    assert not db.exists()


def test_a_second_run_of_the_cli_in_one_process_says_its_own_silent_interrupt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interrupt a first run said is not taken for the second run's: a process that runs
    the CLI again (a notebook's `!`, a test) hears of a Ctrl-C typer swallowed then too."""
    import flowsync.cli as cli
    from flowsync.cli import common

    monkeypatch.setattr(common, "interrupt_told", ["SIGINT"])  # the first run's

    def swallowed() -> None:
        raise SystemExit(130)  # typer's exit for a Ctrl-C while it parses

    monkeypatch.setattr(cli, "app", swallowed)
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # main() wraps it; put back after
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 130 and capsys.readouterr().err.strip() == "interrupted (SIGINT)."
