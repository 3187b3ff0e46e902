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
  ``"bytes"`` or ``"dir"``; anything else (absent, truncated, another version's) means the
  version is incomplete. It records the payload's size and file count, which readers verify.
* A single-object version's marker is derived from its listing entry (name and size from the
  key and the listing, ``created`` from the id, ``metadata`` None): it is never stored.
* File names taken from the user (a saved file's name) are used only when
  :func:`is_safe_name`; otherwise the blob is stored as ``payload``.
"""

from __future__ import annotations

import json
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


def new_vid(known_max: str | None) -> str:
    """A fresh version id: newer than ``known_max`` (the highest id seen), unique without a read."""
    ns = time.time_ns()
    if known_max is not None:
        ns = max(ns, int(known_max[:NS_DIGITS]) + 1)
    return f"{ns:0{NS_DIGITS}d}-{secrets.token_hex(4)}"


def is_safe_name(name: Any) -> bool:
    """True for a name usable as one file name in a version (and as a restored file's name)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MARKER_NAME)
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
    )


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


def parse_marker(raw: bytes | None, vid: str) -> dict[str, Any] | None:
    """The stored marker of ``vid`` from its bytes, or None if absent or not valid."""
    if raw is None:
        return None
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not (isinstance(m, dict) and m.get("version") == vid and m.get("kind") in ("bytes", "dir")):
        return None
    return m
