"""The task context: what a running attempt knows about itself (``flyte_ray.ctx()``)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any, Optional

from ._core.call import ChildSequencer
from ._core.notice import NEVER, PreemptionNotice
from ._core.process import PROCESS
from ._core.settings import DriverSettings, Settings
from .checkpoint import Checkpoint

__all__ = ["TaskContext", "ctx", "current_settings"]


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
    _children: ChildSequencer = field(default_factory=ChildSequencer, repr=False)
    _checkpoint: Any = field(default=None, repr=False)
    _preemption: PreemptionNotice = field(default=NEVER, repr=False)

    @property
    def preemption(self) -> PreemptionNotice:
        """The preemption notice of the node this attempt runs on (see the class docstring)."""
        return self._preemption

    @property
    def action(self) -> str:
        """``"<fqn>#<call_id>"``: the call's name within its run."""
        return f"{self.fqn}#{self.call_id}"

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
