"""The checkpoint layout: version ids, object keys and commit markers (pure: no I/O).

Under a checkpoint prefix (keys relative to it)::

    <version>/data/<payload or directory tree>
    <version>/_COMPLETE        <- JSON commit marker, written LAST
    <version>.<file name>      <- atomic-write backends (S3) only: a single blob saved without
                                  metadata, one object that is its own commit point

Rules:

* ``<version>`` is ``<time_ns, 20 digits>-<8 random hex digits>``: string order is age order,
  so "newest" is the largest id, and the random part makes ids unique without reading the store.
* A marker is a JSON object whose ``version`` is its folder's id and whose ``kind`` is
  ``"bytes"`` or ``"dir"``; an absent marker means the version is incomplete. It records the
  payload's size and file count, which readers verify.
* Markers are untrusted input (anyone who can write the storage can write one):
  :func:`check_marker` validates every field -- ``format`` the current one, ``version`` the
  folder's id, ``kind`` ``"bytes"`` or ``"dir"``, ``name`` one safe file name
  (:func:`is_safe_name`) for ``bytes`` and absent or null for ``dir``, ``size`` and ``files``
  non-negative integers (not booleans; ``files`` is 1 for ``bytes``), ``created`` a finite
  number, ``metadata`` any JSON value -- and readers use only the fields it returns. A marker
  that fails (truncated, another version's, a ``name`` with ``/`` or ``..``) is never followed:
  the version counts as incomplete.
* A single-object version's marker is derived from its listing entry (name and size from the
  key and the listing, ``created`` from the id, ``metadata`` None): it is never stored.
* File names taken from the user (a saved file's name) are used only when
  :func:`is_safe_name`; otherwise the blob is stored as ``payload``. A safe name is one path
  component of at most :data:`MAX_NAME_BYTES` bytes, short enough for the temporary name a
  restore fetches it under (``.<name>.<8 hex>.partial``) to fit a 255-byte file name.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from typing import Any

MARKER_NAME = "_COMPLETE"
DATA_DIR = "data"
DEFAULT_BLOB_NAME = "payload"
MARKER_FORMAT = 2
# 8 MiB: large enough to keep object-store request counts low, small enough to bound memory.
CHUNK_SIZE = 8 * 2**20
# Version ids: ``<time_ns, 20 digits>-<8 random hex digits>``; string order is age order.
NS_DIGITS = 20
VID_RE = re.compile(r"\d{20}-[0-9a-f]{8}")
# A single-object version: ``<version>.<file name>`` directly under the prefix.
OBJ_RE = re.compile(r"(\d{20}-[0-9a-f]{8})\.(.+)")
#: Longest safe file name, in UTF-8 bytes: a restore's temporary ``.<name>.<8 hex>.partial``
#: (18 bytes more) must still fit the 255-byte limit of common local file systems.
MAX_NAME_BYTES = 237
KINDS = ("bytes", "dir")


def new_vid(known_max: str | None) -> str:
    """A fresh version id: newer than ``known_max`` (the highest id seen), unique without a read."""
    ns = time.time_ns()
    if known_max is not None:
        ns = max(ns, int(known_max[:NS_DIGITS]) + 1)
    return f"{ns:0{NS_DIGITS}d}-{secrets.token_hex(4)}"


def is_safe_name(name: Any) -> bool:
    """True for a name usable as one file name in a version (and as a restored file's name):
    one component, valid UTF-8, at most :data:`MAX_NAME_BYTES` bytes."""
    if not isinstance(name, str) or name in ("", ".", "..", MARKER_NAME):
        return False
    if "/" in name or "\\" in name or "\x00" in name:
        return False
    try:
        return len(name.encode("utf-8")) <= MAX_NAME_BYTES
    except UnicodeEncodeError:  # a lone surrogate: no file or object can be named that
        return False


def marker_key(vid: str) -> str:
    return f"{vid}/{MARKER_NAME}"


def blob_key(vid: str, name: str, single: bool) -> str:
    """Where a single blob of version ``vid`` goes: ``<vid>.<name>`` for a single-object
    version, ``<vid>/data/<name>`` in a version folder."""
    return f"{vid}.{name}" if single else f"{vid}/{DATA_DIR}/{name}"


def data_key(m: dict[str, Any]) -> str:
    """The payload of version ``m``: the blob, or the folder of a directory checkpoint."""
    if m.get("layout") == "object":
        return blob_key(m["version"], m["name"], True)
    data = f"{m['version']}/{DATA_DIR}"
    return f"{data}/{m['name']}" if m["kind"] == "bytes" else data


def object_marker(url: str, vid: str, name: str, size: int) -> dict[str, Any]:
    """The marker of a single-object version under prefix ``url``, made from its listing entry."""
    return {
        "format": MARKER_FORMAT,
        "version": vid,
        "kind": "bytes",
        "name": name,
        "size": size,
        "files": 1,
        "created": int(vid[:NS_DIGITS]) / 1e9,
        "metadata": None,
        "layout": "object",
        "url": f"{url}/{vid}.{name}",
    }


def folder_marker(vid: str, kind: str, name: str | None, size: int, files: int, metadata: Any) -> dict[str, Any]:
    """The marker stored as ``<vid>/_COMPLETE`` (see :func:`with_location` for what readers add)."""
    return {
        "format": MARKER_FORMAT,
        "version": vid,
        "kind": kind,
        "name": name,
        "size": size,
        "files": files,
        "created": time.time(),
        "metadata": metadata,
    }


def with_location(url: str, m: dict[str, Any]) -> dict[str, Any]:
    """A stored marker as readers see it: plus ``layout`` and the version folder's ``url``."""
    m["layout"] = "folder"
    m["url"] = f"{url}/{m['version']}"
    return m


def _count(v: Any) -> bool:
    return type(v) is int and v >= 0


def check_marker(raw: bytes, vid: str) -> dict[str, Any] | str:
    """The stored marker of ``vid`` from its bytes, validated field by field (module docstring):
    a new dict holding only the known fields, or a short reason why it is not valid."""
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "not JSON"
    if not isinstance(m, dict):
        return "not a JSON object"
    fmt = m.get("format")
    if type(fmt) is not int or fmt != MARKER_FORMAT:
        return f"format is not {MARKER_FORMAT}"
    if m.get("version") != vid:
        return "version is not its folder's"
    kind = m.get("kind")
    if kind not in KINDS:
        return "kind is not 'bytes' or 'dir'"
    name = m.get("name")
    if kind == "bytes" and not is_safe_name(name):
        return "name is not one safe file name"
    if kind == "dir" and name is not None:
        return "a directory marker has a name"
    size, files = m.get("size"), m.get("files")
    if not (_count(size) and _count(files)):
        return "size or files is not a non-negative integer"
    if kind == "bytes" and files != 1:
        return "a single blob's files is not 1"
    created: Any = m.get("created")
    if not (type(created) in (int, float) and math.isfinite(created)):
        return "created is not a number"
    return {
        "format": fmt,
        "version": vid,
        "kind": kind,
        "name": name,
        "size": size,
        "files": files,
        "created": created,
        "metadata": m.get("metadata"),
    }


def parse_marker(raw: bytes | None, vid: str) -> dict[str, Any] | None:
    """The stored marker of ``vid`` from its bytes, or None if absent or not valid
    (:func:`check_marker`)."""
    if raw is None:
        return None
    m = check_marker(raw, vid)
    return m if isinstance(m, dict) else None
