"""The calls that change runs: bulk delete and set-state (Prefect 3.6.16+), and the
per-run endpoints every 3.x server has.

Owns: ``Writes``. Each call is sent exactly once (``idempotent=False``): a lost
answer, or a 2xx whose body is not the shape the endpoint answers with, raises
``UncertainError`` (the server may have applied it), one that was not applied ``ThrottledError`` or
``NotSentError``; whether to send again is the caller's decision, after it reads
the runs again. Ids are checked before they go into a path or a filter (at most
``BULK_LIMIT`` per bulk call, never an open filter); a bulk endpoint the server
lacks raises ``UnsupportedError`` (not sent at all when ``capabilities()``
already said so). Must not: import httpx, resend a call, print, or touch the
store.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from flowsync.api.models import DeleteResult, OrchestrationResult
from flowsync.api.server import ServerInfo
from flowsync.errors import NotFoundError, UncertainError

# The bulk endpoints take 1..BULK_LIMIT runs per call.
BULK_LIMIT = 50


class Writes(ServerInfo):
    """The calls that change runs, each sent once."""

    def bulk_delete(
        self,
        ids: Sequence[str],
        state_types: Sequence[str] | None,
        *,
        state_names: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """POST /flow_runs/bulk_delete for exactly these ids (never an open filter), of these
        state types (and names, if given) at the call: the server refuses the others.

        Raises ``UncertainError`` when the answer is lost or unreadable: read the runs before resending;
        ``ThrottledError``/``NotSentError`` when it was not applied; ``UnsupportedError``
        on a server older than 3.6.16 (not sent at all when ``capabilities()`` already
        said so; callers choose the path from ``capabilities()`` first)."""
        body = {"flow_runs": _id_filter(ids, state_types, state_names), "limit": len(ids)}
        answer = self._bulk("flow_runs/bulk_delete", body)
        if not isinstance(answer, dict):
            raise UncertainError.unreadable("POST /flow_runs/bulk_delete", "an object")
        return answer

    def bulk_set_state(
        self,
        ids: Sequence[str],
        state: dict[str, Any],
        *,
        force: bool,
        state_types: Sequence[str] | None,
        state_names: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        body = {
            "flow_runs": _id_filter(ids, state_types, state_names),
            "state": state,
            "force": force,
            "limit": len(ids),
        }
        answer = self._bulk("flow_runs/bulk_set_state", body)
        if not isinstance(answer, dict):
            raise UncertainError.unreadable("POST /flow_runs/bulk_set_state", "an object")
        return answer

    def _bulk(self, endpoint: str, body: dict[str, Any]) -> Any:
        with self._lock:
            known = self._capabilities
        if known is not None and not known.bulk:
            raise self._unsupported(endpoint, known)  # already read: older than 3.6.16
        try:
            return self.request("POST", endpoint, body, idempotent=False)
        except NotFoundError as e:
            # 404 for the route itself (or 405 where 3.0-3.2 route POST /flow_runs/bulk_delete
            # to /flow_runs/{id}): the server lacks the endpoint.
            raise self._unsupported(endpoint, self.capabilities()) from e

    def delete_flow_run(self, run_id: str) -> DeleteResult:
        """DELETE /flow_runs/{id} (every 3.x server has it): one run, no state guard.

        A 404 means the run is already gone: ``DeleteResult(deleted=False)``, no error.
        Sent once: ``UncertainError`` when the answer is lost, ``ThrottledError`` /
        ``NotSentError`` when it was not applied; re-check before sending again."""
        try:
            self.request("DELETE", f"flow_runs/{_run_id(run_id)}", idempotent=False)
        except NotFoundError:
            return DeleteResult(str(run_id), deleted=False)
        return DeleteResult(str(run_id), deleted=True)

    def set_flow_run_state(
        self, run_id: str, state: dict[str, Any], *, force: bool
    ) -> OrchestrationResult:
        """POST /flow_runs/{id}/set_state (every 3.x server has it): Prefect's orchestration
        rules decide unless ``force``. Raises ``NotFoundError`` when the run is gone; sent
        once, with the same errors as ``delete_flow_run``."""
        answer = self.request(
            "POST",
            f"flow_runs/{_run_id(run_id)}/set_state",
            {"state": state, "force": force},
            idempotent=False,
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("status"), str):
            raise UncertainError.unreadable(
                f"POST /flow_runs/{run_id}/set_state", "an orchestration result"
            )
        state_now = answer.get("state")
        details = answer.get("details")
        return OrchestrationResult(
            str(run_id),
            answer["status"],
            state_now if isinstance(state_now, dict) else None,
            details if isinstance(details, dict) else {},
        )


_UUID = re.compile(r"^[0-9a-fA-F-]{32,36}$")


def _run_id(run_id: str) -> str:
    """A run id safe to put in a path (a UUID): never a path of its own."""
    text = str(run_id)
    if not _UUID.match(text):
        raise ValueError(f"not a flow run id: {text!r}")
    return text


def _id_filter(
    ids: Sequence[str], state_types: Sequence[str] | None, state_names: Sequence[str] | None
) -> dict[str, Any]:
    """Exactly ``ids``, and only while their state is of ``state_types`` and, if given,
    ``state_names`` (both must hold: Prefect ANDs a state filter's parts)."""
    ids = [str(i) for i in ids]
    if not ids:
        raise ValueError("a bulk call needs at least one id")
    if len(ids) > BULK_LIMIT:
        raise ValueError(f"a bulk call takes at most {BULK_LIMIT} ids")
    flt: dict[str, Any] = {"id": {"any_": ids}}
    if state_types:
        flt["state"] = {"type": {"any_": sorted(set(state_types))}}
        if state_names:
            flt["state"]["name"] = {"any_": sorted(set(state_names))}
    return flt
