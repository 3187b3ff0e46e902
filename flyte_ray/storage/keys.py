"""Turning names into storage keys, and storage URLs into their canonical form.

Rules:

* A user-supplied name (run name, task name, call id) becomes a key component through
  :func:`sanitize_component`, which is injective and can never produce a component that leaves
  the storage root (no ``/``, ``\\``, NUL, ``:``, ``.`` or ``..``; at most 120 characters).
* A ``/``-separated hierarchical name is split first and each part sanitised
  (:func:`sanitize_path`): ``/`` there means hierarchy, nothing else does.
* Already-safe components are joined with ``/`` under a root by :func:`join`; it does not
  sanitise (its inputs are trusted).
* Local paths and ``file://`` URLs are made absolute (Ray workers may run in another working
  directory); remote URLs are left as given.

Pure functions: no I/O besides reading the environment in :func:`load_env_options`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import fsspec.utils

__all__ = [
    "DEFAULT_STORAGE_DIR",
    "ENV_STORAGE",
    "ENV_STORAGE_OPTIONS",
    "is_local_url",
    "join",
    "load_env_options",
    "normalize_url",
    "sanitize_component",
    "sanitize_path",
]

#: Local fallback root when neither a URL nor ``FLYTE_RAY_STORAGE`` is given.
DEFAULT_STORAGE_DIR = "~/.flyte-ray/storage"
#: Environment variable naming the storage root URL.
ENV_STORAGE = "FLYTE_RAY_STORAGE"
#: Environment variable holding the fsspec storage options as a JSON object.
ENV_STORAGE_OPTIONS = "FLYTE_RAY_STORAGE_OPTIONS"

_SAFE_RE = re.compile(r"[A-Za-z0-9._-]+")
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
# Object keys may be 1024 bytes on S3 and file names 255 bytes on most local file systems.
_MAX_COMPONENT = 120


def sanitize_component(part: str) -> str:
    """Map one user-supplied name to a single, safe path component.

    Characters outside ``[A-Za-z0-9._-]`` are percent-encoded byte by byte (UTF-8, upper-case
    hex), ``.`` and ``..`` are encoded as ``%2E`` / ``%2E%2E``, and the empty string becomes
    ``%``. Because ``%`` itself is always encoded, the mapping is injective: distinct inputs give
    distinct components, and no output can contain ``/``, ``\\``, NUL, ``:`` or be ``..``.
    Components longer than 120 characters after encoding are cut and suffixed with ``%%`` and
    a 16-hex-digit SHA-256 of the input (``%%`` never occurs in an ordinary encoding).
    """
    if not isinstance(part, str):
        raise TypeError(f"storage key parts must be str, got {type(part).__name__}")
    if part == "":
        return "%"
    if part in (".", ".."):
        out = "%2E" * len(part)
    elif _SAFE_RE.fullmatch(part):
        out = part
    else:
        out = "".join(
            ch if ch in _SAFE_CHARS else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
            for ch in part
        )
    if len(out) > _MAX_COMPONENT:
        digest = hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        cut = out[: _MAX_COMPONENT - 18]
        # Do not leave half of a %XX escape at the end.
        tail = cut.rfind("%", len(cut) - 2)
        if tail != -1:
            cut = cut[:tail]
        out = cut + "%%" + digest
    return out


def sanitize_path(part: str) -> list[str]:
    """Split a ``/``-separated hierarchical name and sanitise every component."""
    if not isinstance(part, str):
        raise TypeError(f"storage key parts must be str, got {type(part).__name__}")
    return [sanitize_component(p) for p in part.split("/")]


def join(root: str, *components: str) -> str:
    """Join already-safe components under ``root`` (a URL, path or key) with ``/``."""
    base = root.rstrip("/")
    return "/".join([base, *components]) if components else base


def load_env_options() -> dict[str, Any]:
    """The JSON object in ``$FLYTE_RAY_STORAGE_OPTIONS``, or ``{}`` when it is unset or empty."""
    raw = os.environ.get(ENV_STORAGE_OPTIONS)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{ENV_STORAGE_OPTIONS} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        # A bad configuration value, not a bad argument: ValueError, as for invalid JSON.
        raise ValueError(f"{ENV_STORAGE_OPTIONS} must be a JSON object, got {type(value).__name__}")  # noqa: TRY004
    return value


def normalize_url(url: str | os.PathLike[str]) -> str:
    """Make local paths absolute (workers may run in another cwd); leave remote URLs alone.

    Trailing slashes are removed (the root ``/`` stays ``/``).
    """
    url = os.fspath(url)
    protocol = fsspec.utils.get_protocol(url)
    if protocol in ("file", "local"):
        path = url.split("://", 1)[1] if "://" in url else url
        url = os.path.abspath(os.path.expanduser(path))
    return url.rstrip("/") or "/"


def is_local_url(url: str) -> bool:
    """True for plain paths and ``file://`` URLs (storage other machines cannot see)."""
    return fsspec.utils.get_protocol(url) in ("file", "local")
