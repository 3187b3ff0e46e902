"""One attempt as a Ray remote call: submit it, wait for it, and say what happened.

Every task gets one Ray remote function per process (exported once, cached by workers), with
Ray's own retries off (``max_retries=0``): the supervisor decides every retry. The remote
function runs the user's code under a :class:`~flyte_ray.context.TaskContext` and returns user
errors as *values* (with their traceback text), so Ray never wraps them; only platform failures
(node lost, worker killed, OOM kill, cancellation) arrive as Ray exceptions, and
:func:`classify` maps those to outcome kinds.
"""

from __future__ import annotations

import asyncio
import pickle
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

import ray
import ray.exceptions as rex

from . import reuse, waiting
from .context import TaskContext, reset_context, set_context
from .errors import NonRecoverableError, OOMError, RuntimeUserError, TaskTimeoutError, format_exception
from .placement import SPOT, attempt_options, cluster_view, describe, request_of
from .supervisor import CANCELLED, OK, OOM, QUEUED_TIMEOUT, SYSTEM, TIMEOUT, USER, AttemptRequest, Outcome

if TYPE_CHECKING:
    from .task import Call, TaskTemplate

__all__ = ["execute_sync", "execute_async", "classify"]

WARN_PENDING_AFTER = 60.0  # seconds an attempt may wait before we say what no node offers

# ------------------------------------------------------------------------------- worker side

_node_id: Optional[str] = None


