"""The node types a cluster can launch, read from its cluster config (a ``ray up`` YAML or a
KubeRay ``RayCluster`` manifest), and whether a resource request fits a node.

Used by ``flyte_ray.init(cluster_config=...)`` (an attempt no live node can run waits only if
some launchable type could run it) and by ``flyte-ray doctor --cluster-config``.

Without ``cluster_config``, :func:`discover` looks for them when ``init`` connects to an existing
cluster, in this order: ``$FLYTE_RAY_CLUSTER_CONFIG`` (a path); then, only when an autoscaler is
at work (Ray's v1 monitor writes its status to the GCS, the v2 one reports its state), the node
groups the autoscaler reported to the GCS, or ``~/ray_bootstrap_config.yaml`` (``ray up``'s copy
of the config on the head, where ``ray job submit`` runs drivers). An autoscaler whose node types
none of these give is *unknown*: work no live node offers waits for it (a spot attempt still moves
after its spot wait) instead of failing, and one warning says how to fail fast. A cluster with no
autoscaler is fixed: live nodes only. A node type's
``resources`` and ``labels`` are what its config declares; what the config leaves out (a cloud instance's CPU
count, memory) is not checked, so a type is never refused for a resource it may well have.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any, Mapping, Optional

__all__ = ["read_node_types", "fits", "unmet", "discover", "types_of_group_configs", "AUTOSCALED_UNKNOWN"]

#: ``ray up`` writes the cluster config here on the head node (its autoscaler runs from it).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
#: ``Settings.node_types`` of a cluster whose autoscaler could launch node types flyte-ray cannot
#: see: one entry that fits every request (so work waits for the autoscaler rather than failing).
AUTOSCALED_UNKNOWN = (("(a node type of the cluster's autoscaler)", None),)

_EPS = 1e-9
_UNDECLARED_OK = ("CPU", "memory", "object_store_memory")


def read_node_types(path: str) -> tuple[list[tuple[str, dict[str, float], bool, dict[str, str]]], str]:
    """``([(name, resources, launchable, labels), ...], head type)`` of the cluster config at ``path``."""
    import yaml

    with open(path) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    if doc.get("kind") == "RayCluster":
        from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

        cr = copy.deepcopy(doc)
        cr.setdefault("metadata", {}).setdefault("namespace", "default")
        doc = _derive_autoscaling_config_from_ray_cr(cr)
    types = doc.get("available_node_types")
    if not isinstance(types, dict) or not types:
        raise ValueError(f"{path}: no available_node_types (is this a `ray up` cluster config?)")
    head = doc.get("head_node_type", "")
    default_max = doc.get("max_workers", 1)
    out = []
    for name, nt in types.items():
        nt = nt or {}
        res = {k: float(v) for k, v in (nt.get("resources") or {}).items()}
        labels = {str(k): str(v) for k, v in (nt.get("labels") or {}).items()}
        mx = nt.get("max_workers", default_max)
        out.append((name, res, name == head or (mx is None or mx > 0), labels))
    return out, head


def types_of_group_configs(groups: Any) -> list[tuple[str, dict[str, float], bool, dict[str, str]]]:
    """Node types from the node groups an autoscaler reported to the GCS (Ray's
    ``autoscaler_pb2.NodeGroupConfig``: name, resources, max_count; no labels)."""
    out: list[tuple[str, dict[str, float], bool, dict[str, str]]] = []
    for g in groups:
        res = {str(k): float(v) for k, v in dict(g.resources).items()}
        out.append((str(g.name), res, g.max_count != 0, {}))
    return out


def discover(
    env_path: Optional[str],
    autoscaled: bool,
    gcs_groups: Any = None,
    bootstrap: Optional[str] = None,
) -> tuple[str, Any]:
    """``(where from, node types)`` of a cluster ``init`` connected to without ``cluster_config``
    (see the module docstring): ``node types`` is a list as :func:`read_node_types` gives, ``()``
    for a fixed cluster, or :data:`AUTOSCALED_UNKNOWN`. ``gcs_groups``: the node groups the
    autoscaler reported (or None); ``bootstrap``: the path of ``ray up``'s config when it exists."""
    if env_path:
        if not os.path.exists(env_path):
            raise FileNotFoundError(f"$FLYTE_RAY_CLUSTER_CONFIG: no file at {env_path!r}")
        return f"$FLYTE_RAY_CLUSTER_CONFIG ({env_path})", read_node_types(env_path)[0]
    if not autoscaled:
        return "no autoscaler: live nodes only", ()
    if gcs_groups:
        return "the node groups the autoscaler reported to the GCS", types_of_group_configs(gcs_groups)
    if bootstrap:
        return f"ray up's cluster config ({bootstrap})", read_node_types(bootstrap)[0]
    return "an autoscaler whose node types flyte-ray cannot see", AUTOSCALED_UNKNOWN


