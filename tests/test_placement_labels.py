"""Placement by Ray node labels (``label_selector``) on real local clusters whose nodes declare no
market or queue resources, the automatic choice between markers and labels, ``init(placement=)``
and a cluster that mixes both conventions. The marker-mode cases are in test_placement.py."""

import io
import os
import tempfile
import textwrap
import time

import pytest
import ray

import flyte_ray as flyte
from flyte_ray._ray import placement as pl
from flyte_ray.doctor import doctor
from flyte_ray.errors import PlacementError, RetriesExhaustedError
from flyte_ray.testing import LocalCluster, NodeSpec

import tasks_labels as tl

pytestmark = pytest.mark.timeout(180)

FLEET = (
    NodeSpec("spot-1", market="spot"),
    NodeSpec("spot-2", market="spot"),
    NodeSpec("od-1", market="ondemand"),
    NodeSpec("gpu-spot", market="spot", queues=("gpu-pool",), accelerator="A100", gpus=1),
    NodeSpec("gpu-od", market="ondemand", queues=("gpu-pool",), accelerator="A100", gpus=1),
)


@pytest.fixture(scope="class")
def lfleet():
    """The marker suite's fleet, every node (the head too) declaring labels only."""
    flyte.shutdown()
    with LocalCluster(FLEET, node_placement="labels", storage=tempfile.mkdtemp(prefix="frs-"),
                      system_retries=3) as cluster:
        yield cluster


def _wait_for(path, timeout=30):
    deadline = time.time() + timeout
    while not (os.path.exists(path) and os.path.getsize(path) > 0):
        if time.time() > deadline:
            raise TimeoutError(path)
        time.sleep(0.05)
    return open(path).read().split()[-1]


def _report(**kw):
    buf = io.StringIO()
    rc = doctor(out=buf, **kw)
    return rc, buf.getvalue()


