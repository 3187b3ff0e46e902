"""Markets, outcome kinds, and the three records an attempt goes through.

* :class:`AttemptRequest` -- what the loop asks the executor to run (market, queue, limits);
* :class:`Outcome` -- what the executor observed (kind, value or error, node, times);
* :class:`AttemptRecord` -- the attempt as the call's history keeps it (``Run.history``).

Markets and kinds are ``str`` enums: they compare equal to (and print as) their plain string
values, which is what users see in ``ctx().market``, ``Run.history`` and tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple, Optional

__all__ = [
    "Market",
    "Kind",
    "AttemptRequest",
    "Outcome",
    "AttemptRecord",
    "format_history",
    "OUTCOME_NAMES",
    "NEVER_RAN",
]


class _StrEnum(str, Enum):
    # Python 3.10 has no enum.StrEnum: print and format as the plain value.
    __str__ = str.__str__
    __format__ = str.__format__  # type: ignore[assignment]  # format as the plain value


class Market(_StrEnum):
    """Where an attempt runs: preemptible capacity, or capacity that is not taken back."""

    SPOT = "spot"
    ONDEMAND = "ondemand"


class Kind(_StrEnum):
    """What happened to an attempt."""

    OK = "ok"
    USER = "user"  # the user's code raised
    OOM = "oom"
    CRASH = "crash"  # the worker died while the user's code ran on a live node (segfault, os._exit, kill)
    TIMEOUT = "timeout"  # max_runtime, or the call's deadline, passed
    SYSTEM = "system"  # the node was lost (preempted, drained, failed)
    QUEUED_TIMEOUT = "queued_timeout"  # the attempt could not start within max_queued_time
    SPOT_UNAVAILABLE = "spot_unavailable"  # no spot capacity within the spot wait (or none at all)
    INFEASIBLE = "infeasible"  # no node, live or launchable, offers what the attempt needs
    CANCELLED = "cancelled"  # the caller cancelled


#: Kinds that are no failure of anybody's: no budget is consumed.
_NO_FAILURE = frozenset({Kind.OK, Kind.QUEUED_TIMEOUT, Kind.SPOT_UNAVAILABLE, Kind.INFEASIBLE, Kind.CANCELLED})

#: Outcomes of attempts that never started: they resume nothing and lose nothing.
NEVER_RAN = frozenset({"queued_timeout", "spot_unavailable", "infeasible"})

#: ``AttemptRecord.outcome`` for each kind (system outcomes record their reason instead).
OUTCOME_NAMES = {
    Kind.OK: "succeeded",
    Kind.USER: "failed",
    Kind.OOM: "oom",
    Kind.CRASH: "worker_crash",
    Kind.TIMEOUT: "timeout",
    Kind.QUEUED_TIMEOUT: "queued_timeout",
    Kind.SPOT_UNAVAILABLE: "spot_unavailable",
    Kind.INFEASIBLE: "infeasible",
    Kind.CANCELLED: "cancelled",
}


class AttemptRequest(NamedTuple):
    """What the loop asks its executor to run next (a NamedTuple: made once per attempt on the
    hot path, where a frozen dataclass costs three times as much)."""

    attempt: int  # 0-based, every attempt
    user_attempt: int  # user failures before this attempt
    system_failures: int  # system failures before this attempt
    market: Market
    queue: str
    max_runtime: Optional[float]
    max_queued_time: Optional[float]
    deadline_left: Optional[float]  # seconds of the call's deadline left when the attempt starts
    spot_wait: Optional[float] = None  # a spot attempt's wait for capacity (None: no limit, or not spot)


@dataclass
class Outcome:
    """What happened to an attempt, as its executor observed it."""

    kind: Kind
    value: Any = None
    error: Optional[BaseException] = None
    traceback: str = ""
    node_id: str = ""
    started: Optional[float] = None
    ended: Optional[float] = None
    system_reason: str = ""  # "preemption" | "node_failure" for system outcomes
    missing: tuple = ()  # for queued_timeout: resources no node offers
    runtime: Optional[float] = None  # seconds the user's code ran (when the attempt reported it)
    notice: Optional[tuple] = None  # (seen at, deadline): the attempt's node was drained for preemption
    ckpt: Optional[tuple] = None  # (bytes saved, bytes restored, resumed from (save time), last saved at)


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
    # succeeded | failed | worker_crash | oom | timeout | preemption | node_failure | queued_timeout | cancelled
    outcome: str = "running"
    failure_kind: Optional[str] = None  # user | system | None
    error: str = ""
    runtime: Optional[float] = None  # seconds the user's code ran, measured on the worker
    notice_at: Optional[float] = None  # when a preemption notice for its node was seen (epoch seconds)
    notice_deadline: Optional[float] = None  # when that notice said the node would go (None: unknown)

    @property
    def duration(self) -> Optional[float]:
        if self.ended is None:
            return None
        return self.ended - (self.started or self.submitted)

    def finish(self, out: Outcome, now: float) -> None:
        """Record how the attempt ended."""
        self.ended = out.ended or now
        self.started = out.started or self.started
        if self.started is None and out.runtime is not None:
            # a plain Ray task reports no start; its user code ran `runtime` seconds before the end
            self.started = max(self.submitted, self.ended - out.runtime)
        self.node_id = out.node_id or self.node_id
        self.runtime = out.runtime
        if out.notice is not None:
            self.notice_at, self.notice_deadline = out.notice
        if out.kind is Kind.SYSTEM:
            self.outcome = out.system_reason or "node_failure"
            self.failure_kind = "system"
        else:
            self.outcome = OUTCOME_NAMES.get(out.kind, str(out.kind))
            self.failure_kind = None if out.kind in _NO_FAILURE else "user"
        if out.error is not None:
            self.error = f"{type(out.error).__name__}: {out.error}"[:2000]


def format_history(history: list[AttemptRecord], names: Optional[dict] = None, width: int = 60) -> str:
    """The attempt history as a plain-text table. ``names``: node id → readable name (a
    ``LocalCluster`` node name, a host name); unknown nodes show the id's first 12 characters.
    Errors wrap onto continuation lines (at most 4) rather than being cut mid-word."""
    import textwrap

    names = names or {}
    rows = [("#", "market", "node", "queue", "secs", "outcome", "kind", "error")]
    extra: dict[int, list[str]] = {}
    for r in history:
        d = r.duration
        err = textwrap.wrap(r.error or "", width=width, break_on_hyphens=False)
        if len(err) > 4:  # more than fits: say so on the last line shown
            err = err[:4]
            err[-1] = err[-1][: width - 1] + "…"
        rows.append(
            (
                str(r.attempt),
                str(r.market),
                names.get(r.node_id) or (r.node_id or "-")[:12],
                r.queue,
                f"{d:.2f}" if d is not None else "-",
                r.outcome,
                r.failure_kind or "-",
                err[0] if err else "",
            )
        )
        if len(err) > 1:
            extra[len(rows) - 1] = err[1:]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
        pad = " " * (sum(widths[:-1]) + 2 * (len(widths) - 1))
        lines.extend(pad + more for more in extra.get(n, []))
    return "\n".join(lines)
