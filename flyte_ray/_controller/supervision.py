"""Where a call's attempt loop runs: here, or in the supervising actor.

A task running on spot capacity can lose its node at any moment. If it supervised its own
children, their supervision (and their finished results) would die with it. So calls made from a
spot attempt are handed to a supervising actor: an async actor on on-demand capacity.

There are up to ``Settings.supervisor_shards`` of them (*shards*), so that fifty spot parents
fanning out at once do not all queue behind one actor, and losing one actor touches only its
shard. A call goes to the shard of its *parent* (:func:`shard_of`: a hash of run name and parent
call id), so siblings batch together and a retried parent, making the same calls, finds its
children in the same shard. Shard 0 is created by the driver when ``init`` connects (owned by the
driver: it goes when the driver goes); shard ``i > 0`` is created by the first caller that needs
it, *detached* (an actor created from a worker would otherwise die with that worker; named in a
namespace of the job's own, :func:`shard_namespace`), and
removed by the driver's ``shutdown``; one whose driver went away without a shutdown (shard 0 is
gone) exits on its own once it hosts nothing (:data:`ORPHAN_CHECK_S`). So the number of actors
grows with the number of spot parents at work, up to the limit, and no idle shard ever starts.
In each shard:

* the actor runs the same attempt loop as everyone else (the controller's ``supervise``);
* each call has a deterministic identity — run, call id (parent's call id + name + number) and a
  digest of its inputs (:func:`call_key`) — so a parent retried after a preemption, making the
  same calls, *re-attaches*: finished children return their stored result without running
  again, running ones are awaited, not restarted;
* if the actor dies, Ray restarts it (``max_restarts=-1``) and callers resubmit transparently;
  a caller that cannot reach a live supervisor within :data:`RECOVERY_S` gets
  ``SupervisorLostError``.

The hop to the actor costs a round trip (measured here: ~0.8 ms for a Ray actor call, where a
trivial Ray task takes ~1.4 ms), so sending a one-millisecond child through it more than doubles
the child's latency, while for a ten-second child it is noise. Hence *short* calls stay with their
caller (:meth:`Supervision.where` → :data:`Host.CALLER_RECORDED`): once every recent run of a task
finished in under ``Settings.inline_under`` seconds (default 0.1), a spot caller supervises that
task's calls itself, exactly as the driver does, and records each finished result with the actor
in batches (:class:`_Recorder`), off the call's path. If the caller is preempted, Ray ends the
short children it owned (at most ``inline_under`` seconds of work each) and its retry, which
always goes through the actor, gets the recorded results back and re-runs only the rest. Calls
of unknown or longer runtime, and every call of a retried parent, go through the actor.

The actor keeps finished results for re-attachment in a :class:`ResultStore`, bounded by count,
bytes and age, and drops a run's results when the run's driver says the run ended (a driver whose
run had spot attempts tells the actor, in batches, off the call's path).

Wire records: :class:`~flyte_ray._ray.wire.SupervisedCall` in, :class:`SupervisedResult` out,
:class:`Recorded` for short calls' results.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import threading
import time
import weakref
import zlib
from collections import OrderedDict, deque
from enum import Enum
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

import ray
import ray.exceptions as rex

from .._core.call import Call
from .._core.process import PROCESS
from .._core.records import AttemptRecord, AttemptRequest, Outcome
from .._core.spec import resolve
from .._ray import waiting
from .._ray.executors import client_mode
from .._ray.placement import cluster_view
from .._ray.port import Port, WaitTimeout
from .._ray.recording import WORKER_FLUSH_S, RunRecorder
from .._ray.wire import VERSION, Recorded, SupervisedCall, SupervisedResult, decode, encode
from .._ray.worker import portable
from ..context import ctx
from ..errors import RuntimeSystemError, RuntimeUserError, SupervisorLostError, as_user_error, format_exception

if TYPE_CHECKING:
    pass

__all__ = [
    "Host",
    "Supervision",
    "SupervisorActorBase",
    "RuntimeHistory",
    "call_key",
    "shard_of",
    "shard_name",
    "ACTOR_NAME",
]

ACTOR_NAME = "flyte-ray-supervisor"  # shard 0; shard i > 0 is f"{ACTOR_NAME}-{i}"
ORPHAN_CHECK_S = 10.0  # how often a detached shard checks that shard 0 (its driver) is still there
# ($FLYTE_RAY_ORPHAN_CHECK_S in the job's environment overrides it)
ORPHAN_CHECKS = 3  # ... and how many failed checks in a row, while it hosts nothing, end it
KEEP_RESULTS = 100_000  # finished calls remembered for re-attachment (LRU), at most
KEEP_BYTES = 256 * 2**20  # ... and at most this many bytes of them (pickled)
KEEP_SECONDS = 24 * 3600.0  # ... and none older than this
RECOVERY_S = 30.0
RECENT = 8  # runs of a task remembered per process to judge it short
BATCH = 64

Supervise = Callable[[Call], Awaitable[Any]]


class Host(Enum):
    HERE = "here"  # the caller supervises (the driver, or a caller that cannot be preempted)
    ACTOR = "actor"  # the supervising actor supervises
    CALLER_RECORDED = "caller_recorded"  # a short call: the caller supervises and records the result


def call_key(call: Call) -> str:
    """The identity a retried caller re-attaches by: run | call id | task | input digest."""
    h = hashlib.sha256()
    try:
        h.update(ray.cloudpickle.dumps((call.args, call.kwargs)))
    except Exception:  # noqa: BLE001 - unpicklable inputs would fail at submission anyway
        h.update(repr((call.args, call.kwargs)).encode())
    return f"{call.run_name}|{call.call_id}|{call.spec.fqn}|{h.hexdigest()[:16]}"


def shard_name(shard: int) -> str:
    """The named actor of supervising shard ``shard``."""
    return ACTOR_NAME if shard == 0 else f"{ACTOR_NAME}-{shard}"


def shard_namespace(shard: int) -> Optional[str]:
    """Where shard ``shard``'s actor is named: shard 0 in the job's namespace (None), the detached
    ones in ``flyte-ray-<job namespace>`` — a named namespace of this job's own, because Ray warns on
    the console about every detached actor created in an anonymous one (a job's default)."""
    if shard == 0:
        return None
    return f"flyte-ray-{ray.get_runtime_context().namespace}"


def shard_of(run_name: str, call_id: str, shards: int) -> int:
    """The shard that supervises a call: its parent's (run name + parent call id), so siblings
    share a shard and a retried parent's calls land where its first attempt's did."""
    if shards <= 1:
        return 0
    parent = call_id.rpartition("/")[0]
    return zlib.crc32(f"{run_name}|{parent}".encode()) % shards


def _result_of(call: Call, ok: bool, value: Any, tb: str = "", attached: bool = False) -> SupervisedResult:
    return SupervisedResult(VERSION, ok, value, tb, call.state.last_runtime, attached)


# ================================================================================ actor side


class ResultStore:
    """Finished calls' results kept for re-attachment, pickled, least recently used first out:
    at most ``max_count`` of them, ``max_bytes`` bytes, none older than ``max_age`` seconds; a
    result larger than ``max_bytes`` is not kept (a retried caller then runs that call again).
    ``forget_run`` drops every result of a run."""

    def __init__(
        self,
        max_count: int = KEEP_RESULTS,
        max_bytes: int = KEEP_BYTES,
        max_age: float = KEEP_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_count, self.max_bytes, self.max_age, self.clock = max_count, max_bytes, max_age, clock
        self.items: OrderedDict[str, tuple[bytes, str, float]] = OrderedDict()  # key -> (blob, run, kept at)
        self.runs: dict[str, set] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def put(self, key: str, result: SupervisedResult) -> None:
        try:
            blob = ray.cloudpickle.dumps(encode(result))
        except Exception:  # noqa: BLE001 - not kept: a retried caller runs the call again
            return
        self._drop(key)
        if len(blob) > self.max_bytes:
            return
        run = key.split("|", 1)[0]
        self.items[key] = (blob, run, self.clock())
        self.runs.setdefault(run, set()).add(key)
        self.bytes += len(blob)
        self._evict()

    def get(self, key: str) -> Optional[SupervisedResult]:
        hit = self.items.get(key)
        if hit is None:
            return None
        if self.clock() - hit[2] > self.max_age:
            self._drop(key)
            return None
        self.items.move_to_end(key)
        return decode(SupervisedResult, pickle.loads(hit[0]))

    def forget_run(self, run: str) -> None:
        for key in list(self.runs.get(run, ())):
            self._drop(key)

    def _evict(self) -> None:
        now = self.clock()
        while self.items:
            key, (blob, _, at) = next(iter(self.items.items()))
            if len(self.items) <= self.max_count and self.bytes <= self.max_bytes and now - at <= self.max_age:
                break
            self._drop(key)

    def _drop(self, key: str) -> None:
        hit = self.items.pop(key, None)
        if hit is None:
            return
        self.bytes -= len(hit[0])
        keys = self.runs.get(hit[1])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.runs[hit[1]]


class SupervisorActorBase:
    """Async actor (0 CPU, on-demand) that owns the attempt loops of delegated calls.

    The controller subclasses it with :meth:`_supervise` (its attempt loop on the actor's loop).
    """

    def __init__(self, shard: int = 0, job_namespace: Optional[str] = None) -> None:
        self.shard = shard
        self.job_namespace = job_namespace  # where shard 0 is named (a detached shard lives elsewhere)
        self.running: dict[str, asyncio.Future] = {}
        self.finished = ResultStore()
        self.hosted = 0  # calls whose attempt loop ran here
        self.recorded = 0  # short calls' results sent by the callers that supervised them
        self._watch: Optional[asyncio.Task] = None
        self._flushing: Optional[asyncio.Future] = None  # the hosted calls' records being written
        try:
            self.orphan_check_s = float(os.environ.get("FLYTE_RAY_ORPHAN_CHECK_S", ORPHAN_CHECK_S))
        except ValueError:
            self.orphan_check_s = ORPHAN_CHECK_S

    def _watch_orphan(self) -> None:
        """A detached shard (i > 0) ends itself once its driver is gone (shard 0 with it) and it
        hosts nothing; started by its first call (an event loop is running then)."""
        if self.shard and self._watch is None:
            self._watch = asyncio.ensure_future(self._orphan_loop())

    async def _orphan_loop(self) -> None:
        misses = 0
        while True:
            await asyncio.sleep(self.orphan_check_s)
            try:
                await asyncio.to_thread(ray.get_actor, ACTOR_NAME, self.job_namespace)
                misses = 0
            except ValueError:  # no shard 0: the driver that owned it is gone
                misses += 1
            except Exception:  # noqa: BLE001 - the GCS did not answer: ask again later
                continue
            if misses >= ORPHAN_CHECKS and not self.running:
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return

    async def _supervise(self, call: Call) -> Any:
        raise NotImplementedError

    async def run(self, wire: tuple) -> tuple:
        """One :class:`SupervisedCall`; its :class:`SupervisedResult` (as they travel)."""
        self._watch_orphan()
        sc = decode(SupervisedCall, wire)
        done = self.finished.get(sc.key)
        if done is not None:
            return encode(done._replace(attached=True))  # re-attached to a finished call: nothing runs again
        fut, attached = self._start(sc)
        # shield: if our caller dies (a preempted parent), the call goes on for its retry
        return encode((await asyncio.shield(fut))._replace(attached=attached))

    async def run_many(self, wires: list) -> list:
        """Many calls in one actor call (a burst of ``.aio()`` calls from one caller)."""
        self._watch_orphan()
        out: list = [None] * len(wires)
        waits, where = [], []
        for i, wire in enumerate(wires):
            sc = decode(SupervisedCall, wire)
            done = self.finished.get(sc.key)
            if done is not None:
                out[i] = encode(done._replace(attached=True))
                continue
            fut, attached = self._start(sc)
            waits.append(asyncio.shield(fut))  # the calls outlive this batch's caller
            where.append((i, attached))
        for (i, attached), res in zip(where, await asyncio.gather(*waits)):
            out[i] = encode(res._replace(attached=attached))
        return out

    def _start(self, sc: SupervisedCall) -> tuple:
        fut = self.running.get(sc.key)
        if fut is not None:
            return fut, True  # re-attached to a running call: awaited, not restarted
        task = sc.task
        spec = resolve(task, sc.overrides) if sc.overrides else task.spec
        call = Call(task, spec, sc.run_name, sc.call_id, sc.args, sc.kwargs, sc.settings, sc.overrides)
        fut = asyncio.ensure_future(self._host(sc.key, call))
        self.running[sc.key] = fut
        self.hosted += 1
        return fut, False

    async def _host(self, key: str, call: Call) -> SupervisedResult:
        try:
            out = _result_of(call, True, await self._supervise(call))
        except Exception as e:  # noqa: BLE001 - travels back to the caller as a value
            out = _result_of(call, False, portable(e), format_exception(e))
        self.running.pop(key, None)
        self._keep(key, out)
        await self._records_written()
        return out

    async def _records_written(self) -> None:
        """The hosted calls' attempt records, stored before their results travel (as a worker
        does for its nested calls: the run's tree is whole when its caller sees the result).
        Concurrent calls share one write; each write waits at most WORKER_FLUSH_S."""
        rec = PROCESS.part(RunRecorder)
        for _ in range(2):  # the write in flight may have started before this call's record
            if not rec.pending:
                return
            if self._flushing is None or self._flushing.done():
                loop = asyncio.get_running_loop()
                self._flushing = loop.run_in_executor(None, rec.flush_within, WORKER_FLUSH_S)
            await asyncio.shield(self._flushing)

    def _keep(self, key: str, out: SupervisedResult) -> None:
        self.finished.put(key, out)

    async def forget_runs(self, runs: list) -> None:
        """Runs that ended: nobody re-attaches to their calls any more."""
        for run in runs:
            self.finished.forget_run(run)

    async def record_many(self, items: list) -> None:
        """Results of short calls that their (spot) callers supervised themselves, kept for a
        retried caller to re-attach to."""
        self._watch_orphan()
        for wire in items:
            rec = decode(Recorded, wire)
            if rec.key not in self.running and self.finished.get(rec.key) is None:
                self._keep(rec.key, decode(SupervisedResult, rec.result))
                self.recorded += 1

    async def ping(self) -> dict:
        return {
            "shard": self.shard,
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "running": len(self.running),
            "finished": len(self.finished),
            "finished_bytes": self.finished.bytes,
            "hosted": self.hosted,
            "recorded": self.recorded,
        }


# ================================================================================ caller side


class RuntimeHistory:
    """How long recent runs of each task took, in this process (an attempt observer): what
    judges a call *short* (a process part)."""

    reset_order = 50

    def __init__(self) -> None:
        self.recent: dict[str, deque] = {}

    def reset(self) -> None:
        self.recent = {}

    def note(self, fqn: str, seconds: Optional[float]) -> None:
        if seconds is None:
            return
        d = self.recent.get(fqn)
        if d is None:
            if len(self.recent) > 4096:
                self.recent = {}
            d = self.recent[fqn] = deque(maxlen=RECENT)
        d.append(seconds)

    def all_under(self, fqn: str, limit: float) -> bool:
        d = self.recent.get(fqn)
        return bool(d) and max(d) < limit  # type: ignore[arg-type]

    # AttemptObserver
    def attempt_started(self, call: Call, req: AttemptRequest, record: AttemptRecord) -> None:
        pass

    def attempt_finished(self, call: Call, req: AttemptRequest, record: AttemptRecord, out: Outcome) -> None:
        self.note(call.spec.fqn, out.runtime)


class _Recorder:
    """Sends the results of short calls, and the names of runs that ended, to the actor in
    batches, from a daemon thread, so each costs the call's path one list append. A result
    finished less than :data:`FLUSH_S` before its caller is lost is not recorded: the retried
    caller re-runs it. An ended run not told (the driver exited first) ages out of the store."""

    FLUSH_S = 0.02

    def __init__(self, supervision: "Supervision") -> None:
        self.supervision = supervision
        self.items: list = []
        self.ended: list = []
        self.lock = threading.Lock()
        self.thread: Optional[threading.Thread] = None

    def add(self, call: Call, value: Any) -> None:
        with self.lock:
            self.items.append((call, value))
            self._start()

    def run_ended(self, run_name: str, shards: int) -> None:
        with self.lock:
            self.ended.append((run_name, shards))
            self._start()

    def clear(self) -> None:
        with self.lock:
            self.items, self.ended = [], []

    def _start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="flyte-ray-recorder", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.FLUSH_S)
            with self.lock:
                batch, self.items = self.items, []
                ended, self.ended = self.ended, []
            if batch or ended:
                self.flush(batch, ended)

    def flush(self, batch: list, ended: list) -> None:
        # best effort: an unrecorded short call re-runs; an untold run ages out of the store
        if not ray.is_initialized():  # shut down meanwhile: a Ray call here would start Ray again
            return
        sup = self.supervision
        by_shard: dict[int, list] = {}
        for c, v in batch:
            shard = shard_of(c.run_name, c.call_id, c.settings.supervisor_shards)
            by_shard.setdefault(shard, []).append((c, v))
        for shard, items in by_shard.items():
            try:
                handle = sup.handle(shard, placement=items[0][0].settings.placement)
                wires = [encode(Recorded(VERSION, call_key(c), encode(_result_of(c, True, v)))) for c, v in items]
                handle.record_many.remote(wires)  # fire and forget
            except Exception:  # noqa: BLE001
                pass
        if ended:
            runs = sorted({name for name, _ in ended})
            for shard in range(max(n for _, n in ended)):
                try:
                    sup.handle(shard, create=False).forget_runs.remote(runs)
                except Exception:  # noqa: BLE001 - a shard that never started holds nothing
                    pass


class _NotFound(Exception):
    pass


class _Fallback(Exception):
    pass


class _Batcher:
    """Per event loop: ``.aio()`` calls made in the same loop iteration go to the actor in
    chunks of :data:`BATCH` per ``run_many`` call (measured here: one actor call per child gave
    in-task fan-out ~0.3x raw Ray; a streaming ``run_many`` ~0.37x; chunked returns ~0.5x)."""

    def __init__(self, supervision: "Supervision", loop: asyncio.AbstractEventLoop) -> None:
        self.supervision = supervision
        self.loop = loop
        self.pending: dict[int, list] = {}  # shard -> [(call, future)]

    def add(self, sc: SupervisedCall, shard: int) -> asyncio.Future:
        fut = self.loop.create_future()
        if not self.pending:
            self.loop.call_soon(self._flush)
        self.pending.setdefault(shard, []).append((sc, fut))
        return fut

    def _flush(self) -> None:
        pending, self.pending = self.pending, {}
        for shard, batch in pending.items():
            # Chunks complete independently, so one slow call holds back at most BATCH-1 siblings.
            for i in range(0, len(batch), BATCH):
                self._send(batch[i : i + BATCH], shard)

    def _send(self, batch: list, shard: int) -> None:
        try:
            handle = self.supervision.cached_handle(shard)
            if handle is None:  # looked up meanwhile by nobody: the single path looks it up off the loop
                raise _NotFound("no handle")
            ref = handle.run_many.remote([encode(sc) for sc, _ in batch])
        except Exception as e:  # noqa: BLE001 - callers fall back to single calls
            for _, f in batch:
                if not f.done():
                    f.set_exception(_Fallback(e))
            return
        self.loop.create_task(self._consume(ref, [f for _, f in batch]))

    async def _consume(self, ref: Any, futs: list) -> None:
        try:
            for f, res in zip(futs, await waiting.await_ref(ref)):
                if not f.done():
                    f.set_result(res)
        except Exception as e:  # noqa: BLE001 - the actor died: the rest resubmit singly
            for f in futs:
                if not f.done():
                    f.set_exception(_Fallback(e))


class Supervision:
    """This process's side of supervision (a process part): where calls are supervised, the
    actor's handle, batching and recording."""

    reset_order = 20

    def __init__(self) -> None:
        self.history = PROCESS.part(RuntimeHistory)
        self.view = cluster_view()
        self.lock = threading.Lock()
        self._handles: dict[int, Any] = {}  # shard -> actor handle, as looked up or created
        self.owned: Any = None  # the driver's handle of shard 0 (keeps the actor alive)
        self.shards = 1  # the driver's Settings.supervisor_shards (the detached shards to remove)
        # Creates shard i > 0 (detached, on on-demand capacity): set by the controller, which
        # knows the actor class.
        self.factory: Optional[Callable[[int, str], Any]] = None
        self.batchers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batcher]" = weakref.WeakKeyDictionary()
        self.recorder = _Recorder(self)

    def reset(self) -> None:
        self.recorder.clear()
        if self.owned is not None and ray.is_initialized():
            self._remove_detached_shards()
        self._handles = {}
        self.owned = None
        self.batchers = weakref.WeakKeyDictionary()

    def _remove_detached_shards(self) -> None:
        """The driver shuts down: the shards callers created (detached) go too."""
        for shard in range(1, self.shards):
            try:
                ray.kill(ray.get_actor(shard_name(shard), shard_namespace(shard)), no_restart=True)
            except Exception:  # noqa: BLE001 - never started, or gone already
                pass

    # ---------------------------------------------------------------- where
    def where(self, call: Call) -> Host:
        """Calls made from an attempt on spot capacity (its node may vanish) go to the actor,
        unless they are short (see the module docstring). A cluster without markets has no spot
        capacity and no supervising actor (the driver creates it only where markets exist): the
        caller supervises."""
        parent = ctx()
        if parent is None or parent.market != "spot" or call.settings.supervisor != "auto" or not waiting.is_worker():
            return Host.HERE
        if not self.view.has_markets(call.settings.placement):
            return Host.HERE
        limit = call.settings.inline_under
        if limit > 0 and parent.attempt == 0 and self.history.all_under(call.spec.fqn, limit):
            return Host.CALLER_RECORDED
        return Host.ACTOR

    # ---------------------------------------------------------------- the actor
    def cached_handle(self, shard: int = 0) -> Any:
        """Shard ``shard``'s handle if this process has looked it up (no GCS call), else None."""
        return self._handles.get(shard)

    def handle(self, shard: int = 0, refresh: bool = False, placement: str = "auto", create: bool = True) -> Any:
        """Shard ``shard``'s handle; looks it up in the GCS (blocking) when unknown or ``refresh``,
        and creates a missing shard ``i > 0`` when ``create`` (shard 0 is the driver's)."""
        h = self._handles.get(shard)
        if h is None or refresh:
            with self.lock:
                h = self._handles.get(shard)
                if h is None or refresh:
                    try:
                        h = ray.get_actor(shard_name(shard), shard_namespace(shard))
                    except ValueError as e:  # not created (yet), or gone for good
                        if shard == 0 or not create or self.factory is None:
                            raise _NotFound(str(e)) from e
                        h = self.factory(shard, placement)
                    self._handles[shard] = h
        return h

    def run_ended(self, call: Call) -> None:
        """A root call ended: if its run may have handed calls to the actor (an attempt ran on
        spot) and this process knows the actor, the actor can drop the run's results."""
        if (self.owned is not None or self._handles) and any(r.market == "spot" for r in call.state.history):
            self.recorder.run_ended(call.run_name, call.settings.supervisor_shards)

    # ---------------------------------------------------------------- hosting
    async def in_caller(self, call: Call, supervise: Supervise) -> Any:
        """A short call: supervised here, its result recorded with the actor."""
        value = await supervise(call)
        self.recorder.add(call, value)
        return value

    async def delegate(self, call: Call, port: Port) -> Any:
        """Hand the call to the actor (batched with its siblings on an event loop); resubmits if
        the actor restarts."""
        sc = SupervisedCall(
            VERSION,
            call_key(call),
            call.task,
            call.args,
            call.kwargs,
            call.run_name,
            call.call_id,
            call.settings,
            call.run_overrides,
        )
        shard = shard_of(call.run_name, call.call_id, call.settings.supervisor_shards)
        if not port.blocking and not client_mode():
            if shard not in self._handles:  # a GCS lookup (or a shard's creation): never on the loop thread
                try:
                    await port.offload(self.handle, shard, False, call.settings.placement)
                except _NotFound:
                    return self._unpack(call, await self._single(call, sc, port, shard))
            loop = asyncio.get_running_loop()
            b = self.batchers.get(loop)
            if b is None:
                b = self.batchers[loop] = _Batcher(self, loop)
            try:
                return self._unpack(call, await b.add(sc, shard))
            except _Fallback:
                pass
        return self._unpack(call, await self._single(call, sc, port, shard))

    async def _single(self, call: Call, sc: SupervisedCall, port: Port, shard: int) -> tuple:
        deadline = time.monotonic() + RECOVERY_S
        refresh = False
        placement = call.settings.placement
        while True:
            try:
                cached = self._handles.get(shard)
                handle = (
                    cached
                    if (cached is not None and not refresh)
                    else await port.offload(self.handle, shard, refresh, placement)
                )
                ref = handle.run.remote(encode(sc))
                return await port.get(ref, max(1.0, deadline - time.monotonic()) if refresh else None)
            except (rex.RayActorError, WaitTimeout, _NotFound) as e:
                if time.monotonic() > deadline:
                    raise SupervisorLostError(
                        f"{call.spec.fqn}: the supervising actor is gone and did not come back within "
                        f"{RECOVERY_S:.0f}s ({type(e).__name__}: {e})"
                    ) from e
                await port.sleep(0.5)
                refresh = True

    def _unpack(self, call: Call, wire: tuple) -> Any:
        res = decode(SupervisedResult, wire)
        self.history.note(call.spec.fqn, res.runtime)
        if res.ok:
            return res.value
        err = res.value
        if isinstance(err, (RuntimeUserError, RuntimeSystemError)):
            raise err
        raise as_user_error(err, res.traceback)