class TestLabelFleet:
    def test_nodes_declare_labels_only_and_the_cluster_is_in_label_mode(self, lfleet):
        for n in ray.nodes():
            if not n["Alive"]:
                continue
            names = set(n["Resources"])
            assert not names & {"spot", "ondemand"} and not any(k.startswith("queue:") for k in names), names
            assert n["Labels"][pl.MARKET_LABEL] == ("spot" if lfleet.market_of(n["NodeID"]) == "spot" else "on-demand")
        assert tl.whoami()["labels"]["flyte-ray.io/queue-default"] == "true"
        view = pl.cluster_view()
        assert view.explain()[0] == "labels" and view.mode() == "labels"

    def test_attempts_ask_for_hard_label_selectors(self, lfleet):
        base = {"num_cpus": 1, "num_gpus": 1, "accelerator_type": "A100"}
        spot = pl.attempt_options(base, "spot", "gpu-pool")
        od = pl.attempt_options(base, "ondemand", None)
        assert spot["label_selector"] == {"ray.io/market-type": "spot", "flyte-ray.io/queue-gpu-pool": "true",
                                          "ray.io/accelerator-type": "A100"}
        assert od["label_selector"]["ray.io/market-type"] == "on-demand"
        assert od["label_selector"]["flyte-ray.io/queue-default"] == "true"
        for opts in (spot, od):  # hard constraints only; no markers
            assert "fallback_strategy" not in opts and "resources" not in opts and "accelerator_type" not in opts
        assert base == {"num_cpus": 1, "num_gpus": 1, "accelerator_type": "A100"}  # not modified

    def test_retries_2_always_failing_runs_spot_spot_ondemand(self, lfleet, tmp_path):
        log = tmp_path / "log"
        run = flyte.run(tl.always_fails, str(log))
        with pytest.raises(RetriesExhaustedError):
            run.outputs()
        assert [lfleet.market_of(n) for n in log.read_text().split()] == ["spot", "spot", "ondemand"]
        assert [r.market for r in run.history] == ["spot", "spot", "ondemand"]
        assert [lfleet.market_of(r.node_id) for r in run.history] == ["spot", "spot", "ondemand"]

    def test_retries_0_never_runs_on_spot(self, lfleet):
        run = flyte.run(tl.once)
        info = run.outputs()
        assert info["market"] == "ondemand" and lfleet.market_of(info["node"]) == "ondemand"
        assert len(run.history) == 1

    def test_interruptible_precedence_lands_where_the_most_specific_level_says(self, lfleet):
        m = lfleet.market_of
        assert m(tl.where()["node"]) == "spot"  # env says interruptible
        assert m(tl.where_task_false()["node"]) == "ondemand"  # task says no
        assert m(tl.where.override(interruptible=False)()["node"]) == "ondemand"
        assert m(tl.where_task_false.override(interruptible=True)()["node"]) == "spot"
        assert m(tl.where_plain()["node"]) == "ondemand"
        assert m(tl.where_plain.override(interruptible=True, retries=1)()["node"]) == "spot"

    def test_queues_at_env_task_and_override_level(self, lfleet):
        pool_nodes = {"gpu-spot", "gpu-od"}
        assert lfleet.name_of(tl.where_pool()["node"]) == "gpu-spot"  # env-level queue, spot
        assert lfleet.name_of(tl.where_task_queue()["node"]) == "gpu-spot"  # task-level queue
        assert lfleet.name_of(tl.where.override(queue="gpu-pool")()["node"]) in pool_nodes  # invocation level
        assert lfleet.name_of(tl.where_pool.override(interruptible=False)()["node"]) == "gpu-od"
        for _ in range(6):  # no queue -> only nodes labelled for the default queue, never the pool
            info = tl.where()
            assert lfleet.name_of(info["node"]) not in pool_nodes and info["queue"] == "default"

    def test_gpu_type_reaches_accelerator_nodes(self, lfleet):
        t = tl.where_plain.override(resources=flyte.Resources(cpu=1, gpu="A100:1"), queue="gpu-pool")
        assert lfleet.name_of(t()["node"]) == "gpu-od"

    def test_ondemand_that_cannot_start_fails_naming_the_label(self, lfleet):
        with pytest.raises(PlacementError, match="flyte-ray.io/queue-nowhere=true") as info:
            tl.nowhere()
        assert "flyte-ray.io/queue-nowhere=true" in info.value.missing

    def test_a_queue_name_ray_cannot_hold_as_a_label_fails_naming_it(self, lfleet):
        with pytest.raises(ValueError, match="'bad_'"):
            tl.bad_queue()

    def test_preemption_is_a_system_retry_and_final_attempt_is_ondemand(self, lfleet, tmp_path):
        flag = str(tmp_path / "flag")
        run = flyte.run(tl.preempt_then_user_error, flag)
        node = _wait_for(flag)
        assert lfleet.market_of(node) == "spot"
        lfleet.preempt(lfleet.name_of(node), replace=True)  # the replacement declares labels too
        info = run.outputs()
        h = run.history
        assert [r.outcome for r in h] == ["preemption", "failed", "succeeded"]
        assert [r.failure_kind for r in h] == ["system", "user", None]
        assert [lfleet.market_of(r.node_id) for r in h] == ["spot", "spot", "ondemand"]
        assert info["user_attempt"] == 1 and info["system_failures"] == 1 and info["attempt"] == 2

    def test_a_spot_attempt_no_labelled_node_serves_moves_to_ondemand_at_once(self, lfleet):
        lfleet.add_node("etl-od", market="ondemand", queues=("etl",))  # labels, like the fleet
        run = flyte.run(tl.where.override(queue="etl"))
        info = run.outputs(timeout=60)
        assert lfleet.name_of(info["node"]) == "etl-od" and info["market"] == "ondemand"
        assert [r.outcome for r in run.history] == ["spot_unavailable", "succeeded"]
        # the closest node lacks one of the two: spot nodes serve no etl queue, etl-od is on-demand
        err = run.history[0].error
        assert "flyte-ray.io/queue-etl=true" in err or "ray.io/market-type=spot" in err, err

    def test_work_only_a_launchable_labelled_node_type_offers_waits(self, lfleet, tmp_path):
        h100 = tl.where_plain.override(resources=flyte.Resources(cpu=1, gpu="H100:1"))
        with pytest.raises(PlacementError, match="ray.io/accelerator-type=H100"):
            h100()  # no live node and no cluster config: fails at once, naming the label
        config = tmp_path / "cluster.yaml"
        config.write_text(textwrap.dedent('''
            cluster_name: t
            max_workers: 2
            head_node_type: head
            provider: {type: local, head_ip: 127.0.0.1}
            available_node_types:
              head: {resources: {CPU: 0}, labels: {ray.io/market-type: on-demand}, max_workers: 0, node_config: {}}
              h100-od:
                resources: {CPU: 8, GPU: 1}
                labels: {ray.io/market-type: on-demand, flyte-ray.io/queue-default: "true", ray.io/accelerator-type: H100}
                max_workers: 2
                node_config: {}
        '''))
        keep = {"storage": flyte.current_settings().storage, "system_retries": 3}
        flyte.init(cluster_config=str(config), **keep)
        try:
            run = flyte.run(h100)
            deadline = time.time() + 10
            while time.time() < deadline and not run.done():
                time.sleep(0.2)
            assert not run.done()  # it waits for h100-od to launch instead of failing
            run.cancel()
        finally:
            flyte.init(**keep)

    def test_supervising_actor_pool_manager_and_replicas_follow_the_labels(self, lfleet):
        info = tl.warm_where()
        assert info["market"] == "spot" and lfleet.market_of(info["node"]) == "spot"
        actors = {a["Name"]: a for a in ray._private.state.actors().values() if a["State"] == "ALIVE"}
        sup = actors["flyte-ray-supervisor"]
        assert lfleet.market_of(sup["Address"]["NodeID"]) == "ondemand"
        managers = [a for name, a in actors.items() if name.startswith("flyte-ray-pool:lwarm:")]
        assert managers and all(lfleet.market_of(a["Address"]["NodeID"]) == "ondemand" for a in managers)

    def test_init_override_forces_markers_and_back(self, lfleet):
        view = pl.cluster_view()
        keep = {"storage": flyte.current_settings().storage, "system_retries": 3}
        flyte.init(placement="markers", **keep)  # keeps the connection
        try:
            assert view.mode(flyte.current_settings().placement) == "markers"
            # No node declares markers: the constraint is dropped (one warning), nothing pends.
            assert "label_selector" not in pl.attempt_options({"num_cpus": 1}, "spot", None, "markers")
            assert tl.where_plain()["market"] == "ondemand"
        finally:
            flyte.init(placement="auto", **keep)
        assert view.mode(flyte.current_settings().placement) == "labels"
        with pytest.raises(ValueError, match="placement"):
            flyte.init(placement="resources")

    def test_doctor_reports_label_mode_and_why_tasks_can_or_cannot_be_placed(self, lfleet, tmp_path):
        mod = tmp_path / "doctor_label_tasks.py"
        mod.write_text(textwrap.dedent('''
            import flyte_ray
            env = flyte_ray.TaskEnvironment(name="ldoc", interruptible=True)

            @env.task(retries=1, queue="gpu-pool")
            def pooled() -> None: ...

            @env.task(queue="nowhere")
            def lost() -> None: ...
        '''))
        rc, report = _report(address=lfleet.address, module=str(mod))
        assert rc == 1, report
        assert "Placement: labels (nodes declare the ray.io/market-type label and no market resources)" in report
        queues = report.split("Queues:")[1].split("Accelerators:")[0]
        assert "gpu-pool" in queues and "default" in queues
        pooled = report.split("  ldoc.pooled (")[1].split("  ldoc.")[0]
        assert ": OK" in pooled and "ray.io/market-type=spot" in pooled and "(by labels)" in pooled
        lost = report.split("  ldoc.lost (")[1]
        assert "CANNOT BE PLACED" in lost and "no node declares flyte-ray.io/queue-nowhere=true" in lost


