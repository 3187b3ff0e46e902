"""Warm replicas: the long-lived actors that run a reusable environment's attempts.

``_Replica`` (a threaded actor, for sync tasks) and ``_AsyncReplica`` (an asyncio actor, for async
tasks) are created by their pool's manager with the attempt's Ray options. The constructor
unpickles the task by reference, which imports the user's module: its initialisation is paid once
per replica, before the replica is handed out. A replica admits ``concurrency`` calls at once and
counts the calls waiting for a slot, so the manager sees real demand; its control methods
(``load``, ``ready``, ``retire``) run in the ``ctl`` concurrency group, so they answer while calls
run.

A call arrives as a :class:`~flyte_ray._ray.wire.WarmCall` list. Its static part (task, settings,
fqn, market, queue) comes in full once per replica and as a 12-byte digest after that; a replica
that does not know a digest answers :class:`~flyte_ray._ray.wire.Declined` ``"need_static"``, a
retiring one ``"retiring"``. The call itself runs :func:`flyte_ray._ray.worker.run_user_code`, the
same code as a plain attempt, so a warm attempt's result is an
:class:`~flyte_ray._ray.wire.AttemptResult` (user errors as values), sent as a
:class:`~flyte_ray._ray.wire.WarmValue` list when msgpack carries the value unchanged.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import threading
import time
from typing import Any, Optional

import ray

from .._core.drive import drive
from .._ray.wire import VERSION, AttemptResult, Declined, WarmCall, WarmStatic, WarmValue, decode, encode, msgpack_safe
from .._ray.worker import context_for, current_node, failed, run_user_code

__all__ = ["RemoteReplica", "RemoteAsyncReplica", "RETIRING", "NEED_STATIC"]

RETIRING = Declined(VERSION, "retiring")  # "pick another replica"
NEED_STATIC = Declined(VERSION, "need_static")  # "send the call's static part in full"


def _answer(r: AttemptResult) -> Any:
    """A success travels as a WarmValue list when msgpack gives its value back unchanged, anything
    else as the AttemptResult's plain tuple."""
    if r.ok and r.notice is None and msgpack_safe(r.value):
        return encode(WarmValue(VERSION, r.value, r.node, r.runtime))
    return encode(r)


class _ReplicaBase:
    def __init__(self, task_blob: bytes, pool: str, concurrency: int) -> None:
        self.pool = pool
        self.concurrency = concurrency
        self.active = 0
        self.waiting = 0
        self.served = 0
        self.retiring = False
        self.last_active = time.time()
        self.tasks: dict = {}  # task blob -> task (one object per task: by-value tasks keep their globals)
        self.statics: dict = {}  # static digest -> (task, WarmStatic)
        self.warm_error = ""
        try:  # imports the user's module here: its initialisation is paid once, before any call
            self.tasks[task_blob] = pickle.loads(task_blob)
        except Exception as e:  # noqa: BLE001 - reported per call, as a user error
            self.warm_error = f"{type(e).__name__}: {e}"

    def _task(self, blob: bytes) -> Any:
        t = self.tasks.get(blob)
        if t is None:
            t = self.tasks[blob] = pickle.loads(blob)
        return t

    def _admit(self, p: list) -> tuple:
        """``(call, task, context, None)`` when this replica runs the call, else
        ``(None, None, None, answer)``."""
        if self.retiring:
            return None, None, None, RETIRING
        try:
            call = decode(WarmCall, p)
            s = call.static
            if s.__class__ is bytes:
                known = self.statics.get(s)
                if known is None:
                    return None, None, None, NEED_STATIC
            else:
                st = decode(WarmStatic, s)
                if len(self.statics) > 1024:
                    self.statics.clear()
                known = self.statics[st.digest] = (self._task(st.task), st)
            task, st = known
            ctx = context_for(
                call.run_name,
                st.fqn,
                call.call_id,
                call.attempt,
                call.user_attempt,
                call.system_failures,
                st.market,
                st.queue,
                st.settings,
                call.overrides,
            )
        except Exception as e:  # noqa: BLE001 - a task that no longer loads: a user error, as a value
            return None, None, None, encode(failed(e, current_node(), None))
        return call, task, ctx, None

    def _info(self) -> dict:
        return {
            "pool": self.pool,
            "pid": os.getpid(),
            "node": current_node(),
            "warm_error": self.warm_error,
            "actor": ray.get_runtime_context().get_actor_id(),
        }

    def _load(self) -> tuple:
        return (
            self.active,
            self.waiting,
            self.served,
            time.time() if (self.active or self.waiting) else self.last_active,
        )


