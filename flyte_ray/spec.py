"""A call's resolved settings (``CallSpec``): invocation > task decorator > environment.

``None`` at any level means "inherit"; any other value applies. That is a deliberate difference
from flyte-sdk, which merges with ``x or self.x``: in flyte-ray ``retries=0`` and
``interruptible=False`` at the invocation level take effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

from .cache import Cache
from .resources import Resources
from .retry import RetryStrategy
from .reuse import ReusePolicy
from .timeout import Timeout

if TYPE_CHECKING:
    from .task import TaskTemplate

__all__ = ["CallSpec", "resolve"]

#: fields a level may set, in the order they are resolved
FIELDS = ("resources", "env_vars", "secrets", "cache", "reusable", "interruptible", "queue", "retries", "timeout")


@dataclass(frozen=True)
class CallSpec:
    """Everything the supervisor needs to run one call of a task, fully resolved."""

    fqn: str
    short_name: str
    interruptible: bool
    queue: Optional[str]
    retries: Optional[RetryStrategy]
    timeout: Optional[Timeout]
    resources: Optional[Resources]
    env_vars: Optional[Mapping[str, str]]
    secrets: Any
    cache: Optional[Cache]
    reusable: Optional[ReusePolicy]
    ray_options: Mapping[str, Any]  # the task's own Ray options, before placement markers

    @property
    def uses_streaming(self) -> bool:
        """Attempts report when they start (needed to time runtime and queueing separately)."""
        t = self.timeout
        return bool(t and (t.max_runtime or t.max_queued_time))


def resolve(task: "TaskTemplate", run_overrides: Optional[Mapping[str, Any]] = None) -> CallSpec:
    """Resolve a task's settings: run context / override > decorator > environment."""
    env = task.env
    levels: list[Mapping[str, Any]] = [env._values(), task._decorator]
    if run_overrides:
        levels.append(run_overrides)
    levels.append(task._overrides)
    v: dict[str, Any] = {}
    for name in FIELDS:
        val = None
        for level in levels:
            x = level.get(name)
            if x is not None:
                val = x
        v[name] = val
    reusable = v["reusable"]
    if reusable == "off":
        reusable = None
    resources: Optional[Resources] = v["resources"]
    opts: dict[str, Any] = resources.ray_options() if resources is not None else {}
    if v["env_vars"]:
        opts["runtime_env"] = {"env_vars": dict(v["env_vars"])}
    return CallSpec(
        fqn=task.name,
        short_name=task.short_name,
        interruptible=bool(v["interruptible"]),
        queue=v["queue"],
        retries=v["retries"],
        timeout=v["timeout"],
        resources=resources,
        env_vars=v["env_vars"],
        secrets=v["secrets"],
        cache=v["cache"],
        reusable=reusable,
        ray_options=opts,
    )
