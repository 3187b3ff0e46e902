"""flyte-ray's storage layer: where durable data lives and how objects are read and written.

Used by checkpoints (:mod:`flyte_ray.checkpoint`) and the task-output cache; it imports neither,
nor Ray, nor anything else from flyte_ray: everything above builds on it, nothing here reaches up.

* :class:`Storage` (:mod:`.location`) -- the root URL plus fsspec options, env defaults
  (``FLYTE_RAY_STORAGE``, ``FLYTE_RAY_STORAGE_OPTIONS``), and keys built from user-supplied names
  that can never leave the root (:func:`sanitize_component`, :mod:`.keys`).
* :class:`ObjectStore` (:mod:`.objects`) -- get, atomic put, create-if-absent, list, delete, file
  transfers and streaming uploads under one root, with optional time limits and the measured S3
  fast paths (:mod:`._s3`). Its module docstring states the rules: atomicity per backend, what is
  trusted, and the S3 requests behind each operation. :mod:`.values` holds what it hands out
  (:class:`Entry`, :class:`Writer`, :class:`StorageTimeoutError`).
* :mod:`.limits` -- time limits: the store-wide default per operation
  (``FLYTE_RAY_STORAGE_TIMEOUT``), the storage clients' timeouts and retry bounds, errors that
  name the URL but never credentials. :mod:`._uploads` -- multipart uploads are never left
  behind on S3 (aborted on failure; stale ones swept by a later writer).
"""

from .keys import DEFAULT_STORAGE_DIR, ENV_STORAGE, ENV_STORAGE_OPTIONS, sanitize_component
from .limits import ENV_STORAGE_TIMEOUT
from .location import Storage
from .objects import ObjectStore
from .values import Entry, StorageTimeoutError, Writer

__all__ = [
    "DEFAULT_STORAGE_DIR",
    "ENV_STORAGE",
    "ENV_STORAGE_OPTIONS",
    "ENV_STORAGE_TIMEOUT",
    "Entry",
    "ObjectStore",
    "Storage",
    "StorageTimeoutError",
    "Writer",
    "sanitize_component",
]
