"""Replaying traced results on retry: what makes ``@flyte_ray.trace`` and ``flyte_ray.durable``
work as in flyte-sdk.

Rules:

* Inside a task, every call of a traced function (sync or ``async``) is recorded under the task
  *call* -- shared by all its attempts -- as ``traces/<run>/<call id>/<function>-<inputs
  digest>-<n>``, where ``n`` counts the calls with the same function and inputs within the
  attempt. A later attempt (a retry, a preemption's restart, a resumed run) that makes the same
  call gets the recorded result back without running the function. So a retried task replays
  its traced steps and resumes after the last one that finished (a failed traced call is not
  recorded: it runs again).
* Outside a task, and for generator functions, a traced function just runs.
* One LIST of the call's records per attempt, on its first traced call (nothing else is read
  when there is nothing to replay); one PUT per traced call.
* Storage is untrusted input: a result is stored as JSON when it round-trips exactly through
  JSON (None, bool, int, finite float, str, lists, string-keyed dicts: enough for durable's
  clock and most step results); anything else is stored as a pickle with an HMAC tag made with
  the cache key (:mod:`flyte_ray.cache.auth`) and is unpickled only when the tag verifies. With
  shared storage and no key, such results are not recorded (one warning): the step runs again on
  retry, as with no trace at all. A record that fails to decode or verify is ignored (the step
  runs again) with one warning.
* Inputs that cannot be pickled (for the digest) make the call run unrecorded.
* Recording never fails the task: a storage error on a write is logged and the result returned.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import logging
import math
import pickle
import threading
from typing import Any, Callable, Optional, Tuple

from .cache.auth import TAG_SIZE, secret_for, sign, verify
from .context import TaskContext, ctx, current_settings
from .storage.keys import sanitize_component

__all__ = ["replayed"]

logger = logging.getLogger(__name__)

_JSON = b"J"
_PICKLE = b"P"
_warned: set = set()


def _warn_once(what: str, msg: str, *args: Any) -> None:
    if what not in _warned:
        _warned.add(what)
        logger.warning(msg, *args)


def _json_exact(v: Any) -> bool:
    """True when ``v`` comes back from JSON as an equal value of the same types."""
    if v is None or isinstance(v, (bool, str)):
        return True
    if isinstance(v, int):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if type(v) is list:
        return all(_json_exact(x) for x in v)
    if type(v) is dict:
        return all(isinstance(k, str) and _json_exact(x) for k, x in v.items())
    return False


class _Records:
    """The trace records of one attempt's task call (module docstring)."""

    def __init__(self, c: TaskContext) -> None:
        storage = (c.settings or current_settings()).storage
        self.store = storage.store
        self.prefix = storage.key("traces", c.run_name, c.call_id)
        self.secret = secret_for(self.store, warn=False)
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._existing: Optional[set] = None

    def key_for(self, name: str, digest: str) -> str:
        base = f"{name}-{digest}"
        with self._lock:
            n = self._seen.get(base, 0)
            self._seen[base] = n + 1
        return f"{self.prefix}/{sanitize_component(f'{base}-{n}')}"

    def _listed(self) -> set:
        if self._existing is None:
            try:
                self._existing = set(self.store.list(self.prefix))
            except Exception as e:  # noqa: BLE001 -- nothing replayed: the steps run again
                _warn_once(
                    "list", "trace: could not list recorded results under %s (%s); steps run again", self.prefix, e
                )
                self._existing = set()
        return self._existing

    def get(self, key: str) -> Tuple[bool, Any]:
        if key not in self._listed():
            return False, None
        try:
            data = self.store.get(key)
        except Exception as e:  # noqa: BLE001
            _warn_once("get", "trace: could not read a recorded result (%s); the step runs again", e)
            return False, None
        if not data:
            return False, None
        kind, body = data[:1], data[1:]
        try:
            if kind == _JSON:
                return True, json.loads(body)
            if kind == _PICKLE and self.secret is not None and len(body) > TAG_SIZE:
                tag, blob = body[:TAG_SIZE], body[TAG_SIZE:]
                if verify(self.secret, tag, blob):
                    return True, pickle.loads(blob)
        except Exception:  # noqa: BLE001 -- a damaged record: run the step again
            pass
        _warn_once("bad", "trace: ignoring a recorded result that does not decode or verify (%s)", key)
        return False, None

    def put(self, key: str, value: Any) -> None:
        if _json_exact(value):
            data = _JSON + json.dumps(value, separators=(",", ":")).encode()
        elif self.secret is not None:
            try:
                blob = pickle.dumps(value, protocol=5)
            except Exception as e:  # noqa: BLE001
                _warn_once(
                    "pickle", "trace: a result of type %s cannot be pickled (%s); not recorded", type(value).__name__, e
                )
                return
            data = _PICKLE + sign(self.secret, blob) + blob
        else:
            _warn_once(
                "key",
                "trace: results that are not plain JSON values are not recorded on shared storage without a cache "
                "key ($FLYTE_RAY_CACHE_KEY, see flyte_ray.cache.auth); such traced steps run again on retry",
            )
            return
        try:
            self.store.put_atomic(key, data)
        except Exception as e:  # noqa: BLE001 -- recording never fails the task
            _warn_once("put", "trace: could not record a result (%s); the step would run again on retry", e)


def _digest(args: tuple, kwargs: dict) -> Optional[str]:
    try:
        blob = pickle.dumps((args, sorted(kwargs.items())), protocol=5)
    except Exception:  # noqa: BLE001 -- unpicklable inputs: run unrecorded
        return None
    return hashlib.sha256(blob).hexdigest()[:16]


def _records() -> Optional[_Records]:
    c = ctx()
    if c is None:
        return None
    return c.attempt_state("trace", lambda: _Records(c))


def replayed(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with its results recorded and replayed (module docstring); generators unchanged."""
    name = f"{func.__module__}.{func.__qualname__}"
    if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
        return func

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            rec = _records()
            digest = _digest(args, kwargs) if rec is not None else None
            if rec is None or digest is None:
                return await func(*args, **kwargs)
            key = rec.key_for(name, digest)
            hit, value = await asyncio.to_thread(rec.get, key)
            if hit:
                return value
            value = await func(*args, **kwargs)
            await asyncio.to_thread(rec.put, key, value)
            return value

        return run_async

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        rec = _records()
        digest = _digest(args, kwargs) if rec is not None else None
        if rec is None or digest is None:
            return func(*args, **kwargs)
        key = rec.key_for(name, digest)
        hit, value = rec.get(key)
        if hit:
            return value
        value = func(*args, **kwargs)
        rec.put(key, value)
        return value

    return run
