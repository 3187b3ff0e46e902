"""Methods callable both ways, the shape of flyte-sdk's ``@syncify``: ``obj.m(...)`` blocks and
``await obj.m.aio(...)`` is its async form.

Rules:

* :class:`sync_aio`: the plain call always blocks (what flytekit code expects), and ``.aio`` is a
  plain coroutine function that runs the same blocking implementation in a worker thread
  (``asyncio.to_thread``), so it never blocks the caller's event loop.
* :class:`sync_or_await`, for the few methods whose *name* two APIs use both ways
  (``Checkpoint.save``/``load``: flytekit calls them synchronously, flyte-sdk awaits them):
  called where no event loop runs in this thread, it blocks and returns the value; called on a
  running loop's thread (async code), it starts the same implementation in a worker thread *at
  once* and returns an asyncio future to await. The work never depends on being awaited: a save
  made from async code without ``await`` still completes (its result is just not waited for).
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


class quick_aio(sync_aio[T]):  # lower case: used like a decorator
    """Descriptor for a method that returns quickly and may start the embedded Ray
    (``RunContext.run``): ``.aio`` runs it on the calling thread, as :func:`with_aio` does for
    functions (see there why not in a worker thread)."""

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return _BoundQuick(self._fn, obj)


class _BoundQuick(BoundSyncAio[T]):
    __slots__ = ()

    async def aio(self, *args: Any, **kwargs: Any) -> T:
        return self._fn(self._obj, *args, **kwargs)


class sync_or_await(sync_aio[T]):  # lower case: used like a decorator
    """Descriptor: blocks outside an event loop, returns an awaitable future on one (module
    docstring). ``direct``: keyword arguments that, when truthy, make the call run directly
    either way (a call that returns at once by itself, e.g. a background save's handle)."""

    def __init__(self, fn: Callable[..., T], direct: tuple[str, ...] = ()):
        super().__init__(fn)
        self._direct = direct

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return _BoundSyncOrAwait(self._fn, obj, self._direct)


class _BoundSyncOrAwait(BoundSyncAio[T]):
    __slots__ = ("_direct",)

    def __init__(self, fn: Callable[..., T], obj: Any, direct: tuple[str, ...]):
        super().__init__(fn, obj)
        self._direct = direct

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self._fn(self._obj, *args, **kwargs)
        if any(kwargs.get(k) for k in self._direct):
            return self._fn(self._obj, *args, **kwargs)
        return loop.run_in_executor(None, functools.partial(self._fn, self._obj, *args, **kwargs))


def with_aio(fn: Callable[..., T]) -> Callable[..., T]:
    """Give the plain function ``fn`` an ``.aio`` attribute for async code (``flyte.init.aio``,
    ``flyte.run.aio``); ``fn`` itself stays a plain function.

    ``.aio`` runs ``fn`` on the calling thread, *not* in a worker thread: these may start the
    embedded Ray, whose processes Linux ties (parent-death signal) to the thread that spawned
    them, so starting it from a pool thread that later exits (``asyncio.run`` shuts its pool
    down) killed the cluster under the program. They return quickly (a run starts, it is not
    waited for)."""

    async def aio(*args: Any, **kwargs: Any) -> T:
        return fn(*args, **kwargs)

    aio.__doc__ = f"``{fn.__name__}`` from async code (runs on the calling thread: it returns quickly)."
    fn.aio = aio  # type: ignore[attr-defined]
    return fn


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
