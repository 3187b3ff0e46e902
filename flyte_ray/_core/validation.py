"""Checks for the settings every level (environment, decorator, override, run) may set.

One function, so each field is validated the same way wherever it is given, and the error
names the field, where it was given, and the accepted forms.
"""

from __future__ import annotations

import re
from typing import Any

from ..cache_policy import as_cache
from ..resources import Resources
from ..retry import as_retry_strategy
from ..reuse_policy import ReusePolicy
from ..timeout import as_timeout

_QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def normalize(name: str, value: Any, where: str) -> Any:
    """Validate and normalise one setting; ``None`` always passes (it means "inherit")."""
    if value is None:
        return None
    field = f"{where}.{name}" if where else name
    if name == "resources":
        if not isinstance(value, Resources):
            raise TypeError(f"{field}: expected flyte_ray.Resources(cpu=..., memory=..., gpu=...), got {value!r}")
        return value
    if name == "env_vars":
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise TypeError(f"{field}: expected a dict of str -> str, got {value!r}")
        return dict(value)
    if name == "secrets":
        return value
    if name == "cache":
        return as_cache(value, field)
    if name == "reusable":
        if value == "off" or isinstance(value, ReusePolicy):
            return value
        raise TypeError(f"{field}: expected ReusePolicy(...), 'off' or None, got {value!r}")
    if name == "interruptible":
        if not isinstance(value, bool):
            raise TypeError(f"{field}: expected True, False or None, got {value!r}")
        return value
    if name == "queue":
        if not isinstance(value, str) or not _QUEUE_RE.match(value):
            raise ValueError(
                f"{field}: expected a queue name of letters, digits, '_', '-', '.' (nodes serving it "
                f"declare the resource 'queue:<name>'), got {value!r}"
            )
        return value
    if name == "retries":
        return as_retry_strategy(value, field)
    if name == "timeout":
        return as_timeout(value, field)
    if name == "short_name":
        if not isinstance(value, str) or not value:
            raise TypeError(f"{field}: expected a non-empty string, got {value!r}")
        return value
    raise TypeError(f"{field}: unknown setting")
