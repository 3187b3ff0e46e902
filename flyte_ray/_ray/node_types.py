"""The node types a cluster can launch, read from its cluster config (a ``ray up`` YAML or a
KubeRay ``RayCluster`` manifest), and whether a resource request fits a node.

Used by ``flyte_ray.init(cluster_config=...)`` (an attempt no live node can run waits only if
some launchable type could run it) and by ``flyte-ray doctor --cluster-config``. A node type's
``resources`` and ``labels`` are what its config declares; what the config leaves out (a cloud instance's CPU
count, memory) is not checked, so a type is never refused for a resource it may well have.
"""

from __future__ import annotations

import copy
from typing import Mapping

__all__ = ["read_node_types", "fits", "unmet"]

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


def unmet(request: Mapping[str, float], offers: Mapping[str, float], declared_only: bool = False) -> list[str]:
    """The resources of ``request`` that ``offers`` (one node's totals) lacks. ``declared_only``:
    ``offers`` is a node type's declaration, which may leave CPU and memory out."""
    return [
        k
        for k, v in request.items()
        if v > 0 and offers.get(k, 0.0) + _EPS < v and not (declared_only and k in _UNDECLARED_OK and k not in offers)
    ]


def fits(request: Mapping[str, float], offers: Mapping[str, float], declared_only: bool = False) -> bool:
    return not unmet(request, offers, declared_only)
