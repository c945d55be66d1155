"""Real @flow executions against PREFECT_API_URL: durations, retries, a subflow, failures.

Run as a script (``harness.seed.run_real_flows`` does); prints a JSON summary
of the flow-run ids it produced on its last line.
"""

from __future__ import annotations

import json
import time

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext

ATTEMPTS: dict[str, int] = {}


def _run_id() -> str:
    ctx = FlowRunContext.get()
    assert ctx is not None and ctx.flow_run is not None, "called outside a flow run"
    return str(ctx.flow_run.id)


@flow(name="real-child", log_prints=False)
def child(seconds: float) -> str:
    time.sleep(seconds)
    return _run_id()


@flow(name="real-parent")
def parent() -> dict[str, str]:
    child_id = child(0.3)
    return {"parent": _run_id(), "child": child_id}


@flow(name="real-flaky", retries=2, retry_delay_seconds=0)
def flaky() -> str:
    run_id = _run_id()
    ATTEMPTS[run_id] = ATTEMPTS.get(run_id, 0) + 1
    if ATTEMPTS[run_id] < 2:
        raise RuntimeError("first attempt fails on purpose")
    return run_id


@flow(name="real-broken")
def broken() -> None:
    get_run_logger().info("about to fail")
    raise ValueError("this flow always fails")


@flow(name="real-sleepy")
def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return _run_id()


def main() -> None:
    out: dict[str, object] = {}
    out.update(parent())
    out["flaky"] = flaky()
    out["sleepy"] = [sleepy(0.5), sleepy(1.2)]
    state = broken(return_state=True)
    out["broken"] = str(state.state_details.flow_run_id)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
