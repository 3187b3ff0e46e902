"""``ReusePolicy``: keep an environment's replicas warm between calls.

A reusable environment's attempts run on a *pool* of long-lived Ray actors (replicas) instead of
one Ray task each, so module-level state and expensive initialisation survive between calls.

Pools
    One pool per (environment, market, queue, resources + policy, sync/async), so spot attempts
    go to spot replicas and on-demand attempts (the final attempt of an interruptible task) to
    on-demand ones. A pool is a named async *manager* actor (``flyte-ray-pool:<env>:<market>:
    <queue>:<kind>:<hash>``, 0 CPU, on on-demand capacity when the cluster has markets) that owns
    its replicas. The driver creates the managers it needs and holds their handles (a manager is
    fate-shared with the driver); a nested call made from a worker that finds no pool creates a
    *detached* one, because a named actor created by a worker dies with it. Either way the pool
    tears itself down after ``idle_ttl`` and :func:`shutdown_pools` / :func:`reset` remove pools
    on ``flyte_ray.shutdown()``. Killing a manager kills its replicas (their owner died).

Replicas
    An actor (``_Replica``, threaded, for sync tasks; ``_AsyncReplica``, asyncio, for async tasks)
    created with the attempt's Ray options: the task's ``ray_options`` (``num_cpus`` defaults to 1,
    as for a plain attempt) plus the market / queue markers from
    :func:`~flyte_ray.placement.attempt_options` (dropped on clusters without markers, as for plain
    attempts), ``max_restarts=0`` (the supervisor decides retries) and the ``SPREAD`` strategy, so a
    node loss takes as few replicas as possible. Its constructor unpickles the task by reference,
    which imports the user's module: the module's initialisation is paid once per replica, before
    the replica is handed out. A replica admits ``concurrency`` calls at once (asyncio semaphore
    for async tasks; a thread semaphore for sync tasks, which run one at a time) and counts the
    calls waiting for a slot, so the manager sees real demand. The call itself runs
    :func:`flyte_ray.attempt.run_user_code` (sync) or its asyncio twin (async: the coroutine runs
    on the replica's own loop under the TaskContext), so an attempt's result is the same tuple
    as a plain attempt's and user errors come back as values.

Hot path
    The caller keeps, per process and pool, the manager's list of ready replicas (refreshed when
    older than ``REFRESH_S``: one small manager call per second at most, or at once after a
    failure) and a local count of its own calls in flight per replica; it picks the least loaded
    replica (round-robin among equals) and makes **one actor call** to it. No per-call actor
    creation or lookup. The call travels as one msgpack-able list (see "wire format" below):
    what repeats between calls (task, settings, market, queue) goes to a replica once and as a
    12-byte digest after that, and plain arguments and results are not pickled.

Scaling (the manager, every ``TICK_S``)
    It polls each replica's load (a separate ``ctl`` concurrency group answers while calls run).
    Demand = calls running + waiting; when demand exceeds the pool's capacity
    (replicas × concurrency) on two polls in a row it starts the missing replicas, up to ``max``.
    A replica above ``min`` idle for ``scaledown_ttl`` is *retired*: it leaves the list at once,
    answers any late call with "rejected" (the caller re-picks; no attempt is consumed) and is
    killed ``RETIRE_GRACE_S`` later, when no caller can still hold a list naming it. With no
    call for ``idle_ttl`` the whole pool retires and exits (a call arriving meanwhile revives it).

Failures
    A replica that dies (node preempted or lost, worker crash) fails its running calls with a Ray
    actor error: the caller asks the manager whether it was retired on purpose (then it simply
    re-picks) and otherwise reports it lost; the outcome is :func:`flyte_ray.attempt.classify`'s
    (a *system* failure: ``preemption`` for spot or drained-for-preemption nodes), so the
    supervisor retries on another replica without touching the user's retry budget. The manager
    drops the dead replica and starts a replacement. A pool that cannot be reached (its manager
    died: it is re-created by name) for ``POOL_WAIT_S`` is a system failure too.

Timeouts
    ``max_runtime`` (and the deadline) is measured from the call to the replica, so waiting for a
    busy replica counts; ``max_queued_time`` is not enforced separately for warm replicas. An
    async call that times out is cancelled on its replica; a sync one cannot be interrupted, so
    its replica is killed and replaced.

Limits
    A replica holds its CPUs for its lifetime, also while its task waits for child calls: size
    pools so children still find room. Module-level state is per replica process: concurrent
    async calls on one replica share it.

Introspection: :func:`pool_stats` (replica counts, nodes, pids, calls served per pool).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pickle
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Optional, Tuple, Union

import ray
import ray.exceptions as rex

if TYPE_CHECKING:
    from .supervisor import AttemptRequest, Outcome
    from .task import Call

__all__ = ["ReusePolicy", "pool_stats", "shutdown_pools"]


from .reuse_policy import ReusePolicy  # noqa: E402  (re-exported: flyte_ray.reuse.ReusePolicy)


# =============================================================================== tunables

POOL_PREFIX = "flyte-ray-pool:"
REFRESH_S = 1.0  # a caller's replica list is refreshed when older than this
TICK_S = 0.25  # the manager's control period
RETIRE_GRACE_S = 3.0  # a retired replica lives this long (> REFRESH_S) before it is killed
POOL_WAIT_S = 30.0  # how long a caller keeps trying to reach a pool's manager
MAX_REPICKS = 50  # rejected / retired picks before an attempt gives up (system failure)
SYNC_QUEUE_SLOTS = 31  # extra threads of a sync replica: calls waiting there are visible demand
ASYNC_QUEUE_SLOTS = 10_000
_REJECTED = (None,)  # a retired replica's answer: "pick another one"
_NEED_STATIC = (None, "static")  # a replica's answer: "send the call's static part in full"

# The wire format (hot path). Ray serializes an argument or result with msgpack when it holds only
# msgpack types; a *tuple* anywhere sends it (or that part) through pickle, which measurably costs
# on each side (about 4% of a warm call per direction). So a call travels as a list:
#
#   [static, overrides, run_name, call_id, attempt, user_attempt, system_failures, args, kwargs]
#
# ``static`` is a 12-byte digest of what repeats between calls (task, settings, fqn, market,
# queue); a replica that does not know it yet gets it in full, as a list (see :func:`_static`).
# ``overrides`` is None or the pickled run overrides. ``args`` is a list and ``kwargs`` a dict when
# msgpack gives their values back as themselves (:func:`_wire_safe`; whatever msgpack cannot hold,
# a tuple or a user object, Ray pickles, type intact), else ``args`` is the args tuple and
# ``kwargs`` is ``(kwargs,)``: pickled whole. A successful call answers ``[value, node, seconds]``
# (the user code's runtime) when the value is wire-safe, else ``(True, value, node, seconds)``; a
# failure is ``(False, exc, traceback, node, system, seconds)`` (a user error as a value); a
# declined call :data:`_REJECTED` or :data:`_NEED_STATIC`.

_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})
_WIRE_BUDGET = 256  # values looked at, at most; a bigger structure is pickled whole (as it was)


def _lossy_types() -> frozenset:
    """Types msgpack packs natively as something else (bytearray / memoryview as bytes)."""
    out = {bytearray, memoryview}
    try:
        import msgpack

        out.update((msgpack.ExtType, msgpack.Timestamp))
    except Exception:  # noqa: BLE001
        pass
    return frozenset(out)


_LOSSY = _lossy_types()


def _wire_safe(v: Any) -> bool:
    """True when Ray's msgpack serialization (strict types: lists and dicts are packed, a tuple or
    any other object is pickled) gives ``v`` back as itself: it holds, through plain lists and
    dicts, no value msgpack would pack as another type."""
    if v.__class__ in _SCALARS:
        return True
    stack = [v]
    n = 0
    while stack:
        x = stack.pop()
        t = x.__class__
        if t is list:
            n += len(x)
            if n > _WIRE_BUDGET:
                return False
            stack.extend(x)
        elif t is dict:
            n += 2 * len(x)
            if n > _WIRE_BUDGET:
                return False
            stack.extend(x)
            stack.extend(x.values())
        elif t in _LOSSY:
            return False
    return True


# =============================================================================== replica side

def _load_task(blob: bytes) -> Any:
    return pickle.loads(blob)


_run_user_code: Any = None
_run_user_code_async: Any = None


def _attempt_fns() -> None:
    global _run_user_code, _run_user_code_async
    from .attempt import run_user_code, run_user_code_async

    _run_user_code, _run_user_code_async = run_user_code, run_user_code_async


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
        self.objs: dict = {}  # settings / overrides blob -> object
        self.statics: dict = {}  # static digest -> (task, fqn, market, queue, settings)
        self.warm_error = ""
        try:  # imports the user's module here: its initialisation is paid once, before any call
            self.tasks[task_blob] = _load_task(task_blob)
        except Exception as e:  # noqa: BLE001 - reported per call, as a user error
            self.warm_error = f"{type(e).__name__}: {e}"
        _attempt_fns()

    def _task(self, blob: bytes) -> Any:
        t = self.tasks.get(blob)
        if t is None:
            t = self.tasks[blob] = _load_task(blob)
        return t

    def _learn(self, full: list) -> tuple:
        """A static part sent in full: ``[digest, task_blob, settings_blob, fqn, market, queue]``."""
        st = (self._task(full[1]), full[3], full[4], full[5], self._obj(full[2]))
        if len(self.statics) > 1024:
            self.statics.clear()
        self.statics[full[0]] = st
        return st

    def _meta(self, p: list) -> Any:
        """``(task, meta)`` for payload ``p`` (see the wire format above), or None when the
        replica does not know its static part."""
        s = p[0]
        st = self.statics.get(s) if s.__class__ is bytes else self._learn(s)
        if st is None:
            return None
        ov = p[1]
        return st[0], (p[2], st[1], p[3], p[4], p[5], p[6], st[2], st[3], st[4],
                       None if ov is None else self._obj(ov))

    def _obj(self, blob: bytes) -> Any:
        o = self.objs.get(blob, _MISSING)
        if o is _MISSING:
            if len(self.objs) > 1024:
                self.objs.clear()
            o = self.objs[blob] = pickle.loads(blob)
        return o

    def _load_failed(self, e: BaseException) -> tuple:
        from .attempt import _current_node, _portable
        from .errors import format_exception

        return (False, _portable(e), format_exception(e), _current_node(), False)

    def _info(self) -> dict:
        import ray

        from .attempt import _current_node

        return {"pid": os.getpid(), "node": _current_node(), "warm_error": self.warm_error,
                "actor": ray.get_runtime_context().get_actor_id()}

    def _load(self) -> tuple:
        return (self.active, self.waiting, self.served, time.time() if (self.active or self.waiting)
                else self.last_active)

    def _admit(self, p: list) -> tuple:
        """``(task and meta, None)`` when this replica runs the call, else ``(None, answer)``:
        retiring, the task failed to load, or its static part must be sent in full first."""
        if self.retiring:
            return None, _REJECTED
        try:
            tm = self._meta(p)
        except Exception as e:  # noqa: BLE001
            return None, self._load_failed(e)
        if tm is None:
            return None, _NEED_STATIC
        return tm, None


def _kwargs(p: list) -> dict:
    kw = p[8]
    return kw if kw.__class__ is dict else kw[0]


def _answer(r: tuple) -> Any:
    """A success travels as ``[value, node, seconds]`` (msgpack-friendly) when its value survives
    msgpack unchanged; anything else as the attempt's tuple."""
    return [r[1], r[2], r[3] if len(r) > 3 else None] if r[0] is True and _wire_safe(r[1]) else r


