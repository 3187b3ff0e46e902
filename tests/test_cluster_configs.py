"""Offline checks of the cluster configs in ``cluster-configs/``.

Two kinds of checks, both without any cloud or Kubernetes API call:

1. Ray's own config handling.  ``ray up`` configs go through
   ``ray.autoscaler._private.util.prepare_config`` (merge with the provider's
   defaults.yaml, fill per-node-type min/max workers, docker checks) and
   ``validate_config`` (Ray's ``ray-schema.json`` plus its cross-field
   checks): the same steps ``ray up`` runs before the provider's
   ``bootstrap_config``, which needs cloud credentials and is not called.
   The KubeRay manifest goes through
   ``ray.autoscaler._private.kuberay.autoscaling_config._derive_autoscaling_config_from_ray_cr``,
   the function Ray's autoscaler uses to turn a RayCluster into its config
   (it parses ``rayStartParams.resources`` and ends with ``validate_config``).

2. flyte-ray's placement convention (see ``cluster-configs/README.md``):
   market markers, queues, GPU types, spot settings agreeing with the
   marker, and RAY_AUTH_MODE being the same everywhere.

3. Closed by default (README, "Security: what is exposed"): token auth in
   every Ray process with the token reaching every node (``~/.ray/auth_token``
   file mount; KubeRay: RAY_AUTH_TOKEN from one Secret), the dashboard on
   loopback, AWS nodes in one given security group, GCP nodes tagged on a
   subnet of their own with an external IP on the head only, and a
   NetworkPolicy (``kuberay-networkpolicy.yaml``) that admits only the
   RayCluster's own pods and, on the client ports, labelled client pods.

4. Preemption notices (README, "Preemption notices"): the watcher (flyte_ray/preemption, copied
   as a folder) runs on every spot node type / group and nowhere else, and a spot type's own
   worker_setup_commands still install the dependencies.

Each convention check is a function returning a list of problems, so the
tests at the end can also prove that broken configs are caught.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import pytest
import yaml

import ray
import ray.util.accelerators as ray_accelerators
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "cluster-configs"
EXAMPLES_DIR = REPO / "examples"

MARKERS = ("spot", "ondemand")
# Images / rayVersion must match the Ray line flyte-ray pins (2.60.x).
RAY_MINOR = ".".join(ray.__version__.split(".")[:2]) + "."
# Attempts request 0.001 of a marker/queue; the count only has to exceed the
# number of attempts that can share a node.
MIN_MARKER_COUNT = 100
QUEUE_PREFIX = "queue:"
ACCEL_PREFIX = "accelerator_type:"
GPU_PARTITION_RE = re.compile(r"^gpu-partition:[^:\s]+:[^:\s]+$")
TPU_RE = re.compile(r"^tpu:[^:\s]+:[^:\s]+$")

# Accelerator names Ray itself uses (ray.util.accelerators constants).
RAY_ACCELERATOR_NAMES: Set[str] = {
    getattr(ray_accelerators, name)
    for name in dir(ray_accelerators)
    if name.isupper() and isinstance(getattr(ray_accelerators, name), str)
}

# AWS instance type -> (Ray accelerator name, GPUs per instance).
AWS_GPU_INSTANCES: Dict[str, Tuple[str, int]] = {
    "g4dn.xlarge": ("T4", 1),
    "g4dn.2xlarge": ("T4", 1),
    "g4dn.4xlarge": ("T4", 1),
    "g4dn.12xlarge": ("T4", 4),
    "g5.xlarge": ("A10G", 1),
    "g5.2xlarge": ("A10G", 1),
    "g5.4xlarge": ("A10G", 1),
    "g5.12xlarge": ("A10G", 4),
    "g5.48xlarge": ("A10G", 8),
    "g6.xlarge": ("L4", 1),
    "g6.2xlarge": ("L4", 1),
    "g6.12xlarge": ("L4", 4),
    "p3.2xlarge": ("V100", 1),
    "p3.8xlarge": ("V100", 4),
    "p4d.24xlarge": ("A100", 8),
    "p5.48xlarge": ("H100", 8),
}
AWS_GPU_FAMILIES = ("g3", "g4", "g5", "g6", "p2", "p3", "p4", "p5")

# GCP guestAccelerators acceleratorType -> Ray accelerator name.
GCP_ACCELERATORS: Dict[str, str] = {
    "nvidia-tesla-t4": "T4",
    "nvidia-l4": "L4",
    "nvidia-tesla-v100": "V100",
    "nvidia-tesla-p100": "P100",
    "nvidia-tesla-a100": "A100",
    "nvidia-h100-80gb": "H100",
}
# GCP machine types with built-in GPUs -> (Ray accelerator name, count).
GCP_GPU_MACHINES: Dict[str, Tuple[str, int]] = {
    "g2-standard-4": ("L4", 1),
    "g2-standard-8": ("L4", 1),
    "g2-standard-24": ("L4", 2),
    "a2-highgpu-1g": ("A100", 1),
    "a2-highgpu-8g": ("A100", 8),
    "a3-highgpu-8g": ("H100", 8),
}

# Kubernetes node labels / taints that mean "spot capacity".
GKE_SPOT_LABEL = "cloud.google.com/gke-spot"
EKS_CAPACITY_LABEL = "eks.amazonaws.com/capacityType"
GKE_ACCEL_LABEL = "cloud.google.com/gke-accelerator"
SPOT_LABELS = {GKE_SPOT_LABEL: "true", EKS_CAPACITY_LABEL: "SPOT"}

# ------------------------------------------------------- closed by default ---
# Ray 2.60 reads the token from RAY_AUTH_TOKEN, else the file named by
# RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token
# (ray/_private/authentication/authentication_token_setup.py and the loader in
# _raylet.so); RAY_AUTH_MODE=token turns the checks on.
TOKEN_FILE = "~/.ray/auth_token"
TOKEN_ENV_RE = re.compile(r"\bRAY_AUTH_TOKEN(_PATH)?\b")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DASHBOARD_HOST_RE = re.compile(r"--dashboard-host[= ]+['\"]?([^\s'\";]+)")
# Labels KubeRay puts on every pod of a RayCluster.
KUBERAY_CLUSTER_LABEL = "ray.io/cluster"
NETWORK_POLICY_KIND = "NetworkPolicy"
# What a Ray client outside the cluster may reach: GCS, Ray Client, dashboard.
CLIENT_PORTS = {6379, 10001, 8265}


# --------------------------------------------------------------- loading ---
def _load_all() -> Tuple[Dict[str, dict], Dict[str, dict], List[str]]:
    """Split cluster-configs/*.yaml into ray-up configs and RayClusters
    (NetworkPolicy manifests, which go with a RayCluster, are neither and
    are not unknown either: see _network_policies)."""
    ray_up, kuberay, unknown = {}, {}, []
    for path in sorted(CONFIG_DIR.glob("*.y*ml")):
        with open(path) as f:
            doc = yaml.safe_load(f)
        if isinstance(doc, dict) and doc.get("kind") == "RayCluster":
            kuberay[path.name] = doc
        elif isinstance(doc, dict) and "provider" in doc:
            ray_up[path.name] = doc
        elif isinstance(doc, dict) and doc.get("kind") == NETWORK_POLICY_KIND:
            continue
        else:
            unknown.append(path.name)
    return ray_up, kuberay, unknown


def _ray_up_names() -> List[str]:
    return sorted(p.name for p in CONFIG_DIR.glob("*.y*ml") if "kuberay" not in p.name)


def _kuberay_names() -> List[str]:
    """KubeRay RayCluster manifests (not the NetworkPolicy beside them)."""
    return sorted(
        p.name for p in CONFIG_DIR.glob("*.y*ml")
        if "kuberay" in p.name and _load(p.name).get("kind") == "RayCluster"
    )


def _network_policies() -> Dict[str, dict]:
    """NetworkPolicy manifests in cluster-configs/ (one object per file: every
    file there is read as a single YAML document, by these tests and by
    `flyte-ray doctor --cluster-config`)."""
    found = {}
    for path in sorted(CONFIG_DIR.glob("*.y*ml")):
        doc = _load(path.name)
        if isinstance(doc, dict) and doc.get("kind") == NETWORK_POLICY_KIND:
            found[path.name] = doc
    return found


def _load(name: str) -> dict:
    with open(CONFIG_DIR / name) as f:
        return yaml.safe_load(f)


def example_queues() -> Set[str]:
    """Queues named as queue="..." / queue='...' in examples/ (may be empty)."""
    queues: Set[str] = set()
    if not EXAMPLES_DIR.is_dir():
        return queues
    pattern = re.compile(r"""\bqueue\s*=\s*(["'])([^"'\n]+)\1""")
    for path in EXAMPLES_DIR.rglob("*.py"):
        for match in pattern.finditer(path.read_text(errors="replace")):
            queues.add(match.group(2))
    return queues


# ------------------------------------------------------------ convention ---
def markers_of(resources: Dict[str, Any]) -> List[str]:
    return [m for m in MARKERS if m in resources]


def queues_of(resources: Dict[str, Any]) -> Set[str]:
    return {k[len(QUEUE_PREFIX):] for k in resources if k.startswith(QUEUE_PREFIX)}


def accelerators_of(resources: Dict[str, Any]) -> Set[str]:
    return {k[len(ACCEL_PREFIX):] for k in resources if k.startswith(ACCEL_PREFIX)}


def resource_problems(
    name: str, resources: Dict[str, Any], is_head: bool
) -> List[str]:
    """The convention on one node type's Ray resources, cloud-independent."""
    p: List[str] = []
    markers = markers_of(resources)
    if len(markers) != 1:
        p.append(f"{name}: must declare exactly one of {MARKERS}, has {markers}")
    for key in markers + [k for k in resources if k.startswith(QUEUE_PREFIX)]:
        value = resources[key]
        if not isinstance(value, int) or value < MIN_MARKER_COUNT:
            p.append(f"{name}: {key} should be a large integer count, got {value!r}")
    for key in resources:
        if key.startswith(QUEUE_PREFIX) and (
            key == QUEUE_PREFIX or re.search(r"\s", key)
        ):
            p.append(f"{name}: malformed queue resource {key!r}")
        if key.startswith("gpu-partition") and not GPU_PARTITION_RE.match(key):
            p.append(f"{name}: {key!r} is not gpu-partition:<device>:<partition>")
        if key.startswith("tpu:") and not TPU_RE.match(key):
            p.append(f"{name}: {key!r} is not tpu:<device>:<slice>")

    accels = accelerators_of(resources)
    gpus = resources.get("GPU", 0)
    if is_head:
        if markers != ["ondemand"]:
            p.append(f"{name}: the head must be on-demand, has {markers}")
        if resources.get("CPU") != 0:
            p.append(f"{name}: the head must declare CPU: 0, has {resources.get('CPU')!r}")
        if queues_of(resources):
            p.append(f"{name}: the head must serve no queue")
        if gpus or accels:
            p.append(f"{name}: the head must not offer GPUs")
        return p

    if not queues_of(resources):
        p.append(f"{name}: declares no queue:* resource (use queue:default)")
    if gpus or accels:
        if len(accels) != 1:
            p.append(f"{name}: a GPU node type needs exactly one accelerator_type:<T>, has {sorted(accels)}")
        if not isinstance(gpus, int) or gpus < 1:
            p.append(f"{name}: a GPU node type needs a GPU count >= 1, has {gpus!r}")
        for accel in accels:
            if resources[ACCEL_PREFIX + accel] != 1:
                p.append(f"{name}: {ACCEL_PREFIX}{accel} should be 1 (Ray's convention)")
            if accel not in RAY_ACCELERATOR_NAMES:
                p.append(f"{name}: {accel!r} is not one of Ray's accelerator names")
    return p


def fallback_problems(node_types: Dict[str, Dict[str, Any]], head: str) -> List[str]:
    """Whatever a spot worker offers (queue x GPU type) an on-demand worker
    also offers, so the final on-demand attempt of an interruptible task can
    always be placed."""
    offers = {"spot": set(), "ondemand": set()}
    for name, resources in node_types.items():
        if name == head:
            continue
        for market in markers_of(resources):
            accels = accelerators_of(resources) or {None}
            for queue in queues_of(resources):
                for accel in accels:
                    offers[market].add((queue, accel))
    return [
        f"spot offers queue={q!r} gpu={a!r} but no on-demand node type does"
        for q, a in sorted(offers["spot"] - offers["ondemand"], key=str)
    ]


def queue_coverage_problems(
    node_types: Dict[str, Dict[str, Any]], head: str, queues: Iterable[str]
) -> List[str]:
    ondemand_queues: Set[str] = set()
    for name, resources in node_types.items():
        if name != head and "ondemand" in resources:
            ondemand_queues |= queues_of(resources)
    return [
        f"queue {q!r} (used in examples/) has no on-demand pool"
        for q in sorted(set(queues) | {"default"})
        if q not in ondemand_queues
    ]


# ---------------------------------------------------- ray up: cloud side ---
def _gcp_scheduling(node_config: dict) -> dict:
    sched = node_config.get("scheduling", {}) or {}
    if isinstance(sched, list):  # Ray's older examples use a list of dicts.
        merged: dict = {}
        for item in sched:
            merged.update(item)
        sched = merged
    return sched


def cloud_market(provider: str, node_config: dict) -> str:
    """The market the cloud settings of a node actually ask for."""
    if provider == "aws":
        opts = node_config.get("InstanceMarketOptions") or {}
        return "spot" if str(opts.get("MarketType", "")).lower() == "spot" else "ondemand"
    if provider == "gcp":
        sched = _gcp_scheduling(node_config)
        is_spot = (
            str(sched.get("provisioningModel", "")).upper() == "SPOT"
            or sched.get("preemptible") is True
        )
        return "spot" if is_spot else "ondemand"
    raise AssertionError(f"no market rule for provider {provider!r}")


def cloud_gpus(provider: str, node_config: dict) -> Optional[Tuple[str, int]]:
    """(Ray accelerator name, count) the instance really has, None if no GPU.

    Raises KeyError for a GPU instance missing from the tables above."""
    if provider == "aws":
        itype = node_config.get("InstanceType", "")
        if itype in AWS_GPU_INSTANCES:
            return AWS_GPU_INSTANCES[itype]
        if itype.split(".")[0].startswith(AWS_GPU_FAMILIES):
            raise KeyError(f"GPU instance {itype!r}: add it to AWS_GPU_INSTANCES")
        return None
    if provider == "gcp":
        accels = node_config.get("guestAccelerators") or []
        if accels:
            kinds = {a["acceleratorType"].rsplit("/", 1)[-1] for a in accels}
            assert len(kinds) == 1, f"mixed accelerators {kinds}"
            kind = kinds.pop()
            if kind not in GCP_ACCELERATORS:
                raise KeyError(f"accelerator {kind!r}: add it to GCP_ACCELERATORS")
            return GCP_ACCELERATORS[kind], sum(int(a["acceleratorCount"]) for a in accels)
        mtype = node_config.get("machineType", "").rsplit("/", 1)[-1]
        if mtype in GCP_GPU_MACHINES:
            return GCP_GPU_MACHINES[mtype]
        if mtype.startswith(("g2-", "a2-", "a3-")):
            raise KeyError(f"GPU machine type {mtype!r}: add it to GCP_GPU_MACHINES")
        return None
    raise AssertionError(f"no GPU rule for provider {provider!r}")


def ray_up_problems(config: dict) -> List[str]:
    """All convention problems of one (prepared) ray-up config."""
    p: List[str] = []
    provider = config["provider"]["type"]
    head = config["head_node_type"]
    node_types = config["available_node_types"]
    docker = config.get("docker") or {}
    for name, nt in node_types.items():
        resources = nt.get("resources", {})
        is_head = name == head
        p += resource_problems(name, resources, is_head)
        node_config = nt.get("node_config", {})
        declared = markers_of(resources)
        actual = cloud_market(provider, node_config)
        if declared and declared[0] != actual:
            p.append(f"{name}: declares {declared[0]!r} but its {provider} settings ask for {actual!r}")
        if is_head and nt.get("max_workers", 0) != 0:
            p.append(f"{name}: head node type must have max_workers 0")
        if not is_head and actual == "spot" and nt.get("min_workers", 0) != 0:
            p.append(f"{name}: spot node types should have min_workers 0")
        try:
            gpus = cloud_gpus(provider, node_config)
        except KeyError as e:
            p.append(f"{name}: {e}")
            continue
        accels = accelerators_of(resources)
        if gpus is None:
            if accels or resources.get("GPU"):
                p.append(f"{name}: declares GPUs but the instance has none")
        else:
            accel, count = gpus
            if accels != {accel}:
                p.append(f"{name}: instance has {accel} GPUs, declares {sorted(accels)}")
            if resources.get("GPU") != count:
                p.append(f"{name}: instance has {count} GPU(s), declares GPU: {resources.get('GPU')!r}")
            image = (nt.get("docker") or {}).get("worker_image") or docker.get("image", "")
            if docker and "gpu" not in image:
                p.append(f"{name}: GPU node type runs the non-GPU image {image!r}")
            if provider == "gcp":
                sched = _gcp_scheduling(node_config)
                if str(sched.get("onHostMaintenance", "")).upper() != "TERMINATE":
                    p.append(f"{name}: GCP GPU VMs need scheduling.onHostMaintenance TERMINATE")
        if provider == "gcp" and actual == "spot":
            sched = _gcp_scheduling(node_config)
            if sched.get("automaticRestart") is not False:
                p.append(f"{name}: GCP Spot VMs need scheduling.automaticRestart false")
            if str(sched.get("onHostMaintenance", "")).upper() != "TERMINATE":
                p.append(f"{name}: GCP Spot VMs need scheduling.onHostMaintenance TERMINATE")
    p += fallback_problems({n: nt.get("resources", {}) for n, nt in node_types.items()}, head)
    return p


AUTH_RE = re.compile(r"RAY_AUTH_MODE=(\w+)")


def ray_up_auth_problems(config: dict) -> List[str]:
    p: List[str] = []
    modes: Dict[str, Set[str]] = {}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config.get(key, []) if "ray start" in c]
        if not starts:
            p.append(f"{key}: no `ray start` command")
        for cmd in starts:
            found = set(AUTH_RE.findall(cmd))
            if not found:
                p.append(f"{key}: `ray start` without an explicit RAY_AUTH_MODE")
            modes.setdefault(key, set()).update(found)
    for opt in (config.get("docker") or {}).get("run_options", []):
        modes.setdefault("docker.run_options", set()).update(AUTH_RE.findall(opt))
    all_modes = set().union(*modes.values()) if modes else set()
    if len(all_modes) > 1:
        p.append(f"RAY_AUTH_MODE differs between processes: {modes}")
    if not all_modes <= {"disabled", "token"}:
        p.append(f"unknown RAY_AUTH_MODE value(s): {all_modes}")
    if "token" in all_modes:
        text = yaml.safe_dump(config)
        if "auth_token" not in text and "RAY_AUTH_TOKEN" not in text:
            p.append("token auth without shipping a token (file_mounts ~/.ray/auth_token or RAY_AUTH_TOKEN)")
    return p


def _start_commands(config: dict) -> Iterable[Tuple[str, str]]:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in config.get(key, []):
            yield key, cmd


def ray_up_token_problems(config: dict) -> List[str]:
    """Token auth in every Ray process of a (prepared) ray-up config, with the
    token shipped to every node as the file Ray reads by default."""
    p: List[str] = []
    for key, cmd in _start_commands(config):
        if "ray start" in cmd and AUTH_RE.findall(cmd) != ["token"]:
            p.append(f"{key}: `ray start` must run with RAY_AUTH_MODE=token, has {AUTH_RE.findall(cmd)}")
    docker = config.get("docker") or {}
    if docker:
        modes = [m for opt in docker.get("run_options", []) for m in AUTH_RE.findall(opt)]
        if modes != ["token"]:
            p.append(f"docker.run_options must pass -e RAY_AUTH_MODE=token to the container, has {modes}")
        extra = [docker.get("head_run_options", []), docker.get("worker_run_options", [])] + [
            (nt.get("docker") or {}).get("worker_run_options", [])
            for nt in config["available_node_types"].values()
        ]
        for opts in extra:
            for opt in opts:
                if set(AUTH_RE.findall(opt)) - {"token"}:
                    p.append(f"docker run options override RAY_AUTH_MODE: {opt!r}")
    mounts = config.get("file_mounts") or {}
    if TOKEN_FILE not in mounts:
        p.append(f"file_mounts must copy the token to every node as {TOKEN_FILE!r} (the file Ray reads)")
    elif not str(mounts[TOKEN_FILE]).strip():
        p.append(f"file_mounts[{TOKEN_FILE!r}] has no local source")
    # RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH take precedence over the mounted
    # file; in a ray-up YAML the former would also be a secret in the config.
    text = yaml.safe_dump(config)
    if TOKEN_ENV_RE.search(text):
        p.append("RAY_AUTH_TOKEN(_PATH) set in the config: it would override the mounted token file "
                 "(and a token value does not belong in a committed config)")
    return p


def dashboard_host_problems(config: dict) -> List[str]:
    """The dashboard (and its Jobs API) listens on loopback only."""
    p: List[str] = []
    for key, cmd in _start_commands(config):
        for host in DASHBOARD_HOST_RE.findall(cmd):
            if host not in LOOPBACK_HOSTS:
                p.append(f"{key}: --dashboard-host={host} exposes the dashboard beyond the head's loopback")
    text = yaml.safe_dump(config)
    if re.search(r"dashboard-host[= ]+['\"]?(0\.0\.0\.0|::|\[::\])", text):
        p.append("dashboard-host 0.0.0.0/:: appears in the config")
    return p


def aws_network_problems(config: dict) -> List[str]:
    """Every node in one security group that the user created (Ray 2.60's
    auto-created group always opens SSH to 0.0.0.0/0)."""
    p: List[str] = []
    groups: Set[Tuple[str, ...]] = set()
    for name, nt in config["available_node_types"].items():
        node_config = nt.get("node_config", {})
        if "NetworkInterfaces" in node_config:
            p.append(f"{name}: NetworkInterfaces bypass the cluster's SecurityGroupIds; use SecurityGroupIds")
        sg = node_config.get("SecurityGroupIds")
        if not sg:
            p.append(f"{name}: no SecurityGroupIds: Ray would put it in a group with SSH open to 0.0.0.0/0")
            continue
        groups.add(tuple(sg))
        if len(sg) != 1 or not str(sg[0]).startswith("sg-"):
            p.append(f"{name}: SecurityGroupIds must be one group id (sg-...), got {sg!r}")
    if len(groups) > 1:
        p.append(f"node types use different security groups {sorted(groups)}: "
                 "'all traffic within the group' must cover every node")
    return p


def _gcp_location(interface: dict) -> str:
    return str(interface.get("subnetwork") or interface.get("network") or "")


def gcp_network_problems(config: dict) -> List[str]:
    """Nodes on a subnet of their own network, tagged for its firewall rules;
    only the head (which `ray up` reaches over SSH) has an external IP."""
    p: List[str] = []
    region = config["provider"].get("region")
    head = config["head_node_type"]
    use_internal = config["provider"].get("use_internal_ips", False)
    tag_sets: List[Set[str]] = []
    locations: Set[str] = set()
    for name, nt in config["available_node_types"].items():
        node_config = nt.get("node_config", {})
        tags = set((node_config.get("tags") or {}).get("items") or [])
        if not tags:
            p.append(f"{name}: no network tag (tags.items): the firewall rules cannot target it")
        tag_sets.append(tags)
        interfaces = node_config.get("networkInterfaces")
        if not interfaces:
            p.append(f"{name}: no networkInterfaces: Ray would attach the project's first subnet with an external IP")
            continue
        for interface in interfaces:
            location = _gcp_location(interface)
            locations.add(location)
            if not location:
                p.append(f"{name}: a network interface names no subnetwork/network")
            if location.rstrip("/").split("/")[-1] == "default" and "networks/" in location:
                p.append(f"{name}: the default network has default-allow-* firewall rules; use a network of its own")
            m = re.search(r"regions/([^/]+)/subnetworks/", location)
            if m and m.group(1) != region:
                p.append(f"{name}: subnetwork region {m.group(1)!r} is not provider.region {region!r}")
        external = [i for i in interfaces if i.get("accessConfigs")]
        if name != head and external:
            p.append(f"{name}: workers must have no external IP (accessConfigs); they egress through Cloud NAT")
        if name == head and not external and not use_internal:
            p.append(f"{name}: the head needs an external IP (or provider.use_internal_ips) for `ray up` to reach it")
    if tag_sets and not set.intersection(*tag_sets):
        p.append("no network tag is common to every node type: one firewall rule cannot cover the cluster")
    if len(locations) > 1:
        p.append(f"node types are on different subnetworks/networks {sorted(locations)}")
    return p


NETWORK_PROBLEMS = {"aws": aws_network_problems, "gcp": gcp_network_problems}


def prepared(name: str) -> dict:
    """Ray's own preparation + validation (what `ray up` does offline)."""
    config = prepare_config(copy.deepcopy(_load(name)))
    validate_config(config)
    return config


# ================================================================ tests ===
def test_config_dir_layout():
    ray_up, kuberay, unknown = _load_all()
    assert not unknown, f"not a ray-up config nor a RayCluster: {unknown}"
    assert {"aws-spot.yaml", "gcp-spot.yaml"} <= set(ray_up)
    assert "kuberay-raycluster.yaml" in kuberay
    assert set(ray_up) == set(_ray_up_names())
    assert set(kuberay) == set(_kuberay_names())
    assert (CONFIG_DIR / "README.md").is_file()


@pytest.mark.parametrize("name", _ray_up_names())
def test_ray_up_config_passes_ray_validation(name):
    raw = _load(name)
    assert raw["provider"]["type"] in ("aws", "gcp")
    # Ray requires per-node-type resources (no cloud autodetection offline).
    for nt_name, nt in raw["available_node_types"].items():
        assert "resources" in nt, f"{nt_name}: resources missing"
    config = prepared(name)
    for nt_name, nt in config["available_node_types"].items():
        assert nt["max_workers"] <= config["max_workers"], nt_name
        assert nt["min_workers"] <= nt["max_workers"], nt_name
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("name", _ray_up_names())
def test_ray_up_follows_convention(name):
    problems = ray_up_problems(prepared(name))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", _ray_up_names())
def test_ray_up_auth_mode_is_explicit_and_consistent(name):
    problems = ray_up_auth_problems(prepared(name))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", _ray_up_names())
def test_ray_up_installs_ray_and_flyte_rays_dependencies_not_flyte_ray(name):
    """The install path (README, "Installing flyte-ray"): drivers ship flyte_ray to their job's
    workers, so the nodes install Ray 2.60 and flyte-ray's own dependencies, and nothing installs
    flyte-ray (no package index serves it)."""
    config = prepared(name)
    problems = ray_up_install_problems(config)
    assert not problems, "\n".join(problems)
    docker = config.get("docker") or {}
    images = [docker.get("image", "")] + [
        (nt.get("docker") or {}).get("worker_image", "")
        for nt in config["available_node_types"].values()
    ]
    for image in filter(None, images):
        assert image.startswith(f"rayproject/ray:{RAY_MINOR}"), image


@pytest.mark.parametrize("name", _ray_up_names() + _kuberay_names())
def test_example_queues_have_pools(name):
    queues = example_queues()
    if "kuberay" in name:
        node_types, head = _kuberay_node_types(name)
    else:
        config = prepared(name)
        node_types = {n: nt["resources"] for n, nt in config["available_node_types"].items()}
        head = config["head_node_type"]
    problems = queue_coverage_problems(node_types, head, queues)
    assert not problems, "\n".join(problems)


def test_configs_serve_the_same_queues_and_gpu_markets():
    """aws, gcp and kuberay offer the same queues in the same markets."""
    offered = {}
    for name in _ray_up_names() + _kuberay_names():
        if "kuberay" in name:
            node_types, head = _kuberay_node_types(name)
        else:
            config = prepared(name)
            node_types = {n: nt["resources"] for n, nt in config["available_node_types"].items()}
            head = config["head_node_type"]
        offered[name] = {
            (q, m, bool(accelerators_of(r)))
            for n, r in node_types.items()
            if n != head
            for q in queues_of(r)
            for m in markers_of(r)
        }
    first = next(iter(offered.values()))
    for name, offers in offered.items():
        assert offers == first, f"{name} differs: {sorted(offers ^ first)}"


# --------------------------------------------------------------- KubeRay ---
def _kuberay_autoscaling_config(name: str) -> dict:
    cr = copy.deepcopy(_load(name))
    cr.setdefault("metadata", {}).setdefault("namespace", "default")
    # Ray's autoscaler path: parses rayStartParams and runs validate_config.
    return _derive_autoscaling_config_from_ray_cr(cr)


def _kuberay_node_types(name: str) -> Tuple[Dict[str, Dict[str, Any]], str]:
    config = _kuberay_autoscaling_config(name)
    return (
        {n: nt["resources"] for n, nt in config["available_node_types"].items()},
        config["head_node_type"],
    )


def _pod_market(pod_spec: dict) -> Tuple[bool, bool, bool]:
    """(selects spot nodes, tolerates spot taint, excludes spot nodes)."""
    selector = pod_spec.get("nodeSelector") or {}
    selects = any(selector.get(k) == v for k, v in SPOT_LABELS.items())
    excludes = selector.get(EKS_CAPACITY_LABEL) == "ON_DEMAND" or selector.get(GKE_SPOT_LABEL) == "false"
    required = (
        ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    for term in required:
        for expr in term.get("matchExpressions", []):
            key, op, values = expr["key"], expr["operator"], expr.get("values", [])
            if key not in SPOT_LABELS:
                continue
            if op == "In" and SPOT_LABELS[key] in values:
                selects = True
            if op == "DoesNotExist" or (op == "NotIn" and SPOT_LABELS[key] in values):
                excludes = True
            if key == EKS_CAPACITY_LABEL and op == "In" and values == ["ON_DEMAND"]:
                excludes = True
    tolerates = any(
        t.get("key") in SPOT_LABELS or (t.get("operator") == "Exists" and not t.get("key"))
        for t in pod_spec.get("tolerations") or []
    )
    return selects, tolerates, excludes


def kuberay_problems(cr: dict) -> List[str]:
    p: List[str] = []
    if cr.get("apiVersion") != "ray.io/v1" or cr.get("kind") != "RayCluster":
        p.append("must be apiVersion ray.io/v1, kind RayCluster")
    spec = cr["spec"]
    if not str(spec.get("rayVersion")).startswith(RAY_MINOR):
        p.append(f"rayVersion {spec.get('rayVersion')!r} is not Ray {RAY_MINOR}x")
    groups = [("head", spec["headGroupSpec"], True)] + [
        (g["groupName"], g, False) for g in spec["workerGroupSpecs"]
    ]
    auth_modes: Set[str] = set()
    for env in (spec.get("autoscalerOptions") or {}).get("env", []):
        if env.get("name") == "RAY_AUTH_MODE":
            auth_modes.add(env.get("value"))
    if spec.get("enableInTreeAutoscaling") and not auth_modes:
        p.append("autoscalerOptions.env must set RAY_AUTH_MODE like the Ray containers")
    for name, group, is_head in groups:
        params = group.get("rayStartParams") or {}
        raw = params.get("resources")
        if not (isinstance(raw, str) and raw.startswith('"') and raw.endswith('"')):
            p.append(f"{name}: rayStartParams.resources must be a quoted JSON string like '\"{{\\\"spot\\\": 1000}}\"', got {raw!r}")
        if is_head and str(params.get("num-cpus")) != "0":
            p.append(f"{name}: head needs rayStartParams num-cpus: \"0\"")
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        image = container.get("image", "")
        if not image.startswith(f"rayproject/ray:{RAY_MINOR}") and "flyte" not in image:
            p.append(f"{name}: image {image!r} is not Ray {RAY_MINOR}x")
        limits = (container.get("resources") or {}).get("limits") or {}
        wants_gpu = "nvidia.com/gpu" in limits
        if wants_gpu and "gpu" not in image:
            p.append(f"{name}: GPU group runs the non-GPU image {image!r}")
        gke_accel = (pod.get("nodeSelector") or {}).get(GKE_ACCEL_LABEL)
        if gke_accel:
            if not wants_gpu:
                p.append(f"{name}: selects GPU nodes but requests no nvidia.com/gpu")
            if raw and GCP_ACCELERATORS.get(gke_accel) and f"{ACCEL_PREFIX}{GCP_ACCELERATORS[gke_accel]}" not in raw:
                p.append(f"{name}: nodes have {gke_accel}, resources lack {ACCEL_PREFIX}{GCP_ACCELERATORS[gke_accel]}")
        for c in pod["containers"]:
            modes = {e.get("value") for e in c.get("env", []) if e.get("name") == "RAY_AUTH_MODE"}
            if not modes:
                p.append(f"{name}/{c['name']}: RAY_AUTH_MODE not set")
            auth_modes |= modes
        market = "spot" if raw and '\\"spot\\"' in raw else "ondemand"
        selects, tolerates, excludes = _pod_market(pod)
        if market == "spot":
            if not selects:
                p.append(f"{name}: spot group without a spot nodeSelector/affinity")
            if excludes:
                p.append(f"{name}: spot group excludes spot nodes")
            if GKE_SPOT_LABEL in (pod.get("nodeSelector") or {}) and not tolerates:
                p.append(f"{name}: GKE spot group without the gke-spot toleration")
        else:
            if selects or tolerates:
                p.append(f"{name}: on-demand group selects or tolerates spot nodes")
            if not excludes:
                p.append(f"{name}: on-demand group does not keep off spot nodes")
    if len(auth_modes) != 1:
        p.append(f"RAY_AUTH_MODE must be one value everywhere, got {auth_modes}")
    return p


def _kuberay_env_lists(cr: dict) -> List[Tuple[str, List[dict]]]:
    """(where, env list) of every Ray container, init container and of the
    autoscaler sidecar (autoscalerOptions.env)."""
    spec = cr["spec"]
    out: List[Tuple[str, List[dict]]] = []
    if spec.get("enableInTreeAutoscaling"):
        out.append(("autoscalerOptions", (spec.get("autoscalerOptions") or {}).get("env") or []))
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for name, group in groups:
        pod = group["template"]["spec"]
        for c in (pod.get("initContainers") or []) + pod["containers"]:
            out.append((f"{name}/{c['name']}", c.get("env") or []))
    return out


def kuberay_token_problems(cr: dict) -> List[str]:
    """RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from one Secret in every
    container (and the autoscaler); no token value in the manifest."""
    p: List[str] = []
    refs: Set[Tuple[str, str]] = set()
    for where, env in _kuberay_env_lists(cr):
        by_name = {e.get("name"): e for e in env}
        if (by_name.get("RAY_AUTH_MODE") or {}).get("value") != "token":
            p.append(f"{where}: RAY_AUTH_MODE must be token")
        token = by_name.get("RAY_AUTH_TOKEN")
        ref = ((token or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        if not token:
            p.append(f"{where}: no RAY_AUTH_TOKEN")
        elif "value" in token or not (ref.get("name") and ref.get("key")):
            p.append(f"{where}: RAY_AUTH_TOKEN must come from a Secret (valueFrom.secretKeyRef), not a value")
        else:
            refs.add((ref["name"], ref["key"]))
        if "RAY_AUTH_TOKEN_PATH" in by_name:
            p.append(f"{where}: RAY_AUTH_TOKEN_PATH is ignored while RAY_AUTH_TOKEN is set; drop it")
    if len(refs) > 1:
        p.append(f"containers read different Secrets {sorted(refs)}: one shared token is needed")
    return p


def kuberay_dashboard_problems(cr: dict) -> List[str]:
    """KubeRay sets dashboard-host 0.0.0.0 on the head unless the manifest
    says otherwise, so loopback must be explicit."""
    spec = cr["spec"]
    p: List[str] = []
    host = (spec["headGroupSpec"].get("rayStartParams") or {}).get("dashboard-host")
    if host not in LOOPBACK_HOSTS:
        p.append(f"head: rayStartParams dashboard-host must be loopback (KubeRay's default is 0.0.0.0), got {host!r}")
    for g in spec["workerGroupSpecs"]:
        h = (g.get("rayStartParams") or {}).get("dashboard-host")
        if h is not None and h not in LOOPBACK_HOSTS:
            p.append(f"{g['groupName']}: dashboard-host {h!r}")
    return p


def _selects_cluster(selector: Optional[dict], cluster: str) -> bool:
    """Whether a pod selector selects (at least) all pods of the RayCluster."""
    if selector is None:
        return False
    if selector.get("matchExpressions"):
        return False
    labels = selector.get("matchLabels") or {}
    return all(k == KUBERAY_CLUSTER_LABEL and v == cluster for k, v in labels.items())


def _is_cluster_peer(peer: dict, cluster: str) -> bool:
    """A `from` peer that is exactly the pods of this RayCluster."""
    sel = peer.get("podSelector")
    return (
        set(peer) == {"podSelector"}
        and (sel or {}).get("matchLabels", {}).get(KUBERAY_CLUSTER_LABEL) == cluster
    )


def _open_peer(peer: dict) -> Optional[str]:
    """Why a `from` peer admits (nearly) anyone, or None."""
    if not peer:
        return "an empty peer {}"
    block = peer.get("ipBlock")
    if block is not None:
        if block.get("cidr") in ("0.0.0.0/0", "::/0"):
            return f"ipBlock {block.get('cidr')}"
        return None
    ns, pods = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns is not None and not ns and not pods:
        return "namespaceSelector {} (every pod of every namespace)"
    if ns is None and pods is not None and not pods:
        return "podSelector {} (every pod of the namespace)"
    return None


def network_policy_problems(cluster: str, policies: Dict[str, dict]) -> List[str]:
    """Ingress to the RayCluster's pods only from its own pods and, on the
    client ports, from labelled client pods; no allow-all rule."""
    p: List[str] = []
    applying = {
        n: np for n, np in policies.items()
        if _selects_cluster((np.get("spec") or {}).get("podSelector"), cluster)
    }
    if not applying:
        return [f"no NetworkPolicy selects the pods of RayCluster {cluster!r} ({KUBERAY_CLUSTER_LABEL}: {cluster})"]
    isolates = False
    cluster_rule = client_rule = False
    for n, np in applying.items():
        spec = np["spec"]
        types = spec.get("policyTypes") or ["Ingress"]
        if "Ingress" in types:
            isolates = True
        for i, rule in enumerate(spec.get("ingress") or []):
            where = f"{n}: ingress[{i}]"
            peers = rule.get("from")
            ports = rule.get("ports")
            if not peers:
                p.append(f"{where} has no `from`: it admits every source")
                continue
            for peer in peers:
                why = _open_peer(peer)
                if why:
                    p.append(f"{where} admits {why}")
            if all(_is_cluster_peer(peer, cluster) for peer in peers):
                cluster_rule = cluster_rule or not ports
                continue
            numbers = {pt.get("port") for pt in ports or []}
            if not ports or not numbers <= CLIENT_PORTS:
                p.append(f"{where} admits pods outside the RayCluster on ports {sorted(numbers, key=str) or 'all'}; "
                         f"only {sorted(CLIENT_PORTS)} are for clients")
            if any(pt.get("protocol", "TCP") != "TCP" for pt in ports or []):
                p.append(f"{where}: client ports are TCP")
            client_rule = client_rule or 10001 in numbers
    if not isolates:
        p.append("no policy selecting the RayCluster's pods has policyType Ingress")
    if not cluster_rule:
        p.append("no rule admits the RayCluster's own pods on all ports (Ray's nodes could not talk)")
    if not client_rule:
        p.append("no rule admits clients to the Ray Client port 10001")
    return p


@pytest.mark.parametrize("name", _kuberay_names())
def test_kuberay_passes_ray_parsing_and_validation(name):
    config = _kuberay_autoscaling_config(name)
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("name", _kuberay_names())
def test_kuberay_follows_convention(name):
    cr = _load(name)
    node_types, head = _kuberay_node_types(name)
    problems = kuberay_problems(cr)
    for n, resources in node_types.items():
        problems += resource_problems(n, resources, n == head)
    problems += fallback_problems(node_types, head)
    assert not problems, "\n".join(problems)


# ----------------------------------------------------- closed by default ---
@pytest.mark.parametrize("name", _ray_up_names())
def test_ray_up_uses_token_auth_on_every_node(name):
    problems = ray_up_token_problems(prepared(name))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", _ray_up_names())
def test_ray_up_dashboard_is_not_public(name):
    problems = dashboard_host_problems(prepared(name))
    assert not problems, "\n".join(problems)
    assert "dashboard-host=0.0.0.0" not in (CONFIG_DIR / name).read_text()


@pytest.mark.parametrize("name", _ray_up_names())
def test_ray_up_restricts_the_network(name):
    config = prepared(name)
    problems = NETWORK_PROBLEMS[config["provider"]["type"]](config)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", _kuberay_names())
def test_kuberay_uses_token_auth_from_one_secret(name):
    cr = _load(name)
    problems = kuberay_token_problems(cr) + kuberay_dashboard_problems(cr)
    assert not problems, "\n".join(problems)
    text = (CONFIG_DIR / name).read_text()
    assert "0.0.0.0" not in "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("name", _kuberay_names())
def test_kuberay_has_a_network_policy(name):
    cr = _load(name)
    policies = _network_policies()
    problems = network_policy_problems(cr["metadata"]["name"], policies)
    assert not problems, "\n".join(problems)
    namespace = cr["metadata"].get("namespace")
    for np in policies.values():
        # A policy only applies to pods of its own namespace.
        assert np["metadata"].get("namespace") == namespace


def test_closed_by_default_checks_catch_mistakes():
    def ray_up(name, mutate, check):
        config = _load(name)
        mutate(config)
        return check(prepare_config(config))

    nts = lambda c: c["available_node_types"]  # noqa: E731
    for name in _ray_up_names():
        assert ray_up(name, lambda c: None, ray_up_token_problems) == []
        assert ray_up(name, lambda c: None, dashboard_host_problems) == []
        # a start command without token mode
        assert ray_up(name, lambda c: c.update(worker_start_ray_commands=[
            x.replace("RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled") for x in c["worker_start_ray_commands"]
        ]), ray_up_token_problems)
        # the container without token mode
        assert ray_up(name, lambda c: c["docker"].update(run_options=["--ulimit nofile=65536:65536"]),
                      ray_up_token_problems)
        # the token not shipped
        assert ray_up(name, lambda c: c.update(file_mounts={}), ray_up_token_problems)
        # a token (or another token file) in the config
        assert ray_up(name, lambda c: c["docker"]["run_options"].append("-e RAY_AUTH_TOKEN=abc"),
                      ray_up_token_problems)
        # a public dashboard
        assert ray_up(name, lambda c: c["head_start_ray_commands"].append(
            "ray start --head --dashboard-host=0.0.0.0"), dashboard_host_problems)
        assert ray_up(name, lambda c: c["head_start_ray_commands"].append(
            "ray start --head --dashboard-host 0.0.0.0"), dashboard_host_problems)

    aws = lambda m: ray_up("aws-spot.yaml", m, aws_network_problems)  # noqa: E731
    assert aws(lambda c: None) == []
    assert aws(lambda c: nts(c)["cpu-spot"]["node_config"].pop("SecurityGroupIds"))
    assert aws(lambda c: nts(c)["cpu-spot"]["node_config"].update(SecurityGroupIds=["sg-other"]))
    assert aws(lambda c: nts(c)["head"]["node_config"].update(SecurityGroupIds=["sg-a", "sg-b"]))

    gcp = lambda m: ray_up("gcp-spot.yaml", m, gcp_network_problems)  # noqa: E731
    assert gcp(lambda c: None) == []
    # a worker with an external IP
    assert gcp(lambda c: nts(c).update({"cpu-spot": {**nts(c)["cpu-spot"], "node_config": {
        **nts(c)["cpu-spot"]["node_config"],
        "networkInterfaces": [{"subnetwork": "regions/us-central1/subnetworks/flyte-ray",
                               "accessConfigs": [{"type": "ONE_TO_ONE_NAT"}]}]}}}))
    # no networkInterfaces: Ray's default (first subnet, external IP)
    assert gcp(lambda c: nts(c)["cpu-spot"].update(node_config={
        k: v for k, v in nts(c)["cpu-spot"]["node_config"].items() if k != "networkInterfaces"}))
    # no tag / no common tag
    assert gcp(lambda c: nts(c)["etl-pool"].update(node_config={
        k: v for k, v in nts(c)["etl-pool"]["node_config"].items() if k != "tags"}))
    assert gcp(lambda c: nts(c)["etl-pool"]["node_config"].update(tags={"items": ["other"]}))
    # the default network, another region
    def move_all(where):
        def mutate(c):
            for nt in nts(c).values():
                nt["node_config"]["networkInterfaces"] = [
                    {**nt["node_config"]["networkInterfaces"][0], "subnetwork": where}]
        return mutate

    assert gcp(move_all("global/networks/default"))
    assert gcp(move_all("regions/europe-west4/subnetworks/flyte-ray"))
    # head without an external IP and without use_internal_ips
    assert gcp(lambda c: nts(c)["head"]["node_config"].update(
        networkInterfaces=[{"subnetwork": "regions/us-central1/subnetworks/flyte-ray"}]))


def test_kuberay_closed_by_default_checks_catch_mistakes():
    name = _kuberay_names()[0]
    assert kuberay_token_problems(_load(name)) == []
    assert kuberay_dashboard_problems(_load(name)) == []

    def worker_env(cr):
        return cr["spec"]["workerGroupSpecs"][-1]["template"]["spec"]["containers"][0]["env"]

    cr = _load(name)
    worker_env(cr)[:] = [e for e in worker_env(cr) if e["name"] != "RAY_AUTH_TOKEN"]
    assert kuberay_token_problems(cr)
    cr = _load(name)
    worker_env(cr)[:] = [e for e in worker_env(cr) if e["name"] != "RAY_AUTH_TOKEN"] + [
        {"name": "RAY_AUTH_TOKEN", "value": "abc"}]
    assert kuberay_token_problems(cr)
    cr = _load(name)
    for e in worker_env(cr):
        if e["name"] == "RAY_AUTH_TOKEN":
            e["valueFrom"] = {"secretKeyRef": {"name": "another-secret", "key": "auth_token"}}
    assert kuberay_token_problems(cr)
    cr = _load(name)
    cr["spec"]["autoscalerOptions"]["env"] = [{"name": "RAY_AUTH_MODE", "value": "token"}]
    assert kuberay_token_problems(cr)
    cr = _load(name)
    worker_env(cr)[0]["value"] = "disabled"
    assert kuberay_token_problems(cr)

    cr = _load(name)
    cr["spec"]["headGroupSpec"]["rayStartParams"].pop("dashboard-host")
    assert kuberay_dashboard_problems(cr)  # KubeRay would bind 0.0.0.0
    cr["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] = "0.0.0.0"
    assert kuberay_dashboard_problems(cr)

    cluster = _load(name)["metadata"]["name"]
    policies = _network_policies()
    assert network_policy_problems(cluster, policies) == []

    def mutated(mutate):
        ps = copy.deepcopy(policies)
        mutate(next(iter(ps.values()))["spec"])
        return network_policy_problems(cluster, ps)

    assert mutated(lambda s: s["ingress"].append({}))                                  # allow all
    assert mutated(lambda s: s["ingress"].append({"from": [{"namespaceSelector": {}}]}))
    assert mutated(lambda s: s["ingress"].append({"from": [{"podSelector": {}}]}))
    assert mutated(lambda s: s["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}))
    assert mutated(lambda s: s["ingress"][1].pop("ports"))                             # clients on every port
    assert mutated(lambda s: s["ingress"][1]["ports"].append({"protocol": "TCP", "port": 8080}))
    assert mutated(lambda s: s["ingress"].pop(0))                                      # nodes cannot talk
    assert mutated(lambda s: s["ingress"].pop(1))                                      # no client port
    assert mutated(lambda s: s.update(podSelector={"matchLabels": {KUBERAY_CLUSTER_LABEL: "other"}}))
    assert mutated(lambda s: s.update(policyTypes=["Egress"]))
    assert network_policy_problems(cluster, {})


# ------------------------------------- the checks do catch broken configs ---
def _aws() -> dict:
    return _load("aws-spot.yaml")


def _first_worker(config: dict, market: str) -> str:
    return next(
        n for n, nt in config["available_node_types"].items()
        if n != config["head_node_type"] and market in nt["resources"]
    )


def test_ray_validation_rejects_broken_configs():
    import jsonschema

    bad = _aws()
    bad["available_node_types"]["cpu-spot"]["resources"]["CPU"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))

    bad = _aws()
    bad["available_node_types"]["cpu-spot"]["node_confg"] = {}  # typo
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))

    bad = _aws()
    bad["head_node_type"] = "no-such-type"
    with pytest.raises((ValueError, KeyError)):
        validate_config(prepare_config(bad))

    with pytest.raises(yaml.YAMLError):
        yaml.safe_load((CONFIG_DIR / "aws-spot.yaml").read_text() + "\n  : - [\n")


def test_convention_checks_catch_mistakes():
    def problems_after(mutate) -> List[str]:
        config = _aws()
        mutate(config)
        return ray_up_problems(prepare_config(config))

    assert problems_after(lambda c: None) == []
    nts = lambda c: c["available_node_types"]  # noqa: E731

    # both markers
    assert problems_after(lambda c: nts(c)["cpu-spot"]["resources"].update(ondemand=1000))
    # marker says spot, instance is on-demand
    assert problems_after(lambda c: nts(c)["cpu-spot"]["node_config"].pop("InstanceMarketOptions"))
    # spot head
    assert problems_after(lambda c: nts(c)["head"]["node_config"].update(
        InstanceMarketOptions={"MarketType": "spot"}))
    # head serving a queue / with CPUs
    assert problems_after(lambda c: nts(c)["head"]["resources"].update({"queue:default": 1000}))
    assert problems_after(lambda c: nts(c)["head"]["resources"].update(CPU=4))
    # worker without a queue
    assert problems_after(lambda c: nts(c)["cpu-ondemand"]["resources"].pop("queue:default"))
    # GPU type missing / wrong / wrong count
    assert problems_after(lambda c: nts(c)["gpu-spot"]["resources"].pop("accelerator_type:A10G"))
    assert problems_after(lambda c: nts(c)["gpu-spot"]["resources"].update(
        {"accelerator_type:A10G": 0, "accelerator_type:T4": 1}))
    assert problems_after(lambda c: nts(c)["gpu-spot"]["resources"].update(GPU=2))
    assert problems_after(lambda c: nts(c)["cpu-spot"]["resources"].update(GPU=1))
    # spot-only GPU type: no on-demand fallback for the final attempt
    def spot_only_gpu(c):
        nts(c)["gpu-ondemand"]["resources"]["accelerator_type:T4"] = 1
        del nts(c)["gpu-ondemand"]["resources"]["accelerator_type:A10G"]
        nts(c)["gpu-ondemand"]["node_config"]["InstanceType"] = "g4dn.xlarge"
    assert any("no on-demand" in x for x in problems_after(spot_only_gpu))

    # queue from examples without an on-demand pool
    node_types = {n: nt["resources"] for n, nt in _aws()["available_node_types"].items()}
    assert queue_coverage_problems(node_types, "head", {"etl"}) == []
    assert queue_coverage_problems(node_types, "head", {"no-such-queue"})

    # GCP: spot marker without spot scheduling and vice versa
    gcp = _load("gcp-spot.yaml")
    gcp["available_node_types"]["cpu-spot"]["node_config"].pop("scheduling")
    gcp["available_node_types"]["cpu-ondemand"]["node_config"]["scheduling"] = [{"preemptible": True}]
    found = ray_up_problems(prepare_config(gcp))
    assert any(x.startswith("cpu-spot:") for x in found)
    assert any(x.startswith("cpu-ondemand:") for x in found)

    # auth modes that disagree
    config = _aws()
    config["worker_start_ray_commands"] = [
        c.replace("RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled")
        for c in config["worker_start_ray_commands"]
    ]
    assert ray_up_auth_problems(prepare_config(config))


def test_kuberay_checks_catch_mistakes():
    name = _kuberay_names()[0]
    assert kuberay_problems(_load(name)) == []

    cr = _load(name)
    spot = next(g for g in cr["spec"]["workerGroupSpecs"] if '\\"spot\\"' in g["rayStartParams"]["resources"])
    spot["template"]["spec"].pop("nodeSelector")
    assert kuberay_problems(cr)

    cr = _load(name)
    ondemand = next(g for g in cr["spec"]["workerGroupSpecs"] if '\\"ondemand\\"' in g["rayStartParams"]["resources"])
    ondemand["template"]["spec"]["nodeSelector"] = {GKE_SPOT_LABEL: "true"}
    assert kuberay_problems(cr)

    # Unquoted JSON: Ray's own parser rejects it.
    cr = _load(name)
    cr["metadata"]["namespace"] = "default"
    cr["spec"]["workerGroupSpecs"][0]["rayStartParams"]["resources"] = '{"spot": 1000}'
    assert kuberay_problems(cr)
    with pytest.raises(Exception):
        _derive_autoscaling_config_from_ray_cr(cr)


def test_example_queue_scan(tmp_path, monkeypatch):
    """The examples/ scan finds queue="..." and queue='...' (and copes with
    an empty or missing examples/ directory)."""
    monkeypatch.setitem(globals(), "EXAMPLES_DIR", tmp_path / "missing")
    assert example_queues() == set()
    monkeypatch.setitem(globals(), "EXAMPLES_DIR", tmp_path)
    assert example_queues() == set()
    (tmp_path / "wf.py").write_text(
        "@task(queue=\"etl\", interruptible=True)\ndef a(): ...\n"
        "@task(queue = 'ml-train')\ndef b(): ...\n"
        "x = subqueue='nope'\n"
    )
    assert example_queues() == {"etl", "ml-train"}
    node_types = {n: nt["resources"] for n, nt in _aws()["available_node_types"].items()}
    assert queue_coverage_problems(node_types, "head", example_queues()) == [
        "queue 'ml-train' (used in examples/) has no on-demand pool"
    ]


# ============================================ install path, node labels, shared storage ===
# Install: no node installs flyte-ray; every node installs Ray (pinned) and flyte-ray's own
# dependencies from pyproject.toml (flyte_ray.init(address=...) ships the package itself:
# flyte_ray/_ray/ship.py). Labels: Ray 2.60 turns RAY_NODE_MARKET_TYPE in the environment of
# `ray start` into the label ray.io/market-type (ray/_private/resource_and_label_spec.py); the
# node types also declare it in `labels` (the autoscaler matches label selectors against node
# types before a node exists), with one flyte-ray.io/queue-<name>: "true" per queue and Ray's own
# ray.io/accelerator-type on GPU nodes. Storage: FLYTE_RAY_STORAGE (s3:// or gs://) on every node,
# and every worker with the cloud identity that reaches it.
from ray._private.label_utils import validate_label_key, validate_label_value  # noqa: E402

MARKET_LABEL = "ray.io/market-type"
MARKET_VALUES = {"spot": "spot", "ondemand": "on-demand"}   # resource marker -> label value
ACCEL_LABEL = "ray.io/accelerator-type"
QUEUE_LABEL_PREFIX = "flyte-ray.io/queue-"
MARKET_ENV_RE = re.compile(r"\bRAY_NODE_MARKET_TYPE=([A-Za-z0-9_.-]+)")
STORAGE_ENV_RE = re.compile(r"\bFLYTE_RAY_STORAGE=(\S+)")
SHARED_SCHEMES = ("s3://", "gs://")
FLYTE_RAY_INSTALL_RE = re.compile(r"pip[^;&|]*\binstall\b[^;&|]*\bflyte[-_]ray\b", re.I)
GCS_WRITE_SCOPES = {"https://www.googleapis.com/auth/devstorage.read_write",
                    "https://www.googleapis.com/auth/devstorage.full_control",
                    "https://www.googleapis.com/auth/cloud-platform"}


def _requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def flyte_ray_dependencies() -> List[str]:
    """flyte-ray's dependencies (pyproject.toml), as requirement names, Ray apart."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [_requirement_name(d) for d in deps if _requirement_name(d) != "ray"]


def install_problems(commands: List[str], where: str) -> List[str]:
    """Commands that run on a node: they install Ray at this version and every dependency of
    flyte-ray, and never flyte-ray itself."""
    p: List[str] = []
    text = "\n".join(commands)
    for cmd in commands:
        if FLYTE_RAY_INSTALL_RE.search(cmd):
            p.append(f"{where}: installs flyte-ray ({cmd!r}); no index serves it: drivers ship it")
    installs = [c for c in commands if re.search(r"\bpip\b[^;&|]*\binstall\b", c)]
    words = {_requirement_name(w.strip("'\"")) for c in installs for w in c.split() if not w.startswith("-")}
    if f"ray[default]=={ray.__version__}" not in text.replace("'", "").replace('"', ""):
        p.append(f"{where}: no `pip install \"ray[default]=={ray.__version__}\"` (keeps pip from moving Ray)")
    for dep in flyte_ray_dependencies():
        if dep not in words:
            p.append(f"{where}: flyte-ray's dependency {dep!r} is not installed")
    return p


def ray_up_install_problems(config: dict) -> List[str]:
    node_cmds = list(config.get("setup_commands") or [])
    p = install_problems(node_cmds, "setup_commands")
    everything = node_cmds + list(config.get("head_setup_commands") or []) + list(
        config.get("worker_setup_commands") or []) + list(config.get("initialization_commands") or [])
    for nt in config["available_node_types"].values():
        everything += list(nt.get("worker_setup_commands") or []) + list(nt.get("initialization_commands") or [])
    p += [x for x in install_problems(everything, "commands") if "installs flyte-ray" in x]
    for target, source in (config.get("file_mounts") or {}).items():
        if (target, source) == WATCHER_MOUNT:
            continue  # the preemption watcher's folder, not flyte-ray (ray_up_watcher_mount_problems)
        if "flyte_ray" in f"{target} {source}" or "dist" in str(source).split("/"):
            p.append(f"file_mounts {target!r}: flyte-ray reaches the workers from the driver, not from a mount")
    return p


def label_problems(name: str, resources: Dict[str, Any], labels: Dict[str, str],
                   market_env: List[str]) -> List[str]:
    """One node type's labels against its resources, and the RAY_NODE_MARKET_TYPE of its ray start."""
    p: List[str] = []
    for key, value in labels.items():
        err = validate_label_key(key)
        if err:
            p.append(f"{name}: Ray rejects label key {key!r}: {err}")
        try:
            validate_label_value(value)
        except ValueError as e:
            p.append(f"{name}: Ray rejects the value of {key!r}: {e}")
    markers = markers_of(resources)
    want = MARKET_VALUES[markers[0]] if len(markers) == 1 else None
    if labels.get(MARKET_LABEL) != want:
        p.append(f"{name}: label {MARKET_LABEL}={labels.get(MARKET_LABEL)!r}, its marker says {want!r}")
    if market_env != [want]:
        p.append(f"{name}: ray start runs with RAY_NODE_MARKET_TYPE={market_env}, its marker says {want!r}")
    queue_labels = {k[len(QUEUE_LABEL_PREFIX):]: v for k, v in labels.items() if k.startswith(QUEUE_LABEL_PREFIX)}
    if set(queue_labels) != queues_of(resources):
        p.append(f"{name}: queue labels {sorted(queue_labels)} differ from queue resources {sorted(queues_of(resources))}")
    for q, v in queue_labels.items():
        if v != "true":
            p.append(f"{name}: {QUEUE_LABEL_PREFIX}{q} must be \"true\", got {v!r}")
    accels = accelerators_of(resources)
    if labels.get(ACCEL_LABEL) != (next(iter(accels)) if len(accels) == 1 else None):
        p.append(f"{name}: label {ACCEL_LABEL}={labels.get(ACCEL_LABEL)!r}, resources declare {sorted(accels)}")
    return p


def _ray_up_run_options(config: dict, name: str) -> List[str]:
    """The docker run options of one node type's container (global + head or worker + node type)."""
    docker = config.get("docker") or {}
    opts = list(docker.get("run_options") or [])
    if name == config["head_node_type"]:
        return opts + list(docker.get("head_run_options") or [])
    return opts + list(docker.get("worker_run_options") or []) + list(
        (config["available_node_types"][name].get("docker") or {}).get("worker_run_options") or [])


def ray_up_label_problems(config: dict) -> List[str]:
    p: List[str] = []
    for name, nt in config["available_node_types"].items():
        env = [m for opt in _ray_up_run_options(config, name) for m in MARKET_ENV_RE.findall(opt)]
        env += [m for _, cmd in _start_commands(config) for m in MARKET_ENV_RE.findall(cmd)]
        p += label_problems(name, nt.get("resources", {}), nt.get("labels") or {}, env)
    return p


def storage_problems(values: List[str], where: str) -> List[str]:
    if len(values) != 1:
        return [f"{where}: FLYTE_RAY_STORAGE set {len(values)} times, expected once: {values}"]
    if not values[0].startswith(SHARED_SCHEMES):
        return [f"{where}: FLYTE_RAY_STORAGE={values[0]!r} is not shared storage ({' or '.join(SHARED_SCHEMES)})"]
    return []


def ray_up_storage_problems(config: dict) -> List[str]:
    """FLYTE_RAY_STORAGE in every node's container, and each worker with the identity that reaches it."""
    p: List[str] = []
    provider = config["provider"]["type"]
    urls = set()
    for name in config["available_node_types"]:
        found = [m for opt in _ray_up_run_options(config, name) for m in STORAGE_ENV_RE.findall(opt)]
        p += storage_problems(found, name)
        urls.update(found)
    if len(urls) > 1:
        p.append(f"node types use different storage {sorted(urls)}")
    scheme = {"aws": "s3://", "gcp": "gs://"}[provider]
    if urls and not all(u.startswith(scheme) for u in urls):
        p.append(f"{provider}: storage {sorted(urls)} is not {scheme} (the identities below are for it)")
    identities = set()
    for name, nt in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue  # ray up gives the head its own identity (ray-autoscaler-v1 / ray-autoscaler-sa-v1)
        node_config = nt.get("node_config") or {}
        if provider == "aws":
            profile = node_config.get("IamInstanceProfile") or {}
            if not (profile.get("Name") or profile.get("Arn")):
                p.append(f"{name}: no IamInstanceProfile: Ray gives workers none, so they cannot reach {scheme}")
            identities.add(json.dumps(profile, sort_keys=True))
        else:
            accounts = node_config.get("serviceAccounts") or []
            scopes = {sc for a in accounts for sc in a.get("scopes") or []}
            if not accounts or not accounts[0].get("email"):
                p.append(f"{name}: no serviceAccounts: the default account's scopes cannot write to {scheme}")
            elif not scopes & GCS_WRITE_SCOPES:
                p.append(f"{name}: service account scopes {sorted(scopes)} cannot write Cloud Storage")
            identities.add(json.dumps(accounts, sort_keys=True))
    if len(identities) > 1:
        p.append(f"worker node types use different identities {sorted(identities)}")
    return p


def _kuberay_groups(cr: dict) -> List[Tuple[str, dict]]:
    spec = cr["spec"]
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


def _env_value(container: dict, name: str) -> List[str]:
    return [e.get("value") for e in container.get("env") or [] if e.get("name") == name]


def kuberay_install_problems(cr: dict) -> List[str]:
    """Ray containers: Ray's image, flyte-ray's dependencies installed, then KubeRay's own ray start."""
    p: List[str] = []
    overwrite = (cr.get("metadata", {}).get("annotations") or {}).get("ray.io/overwrite-container-cmd")
    for name, group in _kuberay_groups(cr):
        c = group["template"]["spec"]["containers"][0]
        args = " ".join(c.get("args") or [])
        if c.get("command") or c.get("args"):
            if overwrite != "true":
                p.append(f"{name}: command/args without ray.io/overwrite-container-cmd: \"true\" (KubeRay would ignore them)")
            if "$KUBERAY_GEN_RAY_START_CMD" not in args:
                p.append(f"{name}: args do not run KubeRay's generated ray start ($KUBERAY_GEN_RAY_START_CMD)")
            p += install_problems([args], name)
        elif not c.get("image", "").startswith(f"rayproject/ray:{RAY_MINOR}"):
            continue  # an image of your own: it must hold the dependencies (README, "KubeRay")
        else:
            p.append(f"{name}: Ray's image without flyte-ray's dependencies (no install before ray start)")
    return p


def kuberay_label_problems(cr: dict) -> List[str]:
    p: List[str] = []
    for name, group in _kuberay_groups(cr):
        raw = (group.get("rayStartParams") or {}).get("resources", "")
        resources = json.loads(raw.strip('"').replace("\\", "")) if raw else {}
        container = group["template"]["spec"]["containers"][0]
        p += label_problems(name, resources, group.get("labels") or {}, _env_value(container, "RAY_NODE_MARKET_TYPE"))
        if (group.get("rayStartParams") or {}).get("labels"):
            p.append(f"{name}: rayStartParams.labels is ignored by Ray's autoscaler; use the group's labels")
    return p


def kuberay_storage_problems(cr: dict) -> List[str]:
    p: List[str] = []
    urls, accounts = set(), set()
    for name, group in _kuberay_groups(cr):
        pod = group["template"]["spec"]
        found = _env_value(pod["containers"][0], "FLYTE_RAY_STORAGE")
        p += storage_problems(found, name)
        urls.update(found)
        if not pod.get("serviceAccountName"):
            p.append(f"{name}: no serviceAccountName: the pods have no identity for the storage")
        accounts.add(pod.get("serviceAccountName"))
    if len(urls) > 1:
        p.append(f"groups use different storage {sorted(urls)}")
    if len(accounts) > 1:
        p.append(f"groups use different service accounts {sorted(accounts, key=str)}")
    return p


@pytest.mark.parametrize("name", _ray_up_names())
def test_ray_up_node_labels(name):
    problems = ray_up_label_problems(prepared(name))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", _ray_up_names())
def test_ray_up_shared_storage(name):
    problems = ray_up_storage_problems(prepared(name))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", _kuberay_names())
def test_kuberay_install_labels_and_storage(name):
    cr = _load(name)
    problems = kuberay_install_problems(cr) + kuberay_label_problems(cr) + kuberay_storage_problems(cr)
    assert not problems, "\n".join(problems)
    # Ray's own KubeRay parser hands the group labels to the autoscaler
    node_types = _kuberay_autoscaling_config(name)["available_node_types"]
    assert all(nt["labels"].get(MARKET_LABEL) in MARKET_VALUES.values() for nt in node_types.values())


def test_queue_label_key_rules():
    """What Ray 2.60 accepts as flyte-ray.io/queue-<name> (ray/_private/label_utils.py): the name part
    is at most 63 characters and ends with a letter or digit, so a queue name has a label when it is
    at most 57 characters long and ends with a letter or digit (README, "Node labels")."""
    assert validate_label_key(QUEUE_LABEL_PREFIX + "etl") is None
    assert validate_label_key(QUEUE_LABEL_PREFIX + "gpu-pool.v2_a") is None
    assert validate_label_key(QUEUE_LABEL_PREFIX + "q" * 57) is None
    assert validate_label_key(QUEUE_LABEL_PREFIX + "q" * 58) is not None
    for bad in ("etl-", "etl.", "etl_"):
        assert validate_label_key(QUEUE_LABEL_PREFIX + bad) is not None, bad
    assert validate_label_key(MARKET_LABEL) is None and validate_label_key(ACCEL_LABEL) is None
    for value in ("true", "spot", "on-demand", "A10G", "T4"):
        validate_label_value(value)


def test_readme_job_submit_examples_point_at_files():
    """Every `ray job submit ... -- python <file>` in the READMEs names a file of the repository
    (relative to its --working-dir), and every py_modules entry it ships exists."""
    found = 0
    for readme in (REPO / "README.md", CONFIG_DIR / "README.md"):
        text = readme.read_text().replace("\\\n", " ")
        for cmd in re.findall(r"(?m)^[ \t]*(?:[A-Z_]+=\S+[ \t]+)*ray job submit[ \t][^\n]*", text):
            m = re.search(r"--\s+python\s+(\S+\.py)", cmd)
            assert m, f"{readme.name}: {cmd!r} runs no python file"
            wd = re.search(r"--working-dir[ =](\S+)", cmd)
            base = REPO / wd.group(1) if wd else REPO
            assert (base / m.group(1)).is_file(), f"{readme.name}: {cmd!r}: {base / m.group(1)} does not exist"
            env = re.search(r"--runtime-env-json[ =]'([^']*)'", cmd)
            for module in (json.loads(env.group(1)).get("py_modules") or []) if env else []:
                assert (REPO / module).is_dir(), f"{readme.name}: py_modules {module!r} is not a folder of the repo"
            found += 1
    assert found, "no `ray job submit` example found"


def test_install_label_storage_checks_catch_mistakes():
    def ray_up(name, mutate, check):
        config = _load(name)
        mutate(config)
        return check(prepare_config(config))

    nts = lambda c: c["available_node_types"]  # noqa: E731
    for name in _ray_up_names():
        assert ray_up(name, lambda c: None, ray_up_install_problems) == []
        assert ray_up(name, lambda c: None, ray_up_label_problems) == []
        assert ray_up(name, lambda c: None, ray_up_storage_problems) == []
        # installing flyte-ray, or forgetting a dependency / the Ray pin
        assert ray_up(name, lambda c: c["setup_commands"].append("pip install -U flyte-ray"), ray_up_install_problems)
        assert ray_up(name, lambda c: c.update(setup_commands=[
            x.replace(" fsspec", "") for x in c["setup_commands"]]), ray_up_install_problems)
        assert ray_up(name, lambda c: c.update(setup_commands=[
            x.replace('"ray[default]==2.60.0" ', "") for x in c["setup_commands"]]), ray_up_install_problems)
        assert ray_up(name, lambda c: c["file_mounts"].update({"/tmp/wheels": "./dist"}), ray_up_install_problems)
        assert ray_up(name, lambda c: c["file_mounts"].update({"/opt/flyte-ray/flyte_ray": "./flyte_ray"}),
                      ray_up_install_problems)
        # labels: wrong market, missing queue, a queue label Ray rejects, env disagreeing, no GPU type
        assert ray_up(name, lambda c: nts(c)["cpu-spot"]["labels"].update({MARKET_LABEL: "on-demand"}),
                      ray_up_label_problems)
        assert ray_up(name, lambda c: nts(c)["etl-pool"]["labels"].pop(QUEUE_LABEL_PREFIX + "etl"),
                      ray_up_label_problems)
        assert ray_up(name, lambda c: nts(c)["etl-pool"]["labels"].update({QUEUE_LABEL_PREFIX + "x-": "true"}),
                      ray_up_label_problems)
        assert ray_up(name, lambda c: nts(c)["cpu-spot"]["docker"].update(
            worker_run_options=["-e RAY_NODE_MARKET_TYPE=on-demand"]), ray_up_label_problems)
        assert ray_up(name, lambda c: c["docker"].pop("head_run_options"), ray_up_label_problems)
        assert ray_up(name, lambda c: nts(c)["gpu-spot"]["labels"].pop(ACCEL_LABEL), ray_up_label_problems)
        # storage: none, local, on the head only; a worker without its identity
        assert ray_up(name, lambda c: c["docker"].update(run_options=[
            o for o in c["docker"]["run_options"] if "FLYTE_RAY_STORAGE" not in o]), ray_up_storage_problems)
        assert ray_up(name, lambda c: c["docker"].update(run_options=[
            "-e FLYTE_RAY_STORAGE=/tmp/x" if "FLYTE_RAY_STORAGE" in o else o for o in c["docker"]["run_options"]]),
            ray_up_storage_problems)
        key = "IamInstanceProfile" if "aws" in name else "serviceAccounts"
        assert ray_up(name, lambda c: nts(c)["etl-pool-spot"]["node_config"].pop(key), ray_up_storage_problems)
    assert ray_up("gcp-spot.yaml", lambda c: nts(c)["cpu-spot"]["node_config"].update(serviceAccounts=[
        {"email": "a@b.iam.gserviceaccount.com", "scopes": ["https://www.googleapis.com/auth/devstorage.read_only"]}]),
        ray_up_storage_problems)

    name = _kuberay_names()[0]
    for check in (kuberay_install_problems, kuberay_label_problems, kuberay_storage_problems):
        assert check(_load(name)) == []

    def kr(mutate, check):
        cr = _load(name)
        mutate(cr)
        return check(cr)

    last = lambda cr: cr["spec"]["workerGroupSpecs"][-1]  # noqa: E731
    assert kr(lambda cr: cr["metadata"].pop("annotations"), kuberay_install_problems)
    assert kr(lambda cr: last(cr)["template"]["spec"]["containers"][0].update(
        args=["pip install flyte-ray && $KUBERAY_GEN_RAY_START_CMD"]), kuberay_install_problems)
    assert kr(lambda cr: [last(cr)["template"]["spec"]["containers"][0].pop(k) for k in ("command", "args")],
              kuberay_install_problems)
    assert kr(lambda cr: last(cr).pop("labels"), kuberay_label_problems)
    assert kr(lambda cr: last(cr)["template"]["spec"]["containers"][0].update(env=[
        e for e in last(cr)["template"]["spec"]["containers"][0]["env"] if e["name"] != "RAY_NODE_MARKET_TYPE"]),
        kuberay_label_problems)
    assert kr(lambda cr: last(cr)["rayStartParams"].update(labels="flyte-ray.io/queue-etl=true"),
              kuberay_label_problems)
    assert kr(lambda cr: last(cr)["template"]["spec"].pop("serviceAccountName"), kuberay_storage_problems)
    assert kr(lambda cr: last(cr)["template"]["spec"]["containers"][0].update(env=[
        e for e in last(cr)["template"]["spec"]["containers"][0]["env"] if e["name"] != "FLYTE_RAY_STORAGE"]),
        kuberay_storage_problems)


# ================================================================ preemption notices ===
# The node side of preemption notices (README, "Preemption notices"): flyte_ray/preemption is a
# self-contained package (stdlib + Ray), copied to the nodes as the folder flyte_ray_preemption
# (the nodes do not install flyte-ray) and run as `python -m flyte_ray_preemption`.
#   ray up: `file_mounts` copies the folder to every node; only the spot node types start it,
#     in their own `worker_setup_commands`.  Ray 2.60 gives a node type's own list precedence
#     over the global setup_commands + worker_setup_commands (autoscaler.py,
#     _get_node_type_specific_fields; prepare_config has merged the two globals into
#     worker_setup_commands), so that list must repeat the dependency install.  Worker setup
#     commands run in the container with RAY_HEAD_IP exported (autoscaler.py, spawn_updater:
#     with_head_node_ip).
#   KubeRay: each spot group's pods have a second container running it from a ConfigMap.
WATCHER_PACKAGE = REPO / "flyte_ray" / "preemption"
WATCHER_MODULE = "flyte_ray_preemption"
WATCHER_MOUNT = ("/opt/flyte-ray/flyte_ray_preemption", "./flyte_ray/preemption")  # (node, local)
WATCHER_CONFIGMAP = "flyte-ray-preemption"
WATCHER_PROVIDERS = {"auto", "aws", "gcp", "azure"}   # flyte_ray/preemption/watcher.py --provider
CONFIGMAP_MAX_BYTES = 1024 * 1024                      # Kubernetes' limit on a ConfigMap
WATCHER_RUN_RE = re.compile(r"-m\s+" + WATCHER_MODULE + r"\b")
# A stop-or-skip guard: `pkill -f PATTERN` (restart) or `pgrep -f PATTERN ... ||` (skip).
GUARD_RE = re.compile(r"\b(pkill|pgrep)\s+-f\s+(?:'([^']*)'|\"([^\"]*)\"|([^\s;&|]+))")
PROVIDER_ARG_RE = re.compile(r"--provider[= ]+['\"]?([A-Za-z0-9_-]+)")
ADDRESS_ARG_RE = re.compile(r"--address[= ]+['\"]?([^\s'\"]+)")
PYTHONPATH_RE = re.compile(r"\bPYTHONPATH=['\"]?([^\s'\";]+)")
LOG_REDIRECT_RE = re.compile(r">>?\s*(\S+)\s+2>&1")
HEAD_PORT_RE = re.compile(r"--port[= ]+(\d+)")


def _market_of(resources: Dict[str, Any], labels: Dict[str, str]) -> str:
    """"spot" when the resource marker or the market label says so, else "ondemand"."""
    return "spot" if "spot" in resources or labels.get("ray.io/market-type") == "spot" else "ondemand"


def _ray_up_node_commands(config: dict, name: str) -> List[str]:
    """Everything a (prepared) ray-up config runs on a node of type `name`, in Ray 2.60's
    precedence: a node type's own initialization_commands / worker_setup_commands replace the
    global ones (for workers, prepare_config has already put setup_commands in front of the
    global worker_setup_commands); the head runs head_setup_commands."""
    nt = config["available_node_types"][name]
    init = nt["initialization_commands"] if "initialization_commands" in nt else config.get("initialization_commands")
    if name == config["head_node_type"]:
        rest = list(config.get("head_setup_commands") or []) + list(config.get("head_start_ray_commands") or [])
    else:
        setup = nt["worker_setup_commands"] if "worker_setup_commands" in nt else config.get("worker_setup_commands")
        rest = list(setup or []) + list(config.get("worker_start_ray_commands") or [])
    return list(init or []) + rest


def _without_guard(cmd: str) -> str:
    return GUARD_RE.sub("", cmd)


def _runs_watcher(cmd: str) -> bool:
    return bool(WATCHER_RUN_RE.search(_without_guard(cmd)))


def guard_problems(cmd: str, where: str) -> List[str]:
    """A second run of the setup command must not leave two watchers: the command stops the
    previous one (pkill -f) or skips the start (pgrep -f ... ||), with a pattern that matches the
    watcher's command line and never the shell that runs this command (whose command line
    holds the whole command text, `-m flyte_ray_preemption` included)."""
    m = GUARD_RE.search(cmd)
    if not m:
        return [f"{where}: no `pkill -f` / `pgrep -f ... ||` guard: a second `ray up` starts a second watcher"]
    tool, pattern = m.group(1), next(g for g in m.groups()[1:] if g is not None)
    p: List[str] = []
    if tool == "pgrep" and not re.search(r"\|\|", cmd[m.end():]):
        p.append(f"{where}: `pgrep -f` without `||` before the start does not skip it")
    try:
        rx = re.compile(pattern)
    except re.error as e:
        return p + [f"{where}: guard pattern {pattern!r} is not a regular expression: {e}"]
    watchers = [
        f"python -m {WATCHER_MODULE} --provider aws --address 10.0.0.1:6379",
        f"/home/ray/anaconda3/bin/python -m {WATCHER_MODULE} --provider gcp",
    ]
    shells = [f"bash --login -c -i {cmd}", f"/bin/bash -c {cmd}", f"bash -c {cmd}", f"sh -c {cmd}"]
    if not all(rx.search(w) for w in watchers):
        p.append(f"{where}: guard pattern {pattern!r} does not match the watcher's command line")
    if any(rx.search(s) for s in shells):
        p.append(f"{where}: guard pattern {pattern!r} matches the shell running this very command "
                 "(anchor it, e.g. '^[^ ]*python[0-9.]* -m flyte_ray_preemption')")
    return p


def ray_up_watcher_mount_problems(config: dict) -> List[str]:
    """The watcher's folder reaches every node: one file_mounts entry whose local side (relative
    to the repository root, where `ray up` runs) is the flyte_ray/preemption package."""
    mounts = config.get("file_mounts") or {}
    found = {t: s for t, s in mounts.items() if str(t).rstrip("/").endswith("/" + WATCHER_MODULE)}
    if len(found) != 1:
        return [f"file_mounts: expected one entry for the watcher folder .../{WATCHER_MODULE}, found {sorted(found)}"]
    target, source = next(iter(found.items()))
    p: List[str] = []
    if (target, source) != WATCHER_MOUNT:
        p.append(f"file_mounts {target!r}: {source!r}: expected {WATCHER_MOUNT[0]!r}: {WATCHER_MOUNT[1]!r}")
    if os.path.isabs(os.path.expanduser(str(source))):
        p.append(f"file_mounts {target!r}: {source!r} must be relative to the repository root")
    local = (REPO / str(source)).resolve()
    if local != WATCHER_PACKAGE.resolve():
        p.append(f"file_mounts {target!r}: {source!r} is {local}, not the package {WATCHER_PACKAGE}")
    elif not (local / "__main__.py").is_file():
        p.append(f"file_mounts {target!r}: {local} has no __main__.py (`python -m` cannot run it)")
    return p


def ray_up_watcher_problems(config: dict) -> List[str]:
    """Every spot node type, and no other node type nor the head, starts the watcher, in the
    background, once per node, with its cloud's provider, the head's GCS and token auth."""
    p: List[str] = []
    provider = config["provider"]["type"]
    head = config["head_node_type"]
    mount_dir = os.path.dirname(WATCHER_MOUNT[0])
    head_port = next(iter(HEAD_PORT_RE.findall(" ".join(config.get("head_start_ray_commands") or []))), "6379")
    docker_token = any(AUTH_RE.findall(o) == ["token"] for o in (config.get("docker") or {}).get("run_options") or [])
    for name, nt in config["available_node_types"].items():
        watch = [c for c in _ray_up_node_commands(config, name) if _runs_watcher(c)]
        spot = name != head and _market_of(nt.get("resources") or {}, nt.get("labels") or {}) == "spot"
        if not spot:
            if watch:
                p.append(f"{name}: {'the head' if name == head else 'an on-demand node type'} runs the watcher "
                         f"({len(watch)} command(s)); only spot node types may")
            continue
        own = nt.get("worker_setup_commands") or []
        if len(watch) != 1 or watch[0] not in own:
            p.append(f"{name}: spot node type must start the watcher once, in its own worker_setup_commands; "
                     f"found {len(watch)} start(s), {sum(c in own for c in watch)} there")
            continue
        cmd = watch[0]
        p += guard_problems(cmd, name)
        providers = PROVIDER_ARG_RE.findall(_without_guard(cmd))
        if providers != [provider]:
            p.append(f"{name}: watcher --provider {providers}, the config's provider is {provider!r}")
        for address in ADDRESS_ARG_RE.findall(cmd):
            if address not in (f"$RAY_HEAD_IP:{head_port}", f"${{RAY_HEAD_IP}}:{head_port}"):
                p.append(f"{name}: watcher --address {address!r}: the head's GCS is $RAY_HEAD_IP:{head_port}")
        if PYTHONPATH_RE.findall(cmd) != [mount_dir]:
            p.append(f"{name}: watcher needs PYTHONPATH={mount_dir} (the folder of the file mount), "
                     f"has {PYTHONPATH_RE.findall(cmd)}")
        modes = AUTH_RE.findall(cmd)
        if modes not in ([], ["token"]) or (not modes and not docker_token):
            p.append(f"{name}: watcher must run with RAY_AUTH_MODE=token (it calls the GCS), has {modes}")
        body = _without_guard(cmd).rstrip().rstrip(";").rstrip()
        if not body.endswith("&") or body.endswith("&&"):
            p.append(f"{name}: the watcher must start in the background (`... &`), or the setup never ends")
        if not re.search(r"\b(nohup|setsid)\b", cmd):
            p.append(f"{name}: start the watcher with nohup (or setsid): the setup command's terminal closes after it")
        if not LOG_REDIRECT_RE.search(cmd):
            p.append(f"{name}: send the watcher's output to a log file (`>> FILE 2>&1`)")
    return p


def ray_up_spot_setup_deps_problems(config: dict) -> List[str]:
    """A node type's own worker_setup_commands replace the global ones (setup_commands +
    worker_setup_commands, already merged by prepare_config): they must still run each of them,
    the dependency install above all."""
    p: List[str] = []
    merged = list(config.get("worker_setup_commands") or [])
    for name, nt in config["available_node_types"].items():
        if name == config["head_node_type"] or "worker_setup_commands" not in nt:
            continue
        own = list(nt.get("worker_setup_commands") or [])
        missing = [c for c in merged if c not in own]
        if missing:
            p.append(f"{name}: its worker_setup_commands replace the global ones but drop {missing}")
        p += install_problems(own, name)
    return p


def _watcher_containers(pod: dict) -> List[dict]:
    return [c for c in pod.get("containers") or []
            if WATCHER_RUN_RE.search(" ".join(list(c.get("command") or []) + list(c.get("args") or [])))]


def kuberay_watcher_problems(cr: dict) -> List[str]:
    """Each spot group's pods run the watcher in a second container (the Ray container stays
    first: KubeRay and Ray's autoscaler read containers[0]), from the ConfigMap, with the head
    Service's GCS address and the Ray containers' token; no on-demand group or head has it."""
    p: List[str] = []
    cluster = cr["metadata"]["name"]
    namespace = cr["metadata"].get("namespace")
    spec = cr["spec"]
    head_port = str((spec["headGroupSpec"].get("rayStartParams") or {}).get("port", "6379"))
    address_re = re.compile(
        rf"^{re.escape(cluster)}-head-svc(?:\.(?P<ns>[^.:]+)(?:\.svc(?:\.cluster\.local)?)?)?:(?P<port>\d+)$")
    for name, group in _kuberay_groups(cr):
        pod = group["template"]["spec"]
        raw = (group.get("rayStartParams") or {}).get("resources", "")
        resources = json.loads(raw.strip('"').replace("\\", "")) if raw else {}
        spot = name != "head" and _market_of(resources, group.get("labels") or {}) == "spot"
        watchers = _watcher_containers(pod)
        if not spot:
            if watchers:
                p.append(f"{name}: {'the head' if name == 'head' else 'an on-demand group'} runs the watcher")
            continue
        if len(watchers) != 1:
            p.append(f"{name}: spot group needs one watcher container, has {len(watchers)}")
            continue
        w, ray_c = watchers[0], pod["containers"][0]
        if w is ray_c:
            p.append(f"{name}: the watcher must not be the first container (KubeRay's Ray container)")
            continue
        where = f"{name}/{w.get('name')}"
        if w.get("image") != ray_c.get("image"):
            p.append(f"{where}: image {w.get('image')!r}, use the Ray container's {ray_c.get('image')!r}")
        argv = " ".join(list(w.get("command") or []) + list(w.get("args") or []))
        providers = PROVIDER_ARG_RE.findall(argv)
        if len(providers) != 1 or providers[0] not in WATCHER_PROVIDERS:
            p.append(f"{where}: --provider {providers}, expected one of {sorted(WATCHER_PROVIDERS)}")
        env = {e.get("name"): e for e in w.get("env") or []}
        ray_env = {e.get("name"): e for e in ray_c.get("env") or []}
        for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
            if env.get(key) != ray_env.get(key) or key not in env:
                p.append(f"{where}: {key} must be set as in the Ray container ({ray_env.get(key)})")
        addresses = ADDRESS_ARG_RE.findall(argv)
        m = address_re.match(addresses[0]) if len(addresses) == 1 else None
        if not m:
            p.append(f"{where}: --address {addresses} is not the head Service {cluster}-head-svc[.<namespace>...]:PORT")
        else:
            if m.group("port") != head_port:
                p.append(f"{where}: --address port {m.group('port')}, the head's GCS listens on {head_port}")
            ns = m.group("ns")
            if ns is not None and ns != namespace:
                ref = re.fullmatch(r"\$\((\w+)\)", ns)
                field = (((env.get(ref.group(1)) or {}).get("valueFrom") or {}).get("fieldRef") or {}) if ref else {}
                if field.get("fieldPath") != "metadata.namespace":
                    p.append(f"{where}: --address namespace {ns!r} is neither the manifest's namespace "
                             f"nor $(VAR) with VAR from fieldRef metadata.namespace")
        pythonpath = (env.get("PYTHONPATH") or {}).get("value")
        mounts = {vm.get("mountPath"): vm.get("name") for vm in w.get("volumeMounts") or []}
        volume_name = mounts.get(f"{pythonpath}/{WATCHER_MODULE}")
        if not pythonpath or not volume_name:
            p.append(f"{where}: needs PYTHONPATH=DIR and a volume mounted at DIR/{WATCHER_MODULE}, "
                     f"has PYTHONPATH={pythonpath!r}, mounts {sorted(mounts)}")
            continue
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        configmap = ((volumes.get(volume_name) or {}).get("configMap") or {}).get("name")
        if configmap != WATCHER_CONFIGMAP:
            p.append(f"{where}: volume {volume_name!r} must be the ConfigMap {WATCHER_CONFIGMAP!r}, is "
                     f"{volumes.get(volume_name)}")
    return p


@pytest.mark.parametrize("name", _ray_up_names())
def test_ray_up_runs_the_preemption_watcher_on_spot_nodes_only(name):
    config = prepared(name)   # Ray's own prepare_config + validate_config accept the per-type lists
    problems = (ray_up_watcher_problems(config) + ray_up_spot_setup_deps_problems(config)
                + ray_up_watcher_mount_problems(config))
    assert not problems, "\n".join(problems)
    spot = [n for n, nt in config["available_node_types"].items() if "spot" in nt["resources"]]
    assert spot and all(any(_runs_watcher(c) for c in _ray_up_node_commands(config, n)) for n in spot)


@pytest.mark.parametrize("name", _kuberay_names())
def test_kuberay_runs_the_preemption_watcher_in_spot_groups_only(name):
    cr = _load(name)
    problems = kuberay_watcher_problems(cr)
    assert not problems, "\n".join(problems)
    # the extra container changes nothing for Ray's own KubeRay parser (it reads containers[0])
    assert _kuberay_node_types(name)[0]


def test_watcher_package_fits_a_configmap_and_the_readme_creates_it():
    """A ConfigMap holds files, not folders, up to 1 MiB: the package must be flat and small.
    The README's command creates the ConfigMap the manifest mounts, from that folder."""
    sub = [d.name for d in WATCHER_PACKAGE.iterdir() if d.is_dir() and d.name != "__pycache__"]
    assert not sub, f"{WATCHER_PACKAGE} has subfolders {sub}: a ConfigMap cannot hold them"
    files = sorted(WATCHER_PACKAGE.glob("*.py"))
    assert {"__init__.py", "__main__.py"} <= {f.name for f in files}
    assert sum(f.stat().st_size for f in files) < CONFIGMAP_MAX_BYTES
    for doc in ["README.md"] + _kuberay_names():
        text = (CONFIG_DIR / doc).read_text()
        cmds = re.findall(r"kubectl create configmap (\S+) --from-file=(\S+)", text)
        assert cmds, f"{doc}: no `kubectl create configmap ... --from-file=...`"
        for cm, path in cmds:
            assert cm == WATCHER_CONFIGMAP and (REPO / path).resolve() == WATCHER_PACKAGE.resolve(), (doc, cm, path)
    text = (CONFIG_DIR / "README.md").read_text()
    assert "flyte-ray-watch-preemption.log" in text and "pgrep -af flyte_ray_preemption" in text


def test_preemption_watcher_checks_catch_mistakes():
    def ray_up(name, mutate, check):
        config = _load(name)
        mutate(config)
        return check(prepare_config(config))

    nts = lambda c: c["available_node_types"]  # noqa: E731

    def spot_setup(c):
        return nts(c)["cpu-spot"]["worker_setup_commands"]

    def watch_cmd(c):
        return next(x for x in spot_setup(c) if _runs_watcher(x))

    def set_watch(c, new):
        nts(c)["cpu-spot"]["worker_setup_commands"] = [new if _runs_watcher(x) else x for x in spot_setup(c)]

    checks = (ray_up_watcher_problems, ray_up_spot_setup_deps_problems, ray_up_watcher_mount_problems)
    for name in _ray_up_names():
        for check in checks:
            assert ray_up(name, lambda c: None, check) == [], check.__name__
        # the watcher on an on-demand type, on the head (global setup), on every worker (start commands)
        assert ray_up(name, lambda c: nts(c)["cpu-ondemand"].update(worker_setup_commands=list(spot_setup(c))),
                      ray_up_watcher_problems)
        assert ray_up(name, lambda c: c["setup_commands"].append(watch_cmd(c)), ray_up_watcher_problems)
        assert ray_up(name, lambda c: c["worker_start_ray_commands"].append(watch_cmd(c)), ray_up_watcher_problems)
        # missing from a spot type (its own list without it, or no own list at all)
        assert ray_up(name, lambda c: nts(c)["gpu-spot"].update(worker_setup_commands=list(c["setup_commands"])),
                      ray_up_watcher_problems)
        assert ray_up(name, lambda c: nts(c)["etl-pool-spot"].pop("worker_setup_commands"), ray_up_watcher_problems)
        # the override dropped the dependency line, or a global worker setup command
        assert ray_up(name, lambda c: nts(c)["etl-pool-spot"].update(worker_setup_commands=[watch_cmd(c)]),
                      ray_up_spot_setup_deps_problems)
        assert ray_up(name, lambda c: c["worker_setup_commands"].append("echo global"),
                      ray_up_spot_setup_deps_problems)
        # wrong provider, wrong GCS, no PYTHONPATH, token mode off, in the foreground, no guard,
        # a guard that matches its own shell, pgrep without ||
        other = "gcp" if "aws" in name else "aws"
        for old, new in [(f"--provider {'aws' if other == 'gcp' else 'gcp'}", f"--provider {other}"),
                         ('"$RAY_HEAD_IP:6379"', "127.0.0.1:6379"),
                         ("PYTHONPATH=/opt/flyte-ray ", ""),
                         ("RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled"),
                         ("< /dev/null &", "< /dev/null"),
                         ("nohup ", "")]:
            assert old in watch_cmd(_load(name)), old
            assert ray_up(name, lambda c, old=old, new=new: set_watch(c, watch_cmd(c).replace(old, new)),
                          ray_up_watcher_problems), old
        assert ray_up(name, lambda c: set_watch(c, GUARD_RE.sub("true", watch_cmd(c))), ray_up_watcher_problems)
        assert ray_up(name, lambda c: set_watch(c, GUARD_RE.sub(f"pkill -f {WATCHER_MODULE}", watch_cmd(c))),
                      ray_up_watcher_problems)
        assert ray_up(name, lambda c: set_watch(c, GUARD_RE.sub(
            "pgrep -f '^[^ ]*python[0-9.]* -m flyte_ray_preemption' >/dev/null", watch_cmd(c))),
            ray_up_watcher_problems)
        # the folder not copied, or another one
        assert ray_up(name, lambda c: c["file_mounts"].pop(WATCHER_MOUNT[0]), ray_up_watcher_mount_problems)
        assert ray_up(name, lambda c: c["file_mounts"].update({WATCHER_MOUNT[0]: "./flyte_ray"}),
                      ray_up_watcher_mount_problems)
    # the accepted guards: restart (pkill) and skip (pgrep ... ||)
    assert guard_problems("pkill -f '^[^ ]*python[0-9.]* -m flyte_ray_preemption'; "
                          "nohup python -m flyte_ray_preemption &", "x") == []
    assert guard_problems("pgrep -f '^[^ ]*python[0-9.]* -m flyte_ray_preemption' || "
                          "nohup python -m flyte_ray_preemption &", "x") == []

    name = _kuberay_names()[0]
    assert kuberay_watcher_problems(_load(name)) == []

    def kr(mutate):
        cr = _load(name)
        mutate(cr)
        return kuberay_watcher_problems(cr)

    def group(cr, group_name):
        return next(g for g in cr["spec"]["workerGroupSpecs"] if g["groupName"] == group_name)

    def pod(cr, group_name):
        return group(cr, group_name)["template"]["spec"]

    def watcher(cr, group_name="cpu-spot"):
        return _watcher_containers(pod(cr, group_name))[0]

    # missing from a spot group; on an on-demand group; on the head; first (in place of Ray's)
    assert kr(lambda cr: pod(cr, "etl-pool-spot").update(containers=pod(cr, "etl-pool-spot")["containers"][:1]))
    assert kr(lambda cr: pod(cr, "etl-pool")["containers"].append(copy.deepcopy(watcher(cr))))
    assert kr(lambda cr: cr["spec"]["headGroupSpec"]["template"]["spec"]["containers"].append(
        copy.deepcopy(watcher(cr))))
    assert kr(lambda cr: pod(cr, "gpu-spot").update(containers=pod(cr, "gpu-spot")["containers"][::-1]))
    # another image; a bad provider; another Service / port / namespace; no token
    assert kr(lambda cr: watcher(cr, "gpu-spot").update(image="rayproject/ray:2.60.0-py311"))
    assert kr(lambda cr: watcher(cr).update(args=[a.replace("=auto", "=openstack") for a in watcher(cr)["args"]]))
    for old, new in [("flyte-ray-head-svc", "other-head-svc"), (":6379", ":6380"),
                     ("$(POD_NAMESPACE)", "$(HOSTNAME)")]:
        assert kr(lambda cr, old=old, new=new: watcher(cr).update(
            args=[a.replace(old, new) for a in watcher(cr)["args"]])), old
    assert kr(lambda cr: watcher(cr).update(env=[e for e in watcher(cr)["env"] if e["name"] != "RAY_AUTH_TOKEN"]))
    # no ConfigMap volume, another ConfigMap, mounted elsewhere
    assert kr(lambda cr: pod(cr, "cpu-spot").pop("volumes"))
    assert kr(lambda cr: pod(cr, "cpu-spot").update(volumes=[{"name": "flyte-ray-preemption",
                                                              "configMap": {"name": "something-else"}}]))
    assert kr(lambda cr: watcher(cr).update(volumeMounts=[{"name": "flyte-ray-preemption", "mountPath": "/opt/x"}]))


# ======================================================= run-record labels (cost report) ===
# Every node declares which node type it is and which instance type it runs on, as Ray node
# labels that flyte-ray's run records read from ray.nodes() (flyte_ray/_ray/recording.py,
# NODE_LABEL_TYPE / NODE_LABEL_INSTANCE) and the cost report prices by (flyte_ray/report/cost.py:
# the node type's price, else the instance type's).  ray up: the node type's name, and the
# instance type flyte_ray.report.prices.PriceTable.from_cluster_config derives from its
# node_config (AWS InstanceType, GCP machineType + guestAccelerators), so a price table keyed by
# either matches.  KubeRay: the group's name (the head: Ray's autoscaler calls it "headgroup");
# a pod has no instance type (from_cluster_config refuses a RayCluster), so the label is
# declared and priced by node type.
from ray.autoscaler._private.kuberay.autoscaling_config import _HEAD_GROUP_NAME  # noqa: E402

from flyte_ray.report.prices import PriceTable  # noqa: E402

NODE_TYPE_LABEL = "flyte-ray.io/node-type"           # = flyte_ray._ray.recording.NODE_LABEL_TYPE
INSTANCE_TYPE_LABEL = "flyte-ray.io/instance-type"   # = flyte_ray._ray.recording.NODE_LABEL_INSTANCE


def instance_type_label(instance_type: str) -> str:
    """The label form of an instance type named by PriceTable.from_cluster_config.  A Ray label
    value (ray/_private/label_utils.py, as Kubernetes) holds only letters, digits, `-`, `_`, `.`
    (at most 63, starting and ending with a letter or digit); from_cluster_config names a GCP
    node type with GPUs `<machineType>+<n>x<accelerator>`, whose `+` Ray rejects, so the label
    writes `_` there (n1-standard-8_1xnvidia-tesla-t4; GCP machine and accelerator names hold
    no `_`).  A no-op once the prices module uses `_` itself."""
    return instance_type.replace("+", "_")


def record_label_problems(name: str, labels: Dict[str, Any], node_type: str,
                          instance_type: Optional[str]) -> List[str]:
    """One node type / group: both labels declared, valid Ray label values, the node type's own
    name, and (instance_type not None) the given instance type."""
    p: List[str] = []
    for key in (NODE_TYPE_LABEL, INSTANCE_TYPE_LABEL):
        if key not in labels:
            p.append(f"{name}: no {key} label (run records and the cost report read it)")
            continue
        try:
            validate_label_value(labels[key])
        except ValueError as e:
            p.append(f"{name}: Ray rejects the value of {key!r}: {e}")
    if NODE_TYPE_LABEL in labels and labels[NODE_TYPE_LABEL] != node_type:
        p.append(f"{name}: label {NODE_TYPE_LABEL}={labels[NODE_TYPE_LABEL]!r}, its node type is {node_type!r}")
    if instance_type is not None and INSTANCE_TYPE_LABEL in labels and labels[INSTANCE_TYPE_LABEL] != instance_type:
        p.append(f"{name}: label {INSTANCE_TYPE_LABEL}={labels[INSTANCE_TYPE_LABEL]!r}, its node_config "
                 f"launches {instance_type!r} (PriceTable.from_cluster_config, in label form)")
    return p


def ray_up_record_label_problems(config: dict) -> List[str]:
    table = PriceTable.from_cluster_config(config)
    p: List[str] = []
    for name, nt in config["available_node_types"].items():
        derived = table.instance_type_of(name)
        if not derived:
            p.append(f"{name}: PriceTable.from_cluster_config reads no instance type from its node_config")
        p += record_label_problems(name, nt.get("labels") or {}, name, instance_type_label(derived))
    return p


def kuberay_record_label_problems(cr: dict) -> List[str]:
    p: List[str] = []
    for name, group in _kuberay_groups(cr):
        node_type = _HEAD_GROUP_NAME if group is cr["spec"]["headGroupSpec"] else name
        p += record_label_problems(name, group.get("labels") or {}, node_type, None)
    return p


@pytest.mark.parametrize("name", _ray_up_names())
def test_ray_up_run_record_labels(name):
    problems = ray_up_record_label_problems(prepared(name))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", _kuberay_names())
def test_kuberay_run_record_labels(name):
    problems = kuberay_record_label_problems(_load(name))
    assert not problems, "\n".join(problems)
    # Ray's own KubeRay parser hands them to the autoscaler, under the node type names it uses
    for node_type, nt in _kuberay_autoscaling_config(name)["available_node_types"].items():
        assert nt["labels"].get(NODE_TYPE_LABEL) == node_type, node_type
        assert INSTANCE_TYPE_LABEL in nt["labels"], node_type


def test_run_record_label_names_match_the_recorder():
    from flyte_ray._ray import recording

    assert (recording.NODE_LABEL_TYPE, recording.NODE_LABEL_INSTANCE) == (NODE_TYPE_LABEL, INSTANCE_TYPE_LABEL)
    for key in (NODE_TYPE_LABEL, INSTANCE_TYPE_LABEL):
        assert validate_label_key(key) is None


def test_run_record_label_checks_catch_mistakes():
    def ray_up(name, mutate):
        config = _load(name)
        mutate(config)
        return ray_up_record_label_problems(prepare_config(config))

    nts = lambda c: c["available_node_types"]  # noqa: E731
    for name in _ray_up_names():
        assert ray_up(name, lambda c: None) == []
        key = "InstanceType" if "aws" in name else "machineType"
        other = "m5.4xlarge" if "aws" in name else "n2-standard-16"
        # a label missing (the head's too), the wrong node type (a copied pool), the instance type
        # changed without its label, a value Ray rejects
        assert ray_up(name, lambda c: nts(c)["cpu-spot"]["labels"].pop(NODE_TYPE_LABEL))
        assert ray_up(name, lambda c: nts(c)["head"]["labels"].pop(INSTANCE_TYPE_LABEL))
        assert ray_up(name, lambda c: nts(c)["etl-pool-spot"]["labels"].update({NODE_TYPE_LABEL: "etl-pool"}))
        assert ray_up(name, lambda c, key=key, other=other: nts(c)["etl-pool"]["node_config"].update({key: other}))
        assert ray_up(name, lambda c: nts(c)["gpu-spot"]["labels"].update({INSTANCE_TYPE_LABEL: "x+y"}))
    # GCP: the GPUs are part of the instance type (n1-standard-8_1x... -> _2x...); and, while
    # from_cluster_config writes it with `+`, that form is not a label value Ray accepts
    assert ray_up("gcp-spot.yaml", lambda c: nts(c)["gpu-ondemand"]["node_config"]["guestAccelerators"][0].update(
        acceleratorCount=2))
    gcp_gpu = PriceTable.from_cluster_config(prepared("gcp-spot.yaml")).instance_type_of("gpu-spot")
    if "+" in gcp_gpu:
        assert ray_up("gcp-spot.yaml", lambda c: nts(c)["gpu-spot"]["labels"].update({INSTANCE_TYPE_LABEL: gcp_gpu}))
    with pytest.raises(ValueError):
        validate_label_value("n1-standard-8+1xnvidia-tesla-t4")

    name = _kuberay_names()[0]
    assert kuberay_record_label_problems(_load(name)) == []

    def kr(mutate):
        cr = _load(name)
        mutate(cr)
        return kuberay_record_label_problems(cr)

    head = lambda cr: cr["spec"]["headGroupSpec"]  # noqa: E731
    last = lambda cr: cr["spec"]["workerGroupSpecs"][-1]  # noqa: E731
    assert kr(lambda cr: last(cr)["labels"].pop(INSTANCE_TYPE_LABEL))
    assert kr(lambda cr: last(cr)["labels"].pop(NODE_TYPE_LABEL))
    assert kr(lambda cr: last(cr)["labels"].update({NODE_TYPE_LABEL: "cpu-spot"}))
    assert kr(lambda cr: head(cr)["labels"].update({NODE_TYPE_LABEL: "head"}))
    assert kr(lambda cr: head(cr)["labels"].update({INSTANCE_TYPE_LABEL: "n2-standard-8+1xnvidia-tesla-t4"}))


# ---------------------------------------------------------------- node types found at init (#14)


def test_init_finds_the_node_types_an_autoscaler_can_launch(tmp_path):
    """Without init(cluster_config=...): $FLYTE_RAY_CLUSTER_CONFIG first; a cluster without an
    autoscaler is fixed (live nodes only); with one, the node groups it reported to the GCS, then
    ray up's bootstrap config, else "unknown" -- which fits every request (work waits, never fails
    because flyte-ray could not see a node type)."""
    from ray.core.generated.autoscaler_pb2 import ClusterConfig, NodeGroupConfig

    from flyte_ray._ray.node_types import AUTOSCALED_UNKNOWN, discover, fits

    cfg = CONFIG_DIR / "aws-spot.yaml"
    where, types = discover(str(cfg), autoscaled=False)
    assert "FLYTE_RAY_CLUSTER_CONFIG" in where and any(name == "cpu-spot" for name, *_ in types)
    with pytest.raises(FileNotFoundError, match="FLYTE_RAY_CLUSTER_CONFIG"):
        discover(str(tmp_path / "missing.yaml"), autoscaled=True)
    assert discover(None, autoscaled=False, bootstrap=str(cfg))[1] == ()  # no autoscaler: fixed
    groups = ClusterConfig(node_group_configs=[
        NodeGroupConfig(name="gpu-spot", resources={"GPU": 1, "spot": 1000}, min_count=0, max_count=4),
        NodeGroupConfig(name="retired", resources={"CPU": 8}, max_count=0),
    ]).node_group_configs
    where, types = discover(None, autoscaled=True, gcs_groups=groups, bootstrap=str(cfg))
    assert "GCS" in where
    assert types == [("gpu-spot", {"GPU": 1.0, "spot": 1000.0}, True, {}), ("retired", {"CPU": 8.0}, False, {})]
    where, types = discover(None, autoscaled=True, gcs_groups=None, bootstrap=str(cfg))
    assert "ray up" in where and any(name == "cpu-spot" for name, *_ in types)
    where, types = discover(None, autoscaled=True)
    assert types == AUTOSCALED_UNKNOWN and "cannot see" in where
    assert all(fits({"accelerator_type:H100": 1, "spot": 1}, res, declared_only=True) for _, res in types)


def test_a_head_without_an_autoscaler_is_told_from_one_with_it():
    """Every head runs Ray's monitor and writes its status; without an autoscaler (ray start
    --head, LocalCluster) its node types are the nodes themselves (the read-only provider)."""
    import json as _json

    from flyte_ray._ray.node_types import autoscaled_by_status

    nid = "8e986d5bb5f29770d5213d5238b9a07d4d2683ac537404f6cad0a64f"
    read_only = {"autoscaler_report": {"active_nodes": {f"node_{nid}": 1}, "node_type_mapping": {nid: f"node_{nid}"},
                                       "legacy": True}}
    ray_up = {"autoscaler_report": {"active_nodes": {"ray.head.default": 1}, "pending_launches": {"cpu-spot": 2},
                                    "node_type_mapping": {nid: "ray.head.default"}}}
    assert not autoscaled_by_status(_json.dumps(read_only).encode())
    assert autoscaled_by_status(_json.dumps(ray_up).encode())
    assert not autoscaled_by_status(None) and not autoscaled_by_status(b"<html>") and not autoscaled_by_status(b"[]")
