"""The pool manager: one async actor per pool that owns its replicas.

Scaling (every :data:`TICK_S`): it polls each replica's load (a separate ``ctl`` concurrency
group answers while calls run). Demand = calls running + waiting; when demand exceeds the pool's
capacity (replicas × concurrency) on two polls in a row it starts the missing replicas, up to
``max``. A replica above ``min`` idle for ``scaledown_ttl`` is *retired*: it leaves the list at
once, answers any late call with ``Declined("retiring")`` (the caller re-picks; no attempt is
consumed) and is killed :data:`RETIRE_GRACE_S` later, when no caller can still hold a list naming
it. With no call for ``idle_ttl`` the whole pool retires and exits (a call arriving meanwhile
revives it).

A replica that dies is dropped and replaced (after a growing delay when replicas die before they
are ready); callers report losses with :meth:`PoolManager.lost`, which also tells them when the
replica was retired on purpose (then they simply re-pick).

Preemption notices: every :data:`DRAIN_CHECK_S` the manager reads Ray's draining-node map
(:func:`flyte_ray._ray.drains.draining_nodes`). A replica on a node that is being drained is
retired at once — no new call is sent there, the calls it runs go on — and a replacement is
started, which Ray places on a node that is not draining.
"""

from __future__ import annotations

import asyncio
import time
import traceback
import uuid
from collections import OrderedDict
from typing import Any, Optional

import ray
import ray.exceptions as rex

from .._ray.drains import draining_nodes
from .._ray.metrics import metrics
from .replica import RemoteAsyncReplica, RemoteReplica

__all__ = ["PoolManager", "RemoteManager", "TICK_S", "RETIRE_GRACE_S"]

TICK_S = 0.25  # the manager's control period
RETIRE_GRACE_S = 3.0  # a retired replica lives this long (> the callers' refresh period) before it is killed
DRAIN_CHECK_S = 1.0  # how often the manager looks for replicas on draining nodes


