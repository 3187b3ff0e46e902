"""``ReusePolicy``: how a reusable environment keeps warm replicas (a value type: no Ray, no I/O).

The replica machinery that acts on it lives in :mod:`flyte_ray.reuse`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Tuple, Union

from ._duration import MAX_COUNT, count, seconds, short_repr

__all__ = ["ReusePolicy"]


def _secs(v: Any, name: str) -> float:
    return seconds(v, f"ReusePolicy.{name}")


@dataclass(frozen=True)
class ReusePolicy:
    """Warm replicas for a reusable environment.

    Args:
        replicas: a fixed count, or ``(min, max)`` to scale with demand.
        idle_ttl: seconds a pool may sit unused before it is torn down.
        concurrency: calls one replica runs at once; > 1 needs async tasks.
        scaledown_ttl: seconds a replica above ``min`` may sit idle before it is removed.
    """

    replicas: Union[int, Tuple[int, int]] = 2
    idle_ttl: Union[int, float, timedelta] = 30
    concurrency: int = 1
    scaledown_ttl: Union[int, float, timedelta] = 30

    def __post_init__(self) -> None:
        r = self.replicas
        accepted = f"an int >= 1, or (min, max) with 0 <= min <= max, max >= 1 (at most {MAX_COUNT})"
        if isinstance(r, (tuple, list)):
            if len(r) != 2:
                raise ValueError(f"ReusePolicy.replicas: expected {accepted}; got {len(r)} items")
            lo = count(r[0], "ReusePolicy.replicas (min)", accepted=accepted)
            hi = count(r[1], "ReusePolicy.replicas (max)", accepted=accepted)
            if hi < max(1, lo):
                raise ValueError(f"ReusePolicy.replicas: expected {accepted}; got {short_repr(r)}")
            object.__setattr__(self, "replicas", (lo, hi))
        else:
            count(r, "ReusePolicy.replicas", lo=1, accepted=accepted)
        count(self.concurrency, "ReusePolicy.concurrency", lo=1)
        object.__setattr__(self, "idle_ttl", _secs(self.idle_ttl, "idle_ttl"))
        object.__setattr__(self, "scaledown_ttl", _secs(self.scaledown_ttl, "scaledown_ttl"))

    @property
    def min_replicas(self) -> int:
        return self.replicas[0] if isinstance(self.replicas, tuple) else self.replicas

    @property
    def max_replicas(self) -> int:
        return self.replicas[1] if isinstance(self.replicas, tuple) else self.replicas
