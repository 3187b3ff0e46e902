"""Task output caching: ``Cache`` policies and the store behind them.

A cached call (``cache="auto"`` or ``Cache(...)`` at the environment, decorator, ``override``
level) first looks for a stored output under its *cache key*; a hit returns that output without
scheduling anything on Ray; a miss runs the call as usual and stores its output if it succeeded.

Cache key
---------
``<storage>/cache/<fqn>/<version[:16]>/<key>`` where

* ``fqn`` is the task's ``"<env>.<function>"``;
* ``version`` is ``Cache.version_override`` when given, else :func:`cache_version`: the SHA-256 of
  the function's source, normalised through its syntax tree (decorators, comments and
  formatting do not count; any change to the signature, body or docstring does). When no source
  is available (e.g. a function built with ``exec``) the compiled code (bytecode, constants and
  names, recursively) is hashed instead. Both forms can change with the Python minor version, so
  upgrading Python may invalidate default-versioned entries (pin ``version_override`` to avoid
  that). Only the task's own function counts: an edit to a helper it calls does not change
  the version (bump ``version_override`` or ``salt`` for that);
* ``key`` is the SHA-256 of ``fqn``, ``version``, ``salt``, the outputs of ``policies`` and the
  inputs. Inputs are bound to the signature (``inspect.Signature.bind`` + defaults), so
  ``f(1, y=2)``, ``f(x=1, y=2)`` and ``f(1)`` (when ``y=2`` is the default) share a key; names in
  ``ignored_inputs`` are left out.

Inputs are hashed with a canonical encoding (:func:`stable_hash`), never with pickle (whose
bytes change across versions and runs). Every value is written as a type tag followed by
length-prefixed parts:

=====================  =====================================================================
value                  encoded as
=====================  =====================================================================
None, bool             tag
int                    decimal text (``1`` and ``1.0`` differ; ``True`` and ``1`` differ)
float, complex         ``float.hex`` of each part (``0.0`` and ``-0.0`` differ, NaN is stable)
str, bytes             UTF-8 / raw bytes (``bytearray`` and ``memoryview`` as bytes)
list, tuple            items in order (a list and a tuple differ)
dict                   items sorted by the encoding of their keys (insertion order is ignored)
set, frozenset         items sorted by their encoding
dataclass instance     ``module.qualname`` of the class + each field's name and value
pydantic model         ``module.qualname`` + ``model_dump(mode="json")``
numpy array / scalar   dtype, shape and the C-contiguous raw bytes (object arrays: TypeError)
Enum member            ``module.qualname`` of the class + the member's value
datetime, date, time   ISO 8601 text (time zone included); timedelta: days, seconds, microseconds
pathlib path           the class name + ``str(path)``
Decimal, UUID          their text form
=====================  =====================================================================

Anything else raises ``TypeError`` naming the argument (and where inside it the value sits);
leave it out with ``Cache(ignored_inputs=(name,))``, and if it matters, fold a stable fingerprint
of it in with a policy (``Cache(policies=[lambda task, inputs: fingerprint(inputs[name])])``).
Policies are callables ``(task, inputs) -> str`` that receive every bound input, ignored ones
included.

Stored objects
--------------
One object per key: a magic line, one line of JSON metadata (fqn, version, key, writer id, time,
payload size) and the output pickled with Ray's cloudpickle. Object stores write it with one PUT
(atomic: an object is either fully there or absent); a local folder writes a temporary file and
renames it into place. Readers trust only the final name and check the recorded size, so a
half-written output is never read. A lookup is one GET; an output that cannot be read back (a
truncated object, a class that no longer unpickles) counts as a miss, and the call runs again.

A hit costs the key computation and one GET (measured ~50 us on a local folder, against
~1.4 ms for a bare ``ray.get(f.remote())``); it schedules nothing on Ray, so a ``Run`` served
from the cache has an empty attempt history.

Behaviors
---------
``"auto"`` looks up, then runs and stores on a miss; ``"override"`` (or
``with_runcontext(overwrite_cache=True)``, which reaches every call of the run) skips the lookup,
runs and stores, replacing what was there; ``"disable"`` never reaches this module. Only
successful outputs are stored: a call that raises stores nothing.

``serialize=True``: identical calls run once
--------------------------------------------
* In one process (the driver, or one worker), concurrent identical calls - sync or async, from
  any thread - share one in-flight call. The others wait for it and each gets its own copy of
  the output (deserialised, so callers never alias one mutable object).
* Across processes and machines, a *lease* object ``<key>.lease`` (owner id, expiry) elects one
  runner. It is created with create-if-absent: ``O_EXCL``-style hard link on a local folder,
  ``If-None-Match: *`` on S3 (``fs.open(path, "xb")``); other backends write then read back
  the owner, which narrows but does not close the race. The runner renews the lease every
  ``LEASE_TTL / 3`` seconds while it runs, writes the output, then deletes the lease. Waiters poll
  the small lease object with backoff (0.05 s growing to 1 s) and read the output once the lease
  is gone. A lease whose expiry has passed (by its writer's clock) or that did not change for
  ``LEASE_TTL`` seconds (by the waiter's clock) is taken over: the runner died.
* If the runner fails, nothing is stored and the lease is released; one of the waiters becomes
  the next runner (as Flyte's cache reservations do), so waiters never see another call's error.
* Guarantees: with a live runner, identical calls run exactly once. After a lease expires while
  its runner is in fact alive (a stall longer than ``LEASE_TTL``, or large clock skew), or on a
  backend without create-if-absent, two runners may run; both store the same key and the last
  write wins, which is harmless for deterministic tasks. Inside a Ray worker, a waiter sleeps in
  a zero-CPU Ray task so that its CPU goes to the runner's attempt (no deadlock on small
  clusters).
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import dataclasses
import datetime as _dt
import decimal
import enum
import hashlib
import inspect
import json
import logging
import os
import pathlib
import socket
import struct
import textwrap
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generator, Literal, Mapping, Optional, Tuple, Union

__all__ = ["Cache", "CacheRequest", "as_cache", "cache_version", "cache_key", "stable_hash", "cache_url",
           "LEASE_TTL"]

logger = logging.getLogger("flyte_ray")

from .cache_policy import Cache, CacheBehavior, CacheRequest, as_cache  # noqa: E402,F401  (re-exported)


# ============================================================================================
# Canonical encoding of inputs
# ============================================================================================


class _Unhashable(TypeError):
    def __init__(self, where: str, value: Any, why: str = "") -> None:
        self.where = where
        self.value = value
        self.why = why
        super().__init__(where)


def _qualname(cls: type) -> bytes:
    return f"{cls.__module__}.{cls.__qualname__}".encode()


def _part(b: bytes) -> bytes:
    return struct.pack(">Q", len(b)) + b


def _encode(v: Any, where: str, out: list, stack: set) -> None:  # noqa: C901 - one flat dispatch
    """Append the canonical encoding of ``v`` to ``out`` (a list of bytes)."""
    if v is None:
        out.append(b"N")
        return
    t = type(v)
    if t is bool:
        out.append(b"T" if v else b"F")
        return
    if t is str:
        out.append(b"s" + _part(v.encode("utf-8", "surrogatepass")))
        return
    if t is int:
        out.append(b"i" + _part(str(v).encode()))
        return
    if t is float:
        out.append(b"f" + _part(v.hex().encode()))
        return
    if isinstance(v, enum.Enum):
        out.append(b"E" + _part(_qualname(t)))
        _encode(v.value, f"{where}.value", out, stack)
        return
    if isinstance(v, bool):
        out.append(b"T" if v else b"F")
        return
    if isinstance(v, int):
        out.append(b"i" + _part(str(int(v)).encode()))
        return
    if isinstance(v, float):
        out.append(b"f" + _part(float(v).hex().encode()))
        return
    if isinstance(v, complex):
        out.append(b"c" + _part(v.real.hex().encode()) + _part(v.imag.hex().encode()))
        return
    if isinstance(v, str):
        out.append(b"s" + _part(str(v).encode("utf-8", "surrogatepass")))
        return
    if isinstance(v, (bytes, bytearray, memoryview)):
        out.append(b"b" + _part(bytes(v)))
        return
    if isinstance(v, (list, tuple, dict, set, frozenset)) or dataclasses.is_dataclass(v):
        if id(v) in stack:
            raise _Unhashable(where, v, "it contains itself")
        stack.add(id(v))
        try:
            _encode_container(v, where, out, stack)
        finally:
            stack.discard(id(v))
        return
    if isinstance(v, _dt.datetime):
        out.append(b"W" + _part(v.isoformat().encode()))
        return
    if isinstance(v, _dt.date):
        out.append(b"Y" + _part(v.isoformat().encode()))
        return
    if isinstance(v, _dt.time):
        out.append(b"H" + _part(v.isoformat().encode()))
        return
    if isinstance(v, _dt.timedelta):
        out.append(b"R" + _part(f"{v.days}:{v.seconds}:{v.microseconds}".encode()))
        return
    if isinstance(v, pathlib.PurePath):
        out.append(b"p" + _part(t.__name__.encode()) + _part(str(v).encode("utf-8", "surrogatepass")))
        return
    if isinstance(v, decimal.Decimal):
        out.append(b"m" + _part(str(v).encode()))
        return
    if isinstance(v, uuid.UUID):
        out.append(b"u" + _part(v.bytes))
        return
    mod = t.__module__.split(".", 1)[0]
    if mod == "numpy":
        _encode_numpy(v, where, out)
        return
    if mod == "pydantic" or _is_pydantic(v):
        try:
            dumped = v.model_dump(mode="json")
        except Exception as e:  # noqa: BLE001
            raise _Unhashable(where, v, f"model_dump(mode='json') failed: {e}") from None
        out.append(b"P" + _part(_qualname(t)))
        _encode(dumped, where, out, stack)
        return
    raise _Unhashable(where, v)


def _encode_container(v: Any, where: str, out: list, stack: set) -> None:
    if isinstance(v, (list, tuple)):
        out.append((b"l" if isinstance(v, list) else b"t") + struct.pack(">Q", len(v)))
        for i, x in enumerate(v):
            _encode(x, f"{where}[{i}]", out, stack)
    elif isinstance(v, dict):
        items = []
        for k, x in v.items():
            kb: list = []
            _encode(k, f"{where} key {k!r}", kb, stack)
            xb: list = []
            _encode(x, f"{where}[{k!r}]", xb, stack)
            items.append((b"".join(kb), b"".join(xb)))
        items.sort()
        out.append(b"d" + struct.pack(">Q", len(items)))
        for kb2, xb2 in items:
            out.append(kb2)
            out.append(xb2)
    elif isinstance(v, (set, frozenset)):
        elems = []
        for x in v:
            xb = []
            _encode(x, f"{where} (an element)", xb, stack)
            elems.append(b"".join(xb))
        elems.sort()
        out.append(b"S" + struct.pack(">Q", len(elems)))
        out.extend(elems)
    else:  # dataclass instance
        if isinstance(v, type):
            raise _Unhashable(where, v)
        fields = dataclasses.fields(v)
        out.append(b"D" + _part(_qualname(type(v))) + struct.pack(">Q", len(fields)))
        for f in fields:
            out.append(_part(f.name.encode()))
            _encode(getattr(v, f.name), f"{where}.{f.name}", out, stack)


def _is_pydantic(v: Any) -> bool:
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(v, BaseModel)


def _encode_numpy(v: Any, where: str, out: list) -> None:
    import numpy as np

    if isinstance(v, np.ndarray):
        if v.dtype.hasobject:
            raise _Unhashable(where, v, "a numpy array of Python objects has no stable bytes")
        a = np.ascontiguousarray(v)
        out.append(b"A" + _part(a.dtype.str.encode()) + _part(repr(a.dtype.descr).encode())
                   + _part(",".join(map(str, a.shape)).encode()) + _part(a.tobytes()))
        return
    if isinstance(v, np.generic):
        if v.dtype.hasobject:
            raise _Unhashable(where, v)
        out.append(b"a" + _part(v.dtype.str.encode()) + _part(np.asarray(v).tobytes()))
        return
    raise _Unhashable(where, v)


def stable_hash(value: Any, name: str = "value") -> str:
    """SHA-256 (hex) of ``value``'s canonical encoding (see the module docstring).

    Raises ``TypeError`` for values without a stable encoding.
    """
    out: list = []
    try:
        _encode(value, name, out, set())
    except _Unhashable as e:
        raise TypeError(_unhashable_message(e, name, None)) from None
    return hashlib.sha256(b"".join(out)).hexdigest()


def _unhashable_message(e: _Unhashable, arg: str, fqn: Optional[str]) -> str:
    what = f"argument {arg!r}" + (f" of {fqn}" if fqn else "")
    inner = f" (at {e.where})" if e.where != arg else ""
    why = f": {e.why}" if e.why else ""
    return (f"cache key: cannot hash {what}{inner}, a {type(e.value).__module__}.{type(e.value).__qualname__}"
            f"{why}. Cache keys hash None, bool, int, float, complex, str, bytes, list, tuple, dict, set, "
            f"dataclasses, pydantic models, numpy arrays, enums, datetimes, paths, Decimal and UUID. Leave it out "
            f"of the key with Cache(ignored_inputs=({arg!r},)), optionally folding in your own fingerprint of it "
            f"with Cache(policies=...), or pin the version with Cache(version_override=...) if only the "
            f"other inputs should count.")


# ============================================================================================
# Version and key
# ============================================================================================

_versions: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def _strip_decorators(node: ast.AST) -> ast.AST:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        node.decorator_list = []
    return node


def _code_digest(code: Any, h: "hashlib._Hash") -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    h.update(repr(code.co_varnames).encode())
    for c in code.co_consts:
        if inspect.iscode(c):
            _code_digest(c, h)
        else:
            h.update(repr(c).encode())


def cache_version(func_or_task: Any) -> str:
    """The default cache version of a task or function: SHA-256 (hex) of its source.

    The source is normalised through its syntax tree without decorators, so comments, blank
    lines, formatting and ``@env.task(...)`` arguments do not change the version, while any
    change to the signature, body or docstring does. Without source, the compiled code is hashed.
    """
    func = getattr(func_or_task, "func", func_or_task)
    func = inspect.unwrap(func)
    try:
        return _versions[func]
    except (KeyError, TypeError):
        pass
    h = hashlib.sha256()
    try:
        src = textwrap.dedent(inspect.getsource(func))
        try:
            tree = ast.parse(src)
            node = tree.body[0] if len(tree.body) == 1 else tree
            dumped = ast.dump(_strip_decorators(node), annotate_fields=True, include_attributes=False)
            h.update(b"ast:" + dumped.encode())
        except SyntaxError:
            h.update(b"src:" + src.encode())
    except (OSError, TypeError):
        h.update(b"code:")
        _code_digest(func.__code__, h)
    v = h.hexdigest()
    try:
        _versions[func] = v
    except TypeError:
        pass
    return v


_checked: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()


def _check_ignored(task: Any, policy: Cache, sig: inspect.Signature) -> None:
    seen = _checked.setdefault(task, set()) if _weakable(task) else set()
    if policy.ignored_inputs in seen:
        return
    unknown = [n for n in policy.ignored_inputs if n not in sig.parameters]
    if unknown:
        raise ValueError(f"{getattr(task, 'name', task)}: Cache.ignored_inputs names "
                         f"{', '.join(repr(n) for n in unknown)}, which {'is' if len(unknown) == 1 else 'are'} not "
                         f"a parameter; accepted: {', '.join(sig.parameters) or '(none)'}")
    seen.add(policy.ignored_inputs)


def _weakable(x: Any) -> bool:
    try:
        weakref.ref(x)
        return True
    except TypeError:
        return False


def cache_key(task: Any, args: tuple = (), kwargs: Optional[Mapping[str, Any]] = None,
              policy: Optional[Cache] = None) -> Tuple[str, str]:
    """``(version, key)`` of a call of ``task`` with these arguments under ``policy``.

    ``policy`` defaults to the task's resolved cache policy (or ``Cache()``).
    """
    kwargs = dict(kwargs or {})
    if policy is None:
        policy = getattr(getattr(task, "spec", None), "cache", None) or Cache()
    func = getattr(task, "func", task)
    fqn = getattr(task, "name", None) or f"{func.__module__}.{func.__qualname__}"
    sig = getattr(task, "_signature", None) or inspect.signature(func)
    if policy.ignored_inputs:
        _check_ignored(task, policy, sig)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{fqn}{sig}: {e}") from None
    bound.apply_defaults()
    inputs = bound.arguments
    version = policy.version_override or cache_version(func)
    out: list = [b"flyte-ray-cache/1", _part(fqn.encode()), _part(version.encode()), _part(policy.salt.encode())]
    for p in policy._policies:
        r = p(task, dict(inputs))
        if not isinstance(r, str):
            raise TypeError(f"{fqn}: cache policy {p!r} returned {type(r).__name__}, expected str")
        out.append(_part(r.encode()))
    ignored = policy.ignored_inputs
    names = sorted(n for n in inputs if n not in ignored)
    out.append(struct.pack(">Q", len(names)))
    stack: set = set()
    for n in names:
        out.append(_part(n.encode()))
        try:
            _encode(inputs[n], n, out, stack)
        except _Unhashable as e:
            raise TypeError(_unhashable_message(e, n, fqn)) from None
    return version, hashlib.sha256(b"".join(out)).hexdigest()


def cache_url(storage: Any, fqn: str, version: str, key: str) -> str:
    """Where the output of a key lives: ``<storage>/cache/<fqn>/<version[:16]>/<key>``."""
    return storage.prefix_url("cache", fqn, version[:16], key)


# ============================================================================================
# Stored objects
# ============================================================================================

MAGIC = b"FLYTE-RAY-CACHE 1\n"
#: seconds a lease stays valid without renewal; the runner renews it every LEASE_TTL / 3
LEASE_TTL = float(os.environ.get("FLYTE_RAY_CACHE_LEASE_TTL", "60"))
_POLL_MIN, _POLL_MAX = 0.05, 1.0


class _Entry:
    """One cached call's key, storage paths and mode."""

    __slots__ = ("fqn", "version", "key", "fs", "url", "path", "lease_path", "local", "exclusive", "overwrite",
                 "serialize")

    def __init__(self, call: Any) -> None:
        policy: Cache = call.spec.cache
        self.fqn = call.spec.fqn
        self.version, self.key = cache_key(call.task, call.args, call.kwargs, policy)
        storage = call.settings.storage
        self.fs = storage.fs
        self.url = cache_url(storage, self.fqn, self.version, self.key)
        self.local = storage.is_local
        self.path = self.fs._strip_protocol(self.url) if not self.local else self.url
        self.lease_path = self.path + ".lease"
        self.exclusive = self.local or type(self.fs).__name__ == "S3FileSystem"
        ro = call.run_overrides
        self.overwrite = policy.behavior == "override" or bool(ro and ro.get("_overwrite_cache"))
        self.serialize = policy.serialize


