"""Cache keys: a canonical encoding of inputs, the default version of a task, the key of a call.

Cache key: ``<storage>/cache/<fqn>/<version[:16]>/<key>`` where

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
a type with a          ``module.qualname`` + the string ``type.__flyte_ray_cache_key__(value)``
``__flyte_ray_cache_   (``flyte_ray.io``'s File / Dir / DataFrame: their content ``hash`` when
key__`` method         they have one, else their location)
=====================  =====================================================================

Anything else raises ``TypeError`` naming the argument (and where inside it the value sits);
leave it out with ``Cache(ignored_inputs=(name,))``, and if it matters, fold a stable fingerprint
of it in with a policy (``Cache(policies=[lambda task, inputs: fingerprint(inputs[name])])``).
Key policies are callables ``(task, inputs) -> str`` that receive every bound input, ignored
ones included; flyte-sdk policy objects (``get_version(salt, params)``) make the version instead.
No Ray, no I/O here.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as _dt
import decimal
import enum
import hashlib
import inspect
import pathlib
import struct
import textwrap
import uuid
import weakref
from typing import Any, Mapping, Optional, Tuple

from ..cache_policy import Cache, VersionParameters, is_version_policy

__all__ = ["FunctionBodyPolicy", "stable_hash", "cache_version", "cache_key", "cache_url"]


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
    hook = getattr(t, "__flyte_ray_cache_key__", None)
    if hook is not None:
        # A type that says what identifies it for caching (flyte_ray.io: a File's content hash,
        # when it has one, rather than where its bytes happen to live).
        k = hook(v)
        if not isinstance(k, str):
            raise TypeError(
                f"cache key: {_qualname(t).decode()}.__flyte_ray_cache_key__ returned {type(k).__name__}, expected str"
            )
        out.append(b"K" + _part(_qualname(t)) + _part(k.encode("utf-8", "surrogatepass")))
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
        out.append(
            b"A"
            + _part(a.dtype.str.encode())
            + _part(repr(a.dtype.descr).encode())
            + _part(",".join(map(str, a.shape)).encode())
            + _part(a.tobytes())
        )
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
    return (
        f"cache key: cannot hash {what}{inner}, a {type(e.value).__module__}.{type(e.value).__qualname__}"
        f"{why}. Cache keys hash None, bool, int, float, complex, str, bytes, list, tuple, dict, set, "
        f"dataclasses, pydantic models, numpy arrays, enums, datetimes, paths, Decimal and UUID. Leave it out "
        f"of the key with Cache(ignored_inputs=({arg!r},)), optionally folding in your own fingerprint of it "
        f"with Cache(policies=...), or pin the version with Cache(version_override=...) if only the "
        f"other inputs should count."
    )


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
        raise ValueError(
            f"{getattr(task, 'name', task)}: Cache.ignored_inputs names "
            f"{', '.join(repr(n) for n in unknown)}, which {'is' if len(unknown) == 1 else 'are'} not "
            f"a parameter; accepted: {', '.join(sig.parameters) or '(none)'}"
        )
    seen.add(policy.ignored_inputs)


def _weakable(x: Any) -> bool:
    try:
        weakref.ref(x)
        return True
    except TypeError:
        return False


def cache_key(
    task: Any, args: tuple = (), kwargs: Optional[Mapping[str, Any]] = None, policy: Optional[Cache] = None
) -> Tuple[str, str]:
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
    policies = policy._policies
    versioners = [p for p in policies if is_version_policy(p)]
    version = policy.version_override or (
        _policy_version(fqn, versioners, policy.salt, func) if versioners else cache_version(func)
    )
    out: list = [b"flyte-ray-cache/1", _part(fqn.encode()), _part(version.encode()), _part(policy.salt.encode())]
    for p in policies:
        if is_version_policy(p):
            continue
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


def _policy_version(fqn: str, versioners: list, salt: str, func: Any) -> str:
    """The version flyte-sdk style policies give (SHA-256 of their versions, in order)."""
    params = VersionParameters(func=func)
    h = hashlib.sha256(b"flyte-ray-policies/1")
    for p in versioners:
        v = p.get_version(salt, params)
        if not isinstance(v, str):
            raise TypeError(f"{fqn}: cache policy {p!r}.get_version returned {type(v).__name__}, expected str")
        h.update(_part(v.encode()))
    return h.hexdigest()


class FunctionBodyPolicy:
    """flyte-sdk's default cache policy: the version is the hash of the function's body (see
    :func:`cache_version`), with the salt mixed in."""

    def get_version(self, salt: str, params: VersionParameters) -> str:
        return hashlib.sha256((salt + cache_version(params.func)).encode()).hexdigest()

    def __repr__(self) -> str:
        return "FunctionBodyPolicy()"


def cache_url(storage: Any, fqn: str, version: str, key: str) -> str:
    """Where the output of a key lives: ``<storage>/cache/<fqn>/<version[:16]>/<key>``."""
    return storage.prefix_url("cache", fqn, version[:16], key)
