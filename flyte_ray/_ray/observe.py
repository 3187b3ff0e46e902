"""Turning what Ray raised into the facts the core classifies (:mod:`flyte_ray._core.classify`).

:func:`observe` maps a Ray exception to an :class:`~flyte_ray._core.classify.Observation` (cheap,
no I/O). When that does not decide the case, :func:`node_facts` looks the node up in the GCS,
polling for up to :data:`NODE_WAIT_S` because a removed node is marked dead (with its death
reason) a moment after its tasks fail, and a hard-killed one only ~12 s later. That lookup blocks,
so :func:`outcome_of` runs it through the port's ``offload``: never on an event loop thread.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import ray
import ray.exceptions as rex

from .._core.classify import NodeFacts, Observation, Seen, classify, needs_node_facts
from .._core.records import Market, Outcome
from .drains import drain_monitor
from .placement import SPOT, cluster_view, node_market

if TYPE_CHECKING:
    from .port import Port

__all__ = ["observe", "node_facts", "outcome_of", "NODE_WAIT_S"]

NODE_WAIT_S = 2.0
_NODE_RE = re.compile(r"node ID:?\s*([0-9a-f]{16,})", re.I)
# How Ray 2.60's ActorDiedError says why the actor died (measured: a segfault / os._exit in an
# actor method gives the first; a removed node the second).
_WORKER_DIED = "its worker process has died"
_NODE_DIED = "its node has died"


def observe(exc: BaseException, market: Market) -> Observation:
    """The facts of an attempt that ended with Ray exception ``exc``."""
    if isinstance(exc, rex.OutOfMemoryError):
        return Observation(Seen.OOM_KILLED, exc, market, message=str(exc))
    if isinstance(exc, rex.TaskCancelledError):
        return Observation(Seen.CANCELLED, exc, market)
    if isinstance(exc, rex.RayTaskError):  # user code raised outside flyte-ray's wrapper (rare)
        cause = getattr(exc, "cause", None) or exc
        if "failed to import on the worker" in str(cause):
            return Observation(Seen.IMPORT_FAILED, cause, market, message=str(cause), traceback=str(exc))
        return Observation(Seen.USER_RAISED, cause, market, traceback=str(exc))
    text = str(exc)
    m = _NODE_RE.search(text)
    has_markets = market == Market.SPOT and cluster_view().has_markets()
    if isinstance(exc, rex.WorkerCrashedError) or (
        isinstance(exc, rex.ActorDiedError) and _WORKER_DIED in text and _NODE_DIED not in text
    ):
        # The worker process died; a lost node is reported otherwise (NodeDiedError, or an actor
        # whose node died): see flyte_ray._core.classify.
        return Observation(
            Seen.WORKER_DIED, exc, market, node_id=m.group(1) if m else "", cluster_has_markets=has_markets
        )
    if isinstance(exc, rex.ActorDiedError):
        return Observation(
            Seen.ACTOR_DIED,
            exc,
            market,
            node_id=m.group(1) if m else "",
            preempted=bool(getattr(exc, "preempted", False)),
            cluster_has_markets=has_markets,
        )
    return Observation(Seen.LOST, exc, market, node_id=m.group(1) if m else "", cluster_has_markets=has_markets)


def node_facts(node_id: str, wait: float = NODE_WAIT_S) -> NodeFacts:
    """What the GCS says about ``node_id``: found, spot (by marker or market label), alive, death
    reason (blocking; polls until the node is marked dead or declares spot, for up to ``wait``
    seconds)."""
    deadline = time.monotonic() + wait
    drained = drain_monitor().notice_for(node_id) is not None
    last = NodeFacts(drained=drained)
    while True:
        try:
            info = next((n for n in ray.nodes() if n.get("NodeID") == node_id), None)
        except Exception:  # noqa: BLE001 - the GCS is unreachable: what we know so far
            return last
        if info is not None:
            last = NodeFacts(
                found=True,
                spot=SPOT in node_market(info.get("Resources") or {}, info.get("Labels") or {}),
                alive=bool(info.get("Alive")),
                death_reason=info.get("DeathReason"),
                drained=drained,
            )
            if last.spot or not last.alive:
                return last
        if time.monotonic() > deadline:
            return last
        time.sleep(0.1)


async def outcome_of(exc: BaseException, market: Market, port: "Port") -> Outcome:
    """The outcome of an attempt that ended with Ray exception ``exc``."""
    obs = observe(exc, market)
    facts = await port.offload(node_facts, obs.node_id) if needs_node_facts(obs) else None
    out = classify(obs, facts)
    if out.node_id:
        out.notice = drain_monitor().notice_for(out.node_id)
    return out