def _pack(e: _Entry, payload: bytes, owner: str) -> bytes:
    meta = {"fqn": e.fqn, "version": e.version, "key": e.key, "owner": owner, "created": time.time(),
            "size": len(payload)}
    return MAGIC + json.dumps(meta, separators=(",", ":")).encode() + b"\n" + payload


def _unpack(blob: bytes) -> Optional[Tuple[dict, bytes]]:
    if not blob.startswith(MAGIC):
        return None
    nl = blob.find(b"\n", len(MAGIC))
    if nl < 0:
        return None
    try:
        meta = json.loads(blob[len(MAGIC):nl])
    except ValueError:
        return None
    payload = blob[nl + 1:]
    if not isinstance(meta, dict) or meta.get("size") != len(payload):
        return None
    return meta, payload


def _get(fs: Any, path: str, local: bool) -> Optional[bytes]:
    try:
        if local:
            with open(path, "rb") as f:
                return f.read()
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def _lookup(e: _Entry) -> Optional[Tuple[dict, bytes]]:
    """One GET: ``(meta, payload)`` of a readable stored output, or None."""
    try:
        blob = _get(e.fs, e.path, e.local)
    except Exception as exc:  # noqa: BLE001 - a storage hiccup is a miss, not a failure
        logger.warning("cache %s: lookup failed (%s); running the task", e.fqn, exc)
        return None
    if blob is None:
        return None
    got = _unpack(blob)
    if got is None:
        logger.warning("cache %s: unreadable object at %s; running the task", e.fqn, e.url)
    return got


