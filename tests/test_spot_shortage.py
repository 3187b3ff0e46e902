"""Spot shortage and infeasible placement on real local clusters (#14): a spot attempt that finds
no spot capacity moves to on-demand within the spot wait; work no live or launchable node could
run fails at once, or waits when a node type the cluster can launch offers it."""

import logging
import os
import time

import pytest
import yaml

import flyte_ray as flyte
from flyte_ray.errors import PlacementError
from flyte_ray.testing import LocalCluster, NodeSpec
from helpers import wait_until

import tasks_shortage as ts

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """One spot and one on-demand node; spot wait 3 s."""
    flyte.shutdown()
    storage = str(tmp_path_factory.mktemp("store"))
    nodes = [NodeSpec("spot-1", market="spot", cpus=1), NodeSpec("od-1", market="ondemand", cpus=1)]
    with LocalCluster(nodes, storage=storage, spot_wait=3) as cluster:
        yield cluster


def test_a_spot_node_gone_for_good_moves_the_call_to_ondemand(pair, tmp_path):
    flag = str(tmp_path / "flag")
    run = flyte.run(ts.steady, flag)
    wait_until(lambda: os.path.exists(flag + ".node"), timeout=60)
    pair.preempt("spot-1")  # no replacement: spot capacity is gone
    out = run.outputs(timeout=120)
    assert out["market"] == "ondemand" and pair.name_of(out["node"]) == "od-1"
    assert [h.outcome for h in run.history] == ["preemption", "spot_unavailable", "succeeded"]
    assert [h.market for h in run.history] == ["spot", "spot", "ondemand"]
    assert run.user_failures == 0 and run.system_failures == 1
    assert "no spot capacity" in run.history[1].error


def test_work_that_no_live_node_offers_fails_at_once_naming_it(pair):
    with pytest.raises(PlacementError, match="accelerator_type:H100") as ei:
        ts.wants_h100.override(resources=flyte.Resources(cpu=1, gpu="H100:1"))()
    assert "accelerator_type:H100" in ei.value.missing
    # a spot attempt that nothing can run moves to on-demand at once, then fails the same way
    run = flyte.run(ts.spot_wants_h100.override(resources=flyte.Resources(cpu=1, gpu="H100:1"), retries=1))
    with pytest.raises(PlacementError):
        run.outputs(timeout=60)
    assert [h.outcome for h in run.history] == ["spot_unavailable", "infeasible"]


def test_work_a_launchable_node_type_offers_waits_and_says_which(pair, tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "cluster_name": "t", "max_workers": 2, "head_node_type": "head",
        "provider": {"type": "local", "head_ip": "127.0.0.1"},
        "available_node_types": {
            "head": {"resources": {"CPU": 0, "ondemand": 1000}, "max_workers": 0, "node_config": {}},
            "h100-ondemand": {"resources": {"CPU": 8, "GPU": 1, "accelerator_type:H100": 1, "ondemand": 1000,
                                            "queue:default": 1000}, "min_workers": 0, "max_workers": 2,
                              "node_config": {}},
        },
    }))
    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Catch()
    logging.getLogger("flyte_ray").addHandler(handler)
    flyte.init(address="auto", cluster_config=str(config), spot_wait=3)
    try:
        run = flyte.run(ts.wants_h100.override(resources=flyte.Resources(cpu=1, gpu="H100:1")))
        wait_until(lambda: any("h100-ondemand" in m for m in records), timeout=30)
        time.sleep(1)
        assert not run.done()  # it waits for the node type to launch instead of failing
        run.cancel()
    finally:
        logging.getLogger("flyte_ray").removeHandler(handler)
        flyte.init(address="auto", spot_wait=3)
