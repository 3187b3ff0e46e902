"""The supervising actor: hosts the attempt loop of calls whose caller may be preempted.

A task running on spot capacity can lose its node at any moment. If it supervised its own
children, their supervision (and their finished results) would die with it. So calls made from a
spot attempt are handed to one async actor on on-demand capacity, created by the driver
(a named actor created from a worker would die with that worker):

* the actor runs the same attempt loop (:func:`flyte_ray.supervisor.run_async`) as everyone else;
* each call has a deterministic identity — run, call id (parent's call id + name + sequence
  number) and a hash of its inputs — so a parent retried after a preemption, making the same
  calls in the same order, *re-attaches*: finished children return their stored result without
  running again, running ones are awaited, not restarted;
* if the actor dies, Ray restarts it (``max_restarts=-1``) and callers resubmit transparently;
  a caller that cannot reach a live supervisor within 30 s gets ``SupervisorLostError``.

The hop to the actor costs a round trip (measured here: ~0.8 ms for a Ray actor call, where a
trivial Ray task takes ~1.4 ms), so sending a one-millisecond child through it more than doubles
the child's latency, while for a ten-second child it is noise. Hence *short* calls stay with their
caller (:func:`is_short`): once every recent run of a task finished in under
``Settings.inline_under`` seconds (default 0.1), a spot caller supervises that task's calls
itself, exactly as the driver does, and records each finished result with the actor in batches
(:class:`_Recorder`), off the call's path. If the caller is preempted, Ray ends the short
children it owned (at most ``inline_under`` seconds of work each) and its retry, which always
goes through the actor, gets the recorded results back and re-runs only the rest. Calls of
unknown or longer runtime, and every call of a retried parent, go through the actor.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Optional

import ray
import ray.exceptions as rex

from . import waiting
from .errors import RuntimeSystemError, RuntimeUserError, SupervisorLostError, as_user_error, format_exception

if TYPE_CHECKING:
    from .task import Call

ACTOR_NAME = "flyte-ray-supervisor"
KEEP_RESULTS = 100_000  # finished calls remembered for re-attachment (LRU)
RECOVERY_S = 30.0


class SupervisorActor:
    """Async actor (0 CPU, on-demand) that owns the attempt loops of delegated calls."""

    def __init__(self) -> None:
        self.running: dict[str, asyncio.Future] = {}
        self.finished: OrderedDict[str, tuple] = OrderedDict()
        self.hosted = 0  # calls whose attempt loop ran here
        self.recorded = 0  # short calls' results sent by the callers that supervised them

    async def run(self, key: str, task: Any, args: tuple, kwargs: dict, run_name: str, call_id: str,
                  settings: Any, run_overrides: Optional[dict]) -> tuple:
        done = self.finished.get(key)
        if done is not None:
            return done + (True,)  # re-attached to a finished call: nothing runs again
        fut, attached = self._start(key, task, args, kwargs, run_name, call_id, settings, run_overrides)
        # shield: if our caller dies (a preempted parent), the call goes on for its retry
        return (await asyncio.shield(fut)) + (attached,)

    def _start(self, key: str, task: Any, args: tuple, kwargs: dict, run_name: str, call_id: str,
               settings: Any, run_overrides: Optional[dict]) -> tuple:
        fut = self.running.get(key)
        if fut is not None:
            return fut, True  # re-attached to a running call: awaited, not restarted
        from ._core.spec import resolve
        from .task import Call

        spec = resolve(task, run_overrides) if run_overrides else task.spec
        call = Call(task, spec, run_name, call_id, args, kwargs, settings, run_overrides)
        fut = asyncio.ensure_future(self._host(key, call))
        self.running[key] = fut
        self.hosted += 1
        return fut, False

    async def _host(self, key: str, call: "Call") -> tuple:
        from .supervisor import run_async

        try:
            value = await run_async(call)
            out: tuple = (True, value, "", _runtime(call))
        except Exception as e:  # noqa: BLE001 - travels back to the caller as a value
            out = (False, _portable(e), format_exception(e), _runtime(call))
        self.running.pop(key, None)
        self._keep(key, out)
        return out

    def _keep(self, key: str, out: tuple) -> None:
        self.finished[key] = out
        while len(self.finished) > KEEP_RESULTS:
            self.finished.popitem(last=False)

    async def record_many(self, items: list) -> None:
        """Results of short calls that their (spot) callers supervised themselves, kept for a
        retried caller to re-attach to (see :func:`is_short`)."""
        for key, out in items:
            if key not in self.running and key not in self.finished:
                self._keep(key, out)
                self.recorded += 1

    async def run_many(self, items: list) -> list:
        """Many calls in one actor call (a burst of ``.aio()`` calls from one caller)."""
        out: list = [None] * len(items)
        waits, where = [], []
        for i, it in enumerate(items):
            done = self.finished.get(it[0])
            if done is not None:
                out[i] = done + (True,)
                continue
            fut, attached = self._start(*it)
            waits.append(asyncio.shield(fut))  # the calls outlive this batch's caller
            where.append((i, attached))
        for (i, attached), res in zip(where, await asyncio.gather(*waits)):
            out[i] = res + (attached,)
        return out

    async def ping(self) -> dict:
        import os

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "running": len(self.running), "finished": len(self.finished), "hosted": self.hosted,
                "recorded": self.recorded}


def _portable(exc: BaseException) -> BaseException:
    from .attempt import _portable as p

    return p(exc)


def _runtime(call: "Call") -> Optional[float]:
    """Seconds the call's last attempt ran user code (None when it never reported)."""
    h = call.state.history
    return h[-1].runtime if h else None


