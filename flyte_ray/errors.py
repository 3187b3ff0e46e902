"""Errors raised by flyte-ray.

Two kinds, as in Flyte: *user* errors (``RuntimeUserError``) come from the task's own code or
from its limits (memory, time, retries); *system* errors (``RuntimeSystemError``) come from the
platform (a node or worker lost, placement impossible). Every error carries a short ``code``.

A user exception raised inside a task reaches the caller as an instance of *both* its own type
and ``RuntimeUserError`` (see :func:`as_user_error`), so ``except ValueError`` and
``except flyte_ray.errors.RuntimeUserError`` both catch it.
"""

from __future__ import annotations

import traceback
from typing import Any, Optional

__all__ = [
    "RuntimeUserError",
    "RuntimeSystemError",
    "NonRecoverableError",
    "OOMError",
    "TaskTimeoutError",
    "RetriesExhaustedError",
    "TaskInterruptedError",
    "PlacementError",
    "SupervisorLostError",
    "RemoteTraceback",
]


class RuntimeUserError(Exception):
    """An error of the *user* kind: raised by the task's code, or by limits the user set."""

    kind = "user"

    def __init__(self, code: str = "", message: str = "", *args: Any) -> None:
        super().__init__(message or code, *args)
        self.code = code or type(self).__name__


class RuntimeSystemError(Exception):
    """An error of the *system* kind: the platform, not the task's code, failed."""

    kind = "system"

    def __init__(self, code: str = "", message: str = "", *args: Any) -> None:
        super().__init__(message or code, *args)
        self.code = code or type(self).__name__


class NonRecoverableError(RuntimeUserError):
    """Raise this from a task to fail at once: no user retry is attempted.

    ``raise NonRecoverableError("bad input: ...")``
    """

    def __init__(self, message: str = "", *args: Any) -> None:
        super().__init__("NonRecoverable", message, *args)


class OOMError(RuntimeUserError):
    """The attempt ran out of memory (Ray's memory monitor killed it). Counts as a user retry."""

    def __init__(self, message: str = "", *args: Any) -> None:
        super().__init__("OOM", message, *args)


class TaskTimeoutError(RuntimeUserError):
    """An attempt exceeded ``Timeout.max_runtime`` (and was cancelled), or the call's deadline passed."""

    def __init__(self, message: str = "", *args: Any) -> None:
        super().__init__("Timeout", message, *args)


class TaskInterruptedError(RuntimeUserError):
    """Raise it from a task to end the attempt on purpose because its node is going away.

    After a preemption notice on the node (``flyte_ray.ctx().preemption.is_set()``), this is a
    *system* retry recorded as ``preemption`` — never one of your ``retries`` — and the next
    attempt starts at once on another node: save your state, then raise it. Without a notice it
    is an ordinary user error. (flyte-sdk's name for an interrupted task.)
    """

    def __init__(self, message: str = "", *args: Any) -> None:
        super().__init__("Interrupted", message, *args)


class RetriesExhaustedError(RuntimeUserError):
    """A retry budget (user ``retries`` or the ``system_retries`` setting) is used up.

    ``history`` holds every attempt (:class:`flyte_ray.AttemptRecord`); ``budget`` is ``"user"``
    or ``"system"``; ``__cause__`` is the last attempt's error. ``kind`` is the budget's kind:
    ``"system"`` when the platform kept failing (preemptions, node losses), else ``"user"``.
    """

    def __init__(self, message: str = "", history: list | None = None, budget: str = "user") -> None:
        super().__init__("RetriesExhausted", message)
        self.history = list(history or [])
        self.budget = budget
        self.kind = "system" if budget == "system" else "user"

    def __reduce__(self):  # keep history across pickling (Ray hops)
        return (type(self), (str(self), self.history, self.budget))


class PlacementError(RuntimeSystemError):
    """No node can run the attempt: an on-demand attempt waited past ``max_queued_time``.

    ``missing`` names the resources no live node offers.
    """

    def __init__(self, message: str = "", missing: list[str] | None = None) -> None:
        super().__init__("Placement", message)
        self.missing = list(missing or [])

    def __reduce__(self):
        return (type(self), (str(self), self.missing))


class SupervisorLostError(RuntimeSystemError):
    """The supervising actor hosting a call's attempt loop died and could not be recovered."""

    def __init__(self, message: str = "") -> None:
        super().__init__("SupervisorLost", message)


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised on a Ray worker.

    It is set as ``__cause__`` of the re-raised user exception, so the printed traceback shows the
    user's own frames from the worker (the same trick ``concurrent.futures`` uses).
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


# The classes made below, one per user exception class: a class must stay the same object for the
# life of the process (isinstance, pickling by reference), so these memos are never reset.
_user_classes: dict[type, type] = {}


def _mixed(memo: dict, base: type, mixin: type, attrs: dict) -> Optional[type]:
    """The class ``(base, mixin)`` named as ``base`` (made once, kept in ``memo``), or None when
    Python refuses the combination (a final class, incompatible layouts such as OSError)."""
    if base in memo:
        return memo[base]
    try:
        sub: Optional[type] = type(
            base.__name__,
            (base, mixin),
            {"__module__": base.__module__, "__qualname__": base.__qualname__, "__flyte_ray_origin__": base, **attrs},
        )
    except TypeError:
        sub = None
    memo[base] = sub
    return sub