class _Replica(_ReplicaBase):
    """A warm replica for sync tasks: one call at a time (threaded actor, ``ctl`` group apart)."""

    def __init__(self, task_blob: bytes, pool: str, concurrency: int) -> None:
        super().__init__(task_blob, pool, concurrency)
        # Sync tasks run one call at a time (concurrency > 1 needs an async task): a plain lock
        # is the slot, and the counters it guards need no other lock. ``mu`` guards ``waiting``.
        self.slot = threading.Lock()
        self.mu = threading.Lock()

    def run(self, p: list) -> Any:
        call, task, ctx, answer = self._admit(p)
        if answer is not None:
            return answer
        slot = self.slot
        if not slot.acquire(False):  # busy: wait, counted as demand
            with self.mu:
                self.waiting += 1
            slot.acquire()
            with self.mu:
                self.waiting -= 1
        self.active += 1
        try:
            r = drive(run_user_code(task, ctx, call.call_args, call.call_kwargs))
        finally:
            self.active -= 1
            self.served += 1
            self.last_active = time.time()
            slot.release()
        return _answer(r)

    def load(self) -> tuple:
        return self._load()

    def ready(self) -> dict:
        return self._info()

    def retire(self, flag: bool = True) -> None:
        self.retiring = flag


class _AsyncReplica(_ReplicaBase):
    """A warm replica for async tasks: up to ``concurrency`` calls at once on its event loop."""

    def __init__(self, task_blob: bytes, pool: str, concurrency: int) -> None:
        super().__init__(task_blob, pool, concurrency)
        self.slots: Optional[asyncio.Semaphore] = None  # made on the actor's loop

    async def run(self, p: list) -> Any:
        call, task, ctx, answer = self._admit(p)
        if answer is not None:
            return answer
        slots = self.slots
        if slots is None:
            slots = self.slots = asyncio.Semaphore(self.concurrency)
        if slots.locked():  # no free slot: wait, counted as demand
            self.waiting += 1
            try:
                await slots.acquire()
            finally:
                self.waiting -= 1
        else:
            await slots.acquire()  # free: returns at once
        self.active += 1
        try:
            r = await run_user_code(task, ctx, call.call_args, call.call_kwargs, on_loop=True)
        finally:
            self.active -= 1
            self.served += 1
            self.last_active = time.time()
            slots.release()
        return _answer(r)

    async def load(self) -> tuple:
        return self._load()

    async def ready(self) -> dict:
        return self._info()

    async def retire(self, flag: bool = True) -> None:
        self.retiring = flag


def _ctl(cls: type) -> type:
    """Put the control methods in the ``ctl`` concurrency group (they answer while calls run)."""
    for name in ("load", "ready", "retire"):
        setattr(cls, name, ray.method(concurrency_group="ctl")(getattr(cls, name)))
    return cls


# Bound under other names than the classes, so the classes still pickle by reference.
RemoteReplica = ray.remote(concurrency_groups={"ctl": 2})(_ctl(_Replica))  # type: ignore[call-overload]
RemoteAsyncReplica = ray.remote(concurrency_groups={"ctl": 2})(_ctl(_AsyncReplica))  # type: ignore[call-overload]
