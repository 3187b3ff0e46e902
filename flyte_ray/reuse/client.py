"""The caller's side of replica pools: which pool a call goes to, and which replica.

One pool per (environment, market, queue, resources + policy, sync/async), so spot attempts go to
spot replicas and on-demand attempts (the final attempt of an interruptible task) to on-demand
ones. Replicas and managers are placed by the strategy the cluster view chooses (markers or node
labels, :meth:`~flyte_ray._ray.placement.ClusterView.placement`). A pool is a named async *manager*
actor (``flyte-ray-pool:<env>:<market>:<queue>:<kind>:<hash>``, 0 CPU, on on-demand capacity when
the cluster has markets). The driver creates the
managers it needs and holds their handles (a manager is fate-shared with the driver); a nested
call made from a worker that finds no pool creates a *detached* one, because a named actor created
by a worker dies with it. Either way the pool tears itself down after ``idle_ttl``, and
:func:`shutdown_pools` / ``flyte_ray.shutdown()`` remove pools. Killing a manager kills its
replicas (their owner died).

Hot path: the caller keeps, per process and pool (:class:`PoolClient`), the manager's list of
ready replicas (refreshed when older than :data:`REFRESH_S`: one small manager call per second at
most, or at once after a failure) and a local count of its own calls in flight per replica; it
picks the least loaded replica (round-robin among equals) and makes **one actor call** to it. The
pool and the call's static part are found once per spec, market, queue and settings and kept on
the spec (``CallSpec.memo``). All of this process's pools are one process part,
:class:`PoolRegistry`.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

import ray
import ray.exceptions as rex

from .._core.process import PROCESS, memo_get, memo_put
from .._core.records import AttemptRequest
from .._ray import waiting
from .._ray.executors import pickled_once
from .._ray.placement import DEFAULT_QUEUE, ONDEMAND, ClusterView
from .._ray.port import Port, WaitTimeout
from .._ray.wire import VERSION, WarmStatic
from .manager import RemoteManager

if TYPE_CHECKING:
    from .._core.call import Call

__all__ = [
    "PoolClient",
    "PoolRegistry",
    "PoolUnavailable",
    "Slot",
    "route",
    "pool_stats",
    "shutdown_pools",
    "POOL_PREFIX",
    "REFRESH_S",
    "POOL_WAIT_S",
]

POOL_PREFIX = "flyte-ray-pool:"
REFRESH_S = 1.0  # a caller's replica list is refreshed when older than this
POOL_WAIT_S = 30.0  # how long a caller keeps trying to reach a pool's manager
SYNC_QUEUE_SLOTS = 31  # extra threads of a sync replica: calls waiting there are visible demand
ASYNC_QUEUE_SLOTS = 10_000


class PoolUnavailable(Exception):
    """The pool's manager could not be reached for ``POOL_WAIT_S``."""


class Slot:
    """One replica as this process sees it."""

    __slots__ = ("rid", "handle", "run", "inflight", "known", "actor")

    def __init__(self, rid: str, handle: Any) -> None:
        self.rid = rid
        self.handle = handle
        self.run = handle.run  # the bound method, made once (``handle.run`` builds one per access)
        self.inflight = 0
        self.known: set = set()  # static digests sent to this replica in full
        self.actor = _actor_id(handle)


def _actor_id(handle: Any) -> str:
    try:
        return str(handle._actor_id.hex())
    except Exception:  # noqa: BLE001
        return ""


def _current_actor() -> str:
    """The actor this process is (a replica calling into its own pool), else ""."""
    try:
        aid = ray.get_runtime_context().get_actor_id()
        return str(aid) if aid else ""
    except Exception:  # noqa: BLE001
        return ""


class PoolRegistry:
    """This process's pools: clients by pool name and the managers it created or looked up (the
    driver's handles keep its managers alive). A process part; its reset kills the driver's pools
    first, while Ray is still connected, so ``flyte_ray.shutdown()`` leaves no replicas behind in
    a cluster that stays up."""

    reset_order = 0

    def __init__(self) -> None:
        self.by_name: dict[str, PoolClient] = {}
        self.known_managers: dict[str, Any] = {}
        self.lock = threading.Lock()

    def reset(self) -> None:
        try:
            if ray.is_initialized() and not waiting.in_worker():
                shutdown_pools()
        except Exception:  # noqa: BLE001
            pass
        self.by_name = {}
        self.known_managers = {}


def registry() -> PoolRegistry:
    return PROCESS.part(PoolRegistry)