def _loads(e: _Entry, payload: bytes) -> Tuple[bool, Any]:
    from ray import cloudpickle

    try:
        return True, cloudpickle.loads(payload)
    except Exception as exc:  # noqa: BLE001
        logger.warning("cache %s: stored output no longer loads (%s: %s); running the task", e.fqn,
                       type(exc).__name__, exc)
        return False, None


def _put(fs: Any, path: str, data: bytes, local: bool) -> None:
    """Write an object whole: one PUT on object stores, temp file + rename locally."""
    if local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            _silent(os.unlink, tmp)
            raise
    else:
        fs.pipe_file(path, data)


def _silent(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001
        pass


def _store(e: _Entry, value: Any, owner: str) -> Optional[bytes]:
    """Pickle and store ``value``; returns the payload (None if it cannot be pickled)."""
    from ray import cloudpickle

    try:
        payload = cloudpickle.dumps(value)
    except Exception as exc:  # noqa: BLE001
        logger.warning("cache %s: output not stored, it cannot be pickled (%s)", e.fqn, exc)
        return None
    try:
        _put(e.fs, e.path, _pack(e, payload, owner), e.local)
    except Exception as exc:  # noqa: BLE001
        logger.warning("cache %s: output not stored (%s: %s)", e.fqn, type(exc).__name__, exc)
    return payload


# ---------------------------------------------------------------------------------- leases


def _new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _lease_doc(owner: str, beat: int) -> bytes:
    return json.dumps({"owner": owner, "expires": time.time() + LEASE_TTL, "ttl": LEASE_TTL,
                       "beat": beat}).encode()


def _parse_lease(raw: Optional[bytes]) -> Optional[dict]:
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        return d if isinstance(d, dict) else {}
    except ValueError:
        return {}  # being written (non-atomic backends): held, owner unknown


def _create_if_absent(e: _Entry, data: bytes, owner: str) -> bool:
    path = e.lease_path
    if e.local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)  # fails if the lease exists; the lease appears with its full content
            return True
        except FileExistsError:
            return False
        finally:
            _silent(os.unlink, tmp)
    if e.exclusive:
        try:
            with e.fs.open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):
            e.exclusive = False
            return _create_if_absent(e, data, owner)
    else:
        if e.fs.exists(path):
            return False
        e.fs.pipe_file(path, data)
        time.sleep(0.02)  # let a concurrent writer land before reading back
    lease = _parse_lease(_get(e.fs, path, False))
    return bool(lease) and lease.get("owner") == owner


