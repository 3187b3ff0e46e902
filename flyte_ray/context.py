"""The task context: what a running attempt knows about itself (``flyte_ray.ctx()``), and the
custom context (flyte-sdk's ``flyte.custom_context`` / ``get_custom_context``).

Custom context rules (as flyte-sdk documents them):

* String keys and string values only, implicit metadata (trace ids, experiment names), never
  part of a call's inputs, spec or cache key. At most :data:`CUSTOM_MAX_BYTES` in all: it
  travels with every attempt of every call of the run.
* The run's base comes from ``with_runcontext(custom_context=...)``; ``with custom_context(k=v):``
  changes it for the calls made inside the block (and what ``ctx().custom_context`` shows there),
  in the task or driver where the block runs and, through those calls, in all their descendants.
* The block is a ContextVar, so concurrent asyncio tasks each keep their own.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional

from ._core.call import ChildSequencer
from ._core.notice import NEVER, PreemptionNotice
from ._core.process import PROCESS
from ._core.settings import DriverSettings, Settings
from ._core.spec import RunOverrides
from ._duration import short_repr
from .checkpoint import Checkpoint

__all__ = ["TaskContext", "ctx", "current_settings", "custom_context", "get_custom_context"]

#: Largest custom context (keys and values, UTF-8): it rides in every attempt's payload.
CUSTOM_MAX_BYTES = 64 * 1024


class ActionID(str):
    """A call's action name (``"<fqn>#<call_id>"``) with flyte-sdk's ``ActionID`` attributes:
    ``name`` (the call id within the run), ``run_name``; ``project``/``domain``/``org`` are
    ``None`` (no Flyte backend)."""

    name: str
    run_name: str
    project = None
    domain = None
    org = None

    def __new__(cls, text: str, name: str, run_name: str) -> "ActionID":
        out = super().__new__(cls, text)
        out.name = name
        out.run_name = run_name
        return out

    def __reduce__(self) -> Any:
        return (ActionID, (str(self), self.name, self.run_name))


@dataclass
class TaskContext:
    """Facts about the running attempt, returned by :func:`flyte_ray.ctx` inside a task.

    Attributes:
        run_name: the run this call belongs to.
        fqn: the task's fully qualified name, ``"<env>.<function>"``.
        call_id: the call's identity within the run (``"root"`` for the top call; children add
            ``/<name>-<n>``). Stable across retries of the parent, so a retried parent makes the
            same child ids again.
        attempt: 0-based number of this attempt, counting every attempt (user and system).
        user_attempt: 0-based count of user failures before this attempt.
        system_failures: system failures (preemptions, node losses) before this attempt.
        market: ``"spot"`` or ``"ondemand"``: where the supervisor placed this attempt.
        queue: the queue this attempt was placed on (``"default"`` when none was set).
        node_id: the Ray node id this attempt runs on.
        settings: the flyte-ray settings the caller used (storage, system retries).
        preemption: the node's preemption notice (:class:`~flyte_ray.PreemptionNotice`):
            ``is_set()``, ``deadline``, ``wait(timeout)``, ``on_notice(fn)``. Set within about a
            second of the node being drained for preemption; save, then raise
            :class:`~flyte_ray.errors.TaskInterruptedError` to move to another node at once.
    """

    run_name: str
    fqn: str
    call_id: str
    attempt: int = 0
    user_attempt: int = 0
    system_failures: int = 0
    market: str = "ondemand"
    queue: str = "default"
    node_id: str = ""
    settings: Optional["Settings"] = None
    run_overrides: Optional[dict] = None
    #: the task was made with ``report=True``: ``flyte_ray.report.flush()`` stores its HTML report
    keeps_report: bool = False
    _children: ChildSequencer = field(default_factory=ChildSequencer, repr=False)
    _checkpoint: Any = field(default=None, repr=False)
    _preemption: PreemptionNotice = field(default=NEVER, repr=False)
    #: callables run once when the attempt's user code has returned or raised (``at_end``)
    _at_end: Optional[list] = field(default=None, repr=False)
    #: per-attempt state of the layers above (``attempt_state``)
    _extras: Optional[dict] = field(default=None, repr=False)

    @property
    def preemption(self) -> PreemptionNotice:
        """The preemption notice of the node this attempt runs on (see the class docstring)."""
        return self._preemption

    @property
    def custom_context(self) -> dict[str, str]:
        """The custom context this call sees: the run's (``with_runcontext(custom_context=...)``)
        as changed by its callers' ``custom_context`` blocks and by any block open here now."""
        base: Mapping[str, str] = self.run_overrides.custom if isinstance(self.run_overrides, RunOverrides) else {}
        block = _BLOCK.get()
        return {**base, **block.values} if block is not None else dict(base)

    @property
    def run_base_dir(self) -> str:
        """The run's folder in storage (``<storage>/runs/<run>``), flyte-sdk's name: records,
        ``flyte_ray.io`` objects and anything the task writes for the run go under it."""
        return (self.settings or current_settings()).storage.prefix_url("runs", self.run_name)

    @property
    def action(self) -> "ActionID":
        """``"<fqn>#<call_id>"``: the call's name within its run -- a string that also has
        flyte-sdk's ``ActionID`` attributes (``.name``: the call id, ``.run_name``)."""
        return ActionID(f"{self.fqn}#{self.call_id}", self.call_id, self.run_name)

    @property
    def checkpoint(self) -> "Checkpoint":
        """This call's checkpoint store, shared by all of its attempts (see ``flyte_ray.Checkpoint``)."""
        if self._checkpoint is None:
            settings = self.settings or current_settings()
            storage = settings.storage
            self._checkpoint = Checkpoint(
                storage.checkpoint_url(self.run_name, self.fqn, self.call_id),
                options=storage.options,
                keep=settings.checkpoint_keep,
                op_timeout=storage.op_timeout,
            )
        return self._checkpoint

    def attempt_state(self, key: str, make: Callable[[], Any]) -> Any:
        """The attempt's value for ``key``, made by ``make()`` on first use: per-attempt state of
        the layers above (flytekit's context, trace replay) without a field each here."""
        if self._extras is None:
            self._extras = {}
        if key not in self._extras:
            self._extras[key] = make()
        return self._extras[key]

    def at_end(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once when this attempt's user code has finished, before its result travels
        (the attempt's HTML report flushes itself this way)."""
        if self._at_end is None:
            self._at_end = []
        self._at_end.append(fn)

    def run_at_end(self) -> None:
        """Run the ``at_end`` callables; each is best-effort: its failure is logged, never raised
        (the attempt's own outcome is already decided)."""
        todo, self._at_end = self._at_end or [], None
        for fn in todo:
            try:
                fn()
            except Exception:  # noqa: BLE001 -- see the docstring
                logging.getLogger(__name__).warning("%s: end-of-attempt step %r failed", self.action, fn, exc_info=True)

    def next_child_id(self, short_name: str) -> str:
        """Identity for the next call of task ``short_name`` made by this attempt: numbered per task
        (see :class:`~flyte_ray._core.call.ChildSequencer`), so a retried parent that makes the same
        calls gets the same ids, whatever order calls to different tasks interleave in."""
        return self._children.next_id(self.call_id, short_name)


_CTX: contextvars.ContextVar[Optional[TaskContext]] = contextvars.ContextVar("flyte_ray_ctx", default=None)


def ctx() -> Optional[TaskContext]:
    """The current task's context, or ``None`` outside a task (as in flyte-sdk)."""
    return _CTX.get()


def set_context(c: Optional[TaskContext]) -> contextvars.Token:
    return _CTX.set(c)


def reset_context(token: contextvars.Token) -> None:
    _CTX.reset(token)


def current_settings() -> Settings:
    """The settings of the running task, else the driver's (``init``), else defaults."""
    c = _CTX.get()
    if c is not None and c.settings is not None:
        return c.settings
    return PROCESS.part(DriverSettings).value or Settings()


def check_custom(values: Any, where: str) -> dict[str, str]:
    """``values`` as a custom context, or a clear error naming ``where`` and the accepted form."""
    accepted = "a mapping of string keys to string values"
    if not isinstance(values, Mapping):
        raise TypeError(f"{where}: expected {accepted}, got {type(values).__name__}")
    size = 0
    for k, v in values.items():
        if not isinstance(k, str):
            raise TypeError(f"{where}: expected {accepted}, got a key of type {type(k).__name__}")
        if not isinstance(v, str):
            raise TypeError(
                f"{where}[{short_repr(k)}]: expected a string value, got {type(v).__name__} "
                "(custom context is string metadata; pass data as task inputs)"
            )
        size += len(k.encode()) + len(v.encode())
    if size > CUSTOM_MAX_BYTES:
        raise ValueError(
            f"{where}: {size} bytes of keys and values; at most {CUSTOM_MAX_BYTES} (it travels with every "
            "attempt of every call: keep it to identifiers and small metadata)"
        )
    return dict(values)


class _Block:
    """An open ``custom_context`` block: its merged values, and the run overrides derived from
    each base it has met (a block usually makes many calls of one run: derive once)."""

    __slots__ = ("values", "_derived")

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self._derived: dict[int, tuple[Any, RunOverrides]] = {}

    def overrides(self, base: Optional[Mapping[str, Any]]) -> RunOverrides:
        hit = self._derived.get(id(base))
        if hit is not None and hit[0] is base:
            return hit[1]
        if isinstance(base, RunOverrides):
            out = RunOverrides(base, base.recorded, {**base.custom, **self.values})
        else:
            out = RunOverrides(base or {}, custom=self.values)
        self._derived[id(base)] = (base, out)
        return out


_BLOCK: contextvars.ContextVar[Optional[_Block]] = contextvars.ContextVar("flyte_ray_custom_context", default=None)


def block_overrides(base: Optional[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    """The run overrides a call made here carries: ``base`` with the open custom_context block's
    values on top (``base`` itself when no block is open: the common case costs one lookup)."""
    block = _BLOCK.get()
    return base if block is None else block.overrides(base)


@contextlib.contextmanager
def custom_context(**values: str) -> Iterator[None]:
    """Within the block, calls carry these custom context pairs on top of the current ones::

    with flyte_ray.custom_context(trace_id="child-override"):
        await downstream()      # sees trace_id="child-override" in ctx().custom_context
    """
    current = _BLOCK.get()
    merged = {**(current.values if current is not None else {}), **check_custom(values, "custom_context")}
    token = _BLOCK.set(_Block(merged))
    try:
        yield
    finally:
        _BLOCK.reset(token)


def get_custom_context() -> dict[str, str]:
    """The custom context here: a task's ``ctx().custom_context``; in the driver, the pairs of the
    open ``custom_context`` blocks (empty outside any)."""
    c = _CTX.get()
    if c is not None:
        return c.custom_context
    block = _BLOCK.get()
    return dict(block.values) if block is not None else {}