class _Rep:
    __slots__ = (
        "rid",
        "handle",
        "state",
        "created",
        "retired_at",
        "active",
        "waiting",
        "served",
        "last_active",
        "info",
    )

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
        self.drains_checked = 0.0
        self.drained_count = 0  # replicas retired because their node was drained

    # ----------------------------------------------------------------- replicas
    def _start(self) -> None:
        if self.ticker is None or self.ticker.done():
            self.ticker = asyncio.ensure_future(self._tick_loop())
            while len(self._live()) < max(self.min, 1):
                self._create()

    def _live(self) -> list:
        return [r for r in self.reps.values() if r.retired_at is None]

    def _create(self) -> None:
        cls = RemoteAsyncReplica if self.cfg["kind"] == "async" else RemoteReplica
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
            self.next_create_at = time.time() + min(0.5 * 2**self.start_failures, 30.0)
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
        """The ready replicas; while none is, only the first one started: replicas of a pool
        have one shape and Ray places pending actors about in order, so it is the one to get
        room first. Listing every starting replica let callers pick one the cluster has no room
        for (a pool larger than the cluster), where the call waited until the start timeout."""
        live = self._live()
        ready = [r for r in live if r.state == "ready"]
        return [(r.rid, r.handle) for r in (ready or live[:1])]

    # ----------------------------------------------------------------- caller API
    async def replicas(self, version: int, caller: Optional[str] = None) -> tuple:
        """The replicas to use: ``(version, [(rid, handle)...], at_max)``, with ``None`` for the
        list when the caller's copy is current. A request revives a pool that is shutting down.
        ``caller``: the actor id of a replica of this pool that calls into it (a nested call): when
        it is the only live replica, another one is started so the call does not queue behind
        its own caller; ``at_max`` says when the pool cannot grow."""
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
        live = self._live()
        if caller and len(live) < self.max and all(_actor_id(r.handle) == caller for r in live):
            self._create()
        at_max = len(self._live()) >= self.max
        if version == self.version:
            return (self.version, None, at_max)
        if caller:
            return (self.version, self._nested_listing(caller), at_max)
        return (self.version, self._listing(), at_max)

    def _nested_listing(self, caller: str) -> list:
        """Where a replica's nested call may go: another *ready* replica when there is one;
        else the caller itself when it has room for more calls (concurrency > 1: the child runs
        beside its parent); else the first replica starting (a concurrency-1 caller must not
        queue behind itself). Never a starting replica while a ready one would do: a replica
        the cluster has no room for stays "starting" for good (10 replicas of 1 CPU on a
        2-CPU cluster), and a call sent to it would wait with it."""
        live = self._live()
        mine = [r for r in live if _actor_id(r.handle) == caller]
        others = [r for r in live if r.state == "ready" and r not in mine]
        if not others and not (mine and self.conc > 1):
            others = [r for r in live if r not in mine][:1]  # the first one starting (see _listing)
        pick = others or mine or live[:1]
        return [(r.rid, r.handle) for r in pick]

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
            "pool": self.name,
            "env": self.cfg["env"],
            "market": self.cfg["market"],
            "queue": self.cfg["queue"],
            "kind": self.cfg["kind"],
            "min": self.min,
            "max": self.max,
            "concurrency": self.conc,
            "replicas": len(live),
            "ready": sum(r.state == "ready" for r in live),
            "starting": sum(r.state != "ready" for r in live),
            "retiring": sum(r.retired_at is not None for r in self.reps.values()),
            "active": sum(r.active for r in self.reps.values()),
            "waiting": sum(r.waiting for r in self.reps.values()),
            "served": self.served_retired + sum(r.served for r in self.reps.values()),
            "created": self.created,
            "lost": self.lost_count,
            "drained": self.drained_count,
            "closing": self.closing_since is not None,
            "nodes": [r.info.get("node", "") for r in live],
            "pids": [r.info.get("pid") for r in live],
        }

    async def close(self) -> None:
        """Kill every replica and then this manager."""
        for rid in list(self.reps):
            self._drop(rid, kill=True)
        self._exit()

    def _exit(self) -> None:
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    # ----------------------------------------------------------------- control loop
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                if await self._tick():
                    break
            except Exception:  # noqa: BLE001 - keep managing
                traceback.print_exc()
        for rid in list(self.reps):
            self._drop(rid, kill=True)
        self._exit()

    async def _poll(self, rep: _Rep) -> None:
        try:
            active, waiting, served, last = await asyncio.wait_for(_awaited(rep.handle.load.remote()), 2.0)
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

        # replicas on nodes being drained (a preemption notice): no new calls, a replacement elsewhere
        if now - self.drains_checked >= DRAIN_CHECK_S and live:
            self.drains_checked = now
            draining = await asyncio.get_running_loop().run_in_executor(None, draining_nodes) or {}
            doomed = [r for r in live if r.state == "ready" and r.info.get("node") in draining]
            for r in doomed:  # one for one: the pool keeps its capacity
                self._retire(r)
                self.drained_count += 1
                if len(self._live()) < self.max:
                    self._create()
            live = self._live()

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
            idle = [
                r
                for r in live
                if r.state == "ready"
                and not r.active
                and not r.waiting
                and now - r.last_active >= self.cfg["scaledown_ttl"]
            ]
            if idle:
                self._retire(min(idle, key=lambda r: r.last_active))

        metrics().replicas(self.name, self.cfg["market"], len(self._live()))

        # retired replicas: killed after the grace period, once idle
        for r in list(self.reps.values()):
            if r.retired_at is not None and now - r.retired_at >= RETIRE_GRACE_S and not (r.active or r.waiting):
                self._drop(r.rid, kill=True)
        return False


def _actor_id(handle: Any) -> str:
    try:
        return str(handle._actor_id.hex())
    except Exception:  # noqa: BLE001
        return ""


async def _awaited(ref: Any) -> Any:
    return await ref


RemoteManager = ray.remote(PoolManager)  # bound under another name: the class pickles by reference