MIXED = (
    NodeSpec("spot-m", market="spot"),
    NodeSpec("od-m", market="ondemand"),
    NodeSpec("spot-l", market="spot", queues=("lq",), placement="labels"),
    NodeSpec("od-l", market="ondemand", queues=("lq",), placement="labels"),
)


@pytest.fixture(scope="class")
def mixed():
    """Markers on the head and the default queue's nodes; labels on the nodes of queue 'lq'."""
    flyte.shutdown()
    with LocalCluster(MIXED, storage=tempfile.mkdtemp(prefix="frs-"), system_retries=3) as cluster:
        yield cluster


class TestMixedCluster:
    def test_each_attempt_uses_the_convention_of_the_nodes_serving_it(self, mixed):
        view = pl.cluster_view()
        assert view.explain()[0] == "mixed"
        assert view.mode("auto", "spot", "default") == "markers"
        assert view.mode("auto", "ondemand", "lq") == "labels"
        assert view.mode("auto", "ondemand", None) == "markers"  # the head: supervising actor, pool managers
        assert view.mode("auto", "spot", "elsewhere") == "markers"  # served by no live node: markers
        names = mixed.name_of
        assert names(tl.where()["node"]) == "spot-m"
        assert names(tl.where_plain()["node"]) == "od-m"
        assert names(tl.where.override(queue="lq")()["node"]) == "spot-l"
        assert names(tl.where_plain.override(queue="lq")()["node"]) == "od-l"

    def test_retries_2_on_label_nodes_runs_spot_spot_ondemand(self, mixed, tmp_path):
        log = tmp_path / "log"
        run = flyte.run(tl.always_fails.override(queue="lq"), str(log))
        with pytest.raises(RetriesExhaustedError):
            run.outputs()
        assert [mixed.name_of(n) for n in log.read_text().split()] == ["spot-l", "spot-l", "od-l"]

    def test_doctor_names_label_nodes_that_no_attempt_reaches(self, mixed):
        mixed.add_node("spot-l2", market="spot", placement="labels")  # default queue: markers serve it
        rc, report = _report(address=mixed.address)
        assert rc == 0, report
        assert "Placement: mixed" in report
        warning = next(line for line in report.splitlines() if "declares its market by labels only" in line)
        assert "spot / queue default are placed by markers" in warning