def _release(e: _Entry, owner: str) -> None:
    try:
        lease = _parse_lease(_get(e.fs, e.lease_path, e.local))
        if lease and lease.get("owner") == owner:
            if e.local:
                os.unlink(e.lease_path)
            else:
                e.fs.rm_file(e.lease_path)
    except Exception as exc:  # noqa: BLE001 - it expires anyway
        logger.debug("cache %s: releasing lease failed: %s", e.fqn, exc)


class _Renewer:
    """Keeps a lease alive while its owner runs the call (a daemon thread)."""

    def __init__(self, e: _Entry, owner: str) -> None:
        self.e, self.owner = e, owner
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="flyte-ray-cache-lease", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        beat = 0
        while not self.stop.wait(LEASE_TTL / 3):
            beat += 1
            try:
                lease = _parse_lease(_get(self.e.fs, self.e.lease_path, self.e.local))
                if not lease or lease.get("owner") != self.owner:
                    logger.warning("cache %s: lost the lease while running; another caller may run it too",
                                   self.e.fqn)
                    return
                _put(self.e.fs, self.e.lease_path, _lease_doc(self.owner, beat), self.e.local)
            except Exception as exc:  # noqa: BLE001
                logger.debug("cache %s: lease renewal failed: %s", self.e.fqn, exc)

    def close(self) -> None:
        self.stop.set()