class PoolClient:
    """This process's view of one pool: its manager, the replicas to use, local load."""

    def __init__(self, name: str, config: dict, manager_opts: dict) -> None:
        self.name = name
        self.config = config
        self.kind = config["kind"]
        self.manager_opts = manager_opts
        self.manager: Any = None
        self.slots: list[Slot] = []
        self.version = -1
        self.fresh_at = 0.0
        self.rr = 0
        self.lock = threading.Lock()
        self.pending: Any = None  # an in-flight refresh, shared by concurrent callers
        # A replica calling into its own pool (a parent task calling a child of the same reusable
        # environment) must not queue the child behind itself: with concurrency=1 that call never
        # starts. It uses the other replicas, and asks the manager for one when it is alone.
        self.me = _current_actor()
        self.at_max = False  # the manager said the pool cannot grow

    # ----------------------------------------------------------------- manager
    def _manager(self) -> Any:
        m = self.manager
        if m is None:
            opts = dict(self.manager_opts)
            if waiting.is_worker():
                # A named actor created by a worker dies with it: a worker's pool is detached
                # (it still tears itself down after idle_ttl).
                opts["lifetime"] = "detached"
            m = self.manager = RemoteManager.options(name=self.name, get_if_exists=True, **opts).remote(
                self.name, self.config
            )
            registry().known_managers[self.name] = m
        return m

    def _request(self, force: bool) -> Any:
        with self.lock:
            if self.pending is None:
                self.pending = self._manager().replicas.remote(-1 if force else self.version, self.me or None)
            return self.pending

    def _apply(self, ref: Any, res: tuple) -> None:
        with self.lock:
            if self.pending is ref:
                self.pending = None
            version, listing = res[0], res[1]
            self.at_max = bool(res[2]) if len(res) > 2 else False
            if listing is not None:  # the manager's answer is authoritative
                old = {s.rid: s for s in self.slots}
                self.slots = [old.get(rid) or Slot(rid, h) for rid, h in listing]
                self.version = version
            self.fresh_at = time.monotonic()

    def _failed(self, ref: Any) -> None:
        with self.lock:
            if self.pending is ref:
                self.pending = None
            self.manager = None
            registry().known_managers.pop(self.name, None)
            self.version = -1

    async def refresh(self, port: Port, force: bool = False) -> None:
        deadline = time.monotonic() + POOL_WAIT_S
        while True:
            ref = self._request(force)
            try:
                self._apply(ref, await port.get(ref, 10.0))
                return
            except (rex.RayActorError, WaitTimeout) as e:
                self._failed(ref)
                if time.monotonic() > deadline:
                    raise PoolUnavailable(f"pool {self.name}: manager unreachable ({type(e).__name__}: {e})") from e
                await port.sleep(0.2)

    # ----------------------------------------------------------------- picking
    def _choose(self) -> Optional[Slot]:
        slots = self.slots
        if self.me:
            # The manager lists, for a nested call, the replicas it may use (see
            # manager._nested_listing): itself only when it has room or the pool cannot grow.
            others = [s for s in slots if s.actor != self.me]
            slots = others or (slots if self.at_max or len(slots) == 1 else [])
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

    def ready_slot(self) -> Optional[Slot]:
        """A replica to use now, without asking the manager (None: the list is stale or empty)."""
        if not self.slots or time.monotonic() - self.fresh_at > REFRESH_S:
            return None
        return self._choose()

    async def pick(self, port: Port) -> Slot:
        s = self.ready_slot()
        if s is not None:
            return s
        await self.refresh(port)
        s = self._choose()
        while s is None:  # the manager always lists at least one (possibly starting) replica
            await self.refresh(port, force=True)
            s = self._choose()
        return s

    def forget(self, slot: Slot) -> None:
        """Stop using ``slot`` here and fetch a fresh list on the next pick."""
        with self.lock:
            self.slots = [s for s in self.slots if s is not slot]
            self.fresh_at = 0.0

    async def report_lost(self, slot: Slot, port: Port) -> str:
        """Tell the manager a call to ``slot`` failed with an actor error: ``"retired"`` (it was
        killed on purpose) or ``"lost"``."""
        self.forget(slot)
        m = self.manager
        if m is None:
            return "lost"
        try:
            return await port.get(m.lost.remote(slot.rid), 5.0)
        except Exception:  # noqa: BLE001 - manager gone too: a real loss
            return "lost"


# ================================================================================ routes


