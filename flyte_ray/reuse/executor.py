"""One attempt on a warm replica: pick a replica, make one actor call, say what happened.

Failures: a replica that dies (node preempted or lost, worker crash) fails its running calls with
a Ray actor error: the executor asks the manager whether it was retired on purpose (then it
re-picks) and otherwise reports the outcome the Ray layer observes (a *system* failure:
``preemption`` for spot or drained-for-preemption nodes), so the supervisor retries on another
replica without touching the user's retry budget. A pool that cannot be reached (its manager
died: it is re-created by name) for ``POOL_WAIT_S`` is a system failure too.

Timeouts: ``max_runtime`` (and the deadline) is measured from the call to the replica, so waiting
for a busy replica counts; ``max_queued_time`` is not enforced separately for warm replicas. An
async call that times out is cancelled on its replica; if it has not stopped
:data:`CANCEL_GRACE_S` later (user code that blocks the replica's loop cannot be cancelled), the
replica is killed and replaced, as a sync replica's is at once (a sync call cannot be
interrupted), so a timed-out call never keeps a replica busy.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

import ray
import ray.exceptions as rex

from .._core.records import AttemptRequest, Kind, Outcome
from .._ray.executors import pickled_once, result_outcome
from .._ray.observe import outcome_of
from .._ray.placement import cluster_view
from .._ray.port import INTERRUPTS, Port, WaitTimeout
from .._ray.wire import (
    VERSION,
    Declined,
    WarmCall,
    WarmStatic,
    WarmValue,
    args_msgpack_safe,
    decode,
    encode,
    msgpack_safe,
)
from ..errors import RuntimeSystemError, TaskTimeoutError
from .client import PoolUnavailable, Slot, route

if TYPE_CHECKING:
    from .._core.call import Call

__all__ = ["ReplicaExecutor", "MAX_REPICKS"]

MAX_REPICKS = 50  # declined picks before an attempt gives up (a system failure)
CANCEL_GRACE_S = 2.0  # how long a cancelled async call may take to stop before its replica is replaced


def _limit(req: AttemptRequest) -> Optional[float]:
    a, b = req.max_runtime, req.deadline_left
    if a is None:
        return None if b is None else max(b, 0.0)
    return max(a if b is None else min(a, b), 0.0)


def _unavailable(e: BaseException) -> Outcome:
    return Outcome(
        Kind.SYSTEM, error=RuntimeSystemError("ReplicaPoolUnavailable", str(e)), system_reason="node_failure"
    )


def _payload(call: "Call", req: AttemptRequest, digest: bytes) -> list:
    """The call in the warm wire format (a list: see flyte_ray._ray.wire)."""
    ro = call.run_overrides
    args, kwargs = call.args, call.kwargs
    wire_args: object = list(args) if args_msgpack_safe(args) else args  # else pickled whole, types intact
    wire_kwargs: object = kwargs if not kwargs or msgpack_safe(kwargs) else (kwargs,)
    return encode(
        WarmCall(
            VERSION,
            digest,
            None if ro is None else pickled_once(ro),
            call.run_name,
            call.call_id,
            req.attempt,
            req.user_attempt,
            req.system_failures,
            wire_args,
            wire_kwargs,
        )
    )


def _with_static(payload: list, static: WarmStatic) -> list:
    p = payload.copy()
    p[WarmCall._fields.index("static")] = encode(static)
    return p


async def _stops_when_cancelled(ref: object, port: Port) -> bool:
    """Cancel a call on an async replica; True when it ended within :data:`CANCEL_GRACE_S`."""
    ray.cancel(ref)
    try:
        await port.get(ref, CANCEL_GRACE_S)
    except WaitTimeout:
        return False
    except Exception:  # noqa: BLE001 - TaskCancelledError: it stopped
        return True
    return True  # it finished meanwhile


def _for_slot(payload: list, static: WarmStatic, slot: Slot) -> list:
    """``payload`` as ``slot`` needs it: with the static part in full the first time."""
    if static.digest in slot.known:
        return payload
    slot.known.add(static.digest)  # optimistic: a replica that still lacks it declines
    return _with_static(payload, static)


class ReplicaExecutor:
    """Runs attempts of reusable tasks on their pool's warm replicas."""

    def __init__(self) -> None:
        self.view = cluster_view()

    async def run(self, call: "Call", req: AttemptRequest, port: Port) -> Outcome:
        try:
            client, static = route(call, req, self.view)
        except Exception as e:  # noqa: BLE001
            return _unavailable(e)
        payload = _payload(call, req, static.digest)
        limit = _limit(req)
        t0 = time.monotonic()
        async_replica = client.kind == "async"
        again: Optional[Slot] = None  # the replica to send the call to again, with the static part in full
        for _ in range(MAX_REPICKS):
            if again is None:
                try:
                    slot = client.ready_slot() or await client.pick(port)
                except PoolUnavailable as e:
                    return _unavailable(e)
                wire = _for_slot(payload, static, slot)
            else:
                slot, again = again, None
                wire = _with_static(payload, static)
            ref = slot.run.remote(wire)
            slot.inflight += 1
            try:
                res = await port.get(ref, None if limit is None else max(limit - (time.monotonic() - t0), 0.0))
            except WaitTimeout:
                if not (async_replica and await _stops_when_cancelled(ref, port)):
                    # a sync call cannot be interrupted, an async one ignored the cancel: the
                    # replica is killed and replaced
                    try:
                        ray.kill(slot.handle, no_restart=True)
                    except Exception:  # noqa: BLE001
                        pass
                    await client.report_lost(slot, port)
                return self._timeout(call, req, limit)
            except INTERRUPTS:
                if async_replica:
                    ray.cancel(ref)
                raise
            except rex.RayActorError as e:
                if await client.report_lost(slot, port) == "retired":
                    continue
                return await outcome_of(e, req.market, port)
            except rex.RayError as e:
                return await outcome_of(e, req.market, port)
            finally:
                slot.inflight -= 1
            if res.__class__ is list:
                v = decode(WarmValue, res)
                return Outcome(Kind.OK, value=v.value, node_id=v.node, runtime=v.runtime)
            if res.__class__ is Declined:
                if res.reason == "need_static":
                    again = slot  # the same replica, with the static part in full
                else:
                    client.forget(slot)  # retiring: pick another
                continue
            return result_outcome(res)
        return _unavailable(PoolUnavailable(f"pool {client.name}: no replica accepted the call"))

    @staticmethod
    def _timeout(call: "Call", req: AttemptRequest, limit: Optional[float]) -> Outcome:
        if req.max_runtime is not None and limit is not None and limit >= req.max_runtime - 1e-9:
            msg = f"{call.spec.fqn}: attempt {req.attempt} ran longer than {limit:.1f}s and was cancelled"
        else:
            msg = f"{call.spec.fqn}: deadline reached during attempt {req.attempt}"
        return Outcome(Kind.TIMEOUT, error=TaskTimeoutError(msg))