@dataclass
class _Sleep:
    seconds: float


@dataclass
class _Run:
    owner: str


@dataclass
class _Hit:
    meta: dict
    payload: bytes


def _elect(e: _Entry, checked: bool) -> Generator[_Sleep, None, Union[_Run, _Hit]]:
    """Across processes: become the runner (``_Run``) or wait for the runner's output (``_Hit``).

    Yields ``_Sleep`` between polls; storage I/O happens inside. ``checked``: the caller has just
    looked the output up.
    """
    delay = _POLL_MIN
    watched: Optional[str] = None  # owner of the lease being waited on
    last_raw: Optional[bytes] = None
    last_change = time.monotonic()
    while True:
        raw = _get(e.fs, e.lease_path, e.local)
        if raw is None:
            if not checked and (watched is not None or not e.overwrite):
                got = _lookup(e)
                if got is not None and (not e.overwrite or got[0].get("owner") == watched):
                    return _Hit(*got)
            checked = False
            owner = _new_owner()
            if _create_if_absent(e, _lease_doc(owner, 0), owner):
                if not e.overwrite:
                    got = _lookup(e)  # a runner may have finished between our lookup and the lease
                    if got is not None:
                        _release(e, owner)
                        return _Hit(*got)
                return _Run(owner)
            continue  # someone else got it: wait on theirs
        lease = _parse_lease(raw)
        now = time.monotonic()
        if raw != last_raw:
            last_raw, last_change = raw, now
        if lease:
            watched = lease.get("owner", watched)
        expired = bool(lease) and isinstance(lease.get("expires"), (int, float)) and lease["expires"] < time.time()
        if expired or now - last_change > LEASE_TTL:
            logger.warning("cache %s: lease of %s expired; taking over", e.fqn, (lease or {}).get("owner", "?"))
            try:
                if _get(e.fs, e.lease_path, e.local) == raw:
                    (os.unlink if e.local else e.fs.rm_file)(e.lease_path)
            except FileNotFoundError:
                pass
            watched, last_raw, checked = None, None, False
            continue
        yield _Sleep(delay)
        delay = min(delay * 1.6, _POLL_MAX)


