"""The worker side of an attempt: run the user's function under its task context.

:func:`run_user_code` is the one implementation, for every place user code runs: a plain Ray
task (:func:`run_attempt`, the body of each task's remote function), a sync warm replica and an
async warm replica (on the replica's own loop, ``on_loop=True``). It sets the
:class:`~flyte_ray.context.TaskContext`, times the user code, and returns an
:class:`~flyte_ray._ray.wire.AttemptResult`: user errors come back as *values* (with their
traceback text), so Ray never wraps them; only a platform failure under the worker (node lost,
worker killed, OOM kill, cancellation) reaches the caller as a Ray exception.

Per-process worker state (the node id, unpickled settings) is the :class:`WorkerState` part.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from typing import Any, Optional

import ray

from .._core.drive import drive
from .._core.process import PROCESS
from ..context import TaskContext, reset_context, set_context
from ..errors import PlacementError, RuntimeSystemError, RuntimeUserError, TaskInterruptedError, format_exception
from . import waiting
from .drains import DrainMonitor
from .metrics import Metrics
from .recording import WORKER_FLUSH_S, RunRecorder
from .wire import VERSION, AttemptPayload, AttemptResult, Started, decode, encode, result_wire

logger = logging.getLogger("flyte_ray")

__all__ = [
    "WorkerState",
    "current_node",
    "run_user_code",
    "run_attempt",
    "run_streaming_attempt",
    "portable",
    "context_for",
]


class WorkerState:
    """This worker process's node id and the settings / run overrides it has unpickled."""

    reset_order = 40

    def __init__(self) -> None:
        self.node_id: Optional[str] = None
        self.objects: dict[bytes, Any] = {}  # pickled bytes -> object (callers send the same few)

    def reset(self) -> None:
        self.node_id = None
        self.objects = {}

    def unpickled(self, blob: bytes) -> Any:
        """``pickle.loads(blob)``, once per distinct blob: unpickling bytes this process has seen
        is a dict hit (measured: the attempt payload's settings cost ~5 us instead of ~16)."""
        obj = self.objects.get(blob, _MISSING)
        if obj is _MISSING:
            if len(self.objects) > 1024:
                self.objects = {}
            obj = self.objects[blob] = pickle.loads(blob)
        return obj


_MISSING = object()


# A part lives as long as the process (its reset empties it), so one reference serves every call.
_STATE = PROCESS.part(WorkerState)
_DRAINS = PROCESS.part(DrainMonitor)
_RECORDER = PROCESS.part(RunRecorder)
_METRICS = PROCESS.part(Metrics)


def _state() -> WorkerState:
    return _STATE


