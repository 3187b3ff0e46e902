"""``TaskEnvironment``: shared settings for a group of tasks, and the ``@env.task`` decorator."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, TypeVar, Union, overload

from ._core.validation import masked, normalize, secrets_repr
from ._duration import short_repr
from .cache_policy import CacheRequest
from .resources import Resources
from .retry import RetryStrategy
from .reuse_policy import ReusePolicy
from .timeout import TimeoutType

__all__ = ["TaskEnvironment"]

F = TypeVar("F", bound=Callable[..., Any])
#: flyte-sdk ``env.task`` keywords with no meaning on Ray: accepted and ignored.
_TASK_IGNORED = ("pod_template", "links", "max_inline_io_bytes", "entrypoint", "produces_artifacts", "task_resolver")
_NAME_RE = re.compile(r"[a-z0-9]+(?:[_-][a-z0-9]+)*", re.ASCII)


def _opaque(value: Any) -> str:
    """A recorded-only object (image, pod template) as a repr shows it: a string as itself,
    anything else by its type and name (its own repr may carry env vars)."""
    if value is None or isinstance(value, str):
        return repr(value)
    name = getattr(value, "name", None)
    return f"<{type(value).__name__}{f' {name!r}' if isinstance(name, str) else ''}>"


@dataclass
class TaskEnvironment:
    """Settings shared by a group of tasks; define tasks with ``@env.task``.

    Example::

        env = flyte_ray.TaskEnvironment(
            name="training",
            resources=flyte_ray.Resources(cpu=2, memory="4Gi", gpu="A100:1"),
            interruptible=True,          # attempts may run on spot capacity
            queue="gpu-pool",            # only on nodes declaring queue:gpu-pool
        )

        @env.task(retries=3, timeout=3600)
        def train(epochs: int) -> float: ...

    Args:
        name: snake_case or kebab-case (lowercase letters, digits, ``_``/``-``); tasks are
            named ``"<name>.<function>"``.
        resources: requests for every attempt (see :class:`Resources`).
        env_vars: environment variables set in every attempt's worker (a Ray runtime_env).
        secrets: recorded for compatibility with flyte-sdk; flyte-ray does not inject secrets:
            use your cluster's own mechanism (env vars, instance roles).
        cache: ``"auto"``, ``"override"``, ``"disable"`` (default) or ``Cache(...)``.
        reusable: ``ReusePolicy(...)`` to keep warm replicas between calls.
        interruptible: allow attempts on spot capacity (the final attempt of the user budget
            always runs on on-demand capacity).
        queue: the queue whose nodes run these tasks (nodes declare ``queue:<name>``).
        image: recorded only: on Ray the cluster's image (or a runtime_env) provides the code.
        depends_on: other environments this one depends on (recorded).
        description: free text (at most 255 characters).
        pod_template: recorded for flyte-sdk compatibility; Ray has no pods (use runtime_env /
            the cluster config instead).
        include: recorded (flyte-sdk bundles these files with the code); on Ray ship them with
            ``init(runtime_env={"working_dir": ...})`` or ``{"py_modules": [...]}``.
        plugin_config: recorded only (flyte-sdk backend plugins: Spark, Ray jobs, ... do not apply
            when the tasks already run on Ray).
    """

    name: str
    resources: Optional[Resources] = None
    env_vars: Optional[Dict[str, str]] = None
    secrets: Any = None
    cache: CacheRequest = "disable"
    reusable: Optional[ReusePolicy] = None
    interruptible: bool = False
    queue: Optional[str] = None
    image: Any = None
    depends_on: Sequence["TaskEnvironment"] = ()
    description: Optional[str] = None
    pod_template: Any = None
    include: Sequence[str] = ()
    plugin_config: Any = None
    _tasks: Dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    _norm: Dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"TaskEnvironment.name: expected a string, got {type(self.name).__name__}")
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError(
                f"TaskEnvironment.name: expected snake_case or kebab-case (lowercase letters, digits, "
                f"'_' or '-', e.g. 'my_env' or 'my-env'), got {short_repr(self.name)}"
            )
        if self.description is not None:
            if not isinstance(self.description, str):
                raise TypeError(
                    f"TaskEnvironment.description: expected a string or None, got {type(self.description).__name__}"
                )
            if len(self.description) > 255:
                raise ValueError("TaskEnvironment.description: expected a string of at most 255 characters")
        if not isinstance(self.interruptible, bool):
            raise TypeError(
                f"TaskEnvironment.interruptible: expected True or False, got {type(self.interruptible).__name__}"
            )
        if isinstance(self.reusable, str) and self.reusable == "off":
            raise ValueError(
                "TaskEnvironment.reusable: expected ReusePolicy(...) or None ('off' is only for task.override)"
            )
        if isinstance(self.depends_on, (str, bytes, Mapping)) or not isinstance(self.depends_on, Iterable):
            raise TypeError(
                f"TaskEnvironment.depends_on: expected a sequence of TaskEnvironment objects, "
                f"got {type(self.depends_on).__name__}"
            )
        self.depends_on = tuple(self.depends_on)
        if isinstance(self.include, str) or not isinstance(self.include, Iterable):
            raise TypeError(
                f"TaskEnvironment.include: expected a sequence of file paths, got {type(self.include).__name__}"
            )
        self.include = tuple(self.include)
        for dep in self.depends_on:
            if not isinstance(dep, TaskEnvironment):
                raise TypeError(
                    f"TaskEnvironment.depends_on: expected TaskEnvironment objects, got {type(dep).__name__}"
                )
        for name in ("resources", "env_vars", "secrets", "cache", "reusable", "interruptible", "queue"):
            self._norm[name] = normalize(name, getattr(self, name), "TaskEnvironment")

    def __repr__(self) -> str:
        # env_vars values, secrets and whatever an image or pod template records may be secret:
        # names only (see flyte_ray._core.validation).
        shown = {
            "name": repr(self.name),
            "resources": repr(self.resources),
            "env_vars": repr(masked(self.env_vars)),
            "secrets": secrets_repr(self.secrets),
            "cache": repr(self.cache),
            "reusable": repr(self.reusable),
            "interruptible": repr(self.interruptible),
            "queue": repr(self.queue),
            "image": _opaque(self.image),
            "depends_on": repr(tuple(d.name for d in self.depends_on)),
            "description": repr(self.description),
            "pod_template": _opaque(self.pod_template),
            "include": repr(tuple(self.include)),
            "plugin_config": _opaque(self.plugin_config),
        }
        return f"TaskEnvironment({', '.join(f'{k}={v}' for k, v in shown.items())})"

    def __getstate__(self) -> Dict[str, Any]:
        # Tasks point back at their environment; pickling the registry too would recurse.
        state = dict(self.__dict__)
        state["_tasks"] = {}
        return state

    def _values(self) -> Dict[str, Any]:
        return self._norm

    @property
    def tasks(self) -> Dict[str, Any]:
        """The tasks defined in this environment, by fully qualified name."""
        return dict(self._tasks)

    def clone_with(self, name: str, **changes: Any) -> "TaskEnvironment":
        """A copy of this environment named ``name``, with ``changes`` applied (no tasks copied).

        Unknown keywords raise ``TypeError``.
        """
        allowed = {f.name for f in fields(self) if f.init} - {"name"}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise TypeError(
                f"clone_with: unknown field(s) {', '.join(unknown)}; accepted: {', '.join(sorted(allowed))}"
            )
        return replace(self, name=name, **changes)

    @overload
    def task(self, _func: F) -> Any: ...

    @overload
    def task(
        self,
        *,
        short_name: Optional[str] = None,
        cache: Optional[CacheRequest] = None,
        retries: Union[int, RetryStrategy] = 0,
        timeout: Optional[TimeoutType] = 0,
        interruptible: Optional[bool] = None,
        queue: Optional[str] = None,
        report: bool = False,
        docs: Optional[str] = None,
    ) -> Callable[[F], Any]: ...

    def task(
        self,
        _func: Optional[F] = None,
        *,
        short_name: Optional[str] = None,
        cache: Optional[CacheRequest] = None,
        retries: Union[int, RetryStrategy, None] = 0,
        timeout: Optional[TimeoutType] = 0,
        interruptible: Optional[bool] = None,
        queue: Optional[str] = None,
        report: bool = False,
        docs: Optional[str] = None,
        **unsupported: Any,
    ) -> Any:
        """Make a function a task of this environment: ``@env.task`` or ``@env.task(retries=3, ...)``.

        Sync and async (``async def``) functions are both supported. Resources, env_vars,
        secrets and reusable come from the environment; ``task.override(...)`` changes them per call.

        Args:
            short_name: display name (default: the function's name).
            cache: overrides the environment's cache policy.
            retries: user retries: an int or ``RetryStrategy(count, backoff)``.
            timeout: seconds, ``timedelta`` or ``Timeout(max_runtime, max_queued_time, deadline)``.
            interruptible: overrides the environment's; ``None`` inherits.
            queue: overrides the environment's; ``None`` inherits.
            report: the task keeps an HTML report (``flyte_ray.report``; ``Run.report()``).
            docs: recorded for flyte-sdk compatibility.

        flyte-sdk's ``pod_template``, ``links``, ``max_inline_io_bytes``, ``entrypoint``,
        ``produces_artifacts`` and ``task_resolver`` are accepted and ignored (Kubernetes, UI and
        backend settings); ``triggers`` is refused (schedules need a Flyte backend).
        """
        from .task import TaskTemplate

        if unsupported.get("triggers"):
            raise ValueError(
                f"{self.name}.task.triggers: schedules need a Flyte backend; on Ray start runs from your own "
                "scheduler (cron, Airflow, a Ray job)"
            )
        unknown = sorted(k for k in unsupported if k not in _TASK_IGNORED and k != "triggers")
        if unknown:
            raise TypeError(
                f"{self.name}.task: unknown argument(s) {', '.join(unknown)}; accepted: "
                "short_name, cache, retries, timeout, interruptible, queue, report, docs "
                f"(accepted and ignored: {', '.join(_TASK_IGNORED)})"
            )
        # Checked now, at definition time, even before the decorator meets its function.
        where = f"{self.name}.task"
        if not isinstance(report, bool):
            raise TypeError(f"{where}.report: expected True or False, got {type(report).__name__}")
        if docs is not None and not isinstance(docs, str):
            raise TypeError(f"{where}.docs: expected a string or None, got {type(docs).__name__}")
        normalize("short_name", short_name, where)
        decorator_values = {
            k: normalize(k, v, where)
            for k, v in (
                ("cache", cache),
                ("retries", retries),
                ("timeout", timeout),
                ("interruptible", interruptible),
                ("queue", queue),
            )
        }

        def wrap(func: F) -> TaskTemplate:
            if isinstance(func, TaskTemplate):
                raise TypeError(f"{self.name}.task: {func.name} is already a task")
            if not inspect.isfunction(func):
                raise TypeError(
                    f"{self.name}.task: expected a function defined with def or async def, "
                    f"got {type(func).__name__} {func!r}"
                )
            if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
                raise TypeError(f"{self.name}.task: {func.__name__} is a generator; tasks must return a value")
            t = TaskTemplate(
                env=self, func=func, short_name=short_name, report=report, docs=docs, decorator=decorator_values
            )
            if self.reusable is not None and self.reusable.concurrency > 1 and not t.is_async:
                raise ValueError(
                    f"{t.name}: ReusePolicy.concurrency={self.reusable.concurrency} needs an async task "
                    f"(async def); sync tasks run one call per replica (concurrency=1)"
                )
            self._tasks[t.name] = t
            return t

        if _func is not None:
            return wrap(_func)
        return wrap