# ---------------------------------------------------------------------------------- waiting

_sleeper = None


def _sleeper_ref(seconds: float) -> Any:
    """A zero-CPU Ray task that sleeps: waiting on it inside a worker releases the worker's CPU."""
    global _sleeper
    if _sleeper is None:
        import ray

        def _cache_wait(s: float) -> None:
            time.sleep(s)

        _sleeper = ray.remote(num_cpus=0, max_retries=0)(_cache_wait)
    return _sleeper.remote(seconds)


def _nap_sync(seconds: float) -> None:
    from . import waiting

    if waiting.is_worker():
        waiting.wait_blocking(_sleeper_ref(seconds), None)
    else:
        time.sleep(seconds)


async def _nap_async(seconds: float) -> None:
    from . import waiting

    if waiting.is_worker():
        await waiting.await_ref(_sleeper_ref(seconds))
    else:
        await asyncio.sleep(seconds)


def _wait_future_sync(fut: concurrent.futures.Future) -> Any:
    from . import waiting

    if waiting.is_worker() and waiting.on_main_thread():
        return waiting.block_on(fut)
    return fut.result()


# ============================================================================================
# Running cached calls (called by task._run_call / _run_call_async)
# ============================================================================================

# In-process single flight: output url -> Future of ("payload", bytes) | ("value", obj)
_inflight: Dict[str, concurrent.futures.Future] = {}
_inflight_lock = threading.Lock()


