"""The attempt loop: run attempts of one call until the policy says done or fail.

:func:`run_attempts` is an ``async`` function with every effect injected: ``execute`` runs one
attempt and returns its :class:`~flyte_ray._core.records.Outcome`, ``sleep`` waits between
attempts, ``clock`` / ``wall`` tell the time, ``observer`` hears about each attempt. The
controller passes Ray executors and real time; the unit tests pass scripted outcomes and a fake
clock (``tests/test_core_loop.py``). With an ``execute`` and ``sleep`` that never suspend, the
loop completes in one step, so blocking callers drive it with
:func:`flyte_ray._core.drive.drive` on their own thread.

Time limits (the contract's ``Timeout``): ``max_runtime`` and ``max_queued_time`` go to each
attempt in its request; ``deadline`` spans all attempts: the loop checks it before each attempt
and before each backoff, and hands each attempt what is left of it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Protocol

from ..errors import TaskTimeoutError
from .policy import Action, AttemptPolicy
from .process import memo_get, memo_put
from .records import AttemptRecord, AttemptRequest, Kind, Market, Outcome

if TYPE_CHECKING:
    from .call import Call

__all__ = ["run_attempts", "policy_for", "AttemptObserver"]


class AttemptObserver(Protocol):
    """Hears about every attempt of the calls a controller runs (metrics, recording, notices)."""

    def attempt_started(self, call: "Call", req: AttemptRequest, record: AttemptRecord) -> None: ...

    def attempt_finished(self, call: "Call", req: AttemptRequest, record: AttemptRecord, out: Outcome) -> None: ...


def policy_for(call: "Call") -> AttemptPolicy:
    """The policy of ``call``: one per spec and settings (kept on the spec)."""
    spec, settings = call.spec, call.settings
    hit = memo_get(spec.memo, "policy")
    if hit is not None and hit[0] is settings:
        return hit[1]
    policy = AttemptPolicy(
        spec.fqn,
        interruptible=spec.interruptible,
        retries=spec.retries,
        system_retries=settings.system_retries,
        failure_threshold=settings.failure_threshold,
        max_queued_time=spec.timeout.limits()[1] if spec.timeout else None,
    )
    return memo_put(spec.memo, "policy", (settings, policy))[1]


async def run_attempts(
    call: "Call",
    execute: Callable[[AttemptRequest], Awaitable[Outcome]],
    sleep: Callable[[float], Awaitable[Any]],
    *,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    observer: Optional[AttemptObserver] = None,
    policy: Optional[AttemptPolicy] = None,
) -> Any:
    """Run ``call``'s attempts; returns its value or raises its error (see :mod:`.policy`)."""
    spec, state = call.spec, call.state
    policy = policy or policy_for(call)
    max_runtime, max_queued, deadline = spec.timeout.limits() if spec.timeout else (None, None, None)
    queue = spec.queue or "default"
    t0 = clock()
    n = 0
    while True:
        deadline_left = None
        if deadline is not None:
            deadline_left = deadline - (clock() - t0)
            if deadline_left <= 0:
                raise _deadline_error(call, deadline)
        market = policy.market(state)
        req = AttemptRequest(
            n,
            state.user_failures,
            state.system_failures,
            market,
            queue,
            max_runtime,
            max_queued,
            deadline_left,
            call.settings.spot_wait if market == Market.SPOT else None,
        )
        rec = AttemptRecord(
            attempt=n,
            user_attempt=state.user_failures,
            system_failures=state.system_failures,
            market=market,
            queue=queue,
            submitted=wall(),
        )
        state.history.append(rec)
        if observer is not None:
            observer.attempt_started(call, req, rec)
        try:
            out = await execute(req)
        except BaseException as e:
            # The caller gave up (cancellation, an interrupt): the attempt still ends in the
            # history and for the observers (records, metrics, the drain poller's count).
            gave_up = Outcome(Kind.CANCELLED, error=e if isinstance(e, Exception) else None)
            rec.finish(gave_up, wall())
            if observer is not None:
                observer.attempt_finished(call, req, rec, gave_up)
            raise
        n += 1
        rec.finish(out, wall())
        if observer is not None:
            observer.attempt_finished(call, req, rec, out)
        decision = policy.decide(state, market, out)
        if decision.action is Action.DONE:
            return decision.value
        if decision.action is Action.FAIL:
            assert decision.error is not None
            raise decision.error
        if decision.delay > 0:
            if deadline is not None and (clock() - t0) + decision.delay >= deadline:
                raise _deadline_error(call, deadline)
            await sleep(decision.delay)


def _deadline_error(call: "Call", deadline: float) -> TaskTimeoutError:
    state = call.state
    e = TaskTimeoutError(f"{call.spec.fqn}: deadline of {deadline}s passed after {len(state.history)} attempt(s)")
    e.history = list(state.history)  # type: ignore[attr-defined]
    return e
