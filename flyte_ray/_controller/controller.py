"""The controller: the one place that composes what a call goes through.

``TaskTemplate.__call__`` / ``.aio`` hand each call to the process's controller
(:func:`get_controller`), through the :class:`Controller` protocol (compare flyte-sdk's
``Controller``): ``await submit(call)`` on an event loop, ``submit_sync(call)`` from blocking code.
Both run the same ``async`` steps; the sync facade drives them on the caller's thread with the
blocking port (:mod:`flyte_ray._core.drive`), so nothing blocking ever runs on a loop thread and a
worker's main thread is the one that waits (which releases its CPU).

One call, as :meth:`RayController._submit` reads::

    cache lookup (a hit returns; a miss runs the rest and stores)       flyte_ray.cache
      → where supervision runs: here / the supervising actor /          .supervision
        here, recorded with the actor (short calls from spot callers)
        → the attempt loop (market, budgets, backoff, deadline)          flyte_ray._core.loop
          → an executor runs each attempt: Ray task, streaming task,    flyte_ray._ray.executors,
            Ray client, warm replica                                    flyte_ray.reuse
          → observers hear every attempt (runtime history, ...)

Every choice of *how* a call runs is made here (:meth:`RayController._submit`,
:meth:`~RayController.executor_for`); adding a step (a metrics recorder, a preemption-notice
watcher) is adding one object to :attr:`RayController.observers` or one line to ``_submit``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Optional, Protocol

import ray

from .._core.call import Call
from .._core.drive import drive
from .._core.loop import AttemptObserver, run_attempts
from .._core.process import PROCESS
from .._core.records import AttemptRecord, AttemptRequest, Outcome
from .._ray import waiting
from .._ray.drains import DrainMonitor
from .._ray.executors import ClientTaskExecutor, Executor, StreamingTaskExecutor, TaskExecutor, client_mode
from .._ray.metrics import Metrics
from .._ray.placement import ONDEMAND, cluster_view
from .._ray.port import BLOCKING, LOOP, Port
from .._ray.recording import RunRecorder
from ..cache import cached_call
from ..reuse.executor import ReplicaExecutor
from .supervision import Host, RuntimeHistory, Supervision, SupervisorActorBase, shard_name, shard_namespace

__all__ = ["Controller", "RayController", "get_controller", "ensure_supervisor", "background_loop"]


class Controller(Protocol):
    """Runs calls of tasks."""

    async def submit(self, call: Call) -> Any:
        """Run ``call`` on the running event loop; its value, or its error raised."""
        ...

    def submit_sync(self, call: Call) -> Any:
        """Run ``call`` from blocking code; its value, or its error raised."""
        ...


class _Observers:
    """The controller's observers as one (the loop takes one observer)."""

    def __init__(self, observers: list) -> None:
        self.observers = observers

    def attempt_started(self, call: Call, req: AttemptRequest, record: AttemptRecord) -> None:
        for o in self.observers:
            o.attempt_started(call, req, record)

    def attempt_finished(self, call: Call, req: AttemptRequest, record: AttemptRecord, out: Outcome) -> None:
        for o in self.observers:
            o.attempt_finished(call, req, record, out)


class RayController:
    """The controller of this process (a process part; see the module docstring)."""

    reset_order = 60

    def __init__(self) -> None:
        self.tasks = TaskExecutor()
        self.streaming = StreamingTaskExecutor()
        self.client = ClientTaskExecutor()
        self.replicas = ReplicaExecutor()
        self.supervision = PROCESS.part(Supervision)
        self.supervision.factory = _create_shard
        # runtime history (what "short" means); drains seen while attempts run (preemption
        # notices); the run's records (batched to its storage)
        self.recorder = PROCESS.part(RunRecorder)
        self.metrics = PROCESS.part(Metrics)
        self.observers: list[AttemptObserver] = [
            PROCESS.part(RuntimeHistory),
            PROCESS.part(DrainMonitor),
            self.recorder,
            self.metrics,  # last: it reads records the others have filled in
        ]
        self._observer = _Observers(self.observers)

    def reset(self) -> None:
        pass  # its parts reset themselves

    # ---------------------------------------------------------------- the facade
    def submit(self, call: Call) -> Any:
        # the coroutine of _submit itself: one frame per call in flight, not two
        return self._submit(call, LOOP)

    def submit_sync(self, call: Call) -> Any:
        return drive(self._submit(call, BLOCKING))

    # ---------------------------------------------------------------- the steps
    async def _submit(self, call: Call, port: Port) -> Any:
        cache = call.spec.cache
        try:
            if cache is not None and cache.enabled:
                t0 = time.time()
                value = await cached_call(call, port, lambda c: self._hosted(c, port))
                hit = not call.state.history  # answered from the cache: no attempt ran
                if hit:
                    self.recorder.cache_hit(call, t0)
                self.metrics.cache(call.spec.fqn, hit)
                return value
            return await self._hosted(call, port)
        finally:
            if call.call_id == "root":
                self.supervision.run_ended(call)

    def _hosted(self, call: Call, port: Port) -> Any:
        # Plain functions returning the coroutine to await (here and in supervise): no frames of
        # their own stay suspended for each call in flight.
        where = self.supervision.where(call)
        if where is Host.HERE:
            return self.supervise(call, port)
        if where is Host.ACTOR:
            return self.supervision.delegate(call, port)
        return self.supervision.in_caller(call, lambda c: self.supervise(c, port))

    def supervise(self, call: Call, port: Port) -> Any:
        """The coroutine that runs ``call``'s attempt loop here, each attempt on the executor this
        call needs."""
        executor = self.executor_for(call)
        return run_attempts(call, lambda req: executor.run(call, req, port), port.sleep, observer=self._observer)

    def executor_for(self, call: Call) -> Executor:
        spec = call.spec
        if spec.reusable is not None:
            return self.replicas
        if spec.uses_streaming:
            return self.client if client_mode() else self.streaming
        return self.tasks


