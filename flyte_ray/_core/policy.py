"""The attempt rules of the contract, as one policy object: market, budgets, backoff.

:class:`AttemptPolicy` answers the two questions the attempt loop asks (compare Ray Train v2's
``FailurePolicy.make_decision``):

* :meth:`~AttemptPolicy.market` -- where does the next attempt run?

  - ``interruptible=False`` → on-demand;
  - the final attempt of the user budget (attempt ``retries + 1``; so ``retries=0`` never runs
    on spot) → on-demand;
  - once system failures reach the interruptible failure threshold → on-demand;
  - after a spot attempt could not start within ``max_queued_time`` → on-demand;
  - otherwise spot.

* :meth:`~AttemptPolicy.decide` -- given how an attempt ended, what now?

  - success → :data:`DONE` with the value;
  - cancelled by the caller → fail with ``TaskInterruptedError``;
  - a spot attempt that could not start in time (``max_queued_time``, else the spot wait), or that
    no live or launchable node could run → retry at once on on-demand, no budget used (the
    attempt never ran); an on-demand one → fail with ``PlacementError`` naming what is missing;
  - system failure (node lost) → one of ``system_retries`` (-1: unlimited); never a user retry.
    The first one retries at once (a preempted attempt restarts on another node without delay);
    each further one waits twice as long as the last, from :data:`SYSTEM_BACKOFF_BASE` up to
    :data:`SYSTEM_BACKOFF_CAP` seconds, so a node that keeps failing is not hammered; with
    unlimited system retries a warning is logged every :data:`SYSTEM_WARN_EVERY` failures;
  - user error, OOM, worker crash, timeout → one of ``retries``; ``NonRecoverableError`` fails at once; the
    retry waits ``Backoff`` (retries counted from 0, as flyte-sdk does);
  - exhausting a budget raises ``RetriesExhaustedError`` naming it, with the history and the
    last error as its cause (with ``retries=0`` the user's error itself is raised).

The policy is immutable and shared by every call of a spec with the same settings; each call's
counters live in its :class:`~flyte_ray._core.call.CallState`, which :meth:`~AttemptPolicy.decide`
updates (they are the budget). It holds no clock and does no waiting: the loop does.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from ..errors import NonRecoverableError, PlacementError, TaskInterruptedError, as_user_error, exhausted
from .records import Kind, Market, Outcome

if TYPE_CHECKING:
    from ..retry import RetryStrategy
    from .call import CallState

__all__ = ["AttemptPolicy", "Decision", "Action", "system_delay"]

logger = logging.getLogger("flyte_ray")

SYSTEM_BACKOFF_BASE = 0.5  # seconds before the second system retry
SYSTEM_BACKOFF_CAP = 30.0
SYSTEM_WARN_EVERY = 10


def system_delay(failures: int) -> float:
    """Seconds before the retry that follows the ``failures``-th system failure of a call."""
    if failures <= 1:
        return 0.0
    return min(SYSTEM_BACKOFF_BASE * 2.0 ** min(failures - 2, 32), SYSTEM_BACKOFF_CAP)


class Action(Enum):
    DONE = "done"  # return ``value``
    RETRY = "retry"  # run another attempt after ``delay`` seconds
    FAIL = "fail"  # raise ``error``


class Decision(NamedTuple):
    action: Action
    value: Any = None
    error: Optional[BaseException] = None
    delay: float = 0.0


class AttemptPolicy:
    """Market, budgets and backoff of one call (see the module docstring).

    Args:
        name: the task's fully qualified name (for messages).
        interruptible: attempts may run on spot capacity.
        retries: the user budget and its backoff (``None``: no retries).
        system_retries: system failures the call absorbs; -1 = unlimited.
        failure_threshold: system failures after which attempts run on on-demand.
        max_queued_time: seconds an attempt may wait to start (for messages).
    """

    __slots__ = ("name", "interruptible", "retries", "strategy", "system_retries", "threshold", "max_queued_time")

    def __init__(
        self,
        name: str,
        *,
        interruptible: bool,
        retries: Optional["RetryStrategy"],
        system_retries: int,
        failure_threshold: int,
        max_queued_time: Optional[float] = None,
    ) -> None:
        self.name = name
        self.interruptible = interruptible
        self.strategy = retries
        self.retries = retries.count if retries is not None else 0
        self.system_retries = system_retries
        self.threshold = failure_threshold
        self.max_queued_time = max_queued_time

    def market(self, state: "CallState") -> Market:
        """The market of the next attempt."""
        if not self.interruptible or state.forced_ondemand:
            return Market.ONDEMAND
        if state.user_failures >= self.retries:  # the final attempt of the user budget
            return Market.ONDEMAND
        if state.system_failures >= self.threshold:
            return Market.ONDEMAND
        return Market.SPOT

    def decide(self, state: "CallState", market: Market, out: Outcome) -> Decision:
        """What to do after an attempt on ``market`` ended with ``out``; updates the counters."""
        kind = out.kind
        if kind is Kind.OK:
            return Decision(Action.DONE, value=out.value)
        if kind is Kind.CANCELLED:
            return Decision(Action.FAIL, error=TaskInterruptedError(f"{self.name}: cancelled by its caller"))
        if kind is Kind.QUEUED_TIMEOUT or kind is Kind.SPOT_UNAVAILABLE or kind is Kind.INFEASIBLE:
            if market == Market.SPOT:
                state.forced_ondemand = True  # no budget consumed: the attempt never ran
                return Decision(Action.RETRY)
            missing = ", ".join(out.missing) or "unknown"
            if kind is Kind.INFEASIBLE:
                why = f"no node, live or launchable, offers: {missing}"
            else:
                why = (
                    f"it could not start within max_queued_time={self.max_queued_time}s; no live node offers: {missing}"
                )
            return Decision(
                Action.FAIL,
                error=PlacementError(f"{self.name}: an on-demand attempt cannot run: {why}", list(out.missing)),
            )
        if kind is Kind.SYSTEM:
            state.system_failures += 1
            limit = self.system_retries
            if 0 <= limit < state.system_failures:
                return Decision(
                    Action.FAIL,
                    error=exhausted(
                        out.error,
                        state.history,
                        "system",
                        f"{self.name}: {state.system_failures} system failures (preemptions / node losses) "
                        f"exceed system_retries={limit}",
                    ),
                )
            n = state.system_failures
            if limit < 0 and n % SYSTEM_WARN_EVERY == 0:
                logger.warning(
                    "%s: %d system failures (preemptions / node losses) so far, retrying "
                    "(system_retries=-1 never gives up); last: %s",
                    self.name,
                    n,
                    out.error,
                )
            return Decision(Action.RETRY, delay=system_delay(n))
        # user, oom, timeout: the user's budget
        err = out.error
        if isinstance(err, NonRecoverableError):
            return Decision(Action.FAIL, error=as_user_error(err, out.traceback))
        state.user_failures += 1
        if state.user_failures > self.retries:
            if self.retries == 0:
                last = as_user_error(err, out.traceback) if err is not None else RuntimeError(str(kind))
                return Decision(Action.FAIL, error=last)
            return Decision(
                Action.FAIL,
                error=exhausted(
                    as_user_error(err, out.traceback) if err is not None else RuntimeError(str(kind)),
                    state.history,
                    "user",
                    f"{self.name}: failed {state.user_failures} times; retries={self.retries} exhausted",
                ),
            )
        delay = self.strategy.delay(state.user_failures - 1) if self.strategy is not None else 0.0
        return Decision(Action.RETRY, delay=delay)
