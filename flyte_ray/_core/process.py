"""Per-process state, in one object with one ``reset()``.

flyte-ray keeps a little state per process: the cluster view, the supervising actor's handle,
replica pool clients, the worker's node id, the driver's settings. Each concern keeps its state
in one *part*: an instance of a class with a ``reset()`` method, created on first use and owned
by :data:`PROCESS`. ``flyte_ray.shutdown()`` calls :meth:`ProcessState.reset`, which resets every
part (in ``reset_order``, lowest first: replica pools go while Ray is still connected) and bumps
:attr:`ProcessState.generation`.

Rules:

* a part instance lives as long as the process: ``reset()`` empties it, so a reference held by
  another object (the controller holds its parts) never goes stale;
* caches that belong to one task or one resolved spec hang off that object (``CallSpec.memo``,
  ``TaskTemplate.memo``) and are stamped with the generation they were made in
  (:func:`memo_get` / :func:`memo_put`), so a reset invalidates them without knowing them;
* nothing else in flyte-ray keeps mutable module-level state.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Protocol, TypeVar

__all__ = ["Part", "ProcessState", "PROCESS", "memo_get", "memo_put"]

T = TypeVar("T")


class Part(Protocol):
    """A concern's per-process state."""

    reset_order: int  # lower resets first

    def reset(self) -> None: ...


class ProcessState:
    """Every part of this process's flyte-ray state; see the module docstring."""

    def __init__(self) -> None:
        self._parts: dict[type, Any] = {}
        self._lock = threading.RLock()  # a part's constructor may ask for the parts it uses
        self.generation = 0

    def part(self, cls: Callable[[], T]) -> T:
        """The process's instance of part class ``cls`` (made on first use)."""
        p = self._parts.get(cls)  # type: ignore[call-overload]
        if p is None:
            with self._lock:
                p = self._parts.get(cls)  # type: ignore[call-overload]
                if p is None:
                    p = self._parts[cls] = cls()  # type: ignore[index]
        return p

    def reset(self) -> None:
        """Reset every part (lowest ``reset_order`` first) and invalidate generation-stamped memos."""
        with self._lock:
            parts = sorted(self._parts.values(), key=lambda p: getattr(p, "reset_order", 50))
            self.generation += 1
        errors = []
        for p in parts:
            try:
                p.reset()
            except Exception as e:  # noqa: BLE001 - one part failing must not keep the others' state
                errors.append(f"{type(p).__name__}: {e}")
        if errors:
            raise RuntimeError("flyte-ray: resetting process state failed for " + "; ".join(errors))


#: This process's state.
PROCESS = ProcessState()

_MISSING = object()


def memo_get(memo: dict, key: Any) -> Optional[Any]:
    """``memo[key]`` if it was stored in the current generation, else None."""
    hit = memo.get(key, _MISSING)
    if hit is _MISSING or hit[0] != PROCESS.generation:
        return None
    return hit[1]


def memo_put(memo: dict, key: Any, value: T, limit: int = 256) -> T:
    """Store ``value`` under ``key`` for the current generation (the memo is bounded: cleared
    when it would grow past ``limit`` entries)."""
    if len(memo) >= limit and key not in memo:
        memo.clear()
    memo[key] = (PROCESS.generation, value)
    return value