_MISSING = object()


class _Replica(_ReplicaBase):
    """A warm replica for sync tasks: one call at a time (threaded actor, ``ctl`` group apart)."""

    def __init__(self, task_blob: bytes, pool: str, concurrency: int) -> None:
        super().__init__(task_blob, pool, concurrency)
        # Sync tasks run one call at a time (concurrency=1): a plain lock is the slot, and the
        # counters it guards need no other lock. ``mu`` guards ``waiting`` (and, with
        # concurrency > 1, every counter).
        self.slots = threading.Lock() if concurrency == 1 else threading.BoundedSemaphore(concurrency)
        self.mu = threading.Lock()

    def run(self, p: list) -> Any:
        tm, answer = self._admit(p)
        if answer is not None:
            return answer
        slots = self.slots
        if not slots.acquire(False):  # busy: wait, counted as demand
            with self.mu:
                self.waiting += 1
            slots.acquire()
            with self.mu:
                self.waiting -= 1
        exclusive = self.concurrency == 1
        if exclusive:
            self.active += 1
        else:
            with self.mu:
                self.active += 1
        try:
            r = _run_user_code(tm[0], tm[1], p[7], _kwargs(p))
        finally:
            if exclusive:
                self.active -= 1
                self.served += 1
                self.last_active = time.time()
            else:
                with self.mu:
                    self.active -= 1
                    self.served += 1
                    self.last_active = time.time()
            slots.release()
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
        tm, answer = self._admit(p)
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
            r = await _run_user_code_async(tm[0], tm[1], p[7], _kwargs(p))
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
    import ray

    for name in ("load", "ready", "retire"):
        setattr(cls, name, ray.method(concurrency_group="ctl")(getattr(cls, name)))
    return cls


