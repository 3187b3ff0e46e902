"""How big a call's inputs are, roughly, without serialising them (pure).

Used to decide whether a call's inputs travel inline in every attempt's payload (small: Ray
inlines them into the task spec) or are put in Ray's object store once per call and passed by
reference (big: otherwise every attempt re-serialises and re-stores them).

Rules: a lower bound, cheap for the common case — a few scalars cost a few type checks. Counts
the buffers that dominate real payloads (``bytes``-like, ``str``, anything with an integer
``nbytes`` such as NumPy arrays and tensors, pandas objects through ``memory_usage``), through
lists, tuples, sets and dict values, looking at :data:`BUDGET` values at most; stops as soon as
the total passes the threshold asked about.
"""

from __future__ import annotations

from typing import Any

__all__ = ["at_least", "BUDGET"]

BUDGET = 512
_SCALARS = frozenset({int, float, bool, type(None), complex})
_CONTAINERS = (list, tuple, set, frozenset)


def _own_size(v: Any) -> int:
    if isinstance(v, (bytes, bytearray, str)):
        return len(v)
    if isinstance(v, memoryview):
        return v.nbytes
    n = getattr(v, "nbytes", None)
    if isinstance(n, int):
        return n
    mu = getattr(v, "memory_usage", None)  # pandas Series / DataFrame
    if callable(mu) and (hasattr(v, "columns") or hasattr(v, "dtype")):
        try:
            total = mu(deep=False)
            return int(total.sum()) if hasattr(total, "sum") else int(total)
        except Exception:  # noqa: BLE001 - not what it looked like: counted as small
            return 0
    return 0


def at_least(threshold: int, args: tuple, kwargs: dict) -> bool:
    """True when ``args`` and ``kwargs`` hold at least ``threshold`` bytes of buffers (see the
    module docstring: an estimate that never overcounts)."""
    total = 0
    stack: list = list(args)
    if kwargs:
        stack.extend(kwargs.values())
    seen = 0
    while stack and seen < BUDGET:
        v = stack.pop()
        seen += 1
        if v.__class__ in _SCALARS:
            continue
        if isinstance(v, _CONTAINERS):
            stack.extend(v)
            continue
        if isinstance(v, dict):
            stack.extend(v.values())
            continue
        total += _own_size(v)
        if total >= threshold:
            return True
    return False