def get_controller() -> RayController:
    """This process's controller."""
    return PROCESS.part(RayController)


# ================================================================================ the actor


class SupervisorActor(SupervisorActorBase):
    """The supervising actor: delegated calls run through this process's controller."""

    async def _supervise(self, call: Call) -> Any:
        return await get_controller().supervise(call, LOOP)


_RemoteSupervisor = ray.remote(SupervisorActor)  # bound under another name: the class pickles by reference


def _shard_options(shard: int, placement: str) -> dict:
    """A supervising shard's actor options: named, on on-demand capacity (by marker or by market
    label as the cluster view chooses for ``placement``), restarted for ever."""
    return dict(
        name=shard_name(shard),
        namespace=shard_namespace(shard),
        get_if_exists=True,
        num_cpus=0,
        **cluster_view().placement(placement, ONDEMAND, None).pinned(ONDEMAND),
        max_restarts=-1,
        max_task_retries=0,
        max_concurrency=100_000,
    )


def _create_shard(shard: int, placement: str) -> Any:
    """Shard ``shard > 0``, created by the first caller that needs it: detached, so that it
    outlives that caller (a spot attempt); the driver's shutdown removes it (see supervision)."""
    job_namespace = ray.get_runtime_context().namespace
    return _RemoteSupervisor.options(lifetime="detached", **_shard_options(shard, placement)).remote(
        shard, job_namespace
    )


def ensure_supervisor(placement: str = "auto", shards: int = 1) -> Any:
    """Create supervising shard 0 (from the driver) if the cluster has markets; idempotent.
    Shards ``1 .. shards-1`` start when calls first reach them."""
    sup = PROCESS.part(Supervision)
    view = cluster_view()
    if waiting.is_worker() or not view.has_markets(placement):
        return None
    sup.shards = max(sup.shards, shards)
    if sup.owned is not None:
        return sup.owned
    # Keep the handle: a named actor is garbage-collected once its owner holds no handle.
    sup.owned = _RemoteSupervisor.options(**_shard_options(0, placement)).remote(0)
    return sup.owned


# ================================================================================ runs


class _RunLoop:
    """One event loop on a daemon thread that hosts the calls of ``run`` / ``map`` on the driver,
    so thousands of calls in flight cost no threads (a process part; workers use their own loop)."""

    reset_order = 70

    def __init__(self) -> None:
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.lock = threading.Lock()

    def reset(self) -> None:
        pass  # the thread serves later runs too

    def get(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            with self.lock:
                if self.loop is None:
                    loop = asyncio.new_event_loop()
                    threading.Thread(target=loop.run_forever, name="flyte-ray-runs", daemon=True).start()
                    self.loop = loop
        return self.loop


def background_loop() -> asyncio.AbstractEventLoop:
    """The loop that hosts runs: the worker's loop inside a worker, else the driver's run loop.

    Blocking code that runs *on* the worker's loop — a sync ``flyte.map`` / ``run(...).outputs()``
    inside an ``async`` task — would wait for calls that only that (blocked) loop could drive: a
    deadlock. Those calls go to a loop of their own instead (the run loop, on its own thread)."""
    if waiting.is_worker():
        loop = waiting.worker_loop()
        try:
            on_it = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_it = False
        if not on_it:
            return loop
    return PROCESS.part(_RunLoop).get()