# =============================================================================== the manager

class _Rep:
    __slots__ = ("rid", "handle", "state", "created", "retired_at", "active", "waiting", "served",
                 "last_active", "info")

    def __init__(self, rid: str, handle: Any) -> None:
        self.rid = rid
        self.handle = handle
        self.state = "starting"  # starting | ready
        self.created = time.time()
        self.retired_at: Optional[float] = None
        self.active = 0
        self.waiting = 0
        self.served = 0
        self.last_active = self.created
        self.info: dict = {}


class PoolManager:
    """Async actor owning one pool's replicas: creates, scales, retires, replaces, tears down."""

    def __init__(self, name: str, config: dict) -> None:
        self.name = name
        self.cfg = config
        self.min = config["min"]
        self.max = config["max"]
        self.conc = config["concurrency"]
        self.reps: "OrderedDict[str, _Rep]" = OrderedDict()
        self.retired: "OrderedDict[str, float]" = OrderedDict()
        self.version = 0
        self.last_demand = time.time()
        self.closing_since: Optional[float] = None
        self.over = 0  # consecutive polls with demand above capacity
        self.ticker: Optional[asyncio.Task] = None
        self.created = 0
        self.lost_count = 0
        self.served_retired = 0
        self.start_failures = 0
        self.next_create_at = 0.0

    # ----------------------------------------------------------------- replicas
    def _start(self) -> None:
        if self.ticker is None or self.ticker.done():
            self.ticker = asyncio.ensure_future(self._tick_loop())
            while len(self._live()) < max(self.min, 1):
                self._create()

    def _live(self) -> list:
        return [r for r in self.reps.values() if r.retired_at is None]

    def _create(self) -> None:
        cls = _RemoteAsyncReplica if self.cfg["kind"] == "async" else _RemoteReplica
        rid = uuid.uuid4().hex[:10]
        handle = cls.options(**self.cfg["opts"]).remote(self.cfg["blob"], self.name, self.conc)
        rep = _Rep(rid, handle)
        self.reps[rid] = rep
        self.created += 1
        self.version += 1
        asyncio.ensure_future(self._await_ready(rep))

    async def _await_ready(self, rep: _Rep) -> None:
        try:
            rep.info = await rep.handle.ready.remote()
        except Exception:  # noqa: BLE001 - it died before it was ready
            if rep.rid in self.reps:
                self._lose(rep.rid)
            return
        if rep.rid in self.reps:
            rep.state = "ready"
            rep.last_active = time.time()
            self.version += 1

    def _drop(self, rid: str, kill: bool) -> Optional[_Rep]:
        rep = self.reps.pop(rid, None)
        if rep is None:
            return None
        self.version += 1
        self.served_retired += rep.served
        if kill:
            import ray

            try:
                ray.kill(rep.handle, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        return rep

    def _lose(self, rid: str) -> None:
        """A replica died: forget it and start a replacement (after a backoff when replicas die
        before they are ready: the tick, or the next caller, starts it)."""
        rep = self._drop(rid, kill=True)
        if rep is None:
            return
        self.lost_count += 1
        if rep.state != "ready":
            self.start_failures += 1
            self.next_create_at = time.time() + min(0.5 * 2 ** self.start_failures, 30.0)
            return
        self.start_failures = 0
        if rep.retired_at is None and self.closing_since is None and len(self._live()) < self.max:
            self._create()

    def _retire(self, rep: _Rep) -> None:
        rep.retired_at = time.time()
        self.retired[rep.rid] = rep.retired_at
        while len(self.retired) > 10_000:
            self.retired.popitem(last=False)
        self.version += 1
        rep.handle.retire.remote(True)

    def _listing(self) -> list:
        live = self._live()
        ready = [r for r in live if r.state == "ready"]
        return [(r.rid, r.handle) for r in (ready or live)]

    # ----------------------------------------------------------------- caller API
    async def replicas(self, version: int) -> tuple:
        """The replicas to use: ``(version, [(rid, handle)...])``, or ``(version, None)`` when
        the caller's copy is current. A request revives a pool that is shutting down."""
        self.last_demand = time.time()
        if self.closing_since is not None:
            self.closing_since = None
            for r in self.reps.values():
                if r.retired_at is not None:
                    r.retired_at = None
                    self.retired.pop(r.rid, None)
                    r.handle.retire.remote(False)
            self.version += 1
        self._start()
        if not self._live():
            self._create()
        if version == self.version:
            return (self.version, None)
        return (self.version, self._listing())

    async def lost(self, rid: str) -> str:
        """A caller's call to ``rid`` failed with an actor error: ``"retired"`` (killed on
        purpose: pick another one) or ``"lost"`` (a real loss; it is replaced)."""
        if rid in self.retired:
            return "retired"
        rep = self.reps.get(rid)
        if rep is not None and rep.retired_at is not None:
            return "retired"
        if rep is not None:
            self._lose(rid)
        return "lost"

    async def stats(self) -> dict:
        live = self._live()
        return {
            "pool": self.name, "env": self.cfg["env"], "market": self.cfg["market"], "queue": self.cfg["queue"],
            "kind": self.cfg["kind"], "min": self.min, "max": self.max, "concurrency": self.conc,
            "replicas": len(live), "ready": sum(r.state == "ready" for r in live),
            "starting": sum(r.state != "ready" for r in live),
            "retiring": sum(r.retired_at is not None for r in self.reps.values()),
            "active": sum(r.active for r in self.reps.values()),
            "waiting": sum(r.waiting for r in self.reps.values()),
            "served": self.served_retired + sum(r.served for r in self.reps.values()),
            "created": self.created, "lost": self.lost_count, "closing": self.closing_since is not None,
            "nodes": [r.info.get("node", "") for r in live], "pids": [r.info.get("pid") for r in live],
        }

    async def close(self) -> None:
        """Kill every replica and then this manager."""
        for rid in list(self.reps):
            self._drop(rid, kill=True)
        self._exit()

    def _exit(self) -> None:
        import ray

        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    # ----------------------------------------------------------------- control loop
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                if await self._tick():
                    break
            except Exception:  # noqa: BLE001 - keep managing
                import traceback

                traceback.print_exc()
        for rid in list(self.reps):
            self._drop(rid, kill=True)
        self._exit()

    async def _poll(self, rep: _Rep) -> None:
        import ray.exceptions as rex

        try:
            active, waiting, served, last = await asyncio.wait_for(_aw(rep.handle.load.remote()), 2.0)
        except asyncio.TimeoutError:
            return  # busy (GIL-bound user code): keep the last figures
        except rex.RayActorError:
            if rep.rid in self.reps:
                self._lose(rep.rid)
            return
        rep.active, rep.waiting, rep.served, rep.last_active = active, waiting, served, last

    async def _tick(self) -> bool:
        """One control step; True when the pool has shut down."""
        ready = [r for r in self.reps.values() if r.state == "ready"]
        if ready:
            await asyncio.gather(*(self._poll(r) for r in ready))
        now = time.time()
        live = self._live()
        busy = any(r.active or r.waiting for r in self.reps.values())

        if self.closing_since is not None:  # shutting down: kill once no late caller can arrive
            if now - self.closing_since >= RETIRE_GRACE_S and not busy:
                return True
            return False

        # the pool's own lifetime
        last = max([self.last_demand] + [r.last_active for r in self.reps.values()])
        if not busy and now - last >= self.cfg["idle_ttl"]:
            self.closing_since = now
            for r in live:
                self._retire(r)
            return False

        can_create = now >= self.next_create_at
        # keep min replicas (and replace losses the callers have not reported)
        while can_create and len(live) < self.min:
            self._create()
            live = self._live()

        # scale up: demand (running + waiting) above capacity on two polls in a row
        demand = sum(r.active + r.waiting for r in live)
        capacity = len(live) * self.conc
        self.over = self.over + 1 if demand > capacity else 0
        if can_create and self.over >= 2 and len(live) < self.max:
            need = -(-(demand - capacity) // self.conc)
            for _ in range(min(need, self.max - len(live))):
                self._create()
            self.over = 0
            live = self._live()

        # scale down: one idle replica above min per tick
        if len(live) > self.min:
            idle = [r for r in live if r.state == "ready" and not r.active and not r.waiting
                    and now - r.last_active >= self.cfg["scaledown_ttl"]]
            if idle:
                self._retire(min(idle, key=lambda r: r.last_active))

        # retired replicas: killed after the grace period, once idle
        for r in list(self.reps.values()):
            if r.retired_at is not None and now - r.retired_at >= RETIRE_GRACE_S and not (r.active or r.waiting):
                self._drop(r.rid, kill=True)
        return False


async def _aw(ref: Any) -> Any:
    return await ref


def _bind() -> None:
    import ray

    global _RemoteReplica, _RemoteAsyncReplica, _RemoteManager
    # Bound under other names than the classes, so the classes still pickle by reference.
    _RemoteReplica = ray.remote(concurrency_groups={"ctl": 2})(_ctl(_Replica))
    _RemoteAsyncReplica = ray.remote(concurrency_groups={"ctl": 2})(_ctl(_AsyncReplica))
    _RemoteManager = ray.remote(PoolManager)


_RemoteReplica: Any = None
_RemoteAsyncReplica: Any = None
_RemoteManager: Any = None
_bind()


# =============================================================================== caller side

class PoolUnavailable(Exception):
    """The pool's manager could not be reached for ``POOL_WAIT_S``."""


class _Slot:
    __slots__ = ("rid", "handle", "run", "inflight", "known")

    def __init__(self, rid: str, handle: Any) -> None:
        self.rid = rid
        self.handle = handle
        self.run = handle.run  # the bound method, made once (``handle.run`` builds one per access)
        self.inflight = 0
        self.known: set = set()  # static digests sent to this replica in full


class _PoolClient:
    """This process's view of one pool: its manager, the replicas to use, local load."""

    def __init__(self, name: str, config: dict, manager_opts: dict) -> None:
        self.name = name
        self.config = config
        self.manager_opts = manager_opts
        self.manager: Any = None
        self.slots: list[_Slot] = []
        self.version = -1
        self.fresh_at = 0.0
        self.rr = 0
        self.lock = threading.Lock()
        self.pending: Any = None  # an in-flight refresh, shared by concurrent callers

    # ----------------------------------------------------------------- manager
    def _manager(self) -> Any:
        from . import waiting

        m = self.manager
        if m is None:
            opts = dict(self.manager_opts)
            if waiting.is_worker():
                # A named actor created by a worker dies with it: a worker's pool is detached
                # (it still tears itself down after idle_ttl).
                opts["lifetime"] = "detached"
            m = self.manager = _RemoteManager.options(name=self.name, get_if_exists=True, **opts).remote(
                self.name, self.config)
            _known_managers[self.name] = m  # the driver's handle keeps its manager alive
        return m

    def _request(self, force: bool) -> Any:
        with self.lock:
            if self.pending is None:
                self.pending = self._manager().replicas.remote(-1 if force else self.version)
            return self.pending

    def _apply(self, ref: Any, res: tuple) -> None:
        with self.lock:
            if self.pending is ref:
                self.pending = None
            version, listing = res
            if listing is not None:  # the manager's answer is authoritative
                old = {s.rid: s for s in self.slots}
                self.slots = [old.get(rid) or _Slot(rid, h) for rid, h in listing]
                self.version = version
            self.fresh_at = time.monotonic()

    def _failed(self, ref: Any) -> None:
        with self.lock:
            if self.pending is ref:
                self.pending = None
            self.manager = None
            _known_managers.pop(self.name, None)
            self.version = -1

    def refresh_sync(self, force: bool = False) -> None:
        import ray.exceptions as rex

        from . import waiting

        deadline = time.monotonic() + POOL_WAIT_S
        while True:
            ref = self._request(force)
            try:
                self._apply(ref, waiting.wait_blocking(ref, 10.0))
                return
            except (rex.RayActorError, rex.GetTimeoutError) as e:
                self._failed(ref)
                if time.monotonic() > deadline:
                    raise PoolUnavailable(f"pool {self.name}: manager unreachable ({type(e).__name__}: {e})") from e
                time.sleep(0.2)

    async def refresh_async(self, force: bool = False) -> None:
        import ray.exceptions as rex

        from .attempt import _await

        deadline = time.monotonic() + POOL_WAIT_S
        while True:
            ref = self._request(force)
            try:
                self._apply(ref, await _await(ref, 10.0))
                return
            except (rex.RayActorError, asyncio.TimeoutError) as e:
                self._failed(ref)
                if time.monotonic() > deadline:
                    raise PoolUnavailable(f"pool {self.name}: manager unreachable ({type(e).__name__}: {e})") from e
                await asyncio.sleep(0.2)

    # ----------------------------------------------------------------- picking
    def _choose(self) -> Optional[_Slot]:
        slots = self.slots
        n = len(slots)
        if n == 0:
            return None
        if n == 1:
            return slots[0]
        self.rr += 1
        best = None
        for i in range(n):
            s = slots[(self.rr + i) % n]
            if best is None or s.inflight < best.inflight:
                best = s
        return best

    def pick_sync(self) -> _Slot:
        if not self.slots or time.monotonic() - self.fresh_at > REFRESH_S:
            self.refresh_sync()
        s = self._choose()
        while s is None:  # the manager always lists at least one (possibly starting) replica
            self.refresh_sync(force=True)
            s = self._choose()
        return s

    async def pick_async(self) -> _Slot:
        if not self.slots or time.monotonic() - self.fresh_at > REFRESH_S:
            await self.refresh_async()
        s = self._choose()
        while s is None:
            await self.refresh_async(force=True)
            s = self._choose()
        return s

    def forget(self, slot: _Slot) -> None:
        """Stop using ``slot`` here and fetch a fresh list on the next pick."""
        with self.lock:
            self.slots = [s for s in self.slots if s is not slot]
            self.fresh_at = 0.0

    def _lost_ref(self, slot: _Slot) -> Any:
        self.forget(slot)
        m = self.manager
        return m.lost.remote(slot.rid) if m is not None else None

    def report_lost_sync(self, slot: _Slot) -> str:
        from . import waiting

        ref = self._lost_ref(slot)
        if ref is None:
            return "lost"
        try:
            return waiting.wait_blocking(ref, 5.0)
        except Exception:  # noqa: BLE001 - manager gone too: a real loss
            return "lost"

    async def report_lost_async(self, slot: _Slot) -> str:
        from .attempt import _await

        ref = self._lost_ref(slot)
        if ref is None:
            return "lost"
        try:
            return await _await(ref, 5.0)
        except Exception:  # noqa: BLE001
            return "lost"


_clients: dict = {}
_blobs: dict = {}
_statics: dict = {}
_known_managers: dict = {}  # name -> handle this process created or looked up (the driver's keep pools alive)
_clients_lock = threading.Lock()

# Bound on first use (importing them here would be circular): the hot path pays no import.
_cluster_view: Any = None
_Outcome: Any = None
_OK: Any = None
_unpack_result: Any = None
_wait_blocking: Any = None


def _bind_caller() -> None:
    global _cluster_view, _Outcome, _OK, _unpack_result, _wait_blocking
    from .attempt import _unpack
    from .placement import cluster_view
    from .supervisor import OK, Outcome
    from .waiting import in_worker, wait_blocking

    _cluster_view, _Outcome, _OK, _unpack_result = cluster_view, Outcome, OK, _unpack
    # Outside a worker (the driver) a blocking wait needs no registration: plain ray.get.
    _wait_blocking = wait_blocking if in_worker() else ray.get


def _kind(call: "Call") -> str:
    return "async" if call.task.is_async else "sync"


def _client_for(call: "Call", req: "AttemptRequest") -> _PoolClient:
    # The pool depends on the spec, the market and queue, and on which markers the cluster
    # declares (a function of the cluster view's resource names): while those are the same, the
    # last answer stands.
    names = _cluster_view().resource_names()
    spec = call.spec
    hit = _clients.get((id(spec), req.market, req.queue))
    if hit is not None and hit[0] is spec and (hit[1] is names or hit[1] == names):
        if hit[1] is not names:  # the view was refreshed, to the same names
            _clients[(id(spec), req.market, req.queue)] = (spec, names, hit[2])
        return hit[2]
    with _clients_lock:
        client = _make_client(call, req)
        if len(_clients) > 4096:
            _clients.clear()
        _clients[(id(spec), req.market, req.queue)] = (spec, names, client)  # spec held: its id is not reused
    return client


_by_name: dict = {}


def _make_client(call: "Call", req: "AttemptRequest") -> _PoolClient:
    from .placement import MARKER, ONDEMAND, attempt_options, cluster_view

    policy: ReusePolicy = call.spec.reusable
    kind = _kind(call)
    opts = attempt_options(dict(call.spec.ray_options), req.market, req.queue)
    opts = dict(opts)
    opts.setdefault("num_cpus", 1)  # as a plain attempt (an actor would default to 0 while running)
    opts.setdefault("scheduling_strategy", "SPREAD")
    slots = SYNC_QUEUE_SLOTS if kind == "sync" else ASYNC_QUEUE_SLOTS
    opts.update(max_restarts=0, max_task_retries=0, max_concurrency=policy.concurrency + slots)
    env = call.task.env.name
    digest = hashlib.sha1(json.dumps([opts, policy.replicas, policy.concurrency, policy.idle_ttl,
                                      policy.scaledown_ttl], sort_keys=True, default=str).encode()).hexdigest()[:10]
    name = f"{POOL_PREFIX}{env}:{req.market}:{req.queue}:{kind}:{digest}"
    client = _by_name.get(name)
    if client is not None:
        return client
    config = {"env": env, "market": req.market, "queue": req.queue, "kind": kind, "opts": opts,
              "blob": _blob(call.task), "min": policy.min_replicas, "max": policy.max_replicas,
              "concurrency": policy.concurrency, "idle_ttl": policy.idle_ttl,
              "scaledown_ttl": policy.scaledown_ttl}
    manager_opts: dict = {"num_cpus": 0, "max_restarts": 0, "max_concurrency": 10_000}
    if cluster_view().has_markets():
        manager_opts["resources"] = {ONDEMAND: MARKER}  # survives spot preemptions
    client = _by_name[name] = _PoolClient(name, config, manager_opts)
    return client


def _blob(obj: Any) -> bytes:
    """``obj`` pickled, cached per object: tasks (by reference when importable, see
    ``TaskTemplate.__reduce__``) and settings are the same for many calls."""
    hit = _blobs.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    import ray

    b = ray.cloudpickle.dumps(obj)
    if len(_blobs) > 4096:
        _blobs.clear()
    _blobs[id(obj)] = (obj, b)  # holding obj keeps id(obj) from being reused
    return b


_last_route: tuple = (None, None, None, None, None, None, None)


def _route(call: "Call", req: "AttemptRequest") -> tuple:
    """``(client, static)`` for this call: the last answer when the call is like the last one
    (same spec, task, settings, market, queue and cluster view), else from the caches."""
    global _last_route
    names = _cluster_view().resource_names()
    r = _last_route
    if r[0] is call.spec and r[1] is call.task and r[2] is call.settings and r[4] == req.market \
            and r[5] == req.queue:
        if r[3] is names:
            return r[6]
        if r[3] == names:  # the view was refreshed, to the same names
            _last_route = (r[0], r[1], r[2], names, r[4], r[5], r[6])
            return r[6]
    cs = (_client_for(call, req), _static(call, req))
    _last_route = (call.spec, call.task, call.settings, names, req.market, req.queue, cs)  # one atomic swap
    return cs


def _static(call: "Call", req: "AttemptRequest") -> tuple:
    """What repeats between a task's calls, once per (task, settings, market, queue) in this
    process: ``(digest, full)``, where ``full`` (``[digest, task_blob, settings_blob, fqn, market,
    queue]``) goes to a replica once and ``digest`` (12 bytes, the same in every process for the
    same content) on every call after that."""
    task, settings = call.task, call.settings
    k = (id(task), id(settings), call.spec.fqn, req.market, req.queue)
    hit = _statics.get(k)
    if hit is not None and hit[0] is task and hit[1] is settings:
        return hit[2]
    tb, sb = _blob(task), _blob(settings)
    digest = hashlib.sha1(pickle.dumps((tb, sb, k[2], k[3], k[4]))).digest()[:12]
    st = (digest, [digest, tb, sb, k[2], k[3], k[4]])
    if len(_statics) > 4096:
        _statics.clear()
    _statics[k] = (task, settings, st)  # holding both keeps their ids from being reused
    return st


def _payload(call: "Call", req: "AttemptRequest", static: Any) -> list:
    """One call's argument to a replica, in the wire format (see the top of this module). The
    same facts as :func:`flyte_ray.attempt._meta`."""
    ov = call.run_overrides  # a fresh dict per call: not worth caching here
    if ov is not None:
        ov = ray.cloudpickle.dumps(ov)
    args, kwargs = call.args, call.kwargs
    for a in args:
        if a.__class__ not in _SCALARS and not _wire_safe(a):
            break
    else:
        args = list(args)
    if kwargs and not _wire_safe(kwargs):
        kwargs = (kwargs,)
    return [static, ov, call.run_name, call.call_id, req.attempt, req.user_attempt, req.system_failures,
            args, kwargs]


def _for_slot(payload: list, st: tuple, slot: _Slot) -> list:
    """``payload`` as ``slot`` needs it: with the static part in full the first time."""
    if st[0] in slot.known:
        return payload
    slot.known.add(st[0])  # optimistic: a replica that still lacks it answers _NEED_STATIC
    p = payload.copy()
    p[0] = st[1]
    return p


def _limit(req: "AttemptRequest") -> Optional[float]:
    a, b = req.max_runtime, req.deadline_left
    if a is None:
        return None if b is None else max(b, 0.0)
    return max(a if b is None else min(a, b), 0.0)


def _timeout_outcome(call: "Call", req: "AttemptRequest", limit: float) -> "Outcome":
    from .errors import TaskTimeoutError
    from .supervisor import TIMEOUT, Outcome

    if req.max_runtime is not None and limit >= req.max_runtime - 1e-9:
        msg = f"{call.spec.fqn}: attempt {req.attempt} ran longer than {limit:.1f}s and was cancelled"
    else:
        msg = f"{call.spec.fqn}: deadline reached during attempt {req.attempt}"
    return Outcome(TIMEOUT, error=TaskTimeoutError(msg))


def _unavailable(e: BaseException) -> "Outcome":
    from .errors import RuntimeSystemError
    from .supervisor import SYSTEM, Outcome

    return Outcome(SYSTEM, error=RuntimeSystemError("ReplicaPoolUnavailable", str(e)), system_reason="node_failure")


def _prepared(call: "Call", req: "AttemptRequest") -> tuple:
    """The pool client for this attempt's placement, the call's static part and its wire payload."""
    client, st = _route(call, req)
    return client, st, _payload(call, req, st[0])


def execute_sync(call: "Call", req: "AttemptRequest") -> "Outcome":
    """One attempt on a warm replica, from a blocking caller; returns its outcome.

    The hot path, kept short on purpose: the driver's own Python between two calls is most of
    what a warm call costs over a raw actor call (it runs with cold caches after each wait)."""
    if _Outcome is None:
        _bind_caller()
    try:
        client, st, payload = _prepared(call, req)
    except Exception as e:  # noqa: BLE001
        return _unavailable(e)
    limit = req.max_runtime
    if limit is not None or req.deadline_left is not None:
        limit = _limit(req)
        t0 = time.monotonic()
    again = None  # the replica to send the call to again (with the static part in full)
    for _ in range(MAX_REPICKS):
        if again is None:
            try:
                slot = client.pick_sync()
            except PoolUnavailable as e:
                return _unavailable(e)
            ref = slot.run.remote(payload if st[0] in slot.known else _for_slot(payload, st, slot))
        else:
            slot, again = again, None
            ref = slot.run.remote(_with_static(payload, st))
        slot.inflight += 1
        try:
            res = _wait_blocking(ref, timeout=None if limit is None else max(limit - (time.monotonic() - t0), 0.0))
        except rex.GetTimeoutError:
            # a sync call cannot be interrupted: the replica is killed and replaced
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
            client.report_lost_sync(slot)
            return _timeout_outcome(call, req, limit)
        except rex.RayActorError as e:
            if client.report_lost_sync(slot) == "retired":
                continue
            return _classify(e, req.market)
        except rex.RayError as e:
            return _classify(e, req.market)
        finally:
            slot.inflight -= 1
        if res.__class__ is list:
            return _Outcome(_OK, res[0], None, "", res[1], runtime=res[2])
        if res[0] is None:
            again = _declined(res, slot, client)
            continue
        return _unpack_result(res)
    return _unavailable(PoolUnavailable(f"pool {client.name}: no replica accepted the call"))


def _classify(e: BaseException, market: str) -> "Outcome":
    from .attempt import classify

    return classify(e, market)


def _with_static(payload: list, st: tuple) -> list:
    p = payload.copy()
    p[0] = st[1]
    return p


def _declined(res: tuple, slot: _Slot, client: _PoolClient) -> Optional[_Slot]:
    """A replica declined the call: the replica to resend it to (with the static part in full),
    or None to pick another."""
    if len(res) == 2:  # the replica does not know the static part: same replica, in full
        return slot
    client.forget(slot)  # rejected by a retiring replica: pick another
    return None


async def execute_async(call: "Call", req: "AttemptRequest") -> "Outcome":
    """One attempt on a warm replica, from an event loop; returns its outcome."""
    from .attempt import _await, classify

    if _Outcome is None:
        _bind_caller()
    try:
        client, st, payload = _prepared(call, req)
    except Exception as e:  # noqa: BLE001
        return _unavailable(e)
    limit = _limit(req)
    t0 = time.monotonic()
    again = None  # the replica to send the call to again (with the static part in full)
    async_replica = client.config["kind"] == "async"
    for _ in range(MAX_REPICKS):
        if again is None:
            try:
                slot = await client.pick_async()
            except PoolUnavailable as e:
                return _unavailable(e)
            ref = slot.run.remote(_for_slot(payload, st, slot))
        else:
            slot, again = again, None
            ref = slot.run.remote(_with_static(payload, st))
        slot.inflight += 1
        try:
            left = None if limit is None else max(limit - (time.monotonic() - t0), 0.0)
            res = await _await(ref, left)
        except asyncio.TimeoutError:
            if async_replica:
                ray.cancel(ref)
            else:
                try:
                    ray.kill(slot.handle, no_restart=True)
                except Exception:  # noqa: BLE001
                    pass
                await client.report_lost_async(slot)
            return _timeout_outcome(call, req, limit)
        except asyncio.CancelledError:
            if async_replica:
                ray.cancel(ref)
            raise
        except rex.RayActorError as e:
            if await client.report_lost_async(slot) == "retired":
                continue
            return await asyncio.get_running_loop().run_in_executor(None, classify, e, req.market)
        except rex.RayError as e:
            return await asyncio.get_running_loop().run_in_executor(None, classify, e, req.market)
        finally:
            slot.inflight -= 1
        if res.__class__ is list:
            return _Outcome(_OK, value=res[0], node_id=res[1], runtime=res[2])
        if res[0] is None:
            again = _declined(res, slot, client)
            continue
        return _unpack_result(res)
    return _unavailable(PoolUnavailable(f"pool {client.name}: no replica accepted the call"))


# =============================================================================== introspection / cleanup

def _env_name(env: Any) -> Optional[str]:
    if env is None or isinstance(env, str):
        return env
    return getattr(env, "name", None) or str(env)


def _pool_names(env: Any = None) -> list:
    import ray

    want = _env_name(env)
    names = set(_known_managers)
    try:
        names.update(n for n in ray.util.list_named_actors() if isinstance(n, str) and n.startswith(POOL_PREFIX))
    except Exception:  # noqa: BLE001
        pass
    if want is not None:
        names = {n for n in names if n.split(":", 2)[1] == want}
    return sorted(names)


def _handle(name: str) -> Any:
    import ray

    h = _known_managers.get(name)
    if h is not None:
        return h
    try:
        return ray.get_actor(name)
    except ValueError:
        return None


def pool_stats(env: Any = None, timeout: float = 10.0) -> list:
    """Statistics of the live replica pools (of ``env``, a TaskEnvironment or its name; all when
    ``None``): one dict per pool with ``replicas`` (live, not retiring), ``ready``, ``starting``,
    ``retiring``, ``active``, ``waiting``, ``served``, ``created``, ``lost``, ``nodes``, ``pids``…"""
    import ray
    import ray.exceptions as rex

    out = []
    for name in _pool_names(env):
        h = _handle(name)
        if h is None:
            continue
        try:
            out.append(ray.get(h.stats.remote(), timeout=timeout))
        except (rex.RayActorError, rex.GetTimeoutError):
            continue
    return out


def shutdown_pools(env: Any = None) -> int:
    """Kill the replica pools (of ``env``; all when ``None``) in this Ray namespace, replicas
    included; returns how many. The next call to a reusable task starts a fresh pool."""
    global _last_route
    import ray

    n = 0
    for name in _pool_names(env):
        h = _handle(name)
        if h is None:
            continue
        try:
            ray.kill(h, no_restart=True)  # its replicas die with their owner
            n += 1
        except Exception:  # noqa: BLE001
            pass
        _known_managers.pop(name, None)
        client = _by_name.pop(name, None)
        if client is not None:
            client.manager = None
            client.slots = []
    _last_route = (None,) * 7
    if env is None:
        _clients.clear()
    else:
        for k, hit in list(_clients.items()):
            if hit[2].name not in _by_name:
                _clients.pop(k, None)
    return n


def reset() -> None:
    """Forget this process's pools; on the driver, while still connected, kill them too (so
    ``flyte_ray.shutdown()`` leaves no replicas in a cluster that stays up)."""
    from . import waiting

    try:
        import ray

        if ray.is_initialized() and not waiting.in_worker():
            shutdown_pools()
    except Exception:  # noqa: BLE001
        pass
    global _last_route
    _clients.clear()
    _by_name.clear()
    _blobs.clear()
    _statics.clear()
    _last_route = (None,) * 7
    _known_managers.clear()
