"""Executors: run one attempt on Ray and say what happened (an :class:`Outcome`).

An executor is an object with ``async run(call, request, port) -> Outcome`` that never raises
for an attempt's failure (only the caller's cancellation propagates). The controller picks one
per call (:meth:`flyte_ray._controller.controller.RayController.executor_for`):

* :class:`TaskExecutor` -- the attempt as one Ray task, awaited until it ends (the deadline, if
  any, bounds the wait);
* :class:`StreamingTaskExecutor` -- the attempt as a streaming Ray task that first reports
  "started", so ``max_queued_time`` and ``max_runtime`` are timed apart;
* :class:`ClientTaskExecutor` -- the same limits under Ray client (``ray://``), which has no
  streaming tasks: after ``max_queued_time`` an unfinished attempt counts as not started only if
  no live node offers its resources, and ``max_runtime`` is timed from submission;
* the warm-replica executor lives with the replica machinery (:mod:`flyte_ray.reuse`).

Every task gets one Ray remote function per process (exported once, cached by workers), with
Ray's own retries off (``max_retries=0``): the supervisor decides every retry. The function's
options for an attempt (resources + placement: markers or node labels, the strategy the cluster
view chooses, :meth:`~flyte_ray._ray.placement.ClusterView.placement`) are made once per spec,
market, queue and strategy and kept on the spec (``CallSpec.memo``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional, Protocol

import ray
import ray.exceptions as rex

from .._core.process import memo_get, memo_put
from .._core.records import AttemptRequest, Kind, Market, Outcome
from .._core.sizes import at_least
from ..errors import RuntimeSystemError, TaskTimeoutError
from .node_types import fits
from .observe import outcome_of
from .placement import DEFAULT_QUEUE, Placement, cluster_view, describe, request_of
from .port import INTERRUPTS, EndOfStream, Port, WaitTimeout
from .watchdog import pending_watch
from .wire import VERSION, AttemptPayload, AttemptResult, Started, decode, payload_wire
from .worker import run_attempt, run_streaming_attempt

if TYPE_CHECKING:
    from .._core.call import Call

__all__ = [
    "Executor",
    "TaskExecutor",
    "StreamingTaskExecutor",
    "ClientTaskExecutor",
    "result_outcome",
    "pickled_once",
    "client_mode",
]


class Executor(Protocol):
    async def run(self, call: "Call", req: AttemptRequest, port: Port) -> Outcome: ...


def client_mode() -> bool:
    """Connected through Ray client (``ray://``), which has no streaming generators."""
    try:
        return bool(ray.util.client.ray.is_connected())
    except Exception:  # noqa: BLE001
        return False


def pickled_once(obj: Any) -> bytes:
    """``obj`` pickled, kept on the object itself (``Settings`` and ``RunOverrides``: a caller makes
    thousands of calls with the same few; measured: the payload's serialisation fell ~16 → ~5 us;
    ``tests/test_core.py`` checks both keep it)."""
    blob = getattr(obj, "_wire_blob", None)
    if blob is None:
        blob = ray.cloudpickle.dumps(obj)
        try:
            object.__setattr__(obj, "_wire_blob", blob)
        except AttributeError:  # a plain mapping: pickled per call
            pass
    return blob


def result_outcome(wire: tuple, started: Optional[float] = None) -> Outcome:
    """The outcome an attempt's :class:`AttemptResult` (as it came off the wire) describes."""
    res = decode(AttemptResult, wire)
    if res.ok:
        return Outcome(
            Kind.OK,
            value=res.value,
            node_id=res.node,
            started=started,
            runtime=res.runtime,
            notice=res.notice,
            ckpt=res.ckpt,
        )
    if res.system:
        return Outcome(
            Kind.SYSTEM,
            error=res.value,
            traceback=res.traceback,
            node_id=res.node,
            started=started,
            # the task stopped on purpose after a preemption notice (TaskInterruptedError), or the
            # platform failed under its code
            system_reason="preemption" if res.notice is not None else "node_failure",
            runtime=res.runtime,
            notice=res.notice,
            ckpt=res.ckpt,
        )
    return Outcome(
        Kind.USER,
        error=res.value,
        traceback=res.traceback,
        node_id=res.node,
        started=started,
        runtime=res.runtime,
        notice=res.notice,
        ckpt=res.ckpt,
    )


#: Inputs of at least this many bytes (estimated, flyte_ray._core.sizes) travel by object
#: reference, put once per call. Ray inlines arguments up to 100 KiB into the task itself.
BIG_INPUTS = 1 << 20

SPOT_RECHECK_S = 10.0  # after the spot wait, how often a waiting spot attempt checks for spot capacity


class _SpotGone(Exception):
    """No live node offers a spot attempt that has waited past its spot wait."""

    def __init__(self, missing: list, waited: float) -> None:
        super().__init__(f"no live node offers {missing} after {waited:.0f}s")
        self.missing, self.waited = missing, waited


def _spot_unavailable(missing: list, waited: float, why: str) -> Outcome:
    """A spot attempt that found no spot capacity: it moves to on-demand (no budget used)."""
    return Outcome(
        Kind.SPOT_UNAVAILABLE,
        missing=tuple(missing),
        error=RuntimeSystemError(
            "SpotUnavailable", f"no spot capacity after {waited:.0f}s ({why}); no live node offers: {describe(missing)}"
        ),
    )


def _spot_wait(req: AttemptRequest) -> Optional[float]:
    """How long a spot attempt waits for spot capacity before checking whether any is left; None
    when it does not (on-demand, no spot wait, or ``max_queued_time`` decides instead)."""
    return req.spot_wait if req.max_queued_time is None else None


def _limit(*values: Optional[float]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return min(vals) if vals else None


class _RayTasks:
    """What the task executors share: remote functions, per-attempt options, the payload."""

    streaming = False

    def __init__(self, placement: Optional[Placement] = None) -> None:
        self.placement = placement  # None: the strategy the cluster view chooses per attempt
        self.view = cluster_view()
        self.watch = pending_watch()

    def remote_function(self, task: Any) -> Any:
        """The task's remote function (one per task and process; kept on the original task)."""
        origin = task._origin or task
        key = ("remote", self.streaming)
        fn = memo_get(origin.memo, key)
        if fn is None:
            fn = memo_put(origin.memo, key, _make_remote(origin, self.streaming))
        return fn

    def bound(self, call: "Call", req: AttemptRequest) -> tuple[Any, dict]:
        """The remote function with this attempt's options (``.options()`` is not free)."""
        placement = self.placement or self.view.placement(
            call.settings.placement, req.market, req.queue or DEFAULT_QUEUE
        )
        key = (self.streaming, req.market, req.queue, placement.mode, *self.view.declares())
        hit = memo_get(call.spec.memo, key)
        if hit is None:
            opts = placement.options(dict(call.spec.ray_options), req.market, req.queue)
            # Ray's dashboard lists the attempt as "<fqn> #<attempt> (<market>)"
            opts.setdefault("name", f"{call.spec.fqn} #0 ({req.market})")
            fn = self.remote_function(call.task)
            bound = fn.options(num_returns="streaming", **opts) if self.streaming else fn.options(**opts)
            hit = memo_put(call.spec.memo, key, (bound, opts, fn))
        bound, opts, fn = hit
        if req.attempt:  # a retry (rare): its own name, one .options() call
            named = {**opts, "name": f"{call.spec.fqn} #{req.attempt} ({req.market})"}
            bound = fn.options(num_returns="streaming", **named) if self.streaming else fn.options(**named)
        return bound, opts

    @staticmethod
    def payload(call: "Call", req: AttemptRequest) -> tuple:
        ro = call.run_overrides
        args, kwargs, ref = call.args, call.kwargs, call.inputs_ref
        if ref is None:
            # Big inputs go to the object store once for all of the call's attempts; Ray would
            # otherwise serialise and store them again with every attempt's payload.
            ref = call.inputs_ref = ray.put((args, kwargs)) if at_least(BIG_INPUTS, args, kwargs) else False
        if ref is not False:
            args, kwargs = (), {}
        return payload_wire(
            AttemptPayload(
                VERSION,
                call.run_name,
                call.spec.fqn,
                call.call_id,
                req.attempt,
                req.user_attempt,
                req.system_failures,
                str(req.market),
                req.queue,
                pickled_once(call.settings),
                None if ro is None else pickled_once(ro),
                args,
                kwargs,
                ref or None,
            )
        )

    async def prime(self, port: Port) -> None:
        """The first call of a process asks the GCS for the cluster view: off the loop."""
        if not self.view.primed:
            await port.offload(self.view.refresh)

    async def unplaceable(self, call: "Call", req: AttemptRequest, opts: dict, port: Port) -> Optional[Outcome]:
        """None when a live node, or a node type the cluster can launch, could run the attempt;
        else its outcome: a spot attempt moves to on-demand at once, an on-demand one cannot run.
        A task with ``max_queued_time`` chose its own wait and is not judged here. The answer is
        kept on the spec until the cluster view changes (a few dict lookups per call)."""
        if req.max_queued_time is not None:
            return None
        if self.view.stale:
            await port.offload(self.view.refresh)
        # The placement mode follows from the view's version and the settings' override.
        key = ("placeable", req.market, req.queue, self.view.version, call.settings.placement)
        if memo_get(call.spec.memo, key):
            return None
        request = request_of(opts)
        # A spot attempt counts only nodes that take new work (a draining node does not: a notice
        # is pending there); an on-demand one counts every live node (a drained on-demand node is
        # no reason to fail: it comes back, or an autoscaler replaces it).
        spot = req.market == Market.SPOT
        missing = self.view.missing_cached(request, usable=spot)
        if missing:  # the view may be a few seconds old: look again (a node may have just joined)
            await port.offload(self.view.refresh)
            missing = self.view.missing_cached(request, usable=spot)
        key = ("placeable", req.market, req.queue, self.view.version, call.settings.placement)
        if not missing:
            memo_put(call.spec.memo, key, True)
            return None
        launch = next(((n, r) for n, r in call.settings.node_types if fits(request, r, declared_only=True)), None)
        if launch is not None:
            name, res = launch
            self.view.warn_once(
                f"launch:{call.spec.fqn}:{req.market}:{name}",
                f"{call.spec.fqn}: no live node offers {describe(missing)}; waiting for the autoscaler to launch a "
                + (f"node of type {name!r}" if res is not None else "node (flyte-ray cannot see its node types)"),
            )
            memo_put(call.spec.memo, key, True)
            return None
        if spot and req.spot_wait is None:  # init(spot_wait=None): wait for spot capacity for ever, as asked
            memo_put(call.spec.memo, key, True)
            return None
        if req.market == Market.SPOT:
            return _spot_unavailable(missing, 0.0, "no live or launchable node offers it")
        return Outcome(Kind.INFEASIBLE, missing=tuple(missing))

    async def wait_spot_result(self, req: AttemptRequest, spot_wait: float, ref: Any, opts: dict, port: Port) -> Any:
        """The result of a spot attempt with a spot wait (:func:`_spot_wait`): it checks, once the
        wait has passed and every :data:`SPOT_RECHECK_S` after that, whether any live node still
        offers it: when none does, it cannot be running, and it raises :class:`_SpotGone`.
        Raises WaitTimeout when the call's deadline passes."""
        t0 = time.monotonic()
        check_at = spot_wait
        while True:
            elapsed = time.monotonic() - t0
            left = None if req.deadline_left is None else req.deadline_left - elapsed
            if left is not None and left <= 0:
                raise WaitTimeout("deadline")
            try:
                return await port.get(ref, _limit(max(check_at - elapsed, 0.0), left))
            except WaitTimeout:
                elapsed = time.monotonic() - t0
                if req.deadline_left is not None and elapsed >= req.deadline_left:
                    raise
                if elapsed < check_at:
                    continue
                # by every live node, draining ones too: this attempt may be running on one
                missing = await port.offload(self.view.missing, request_of(opts))
                if missing:
                    raise _SpotGone(missing, elapsed) from None
                check_at = elapsed + SPOT_RECHECK_S

    async def failed(self, exc: BaseException, key: Any, req: AttemptRequest, port: Port) -> Outcome:
        """The outcome of an attempt that ended with Ray exception ``exc``: ``spot_unavailable``
        when the pending watch cancelled it because no live node offers its spot request any more."""
        gone = self.watch.take_gone(key)
        # the watch's cancel, not a node's death that raced it (that one is the attempt's real end)
        if gone is not None and isinstance(exc, rex.TaskCancelledError):
            return _spot_unavailable(gone.missing, gone.waited, "no live node offers it any more")
        out = await outcome_of(exc, req.market, port)
        if out.kind == Kind.SYSTEM:
            self.view.mark_stale()  # a node went away: the next placement check asks the GCS
        return out

    async def not_started(self, call: "Call", req: AttemptRequest, opts: dict, port: Port) -> Outcome:
        if req.deadline_left is not None and (req.max_queued_time is None or req.deadline_left < req.max_queued_time):
            return Outcome(
                Kind.TIMEOUT,
                error=TaskTimeoutError(
                    f"{call.spec.fqn}: deadline reached while attempt {req.attempt} waited to start"
                ),
            )
        missing = await port.offload(self.view.missing, request_of(opts))
        return Outcome(
            Kind.QUEUED_TIMEOUT, missing=tuple(missing) or ("(resources busy: every node that offers them is full)",)
        )


class TaskExecutor(_RayTasks):
    """One attempt as one Ray task (see the module docstring)."""

    async def run(self, call: "Call", req: AttemptRequest, port: Port) -> Outcome:
        await self.prime(port)
        bound, opts = self.bound(call, req)
        out = await self.unplaceable(call, req, opts, port)
        if out is not None:
            return out
        ref = bound.remote(self.payload(call, req))
        self.watch.add(ref, call.spec.fqn, req, opts, call.settings.node_types)
        spot_wait = _spot_wait(req)
        try:
            if spot_wait is None:  # the common case, awaited here: one coroutine frame less in flight
                res = await port.get(ref, req.deadline_left)
            else:
                res = await self.wait_spot_result(req, spot_wait, ref, opts, port)
        except _SpotGone as gone:
            ray.cancel(ref, force=True)
            return _spot_unavailable(gone.missing, gone.waited, f"spot_wait={req.spot_wait:g}s")
        except WaitTimeout:
            ray.cancel(ref, force=True, recursive=True)
            return Outcome(
                Kind.TIMEOUT, error=TaskTimeoutError(f"{call.spec.fqn}: deadline reached during attempt {req.attempt}")
            )
        except INTERRUPTS:
            ray.cancel(ref, recursive=True)
            raise
        except rex.RayError as e:
            return await self.failed(e, ref, req, port)
        finally:
            self.watch.discard(ref)
        return result_outcome(res)


class StreamingTaskExecutor(_RayTasks):
    """One attempt as a streaming Ray task: "started", then the result (see the module docstring)."""

    streaming = True

    async def run(self, call: "Call", req: AttemptRequest, port: Port) -> Outcome:
        await self.prime(port)
        bound, opts = self.bound(call, req)
        out = await self.unplaceable(call, req, opts, port)
        if out is not None:
            return out
        gen = bound.remote(self.payload(call, req))
        self.watch.add(gen, call.spec.fqn, req, opts, call.settings.node_types)
        # It reports when it starts: a spot attempt that has not started within its spot wait
        # moves to on-demand (max_queued_time, when set, decides instead).
        queued = req.max_queued_time if req.max_queued_time is not None else req.spot_wait
        t0 = time.monotonic()
        try:
            try:
                first = await port.next(gen, _limit(queued, req.deadline_left))
            except WaitTimeout:
                ray.cancel(gen, force=True)
                if (
                    req.max_queued_time is None
                    and req.spot_wait is not None
                    and not (req.deadline_left is not None and req.deadline_left <= req.spot_wait)
                ):
                    missing = await port.offload(self.view.missing, request_of(opts), True)
                    busy = ["(spot capacity busy: every spot node that offers it is full)"]
                    return _spot_unavailable(missing or busy, time.monotonic() - t0, f"spot_wait={req.spot_wait:g}s")
                return await self.not_started(call, req, opts, port)
            started = decode(Started, await port.get(first))
            self.watch.discard(gen)
            run_limit = _limit(
                req.max_runtime, None if req.deadline_left is None else req.deadline_left - (time.time() - started.at)
            )
            try:
                second = await port.next(gen, run_limit)
            except WaitTimeout:
                ray.cancel(gen, force=True, recursive=True)
                return Outcome(
                    Kind.TIMEOUT,
                    node_id=started.node,
                    started=started.at,
                    error=TaskTimeoutError(
                        f"{call.spec.fqn}: attempt {req.attempt} ran longer than {run_limit:.1f}s and was cancelled"
                    ),
                )
            return result_outcome(await port.get(second), started.at)
        except INTERRUPTS:
            ray.cancel(gen, recursive=True)
            raise
        except rex.RayError as e:
            return await self.failed(e, gen, req, port)
        except EndOfStream:
            # The streaming attempt ended before yielding its result: its worker went away.
            return Outcome(
                Kind.SYSTEM, error=rex.RaySystemError("attempt ended without a result"), system_reason="node_failure"
            )
        finally:
            self.watch.discard(gen)


class ClientTaskExecutor(_RayTasks):
    """Time limits under Ray client (see the module docstring)."""

    async def run(self, call: "Call", req: AttemptRequest, port: Port) -> Outcome:
        await self.prime(port)
        bound, opts = self.bound(call, req)
        out = await self.unplaceable(call, req, opts, port)
        if out is not None:
            return out
        t0 = time.monotonic()
        ref = bound.remote(self.payload(call, req))
        queued = req.max_queued_time if req.max_queued_time is not None else req.spot_wait
        try:
            if queued is not None:
                try:
                    return result_outcome(await port.get(ref, _limit(queued, req.deadline_left)))
                except WaitTimeout:
                    missing = await port.offload(self.view.missing, request_of(opts))
                    if missing or (req.deadline_left is not None and time.monotonic() - t0 >= req.deadline_left):
                        ray.cancel(ref, force=True)
                        if req.max_queued_time is None and missing:
                            return _spot_unavailable(missing, time.monotonic() - t0, f"spot_wait={queued:g}s")
                        return await self.not_started(call, req, opts, port)
            elapsed = time.monotonic() - t0
            left = _limit(
                None if req.max_runtime is None else req.max_runtime - elapsed,
                None if req.deadline_left is None else req.deadline_left - elapsed,
            )
            try:
                return result_outcome(await port.get(ref, None if left is None else max(left, 0.0)))
            except WaitTimeout:
                ray.cancel(ref, force=True, recursive=True)
                return Outcome(
                    Kind.TIMEOUT,
                    error=TaskTimeoutError(
                        f"{call.spec.fqn}: attempt {req.attempt} ran longer than {req.max_runtime}s and was cancelled"
                    ),
                )
        except INTERRUPTS:
            ray.cancel(ref, recursive=True)
            raise
        except rex.RayError as e:
            return await outcome_of(e, req.market, port)


def _make_remote(origin: Any, streaming: bool) -> Any:
    # The closure holds the *task*, which pickles by reference when importable (see
    # TaskTemplate.__reduce__), so Ray exports this function once and workers import the
    # user's module instead of unpickling its globals.
    if streaming:

        def attempt(payload: tuple) -> Any:
            yield from run_streaming_attempt(origin, payload)
    else:

        def attempt(payload: tuple) -> Any:
            # One argument: Ray serialises each argument separately, and three small ones cost
            # measurably more than one tuple on the hot path.
            return run_attempt(origin, payload)

    attempt.__name__ = attempt.__qualname__ = origin.name  # how Ray's dashboard names the task
    return ray.remote(max_retries=0, retry_exceptions=False)(attempt)
