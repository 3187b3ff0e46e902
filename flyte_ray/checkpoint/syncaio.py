"""Methods callable both ways, the shape of flyte-sdk's ``@syncify``: ``obj.m(...)`` blocks and
``await obj.m.aio(...)`` is its async form.

Rules: no awaitable-detection magic -- the plain call always blocks (what flytekit code expects),
and ``.aio`` is a plain coroutine function that runs the same blocking implementation in a worker
thread (``asyncio.to_thread``), so it never blocks the caller's event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class BoundSyncAio(Generic[T]):
    """A bound method callable synchronously, with ``.aio(...)`` as its awaitable form."""

    __slots__ = ("_fn", "_obj")

    def __init__(self, fn: Callable[..., T], obj: Any):
        self._fn = fn
        self._obj = obj

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self._fn.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        return self._fn(self._obj, *args, **kwargs)

    def aio(self, *args: Any, **kwargs: Any) -> Awaitable[T]:
        """Run the blocking implementation in a worker thread and await it."""
        return asyncio.to_thread(self._fn, self._obj, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<sync+aio method {self._fn.__qualname__} of {self._obj!r}>"


class sync_aio(Generic[T]):  # lower case: used like a decorator
    """Descriptor: ``obj.m(...)`` blocks, ``await obj.m.aio(...)`` is async (like ``flyte.syncify``)."""

    def __init__(self, fn: Callable[..., T]):
        self._fn = fn
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return BoundSyncAio(self._fn, obj)


class SyncAioFunction(Generic[T]):
    """A module-level function callable both ways: ``f(...)`` blocks, ``await f.aio(...)`` runs
    it in a worker thread (flyte-sdk's module functions such as ``flyte.report.flush``)."""

    def __init__(self, fn: Callable[..., T]):
        self._fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        return self._fn(*args, **kwargs)

    def aio(self, *args: Any, **kwargs: Any) -> Awaitable[T]:
        """Run the blocking implementation in a worker thread and await it."""
        return asyncio.to_thread(self._fn, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<sync+aio function {self._fn.__qualname__}>"
