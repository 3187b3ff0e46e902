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

Each convention check is a function returning a list of problems, so the
tests at the end can also prove that broken configs are caught.
"""

from __future__ import annotations

import copy
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
def test_ray_up_installs_flyte_ray_and_pins_ray(name):
    config = prepared(name)
    assert any("pip install" in c and "flyte-ray" in c for c in config["setup_commands"]), (
        "setup_commands must install flyte-ray on every node"
    )
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
