"""Durations and counts given by users, validated in one place.

Every value type that takes a duration (``Backoff``, ``Timeout``, ``ReusePolicy``, ``init``'s
``inline_under``) parses it with :func:`seconds`, and every count (retries, replicas,
concurrency, ``init``'s budgets) goes through :func:`count`, so each accepts the same forms and
rejects the same mistakes with an error naming the field and the accepted forms: ``TypeError``
for a wrong type (a bool where a number is expected, a string), ``ValueError`` for a wrong value
(negative, infinite or NaN, out of range).

Bounds: a duration is at most :data:`MAX_SECONDS` (100 years: longer is a mistake, not a policy,
and Python's own waits cannot express much more: ``threading`` caps a wait at ~292 years); a
count is at most :data:`MAX_COUNT` (a million retries, replicas or concurrent calls is a typo,
and a value that large would only pend or be cut short deep inside Ray).
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Optional, Union

__all__ = ["Duration", "MAX_COUNT", "MAX_SECONDS", "count", "seconds", "short_repr"]

Duration = Union[int, float, timedelta]
#: the longest accepted duration, in seconds (100 years)
MAX_SECONDS = 100 * 365.25 * 86400.0
#: the largest accepted count
MAX_COUNT = 1_000_000


def seconds(value: Any, field_name: str) -> float:
    """``value`` in seconds; ``TypeError`` / ``ValueError`` naming ``field_name`` and the forms."""
    if isinstance(value, timedelta):
        s = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            s = float(value)
        except OverflowError:  # an int beyond a float's range
            s = math.inf
    else:
        raise TypeError(
            f"{field_name}: expected seconds (int/float) or a timedelta, got {type(value).__name__} {short_repr(value)}"
        )
    if not math.isfinite(s) or s < 0 or s > MAX_SECONDS:
        raise ValueError(
            f"{field_name}: expected a finite duration >= 0 seconds and at most {MAX_SECONDS:.0f} "
            f"(100 years), got {short_repr(value)}"
        )
    return s


def count(value: Any, field_name: str, lo: int = 0, hi: int = MAX_COUNT, accepted: Optional[str] = None) -> int:
    """``value`` as an int in ``[lo, hi]``; a bool or any other type is a ``TypeError``."""
    accepted = accepted or f"an int >= {lo} (at most {hi})"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field_name}: expected {accepted}, got {type(value).__name__} {short_repr(value)}")
    if not lo <= value <= hi:
        raise ValueError(f"{field_name}: expected {accepted}, got {short_repr(value)}")
    return int(value)


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a huge int or string stays readable)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"{'-' if value < 0 else ''}an int of {value.bit_length()} bits"
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."
