"""``Cache``: the cache policy of a task (a value type: no Ray, no I/O).

What the policy means for a call (keys, stored objects, serialisation) is described in
:mod:`flyte_ray.cache`, which acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Tuple, Union

__all__ = ["Cache", "CacheRequest", "CacheBehavior", "as_cache"]

CacheBehavior = Literal["auto", "override", "disable"]
_BEHAVIORS = ("auto", "override", "disable")


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
        policies: extra key policies: a callable ``(task, inputs) -> str`` or a sequence of
            them; ``inputs`` maps every bound argument name to its value.
    """

    behavior: CacheBehavior = "auto"
    version_override: Optional[str] = None
    serialize: bool = False
    ignored_inputs: Union[Tuple[str, ...], str] = ()
    salt: str = ""
    policies: Any = None

    def __post_init__(self) -> None:
        if self.behavior not in _BEHAVIORS:
            raise ValueError(f"Cache.behavior: expected one of {_BEHAVIORS}, got {self.behavior!r}")
        if isinstance(self.ignored_inputs, str):
            object.__setattr__(self, "ignored_inputs", (self.ignored_inputs,))
        elif not all(isinstance(x, str) for x in self.ignored_inputs):
            raise TypeError(f"Cache.ignored_inputs: expected argument names, got {self.ignored_inputs!r}")
        else:
            object.__setattr__(self, "ignored_inputs", tuple(self.ignored_inputs))
        if self.version_override is not None and (
            not isinstance(self.version_override, str) or not self.version_override
        ):
            raise TypeError(f"Cache.version_override: expected a non-empty string, got {self.version_override!r}")
        if not isinstance(self.salt, str):
            raise TypeError(f"Cache.salt: expected a string, got {self.salt!r}")
        if self.policies is not None:
            ps = (self.policies,) if callable(self.policies) else self.policies
            try:
                ps = tuple(ps)
            except TypeError:
                ps = None
            if ps is None or not all(callable(p) for p in ps):
                raise TypeError(
                    "Cache.policies: expected a callable (task, inputs) -> str or a sequence of them, "
                    f"got {self.policies!r}"
                )

    @property
    def enabled(self) -> bool:
        return self.behavior != "disable"

    @property
    def _policies(self) -> Tuple[Callable[..., Any], ...]:
        if self.policies is None:
            return ()
        return (self.policies,) if callable(self.policies) else tuple(self.policies)


CacheRequest = Union[CacheBehavior, Cache]


def as_cache(value: Union[CacheRequest, bool, None], field_name: str = "cache") -> Optional[Cache]:
    """Normalise ``cache=``: a behavior string or ``Cache``; ``True``/``False`` mean auto/disable."""
    if value is None or isinstance(value, Cache):
        return value
    if isinstance(value, bool):
        return Cache("auto" if value else "disable")
    if isinstance(value, str) and value in _BEHAVIORS:
        return Cache(value)
    raise ValueError(f"{field_name}: expected one of {_BEHAVIORS} or Cache(...), got {value!r}")