def _view(*nodes):
    """A cluster view over made-up nodes: (resource names, labels) each."""
    view = pl.ClusterView()
    view._snap, view._at = pl._Snapshot([({k: 1000.0 for k in r}, dict(lb)) for r, lb in nodes]), time.monotonic()
    return view


def test_the_automatic_choice_follows_what_nodes_declare():
    spot_l = ((), {pl.MARKET_LABEL: "spot", "flyte-ray.io/queue-default": "true"})
    od_l = ((), {pl.MARKET_LABEL: "on-demand", "flyte-ray.io/queue-default": "true"})
    spot_m = (("spot", "queue:default"), {})
    head_m = (("ondemand",), {})
    assert _view(spot_m, head_m).mode() == "markers"
    assert _view(spot_l, od_l).mode() == "labels"
    assert _view().mode() == "markers" and not _view().has_markets()  # embedded: no constraint
    assert _view(((), {"flyte-ray.io/queue-etl": "true"})).mode() == "labels"  # queue labels only
    mixed = _view(head_m, spot_m, spot_l, od_l)
    assert mixed.explain()[0] == "mixed"
    assert mixed.mode("auto", "spot", "default") == "markers"  # a marker node serves it
    assert mixed.mode("auto", "ondemand", "default") == "labels"  # the marker head serves no queue
    assert mixed.mode("auto", "ondemand", None) == "markers"  # actors: the head
    for override in ("markers", "labels"):
        assert mixed.mode(override, "spot", "default") == override
        assert mixed.placement(override).mode == override
    assert _view(spot_l).has_markets("markers") is False and _view(spot_l).has_markets() is True


def test_doctor_reads_node_type_labels_from_a_cluster_config(tmp_path):
    from flyte_ray.doctor import load_node_types

    cfg = tmp_path / "labels.yaml"
    cfg.write_text(textwrap.dedent('''
        cluster_name: labels
        max_workers: 4
        head_node_type: head
        available_node_types:
          head:
            resources: {CPU: 0}
            labels: {ray.io/market-type: on-demand}
            node_config: {}
          cpu-spot:
            resources: {CPU: 2}
            labels: {ray.io/market-type: spot, flyte-ray.io/queue-default: "true"}
            node_config: {}
    '''))
    nodes, head = load_node_types(str(cfg))
    by = {n.name: n for n in nodes}
    spot = by["cpu-spot"]
    assert (spot.market, spot.queues, spot.convention) == ("spot", ["default"], "labels")
    assert not spot.lacks({"CPU": 1, **pl.constraint("labels", "spot", "default")})
    assert spot.lacks(pl.constraint("labels", "ondemand", "default")) == ["ray.io/market-type=on-demand"]
    assert by[head].market == "ondemand" and by[head].queues == []


def test_init_checks_the_placement_mode():
    from flyte_ray import runtime

    assert runtime.check_init_args(placement="labels").settings.placement == "labels"
    assert runtime.check_init_args().settings.placement == "auto"
    with pytest.raises(ValueError, match="placement.*'auto' or 'markers' or 'labels'"):
        runtime.check_init_args(placement="label")
    with pytest.raises(TypeError, match="placement"):
        runtime.check_init_args(placement=None)
