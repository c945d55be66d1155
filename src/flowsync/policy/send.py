"""Step 3 of a batch: one call that changes runs on the server, its answer typed.

Owns ``send_call``: the only place in ``policy/`` that calls the endpoints that change
runs (``bulk_set_state``/``bulk_delete``, each run listed by id and guarded by the
state type it had when re-read; on a server before 3.6.16, which lacks them,
``set_flow_run_state``/``DELETE /flow_runs/{id}`` one run at a time). Whatever happens
comes back as an ``Answer`` (``policy/answers.py``): acted on, throttled or never
sent, lost, refused, or, per run, a partial answer up to the run that stopped. An
``AuthError`` raises. Counts each call and its window since the re-read in the
``ApplyResult``. Must not: send a call again (the transport never does, and only the
batch decides to, after re-checking: ``policy/batch.py``), read or write the file,
print, or import httpx/duckdb.
"""

from __future__ import annotations

import time

from flowsync.api import PrefectClient
from flowsync.errors import ApiError, AuthError, NotFoundError
from flowsync.policy.answers import (
    Acted,
    Answer,
    Call,
    Partial,
    answered,
    answered_state,
    from_error,
)
from flowsync.policy.model import SetStateRule
from flowsync.policy.plan import RuleModel
from flowsync.policy.result import SET_STATE_STATUS, ApplyResult, Outcome, RunResult

__all__ = ["note_call", "send_bulk", "send_call"]


def send_call(
    client: PrefectClient,
    result: ApplyResult,
    rule: RuleModel,
    call: Call,
    read_at: float,
    *,
    per_run: bool,
) -> Answer:
    """Step 3: one call; whatever happens comes back as a typed answer (AuthError raises)."""
    if per_run:
        return _send_per_run(client, result, rule, call, read_at)
    note_call(result, read_at)
    return send_bulk(client, rule, call)


def note_call(result: ApplyResult, read_at: float) -> None:
    """Count a bulk call about to go out, and its window since the re-read (this thread only)."""
    result.windows.append(time.monotonic() - read_at)
    result.calls += 1


def send_bulk(client: PrefectClient, rule: RuleModel, call: Call) -> Answer:
    """One bulk call, its answer typed (AuthError raises). HTTP only: safe on another
    thread while this apply's file is in use (``note_call`` counts it first)."""
    # The state guard: the runs' state type and, where the read showed one, its name.
    kinds, names = [call.state_type], [call.state_name] if call.state_name else None
    try:
        if isinstance(rule, SetStateRule):
            state = rule.state.to_api()
            answer = client.bulk_set_state(
                call.ids, state, force=rule.force, state_types=kinds, state_names=names
            )
        else:
            answer = client.bulk_delete(call.ids, kinds, state_names=names)
        results, notes = answered(rule, call.ids, answer)
    except AuthError:
        raise
    except ApiError as e:
        return from_error(e)
    return Acted(results, notes)


def _send_per_run(
    client: PrefectClient, result: ApplyResult, rule: RuleModel, call: Call, read_at: float
) -> Answer:
    """A server older than 3.6.16: one call per run, in the batch's order. DELETE has no
    state guard there; set_state keeps Prefect's orchestration rules (force is refused
    before any call)."""
    results: dict[str, RunResult] = {}
    for n, run_id in enumerate(call.ids):
        result.windows.append(time.monotonic() - read_at)
        result.calls += 1
        try:
            if isinstance(rule, SetStateRule):
                answer = client.set_flow_run_state(run_id, rule.state.to_api(), force=rule.force)
                state = answer.state or {}
                results[run_id] = RunResult(
                    SET_STATE_STATUS.get(answer.status, Outcome.FAILED),
                    {
                        "status": answer.status,
                        "details": answer.details,
                        "state": answered_state(state),
                        "path": "per-run",
                    },
                )
            elif client.delete_flow_run(run_id).deleted:
                results[run_id] = RunResult(Outcome.DELETED, {"path": "per-run"})
            # else: already gone; step 4 reads it back to say why
        except NotFoundError:
            pass  # set_state on a run that is gone: step 4 reads it back
        except AuthError:
            raise
        except ApiError as e:
            return Partial(results, n, from_error(e))
    return Acted(results, [])
