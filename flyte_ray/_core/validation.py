"""Checks for the settings every level (environment, decorator, override, run) may set.

One function, so each field is validated the same way wherever it is given, and the error
names the field, where it was given, and the accepted forms: ``TypeError`` for a wrong type,
``ValueError`` for a wrong value.

Rules:

* Names that end up in Ray resource names, call ids (``<parent>/<short name>-<n>``) or storage
  keys (queue names, short names, run names) use ASCII letters, digits, ``_``, ``-`` and ``.``
  only, checked with ``fullmatch`` (a pattern ending in ``$`` would let a trailing newline in).
* ``env_vars`` become a Ray ``runtime_env``, i.e. the environment of a worker process: names are
  ``[A-Za-z_][A-Za-z0-9_]*``, values strings without NUL, each ``NAME=value`` within what the OS
  accepts. Anything else makes Ray fail to start the worker while the call waits forever.
* ``init``'s arguments are checked by :func:`check_init_args`, apart from connecting, so they can
  be checked (and fuzzed) without Ray.
* Secret-bearing values (``env_vars`` values, secrets, storage options, runtime_env) never
  appear in an error message or a ``repr``: errors name the variable or key and the value's
  type; :func:`masked` and :func:`secrets_repr` are what reprs show.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping, NamedTuple, Optional, Union

from .._duration import MAX_COUNT, count, seconds, short_repr
from ..cache_policy import as_cache
from ..checkpoint import Storage
from ..resources import Resources
from ..retry import as_retry_strategy
from ..reuse_policy import ReusePolicy
from ..storage import Storage as BaseStorage
from ..timeout import as_timeout
from .settings import PLACEMENT_MODES, Settings

__all__ = [
    "ENV_NAME_RE",
    "InitArgs",
    "MASK",
    "QUEUE_RE",
    "SHORT_NAME_RE",
    "check_env_vars",
    "check_init_args",
    "check_name",
    "check_secrets",
    "masked",
    "masked_runtime_env",
    "normalize",
    "secret_repr",
    "secrets_repr",
]

#: queue names: nodes serving one declare the Ray resource ``queue:<name>`` (63 characters at most,
#: so the name also fits a Kubernetes label, should queues move to node labels)
QUEUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", re.ASCII)
#: short names (a part of every call id) and run names: the same characters; a leading ``_`` is
#: allowed because a function's name may start with one
SHORT_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
#: environment variable names, as POSIX shells accept them
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
#: Linux's MAX_ARG_STRLEN: the longest single ``NAME=value`` string a process environment holds
MAX_ENV_ENTRY = 128 * 1024
#: what reprs show in place of a secret-bearing value
MASK = "***"

_NAME_CHARS = "ASCII letters, digits, '_', '-' and '.'"


def _has_control_chars(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def check_name(value: Any, field: str, pattern: "re.Pattern[str]", what: str) -> str:
    """``value`` if it is a string that ``pattern`` fully matches, else an error naming ``field``."""
    if not isinstance(value, str):
        raise TypeError(f"{field}: expected {what}, got {type(value).__name__} {short_repr(value)}")
    if not pattern.fullmatch(value):
        raise ValueError(f"{field}: expected {what}, got {short_repr(value)}")
    return value


def _bad_env_name(name: str) -> str:
    """What is wrong with an environment variable name, showing only the part before the first
    bad character (``"TOKEN=abc"`` is often a value pasted into a name)."""
    if not name:
        return "an empty name"
    i = next((i for i, ch in enumerate(name) if not ENV_NAME_RE.fullmatch(("_" if i else "") + ch)), len(name))
    if i == 0:
        return f"a name starting with {name[0]!r}"
    return f"the name {name[:i]!r}... has {name[i]!r} at position {i}"


def check_env_vars(value: Any, field: str) -> dict[str, str]:
    """A copy of ``value`` checked as worker environment variables; errors never show a value."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{field}: expected a dict of NAME -> str value, got {type(value).__name__}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise TypeError(f"{field}: variable names must be strings, got a name of type {type(k).__name__}")
        if not ENV_NAME_RE.fullmatch(k):
            raise ValueError(
                f"{field}: {_bad_env_name(k)}; a variable name is [A-Za-z_][A-Za-z0-9_]* (ASCII letters, "
                "digits and '_', not starting with a digit)"
            )
        where = f"{field}[{k!r}]"
        if not isinstance(v, str):
            raise TypeError(f"{where}: expected a str value, got {type(v).__name__} (value not shown)")
        if "\0" in v:
            raise ValueError(f"{where}: the value contains a NUL character, which no process environment can hold")
        try:
            size = len(k) + 1 + len(v.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(f"{where}: the value is not valid text (it holds a lone surrogate)") from None
        if size > MAX_ENV_ENTRY:
            raise ValueError(
                f"{where}: NAME=value is {size} bytes; a process environment holds at most {MAX_ENV_ENTRY} "
                "bytes per variable (pass large data as a task argument or through storage)"
            )
        out[k] = v
    return out


def masked(env_vars: Optional[Mapping[str, Any]]) -> Optional[dict[str, str]]:
    """``env_vars`` as reprs show them: names only (``{'TOKEN': '***'}``)."""
    return None if env_vars is None else {str(k): MASK for k in env_vars}


def secret_repr(item: Any) -> str:
    """One secret request as reprs show it: its key and names (a ``Secret`` holds no value, but
    its ``mount`` may be any object, so only a path is shown)."""
    if isinstance(item, str):
        return repr(item)
    key = getattr(item, "key", None)
    if not isinstance(key, str):
        return f"<{type(item).__name__}>"
    parts = [f"key={key!r}"]
    for attr in ("group", "as_env_var", "mount"):
        v = getattr(item, attr, None)
        if v is None:
            continue
        try:
            shown = repr(os.fspath(v)) if isinstance(v, (str, os.PathLike)) else f"<{type(v).__name__}>"
        except TypeError:  # a PathLike whose __fspath__ returns bytes or worse
            shown = f"<{type(v).__name__}>"
        parts.append(f"{attr}={shown}")
    return f"{type(item).__name__}({', '.join(parts)})"


def secrets_repr(value: Any) -> str:
    """A secrets argument (a key, a ``Secret``, or a list of them) as reprs show it."""
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(secret_repr(x) for x in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    return secret_repr(value)


def masked_runtime_env(env: Any) -> Any:
    """A Ray runtime_env as reprs show it: its env_vars by name, its other parts hidden."""
    if env is None:
        return None
    if not isinstance(env, Mapping):
        return MASK
    return {k: masked(v) if k == "env_vars" and isinstance(v, Mapping) else MASK for k, v in env.items()}


def _check_secret(item: Any, field: str) -> None:
    """A secret request: a non-empty key (a name, not a value) or a ``Secret``-like object."""
    if isinstance(item, str):
        if not item.strip() or _has_control_chars(item):
            raise ValueError(f"{field}: expected a secret key (a non-empty name without control characters)")
        return
    key = getattr(item, "key", None)
    if not isinstance(key, str):
        raise TypeError(
            f"{field}: expected a secret key (str) or Secret(key=...), got {type(item).__name__} (not shown)"
        )
    _check_secret(key, f"{field}.key")
    group = getattr(item, "group", None)
    if group is not None:
        _check_secret(group, f"{field}.group")
    env_name = getattr(item, "as_env_var", None)
    if env_name is not None:
        if not isinstance(env_name, str):
            raise TypeError(f"{field}.as_env_var: expected a variable name or None, got {type(env_name).__name__}")
        if not ENV_NAME_RE.fullmatch(env_name):
            raise ValueError(
                f"{field}.as_env_var: {_bad_env_name(env_name)}; a variable name is [A-Za-z_][A-Za-z0-9_]*"
            )


def check_secrets(value: Any, field: str) -> Any:
    """Flyte's forms of a secrets argument: a key, a ``Secret``, or a list of them (a tuple)."""
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_secret(item, f"{field}[{i}]")
        return tuple(value)
    if isinstance(value, Mapping):
        raise TypeError(
            f"{field}: expected a secret key (str), Secret(...) or a list of them, got {type(value).__name__} "
            "(secrets are requested by name; values are never given to flyte-ray)"
        )
    _check_secret(value, field)
    return value


def normalize(name: str, value: Any, where: str) -> Any:
    """Validate and normalise one setting; ``None`` always passes (it means "inherit")."""
    if value is None:
        return None
    field = f"{where}.{name}" if where else name
    if name == "resources":
        if not isinstance(value, Resources):
            raise TypeError(
                f"{field}: expected flyte_ray.Resources(cpu=..., memory=..., gpu=...), "
                f"got {type(value).__name__} {short_repr(value)}"
            )
        return value
    if name == "env_vars":
        return check_env_vars(value, field)
    if name == "secrets":
        return check_secrets(value, field)
    if name == "cache":
        return as_cache(value, field)
    if name == "reusable":
        if isinstance(value, ReusePolicy) or (isinstance(value, str) and value == "off"):
            return value
        err = ValueError if isinstance(value, str) else TypeError
        raise err(f"{field}: expected ReusePolicy(...), 'off' or None, got {type(value).__name__} {short_repr(value)}")
    if name == "interruptible":
        if not isinstance(value, bool):
            raise TypeError(f"{field}: expected True, False or None, got {type(value).__name__} {short_repr(value)}")
        return value
    if name == "queue":
        return check_name(
            value,
            field,
            QUEUE_RE,
            f"a queue name of {_NAME_CHARS}, starting with a letter or digit, at most 63 characters "
            "(nodes serving it declare the resource 'queue:<name>')",
        )
    if name == "retries":
        return as_retry_strategy(value, field)
    if name == "timeout":
        return as_timeout(value, field)
    if name == "short_name":
        return check_name(
            value, field, SHORT_NAME_RE, f"a short name of {_NAME_CHARS} (part of every call id), at most 128"
        )
    raise TypeError(f"{field}: unknown setting")


# ------------------------------------------------------------------------------ init's arguments
class InitArgs(NamedTuple):
    """``init``'s arguments, checked and normalised by :func:`check_init_args` (no Ray involved)."""

    settings: Settings
    address: Optional[str]
    num_cpus: Optional[int]
    include_dashboard: bool
    namespace: Optional[str]
    runtime_env: Optional[dict[str, Any]]
    log_level: Union[int, str]

    def __repr__(self) -> str:  # a runtime_env may carry credentials: names only
        shown = self._replace(runtime_env=masked_runtime_env(self.runtime_env))
        return "InitArgs(" + ", ".join(f"{k}={v!r}" for k, v in zip(self._fields, shown)) + ")"


# None (embedded), "auto", a GCS address host:port ([v6]:port) or a Ray client address ray://host:port.
_ADDRESS_RE = re.compile(r"(?:ray://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})", re.ASCII)
_ADDRESS_FORMS = "None (an embedded local Ray), 'auto', 'host:port' (a GCS address) or 'ray://host:port'"


def _check_mapping(value: Any, field: str, what: str) -> dict[str, Any]:
    """A dict with string keys; errors show keys and types only (values may be secrets)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{field}: expected {what}, got {type(value).__name__} (value not shown)")
    for k in value:
        if not isinstance(k, str):
            raise TypeError(f"{field}: expected {what}; keys must be strings, got a {type(k).__name__} key")
    return dict(value)


def check_init_args(
    address: Optional[str] = None,
    *,
    storage: Union[str, Storage, None] = None,
    storage_options: Optional[dict[str, Any]] = None,
    system_retries: int = 3,
    interruptible_failure_threshold: Optional[int] = None,
    checkpoint_keep: int = 2,
    num_cpus: Optional[float] = None,
    include_dashboard: bool = False,
    namespace: Optional[str] = None,
    runtime_env: Optional[dict[str, Any]] = None,
    supervisor: str = "auto",
    inline_under: float = 0.1,
    supervisor_shards: int = 4,
    log_level: Union[int, str] = logging.WARNING,
    storage_timeout: Optional[float] = None,
    spot_wait: Optional[float] = 300.0,
    node_types: tuple = (),
    placement: str = "auto",
    record: Union[bool, str] = "runs",
) -> InitArgs:
    """Check and normalise :func:`init`'s arguments without touching Ray (same signature).

    A wrong type is a ``TypeError``, a wrong value a ``ValueError``; each names the argument and
    its accepted forms, and none repeats a value that may be secret (``storage`` and its options,
    ``runtime_env``): those errors name keys and types only.
    """
    if address is not None:
        if not isinstance(address, str):
            raise TypeError(f"address: expected {_ADDRESS_FORMS}; got {type(address).__name__}")
        m = _ADDRESS_RE.fullmatch(address)
        if address != "auto" and (m is None or not 1 <= int(m.group(1)) <= 65535):
            raise ValueError(f"address: expected {_ADDRESS_FORMS} (port 1-65535); got {short_repr(address)}")
    if storage is not None and not isinstance(storage, BaseStorage):
        url = os.fspath(storage) if isinstance(storage, os.PathLike) else storage
        if not isinstance(url, str):
            raise TypeError(
                f"storage: expected an fsspec URL or local path (str), a path or Storage(...); "
                f"got {type(storage).__name__}"
            )
        if not url.strip():
            raise ValueError(
                "storage: expected an fsspec URL or local path; got an empty or blank string "
                "(omit storage for the default, $FLYTE_RAY_STORAGE or ~/.flyte-ray/storage)"
            )
        if url != url.strip():
            raise ValueError("storage: the URL has leading or trailing whitespace (a quoting mistake?); URL not shown")
        if _has_control_chars(url):
            raise ValueError("storage: the URL contains a control character (a NUL, a newline...); URL not shown")
        storage = url
    if storage_options is not None:
        storage_options = _check_mapping(storage_options, "storage_options", "a dict of fsspec options")
        if isinstance(storage, BaseStorage):
            raise ValueError(
                "storage_options: cannot apply to a Storage object given as storage; "
                "pass the options to Storage(url, options) instead"
            )
    system_retries = count(
        system_retries, "system_retries", lo=-1, accepted=f"an int >= 0, or -1 for unlimited (at most {MAX_COUNT})"
    )
    if interruptible_failure_threshold is not None:
        interruptible_failure_threshold = count(
            interruptible_failure_threshold,
            "interruptible_failure_threshold",
            accepted=f"an int >= 0 (at most {MAX_COUNT}) or None",
        )
    checkpoint_keep = count(checkpoint_keep, "checkpoint_keep", lo=1)
    if not isinstance(supervisor, str):
        raise TypeError(f"supervisor: expected 'auto' or 'inline', got {type(supervisor).__name__}")
    if supervisor not in ("auto", "inline"):
        raise ValueError(f"supervisor: expected 'auto' or 'inline', got {short_repr(supervisor)}")
    inline_s = seconds(inline_under, "inline_under")  # seconds >= 0 (0 = always the actor)
    supervisor_shards = count(
        supervisor_shards, "supervisor_shards", lo=1, hi=64, accepted="an int from 1 to 64 (supervising actors)"
    )
    modes = " or ".join(repr(m) for m in PLACEMENT_MODES)
    if not isinstance(placement, str):
        raise TypeError(f"placement: expected {modes}, got {type(placement).__name__}")
    if placement not in PLACEMENT_MODES:
        raise ValueError(f"placement: expected {modes}, got {short_repr(placement)}")
    cpus: Optional[int] = None
    if num_cpus is not None:
        accepted = f"a whole number of CPUs from 0 to {MAX_COUNT}, or None for all of this machine's"
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)):
            raise TypeError(f"num_cpus: expected {accepted}; got {type(num_cpus).__name__}")
        if isinstance(num_cpus, float) and not num_cpus.is_integer():  # NaN and inf included
            raise ValueError(f"num_cpus: expected {accepted}; got {short_repr(num_cpus)}")
        cpus = count(int(num_cpus), "num_cpus", accepted=accepted)
    if not isinstance(include_dashboard, bool):
        raise TypeError(f"include_dashboard: expected True or False, got {type(include_dashboard).__name__}")
    if namespace is not None:
        if not isinstance(namespace, str):
            raise TypeError(f"namespace: expected a non-empty string or None, got {type(namespace).__name__}")
        if not namespace.strip() or _has_control_chars(namespace):
            raise ValueError(
                "namespace: expected a non-empty string without control characters or None, "
                f"got {short_repr(namespace)}"
            )
    if runtime_env is not None:
        runtime_env = _check_mapping(runtime_env, "runtime_env", "a Ray runtime_env dict")
        if runtime_env.get("env_vars") is not None:
            runtime_env["env_vars"] = check_env_vars(runtime_env["env_vars"], "runtime_env['env_vars']")
    if isinstance(log_level, bool) or not isinstance(log_level, (int, str)):
        raise TypeError(
            f"log_level: expected a logging level (an int or a name such as 'INFO'), got {type(log_level).__name__}"
        )
    if isinstance(log_level, str) and not isinstance(logging.getLevelName(log_level.upper()), int):
        raise ValueError(
            f"log_level: expected a logging level name such as 'DEBUG', 'INFO', 'WARNING'; got {short_repr(log_level)}"
        )
    if isinstance(log_level, int) and log_level < 0:
        raise ValueError(f"log_level: expected a logging level >= 0, got {log_level}")
    if isinstance(log_level, str):
        log_level = log_level.upper()  # logging (and so Ray) knows level names in upper case only
    op_timeout: Optional[float] = None
    if storage_timeout is not None:
        op_timeout = seconds(storage_timeout, "storage_timeout")
        if op_timeout <= 0:
            raise ValueError("storage_timeout: expected seconds > 0 (the time limit of each storage operation)")
    if isinstance(storage, BaseStorage):
        if op_timeout is not None or not isinstance(storage, Storage):
            storage = Storage(
                storage.url, storage.options, op_timeout if op_timeout is not None else storage.op_timeout
            )
    store = storage if isinstance(storage, Storage) else Storage(storage, storage_options, op_timeout)
    if record is True or record is False:
        record = "runs" if record else "off"
    if record not in ("runs", "all", "off"):
        raise ValueError(f"record: expected 'runs', 'all', 'off' (or True / False); got {short_repr(record)}")
    spot_s: Optional[float] = None
    if spot_wait is not None:
        spot_s = seconds(spot_wait, "spot_wait")  # 0: move to on-demand as soon as no spot node is up
    settings = Settings(
        storage=store,
        spot_wait=spot_s,
        node_types=tuple(node_types),
        system_retries=system_retries,
        interruptible_failure_threshold=interruptible_failure_threshold,
        checkpoint_keep=checkpoint_keep,
        supervisor=supervisor,
        inline_under=inline_s,
        supervisor_shards=supervisor_shards,
        placement=placement,
        record=record,
    )
    return InitArgs(settings, address, cpus, include_dashboard, namespace, runtime_env, log_level)
