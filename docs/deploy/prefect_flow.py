"""Schedule flowsync with Prefect: pull the run history, then plan (and apply) a policy.

The flow pulls from the Prefect API it runs against (the same URL and key as
the flow itself; pass ``api_url`` to sync another one) into a DuckDB file,
then, given a policy file, plans it and, with ``apply=True``, applies it.
Each step is a task, so its outcome and summary show in the Prefect UI; a
failure (the file held by another process longer than ``wait``, a policy that
selects more than ``max_actions``, a partial apply) fails the flow run.

Without a policy it only pulls. Serve it from any machine with flowsync
installed (a long-running process that runs the schedule, no work pool
needed); the file is ``~/.local/share/flowsync/flowsync.duckdb`` unless
``FLOWSYNC_DB`` names another, and its directory is created::

    python prefect_flow.py

or register it with a work pool: see ``build_deployment`` and the comment in
the ``__main__`` block. Requires ``pip install prefect flowsync``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.settings import get_current_settings

import flowsync
from flowsync.config import resolve_api
from flowsync.errors import (
    AuthError,
    ConfigError,
    PolicyError,
    PolicyLimitError,
    StoreError,
    StoreLockedError,
)


def _settings(api_url: str | None) -> Any:
    """flowsync's API settings: the given URL, else the one this flow reports to."""
    current = get_current_settings().api
    key = current.key.get_secret_value() if current.key else None
    return resolve_api(api_url or current.url, None if api_url else key)


DEFAULT_DB = os.environ.get("FLOWSYNC_DB") or str(
    Path.home() / ".local" / "share" / "flowsync" / "flowsync.duckdb"
)


def worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what may pass in a minute (the API, a file held by another process), not
    settings (a refused API key too) or a file that cannot be used: those fail the run at
    once, with their message."""
    try:
        state.result()
    except StoreLockedError:
        return True
    except (ConfigError, AuthError, StoreError, OSError):
        return False
    except Exception:
        return True
    return False


@task(retries=2, retry_delay_seconds=60, retry_condition_fn=worth_retrying)
def pull_history(db: str, api_url: str | None = None, wait: float = 300.0) -> dict[str, Any]:
    """``flowsync pull``: bring the DuckDB file up to date (its directory created if missing)
    and publish the readers' snapshot."""
    Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    pulled = flowsync.pull(Path(db).expanduser(), api=_settings(api_url), wait=wait)
    result = pulled.result
    get_run_logger().info(
        "pulled %s: %s new, %s updated, %s marked deleted",
        result.mode, result.inserted, result.updated, result.marked_deleted,
    )
    return result.to_json()


@task
def run_policy(db: str, policy: str, apply: bool, api_url: str | None = None, wait: float = 300.0) -> dict[str, Any]:
    """``flowsync plan POLICY``, and with ``apply`` also ``flowsync apply POLICY --yes``."""
    if not apply:
        with flowsync.plan(Path(db).expanduser(), Path(policy), live=True, wait=wait) as plan:
            get_run_logger().info("policy %s selects %s runs", policy, plan.total)
            if plan.over_max:  # as `flowsync plan` exits 8: apply would refuse it
                raise PolicyLimitError(
                    f"{policy}: the rules select {plan.total} runs, more than max_actions "
                    f"({plan.policy.policy.max_actions}); narrow the rules or raise max_actions."
                )
            if plan.forced_per_run:  # as `flowsync plan` exits 7: apply would refuse them
                raise PolicyError(
                    f"{policy}: rules {plan.forced_per_run} force a state, which a server before "
                    "3.6.16 cannot guard per run; upgrade the server, or drop `force`."
                )
            return {"planned": plan.total, "over_max_actions": plan.over_max}
    applied = flowsync.apply(Path(db).expanduser(), Path(policy), api=_settings(api_url), wait=wait)
    summary: dict[str, Any] = {"planned": applied.plan.total, "over_max_actions": applied.plan.over_max}
    get_run_logger().info("policy %s selects %s runs", policy, applied.plan.total)
    if applied.result is not None:
        summary["apply"] = applied.result.to_json()
        if applied.result.status != "success":
            raise RuntimeError(f"apply finished with status {applied.result.status}: {applied.result.errors[:3]}")
    if applied.publish_error is not None:
        raise applied.publish_error
    return summary


@flow(name="flowsync-pull-and-clean")
def flowsync_pull_and_clean(
    db: str = DEFAULT_DB,
    policy: str | None = None,
    apply: bool = False,
    api_url: str | None = None,
    wait: float = 300.0,
) -> dict[str, Any]:
    """Pull Prefect run history into DuckDB; given a policy, plan it (and apply it with apply=True)."""
    out: dict[str, Any] = {"pull": pull_history(db, api_url, wait)}
    if policy:
        out["policy"] = run_policy(db, policy, apply, api_url, wait)
    return out


def build_deployment(db: str = DEFAULT_DB, policy: str | None = None) -> Any:
    """The deployment: every 15 minutes; the policy is only planned until you set apply=True."""
    return flowsync_pull_and_clean.to_deployment(
        name="every-15-minutes",
        cron="*/15 * * * *",
        parameters={"db": db, "policy": policy, "apply": False},
        tags=["flowsync"],
    )


if __name__ == "__main__":
    from prefect import serve

    serve(build_deployment())
    # With a work pool instead of a served process (code pulled from git):
    # flowsync_pull_and_clean.from_source(
    #     source="https://github.com/you/ops.git", entrypoint="prefect_flow.py:flowsync_pull_and_clean",
    # ).deploy(name="every-15-minutes", work_pool_name="default", cron="*/15 * * * *",
    #          parameters={"db": "/data/flowsync.duckdb", "policy": "/data/retention.yaml", "apply": True})
