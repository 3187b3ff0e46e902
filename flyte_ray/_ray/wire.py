"""Every record that crosses a process boundary, named and versioned, in one module.

Records are ``NamedTuple``s whose first field ``v`` is the wire version (:data:`VERSION`). A
record does not travel as itself: pickling a NamedTuple goes through ``copyreg`` in Python
(measured: 4.4 us to pickle and 1.2 us to load an attempt payload, against 1.8 and 0.3 us for the
same fields as a plain tuple). So a record travels as :func:`encode` makes it, its fields as a
plain tuple -- or a plain *list* for the warm-call records, because Ray sends an argument or
result made only of msgpack types with msgpack, which costs less than pickle on both sides (about
4% of a warm call per direction, measured) -- and is read back with :func:`decode`, which checks
the version. Readers use field names only; the field order is defined here and nowhere else.

The two records of every plain task call, :class:`AttemptPayload` and :class:`AttemptResult`,
travel as a list when their values survive msgpack (:func:`payload_wire`, :func:`result_wire`)
and as a tuple, pickled whole with their types intact, otherwise; :func:`decode` reads both.
Measured on the driver of a 5,000-call fan-out: ~27 us of CPU less per call (256 → 229 us; raw
Ray 227 us), which on two cores is throughput.

A record of another version (a driver and workers that run different flyte-ray versions) fails
with :class:`WireVersionError` naming both versions, never as a mis-read field.

=====================  ========================================  =============================
record                 from → to                                 on the wire
=====================  ========================================  =============================
AttemptPayload         caller → Ray task (one argument)          list (msgpack) or tuple
Started                streaming attempt → caller (1st item)     tuple
AttemptResult          attempt / replica → caller                list (msgpack) or tuple
WarmCall               caller → warm replica (one argument)      list (msgpack)
WarmStatic             inside WarmCall, once per replica         list
WarmValue              warm replica → caller (success)           list (msgpack)
Declined               warm replica → caller                     itself (pickled)
SupervisedCall         caller → supervising actor                tuple
SupervisedResult       supervising actor → caller                tuple
Recorded               caller → supervising actor (batched)      tuple
=====================  ========================================  =============================
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, TypeVar

__all__ = [
    "msgpack_safe",
    "SCALARS",
    "VERSION",
    "WireVersionError",
    "AttemptPayload",
    "payload_wire",
    "result_wire",
    "args_msgpack_safe",
    "args_from_wire",
    "Started",
    "AttemptResult",
    "WarmCall",
    "WarmStatic",
    "WarmValue",
    "Declined",
    "SupervisedCall",
    "SupervisedResult",
    "Recorded",
    "check",
]

SCALARS = frozenset({int, float, str, bytes, bool, type(None)})
_BUDGET = 256  # values looked at, at most; a bigger structure is pickled whole


def _lossy_types() -> frozenset:
    """Types msgpack packs natively as something else (bytearray / memoryview as bytes)."""
    out: set = {bytearray, memoryview}
    try:
        import msgpack

        out.update((msgpack.ExtType, msgpack.Timestamp))
    except Exception:  # noqa: BLE001
        pass
    return frozenset(out)


_LOSSY = _lossy_types()


def msgpack_safe(v: Any) -> bool:
    """True when Ray's msgpack serialization (strict types: lists and dicts are packed, a tuple or
    any other object is pickled) gives ``v`` back as itself: it holds, through plain lists and
    dicts, no value msgpack would pack as another type. Looks at :data:`_BUDGET` values at most."""
    if v.__class__ in SCALARS:
        return True
    stack = [v]
    n = 0
    while stack:
        x = stack.pop()
        t = x.__class__
        if t is list:
            n += len(x)
            if n > _BUDGET:
                return False
            stack.extend(x)
        elif t is dict:
            n += 2 * len(x)
            if n > _BUDGET:
                return False
            stack.extend(x)
            stack.extend(x.values())
        elif t in _LOSSY:
            return False
    return True


#: The wire version of every record below. Bump it when any record changes.
VERSION = 3


class WireVersionError(RuntimeError):
    """A record of another wire version arrived (mixed flyte-ray versions in one cluster)."""


R = TypeVar("R")


_FORMS: dict = {}  # record class -> (wire form, what errors call it)


def _record(name: str, form: type = tuple) -> Callable[[type], type]:
    """Register a NamedTuple record: on the wire it is a plain ``form`` of its fields."""

    def wrap(cls: type) -> type:
        _FORMS[cls] = (form, name)
        return cls

    return wrap


def encode(record: Any) -> Any:
    """``record`` as it travels: its fields as a plain tuple or list."""
    return _FORMS[record.__class__][0](record)


def decode(cls: type[R], wire: Any) -> R:
    """The ``cls`` record that ``wire`` carries, after checking its version."""
    check(wire, _FORMS[cls][1])
    return cls._make(wire)  # type: ignore[attr-defined]


def check(record: Any, name: str) -> None:
    """Raise :class:`WireVersionError` unless ``record`` is of this wire version."""
    v = record[0] if isinstance(record, (tuple, list)) and record else None
    if v != VERSION:
        raise WireVersionError(
            f"flyte-ray {name} of wire version {v!r} received, this process speaks version {VERSION}: the driver "
            "and the workers run different flyte-ray versions; install the same version everywhere"
        )


@_record("attempt payload")
class AttemptPayload(NamedTuple):
    """One attempt of a task, sent to the Ray task that runs it (its only argument)."""

    v: int
    run_name: str
    fqn: str
    call_id: str
    attempt: int
    user_attempt: int
    system_failures: int
    market: str
    queue: str
    settings: bytes  # the caller's Settings, pickled once per process
    overrides: Optional[bytes]  # the run's RunOverrides, pickled once per run (None: none)
    args: tuple
    kwargs: dict
    # Big inputs (see flyte_ray._core.sizes): ``(args, kwargs)`` put in Ray's object store once
    # per call, args/kwargs above empty; None when they travel inline.
    inputs: Any = None

    @property
    def call_args(self) -> tuple:
        return args_from_wire(self.args)


def args_msgpack_safe(args: tuple) -> bool:
    """Every positional argument survives msgpack (so the args can travel as a list)."""
    for a in args:
        if a.__class__ not in SCALARS and not msgpack_safe(a):
            return False
    return True


def args_from_wire(a: Any) -> tuple:
    """Positional arguments as a call takes them: a list that travelled by msgpack, as a tuple."""
    return tuple(a) if a.__class__ is list else a


_PAYLOAD_ARGS = AttemptPayload._fields.index("args")


def payload_wire(p: AttemptPayload) -> Any:
    """``p`` as it travels: a list (msgpack; ``args`` as a list) when its inputs survive msgpack
    and are inline, else a tuple (pickled whole)."""
    if p.inputs is None and args_msgpack_safe(p.args) and (not p.kwargs or msgpack_safe(p.kwargs)):
        wire = list(p)
        wire[_PAYLOAD_ARGS] = list(p.args)
        return wire
    return tuple(p)


def result_wire(r: "AttemptResult") -> Any:
    """``r`` as it travels: a list (msgpack) for a success whose value survives msgpack and that
    carries no notice or checkpoint figures, else a tuple (pickled whole)."""
    if r.ok and r.notice is None and r.ckpt is None and msgpack_safe(r.value):
        return list(r)
    return tuple(r)


@_record("attempt start")
class Started(NamedTuple):
    """The first item of a streaming attempt: it started, on this node, at this time."""

    v: int
    node: str
    at: float


@_record("attempt result")
class AttemptResult(NamedTuple):
    """How an attempt's user code ended. User errors travel as values, with their traceback text,
    so Ray never wraps them; only platform failures arrive as Ray exceptions."""

    v: int
    ok: bool
    value: Any  # the return value, or the exception the user code raised
    traceback: str
    node: str
    system: bool  # a Ray platform error escaped the user code: the platform failed, not the user
    runtime: Optional[float]  # seconds the user code ran, measured on the worker
    notice: Optional[tuple]  # (seen at, deadline) when the node got a preemption notice during the attempt
    ckpt: Optional[tuple]  # (bytes saved, bytes restored, resumed from (save time), last saved at), or None


@_record("warm static part", list)
class WarmStatic(NamedTuple):
    """What repeats between a task's warm calls, sent to a replica once; a 12-byte digest of it
    stands in for it after that."""

    v: int
    digest: bytes
    task: bytes  # the task, pickled (by reference when importable)
    settings: bytes
    fqn: str
    market: str
    queue: str


@_record("warm call", list)
class WarmCall(NamedTuple):
    """One call to a warm replica."""

    v: int
    static: Any  # the static part's digest (bytes), or the WarmStatic in full (its list)
    overrides: Optional[bytes]  # RunOverrides, pickled once per run
    run_name: str
    call_id: str
    attempt: int
    user_attempt: int
    system_failures: int
    args: Any  # a list when msgpack gives its items back unchanged, else the args tuple (pickled)
    kwargs: Any  # a dict when msgpack-safe, else a 1-tuple holding the dict (pickled)

    @property
    def call_args(self) -> tuple:
        return args_from_wire(self.args)

    @property
    def call_kwargs(self) -> dict:
        kw = self.kwargs
        return kw if kw.__class__ is dict else kw[0]


@_record("warm result", list)
class WarmValue(NamedTuple):
    """A warm call's successful result when msgpack gives the value back unchanged; other results
    travel as :class:`AttemptResult`."""

    v: int
    value: Any
    node: str
    runtime: Optional[float]


class Declined(NamedTuple):
    """A warm replica did not run the call: ``reason`` is ``"retiring"`` (pick another replica) or
    ``"need_static"`` (send the static part in full to this one). The one record that travels as
    itself (it is rare): its class tells it from an :class:`AttemptResult`'s tuple."""

    v: int
    reason: str


@_record("supervised call")
class SupervisedCall(NamedTuple):
    """A call handed to the supervising actor."""

    v: int
    key: str  # run | call id | task | input digest: the identity a retried caller re-attaches by
    task: Any
    args: tuple
    kwargs: dict
    run_name: str
    call_id: str
    settings: Any
    overrides: Any


@_record("supervised result")
class SupervisedResult(NamedTuple):
    """How a supervised call ended (``value`` is the error when not ``ok``)."""

    v: int
    ok: bool
    value: Any
    traceback: str
    runtime: Optional[float]  # seconds the last attempt's user code ran
    attached: bool  # the caller re-attached to a call that was already running or finished


@_record("recorded result")
class Recorded(NamedTuple):
    """A short call's result (a SupervisedResult's tuple), supervised by its caller and recorded
    with the actor for re-attachment."""

    v: int
    key: str
    result: tuple
