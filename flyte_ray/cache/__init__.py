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

* :mod:`.auth` -- the cache key and the HMAC that authenticates stored outputs.

Trust boundary
--------------
Stored outputs are pickles, and unpickling runs code. The storage is **not** trusted: anyone who
can write the cache prefix (a shared bucket, a misconfigured ACL) could otherwise make a later hit
run their code in the reader. So every stored output carries an HMAC-SHA256 tag made with the
*cache key*, a secret kept outside the storage (:mod:`.auth`: ``$FLYTE_RAY_CACHE_KEY``, or for a
local folder the private key file ``~/.flyte-ray/cache.key``). A lookup checks the tag before it
parses or unpickles anything; an object without a valid tag -- planted, altered, written with
another key, or in the old format 1 -- is a miss with a warning, and the call runs and stores a
good entry over it. An entry copied to another key's place is a miss too (the tagged header names
its fqn, version and key).

What is trusted: whoever holds the cache key -- every process that has it can write entries that
others will unpickle -- and the Python environment that unpickles them. Give the key the same
trust as the cluster. What is *not* protected: a storage writer can still delete entries or make
every lookup miss (the calls then run), and can hold or alter lease objects (``serialize=True``),
which at worst makes calls run more than once or waiters give up early with an error.

The key must be the same on the driver and on every Ray worker: workers read
``$FLYTE_RAY_CACHE_KEY`` from their own environment, so set it before the cluster starts or pass
it with ``flyte_ray.init(runtime_env={"env_vars": {"FLYTE_RAY_CACHE_KEY": ...}})`` (a local
folder needs nothing: every process of the machine reads the same key file). For a shared storage
without the variable the cache neither reads nor writes -- calls run uncached, with one warning
per process -- rather than trusting the storage.
"""

from ..cache_policy import Cache, CacheBehavior, CachePolicy, CacheRequest, VersionParameters, as_cache
from .auth import ENV_CACHE_KEY
from .flow import cached_call
from .keys import FunctionBodyPolicy, cache_key, cache_url, cache_version, stable_hash
from .store import LEASE_TTL, MAGIC, MAX_FAILURES, CacheRunFailed

__all__ = [
    "Cache",
    "CacheBehavior",
    "CachePolicy",
    "CacheRequest",
    "FunctionBodyPolicy",
    "VersionParameters",
    "as_cache",
    "cache_version",
    "cache_key",
    "stable_hash",
    "cache_url",
    "cached_call",
    "LEASE_TTL",
    "MAGIC",
    "ENV_CACHE_KEY",
    "MAX_FAILURES",
    "CacheRunFailed",
]
