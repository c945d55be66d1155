"""Applying a confirmed plan: every call decided on the server as it is right before it.

Owns the outer loop of an apply and its public API: ``check_guards`` (max_actions and
protect_tags on the confirmed plan, before any call), the server's capabilities (the
bulk endpoints, or one call per run on a server before 3.6.16), ``batches`` (per rule,
per planned state type, at most 50 runs), and ``apply_plan``, which runs them in order.
Each batch is one fixed sequence, read -> decide -> send -> classify -> record
(``policy/batch.py``), given the batches after it (decided ahead with it when they
decide runs from their own rows); when it may, a batch leaves its last call in flight
and the next batch runs up to its own call before the first one's answer is taken
(at most two calls out, one at a time for a while after the server lost an answer; when
either stops the apply, the call already out is still answered and recorded). A lost answer is
settled by reading the runs back (``policy/settle.py``).

Runs a killed apply left ``pending`` are read back and settled under the apply
that sent them when the next apply starts (counted in ``resolved_earlier``); runs
whose call was in flight when this apply is interrupted (up to two) are recorded from
its answer if it is back (``Applier.close_out``; a 429: ``failed``), else read back
once before it stops. A failed batch does not stop the next one; a server that cannot be read
stops the apply. Also ``reread_runs`` (``plan --refresh``) and ``new_result``. Must not:
select runs (that is ``plan``), send or classify a call itself (that is the
batch's), print, or import httpx/duckdb.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from flowsync.api import PrefectClient
from flowsync.api.client import BULK_LIMIT
from flowsync.api.pagination import PAGE_SIZE
from flowsync.errors import ApiError, PolicyError, PolicyLimitError
from flowsync.policy.ahead import AHEAD_BATCHES
from flowsync.policy.batch import Applier, Batch, Stop
from flowsync.policy.plan import Plan
from flowsync.policy.planned import per_run_path
from flowsync.policy.reread import changed_since_pull
from flowsync.policy.result import KNOWN_OUTCOMES, ApplyResult
from flowsync.policy.settle import SETTLE_SECONDS
from flowsync.progress import NullProgress, Progress
from flowsync.store import SandboxedWriter, Writer, audit
from flowsync.sync import RunReader

__all__ = [
    "SETTLE_SECONDS",
    "ApplyResult",
    "Batch",
    "apply_plan",
    "batches",
    "check_guards",
    "new_result",
    "reread_runs",
]

# On a server without the bulk endpoints, runs re-read per decision: each run's call follows
# the re-read within a few per-run calls.
PER_RUN_BATCH = 10


def batches(plan: Plan, size: int = BULK_LIMIT) -> Iterator[Batch]:
    """Per rule, per planned state type, chunks of at most ``size`` ids (never empty)."""
    size = max(1, min(size, BULK_LIMIT))
    for rule, state_type, chunk in plan.batches(size):  # read from the plan's store, page by page
        yield Batch(rule, state_type, [run_id for run_id, _ in chunk], dict(chunk))


def check_guards(plan: Plan) -> None:
    """max_actions and protect_tags on the confirmed plan, before any API call."""
    policy = plan.policy.policy
    if plan.over_max:
        raise PolicyLimitError(
            f"{plan.policy.source}: the rules select {plan.total} runs, more than max_actions "
            f"({policy.max_actions}); narrow the rules, add a per-rule limit, or raise max_actions."
        )
    protected = plan.protected_run(list(policy.protect_tags))
    if protected is not None:
        raise PolicyError(
            f"run {protected} has a protected tag but was planned; refusing to apply."
        )


def reread_runs(
    client: PrefectClient,
    store: Writer,
    ids: list[str],
    lookups: frozenset[str] = frozenset(),
    catch_up: str | None = None,
    progress: Progress | None = None,
) -> int:
    """Read these runs from the server into the file (``plan --refresh``), and their flows or
    deployments (``lookups``: those the rules' SQL may read, as apply re-reads them; their
    changes emit no event); with ``catch_up`` (why apply may decide a rule on them:
    ``reread.catches_up``), every run with a state change since the last pull too, as
    apply's catch-up does (``PolicyError`` when the server may no longer hold those
    events). ``progress`` counts the runs read. Returns how many selected runs were read."""
    progress = progress or NullProgress()
    client.check()  # a wrong URL or a stopped server fails in a second, not after retries
    reader = RunReader(client, store, "plan-refresh")
    try:
        wanted = ids
        if catch_up is not None:
            wanted = sorted({*ids, *changed_since_pull(client, store, catch_up)})
        progress.phase("refresh", len(wanted))
        found: dict[str, dict[str, Any]] = {}
        for first in range(0, len(wanted), PAGE_SIZE):  # one request each: counted as read
            chunk = wanted[first : first + PAGE_SIZE]
            found.update(reader.read(chunk))
            progress.advance(len(chunk))
        if lookups:
            reader.read_lookups(found.values(), lookups)
        # Read just now, changed or not: the plan's "oldest read of a planned run" says so.
        reader.mark_read(list(found))
    except BaseException as e:
        with contextlib.suppress(Exception):
            reader.finish(error=e)
        raise
    reader.finish()
    return len(ids)


def new_result(plan: Plan) -> ApplyResult:
    """An empty result for an apply of ``plan`` (its id names the apply in ``policy_actions``)."""
    return ApplyResult.new(plan.policy.sha256)


def _advance(steps: Iterator[None], in_flight: Iterator[None] | None) -> bool:
    """Run a batch's steps until its last call is in flight (True) or to its end (False). If
    they raise, the batch whose call is already out is answered and recorded first."""
    try:
        return next(steps, _ENDED) is not _ENDED
    except BaseException as e:
        _answer_after(in_flight, e)
        raise


def _finish(steps: Iterator[None], in_flight: Iterator[None] | None) -> None:
    """The rest of a batch whose last call is out: its answer, classified and recorded. If that
    raises, the batch sent after it is answered and recorded first."""
    try:
        for _ in steps:
            pass
    except BaseException as e:
        _answer_after(in_flight, e)
        raise


def _answer_after(steps: Iterator[None] | None, error: BaseException) -> None:
    """A call already out when ``error`` stops the apply: its answer is still recorded (but not
    waited for on Ctrl-C: the apply reads back what it left pending before it stops). The
    apply ends on ``error``, unless that is a ``Stop`` and the answer raises something the
    user must see instead (a 401: the credentials, not the server, are the problem)."""
    if steps is None or isinstance(error, KeyboardInterrupt):
        return
    try:
        for _ in steps:
            pass
    except Stop:
        pass
    except Exception:
        if isinstance(error, Stop):
            raise


_ENDED = object()


def apply_plan(
    client: PrefectClient,
    store: SandboxedWriter,
    plan: Plan,
    *,
    progress: Progress | None = None,
    batch_size: int = BULK_LIMIT,
    attempts: int | None = None,
    settle_seconds: float = SETTLE_SECONDS,
    result: ApplyResult | None = None,
) -> ApplyResult:
    """Send the confirmed plan's batches, each re-checked right before its call; classify every run once.

    ``result`` (optional) is filled as the apply goes, so a caller still holds what was
    done when this raises (401, the file, Ctrl-C): every outcome known is in it and in
    ``policy_actions``."""
    check_guards(plan)
    progress = progress or NullProgress()
    began = time.monotonic()
    result = result or new_result(plan)
    # A wrong URL or a stopped server fails in a second, not after retries: before the
    # file's server is confirmed (``RunReader``: its flows read by id).
    clock = client.check()
    reader = RunReader(client, store, "apply")
    applier = Applier(
        client,
        store,
        plan,
        progress,
        attempts or client.retry.attempts,
        settle_seconds,
        result,
        reader,
    )
    # Every wait the client makes this thread sleep first records a call still out that the
    # server answered 429 meanwhile (``Applier.wait``): a kill -9 in any wait, not only the
    # batch's own, leaves no pending row for the next apply to credit.
    with client.waits_through(applier.wait):
        failure: BaseException | None = None
        try:
            applier.rereader.set_server_clock(clock)
            caps = client.capabilities()
            if not caps.read:  # a 5xx or a dropped connection, twice: not a server hiding it
                raise ApiError(
                    "GET /admin/version failed (a busy or failing server): apply chooses its "
                    "calls and the guards they carry by the server's version; nothing was sent. "
                    "Run apply again."
                )
            if not caps.supported:  # its filters might not guard what Prefect 3's do
                raise ApiError(
                    f"{caps.describe()}: flowsync applies policies to Prefect 3 servers only "
                    "(their calls and the state guards they carry are Prefect 3's); nothing was "
                    "sent. pull and the reports still read it; upgrade flowsync when one "
                    "supports it."
                )
            if not caps.bulk:
                forced = plan.forcing_rules
                if forced:
                    raise PolicyError(
                        f"{caps.describe()} has no bulk_set_state (before 3.6.16): rule "
                        f"{forced[0]!r} forces a state, which the per-run endpoint cannot guard by the "
                        "state the run had when re-read; upgrade the server, or drop `force` from the rule."
                    )
                applier.per_run = True
                batch_size = min(batch_size, PER_RUN_BATCH)
            result.path = "bulk" if caps.bulk else per_run_path(caps.describe(), plan)
            earlier = audit.unresolved(store, besides=result.apply_id, known=KNOWN_OUTCOMES)
            if earlier:
                progress.message(
                    f"{len(earlier)} runs sent by an earlier apply have no recorded answer; reading them back"
                )
                earlier_done = applier.settler.settle_pending(earlier, wait=True)
                result.resolved_earlier = earlier_done.rows
                # Known changed by it, they belong to that apply; still unknown, they wait for it.
                # Left untouched (unchanged, another client's change, gone), they are this apply's
                # to re-check, send and record, as any run it planned.
                settled = earlier_done.changed | earlier_done.unknown
                foreign = earlier_done.foreign
                unread = len(earlier_done.unknown) - len(foreign)
                if unread:
                    result.errors.append(
                        f"{unread} runs an earlier apply sent could not be settled "
                        "(their state changed and its history could not be read): left pending and "
                        "not sent again; run apply again"
                    )
                if foreign:
                    unknown = ", ".join(sorted(set(foreign.values())))
                    result.errors.append(
                        f"{len(foreign)} runs an earlier apply sent have an action or outcome this "
                        f"flowsync does not know ({unknown}: a newer flowsync's), so no answer it "
                        "can read: left as they are and not sent again; upgrade flowsync to settle them"
                    )
            else:
                settled = set()
            if plan.total:
                applier.rereader.check_catch_up()
            progress.phase("apply", total=plan.total)
            # A run an earlier apply is now known to have changed belongs to that apply.
            listed = (
                (
                    len(b.ids),
                    Batch(
                        b.rule, b.state_type, [i for i in b.ids if i not in settled], b.deployments
                    ),
                )
                for b in batches(plan, batch_size)
            )
            # The batches after the current one: decided ahead with it, checked while it waits.
            window = deque(itertools.islice(listed, AHEAD_BATCHES + 1))
            number = 1
            in_flight: Iterator[None] | None = None  # a batch whose last call is out
            while window:
                result.batches = number
                planned, batch = window.popleft()
                window.extend(itertools.islice(listed, 1))
                if batch.ids:
                    if in_flight is not None and applier.one_call_at_a_time(number):
                        # The server lost an answer lately: this batch waits for the call still out.
                        _finish(in_flight, None)
                        in_flight = None
                    steps = applier.steps(number, batch, [b for _, b in window])
                    # Up to its last call, sent while the batch before it still waits for its answer.
                    waiting = _advance(steps, in_flight)
                    if in_flight is not None:
                        _finish(in_flight, steps if waiting else None)
                    in_flight = steps if waiting else None
                else:
                    progress.advance(planned)
                number += 1
            if in_flight is not None:
                _finish(in_flight, None)
        except Stop:
            pass
        except BaseException as e:
            failure = e
            with contextlib.suppress(Exception):
                applier.close_out(str(e) or "interrupted")
            with contextlib.suppress(Exception):
                applier.settler.close_open_rows(
                    applier.ledger.open_rows(), counted=applier.ledger.counted_pending
                )
            raise
        finally:
            with contextlib.suppress(Exception):
                reader.finish(error=failure)
            result.seconds = time.monotonic() - began
    return result
