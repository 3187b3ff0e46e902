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


# --------------------------------------------------------------- loading ---
def _load_all() -> Tuple[Dict[str, dict], Dict[str, dict], List[str]]:
    """Split cluster-configs/*.yaml into ray-up configs and RayClusters."""
    ray_up, kuberay, unknown = {}, {}, []
    for path in sorted(CONFIG_DIR.glob("*.y*ml")):
        with open(path) as f:
            doc = yaml.safe_load(f)
        if isinstance(doc, dict) and doc.get("kind") == "RayCluster":
            kuberay[path.name] = doc
        elif isinstance(doc, dict) and "provider" in doc:
            ray_up[path.name] = doc
        else:
            unknown.append(path.name)
    return ray_up, kuberay, unknown


def _ray_up_names() -> List[str]:
    return sorted(p.name for p in CONFIG_DIR.glob("*.y*ml") if "kuberay" not in p.name)


def _kuberay_names() -> List[str]:
    return sorted(p.name for p in CONFIG_DIR.glob("*.y*ml") if "kuberay" in p.name)


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
        c.replace("RAY_AUTH_MODE=disabled", "RAY_AUTH_MODE=token")
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
