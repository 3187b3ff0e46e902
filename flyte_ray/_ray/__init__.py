"""The Ray layer: everything that talks to Ray on the call path.

* :mod:`.port` -- how the one ``async`` implementation waits (event loop or blocking caller);
* :mod:`.waiting` -- waits inside workers that release the worker's CPU; the per-loop collector
  that waits on awaited refs in bulk;
* :mod:`.placement` -- markets and queues as Ray resources or node labels, the cached cluster view;
* :mod:`.executors` -- one attempt as a Ray task (plain, streaming, Ray client);
* :mod:`.worker` -- the worker side of an attempt (user code under its task context);
* :mod:`.observe` -- Ray exceptions and node facts into the core's observations;
* :mod:`.watchdog` -- a word when an attempt waits long for resources no node offers;
* :mod:`.wire` -- every record that crosses a process boundary, named and versioned.

The warm-replica executor lives with the replica machinery (:mod:`flyte_ray.reuse`).
"""
