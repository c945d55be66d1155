"""``flowsync plan``, ``flowsync apply`` and ``flowsync policy schema|check``.

Owns: rendering plans and apply summaries, and asking for confirmation. The
selection lives in ``flowsync.policy.plan``, the API calls in
``flowsync.policy.apply``; no SQL or HTTP here.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flowsync.cli.common import (
    ApiKeyOption,
    ApiUrlOption,
    DbOption,
    JsonOption,
    LiveOption,
    MaxRequestsOption,
    MemoryLimitOption,
    WaitOption,
    err,
    errors,
    make_progress,
    out,
    print_json,
)
from flowsync.config import resolve_api, resolve_db_path
from flowsync.errors import PARTIAL_FAILURE_EXIT, ConfigError

if (
    TYPE_CHECKING
):  # the library (pydantic, DuckDB, httpx) loads inside the commands: --help stays fast
    from flowsync.config import ApiSettings
    from flowsync.policy import ApplyResult, Plan

PolicyArg = Annotated[Path, typer.Argument(help="Policy file (YAML).", show_default=False)]
SampleOption = Annotated[int, typer.Option("--sample", help="Runs listed per rule.", min=0)]

policy_app = typer.Typer(
    help="Work with policy files: print their JSON Schema, validate them.\n\nExample: flowsync policy check policies/retention.yaml --db runs.duckdb",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _age(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    days = (now - when).total_seconds() / 86400
    if abs(days) >= 1:
        return f"{days:.0f}d"
    if abs(days * 24) >= 1:
        return f"{days * 24:.0f}h"
    return f"{days * 1440:.0f}m"


def _data_age(plan: Plan) -> str:
    now = plan.generated_at
    parts = []
    if plan.refreshed is not None:
        parts.append(f"{plan.refreshed} selected runs re-read from the server just now")
    parts.append(
        f"last pull {plan.last_pull_at:%Y-%m-%d %H:%M} UTC ({_age(plan.last_pull_at, now)} ago)"
        if plan.last_pull_at
        else "no successful pull"
    )
    if plan.oldest_read_at is not None:
        parts.append(f"oldest read of a planned run {_age(plan.oldest_read_at, now)} ago")
    if plan.refreshed is None:
        parts.append("`plan --refresh` re-reads the selected runs first")
    return "; ".join(parts)


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
        states = ", ".join(f"{n} {s}" for s, n in sorted(rp.to_json()["by_state"].items()))
        out.print(
            f"\n[bold]{escape(rule.name)}[/] ({what}): {len(rp.runs)} runs"
            + (f" ({states})" if states else ""),
            highlight=False,
        )
        if rp.skipped:
            out.print(
                "  skipped: " + ", ".join(f"{n} {why}" for why, n in rp.skipped.items()),
                highlight=False,
            )
        if rp.runs and sample:
            table = Table(box=None, padding=(0, 2, 0, 2))
            for column in ("run", "flow/deployment", "state", "age", "tags"):
                table.add_column(column, no_wrap=True, overflow="ellipsis")
            for run in rp.runs[:sample]:
                table.add_row(
                    escape(run.name or run.id),
                    escape(f"{run.flow_name or '-'}/{run.deployment_name or '-'}"),
                    escape(run.state_name or run.state_type),
                    _age(run.expected_start_time, now),
                    escape(",".join(run.tags)),
                )
            out.print(table)
            if len(rp.runs) > sample:
                out.print(f"  ... and {len(rp.runs) - sample} more", highlight=False)
    max_actions = plan.policy.policy.max_actions
    out.print(f"\n[bold]total: {plan.total} runs[/] (max_actions {max_actions})", highlight=False)
    if plan.over_max:
        out.print(
            f"[bold red]apply would refuse:[/] {plan.total} runs is more than max_actions ({max_actions}).",
            highlight=False,
        )
    out.print(f"data: {_data_age(plan)}", highlight=False)
    out.print(
        "apply re-reads each batch's runs from the server right before its call and checks this "
        "policy again: runs that no longer qualify are skipped (with the reason), runs gone are not sent.",
        highlight=False,
    )


def _compute_plan(
    policy: Path, db: Path | None, wait: float, live: bool, refresh_from: ApiSettings | None = None
) -> Plan:
    from flowsync.policy import load_policy, make_plan
    from flowsync.store import Store
    from flowsync.store.snapshot import open_for_reading, publish

    loaded = load_policy(policy)
    if refresh_from is not None:
        from flowsync.api import PrefectClient
        from flowsync.policy.apply import refresh_plan

        with (
            Store.open(resolve_db_path(db), wait=wait, sandbox=True) as store,
            PrefectClient(refresh_from) as client,
        ):
            plan = refresh_plan(client, store, loaded)
            publish(store)  # readers see the runs the refresh re-read
            return plan
    # `plan` reads the published snapshot (what the last pull or apply left); `apply`
    # decides on the live file, which equals that snapshot unless a pull is running.
    # Rule SQL runs only on a sandboxed, read-only connection: no files, network or
    # extensions, and DuckDB refuses writes there.
    with open_for_reading(resolve_db_path(db), live=live, wait=wait, sandbox=True) as store:
        return make_plan(store, loaded)


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
    json_out: JsonOption = False,
) -> None:
    """Show what a policy would do: per rule, how many runs and which. Changes nothing on the server.

    Reads the latest snapshot of the local DuckDB file (no API call), which is
    what `apply` decides on unless a pull is running (--live reads the live
    file), and shows how old its data is (last pull, oldest read of a planned
    run). With --refresh it first re-reads the runs the rules select from the
    server into the live file, so the plan is what apply would do now.

    Example: flowsync plan policies/retention.yaml --db runs.duckdb --refresh
    """
    from flowsync.store.snapshot import current

    with errors():
        settings = resolve_api(api_url, api_key) if refresh else None
        plan = _compute_plan(policy, db, wait, live, settings)
        source = None if live or refresh else current(resolve_db_path(db))
    if json_out:
        print_json(plan.to_json(sample=sample))
    else:
        _render_plan(plan, sample)
        if source is not None:
            err.print(
                f"planned on snapshot {source.generation} (pull #{source.pull_id or '-'}, published "
                f"{source.published_at:%Y-%m-%d %H:%M:%S %Z}); apply re-plans on the live file and shows that plan first.",
                highlight=False,
            )


def _render_result(result: ApplyResult) -> None:
    for rule, counts in result.counts.items():
        parts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        err.print(f"  {escape(rule)}: {parts}", highlight=False)
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
    from flowsync.api import PrefectClient
    from flowsync.policy import apply_plan
    from flowsync.policy.apply import check_guards
    from flowsync.store import Store
    from flowsync.store.snapshot import publish

    with errors():
        settings = resolve_api(api_url, api_key, max_requests_per_minute=max_requests_per_minute)
        path = resolve_db_path(db)
        plan = _compute_plan(policy, path, wait, live=True)
        if not json_out:
            _render_plan(plan, sample)
        if plan.total == 0:
            if json_out:
                print_json({"plan": plan.to_json(sample=sample), "result": None})
            else:
                err.print("nothing to do.", highlight=False)
            return
        check_guards(plan)
        if not yes:
            if not sys.stdin.isatty():
                raise ConfigError(
                    f"Refusing to apply {plan.total} changes without confirmation: stdin is not a "
                    "terminal. Review `flowsync plan`, then pass --yes."
                )
            if not typer.confirm(
                f"Apply {plan.total} changes to {settings.display_url}?", default=False, err=True
            ):
                err.print("cancelled; nothing was changed.", highlight=False)
                raise typer.Exit(1)
        progress = make_progress(json_out)
        with (
            # Capped like a pull: uncapped, DuckDB kept every block the batches' writes
            # touched (977 MB for 10,000 deletes at a million runs).
            Store.open(
                path, wait=wait, sandbox=True, memory_cap=True, memory_limit_mb=memory_limit
            ) as store,
            PrefectClient(settings, on_retry=progress.message) as client,
            progress,
        ):
            with store.memory_guard():
                result = apply_plan(client, store, plan, progress=progress)
            publish(store)  # readers (and the next `plan`) see what apply changed
    if json_out:
        print_json({"plan": plan.to_json(sample=sample), "result": result.to_json()})
    else:
        _render_result(result)
    if result.status != "success":
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
        typer.Option(
            "--db",
            help="Also run each rule's SQL (read-only) against this DuckDB file.",
            show_default=False,
        ),
    ] = None,
    wait: WaitOption = 0.0,
    json_out: JsonOption = False,
) -> None:
    """Validate a policy file; with --db, also run each rule's SQL read-only and check its id column.

    Example: flowsync policy check policies/retention.yaml --db runs.duckdb
    """
    from flowsync.policy import check_rules, load_policy
    from flowsync.store.snapshot import open_for_reading

    with errors():
        loaded = load_policy(policy)
        rows: dict[str, int] | None = None
        if db is not None:
            with open_for_reading(db, wait=wait, sandbox=True) as store:
                rows = check_rules(store, loaded)
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
    extra = ""
    if rows is not None:
        extra = "; SQL ok: " + ", ".join(f"{name} {n} rows" for name, n in rows.items())
    out.print(
        f"ok: {escape(str(policy))} is a valid policy ({len(loaded.policy.rules)} rules){extra}",
        highlight=False,
    )
