"""From what was observed when an attempt ended without a result, to an outcome kind.

The Ray layer (:mod:`flyte_ray._ray.observe`) turns a Ray exception into an :class:`Observation`
(facts: what Ray reported, on which node, the attempt's market) and, when these do not decide the
case, looks the node up (:class:`NodeFacts`). :func:`classify` is the rule, with no Ray in it:

* Ray's memory monitor killed the worker → ``oom`` (a user failure: ``OOMError``);
* the caller cancelled → ``cancelled``;
* user code raised where Ray saw it (outside flyte-ray's wrapper) → ``user``; a task module that
  cannot be imported on the worker → ``user`` with a ``NonRecoverableError`` saying how to ship
  the code (every retry would fail the same way);
* the worker process died while the user's code ran (a segfault, ``os._exit``, a kill) and its
  node did not (and was not being drained for preemption) → ``crash``, a *user* failure
  (``worker_crash`` in the history): Ray reports a lost node as ``NodeDiedError`` (or an actor
  whose *node* died), never as a crashed worker, so a crashed worker is the task's own doing,
  and retrying it on the system budget (without backoff, without end under
  ``system_retries=-1``) would hide a crash loop;
* anything else is the platform failing → ``system``, recorded as ``preemption`` when an actor's
  node was drained for preemption, when the attempt ran on spot on a cluster with markets, when
  the node declares ``spot``, or when the node died drained for preemption
  (``DeathReason`` 3, ``AUTOSCALER_DRAIN_PREEMPTED``, which Ray records only when the node dies
  *after* the drain's deadline — so also when the supervisor itself saw the node draining before
  it died: a notice, on spot or on-demand); else ``node_failure``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import NonRecoverableError, OOMError, RuntimeUserError
from .records import Kind, Market, Outcome, _StrEnum

__all__ = ["Seen", "Observation", "NodeFacts", "needs_node_facts", "classify", "DRAIN_PREEMPTED"]

DRAIN_PREEMPTED = 3  # ray.nodes() DeathReason: AUTOSCALER_DRAIN_PREEMPTED


class Seen(_StrEnum):
    """What Ray reported when the attempt ended."""

    OOM_KILLED = "oom_killed"
    CANCELLED = "cancelled"
    USER_RAISED = "user_raised"  # a RayTaskError carrying the user's exception
    IMPORT_FAILED = "import_failed"  # the task's module failed to import on the worker
    WORKER_DIED = "worker_died"  # the worker process died (a task's worker, or a replica actor's)
    ACTOR_DIED = "actor_died"  # an actor died with its node, or for a reason Ray did not say
    LOST = "lost"  # node died, object lost, raylet died, other platform errors


@dataclass(frozen=True)
class Observation:
    """Facts about an attempt that ended without a result."""

    seen: Seen
    error: BaseException  # what to report as the attempt's error
    market: Market  # where the attempt was placed
    node_id: str = ""  # the node named by the error, when it names one
    preempted: bool = False  # ActorDiedError.preempted: the actor's node was drained for preemption
    cluster_has_markets: bool = False  # some node declares spot / ondemand
    message: str = ""  # Ray's message (OOM, import failure), first line used
    traceback: str = ""


@dataclass(frozen=True)
class NodeFacts:
    """What the cluster says about a node, looked up after a failure."""

    found: bool = False
    spot: bool = False  # declares the spot market
    alive: bool = True
    death_reason: Optional[int] = None
    drained: bool = False  # the supervisor saw the node draining (a preemption notice) before it died


def needs_node_facts(obs: Observation) -> bool:
    """True when :func:`classify` needs the node looked up (a failure not decided by the
    observation itself). The lookup may take a moment (a lost node is marked dead late)."""
    if obs.seen is Seen.WORKER_DIED:
        return bool(obs.node_id)
    if obs.seen is not Seen.LOST and obs.seen is not Seen.ACTOR_DIED:
        return False
    if obs.seen is Seen.ACTOR_DIED and obs.preempted:
        return False
    if obs.market == Market.SPOT and obs.cluster_has_markets:
        return False
    return bool(obs.node_id)


def classify(obs: Observation, node: Optional[NodeFacts] = None) -> Outcome:
    """The outcome of an attempt that ended as ``obs`` says (``node``: facts about its node)."""
    seen = obs.seen
    if seen is Seen.OOM_KILLED:
        first = obs.message.strip().splitlines()[0] if obs.message.strip() else "out of memory"
        return Outcome(Kind.OOM, error=OOMError(first))
    if seen is Seen.CANCELLED:
        return Outcome(Kind.CANCELLED, error=obs.error)
    if seen is Seen.IMPORT_FAILED:
        return Outcome(
            Kind.USER,
            traceback=obs.traceback,
            error=NonRecoverableError(
                "the task's code cannot be imported on the Ray worker. Tasks travel by reference to their module: "
                "make it importable on every node (install it, run the driver from the folder that holds it, or "
                "ship it with flyte_ray.init(runtime_env={'working_dir': ...} or {'py_modules': [...]})). "
                f"Ray said: {obs.message[:500]}"
            ),
        )
    if seen is Seen.USER_RAISED:
        return Outcome(Kind.USER, error=obs.error, traceback=obs.traceback)
    if seen is Seen.WORKER_DIED and not (node is not None and (node.drained or (node.found and not node.alive))):
        first = str(obs.error).strip().splitlines()[0] if str(obs.error).strip() else type(obs.error).__name__
        return Outcome(
            Kind.CRASH,
            node_id=obs.node_id,
            error=RuntimeUserError(
                "WorkerCrash",
                "the worker process died while the task ran, and its node did not (a crash: a "
                f"segfault, os._exit, a kill by a signal). Ray said: {first}",
            ),
        )
    return Outcome(Kind.SYSTEM, error=obs.error, node_id=obs.node_id, system_reason=_system_reason(obs, node))


def _system_reason(obs: Observation, node: Optional[NodeFacts]) -> str:
    if obs.seen is Seen.ACTOR_DIED and obs.preempted:
        return "preemption"
    if obs.market == Market.SPOT and obs.cluster_has_markets:
        return "preemption"
    if node is None:
        return "node_failure"
    if node.drained:
        return "preemption"
    if not node.found:
        return "node_failure"
    if node.spot:
        return "preemption"
    if not node.alive and node.death_reason == DRAIN_PREEMPTED:
        return "preemption"
    return "node_failure"
