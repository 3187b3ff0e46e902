"""The supervisor: one attempt loop that decides every retry and where each attempt runs.

The loop (:func:`attempt_loop`) is plain Python with no Ray in it: a generator that yields an
:class:`AttemptRequest` (run this attempt, on this market) or a :class:`Sleep` (back off), and is
sent back an :class:`Outcome`. Hosts drive it: :func:`run_sync` (a blocking caller: the driver or a
sync task), :func:`run_async` (an event loop), and the supervising actor (:mod:`flyte_ray.supervisor_actor`)
for calls that must outlive a preemptible caller. Ray plumbing lives in :mod:`flyte_ray.attempt`.

Rules (the contract's "Attempts" section):

* failure kinds: *system* (node or worker lost; recorded as ``preemption`` when the node was spot
  or drained for preemption, else ``node_failure``), *oom*, *timeout*, *user*;
  ``NonRecoverableError`` fails at once;
* budgets: user retries (``retries``) for user / OOM / timeout failures; system retries
  (``Settings.system_retries``) for system failures, which never consume user retries;
* market: ``interruptible=False`` → on-demand; the final user-budget attempt → on-demand; after
  the interruptible failure threshold of system failures → on-demand; otherwise spot;
* a spot attempt that cannot start within ``max_queued_time`` moves to on-demand; an on-demand
  one fails with :class:`~flyte_ray.errors.PlacementError`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generator, Optional, Union

from .errors import (NonRecoverableError, PlacementError, RetriesExhaustedError, TaskInterruptedError,
                     TaskTimeoutError, as_user_error, exhausted)
from .placement import ONDEMAND, SPOT

if TYPE_CHECKING:
    from .runtime import Settings
    from .spec import CallSpec

__all__ = ["AttemptRecord", "AttemptRequest", "Outcome", "Sleep", "choose_market", "attempt_loop",
           "run_sync", "run_async", "format_history"]

# Outcome kinds
OK = "ok"
USER = "user"
OOM = "oom"
TIMEOUT = "timeout"
SYSTEM = "system"
QUEUED_TIMEOUT = "queued_timeout"
CANCELLED = "cancelled"


@dataclass
class AttemptRecord:
    """One attempt in a call's history."""

    attempt: int
    user_attempt: int
    system_failures: int
    market: str
    queue: str
    node_id: str = ""
    submitted: float = 0.0
    started: Optional[float] = None
    ended: Optional[float] = None
    outcome: str = "running"  # succeeded | failed | preemption | node_failure | oom | timeout | queued_timeout | cancelled
    failure_kind: Optional[str] = None  # user | system | None
    error: str = ""
    runtime: Optional[float] = None  # seconds the user's code ran, measured on the worker

    @property
    def duration(self) -> Optional[float]:
        if self.ended is None:
            return None
        return self.ended - (self.started or self.submitted)


@dataclass(frozen=True)
class AttemptRequest:
    """What the loop asks its host to run next."""

    attempt: int
    user_attempt: int
    system_failures: int
    market: str
    queue: str
    max_runtime: Optional[float]
    max_queued_time: Optional[float]
    deadline_left: Optional[float]


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass
class Outcome:
    """What happened to an attempt, as the host observed it."""

    kind: str
    value: Any = None
    error: Optional[BaseException] = None
    traceback: str = ""
    node_id: str = ""
    started: Optional[float] = None
    ended: Optional[float] = None
    system_reason: str = ""  # "preemption" | "node_failure" for system outcomes
    missing: tuple = ()  # for queued_timeout: resources no node offers
    runtime: Optional[float] = None  # seconds the user's code ran (when the attempt reported it)


def choose_market(interruptible: bool, retries: int, user_failures: int, system_failures: int,
                  threshold: int, forced_ondemand: bool = False) -> str:
    """The market for the next attempt (the contract's rule, in one place)."""
    if not interruptible or forced_ondemand:
        return ONDEMAND
    if user_failures >= retries:  # the final user-budget attempt
        return ONDEMAND
    if system_failures >= threshold:
        return ONDEMAND
    return SPOT


@dataclass
class CallState:
    """Accounting of one call, exposed to hosts (and to ``Run``) while the loop runs."""

    history: list[AttemptRecord] = field(default_factory=list)
    user_failures: int = 0
    system_failures: int = 0
    started: float = field(default_factory=time.time)


