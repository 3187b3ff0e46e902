"""Durations given by users: seconds (int/float) or a ``timedelta``, validated in one place.

Every value type that takes a duration (``Backoff``, ``Timeout``, ``ReusePolicy``) parses it
here, so each accepts the same forms and rejects the same mistakes (a bool, a string, a negative,
infinite or NaN value, more than ``timedelta`` can hold) with an error naming the field.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Union

__all__ = ["Duration", "seconds"]

Duration = Union[int, float, timedelta]
# timedelta's own range ends at 999,999,999 days; a longer duration is a mistake, not a policy.
_MAX_SECONDS = timedelta.max.total_seconds()


def seconds(value: Any, field_name: str) -> float:
    """``value`` in seconds; ``TypeError`` / ``ValueError`` naming ``field_name`` and the forms."""
    if isinstance(value, timedelta):
        s = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        s = float(value)
    else:
        raise TypeError(f"{field_name}: expected seconds (int/float) or a timedelta, got {value!r}")
    if not math.isfinite(s) or s < 0 or s > _MAX_SECONDS:
        raise ValueError(f"{field_name}: expected a finite duration >= 0 seconds, got {value!r}")
    return s