class _LeaderFailed(Exception):
    """The in-process runner failed: a waiter tries again (and may become the runner)."""


async def _await_shared(fut: concurrent.futures.Future) -> None:
    """Wait for a shared in-flight call; cancelling this waiter never cancels the shared call
    (``asyncio.wrap_future`` would)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def wake(_f: concurrent.futures.Future) -> None:
        try:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))
        except RuntimeError:  # the waiter's loop is gone
            pass

    fut.add_done_callback(wake)
    await done


def _share(fut: concurrent.futures.Future) -> Any:
    kind, obj = fut.result()
    if kind == "payload":
        from ray import cloudpickle

        return cloudpickle.loads(obj)
    return obj


def run_cached_sync(call: Any, inner: Callable[[Any], Any]) -> Any:
    """Run ``call`` through the cache: a hit returns the stored output, a miss runs ``inner``."""
    gen = _cached(call)
    done, op = _advance(gen, None, None)
    while not done:
        try:
            send, exc = _do_sync(op, call, inner), None
        except BaseException as x:  # noqa: BLE001 - handed to the flow, which decides
            send, exc = None, x
        done, op = _advance(gen, send, exc)
    return op


async def run_cached_async(call: Any, inner: Callable[[Any], Any]) -> Any:
    """The async form of :func:`run_cached_sync` (storage I/O off the loop for remote storage)."""
    gen = _cached(call)
    done, op = _advance(gen, None, None)
    while not done:
        try:
            send, exc = await _do_async(op, call, inner), None
        except BaseException as x:  # noqa: BLE001 - handed to the flow, which decides
            send, exc = None, x
        done, op = _advance(gen, send, exc)
    return op


def _advance(gen: Generator[tuple, Any, Any], send: Any, exc: Optional[BaseException]) -> Tuple[bool, Any]:
    """Resume the flow with a result or an exception: ``(False, next op)`` or ``(True, value)``."""
    try:
        return False, (gen.throw(exc) if exc is not None else gen.send(send))
    except StopIteration as stop:
        return True, stop.value


def _do_sync(op: tuple, call: Any, inner: Callable[[Any], Any]) -> Any:
    kind = op[0]
    if kind == _IO:
        return op[2](*op[3])
    if kind == _INNER:
        return inner(call)
    if kind == _NAP:
        return _nap_sync(op[1])
    return _wait_shared_sync(op[1])


async def _do_async(op: tuple, call: Any, inner: Callable[[Any], Any]) -> Any:
    kind = op[0]
    if kind == _IO:
        return op[2](*op[3]) if op[1] else await asyncio.to_thread(op[2], *op[3])
    if kind == _INNER:
        return await inner(call)
    if kind == _NAP:
        return await _nap_async(op[1])
    return await _await_shared(op[1])


# What the flow asks its host to do; the sync and async hosts above differ only in how.
_IO = "io"  # (_IO, local, fn, args): storage work (the async host runs it off the loop unless local)
_INNER = "inner"  # (_INNER,): run the call
_NAP = "nap"  # (_NAP, seconds): back off while another process holds the lease
_WAIT = "wait"  # (_WAIT, future): wait for the same call running in this process


def _io(e: _Entry, fn: Callable[..., Any], *args: Any) -> tuple:
    return (_IO, e.local, fn, args)


def _cached(call: Any) -> Generator[tuple, Any, Any]:
    """The cached call's flow, with no waiting in it: it yields what to do and is sent the result."""
    e = _Entry(call)
    if not e.overwrite:
        got = yield _io(e, _lookup, e)
        if got is not None:
            ok, value = _loads(e, got[1])
            if ok:
                return value
    if not e.serialize:
        value = yield (_INNER,)
        yield _io(e, _store, e, value, _new_owner())
        return value
    while True:
        with _inflight_lock:
            fut = _inflight.get(e.url)
            lead = fut is None
            if lead:
                fut = _inflight[e.url] = concurrent.futures.Future()
        if not lead:
            yield (_WAIT, fut)
            if isinstance(fut.exception(), _LeaderFailed):
                continue  # the runner failed: try again (maybe as the runner)
            return _share(fut)
        try:
            value, shared = yield from _lead(e)
        except BaseException as exc:
            fut.set_exception(_LeaderFailed(repr(exc)))
            raise
        else:
            fut.set_result(shared)
            return value
        finally:
            with _inflight_lock:
                if _inflight.get(e.url) is fut:
                    del _inflight[e.url]