_READ_ONLY_TYPE = re.compile(r"node_[0-9a-f]{56}")


def autoscaled_by_status(raw: Optional[bytes]) -> bool:
    """Whether the v1 monitor's status (JSON, as the GCS holds it) is an autoscaler's: a head
    started without one runs the monitor with Ray's read-only provider, whose node types are the
    nodes themselves (``node_<node id>``); a ``ray up`` or KubeRay autoscaler names its node
    types (``ray.head.default``, ``cpu-spot``, a worker group)."""
    if not raw:
        return False
    try:
        report = json.loads(raw).get("autoscaler_report") or {}
        types = set((report.get("node_type_mapping") or {}).values()) | set(report.get("active_nodes") or {})
    except (ValueError, AttributeError, TypeError):
        return False
    return any(not _READ_ONLY_TYPE.fullmatch(str(t)) for t in types)


def autoscaler_facts() -> tuple[bool, Any]:
    """``(an autoscaler is at work, the node groups it reported to the GCS or None)`` for the
    cluster this process is connected to; ``(False, None)`` when the GCS cannot say (Ray client)."""
    import ray
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    autoscaled, groups = False, None
    try:
        # Ray's v1 autoscaler monitor writes its status here -- on every head, also without an
        # autoscaler (`ray start --head`: a read-only provider): autoscaled_by_status tells them apart
        autoscaled = autoscaled_by_status(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS))
    except Exception:  # noqa: BLE001 - no GCS KV here: as a fixed cluster
        pass
    try:
        address = ray.get_runtime_context().gcs_address
        if not autoscaled and address:
            from ray._raylet import GcsClient  # type: ignore[attr-defined]
            from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply  # type: ignore[attr-defined]

            reply = GetClusterStatusReply.FromString(GcsClient(address=address).get_cluster_status(timeout_s=10))
            autoscaled = reply.autoscaling_state.autoscaler_state_version > 0  # the v2 autoscaler reports
        if autoscaled:
            config = ray._private.state.state.get_cluster_config()
            groups = list(config.node_group_configs) if config is not None else None
    except Exception:  # noqa: BLE001 - an older or newer Ray: what the v1 status said stands
        pass
    return autoscaled, groups


def unmet(request: Mapping[str, float], offers: Mapping[str, float], declared_only: bool = False) -> list[str]:
    """The resources of ``request`` that ``offers`` (one node's totals) lacks. ``declared_only``:
    ``offers`` is a node type's declaration, which may leave CPU and memory out."""
    return [
        k
        for k, v in request.items()
        if v > 0 and offers.get(k, 0.0) + _EPS < v and not (declared_only and k in _UNDECLARED_OK and k not in offers)
    ]


def fits(request: Mapping[str, float], offers: Optional[Mapping[str, float]], declared_only: bool = False) -> bool:
    """Whether a node offering ``offers`` could run ``request``; ``offers=None`` is a node type
    nobody told flyte-ray about (:data:`AUTOSCALED_UNKNOWN`): it may, so it fits."""
    if offers is None:
        return True
    return not unmet(request, offers, declared_only)