def route(call: "Call", req: AttemptRequest, view: ClusterView) -> tuple[PoolClient, WarmStatic]:
    """The pool for this attempt and the call's static part, kept on the spec. The pool depends
    on the spec, the market and queue, and on what the cluster declares (resources, the placement
    mode); the static part on the task and settings too."""
    names = view.resource_names()
    mode = view.mode(call.settings.placement, req.market, req.queue or DEFAULT_QUEUE)
    key = ("pool", req.market, req.queue, names, mode, view.declares())
    hit = memo_get(call.spec.memo, key)
    if hit is not None and hit[0] is call.settings and hit[1] is call.task:
        return hit[2], hit[3]
    client = _client(call, req, view)
    return memo_put(call.spec.memo, key, (call.settings, call.task, client, _static(call, req)))[2:]


def _static(call: "Call", req: AttemptRequest) -> WarmStatic:
    """What repeats between a task's calls: sent to a replica once, then as its 12-byte digest
    (the same in every process for the same content)."""
    tb, sb = _task_blob(call.task), pickled_once(call.settings)
    fqn, market, queue = call.spec.fqn, str(req.market), req.queue
    digest = hashlib.sha1(pickle.dumps((tb, sb, fqn, market, queue))).digest()[:12]
    return WarmStatic(VERSION, digest, tb, sb, fqn, market, queue)


def _task_blob(task: Any) -> bytes:
    """The task pickled (by reference when importable, see ``TaskTemplate.__reduce__``), once."""
    blob = memo_get(task.memo, "blob")
    if blob is None:
        blob = memo_put(task.memo, "blob", ray.cloudpickle.dumps(task))
    return blob


def _client(call: "Call", req: AttemptRequest, view: ClusterView) -> PoolClient:
    policy = call.spec.reusable
    assert policy is not None  # the controller sends only reusable calls here
    kind = "async" if call.task.is_async else "sync"
    override = call.settings.placement
    placement = view.placement(override, req.market, req.queue or DEFAULT_QUEUE)
    opts = dict(placement.options(dict(call.spec.ray_options), req.market, req.queue))
    opts.setdefault("num_cpus", 1)  # as a plain attempt (an actor would default to 0 while running)
    opts.setdefault("scheduling_strategy", "SPREAD")  # a node loss takes as few replicas as possible
    slots = SYNC_QUEUE_SLOTS if kind == "sync" else ASYNC_QUEUE_SLOTS
    opts.update(max_restarts=0, max_task_retries=0, max_concurrency=policy.concurrency + slots)
    env = call.task.env.name
    digest = hashlib.sha1(
        json.dumps(
            [opts, policy.replicas, policy.concurrency, policy.idle_ttl, policy.scaledown_ttl],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:10]
    name = f"{POOL_PREFIX}{env}:{req.market}:{req.queue}:{kind}:{digest}"
    reg = registry()
    with reg.lock:
        client = reg.by_name.get(name)
        if client is None:
            config = {
                "env": env,
                "market": str(req.market),
                "queue": req.queue,
                "kind": kind,
                "opts": opts,
                "blob": _task_blob(call.task),
                "min": policy.min_replicas,
                "max": policy.max_replicas,
                "concurrency": policy.concurrency,
                "idle_ttl": policy.idle_ttl,
                "scaledown_ttl": policy.scaledown_ttl,
            }
            manager_opts: dict = {"num_cpus": 0, "max_restarts": 0, "max_concurrency": 10_000}
            # On on-demand capacity (survives spot preemptions) when the cluster has markets.
            manager_opts.update(view.placement(override, ONDEMAND, None).pinned(ONDEMAND))
            client = reg.by_name[name] = PoolClient(name, config, manager_opts)
    return client


# ================================================================================ introspection / cleanup


def _env_name(env: Any) -> Optional[str]:
    if env is None or isinstance(env, str):
        return env
    return getattr(env, "name", None) or str(env)


def _pool_names(env: Any = None) -> list:
    want = _env_name(env)
    names = set(registry().known_managers)
    try:
        names.update(n for n in ray.util.list_named_actors() if isinstance(n, str) and n.startswith(POOL_PREFIX))
    except Exception:  # noqa: BLE001
        pass
    if want is not None:
        names = {n for n in names if n.split(":", 2)[1] == want}
    return sorted(names)


def _handle(name: str) -> Any:
    h = registry().known_managers.get(name)
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
    reg = registry()
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
        reg.known_managers.pop(name, None)
        client = reg.by_name.pop(name, None)
        if client is not None:
            client.manager = None
            client.slots = []
    # Routes kept on specs name clients that are gone: a new generation forgets them.
    PROCESS.generation += 1
    return n
