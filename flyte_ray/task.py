"""``TaskTemplate``: a function made into a task by ``@env.task``.

Calling a task runs it on Ray (``task(x)``: a sync task returns its value, an async task an
awaitable); ``task.aio(x)`` is always awaitable; ``task.forward(x)`` calls the plain function
in-process; ``task.override(...)`` returns a copy with invocation-level settings.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional

from ._controller.controller import get_controller
from ._core.call import Call
from ._core.spec import CallSpec, resolve
from ._core.validation import normalize
from .context import block_overrides, ctx, current_settings
from .runtime import ensure_init

if TYPE_CHECKING:
    from .environment import TaskEnvironment

__all__ = ["TaskTemplate"]

#: flyte-sdk override keywords with no meaning on Ray: accepted and ignored.
_IGNORED = ("max_inline_io_bytes", "pod_template", "links", "entrypoint", "produces_artifacts", "plugin_config")
_OVERRIDABLE = (
    "short_name",
    "resources",
    "cache",
    "retries",
    "timeout",
    "reusable",
    "env_vars",
    "secrets",
    "queue",
    "interruptible",
)
_FORBIDDEN = {
    "name": "the task's name is its identity",
    "image": "the image belongs to the environment",
    "docs": "docs come from the function",
    "interface": "the interface comes from the function's signature",
}


def new_run_name() -> str:
    return "r" + os.urandom(6).hex()  # 48 random bits, as uuid4().hex[:12], at a fifth of the cost


class TaskTemplate:
    """A task: a function plus the settings its calls run with. Made by ``@env.task``."""

    def __init__(
        self,
        env: "TaskEnvironment",
        func: Callable[..., Any],
        short_name: Optional[str] = None,
        report: bool = False,
        docs: Optional[str] = None,
        decorator: Optional[Mapping[str, Any]] = None,
        overrides: Optional[Mapping[str, Any]] = None,
        origin: Optional["TaskTemplate"] = None,
    ) -> None:
        self.env = env
        self.func = func
        self.name = f"{env.name}.{func.__name__}"
        self.short_name = short_name or func.__name__
        if self.short_name != func.__name__:  # an explicit short name
            normalize("short_name", self.short_name, self.name)
        elif not (func.__name__.isidentifier() or func.__name__ == "<lambda>"):
            raise ValueError(
                f"{self.name}: the function's name {func.__name__!r} cannot be part of a call id; "
                "pass short_name=... (ASCII letters, digits, '_', '-', '.')"
            )
        self.report = report
        self.docs = docs or inspect.getdoc(func)
        self.is_async = inspect.iscoroutinefunction(func)
        self._origin = origin
        where = f"{self.name} (@task)"
        self._decorator = {k: normalize(k, v, where) for k, v in (decorator or {}).items() if v is not None}
        self._overrides: Dict[str, Any] = dict(overrides or {})
        self._spec: Optional[CallSpec] = None
        #: caches of the layers below that depend only on this task (its remote function, its
        #: pickled form), generation-stamped: see flyte_ray._core.process
        self.memo: dict = {}
        self._signature = inspect.signature(func)
        params = self._signature.parameters.values()
        # Arity when every parameter is plain positional-or-keyword without a default: a call with
        # exactly that many positional arguments binds without inspect (~5 us on the hot path).
        self._n_plain = (
            len(params) if all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params) else -1
        )
        functools.update_wrapper(self, func)

    # ------------------------------------------------------------------ settings
    @property
    def spec(self) -> CallSpec:
        """The resolved settings of a call made with no run context (cached: tasks are immutable)."""
        s = self._spec
        if s is None:
            s = self._spec = resolve(self)
        return s

    @property
    def interruptible(self) -> bool:
        return self.spec.interruptible

    @property
    def queue(self) -> Optional[str]:
        return self.spec.queue

    @property
    def retries(self) -> int:
        return self.spec.retries.count if self.spec.retries else 0

    def override(self, **changes: Any) -> "TaskTemplate":
        """A copy of this task with invocation-level settings; the most specific level wins.

        Accepted: ``short_name, resources, cache, retries, timeout, reusable, env_vars, secrets,
        queue, interruptible``. ``None`` leaves a setting inherited; any other value applies
        (so ``retries=0`` and ``interruptible=False`` take effect). ``name``, ``image``, ``docs``
        and ``interface`` cannot be overridden (``ValueError``); flyte-sdk's
        ``max_inline_io_bytes``, ``pod_template``, ``links``, ``entrypoint``,
        ``produces_artifacts`` and ``plugin_config`` are accepted and ignored. On a reusable environment,
        ``resources``, ``env_vars`` and ``secrets`` can only change together with
        ``reusable="off"``.
        """
        changes = {k: v for k, v in changes.items() if k not in _IGNORED}
        for k in changes:
            if k in _FORBIDDEN:
                raise ValueError(f"{self.name}.override: '{k}' cannot be overridden ({_FORBIDDEN[k]})")
            if k not in _OVERRIDABLE:
                raise TypeError(f"{self.name}.override: unknown setting {k!r}; accepted: {', '.join(_OVERRIDABLE)}")
        where = f"{self.name}.override"
        norm = {k: normalize(k, v, where) for k, v in changes.items() if v is not None}
        merged = {**self._overrides, **norm}
        reusable = merged.get("reusable", self.env.reusable)
        if reusable is not None and reusable != "off":
            touched = [k for k in ("resources", "env_vars", "secrets") if k in norm]
            if touched:
                raise ValueError(
                    f"{where}: {', '.join(touched)} cannot change on a reusable environment "
                    f"({self.env.name}) because warm replicas are shared; pass reusable='off' too "
                    f"to run this call outside the replica pool"
                )
        short_name = merged.pop("short_name", None) or self.short_name
        if reusable is not None and reusable != "off" and reusable.concurrency > 1 and not self.is_async:
            raise ValueError(
                f"{where}.reusable: ReusePolicy.concurrency={reusable.concurrency} needs an async task (async def)"
            )
        return TaskTemplate(
            self.env, self.func, short_name, self.report, self.docs, self._decorator, merged, self._origin or self
        )

    # ------------------------------------------------------------------ calling
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task on Ray: returns the value (sync task) or an awaitable (async task)."""
        call = self._make_call(args, kwargs)
        if self.is_async:
            return get_controller().submit(call)
        return get_controller().submit_sync(call)

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task on Ray and return an awaitable, for sync and async tasks alike.

        The call's identity is fixed now, when ``aio`` is called, so ``asyncio.gather`` over
        ``[t.aio(i) for i in ...]`` numbers children in list order.
        """
        return get_controller().submit(self._make_call(args, kwargs))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the plain function in this process (no Ray, no retries)."""
        return self.func(*args, **kwargs)

    def _make_call(
        self,
        args: tuple,
        kwargs: dict,
        overrides: Optional[Mapping[str, Any]] = None,
        run_name: Optional[str] = None,
    ) -> Call:
        """One call of this task: its spec, identity in the run, settings. ``overrides`` and
        ``run_name`` come from ``with_runcontext``; inside a task, the parent's run applies."""
        if kwargs or len(args) != self._n_plain:
            try:
                self._signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{self.name}{self._signature}: {e}") from None
        ensure_init()
        parent = ctx()
        if overrides is None and parent is not None:
            overrides = parent.run_overrides  # run-level settings reach every call in the run
        overrides = block_overrides(overrides)  # an open custom_context block (flyte_ray.custom_context)
        spec = resolve(self, overrides) if overrides else self.spec
        if parent is not None:
            return Call(
                self,
                spec,
                parent.run_name,
                parent.next_child_id(self.short_name),
                args,
                kwargs,
                parent.settings or current_settings(),
                overrides,
            )
        return Call(self, spec, run_name or new_run_name(), "root", args, kwargs, current_settings(), overrides)

    def __flyte_ray_cache_key__(self) -> str:
        """A task passed as an input counts in a cache key by its name and its code's version
        (the cached caller reruns when the task it was given changes)."""
        from .cache.keys import cache_version

        return f"{self.name}:{cache_version(self.func)}"

    # ------------------------------------------------------------------ pickling
    def __reduce__(self):
        """Travel by reference (module + name) when the task is importable, else by value.

        By reference, a worker imports the user's module as-is, so module-level state
        (locks, clients, ContextVars) is never pickled; tasks defined in ``__main__`` or a
        notebook travel by value, as Ray ships such functions.
        """
        origin = self._origin or self
        ref = _importable(origin)
        if ref is not None:
            return (_load_task, (ref[0], ref[1], self.short_name, self._overrides))
        return (
            _rebuild_task,
            (self.env, self.func, self.short_name, self.report, self.docs, self._decorator, self._overrides),
        )

    def __repr__(self) -> str:
        return f"<task {self.name}{' (async)' if self.is_async else ''}>"


def _importable(task: TaskTemplate) -> Optional[tuple[str, str]]:
    mod_name = task.func.__module__
    qual = task.func.__qualname__
    if mod_name == "__main__" or "<locals>" in qual:
        return None
    mod = sys.modules.get(mod_name)
    obj: Any = mod
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    return (mod_name, qual) if obj is task else None


def _load_task(module: str, qualname: str, short_name: str, overrides: Mapping[str, Any]) -> TaskTemplate:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not overrides and short_name == obj.short_name:
        return obj
    return TaskTemplate(obj.env, obj.func, short_name, obj.report, obj.docs, obj._decorator, overrides, obj)


def _rebuild_task(env, func, short_name, report, docs, decorator, overrides) -> TaskTemplate:
    return TaskTemplate(env, func, short_name, report, docs, decorator, overrides)