_RemoteSupervisor = ray.remote(SupervisorActor)  # bound under another name: see ray-here notes
_handle: Any = None
_owned: Any = None  # the driver's handle (keeps the actor alive)
_lock = threading.Lock()


def ensure_supervisor() -> Any:
    """Create the supervising actor (from the driver) if the cluster has markets; idempotent."""
    from .placement import ONDEMAND, cluster_view, MARKER

    global _owned
    if waiting.is_worker() or not cluster_view().has_markets():
        return None
    if _owned is not None:
        return _owned
    resources = {ONDEMAND: MARKER}
    # Keep the handle: a named actor is garbage-collected once its owner holds no handle.
    _owned = _RemoteSupervisor.options(name=ACTOR_NAME, get_if_exists=True, num_cpus=0, resources=resources,
                                     max_restarts=-1, max_task_retries=0, max_concurrency=100_000).remote()
    return _owned


class _NotFound(Exception):
    pass


def _get_handle(refresh: bool = False) -> Any:
    global _handle
    if _handle is None or refresh:
        with _lock:
            if _handle is None or refresh:
                try:
                    _handle = ray.get_actor(ACTOR_NAME)
                except ValueError as e:  # not created (yet) or being restarted
                    raise _NotFound(str(e)) from e
    return _handle


def reset() -> None:
    global _handle, _owned
    _handle = None
    _owned = None
    _batchers.clear()
    _recent.clear()


def should_delegate(call: "Call") -> bool:
    """Calls made from an attempt on spot capacity (its node may vanish) are this module's:
    :func:`run_sync` / :func:`run_async` host them here or in the actor."""
    from .context import ctx

    parent = ctx()
    return (parent is not None and parent.market == "spot" and call.settings.supervisor == "auto"
            and waiting.is_worker())


RECENT = 8  # runs of a task remembered per process to judge it short
_recent: "dict[str, deque]" = {}


def note_runtime(fqn: str, seconds: Optional[float]) -> None:
    """Remember how long a finished call of ``fqn`` ran (its last attempt's user code)."""
    if seconds is None:
        return
    d = _recent.get(fqn)
    if d is None:
        if len(_recent) > 4096:
            _recent.clear()
        d = _recent[fqn] = deque(maxlen=RECENT)
    d.append(seconds)


def is_short(call: "Call") -> bool:
    """Supervise this call in its caller: every recent run of its task took under
    ``inline_under`` seconds, and the caller is a first attempt (a retried caller re-attaches
    through the actor, which holds the results of its earlier attempt's children)."""
    from .context import ctx

    limit = call.settings.inline_under
    if limit <= 0:
        return False
    d = _recent.get(call.spec.fqn)
    if not d or max(d) >= limit:
        return False
    parent = ctx()
    return parent is not None and parent.attempt == 0


class _Recorder:
    """Sends the results of short calls to the actor in batches, from a daemon thread, so
    recording costs the call's path one list append. A result finished less than
    :data:`FLUSH_S` before its caller is lost is not recorded: the retried caller re-runs it."""

    FLUSH_S = 0.02

    def __init__(self) -> None:
        self.items: list = []
        self.lock = threading.Lock()
        self.thread: Optional[threading.Thread] = None

    def add(self, call: "Call", value: Any) -> None:
        with self.lock:
            self.items.append((call, value))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="flyte-ray-recorder", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.FLUSH_S)
            with self.lock:
                batch, self.items = self.items, []
            if batch:
                self.flush(batch)

    @staticmethod
    def flush(batch: list) -> None:
        try:
            items = [(call_key(c), (True, v, "", _runtime(c))) for c, v in batch]
            _get_handle().record_many.remote(items)  # fire and forget
        except Exception:  # noqa: BLE001 - best effort: an unrecorded short call re-runs
            pass


_recorder = _Recorder()


def _inline_sync(call: "Call") -> Any:
    from . import supervisor

    try:
        value = supervisor.run_sync(call)
    finally:
        note_runtime(call.spec.fqn, _runtime(call))
    _recorder.add(call, value)
    return value


async def _inline_async(call: "Call") -> Any:
    from . import supervisor

    try:
        value = await supervisor.run_async(call)
    finally:
        note_runtime(call.spec.fqn, _runtime(call))
    _recorder.add(call, value)
    return value


