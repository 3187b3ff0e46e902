"""Task output caching: ``Cache`` policies and the store behind them.

A cached call (``cache="auto"`` or ``Cache(...)`` at the environment, decorator, ``override``
level) first looks for a stored output under its *cache key*; a hit returns that output without
scheduling anything on Ray; a miss runs the call as usual and stores its output if it succeeded.
A hit costs the key computation and one GET (measured ~50 us on a local folder, against ~1.4 ms
for a bare ``ray.get(f.remote())``).

* :mod:`flyte_ray.cache_policy` -- ``Cache``, the policy (a value);
* :mod:`.keys` -- the canonical encoding of inputs, the default version, the key;
* :mod:`.store` -- stored objects and serialisation leases on the storage layer;
* :mod:`.flow` -- the cached call, start to end (the controller's cache step).

Stored outputs are pickles written by flyte-ray callers: whoever can write the cache prefix can
make a later hit run code in the reader. Give the storage the same trust as the cluster.
"""

from ..cache_policy import Cache, CacheBehavior, CacheRequest, as_cache
from .flow import cached_call
from .keys import cache_key, cache_url, cache_version, stable_hash
from .store import LEASE_TTL, MAGIC

__all__ = [
    "Cache",
    "CacheBehavior",
    "CacheRequest",
    "as_cache",
    "cache_version",
    "cache_key",
    "stable_hash",
    "cache_url",
    "cached_call",
    "LEASE_TTL",
    "MAGIC",
]
