"""One call of a task (:class:`Call`), its accounting (:class:`CallState`), child identities.

A call's identity within its run is its *call id*: ``"root"`` for the call a run starts, and
``"<parent call id>/<short name>-<n>"`` for a call made inside a task, where ``n`` counts the
parent's earlier calls *of the same task* (:class:`ChildSequencer`, keyed per task as flyte-sdk's
``TaskCallSequencer`` is). So a parent retried after a preemption, making the same calls, gets
the same ids again, and calls to one task do not shift the ids of calls to another when their
order interleaves differently (sibling ``.aio()`` calls of several tasks under ``gather``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional

from .records import AttemptRecord

if TYPE_CHECKING:
    from .settings import Settings
    from .spec import CallSpec

__all__ = ["Call", "CallState", "ChildSequencer"]


@dataclass
class CallState:
    """Accounting of one call, exposed to hosts (and to ``Run``) while the loop runs."""

    history: list[AttemptRecord] = field(default_factory=list)
    user_failures: int = 0
    system_failures: int = 0
    forced_ondemand: bool = False  # a spot attempt could not start in time: on-demand from now on
    started: float = field(default_factory=time.time)

    @property
    def last_runtime(self) -> Optional[float]:
        """Seconds the last attempt ran user code (None when it never reported)."""
        h = self.history
        return h[-1].runtime if h else None


class Call:
    """One call of a task: what the controller runs, and its accounting."""

    __slots__ = (
        "task",
        "spec",
        "run_name",
        "call_id",
        "args",
        "kwargs",
        "settings",
        "state",
        "run_overrides",
        "inputs_ref",
    )

    def __init__(
        self,
        task: Any,
        spec: "CallSpec",
        run_name: str,
        call_id: str,
        args: tuple,
        kwargs: dict,
        settings: "Settings",
        run_overrides: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.task = task
        self.spec = spec
        self.run_name = run_name
        self.call_id = call_id
        self.args = args
        self.kwargs = kwargs
        self.settings = settings
        self.run_overrides = run_overrides
        self.state = CallState()
        # Big inputs put in the object store once for all attempts (set by the executor that
        # puts them; False: looked at, small enough to travel inline)
        self.inputs_ref: Any = None

    def __repr__(self) -> str:
        return f"<call {self.spec.fqn}#{self.call_id} of run {self.run_name}>"


class ChildSequencer:
    """Identities of the calls a task makes: ``<parent>/<short name>-<n>``, ``n`` per short name."""

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()  # calls may be made from several threads of one task

    def next_id(self, parent_id: str, short_name: str) -> str:
        with self._lock:
            n = self._counts.get(short_name, 0)
            self._counts[short_name] = n + 1
        return f"{parent_id}/{short_name}-{n}"
