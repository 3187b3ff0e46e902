"""``Settings``: the flyte-ray settings of a driver (a value; set by ``flyte_ray.init``).

They travel with every attempt, so nested calls made on workers use the driver's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..checkpoint import Storage

__all__ = ["Settings", "DriverSettings", "PLACEMENT_MODES"]

#: how attempts are placed: chosen per cluster from what its nodes declare, or forced (see
#: :mod:`flyte_ray._ray.placement`)
PLACEMENT_MODES = ("auto", "markers", "labels")


@dataclass(frozen=True)
class Settings:
    """flyte-ray settings for a driver; travel with every attempt so nested calls use them too.

    Attributes:
        storage: where checkpoints (and cached outputs) live.
        system_retries: system failures (preemptions, node losses) a call may absorb; -1 = unlimited.
        interruptible_failure_threshold: after this many system failures an interruptible call's
            attempts run on on-demand capacity. ``None``: the last allowed system attempt runs on
            on-demand (with unlimited system retries: after 3).
        checkpoint_keep: complete checkpoints kept per call.
        supervisor: ``"auto"`` hosts the attempt loop of calls made from spot attempts in a
            supervising actor on on-demand capacity; ``"inline"`` always supervises in the caller.
        inline_under: with ``supervisor="auto"``, a call from a spot attempt whose task's recent
            runs all finished in under this many seconds is supervised in its caller instead of
            the actor (the actor's hop would cost more than re-running it if the caller is
            preempted; its result is still recorded with the actor for re-attachment).
            ``0`` sends every such call through the actor.
        supervisor_shards: the most supervising actors (shards) calls from spot attempts are spread
            over: a call goes to the shard of its parent (by run and parent call id), so a retried
            parent finds its children where they were; a shard's actor starts when the first call
            reaches it, so their number grows with the number of spot parents at work.
        spot_wait: seconds a spot attempt may wait for spot capacity before it moves to on-demand
            (recorded as ``spot_unavailable``); ``None`` waits for ever (an explicit choice). A
            task's ``Timeout(max_queued_time=...)`` wins when set.
        node_types: the node types the cluster can launch, as ``(name, resources)`` pairs (labels
            as ``key=value`` entries; from ``init(cluster_config=...)`` or found at ``init``, see
            :mod:`flyte_ray._ray.node_types`; ``resources`` None: a type of an autoscaler whose
            types flyte-ray cannot see, which may offer anything): an attempt no live node can
            run waits when one of them could, and fails at once (on-demand) or moves to
            on-demand (spot) when none can.
        placement: ``"auto"`` places attempts with custom-resource markers or with Ray node labels,
            whichever the cluster's nodes declare; ``"markers"`` / ``"labels"`` force one.
        record: which runs keep every attempt of every call in storage (``runs/<run>/events``:
            ``Run.history``'s tree, ``flyte-ray show``, the cost report): ``"runs"`` (runs started
            with ``flyte.run`` / ``with_runcontext(...).run``), ``"all"`` (also each plain
            ``task(x)`` call made outside a task: one run each) or ``"off"``.
    """

    storage: Storage = field(default_factory=Storage)
    system_retries: int = 3
    interruptible_failure_threshold: Optional[int] = None
    checkpoint_keep: int = 2
    supervisor: str = "auto"
    inline_under: float = 0.1
    supervisor_shards: int = 4
    spot_wait: Optional[float] = 300.0
    node_types: tuple = ()
    placement: str = "auto"
    record: str = "runs"

    @property
    def failure_threshold(self) -> int:
        if self.interruptible_failure_threshold is not None:
            return self.interruptible_failure_threshold
        return self.system_retries if self.system_retries >= 0 else 3


class DriverSettings:
    """The settings ``flyte_ray.init`` set in this process (a process part; None before ``init``)."""

    reset_order = 80

    def __init__(self) -> None:
        self.value: Optional[Settings] = None

    def reset(self) -> None:
        self.value = None