def _copy_of(exc: BaseException, sub: Any) -> Any:
    """An instance of ``sub`` with ``exc``'s args, attributes and traceback."""
    out = sub.__new__(sub)
    out.args = exc.args
    try:
        out.__dict__.update(exc.__dict__)
    except AttributeError:
        pass
    out.__traceback__ = exc.__traceback__
    return out


def as_user_error(exc: BaseException, tb: str | None = None) -> BaseException:
    """Return ``exc`` as an instance of both its own class and :class:`RuntimeUserError`.

    Builds (and caches) a subclass ``(type(exc), RuntimeUserError)`` and copies the instance's
    state, so attributes the user set survive. Falls back to ``exc`` itself when its class
    cannot be subclassed (final C types).
    """
    out: BaseException
    if isinstance(exc, RuntimeUserError):
        out = exc
    else:
        cls = type(exc)
        # Crossing another Ray hop, the mixed class travels as the user's own; the receiver wraps
        # it again.
        sub = _mixed(_user_classes, cls, RuntimeUserError, {"__reduce__": _reduce_as(cls)})
        if sub is None:
            out = exc  # a final class: the user's error as it is
        else:
            made = _copy_of(exc, sub)
            if not hasattr(made, "code"):
                made.code = cls.__name__
            out = made
    if tb:
        out.__cause__ = RemoteTraceback(tb)
    return out


def _reduce_as(cls: type):
    def __reduce__(self):
        return (_rebuild, (cls, self.args, dict(self.__dict__)))

    return __reduce__


def _rebuild(cls: type, args: tuple, state: dict) -> BaseException:
    exc = cls.__new__(cls)  # type: ignore[call-overload]  # an exception class
    exc.args = args
    try:
        exc.__dict__.update(state)
    except AttributeError:
        pass
    return exc


_non_recoverable_classes: dict[type, type] = {}


def as_non_recoverable(exc: BaseException) -> BaseException:
    """``exc`` as an instance of both its own class and :class:`NonRecoverableError`, so the
    call fails at once (no user retry) and ``except ValueError`` still catches it. The mark
    survives pickling (Ray hops): the receiver rebuilds the same combination. Falls back to a
    plain ``NonRecoverableError`` caused by ``exc`` when the class cannot be subclassed.
    (flytekit's rule: only ``FlyteRecoverableException`` is retried; see flyte_ray.flytekit.)"""
    if isinstance(exc, NonRecoverableError):
        return exc
    base = getattr(type(exc), "__flyte_ray_origin__", type(exc))
    sub = _mixed(
        _non_recoverable_classes,
        base,
        NonRecoverableError,
        {
            "__reduce__": lambda self: (_rebuild_non_recoverable, (base, self.args, dict(self.__dict__))),
            "__str__": base.__str__,
        },
    )
    if sub is None:
        out = NonRecoverableError(f"{base.__name__}: {exc}")
        out.__cause__ = exc
        return out
    made = _copy_of(exc, sub)
    made.code = "NonRecoverable"
    made.__cause__ = exc.__cause__
    return made


def _rebuild_non_recoverable(cls: type, args: tuple, state: dict) -> BaseException:
    return as_non_recoverable(_rebuild(cls, args, state))


def format_exception(exc: BaseException) -> str:
    """Traceback text of ``exc``, as printed by Python."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


_exhausted_classes: dict[type, type] = {}


def exhausted(last: Optional[BaseException], history: list, budget: str, message: str) -> RetriesExhaustedError:
    """A ``RetriesExhaustedError`` that is also an instance of the last error's own class, when
    Python allows the combination, so ``except ValueError`` still catches a task that raised
    ValueError on every attempt. ``__cause__`` is the last error."""
    err: RetriesExhaustedError
    cls = type(last) if last is not None else None
    if cls is not None and not issubclass(cls, RetriesExhaustedError):
        base = getattr(cls, "__flyte_ray_origin__", cls)
        sub = _exhausted_classes.get(base)
        if sub is None and base not in _exhausted_classes:
            try:
                sub = type(
                    "RetriesExhaustedError",
                    (RetriesExhaustedError, base),
                    {
                        "__module__": __name__,
                        "__flyte_ray_origin__": base,
                        "__reduce__": lambda self: (RetriesExhaustedError, (str(self), self.history, self.budget)),
                        # the budget's message, not the last error's (a Ray error's __str__ is its own)
                        "__str__": lambda self: Exception.__str__(self),
                    },
                )
            except TypeError:  # incompatible layouts (e.g. OSError): plain error
                sub = None
            _exhausted_classes[base] = sub  # type: ignore[assignment]
        if sub is not None:
            err = sub.__new__(sub)  # type: ignore[call-overload]  # an exception class made above
            Exception.__init__(err, message)
            err.code = "RetriesExhausted"
            err.history = list(history)
            err.budget = budget
            err.kind = "system" if budget == "system" else "user"
            err.__cause__ = last
            return err
    err = RetriesExhaustedError(message, history, budget)
    err.__cause__ = last
    return err
