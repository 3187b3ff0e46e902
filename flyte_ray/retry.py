"""User retry policy: ``RetryStrategy`` and ``Backoff`` (value types: no Ray, no I/O).

These budget *user* failures only (exceptions, OOM, timeouts). Losing a node is a *system*
failure with its own budget (``init(system_retries=...)``) and never consumes ``retries``.

Semantics follow flyte-sdk's ``flyte.Backoff``: ``base`` and ``cap`` take seconds (int/float) or a
``timedelta``, ``factor >= 1``, and retries are counted from 0: the first retry waits ``base``,
retry ``n`` waits ``min(base * factor**n, cap)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional, Union

from ._duration import MAX_COUNT, Duration, seconds, short_repr
from ._duration import count as _count

__all__ = ["RetryStrategy", "Backoff", "as_retry_strategy"]


def _duration(value: Duration, field_name: str) -> timedelta:
    s = seconds(value, field_name)
    return value if isinstance(value, timedelta) else timedelta(seconds=s)


@dataclass(frozen=True)
class Backoff:
    """Delay between user retries: retry ``n`` (0-based) waits ``min(base * factor**n, cap)``.

    Args:
        base: delay before the first retry: seconds or a ``timedelta`` (stored as ``timedelta``,
            as flyte-sdk does).
        factor: per-retry multiplier, a finite number >= 1 (1: a constant delay).
        cap: upper bound of the delay; required when ``factor > 1``.
    """

    base: Duration
    factor: float = 1.0
    cap: Optional[Duration] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", _duration(self.base, "Backoff.base"))
        f = self.factor
        accepted = "a finite number >= 1 (1: constant delay)"
        if isinstance(f, bool) or not isinstance(f, (int, float)):
            raise TypeError(f"Backoff.factor: expected {accepted}, got {type(f).__name__} {short_repr(f)}")
        try:
            ok = math.isfinite(f) and f >= 1
        except OverflowError:  # an int beyond a float's range
            ok = False
        if not ok:
            raise ValueError(f"Backoff.factor: expected {accepted}, got {short_repr(f)}")
        if self.cap is not None:
            object.__setattr__(self, "cap", _duration(self.cap, "Backoff.cap"))
        elif f > 1:
            raise ValueError("Backoff.cap: required when factor > 1 (e.g. Backoff(base=1, factor=2, cap=60))")

    def seconds(self, n: int) -> float:
        """Seconds to wait before retry ``n`` (0 for the first retry)."""
        if n < 0:
            raise ValueError(f"retry index n must be >= 0, got {n}")
        base = self.base.total_seconds()  # type: ignore[union-attr]
        cap = self.cap.total_seconds() if self.cap is not None else None  # type: ignore[union-attr]
        if base == 0:
            return 0.0  # (0 * an overflowing factor**n would otherwise read as the cap)
        try:
            d = base * (float(self.factor) ** n)
        except OverflowError:
            d = math.inf
        return min(d, cap) if cap is not None else d

    def compute_delay(self, n: int) -> timedelta:
        """flyte-sdk's name: the delay before retry ``n`` (0-based) as a ``timedelta``."""
        return timedelta(seconds=self.seconds(n))


@dataclass(frozen=True)
class RetryStrategy:
    """``count`` user retries (so ``count + 1`` attempts at most), with an optional backoff."""

    count: int
    backoff: Optional[Backoff] = None

    def __post_init__(self) -> None:
        _count(self.count, "RetryStrategy.count")
        if self.backoff is not None and not isinstance(self.backoff, Backoff):
            raise TypeError(
                f"RetryStrategy.backoff: expected Backoff(base, factor, cap) or None, got {type(self.backoff).__name__}"
            )

    def delay(self, n: int) -> float:
        """Seconds to wait before retry ``n`` (0-based, as ``Backoff.compute_delay``)."""
        return self.backoff.seconds(n) if self.backoff else 0.0


def as_retry_strategy(value: Union[int, RetryStrategy, None], field_name: str = "retries") -> Optional[RetryStrategy]:
    """Normalise ``retries=``: an int means ``RetryStrategy(count)``; ``None`` stays None (inherit)."""
    if value is None or isinstance(value, RetryStrategy):
        return value
    n = _count(value, field_name, accepted=f"an int >= 0 (at most {MAX_COUNT}) or RetryStrategy(count, backoff)")
    return RetryStrategy(n)
