"""User retry policy: ``RetryStrategy`` and ``Backoff``.

These budget *user* failures only (exceptions, OOM, timeouts). Losing a node is a *system*
failure with its own budget (``init(system_retries=...)``) and never consumes ``retries``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

__all__ = ["RetryStrategy", "Backoff", "as_retry_strategy"]


@dataclass(frozen=True)
class Backoff:
    """Delay before user retry ``n`` (1-based): ``min(base * factor**n, cap)`` seconds.

    ``cap`` is required when ``factor > 1`` so delays cannot grow without bound.
    """

    base: float
    factor: float = 1.0
    cap: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("base", "factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"Backoff.{name}: expected a number >= 0, got {v!r}")
        if self.cap is not None and (isinstance(self.cap, bool) or not isinstance(self.cap, (int, float))
                                     or self.cap < 0):
            raise ValueError(f"Backoff.cap: expected a number >= 0 or None, got {self.cap!r}")
        if self.factor > 1 and self.cap is None:
            raise ValueError("Backoff.cap: required when factor > 1 (e.g. Backoff(base=1, factor=2, cap=60))")

    def delay(self, n: int) -> float:
        """Seconds to wait before retry number ``n`` (1 for the first retry)."""
        d = self.base * (self.factor ** n)
        return min(d, self.cap) if self.cap is not None else d


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
        return self.backoff.delay(n) if self.backoff else 0.0


def as_retry_strategy(value: Union[int, RetryStrategy, None], field_name: str = "retries") -> Optional[RetryStrategy]:
    """Normalise ``retries=``: an int means ``RetryStrategy(count)``; ``None`` stays None (inherit)."""
    if value is None or isinstance(value, RetryStrategy):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{field_name}: expected an int >= 0 or RetryStrategy, got {value!r}")
        return RetryStrategy(value)
    raise TypeError(f"{field_name}: expected an int >= 0 or RetryStrategy(count, backoff), got {value!r}")
