"""The Ray GCS calls the node side needs, without a connected Ray driver.

A drain is Ray's ``DrainNode`` RPC with reason PREEMPTION and a deadline (what autoscalers and
KubeRay send): the raylet stops taking new work, running work goes on, and an idle node exits at
once. ``GcsClient`` is Ray's Cython client (``ray._raylet``; also what ``ray drain-node`` uses);
the drain it sends is checked end to end by ``tests/test_notices.py``.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Optional

__all__ = ["drain_node", "node_states", "local_node_id", "resolve_address"]


def _gcs(address: str) -> Any:
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # Cython, no stubs

    return GcsClient(address=address)


def drain_node(address: str, node_id: str, deadline: Optional[float], message: str) -> tuple[bool, str]:
    """Ask the GCS at ``address`` to drain ``node_id`` for PREEMPTION until ``deadline`` (epoch
    seconds; None: none). Returns Ray's ``(accepted, message)``. Blocking."""
    from ray.core.generated import autoscaler_pb2

    reason = autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")  # type: ignore[attr-defined]
    ok, msg = _gcs(address).drain_node(node_id, reason, message[:500], int(deadline * 1000) if deadline else 0)
    return bool(ok), str(msg or "")


def node_states(address: str) -> dict[str, tuple[str, str]]:
    """Node id (hex) → ``(state, node manager address)`` for every node the GCS knows; state is
    ``"ALIVE"``, ``"DRAINING"`` or ``"DEAD"``. Blocking."""
    out: dict[str, tuple[str, str]] = {}
    for nid, info in _gcs(address).get_all_node_info().items():
        if info.state != 0:  # GcsNodeInfo.GcsNodeState: 0 ALIVE, 1 DEAD
            state = "DEAD"
        else:
            snap = info.state_snapshot
            state = "DRAINING" if snap.State.Name(snap.state) == "DRAINING" else "ALIVE"
        out[nid.hex()] = (state, str(info.node_manager_address))
    return out


def _host_ips() -> set[str]:
    ips = {"127.0.0.1"}
    try:
        ips.update(str(a[4][0]) for a in socket.getaddrinfo(socket.gethostname(), None))
    except OSError:
        pass
    try:  # the address this host uses to reach others (no packet is sent for UDP connect)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            ips.add(s.getsockname()[0])
    except OSError:
        pass
    return ips


def local_node_id(address: str) -> Optional[str]:
    """The live Ray node of this host: the one whose node manager address is one of this host's
    addresses, when exactly one is (several raylets on one host need ``--node-id``)."""
    ips = _host_ips()
    mine = [nid for nid, (state, ip) in node_states(address).items() if state != "DEAD" and ip in ips]
    return mine[0] if len(mine) == 1 else None


def resolve_address(address: Optional[str]) -> Optional[str]:
    """The GCS address: ``address`` unless empty or ``auto``, else ``RAY_ADDRESS``, else the
    address ``ray start`` wrote on this host (``/tmp/ray/ray_current_cluster``)."""
    for cand in (address, os.environ.get("RAY_ADDRESS")):
        if cand and cand != "auto" and not cand.startswith(":") and not cand.startswith("ray://"):
            return cand
    try:
        with open("/tmp/ray/ray_current_cluster") as f:
            text = f.read().strip()
        return text or None
    except OSError:
        return None
