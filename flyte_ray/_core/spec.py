"""A call's resolved settings (``CallSpec``): invocation > task decorator > environment.

``None`` at any level means "inherit"; any other value applies. That is a deliberate difference
from flyte-sdk, which merges with ``x or self.x``: in flyte-ray ``retries=0`` and
``interruptible=False`` at the invocation level take effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional

from ..cache_policy import Cache
from ..resources import Resources
from ..retry import RetryStrategy
from ..reuse_policy import ReusePolicy
from ..timeout import Timeout
from .validation import masked, masked_runtime_env, secrets_repr

if TYPE_CHECKING:
    from ..task import TaskTemplate

__all__ = ["CallSpec", "RunOverrides", "resolve"]

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
    #: caches of the layers below that depend only on this spec (bound Ray options, the replica
    #: pool, the warm call's static part), generation-stamped: see flyte_ray._core.process
    memo: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __reduce__(self) -> Any:  # the memo holds process-local objects: never pickled
        return (_rebuild_spec, tuple(getattr(self, f) for f in _SPEC_FIELDS))

    def __repr__(self) -> str:
        # env_vars values (also inside ray_options' runtime_env) and secrets: names only.
        shown = {f: getattr(self, f) for f in _SPEC_FIELDS}
        shown["env_vars"] = masked(self.env_vars)
        shown["ray_options"] = _shown_options(self.ray_options)
        text = ", ".join(f"{k}={v!r}" for k, v in shown.items() if k != "secrets")
        return f"CallSpec({text}, secrets={secrets_repr(self.secrets)})"

    @property
    def uses_streaming(self) -> bool:
        """Attempts report when they start (needed to time runtime and queueing separately)."""
        t = self.timeout
        return bool(t and (t.max_runtime or t.max_queued_time))


_SPEC_FIELDS = (
    "fqn",
    "short_name",
    "interruptible",
    "queue",
    "retries",
    "timeout",
    "resources",
    "env_vars",
    "secrets",
    "cache",
    "reusable",
    "ray_options",
)


def _rebuild_spec(*values: Any) -> CallSpec:
    return CallSpec(*values)


def _shown_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    """Ray options as reprs show them: a runtime_env's env_vars by name, its other parts hidden."""
    out = dict(opts)
    if "runtime_env" in out:
        out["runtime_env"] = masked_runtime_env(out["runtime_env"])
    return out


class RunOverrides(Mapping[str, Any]):
    """Run-level settings (``with_runcontext``): validated, immutable, inherited by every call of
    the run. Its pickled form is made once (``blob``) and travels with each attempt.

    ``custom`` is the run's custom context (``with_runcontext(custom_context=...)``, changed for
    a block of calls by ``flyte_ray.custom_context(...)``): string pairs every call sees in
    ``ctx().custom_context``. It is not one of the mapping's settings, so it never changes a
    call's spec or cache key (as in flyte-sdk) and an empty mapping with a custom context still
    takes the no-overrides fast path."""

    __slots__ = ("_d", "_wire_blob", "recorded", "custom")

    def __init__(
        self, values: Mapping[str, Any], recorded: bool = False, custom: Optional[Mapping[str, str]] = None
    ) -> None:
        self._d = dict(values)
        # its pickled form, made once by the executors (pickled_once) for every attempt of the
        # run's calls (a slot of its own: without it every call pickled the overrides again)
        self._wire_blob: Optional[bytes] = None
        # The run was started with flyte.run / with_runcontext(...).run: its calls' attempts are
        # recorded in storage (init(record="runs"), the default). Travels with the overrides, so
        # every call of the run, wherever it is supervised, knows.
        self.recorded = recorded
        self.custom: Mapping[str, str] = dict(custom) if custom else {}

    def __getitem__(self, key: str) -> Any:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        shown = {k: masked(v) if k == "env_vars" else v for k, v in self._d.items()}
        # custom context by key only: its values may be session ids
        custom = f", custom_context keys={sorted(self.custom)}" if self.custom else ""
        return f"RunOverrides({shown!r}{custom})"

    def __reduce__(self) -> Any:
        return (RunOverrides, (self._d, self.recorded, self.custom or None))


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
