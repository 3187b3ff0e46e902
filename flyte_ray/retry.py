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

from ._duration import Duration, seconds

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
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f < 1:
            raise ValueError(f"Backoff.factor: expected a finite number >= 1 (1: constant delay), got {f!r}")
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
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ValueError(f"RetryStrategy.count: expected an int >= 0, got {self.count!r}")
        if self.backoff is not None and not isinstance(self.backoff, Backoff):
            raise TypeError(f"RetryStrategy.backoff: expected Backoff or None, got {self.backoff!r}")

    def delay(self, n: int) -> float:
        """Seconds to wait before retry ``n`` (0-based, as ``Backoff.compute_delay``)."""
        return self.backoff.seconds(n) if self.backoff else 0.0


def as_retry_strategy(value: Union[int, RetryStrategy, None], field_name: str = "retries") -> Optional[RetryStrategy]:
    """Normalise ``retries=``: an int means ``RetryStrategy(count)``; ``None`` stays None (inherit)."""
    if value is None or isinstance(value, RetryStrategy):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{field_name}: expected an int >= 0 or RetryStrategy, got {value!r}")
        return RetryStrategy(value)
    raise TypeError(f"{field_name}: expected an int >= 0 or RetryStrategy(count, backoff), got {value!r}")
