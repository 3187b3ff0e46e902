"""Files, folders and tables that tasks pass to each other by reference: flyte-sdk's ``flyte.io``
(``File``, ``Dir``, ``DataFrame``), on the run's storage (``flyte_ray.init(storage=...)``).

A task returns a File and another one reads it::

    from flyte_ray.io import File

    @env.task
    def write() -> File:
        with open("/tmp/out.csv", "w") as f:
            f.write("a,b\\n1,2\\n")
        return File.from_local_sync("/tmp/out.csv")

    @env.task
    async def read(f: File) -> str:
        async with f.open("rb") as fh:
            return (await fh.read()).decode()

Rules:

* **Where bytes go.** New objects go under the run's storage: ``<storage>/runs/<run>/io/<random>/
  <name>`` inside a task, ``<storage>/io/<random>/<name>`` outside one (the driver). The storage
  is resolved at each use -- ``ctx().settings`` in a task, ``init``'s settings in the driver --
  so its options, which may hold credentials, are never part of an object or its repr. A path
  with the storage's protocol is accessed with the storage's options, any other with none.
* **Small, picklable values.** A File or Dir is path, name, format and cache key; a DataFrame is
  URI, format and cache key. No handle, no open file, no options: they cross Ray as task
  arguments and results at the cost of a few strings.
* **Async and sync.** Every operation that touches storage is written once, blocking, through
  :class:`~flyte_ray.storage.ObjectStore` (whose calls block, each under the storage's time
  limit); ``x()`` is its async form (``asyncio.to_thread``, which carries ``ctx()`` along) and
  ``x_sync()`` the blocking one, with flyte-sdk's names. ``File.open`` is an async context
  manager, ``File.open_sync`` a plain one.
* **Storage is untrusted input.** Listings are checked before a download writes anything, and a
  download never writes outside its target folder (:mod:`._dir`); DataFrames are parquet, never
  pickle (:mod:`._dataframe`). Bad arguments raise errors naming the argument and the accepted
  forms.

Differences from flyte-sdk: local storage is used like any other (``from_local`` copies into it
rather than referencing the local file); ``DataFrame.from_df``/``wrap_df`` write the parquet at
once (there is no type engine at the task boundary); ``hash_method`` takes a precomputed key
(str) only. Not provided: ``File.named_remote``, ``Dir.new_remote``, ``EmptyDir``,
``DataFrame.iter``, ``HashFunction``, type-engine hooks (``flyte.io.extend``), formats other
than parquet, ``compression=`` in ``File.open``.
"""

from ._dataframe import PARQUET, DataFrame
from ._dir import Dir
from ._file import AsyncFile, File

__all__ = ["PARQUET", "AsyncFile", "DataFrame", "Dir", "File"]