def attempt_loop(spec: "CallSpec", settings: "Settings", state: CallState,
                 clock=time.monotonic) -> Generator[Union[AttemptRequest, Sleep], Optional[Outcome], Any]:
    """The attempt loop. Yields requests; returns the call's value or raises its error."""
    retries = spec.retries.count if spec.retries else 0
    timeout = spec.timeout
    max_runtime = timeout.max_runtime if timeout else None
    max_queued = timeout.max_queued_time if timeout else None
    deadline = timeout.deadline if timeout else None
    t0 = clock()
    queue = spec.queue or "default"
    forced_ondemand = False
    n = 0
    while True:
        deadline_left = None
        if deadline is not None:
            deadline_left = deadline - (clock() - t0)
            if deadline_left <= 0:
                raise _deadline_error(spec, deadline, state)
        market = choose_market(spec.interruptible, retries, state.user_failures, state.system_failures,
                               settings.failure_threshold, forced_ondemand)
        rec = AttemptRecord(attempt=n, user_attempt=state.user_failures, system_failures=state.system_failures,
                            market=market, queue=queue, submitted=time.time())
        state.history.append(rec)
        out = yield AttemptRequest(n, state.user_failures, state.system_failures, market, queue,
                                   max_runtime, max_queued, deadline_left)
        n += 1
        assert out is not None
        _record(rec, out)
        if out.kind == OK:
            return out.value
        if out.kind == CANCELLED:
            raise TaskInterruptedError(f"{spec.fqn}: cancelled by its caller")
        if out.kind == QUEUED_TIMEOUT:
            if market == SPOT:
                forced_ondemand = True  # no budget consumed: the attempt never ran
                continue
            missing = ", ".join(out.missing) or "unknown"
            raise PlacementError(
                f"{spec.fqn}: an on-demand attempt could not start within max_queued_time={max_queued}s; "
                f"no live node offers: {missing}", list(out.missing))
        if out.kind == SYSTEM:
            state.system_failures += 1
            limit = settings.system_retries
            if 0 <= limit < state.system_failures:
                raise exhausted(out.error, state.history, "system",
                                f"{spec.fqn}: {state.system_failures} system failures (preemptions / node losses) "
                                f"exceed system_retries={limit}")
            continue
        # user, oom, timeout: the user's budget
        err = out.error
        if isinstance(err, NonRecoverableError):
            raise as_user_error(err, out.traceback)
        state.user_failures += 1
        if state.user_failures > retries:
            if retries == 0:
                raise as_user_error(err, out.traceback) if err is not None else RuntimeError(out.kind)
            raise exhausted(as_user_error(err, out.traceback), state.history, "user",
                            f"{spec.fqn}: failed {state.user_failures} times; retries={retries} exhausted")
        delay = spec.retries.delay(state.user_failures) if spec.retries else 0.0
        if delay > 0:
            if deadline is not None and (clock() - t0) + delay >= deadline:
                raise _deadline_error(spec, deadline, state)
            yield Sleep(delay)


def _deadline_error(spec: "CallSpec", deadline: float, state: CallState) -> TaskTimeoutError:
    e = TaskTimeoutError(f"{spec.fqn}: deadline of {deadline}s passed after {len(state.history)} attempt(s)")
    e.history = list(state.history)  # type: ignore[attr-defined]
    return e


_OUTCOME_NAMES = {OK: "succeeded", USER: "failed", OOM: "oom", TIMEOUT: "timeout",
                  QUEUED_TIMEOUT: "queued_timeout", CANCELLED: "cancelled"}


def _record(rec: AttemptRecord, out: Outcome) -> None:
    rec.ended = out.ended or time.time()
    rec.started = out.started or rec.started
    rec.node_id = out.node_id or rec.node_id
    rec.runtime = out.runtime
    if out.kind == SYSTEM:
        rec.outcome = out.system_reason or "node_failure"
        rec.failure_kind = "system"
    else:
        rec.outcome = _OUTCOME_NAMES.get(out.kind, out.kind)
        rec.failure_kind = None if out.kind in (OK, QUEUED_TIMEOUT, CANCELLED) else "user"
    if out.error is not None:
        rec.error = f"{type(out.error).__name__}: {out.error}"[:300]


# ---------------------------------------------------------------------------------------------
# Hosts. Each drives the same loop; attempt.py does the Ray work.


def run_sync(call: "Any") -> Any:
    """Drive a call's attempt loop in a blocking caller; returns the value or raises."""
    from . import attempt

    gen = attempt_loop(call.spec, call.settings, call.state)
    try:
        req = next(gen)
        while True:
            if isinstance(req, Sleep):
                time.sleep(req.seconds)
                req = gen.send(None)
            else:
                req = gen.send(attempt.execute_sync(call, req))
    except StopIteration as stop:
        return stop.value


async def run_async(call: "Any") -> Any:
    """Drive a call's attempt loop on the running event loop."""
    from . import attempt

    gen = attempt_loop(call.spec, call.settings, call.state)
    try:
        req = next(gen)
        while True:
            if isinstance(req, Sleep):
                await asyncio.sleep(req.seconds)
                req = gen.send(None)
            else:
                req = gen.send(await attempt.execute_async(call, req))
    except StopIteration as stop:
        return stop.value


def format_history(history: list[AttemptRecord]) -> str:
    """The attempt history as a plain-text table."""
    rows = [("#", "user", "sys", "market", "queue", "node", "secs", "outcome", "error")]
    for r in history:
        d = r.duration
        rows.append((str(r.attempt), str(r.user_attempt), str(r.system_failures), r.market, r.queue,
                     (r.node_id or "-")[:12], f"{d:.2f}" if d is not None else "-", r.outcome,
                     (r.error or "")[:60]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def reset_process_state() -> None:
    """Forget per-process Ray state (remote functions, cluster view) after ``shutdown``."""
    from . import attempt, placement, reuse, supervisor_actor

    reuse.reset()  # first: it kills this driver's replica pools while Ray is still connected
    attempt.reset()
    placement.reset()
    supervisor_actor.reset()
