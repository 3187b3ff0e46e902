"""``Cache``: the cache policy of a task (a value type: no Ray, no I/O).

What the policy means for a call (keys, stored objects, serialisation) is described in
:mod:`flyte_ray.cache`, which acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping, Optional, Protocol, Tuple, Union, runtime_checkable

from ._duration import short_repr

__all__ = ["Cache", "CachePolicy", "CacheRequest", "CacheBehavior", "VersionParameters", "as_cache"]

CacheBehavior = Literal["auto", "override", "disable"]
_BEHAVIORS = ("auto", "override", "disable")


@dataclass(frozen=True)
class VersionParameters:
    """What a :class:`CachePolicy` versions (flyte-sdk's name): the task's function; the image
    and pod template fields exist for flyte-sdk policies and are None on Ray."""

    func: Callable[..., Any]
    container_image: Any = None
    pod_template: Any = None
    pod_template_name: Optional[str] = None


@runtime_checkable
class CachePolicy(Protocol):
    """flyte-sdk's cache policy protocol: ``get_version(salt, params) -> str`` gives the cache
    *version* of a task (``Cache(policies=[MyPolicy()])``; the default versions the function
    body: ``flyte_ray.FunctionBodyPolicy``). flyte-ray also takes plain callables
    ``(task, inputs) -> str`` in ``policies``, mixed into each call's *key*."""

    def get_version(self, salt: str, params: VersionParameters) -> str: ...


def is_version_policy(p: Any) -> bool:
    """True for a flyte-sdk style policy object (``get_version``), False for a key callable."""
    return callable(getattr(p, "get_version", None))


@dataclass(frozen=True)
class Cache:
    """Cache policy.

    Args:
        behavior: ``"auto"`` (reuse outputs for equal inputs), ``"override"`` (always run and
            store), ``"disable"``.
        version_override: explicit cache version; default: a hash of the function's source.
        serialize: concurrent identical calls run once; the others wait for the result.
        ignored_inputs: argument names left out of the cache key.
        salt: extra text mixed into the key.
        policies: flyte-sdk :class:`CachePolicy` objects (``get_version(salt, params)``: they
            make the version when ``version_override`` is unset, instead of the function body),
            and/or key policies: callables ``(task, inputs) -> str`` mixed into each call's key
            (``inputs`` maps every bound argument name to its value); one or a sequence.
    """

    behavior: CacheBehavior = "auto"
    version_override: Optional[str] = None
    serialize: bool = False
    ignored_inputs: Union[Tuple[str, ...], str] = ()
    salt: str = ""
    policies: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.behavior, str):
            raise TypeError(f"Cache.behavior: expected one of {_BEHAVIORS}, got {type(self.behavior).__name__}")
        if self.behavior not in _BEHAVIORS:
            raise ValueError(f"Cache.behavior: expected one of {_BEHAVIORS}, got {short_repr(self.behavior)}")
        names = self.ignored_inputs
        accepted = "argument names: a string or a sequence of non-empty strings"
        if isinstance(names, str):
            names = (names,)
        elif isinstance(names, (bytes, Mapping)) or not isinstance(names, Iterable):
            raise TypeError(f"Cache.ignored_inputs: expected {accepted}, got {type(names).__name__}")
        for x in names:
            if not isinstance(x, str):
                raise TypeError(f"Cache.ignored_inputs: expected {accepted}, got an item of type {type(x).__name__}")
            if not x:
                raise ValueError(f"Cache.ignored_inputs: expected {accepted}, got an empty name")
        object.__setattr__(self, "ignored_inputs", tuple(names))
        v = self.version_override
        if v is not None and not isinstance(v, str):
            raise TypeError(f"Cache.version_override: expected a non-empty string or None, got {type(v).__name__}")
        if v is not None and not v.strip():
            raise ValueError(f"Cache.version_override: expected a non-empty string or None, got {v!r}")
        if not isinstance(self.salt, str):
            raise TypeError(f"Cache.salt: expected a string, got {type(self.salt).__name__}")
        if not isinstance(self.serialize, bool):
            raise TypeError(f"Cache.serialize: expected True or False, got {type(self.serialize).__name__}")
        if self.policies is not None:
            one = callable(self.policies) or is_version_policy(self.policies)
            ps = (self.policies,) if one else self.policies
            try:
                ps = tuple(ps)
            except TypeError:
                ps = None
            if ps is None or not all(callable(p) or is_version_policy(p) for p in ps):
                raise TypeError(
                    "Cache.policies: expected CachePolicy objects (with get_version(salt, params)) or callables "
                    f"(task, inputs) -> str, one or a sequence, got {short_repr(self.policies)}"
                )

    @property
    def enabled(self) -> bool:
        return self.behavior != "disable"

    @property
    def _policies(self) -> Tuple[Callable[..., Any], ...]:
        if self.policies is None:
            return ()
        one = callable(self.policies) or is_version_policy(self.policies)
        return (self.policies,) if one else tuple(self.policies)


CacheRequest = Union[CacheBehavior, Cache]


def as_cache(value: Union[CacheRequest, bool, None], field_name: str = "cache") -> Optional[Cache]:
    """Normalise ``cache=``: a behavior string or ``Cache``; ``True``/``False`` mean auto/disable."""
    if value is None or isinstance(value, Cache):
        return value
    if isinstance(value, bool):
        return Cache("auto" if value else "disable")
    if not isinstance(value, str):
        raise TypeError(f"{field_name}: expected one of {_BEHAVIORS}, a bool or Cache(...), got {type(value).__name__}")
    if value not in _BEHAVIORS:
        raise ValueError(f"{field_name}: expected one of {_BEHAVIORS}, a bool or Cache(...), got {short_repr(value)}")
    return Cache(value)
