"""``flowsync plan``, ``flowsync apply`` and ``flowsync policy schema|check``.

Owns: rendering plans and apply summaries, and asking for confirmation. The
selection lives in ``flowsync.policy.plan``, the API calls in
``flowsync.policy.apply``; no SQL or HTTP here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from flowsync import present
from flowsync.cli.common import (
    ApiKeyOption,
    ApiUrlOption,
    DbOption,
    JsonOption,
    LiveOption,
    MaxRequestsOption,
    MemoryLimitOption,
    WaitOption,
    ask,
    err,
    errors,
    interrupt_told,
    make_progress,
    no_default_option,
    out,
    print_json,
    to_jsonable,
)
from flowsync.config import (
    RULE_TIMEOUT_MAX_SECONDS,
    RULE_TIMEOUT_MIN_SECONDS,
    SETTLE_MIN_SECONDS,
    resolve_api,
    resolve_db_path,
)
from flowsync.errors import (
    INTERRUPTED_EXIT,
    PARTIAL_FAILURE_EXIT,
    ConfigError,
    PolicyError,
    PolicyLimitError,
    SignalInterrupt,
)
from flowsync.registry import COUNT_MAX

if (
    TYPE_CHECKING
):  # the library (pydantic, DuckDB, httpx) loads inside the commands: --help stays fast
    from flowsync.policy import ApplyResult, Plan

# The plan's sample of runs: each column, and whether a long value folds in it.
SAMPLE_COLUMNS = (
    ("run", True),
    ("flow/deployment", True),
    ("state", False),
    ("age", False),
    ("tags", True),
)

PolicyArg = Annotated[Path, typer.Argument(help="Policy file (YAML).", show_default=False)]
SampleOption = Annotated[
    int, typer.Option("--sample", help="Runs listed per rule.", min=0, max=COUNT_MAX)
]
RuleTimeoutOption = Annotated[
    float | None,
    no_default_option(
        "--rule-timeout",
        help="Stop each rule's SQL after this many seconds, up to 3600 (default: the policy's rule_timeout_seconds, 60).",
        min=RULE_TIMEOUT_MIN_SECONDS,
        max=RULE_TIMEOUT_MAX_SECONDS,
    ),
]
# `plan --exit-code`: the plan would change something on the server.
PLAN_HAS_CHANGES_EXIT = 10

policy_app = typer.Typer(
    help="Work with policy files: print their JSON Schema, validate them.\n\nExample: flowsync policy check policies/retention.yaml --db runs.duckdb",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _data_age(plan: Plan) -> str:
    now = plan.generated_at
    parts = []
    if plan.refreshed is not None:
        parts.append(f"{plan.refreshed} selected runs re-read from the server just now")
    parts.append(
        f"last pull {plan.last_pull_at:%Y-%m-%d %H:%M} UTC ({present.age(plan.last_pull_at, now)} ago)"
        if plan.last_pull_at
        else "no successful pull"
    )
    if plan.oldest_read_at is not None:
        parts.append(f"oldest read of a planned run {present.age(plan.oldest_read_at, now)} ago")
    if plan.refreshed is None:
        parts.append("`plan --refresh` re-reads the selected runs first")
    return "; ".join(parts)


# Stands for a rule's list of run ids in the JSON: written from the plan's store, a page at a time.
_IDS = "\x00flowsync-plan-ids:{}\x00"


def _print_plan_json(plan: Plan | None, sample: int, key: str | None = None, **more: Any) -> None:
    """``print_json`` of the plan's JSON (under ``key``, beside ``more``), with every rule's
    ``ids`` streamed from the plan's store instead of held in one list: the same text."""
    if plan is None:
        print_json({key: None, **more} if key else None)
        return
    doc = plan.to_json(sample=sample, ids=False)
    for number, rule in enumerate(doc["rules"]):
        # the placeholder takes the place json.dumps gives "ids" (after "by_state")
        items = list(rule.items())
        at = [k for k, _ in items].index("by_state") + 1
        ids: list[str] = [_IDS.format(number)] if plan.rules[number].planned else []
        doc["rules"][number] = dict([*items[:at], ("ids", ids), *items[at:]])
    text = json.dumps(to_jsonable({key: doc, **more} if key else doc), indent=2) + "\n"
    for line in text.splitlines(keepends=True):
        marker = line.strip().strip('"')
        if not marker.startswith("\\u0000flowsync-plan-ids:"):
            sys.stdout.write(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        number = int(marker.split(":")[1].split("\\")[0])
        first = True
        for page in plan.rules[number].ids():
            chunk = (",\n" + indent).join(json.dumps(i) for i in page)
            sys.stdout.write(("" if first else ",\n") + indent + chunk)
            first = False
        sys.stdout.write("\n")
    sys.stdout.flush()


def _render_plan(plan: Plan, sample: int) -> None:
    """The plan on stdout: per rule a count, the reasons runs were skipped, a sample."""
    now = plan.generated_at
    out.print(
        f"[bold]plan[/] for {escape(plan.policy.source)} (sha256 {plan.policy.sha256[:12]})",
        highlight=False,
    )
    for rp in plan.rules:
        rule = rp.rule
        what: str = rule.action
        if rule.action == "set_state":
            what += f" -> {rule.state.type}" + (" (force)" if rule.force else "")
        if not rule.enabled:
            out.print(f"\n[bold]{escape(rule.name)}[/] ({what}): disabled", highlight=False)
            continue
        states = escape(", ".join(f"{n} {s}" for s, n in sorted(rp.by_state.items())))
        out.print(
            f"\n[bold]{escape(rule.name)}[/] ({what}): {rp.planned} runs"
            + (f" ({states})" if states else ""),
            highlight=False,
        )
        if rp.skipped:
            out.print(
                "  skipped: " + ", ".join(f"{n} {why}" for why, n in rp.skipped.items()),
                highlight=False,
                markup=False,
            )
        if rule.name in plan.reads_other_runs:
            out.print(
                f"  its SQL reads other runs ({escape(plan.reads_other_runs[rule.name])}): apply re-reads "
                "the batch and every run with a state change since the last pull (new runs too) "
                "before each call; "
                "edits and deletions of other runs count as of the last pull (docs/policies.md).",
                highlight=False,
            )
        if rule.name in plan.reads_lookups:
            out.print(
                f"  its SQL reads {' and '.join(sorted(plan.reads_lookups[rule.name]))}: apply "
                "re-reads those of each batch's runs with them (their edits emit no event); "
                "others it joins count as of the last pull.",
                highlight=False,
            )
        if rp.planned and sample:
            rows = [
                (
                    run.name or run.id,
                    f"{run.flow_name or '-'}/{run.deployment_name or '-'}",
                    run.state_name or run.state_type,
                    present.age(run.expected_start_time, now),
                    ",".join(run.tags),
                )
                for run in rp.sample(sample)
            ]
            if out.is_terminal:
                # Nothing cut: a long name folds inside its column (it is what a reviewer reads).
                table = Table(box=None, padding=(0, 2, 0, 2))
                for column, folds in SAMPLE_COLUMNS:
                    table.add_column(column, no_wrap=not folds, overflow="fold")
                for row in rows:
                    table.add_row(*(Text(present.one_line(cell)) for cell in row))
                out.print(table)
            else:  # logs (cron, CI): a line a run, every name whole
                for row in rows:
                    out.print(Text(present.one_line("  " + "  ".join(row))), soft_wrap=True)
            if rp.planned > sample:
                out.print(f"  ... and {rp.planned - sample} more", highlight=False)
    max_actions = plan.policy.policy.max_actions
    out.print(f"\n[bold]total: {plan.total} runs[/] (max_actions {max_actions})", highlight=False)
    if plan.over_max:
        out.print(
            f"[bold red]apply would refuse:[/] {plan.total} runs is more than max_actions ({max_actions}).",
            highlight=False,
        )
    out.print(f"data: {_data_age(plan)}", highlight=False)
    if plan.apply_path != "bulk":
        out.print(f"[yellow]apply path:[/] {escape(plan.apply_path)}", highlight=False)
    for name in plan.forced_per_run:
        out.print(
            f"[bold red]apply would refuse:[/] rule {escape(repr(name))} forces a state, which a "
            "server without the bulk endpoints cannot guard by the state each run had when "
            "re-read; upgrade the server, or drop `force` from the rule.",
            highlight=False,
        )
    out.print(
        "apply re-reads each batch's runs from the server right before its call and checks this "
        "policy again: runs that no longer qualify are skipped (with the reason), runs gone are not sent.",
        highlight=False,
    )


def plan_cmd(
    policy: PolicyArg,
    db: DbOption = None,
    wait: WaitOption = 0.0,
    live: LiveOption = False,
    sample: SampleOption = 5,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="First re-read every run the rules select from the server (updates the file's copy only).",
        ),
    ] = False,
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
    max_requests_per_minute: MaxRequestsOption = None,
    rule_timeout: RuleTimeoutOption = None,
    exit_code: Annotated[
        bool,
        typer.Option(
            "--exit-code",
            help=f"Exit {PLAN_HAS_CHANGES_EXIT} when apply would change something (0: nothing to do), for CI.",
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Show what a policy would do: per rule, how many runs and which. Changes nothing on the server.

    Reads the latest snapshot of the local DuckDB file (no API call), which is
    what `apply` decides on unless a pull is running (--live reads the live
    file), and shows how old its data is (last pull, oldest read of a planned
    run). With --refresh it first re-reads the runs the rules select from the
    server into the live file, so the plan is what apply would do now. Exits 8
    when apply would refuse the plan (more runs than max_actions), 7 when it would
    refuse a rule (one that forces a state on a server before 3.6.16, as last
    pulled); with --exit-code, 10 when apply would change something.

    Example: flowsync plan policies/retention.yaml --db runs.duckdb --refresh
    """
    from flowsync import operations
    from flowsync.store.snapshot import current

    progress = make_progress(json_out)  # the runs a refresh reads
    with errors():
        settings = (
            resolve_api(api_url, api_key, max_requests_per_minute=max_requests_per_minute)
            if refresh
            else None
        )
        with progress:
            plan = operations.plan(
                resolve_db_path(db),
                policy,
                refresh=settings,
                live=live,
                wait=wait,
                timeout=rule_timeout,
                progress=progress,
                on_retry=progress.message,
            )
        source = None if live or refresh else current(resolve_db_path(db))
    if json_out:
        _print_plan_json(plan, sample)
    else:
        _render_plan(plan, sample)
        if source is not None:
            err.print(
                f"planned on {source.describe()}; apply re-plans on the live file and shows "
                "that plan first.",
                highlight=False,
            )
    if plan.over_max:
        raise typer.Exit(PolicyLimitError.exit_code)
    if plan.forced_per_run:
        raise typer.Exit(PolicyError.exit_code)
    if exit_code and plan.total:
        raise typer.Exit(PLAN_HAS_CHANGES_EXIT)


def _render_result(result: ApplyResult) -> None:
    for rule, counts in result.counts.items():
        parts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        err.print(f"  {escape(rule)}: {parts}", highlight=False)
    if result.resolved_earlier:
        err.print(
            f"  {result.resolved_earlier} runs an earlier apply sent without a recorded answer: "
            "read back and settled",
            highlight=False,
        )
    for message in result.errors:
        err.print(f"  [red]![/] {escape(message)}", highlight=False)
    colour = {"success": "green", "partial": "yellow", "error": "red"}[result.status]
    err.print(
        f"[bold {colour}]{result.status}[/]: {result.done} done, {result.failed} failed in "
        f"{result.batches} batches, {result.seconds:.1f}s ({result.calls} calls, {result.rereads} re-reads; "
        f"apply id {result.apply_id}; "
        "details in the policy_actions table)",
        highlight=False,
    )


def _stopped_by(e: BaseException) -> str:
    """What stopped an apply, as its summary's last error says it."""
    if isinstance(e, KeyboardInterrupt):
        by = e.signal_name if isinstance(e, SignalInterrupt) else "SIGINT (Ctrl-C)"
        return f"stopped by {by}; runs still pending are read back by the next apply"
    if isinstance(e, typer.Exit):
        return "cancelled"
    return str(e) or type(e).__name__


def _summary(result: ApplyResult, sample: int, json_out: bool, plan: Plan | None) -> None:
    if json_out:
        _print_plan_json(plan, sample, "plan", result=result.to_json())
    else:
        _render_result(result)


def apply_cmd(
    policy: PolicyArg,
    db: DbOption = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Apply without asking (needed when stdin is not a terminal)."
        ),
    ] = False,
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
    wait: WaitOption = 0.0,
    sample: SampleOption = 5,
    memory_limit: MemoryLimitOption = None,
    rule_timeout: RuleTimeoutOption = None,
    settle_seconds: Annotated[
        float,
        typer.Option(
            "--settle-seconds",
            help="After a call's answer is lost, how long its runs are read back before they "
            "count as untouched and are re-checked (the server may still be running it).",
            min=SETTLE_MIN_SECONDS,
        ),
    ] = 30.0,
    max_requests_per_minute: MaxRequestsOption = None,
    json_out: JsonOption = False,
) -> None:
    """Apply a policy: show the plan, confirm, then bulk delete / set state in batches of 50.

    Right before each call its runs are re-read from the server and the whole
    policy is checked again over that fresh read: runs that no longer qualify
    (edited, re-tagged, moved on) are skipped with the reason, runs gone are
    never sent. Each call names its runs and guards their current state. A
    call whose answer is lost is resolved from the server's state, not resent
    blindly. Every outcome goes to the policy_actions table. Exits 9 when some
    runs failed (run it again: the plan is recomputed).

    Example: flowsync apply policies/retention.yaml --db runs.duckdb --yes
    """
    from flowsync import operations
    from flowsync.policy import ApplyResult

    progress = make_progress(json_out)
    held = ApplyResult.new()  # filled as the apply goes: shown whatever stops it

    def confirm(plan: Plan) -> bool:
        with progress.paused():
            return shown_and_agreed(plan)

    def shown_and_agreed(plan: Plan) -> bool:
        if not json_out:
            _render_plan(plan, sample)
        if not yes:
            if not sys.stdin.isatty():
                raise ConfigError(
                    f"Refusing to apply {plan.total} changes without confirmation: stdin is not a "
                    "terminal. Review `flowsync plan`, then pass --yes."
                )
            try:
                agreed = ask(f"Apply {plan.total} changes to {settings.display_url}?")
            except KeyboardInterrupt as e:  # Ctrl-C at the question
                if isinstance(e, SignalInterrupt):
                    raise  # SIGTERM: said, with its own exit code, as anywhere else
                err.print("\ncancelled; nothing was changed.", highlight=False)
                interrupt_told.append("SIGINT")  # said: the CLI adds no line of its own
                raise typer.Exit(INTERRUPTED_EXIT) from None
            if not agreed:
                err.print("cancelled; nothing was changed.", highlight=False)
                raise typer.Exit(1)
        return True

    with errors():
        settings = resolve_api(api_url, api_key, max_requests_per_minute=max_requests_per_minute)
        path = resolve_db_path(db)
        try:
            with progress:
                applied = operations.apply(
                    path,
                    policy,
                    api=settings,
                    confirm=confirm,
                    progress=progress,
                    wait=wait,
                    memory_limit_mb=memory_limit,
                    timeout=rule_timeout,
                    result=held,
                    on_retry=progress.message,
                    settle_seconds=settle_seconds,
                )
        except BaseException as e:
            if held.calls:  # what was done is shown whatever stopped the apply
                held.errors.append(f"the apply stopped early: {_stopped_by(e)}")
                _summary(held, sample, json_out, None)
            raise
    if applied.result is None:
        if json_out:
            _print_plan_json(applied.plan, sample, "plan", result=None)
        else:
            if applied.plan.total == 0:
                _render_plan(applied.plan, sample)
            err.print("nothing to do.", highlight=False)
        return
    _summary(applied.result, sample, json_out, applied.plan)
    if applied.publish_error is not None:
        with errors():
            raise applied.publish_error
    if applied.result.status != "success":
        raise typer.Exit(PARTIAL_FAILURE_EXIT)