def _current_node() -> str:
    global _node_id
    if _node_id is None:  # a worker process never changes node
        _node_id = ray.get_runtime_context().get_node_id()
    return _node_id


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a RuntimeUserError describing it."""
    try:
        pickle.loads(ray.cloudpickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeUserError(type(exc).__name__, f"{type(exc).__name__}: {exc} "
                                "(the original exception could not be pickled)")


def run_user_code(task: "TaskTemplate", meta: tuple, args: tuple, kwargs: dict) -> tuple:
    """Run the user's function for one attempt; returns ``(True, value, node, seconds)`` or
    ``(False, exc, traceback_text, node, is_system, seconds)`` (seconds: the user code's runtime)."""
    node = _current_node()
    token = set_context(_context(meta, node))
    t0 = time.perf_counter()
    try:
        if task.is_async:
            value = waiting.run_coroutine_in_worker(task.func(*args, **kwargs))
        else:
            value = task.func(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise  # ray.cancel: let Ray report TaskCancelledError
    except BaseException as e:  # noqa: BLE001 - every user failure is reported as a value
        return _failed(e, node, t0)
    finally:
        reset_context(token)
    return (True, value, node, time.perf_counter() - t0)


async def run_user_code_async(task: "TaskTemplate", meta: tuple, args: tuple, kwargs: dict) -> tuple:
    """:func:`run_user_code` for an async task on an already running loop (an async warm replica);
    cancellation propagates so Ray reports it."""
    node = _current_node()
    token = set_context(_context(meta, node))
    t0 = time.perf_counter()
    try:
        value = await task.func(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
        raise
    except BaseException as e:  # noqa: BLE001 - every user failure is reported as a value
        return _failed(e, node, t0)
    finally:
        reset_context(token)
    return (True, value, node, time.perf_counter() - t0)


def _context(meta: tuple, node: str) -> TaskContext:
    settings, run_overrides = meta[8], meta[9]
    if type(settings) is bytes:  # packed by the caller (see _packed)
        settings, run_overrides = _unpacked(settings)
    return TaskContext(run_name=meta[0], fqn=meta[1], call_id=meta[2], attempt=meta[3], user_attempt=meta[4],
                       system_failures=meta[5], market=meta[6], queue=meta[7], node_id=node, settings=settings,
                       run_overrides=run_overrides)


_unpacked_cache: dict = {}


def _unpacked(blob: bytes) -> tuple:
    hit = _unpacked_cache.get(blob)
    if hit is None:
        if len(_unpacked_cache) > 256:
            _unpacked_cache.clear()
        hit = _unpacked_cache[blob] = pickle.loads(blob)
    return hit


def _failed(e: BaseException, node: str, t0: float) -> tuple:
    # A Ray platform error escaping user code (a lost object or node under a dying worker) is the
    # platform failing, not the user's code: report it as a system failure.
    system = isinstance(e, rex.RayError) and not isinstance(e, (rex.RayTaskError, rex.TaskCancelledError))
    return (False, _portable(e), format_exception(e), node, system, time.perf_counter() - t0)


# ------------------------------------------------------------------------------- caller side

_remote_fns: dict = {}
_bound: dict = {}
_fn_lock = threading.Lock()


def _remote_for(task: "TaskTemplate", streaming: bool) -> Any:
    origin = task._origin or task
    key = (origin.func, streaming)
    fn = _remote_fns.get(key)
    if fn is None:
        with _fn_lock:
            fn = _remote_fns.get(key)
            if fn is None:
                fn = _make_remote(origin, streaming)
                _remote_fns[key] = fn
    return fn


def _make_remote(origin: "TaskTemplate", streaming: bool) -> Any:
    # The closure holds the *task*, which pickles by reference when importable (see
    # TaskTemplate.__reduce__), so Ray exports this function once and workers import the
    # user's module instead of unpickling its globals.
    if streaming:
        def attempt(payload):
            yield (_current_node(), time.time())  # "started": lets the caller time queueing and runtime apart
            yield run_user_code(origin, *payload)
    else:
        def attempt(payload):
            # One argument: Ray serialises each argument separately, and three small ones cost
            # measurably more than one tuple on the hot path.
            return run_user_code(origin, *payload)
    attempt.__name__ = attempt.__qualname__ = origin.name  # how Ray's dashboard names the task
    return ray.remote(max_retries=0, retry_exceptions=False)(attempt)


def _bound_remote(call: "Call", req: AttemptRequest) -> tuple[Any, dict]:
    """The remote function with this attempt's options, cached: ``.options()`` is not free."""
    view = cluster_view()
    streaming = call.spec.uses_streaming and not _client_mode()
    key = (id(call.spec), req.market, req.queue, view.has_markets(), view.has_queues(), streaming)
    hit = _bound.get(key)
    if hit is not None and hit[0] is call.spec:
        return hit[1], hit[2]
    opts = attempt_options(dict(call.spec.ray_options), req.market, req.queue)
    fn = _remote_for(call.task, streaming)
    bound = fn.options(num_returns="streaming", **opts) if streaming else fn.options(**opts)
    if len(_bound) > 4096:
        _bound.clear()
    _bound[key] = (call.spec, bound, opts)  # holding spec keeps id(spec) from being reused
    return bound, opts


def _client_mode() -> bool:
    """Connected through Ray client (``ray://``), which has no streaming generators."""
    try:
        return ray.util.client.ray.is_connected()
    except Exception:
        return False


def _meta(call: "Call", req: AttemptRequest) -> tuple:
    return (call.run_name, call.spec.fqn, call.call_id, req.attempt, req.user_attempt, req.system_failures,
            req.market, req.queue, _packed(call.settings, call.run_overrides), None)


_packed_cache: dict = {}


def _packed(settings: Any, run_overrides: Optional[dict]) -> bytes:
    """Settings and run overrides pickled once per process, not per attempt: a caller makes
    thousands of calls with the same few, and unpickling bytes the worker has seen is a dict hit
    (measured: serialising the attempt payload fell from ~16 to ~5 us per call)."""
    key = (id(settings), id(run_overrides))
    hit = _packed_cache.get(key)
    if hit is not None and hit[0] is settings and hit[1] is run_overrides:
        return hit[2]
    blob = ray.cloudpickle.dumps((settings, run_overrides))
    if len(_packed_cache) > 256:
        _packed_cache.clear()
    _packed_cache[key] = (settings, run_overrides, blob)  # holding both keeps their ids from being reused
    return blob


def reset() -> None:
    global _node_id
    _remote_fns.clear()
    _bound.clear()
    _packed_cache.clear()
    _watch.clear()
    _node_id = None


# ------------------------------------------------------------------------------- outcomes

def _unpack(res: tuple, started: Optional[float] = None) -> Outcome:
    # The runtime comes last and may be missing (a replica that failed before running user code).
    if res[0]:
        return Outcome(OK, value=res[1], node_id=res[2], started=started, runtime=res[3] if len(res) > 3 else None)
    runtime = res[5] if len(res) > 5 else None
    if res[4]:
        return Outcome(SYSTEM, error=res[1], traceback=res[2], node_id=res[3], started=started,
                       system_reason="node_failure", runtime=runtime)
    return Outcome(USER, error=res[1], traceback=res[2], node_id=res[3], started=started, runtime=runtime)


_NODE_RE = re.compile(r"node ID:?\s*([0-9a-f]{16,})", re.I)
_SYSTEM_ERRORS = (rex.NodeDiedError, rex.WorkerCrashedError, rex.RayActorError, rex.ObjectLostError,
                  rex.LocalRayletDiedError, rex.RaySystemError)


def classify(exc: BaseException, market: str) -> Outcome:
    """Map a Ray exception from an attempt to an outcome kind."""
    if isinstance(exc, rex.OutOfMemoryError):
        return Outcome(OOM, error=OOMError(str(exc).strip().splitlines()[0] if str(exc) else "out of memory"))
    if isinstance(exc, rex.TaskCancelledError):
        return Outcome(CANCELLED, error=exc)
    if isinstance(exc, rex.RayTaskError):  # user code raised outside our wrapper (rare)
        cause = getattr(exc, "cause", None) or exc
        if "failed to import on the worker" in str(cause):
            # The task's module is not importable there: every retry would fail the same way.
            cause = NonRecoverableError(
                "the task's code cannot be imported on the Ray worker. Tasks travel by reference to their module: "
                "make it importable on every node (install it, run the driver from the folder that holds it, or "
                "ship it with flyte_ray.init(runtime_env={'working_dir': ...} or {'py_modules': [...]})). "
                f"Ray said: {str(cause)[:500]}")
        return Outcome(USER, error=cause, traceback=str(exc))
    # Everything else is the platform failing: a node or worker lost.
    m = _NODE_RE.search(str(exc))
    node = m.group(1) if m else ""
    return Outcome(SYSTEM, error=exc, node_id=node, system_reason=_system_reason(exc, node, market))


def _system_reason(exc: BaseException, node: str, market: str) -> str:
    """``"preemption"`` when the node was spot or was drained with reason PREEMPTION, else
    ``"node_failure"``. Runs on the failure path only: it may poll the GCS briefly, because a
    removed node is marked dead (with its drain reason) a moment after its tasks fail."""
    if isinstance(exc, rex.ActorDiedError) and getattr(exc, "preempted", False):
        return "preemption"
    if market == SPOT and cluster_view().has_markets():
        return "preemption"
    if not node:
        return "node_failure"
    deadline = time.monotonic() + 2.0
    while True:
        try:
            info = next((n for n in ray.nodes() if n.get("NodeID") == node), None)
        except Exception:
            return "node_failure"
        if info is not None:
            if info.get("Resources", {}).get("spot"):
                return "preemption"
            if not info.get("Alive"):
                return "preemption" if info.get("DeathReason") == _DRAIN_PREEMPTED else "node_failure"
        if time.monotonic() > deadline:  # a hard-killed node is marked dead only ~12 s later
            return "node_failure"
        time.sleep(0.1)


_DRAIN_PREEMPTED = 3  # ray.nodes() DeathReason: AUTOSCALER_DRAIN_PREEMPTED


# ------------------------------------------------------------------------------- watchdog

_watch: dict = {}
_watch_lock = threading.Lock()
_watch_thread: Optional[threading.Thread] = None


def _watch_add(key: Any, call: "Call", req: AttemptRequest, opts: dict) -> None:
    global _watch_thread
    _watch[key] = (call.spec.fqn, req, opts, time.monotonic())
    if _watch_thread is None or not _watch_thread.is_alive():
        with _watch_lock:
            if _watch_thread is None or not _watch_thread.is_alive():
                _watch_thread = threading.Thread(target=_watchdog, name="flyte-ray-watchdog", daemon=True)
                _watch_thread.start()


def _watchdog() -> None:
    """Say, once per attempt, when one has waited long for resources that no node offers."""
    from .runtime import logger

    while True:
        time.sleep(5.0)
        now = time.monotonic()
        for key, item in list(_watch.items()):
            fqn, req, opts, since = item
            if now - since < WARN_PENDING_AFTER or item is None:
                continue
            _watch[key] = (fqn, req, opts, float("inf"))  # warn once
            try:
                missing = cluster_view().missing(request_of(opts))
            except Exception:
                continue
            if missing:
                logger.warning("%s attempt %d (%s, queue %s) has waited %.0fs to start: no live node offers %s. "
                               "Ray keeps it pending until such a node joins (autoscaler) — or set "
                               "Timeout(max_queued_time=...) to give up.", fqn, req.attempt, req.market,
                               req.queue, now - since, describe(missing))


# ------------------------------------------------------------------------------- sync host

def execute_sync(call: "Call", req: AttemptRequest) -> Outcome:
    """Run one attempt from a blocking caller; returns its outcome (never raises for attempt failures)."""
    if call.spec.reusable is not None:
        return reuse.execute_sync(call, req)
    return _execute_plain_sync(call, req)


def _execute_plain_sync(call: "Call", req: AttemptRequest) -> Outcome:
    """One attempt as a Ray task."""
    bound, opts = _bound_remote(call, req)
    meta = _meta(call, req)
    if call.spec.uses_streaming:
        if _client_mode():
            return _execute_timed_client(call, req, bound, opts, meta)
        return _execute_streaming_sync(call, req, bound, opts, meta)
    ref = bound.remote((meta, call.args, call.kwargs))
    _watch_add(ref, call, req, opts)
    try:
        res = waiting.wait_blocking(ref, req.deadline_left)
    except rex.GetTimeoutError:
        ray.cancel(ref, force=True, recursive=True)
        return Outcome(TIMEOUT, error=TaskTimeoutError(f"{call.spec.fqn}: deadline reached during attempt {req.attempt}"))
    except KeyboardInterrupt:
        ray.cancel(ref, recursive=True)
        raise
    except rex.RayError as e:
        return classify(e, req.market)
    finally:
        _watch.pop(ref, None)
    return _unpack(res)


def _limit(*values: Optional[float]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return min(vals) if vals else None


def _run_limit(req: AttemptRequest, started: float) -> Optional[float]:
    """Seconds a started attempt may still run: ``max_runtime``, or what is left of the deadline."""
    return _limit(req.max_runtime, None if req.deadline_left is None else req.deadline_left - (time.time() - started))


def _ran_too_long(call: "Call", req: AttemptRequest, node: str, started: float, limit: float) -> Outcome:
    return Outcome(TIMEOUT, node_id=node, started=started, error=TaskTimeoutError(
        f"{call.spec.fqn}: attempt {req.attempt} ran longer than {limit:.1f}s and was cancelled"))


def _no_result() -> Outcome:
    # The streaming attempt ended before yielding its result: its worker went away.
    return Outcome(SYSTEM, error=rex.RaySystemError("attempt ended without a result"), system_reason="node_failure")


def _execute_streaming_sync(call: "Call", req: AttemptRequest, bound: Any, opts: dict, meta: tuple) -> Outcome:
    gen = bound.remote((meta, call.args, call.kwargs))
    _watch_add(gen, call, req, opts)
    try:
        queued_limit = _limit(req.max_queued_time, req.deadline_left)
        ready, _ = ray.wait([gen], timeout=queued_limit)
        if not ready:
            ray.cancel(gen, force=True)
            return _not_started(call, req, opts)
        node, started = ray.get(next(gen))
        _watch.pop(gen, None)
        run_limit = _run_limit(req, started)
        ready, _ = ray.wait([gen], timeout=run_limit)
        if not ready:
            ray.cancel(gen, force=True, recursive=True)
            return _ran_too_long(call, req, node, started, run_limit)
        return _unpack(ray.get(next(gen)), started)
    except KeyboardInterrupt:
        ray.cancel(gen, recursive=True)
        raise
    except rex.RayError as e:
        return classify(e, req.market)
    except StopIteration:
        return _no_result()
    finally:
        _watch.pop(gen, None)


def _execute_timed_client(call: "Call", req: AttemptRequest, bound: Any, opts: dict, meta: tuple) -> Outcome:
    """Timeouts under Ray client, which cannot stream a "started" signal: after
    ``max_queued_time`` an unfinished attempt counts as not started only if no live node offers
    its resources; ``max_runtime`` is timed from submission."""
    t0 = time.monotonic()
    ref = bound.remote((meta, call.args, call.kwargs))
    try:
        if req.max_queued_time is not None:
            try:
                return _unpack(ray.get(ref, timeout=_limit(req.max_queued_time, req.deadline_left)))
            except rex.GetTimeoutError:
                missing = cluster_view().missing(request_of(opts))
                if missing or (req.deadline_left is not None and time.monotonic() - t0 >= req.deadline_left):
                    ray.cancel(ref, force=True)
                    return _not_started(call, req, opts)
        elapsed = time.monotonic() - t0
        left = _limit(None if req.max_runtime is None else req.max_runtime - elapsed,
                      None if req.deadline_left is None else req.deadline_left - elapsed)
        try:
            return _unpack(ray.get(ref, timeout=None if left is None else max(left, 0.0)))
        except rex.GetTimeoutError:
            ray.cancel(ref, force=True, recursive=True)
            return Outcome(TIMEOUT, error=TaskTimeoutError(
                f"{call.spec.fqn}: attempt {req.attempt} ran longer than {req.max_runtime}s and was cancelled"))
    except KeyboardInterrupt:
        ray.cancel(ref, recursive=True)
        raise
    except rex.RayError as e:
        return classify(e, req.market)


def _not_started(call: "Call", req: AttemptRequest, opts: dict) -> Outcome:
    if req.deadline_left is not None and (req.max_queued_time is None or req.deadline_left < req.max_queued_time):
        return Outcome(TIMEOUT, error=TaskTimeoutError(f"{call.spec.fqn}: deadline reached while attempt "
                                                       f"{req.attempt} waited to start"))
    missing = cluster_view().missing(request_of(opts))
    return Outcome(QUEUED_TIMEOUT, missing=tuple(missing) or ("(resources busy: every node that offers them is full)",))


# ------------------------------------------------------------------------------- async host

async def _await(ref: Any, timeout: Optional[float]) -> Any:
    if timeout is None:
        return await waiting.await_ref(ref)
    task = asyncio.ensure_future(waiting.await_ref(ref))
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        raise asyncio.TimeoutError
    return task.result()


async def execute_async(call: "Call", req: AttemptRequest) -> Outcome:
    """Run one attempt from an event loop; returns its outcome."""
    if call.spec.reusable is not None:
        return await reuse.execute_async(call, req)
    return await _execute_plain_async(call, req)


async def _execute_plain_async(call: "Call", req: AttemptRequest) -> Outcome:
    """One attempt as a Ray task, awaited on the running loop."""
    bound, opts = _bound_remote(call, req)
    meta = _meta(call, req)
    if call.spec.uses_streaming:
        if _client_mode():
            return await asyncio.get_running_loop().run_in_executor(
                None, _execute_timed_client, call, req, bound, opts, meta)
        return await _execute_streaming_async(call, req, bound, opts, meta)
    ref = bound.remote((meta, call.args, call.kwargs))
    _watch_add(ref, call, req, opts)
    try:
        res = await _await(ref, req.deadline_left)
    except asyncio.TimeoutError:
        ray.cancel(ref, force=True, recursive=True)
        return Outcome(TIMEOUT, error=TaskTimeoutError(f"{call.spec.fqn}: deadline reached during attempt {req.attempt}"))
    except asyncio.CancelledError:
        ray.cancel(ref, recursive=True)
        raise
    except rex.RayError as e:
        return await asyncio.get_running_loop().run_in_executor(None, classify, e, req.market)
    finally:
        _watch.pop(ref, None)
    return _unpack(res)


async def _execute_streaming_async(call: "Call", req: AttemptRequest, bound: Any, opts: dict,
                                   meta: tuple) -> Outcome:
    gen = bound.remote((meta, call.args, call.kwargs))
    _watch_add(gen, call, req, opts)
    try:
        queued_limit = _limit(req.max_queued_time, req.deadline_left)
        first = asyncio.ensure_future(gen.__anext__())
        done, _ = await asyncio.wait({first}, timeout=queued_limit)
        if not done:
            first.cancel()
            ray.cancel(gen, force=True)
            return _not_started(call, req, opts)
        node, started = await _await(first.result(), None)
        _watch.pop(gen, None)
        run_limit = _run_limit(req, started)
        second = asyncio.ensure_future(gen.__anext__())
        done, _ = await asyncio.wait({second}, timeout=run_limit)
        if not done:
            second.cancel()
            ray.cancel(gen, force=True, recursive=True)
            return _ran_too_long(call, req, node, started, run_limit)
        return _unpack(await _await(second.result(), None), started)
    except asyncio.CancelledError:
        ray.cancel(gen, recursive=True)
        raise
    except rex.RayError as e:
        return classify(e, req.market)
    except StopAsyncIteration:
        return _no_result()
    finally:
        _watch.pop(gen, None)
