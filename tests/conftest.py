"""Shared fixtures: a real embedded Ray (one CPU, so deadlocks show) and real multi-node clusters."""

import os
import sys
import tempfile

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The cache authenticates stored outputs with a key kept outside the storage; S3-backed cache tests
# need one in the environment (Ray workers inherit it), and the suite must not create a key file
# in the real home folder.
os.environ.setdefault("FLYTE_RAY_CACHE_KEY", "flyte-ray-tests")
# Workers import task modules from here (tasks travel by reference when importable).
_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_here, os.environ.get("PYTHONPATH", "")) if p)

import flyte_ray  # noqa: E402
from flyte_ray.testing import LocalCluster, NodeSpec  # noqa: E402

# The suite runs on two pytest-xdist workers (README's test command: ``-n 2 --dist loadgroup``).
# Every module that starts Ray is in one group, so Ray tests still run one at a time on one
# worker (two clusters at once on two cores would make their timing-sensitive checks meaningless),
# while the modules below, which start no Ray, run beside them on the other worker.
NO_RAY = {
    "test_cache_serialize",
    "test_cache_trust",
    "test_checkpoint_store",
    "test_checkpoint_trust",
    "test_compat_table",
    "test_cluster_configs",
    "test_core_loop",
    "test_cost",
    "test_docs",
    "test_preemption_watcher",
    "test_result_store",
    "test_run_records_core",
    "test_storage",
    "test_storage_limits",
    "test_structure",
    "test_timeline",
}


# Modules whose Ray work times nothing (flyte-ray's embedded one-CPU cluster; test_ship's package
# shipping to a `ray start` head): a group of their own, which runs beside the multi-node group on
# the other worker (with the modules above), so the suite fits its 10 minutes on two cores. The
# multi-node modules, whose checks time real preemptions, never share the machine with another
# multi-node cluster.
EMBEDDED_RAY = {
    "test_cache",
    "test_core",
    "test_failure_kinds",
    "test_flyte_compat",
    "test_flyte_dropin",
    "test_flytekit",
    "test_io",
    "test_metrics",
    "test_progress",
    "test_run_names",
    "test_security",
    "test_ship",
    "test_validation",
}


def _group(module: str) -> str:
    if module in NO_RAY:
        return "no-ray"
    return "ray-embedded" if module in EMBEDDED_RAY else "ray"


def pytest_configure(config):
    # xdist hands out groups largest first (by test count) unless told not to: the multi-node
    # group (fewest tests, longest to run) must start at once on a worker of its own, not queue
    # behind another group. In collection order it comes first (test_attach.py).
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist runs a group on one worker")


# tryfirst: xdist's own collection hook reads the marks to form groups; it must run after this one
# (without it the marks came too late and Ray modules ran on both workers at once).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        item.add_marker(pytest.mark.xdist_group(_group(name)))

from flyte_ray.testing import local_cluster  # noqa: E402,F401  (the public fixture)


@pytest.fixture(scope="module")
def embedded():
    """flyte-ray's embedded local cluster with a single CPU."""
    flyte_ray.shutdown()
    storage = tempfile.mkdtemp(prefix="frs-")
    flyte_ray.init(num_cpus=1, storage=storage)
    yield storage
    flyte_ray.shutdown()


SPOT_FLEET = (
    NodeSpec("spot-1", market="spot"),
    NodeSpec("spot-2", market="spot"),
    NodeSpec("od-1", market="ondemand"),
    NodeSpec("gpu-spot", market="spot", queues=("gpu-pool",), accelerator="A100", gpus=1),
    NodeSpec("gpu-od", market="ondemand", queues=("gpu-pool",), accelerator="A100", gpus=1),
)


@pytest.fixture(scope="module")
def fleet():
    """A real local multi-node cluster: two spot nodes, one on-demand node, and a GPU queue pool
    (one spot, one on-demand node serving queue 'gpu-pool' with a fake A100)."""
    flyte_ray.shutdown()
    storage = tempfile.mkdtemp(prefix="frs-")
    with LocalCluster(SPOT_FLEET, storage=storage, system_retries=3) as cluster:
        yield cluster
