"""The cache's key: where it comes from, and the HMAC that authenticates stored outputs.

Stored outputs are pickles, and unpickling runs code. The cache therefore unpickles only bytes
that carry a valid HMAC-SHA256 made with a key that never lives in the storage (see the trust
boundary in :mod:`flyte_ray.cache`). Where the key comes from, first match wins:

1. ``$FLYTE_RAY_CACHE_KEY``: hex or any string (its hex bytes, or its UTF-8 text, hashed to 32
   bytes). Every process that reads or writes the cache needs the same value: the driver and
   every Ray worker (``flyte_ray.init(runtime_env={"env_vars": {"FLYTE_RAY_CACHE_KEY": ...}})``,
   or the cluster's environment).
2. A local folder as storage (only this machine can use it): the key file
   ``~/.flyte-ray/cache.key``, created on first use with 32 random bytes (hex), mode 0600, in a
   0700 folder, atomically (concurrent first uses agree on one file). A key file that is not
   the user's own or that others may read or write is refused. Its content set as
   ``$FLYTE_RAY_CACHE_KEY`` gives the same key.
3. ``memory://`` (one process): a random key made once per process.
4. Any other storage (shared: S3, GCS, ...) without ``$FLYTE_RAY_CACHE_KEY``: no key. The cache
   then neither reads nor writes (calls run uncached), with one warning per process saying how
   to set the key; a user's call never fails for it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import threading
from typing import Any, Optional

__all__ = ["ENV_CACHE_KEY", "KEY_FILE", "TAG_SIZE", "derive", "key_file_secret", "secret_for", "sign", "verify"]

logger = logging.getLogger("flyte_ray")

#: Environment variable holding the cache key (hex or any string).
ENV_CACHE_KEY = "FLYTE_RAY_CACHE_KEY"
#: The key file used with a local-folder storage when the variable is unset.
KEY_FILE = "~/.flyte-ray/cache.key"
#: Bytes of an HMAC-SHA256 tag.
TAG_SIZE = 32

_DOMAIN = b"flyte-ray cache key\x00"
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_lock = threading.Lock()  # creating the key file
_warn_lock = threading.Lock()
_derived: dict[str, bytes] = {}
_files: dict[str, bytes] = {}
_process_key = secrets.token_bytes(32)
_warned: set[str] = set()


def derive(material: str) -> bytes:
    """The 32-byte key for ``material`` (hex digits decode to their bytes; other text counts as
    UTF-8), hashed with a domain prefix."""
    text = material.strip()
    data = bytes.fromhex(text) if _HEX.fullmatch(text) else text.encode("utf-8", "surrogatepass")
    return hashlib.sha256(_DOMAIN + data).digest()


def secret_for(store: Any, warn: bool = True) -> Optional[bytes]:
    """The key for cache entries on ``store`` (an ObjectStore; None: a local folder), or None
    when there is none (the module docstring's order; warns once per process unless ``warn`` is
    False: a caller with its own message)."""
    env = os.environ.get(ENV_CACHE_KEY, "")
    if env.strip():
        key = _derived.get(env)
        if key is None:
            key = _derived[env] = derive(env)
        return key
    if store is None or store.is_local:
        return key_file_secret()
    if not store.is_remote:  # memory://: nobody outside this process sees it
        return _process_key
    if not warn:
        return None
    _warn_once(
        "shared",
        "flyte-ray cache: not reading or writing cached outputs under %s: a shared storage needs a cache "
        "key, which was not set. Set %s to the same secret (e.g. the output of `openssl rand -hex 32`) on the "
        "driver and on every worker -- flyte_ray.init(runtime_env={'env_vars': {'%s': ...}}) or the cluster's "
        "environment; until then cached calls run uncached.",
        store.url,
        ENV_CACHE_KEY,
        ENV_CACHE_KEY,
    )
    return None


def key_file_secret(path: Optional[str] = None) -> Optional[bytes]:
    """The key from the key file (created when absent), or None when it cannot be used."""
    path = os.path.expanduser(path or KEY_FILE)
    key = _files.get(path)
    if key is not None:
        return key
    with _lock:
        key = _files.get(path)
        if key is None:
            try:
                key = _read_or_create(path)
            except OSError as e:
                _warn_once(path, "flyte-ray cache: cannot use the key file %s (%s); cached calls run uncached", path, e)
                return None
            if key is not None:
                _files[path] = key
    return key


def _read_or_create(path: str) -> Optional[bytes]:
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # appears whole; a concurrent first use keeps the one that won
        except FileExistsError:
            pass
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return _read(path)


def _read(path: str) -> Optional[bytes]:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
        if not mine or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            _warn_once(
                path,
                "flyte-ray cache: refusing the key file %s: it must be yours and private "
                "(chmod 600 %s); cached calls run uncached",
                path,
                path,
            )
            return None
        text = f.read().strip()
    if not text:
        _warn_once(path, "flyte-ray cache: the key file %s is empty; cached calls run uncached", path)
        return None
    return derive(text)


def _warn_once(what: str, msg: str, *args: Any) -> None:
    with _warn_lock:
        if what in _warned:
            return
        _warned.add(what)
    logger.warning(msg, *args)


def sign(secret: bytes, data: "bytes | memoryview") -> bytes:
    """HMAC-SHA256 of ``data`` under ``secret``."""
    return hmac.digest(secret, data, "sha256")


def verify(secret: bytes, tag: bytes, data: "bytes | memoryview") -> bool:
    """True when ``tag`` is the HMAC of ``data``, compared in constant time."""
    return hmac.compare_digest(hmac.digest(secret, data, "sha256"), tag)
