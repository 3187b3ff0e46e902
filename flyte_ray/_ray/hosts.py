"""Which machines a cluster's live nodes run on, and the local-storage rule that follows.

A local folder as flyte-ray's storage is seen only by processes on one machine. Checkpoints are
read back by the next attempt, which may run on another node, and cached outputs are read by
callers anywhere: on a cluster whose live nodes span more than one host (by their
``NodeManagerAddress`` in ``ray.nodes()``), a local folder silently loses both. ``init`` therefore
refuses it there with :func:`local_storage_error`, unless ``init(allow_local_storage=True)`` says
the path is a filesystem shared by every node (NFS, a mounted bucket). Nodes on one machine (the
embedded cluster, ``flyte_ray.testing.LocalCluster``, a ``ray start`` cluster on one host) share
its disk and pass.

The rule sees the nodes alive at ``init``: a cluster that autoscales up from its head alone
passes it and gets more hosts later; give such clusters shared storage.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

__all__ = ["local_storage_error", "node_hosts"]


def node_hosts(nodes: Iterable[Mapping[str, Any]]) -> set[str]:
    """The distinct hosts (``NodeManagerAddress``) of the live nodes in a ``ray.nodes()`` list."""
    return {
        str(n.get("NodeManagerAddress"))
        for n in nodes
        if (n.get("Alive", n.get("alive")) is True) and n.get("NodeManagerAddress")
    }


def local_storage_error(url: str, nodes: Iterable[Mapping[str, Any]]) -> Optional[str]:
    """The message of the ``ValueError`` refusing local storage ``url`` on these nodes, or None
    when they all run on one host."""
    hosts = node_hosts(nodes)
    if len(hosts) <= 1:
        return None
    return (
        f"storage {url!r} is a local folder, but this cluster's live nodes run on {len(hosts)} hosts: "
        "a checkpoint written on one host is invisible to a retry on another, and cached outputs to "
        "callers elsewhere. Give every node the same storage: flyte_ray.init(storage='s3://bucket/prefix') "
        "(or gs://..., or $FLYTE_RAY_STORAGE on the driver); if this path is a filesystem mounted on "
        "every node (NFS...), say so with flyte_ray.init(..., allow_local_storage=True)."
    )
