"""Warm replicas for reusable environments (``ReusePolicy``).

A reusable environment's attempts run on a *pool* of long-lived Ray actors (replicas) instead of
one Ray task each, so module-level state and expensive initialisation survive between calls.

* :mod:`.replica` -- the replica actors (sync and async) and what they answer;
* :mod:`.manager` -- the pool manager actor: creates, scales, retires, replaces, tears down;
* :mod:`.client` -- the caller's side: which pool, which replica; introspection and cleanup;
* :mod:`.executor` -- one attempt on a warm replica (the controller's executor for reusable tasks).

Limits: a replica holds its CPUs for its lifetime, also while its task waits for child calls:
size pools so children still find room. Module-level state is per replica process: concurrent
async calls on one replica share it.

Public: :class:`ReusePolicy` (the value, from :mod:`flyte_ray.reuse_policy`), :func:`pool_stats`,
:func:`shutdown_pools`.
"""

from ..reuse_policy import ReusePolicy
from .client import POOL_PREFIX, REFRESH_S, pool_stats, shutdown_pools

__all__ = ["ReusePolicy", "pool_stats", "shutdown_pools", "POOL_PREFIX", "REFRESH_S"]
