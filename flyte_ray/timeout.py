"""Time limits: ``Timeout(max_runtime, max_queued_time, deadline)``.

``max_runtime`` and ``max_queued_time`` apply to each attempt; ``deadline`` spans all attempts
of one call. An int, float or ``timedelta`` given where a timeout is expected means
``max_runtime``; ``0`` means no limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Optional, Union, cast

from ._duration import seconds, short_repr

__all__ = ["Timeout", "TimeoutType", "as_timeout"]

Seconds = Union[int, float, timedelta]
_Limits = tuple[Optional[float], Optional[float], Optional[float]]


def _seconds(value: Optional[Seconds], field_name: str) -> Optional[float]:
    if value is None:
        return None
    return seconds(value, field_name) or None  # 0 means "no limit"


@dataclass(frozen=True)
class Timeout:
    """Per-attempt and per-call time limits (seconds or ``timedelta``).

    Args:
        max_runtime: an attempt running longer is cancelled and fails with ``TaskTimeoutError``
            (a user failure: it consumes a retry).
        max_queued_time: an attempt that cannot start this long: a spot attempt moves to
            on-demand capacity; an on-demand one fails with ``PlacementError`` naming what is missing.
        deadline: wall-clock budget for the whole call, all attempts and backoffs included.
    """

    max_runtime: Optional[Seconds] = None
    max_queued_time: Optional[Seconds] = None
    deadline: Optional[Seconds] = None

    def __post_init__(self) -> None:
        for name in ("max_runtime", "max_queued_time", "deadline"):
            object.__setattr__(self, name, _seconds(getattr(self, name), f"Timeout.{name}"))

    def limits(self) -> _Limits:
        """``(max_runtime, max_queued_time, deadline)`` in seconds (None: no limit)."""
        # __post_init__ stored seconds (or None) in every field, whatever form was given.
        return cast(_Limits, (self.max_runtime, self.max_queued_time, self.deadline))

    @property
    def is_set(self) -> bool:
        return any((self.max_runtime, self.max_queued_time, self.deadline))


TimeoutType = Union[Timeout, int, float, timedelta]


def as_timeout(value: Optional[TimeoutType], field_name: str = "timeout") -> Optional[Timeout]:
    """Normalise ``timeout=``: a number or timedelta means ``Timeout(max_runtime=value)``."""
    if value is None or isinstance(value, Timeout):
        return value
    if isinstance(value, (int, float, timedelta)) and not isinstance(value, bool):
        return Timeout(max_runtime=_seconds(value, field_name))
    raise TypeError(
        f"{field_name}: expected seconds (int/float), a timedelta or Timeout(...), "
        f"got {type(value).__name__} {short_repr(value)}"
    )