def current_node() -> str:
    node = _STATE.node_id
    if node is None:  # a worker process never changes node
        node = _STATE.node_id = ray.get_runtime_context().get_node_id()
    return node


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a RuntimeUserError describing it."""
    try:
        pickle.loads(ray.cloudpickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeUserError(
            type(exc).__name__, f"{type(exc).__name__}: {exc} (the original exception could not be pickled)"
        )


def _ckpt(context: Optional[TaskContext]) -> Optional[tuple]:
    """What the attempt's checkpoint moved: (saved, restored bytes, resumed from, last saved,
    seconds saving, seconds restoring); also reported to the metrics."""
    cp = None if context is None else context._checkpoint
    if cp is None or context is None:
        return None
    if cp.pending_saves():
        # A background save still uploads: the attempt ends once it is stored (every storage
        # request has its own time limit), so its record counts it and a retry finds it.
        t0 = time.monotonic()
        cp.flush()
        logger.info(
            "%s: waited %.1fs for background checkpoint uploads at the end of the attempt",
            context.fqn,
            time.monotonic() - t0,
        )
    stats = cp.stats()
    if stats[0]:
        _METRICS.checkpoint_saved(context.fqn, stats[4], stats[0])
    if stats[1]:
        _METRICS.checkpoint_restored(context.fqn, stats[5], stats[1])
    return stats


def failed(
    exc: BaseException, node: str, runtime: Optional[float], context: Optional[TaskContext] = None
) -> AttemptResult:
    # Whatever the user's code raises is the user's failure, Ray errors included (a GetTimeoutError
    # from its own ray.get): they go on the user budget with their own type. The exception is a
    # flyte-ray RuntimeSystemError (a nested call that lost its supervisor, say): the platform failed
    # under the user's code, so it is this attempt's system failure too -- except a PlacementError:
    # a nested call that no node can run fails the same way however often this attempt is
    # retried, so re-running the parent on the system budget only repeats it (seen with flyte-sdk's
    # resources example: the parent ran 4 times, then "preemptions / node losses"); it is the
    # user's failure, with the child's error. A TaskInterruptedError
    # after a preemption notice on this node is the task stopping on purpose because the node
    # goes: a system failure (recorded as preemption), never the user's.
    notice = _DRAINS.notice.as_wire()
    system = (isinstance(exc, RuntimeSystemError) and not isinstance(exc, PlacementError)) or (
        notice is not None and isinstance(exc, TaskInterruptedError)
    )
    return AttemptResult(
        VERSION, False, portable(exc), format_exception(exc), node, system, runtime, notice, _ckpt(context)
    )


def _cancelled_by_ray() -> bool:
    """True when Ray cancelled the running task (``ray.cancel``), which it does by raising
    ``KeyboardInterrupt`` in the worker's main thread; False when the user's code raised it."""
    try:
        return bool(ray.get_runtime_context().is_canceled())
    except Exception:  # noqa: BLE001 - not answerable here (an actor): take it as Ray's cancel
        return True


def context_for(
    run_name: str,
    fqn: str,
    call_id: str,
    attempt: int,
    user_attempt: int,
    system_failures: int,
    market: str,
    queue: str,
    settings: bytes,
    overrides: Optional[bytes],
) -> TaskContext:
    s = _state()
    return TaskContext(
        run_name=run_name,
        fqn=fqn,
        call_id=call_id,
        attempt=attempt,
        user_attempt=user_attempt,
        system_failures=system_failures,
        market=market,
        queue=queue,
        node_id=current_node(),
        settings=s.unpickled(settings),
        run_overrides=None if overrides is None else s.unpickled(overrides),
        _preemption=_DRAINS.notice,
    )


async def run_user_code(
    task: Any, context: TaskContext, args: tuple, kwargs: dict, *, on_loop: bool = False
) -> AttemptResult:
    """Run ``task``'s function once under ``context`` (see the module docstring).

    ``on_loop``: this coroutine runs on an event loop (an async replica), so an async task is
    awaited here and cancellation propagates; otherwise it is driven synchronously and an async
    task's coroutine runs on the worker's loop thread while the main thread parks.
    """
    node = context.node_id
    context.keeps_report = task.report
    token = set_context(context)
    _DRAINS.begin(node)  # this process watches its node for a preemption notice while attempts run
    t0 = time.perf_counter()
    try:
        if not task.is_async:
            value = task.func(*args, **kwargs)
        elif on_loop:
            value = await task.func(*args, **kwargs)
        else:
            value = waiting.run_coroutine_in_worker(task.func(*args, **kwargs))
    except KeyboardInterrupt as e:
        if _cancelled_by_ray():
            raise  # ray.cancel: let Ray report TaskCancelledError
        err = RuntimeUserError("KeyboardInterrupt", f"the task raised KeyboardInterrupt({e})")
        return failed(err, node, time.perf_counter() - t0, context)
    except SystemExit as e:
        # Not re-raised: the worker would exit, and SystemExit reaching the caller would end it.
        if _DRAINS.notice.is_set():
            # The node is being taken away (a preemption notice) and Ray is shutting its workers
            # down: the platform stopped the task, not the task itself.
            down = RuntimeSystemError(
                "NodeShutdown", "the worker was shut down while its node was being drained for preemption"
            )
            return failed(down, node, time.perf_counter() - t0, context)
        err = RuntimeUserError("SystemExit", f"the task called sys.exit({e.code!r})")
        return failed(err, node, time.perf_counter() - t0, context)
    except asyncio.CancelledError as e:
        if on_loop:
            raise
        return failed(e, node, time.perf_counter() - t0, context)
    except BaseException as e:  # noqa: BLE001 - every user failure is reported as a value
        return failed(e, node, time.perf_counter() - t0, context)
    finally:
        reset_context(token)
        _DRAINS.end()
        if context._at_end:
            context.run_at_end()
        if _RECORDER.pending:  # this attempt's nested calls: stored before its result travels
            _RECORDER.flush_within(WORKER_FLUSH_S)
    return AttemptResult(
        VERSION, True, value, "", node, False, time.perf_counter() - t0, _DRAINS.notice.as_wire(), _ckpt(context)
    )


def _context_of(p: AttemptPayload) -> TaskContext:
    return context_for(
        p.run_name,
        p.fqn,
        p.call_id,
        p.attempt,
        p.user_attempt,
        p.system_failures,
        p.market,
        p.queue,
        p.settings,
        p.overrides,
    )


def _inputs(p: AttemptPayload) -> tuple:
    """The attempt's ``(args, kwargs)``: inline, or fetched from the object store (big inputs,
    put once per call by the caller)."""
    if p.inputs is None:
        return p.call_args, p.kwargs
    return ray.get(p.inputs)


def run_attempt(task: Any, wire: tuple) -> tuple:
    """The body of a task's remote function: one attempt (records as they travel: see wire)."""
    p = decode(AttemptPayload, wire)
    args, kwargs = _inputs(p)
    return result_wire(drive(run_user_code(task, _context_of(p), args, kwargs)))


def run_streaming_attempt(task: Any, wire: tuple) -> Any:
    """The body of a streaming attempt: first "started" (so the caller can time queueing and
    runtime apart), then the result."""
    p = decode(AttemptPayload, wire)
    yield encode(Started(VERSION, current_node(), time.time()))
    args, kwargs = _inputs(p)
    yield result_wire(drive(run_user_code(task, _context_of(p), args, kwargs)))