def call_key(call: "Call") -> str:
    h = hashlib.sha256()
    try:
        h.update(ray.cloudpickle.dumps((call.args, call.kwargs)))
    except Exception:  # unpicklable inputs would fail at submission anyway
        h.update(repr((call.args, call.kwargs)).encode())
    return f"{call.run_name}|{call.call_id}|{call.spec.fqn}|{h.hexdigest()[:16]}"


def _args(call: "Call") -> tuple:
    return (call_key(call), call.task, call.args, call.kwargs, call.run_name, call.call_id, call.settings,
            call.run_overrides)


def _unpack(call: "Call", res: tuple) -> Any:
    ok, value, tb = res[0], res[1], res[2]
    note_runtime(call.spec.fqn, res[3])
    if ok:
        return value
    if isinstance(value, (RuntimeUserError, RuntimeSystemError)):
        raise value
    raise as_user_error(value, tb)


def _lost(call: "Call", e: BaseException) -> SupervisorLostError:
    return SupervisorLostError(f"{call.spec.fqn}: the supervising actor is gone and did not come back within "
                               f"{RECOVERY_S:.0f}s ({type(e).__name__}: {e})")


def run_sync(call: "Call") -> Any:
    """Host a call from a blocking spot caller: in the caller when short, else in the actor."""
    if is_short(call):
        return _inline_sync(call)
    return _delegate_sync(call)


def _delegate_sync(call: "Call") -> Any:
    """Delegate a call from a blocking caller; resubmits if the actor restarts."""
    args = _args(call)
    deadline = time.monotonic() + RECOVERY_S
    refresh = False
    while True:
        try:
            ref = _get_handle(refresh).run.remote(*args)
            res = waiting.wait_blocking(ref, max(1.0, deadline - time.monotonic()) if refresh else None)
            break
        except (rex.RayActorError, rex.GetTimeoutError, _NotFound) as e:
            if time.monotonic() > deadline:
                raise _lost(call, e) from e
            time.sleep(0.5)
            refresh = True
    return _unpack(call, res)


BATCH = 64


class _Batcher:
    """Per event loop: ``.aio()`` calls made in the same loop iteration go to the actor in
    chunks of :data:`BATCH` per ``run_many`` call (measured here: one actor call per child gave
    in-task fan-out ~0.3x raw Ray; a streaming ``run_many`` ~0.37x; chunked returns ~0.5x)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list = []

    def add(self, args: tuple) -> asyncio.Future:
        fut = self.loop.create_future()
        if not self.pending:
            self.loop.call_soon(self._flush)
        self.pending.append((args, fut))
        return fut

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        # Chunks complete independently, so one slow call holds back at most BATCH-1 siblings.
        for i in range(0, len(batch), BATCH):
            self._send(batch[i:i + BATCH])

    def _send(self, batch: list) -> None:
        try:
            gen = _get_handle().run_many.remote([a for a, _ in batch])
        except Exception as e:  # noqa: BLE001 - callers fall back to single calls
            for _, f in batch:
                if not f.done():
                    f.set_exception(_Fallback(e))
            return
        self.loop.create_task(self._consume(gen, [f for _, f in batch]))

    async def _consume(self, gen: Any, futs: list) -> None:
        try:
            for f, res in zip(futs, await waiting.await_ref(gen)):
                if not f.done():
                    f.set_result(res)
        except Exception as e:  # noqa: BLE001 - actor died mid-stream: the rest resubmit singly
            for f in futs:
                if not f.done():
                    f.set_exception(_Fallback(e))


class _Fallback(Exception):
    pass


_batchers: "dict[asyncio.AbstractEventLoop, _Batcher]" = {}


async def run_async(call: "Call") -> Any:
    """Host a call from a spot caller's event loop: in the caller when short, else in the actor."""
    if is_short(call):
        return await _inline_async(call)
    return await _delegate_async(call)


async def _delegate_async(call: "Call") -> Any:
    """Delegate a call from an event loop (batched with its siblings); falls back to single
    calls, with recovery, if the actor is unreachable."""
    from .attempt import _client_mode

    args = _args(call)
    if not _client_mode():
        loop = asyncio.get_running_loop()
        b = _batchers.get(loop)
        if b is None:
            if len(_batchers) > 64:  # loops come and go (asyncio.run per call)
                _batchers.clear()
            b = _batchers[loop] = _Batcher(loop)
        try:
            return _unpack(call, await b.add(args))
        except _Fallback:
            pass
    return await _run_async_single(call, args)


async def _run_async_single(call: "Call", args: tuple) -> Any:
    deadline = time.monotonic() + RECOVERY_S
    refresh = False
    while True:
        try:
            ref = _get_handle(refresh).run.remote(*args)
            res = await waiting.await_ref(ref)
            break
        except (rex.RayActorError, _NotFound) as e:
            if time.monotonic() > deadline:
                raise _lost(call, e) from e
            await asyncio.sleep(0.5)
            refresh = True
    return _unpack(call, res)
