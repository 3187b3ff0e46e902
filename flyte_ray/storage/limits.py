"""Time limits on storage: the store-wide defaults, the storage clients' own timeouts and retries,
and how a limit that passes is reported.

Rules:

* Every :class:`~flyte_ray.storage.objects.ObjectStore` operation runs under a limit unless the
  caller asks for none (``timeout=math.inf``, or a store made with ``op_timeout=math.inf``). The
  default is ``op_timeout`` seconds (``$FLYTE_RAY_STORAGE_TIMEOUT``, else
  :data:`DEFAULT_OP_TIMEOUT`) plus the time to move the operation's bytes at ``min_rate``
  (:data:`DEFAULT_MIN_RATE`) where the operation knows how many bytes it moves: a limit on a
  stall, not on a large transfer that progresses.
* The storage clients get connect and read timeouts and a bounded number of retries
  (:func:`with_client_defaults`): botocore's ``config_kwargs`` for s3fs, aiohttp's per-request
  timeouts for gcsfs. What the caller set explicitly is never overridden, key by key.
* A limit that passes raises :class:`~flyte_ray.storage.values.StorageTimeoutError`, which names
  the operation, the key and the URL with any credentials removed (:func:`redact_url`); storage
  options (which may hold secrets) never appear in it. A storage client's own timeout after its
  retries raises the same error.
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_MIN_RATE",
    "DEFAULT_OP_TIMEOUT",
    "ENV_STORAGE_TIMEOUT",
    "Expired",
    "env_op_timeout",
    "is_client_timeout",
    "limited",
    "redact_url",
    "remaining",
    "with_client_defaults",
]

T = TypeVar("T")

#: Environment variable: the default per-operation limit in seconds (``inf`` or ``none``: none).
ENV_STORAGE_TIMEOUT = "FLYTE_RAY_STORAGE_TIMEOUT"
#: Seconds an operation may take on top of moving its bytes at :data:`DEFAULT_MIN_RATE`.
DEFAULT_OP_TIMEOUT = 60.0
#: Bytes per second below which a transfer of known size counts as stalled (1 MiB/s).
DEFAULT_MIN_RATE = float(2**20)

#: botocore client settings for s3fs (``config_kwargs``), each used unless the caller set it.
S3_CONFIG_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,
    "read_timeout": 30,
    "retries": {"max_attempts": 3, "mode": "standard"},
}
#: gcsfs: aiohttp timeouts per request (no total: a large transfer may take long).
GCS_SOCK_CONNECT, GCS_SOCK_READ = 10.0, 30.0

_S3_PROTOCOLS = frozenset({"s3", "s3a"})
_GCS_PROTOCOLS = frozenset({"gs", "gcs"})
# Timeouts of the storage clients (botocore, aiohttp, fsspec), recognised by class name so that
# this module imports none of them.
_CLIENT_TIMEOUTS = frozenset({"ConnectTimeoutError", "ReadTimeoutError", "FSTimeoutError", "ServerTimeoutError"})


def env_op_timeout() -> float:
    """The default per-operation limit: ``$FLYTE_RAY_STORAGE_TIMEOUT`` or
    :data:`DEFAULT_OP_TIMEOUT` (``math.inf``: no limit)."""
    raw = os.environ.get(ENV_STORAGE_TIMEOUT, "").strip().lower()
    if not raw:
        return DEFAULT_OP_TIMEOUT
    if raw in ("none", "inf", "off"):
        return math.inf
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_STORAGE_TIMEOUT} must be a number of seconds or 'none', got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{ENV_STORAGE_TIMEOUT} must be positive, got {raw!r}")
    return value


def with_client_defaults(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` plus the client timeouts and retry bounds of the module docstring, for the
    fsspec filesystem of ``protocol`` (a new dict; keys the caller set are kept as they are)."""
    out = dict(options)
    if protocol in _S3_PROTOCOLS:
        config = dict(out.get("config_kwargs") or {})
        for k, v in S3_CONFIG_DEFAULTS.items():
            if k not in config:
                config[k] = copy.deepcopy(v)  # botocore rewrites the retries dict it is given
        out["config_kwargs"] = config
    elif protocol in _GCS_PROTOCOLS and out.get("requests_timeout") is None:
        try:
            import aiohttp
        except ImportError:  # pragma: no cover -- gcsfs depends on aiohttp
            return out
        out["requests_timeout"] = aiohttp.ClientTimeout(
            total=None, sock_connect=GCS_SOCK_CONNECT, sock_read=GCS_SOCK_READ
        )
    return out


def redact_url(url: str) -> str:
    """``url`` without credentials: user info (``user:secret@``), query and fragment go."""
    if "://" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_client_timeout(exc: BaseException) -> bool:
    """True when ``exc`` is a storage client's own timeout (or was raised ``from`` one). An
    error that says what happened to the object (absent, forbidden) is never one."""
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return False
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, asyncio.TimeoutError) or type(e).__name__ in _CLIENT_TIMEOUTS:
            return True
        e = e.__cause__
    return False


class Expired(Exception):
    """Our time limit passed (carried out of fsspec's ``sync`` as is: it would turn any
    ``TimeoutError`` into its own ``FSTimeoutError``, losing the operation and key)."""


async def limited(make: Callable[[], Awaitable[T]], timeout: float | None) -> T:
    """``await make()``, cancelled after ``timeout`` seconds (None: no limit); raises
    :class:`Expired` when that limit is what ended it."""
    if timeout is None:
        return await make()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        return await asyncio.wait_for(make(), timeout)
    except asyncio.TimeoutError:
        # aiohttp's own timeouts are asyncio.TimeoutError too: only ours is relabelled.
        if loop.time() >= deadline:
            raise Expired from None
        raise


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (``time.monotonic()`` based; None: no deadline)."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)