def _wait_shared_sync(fut: concurrent.futures.Future) -> None:
    try:
        _wait_future_sync(fut)
    except _LeaderFailed:
        pass  # the flow sees it on the future


def _step(gen: Generator[_Sleep, None, Any]) -> Tuple[bool, Any]:
    """``next(gen)`` as ``(done, value)`` (a StopIteration cannot cross a thread boundary)."""
    try:
        return False, next(gen)
    except StopIteration as stop:
        return True, stop.value


def _lead(e: _Entry) -> Generator[tuple, Any, Tuple[Any, tuple]]:
    """This process runs the call: under the storage lease when it can get one."""
    try:
        gen = _elect(e, checked=True)
        done, res = yield _io(e, _step, gen)
        while not done:
            yield (_NAP, res.seconds)
            done, res = yield _io(e, _step, gen)
    except Exception as exc:  # noqa: BLE001 - storage trouble: run unserialized rather than fail
        logger.warning("cache %s: serialize lease unavailable (%s: %s); running without it", e.fqn,
                       type(exc).__name__, exc)
        res = None
    if not isinstance(res, _Run):
        if res is not None:
            ok, value = _loads(e, res.payload)
            if ok:
                return value, ("payload", res.payload)
        value = yield (_INNER,)  # no lease (storage trouble) or an unloadable output: run, store
        payload = yield _io(e, _store, e, value, _new_owner())
        return value, _shared(value, payload)
    renewer = _Renewer(e, res.owner)
    try:
        value = yield (_INNER,)
        payload = yield _io(e, _store, e, value, res.owner)
    finally:
        renewer.close()
        yield _io(e, _release, e, res.owner)
    return value, _shared(value, payload)


def _shared(value: Any, payload: Optional[bytes]) -> tuple:
    return ("payload", payload) if payload is not None else ("value", value)