@policy_app.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of policy files, for editor validation.

    Example: flowsync policy schema > policy.schema.json
    """
    from flowsync.policy import policy_schema

    print_json(policy_schema())


@policy_app.command("check")
def check_cmd(
    policy: PolicyArg,
    db: Annotated[
        Path | None,
        no_default_option(
            "--db",
            help="Also run each rule's SQL (read-only) against this DuckDB file.",
        ),
    ] = None,
    wait: WaitOption = 0.0,
    json_out: JsonOption = False,
) -> None:
    """Validate a policy file and its SQL (on an empty file); with --db, run each rule's SQL read-only on the data.

    Example: flowsync policy check policies/retention.yaml --db runs.duckdb
    """
    from flowsync import operations

    with errors():
        loaded, rows = operations.check_policy(policy, db, wait=wait)
    summary = {
        "policy": str(policy),
        "sha256": loaded.sha256,
        "valid": True,
        "rules": [r.name for r in loaded.policy.rules],
        "rows_by_rule": rows,
    }
    if json_out:
        print_json(summary)
        return
    extra = "; SQL ok on an empty file (--db runs it on data)"
    if rows is not None:
        extra = "; SQL ok: " + ", ".join(f"{name} {n} rows" for name, n in rows.items())
    out.print(
        f"ok: {escape(str(policy))} is a valid policy ({len(loaded.policy.rules)} rules){extra}",
        highlight=False,
    )
