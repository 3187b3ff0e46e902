"""The cost report and price tables (flyte_ray/report/cost.py, flyte_ray/report/prices.py): pure
functions over AttemptEvent lists, no Ray.

Every price in this file is test data (round numbers), not a cloud price."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flyte_ray._core.events import AttemptEvent
from flyte_ray.report.cost import CostReport, MissingPrice, cost_report
from flyte_ray.report.prices import NodeTypeEntry, PriceTable, Rates, load_prices

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "cluster-configs"

PRICES = {
    "version": 1,
    "currency": "USD",
    "instance_types": {"m5.2xlarge": {"ondemand": 0.40, "spot": 0.10}},
    "node_types": {"cpu-spot": {"instance_type": "m5.2xlarge"}, "cpu-ondemand": {"instance_type": "m5.2xlarge"}},
}


def ev(**kw) -> AttemptEvent:
    base = dict(
        run="r1",
        call_id="root/train-0",
        fqn="wf.train",
        attempt=0,
        user_attempt=0,
        system_failures=0,
        market="spot",
        queue="default",
        outcome="succeeded",
        failure_kind=None,
        submitted=0.0,
    )
    base.update(kw)
    return AttemptEvent(**base)


CPU = dict(cpus=4.0, node_cpus=8.0)  # half of an 8-CPU node: share 0.5


def scenario() -> list[AttemptEvent]:
    return [
        # wf.train, one call, three attempts on m5.2xlarge (spot 0.10, on-demand 0.40 per hour)
        # a0: spot, held 1000..4600 = 3600 s, preempted; it saved a checkpoint at 3400 and a1
        #     resumed from it -> lost = 4600 - max(1000, 3400) = 1200 s of work
        ev(attempt=0, node_type="cpu-spot", instance_type="m5.2xlarge", submitted=900.0, started=1000.0,
           ended=4600.0, runtime=3600.0, outcome="preemption", failure_kind="system", ckpt_last_saved=3400.0, **CPU),
        # a1: spot, 5000..5720 = 720 s, user failure (the code raised)
        ev(attempt=1, system_failures=1, node_type="cpu-spot", instance_type="m5.2xlarge", submitted=4700.0,
           started=5000.0, ended=5720.0, runtime=720.0, outcome="failed", failure_kind="user",
           ckpt_resumed_from=3400.0, **CPU),
        # a2: on-demand, 6000..7800 = 1800 s, succeeded
        ev(attempt=2, user_attempt=1, system_failures=1, market="ondemand", node_type="cpu-ondemand",
           instance_type="m5.2xlarge", submitted=5800.0, started=6000.0, ended=7800.0, runtime=1800.0,
           ckpt_resumed_from=3400.0, **CPU),
        # wf.prep: answered from the cache
        ev(call_id="root/prep-0", fqn="wf.prep", market="", queue="", outcome="cached", submitted=100.0, ended=100.5),
        # wf.gpu_step: no spot capacity (never placed: its 300 s waiting are no node time), then
        # on-demand on gpu-ondemand / g5.xlarge, which the table does not price: whole node 1800 s
        ev(call_id="root/gpu-0", fqn="wf.gpu_step", attempt=0, submitted=7000.0, ended=7300.0,
           outcome="spot_unavailable"),
        ev(call_id="root/gpu-0", fqn="wf.gpu_step", attempt=1, market="ondemand", node_type="gpu-ondemand",
           instance_type="g5.xlarge", submitted=7300.0, started=8000.0, ended=9800.0, runtime=1800.0,
           cpus=4.0, gpus=1.0, node_cpus=4.0, node_gpus=1.0),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- the report
def test_scenario_totals_by_hand():
    r = cost_report(scenario(), PRICES)
    assert isinstance(r, CostReport)
    assert r.priced and r.currency == "USD" and r.runs == ("r1",)
    # calls: train-0, prep-0, gpu-0; attempts: 3 + 2 (the cache hit is not one)
    assert (r.calls, r.attempts, r.cache_hits) == (3, 5, 1)
    assert (r.preemptions, r.node_failures, r.user_failures, r.system_failures, r.unplaced) == (1, 0, 1, 1, 1)
    assert (r.share_unknown, r.start_unknown) == (0, 0)
    # node-seconds = seconds x share: a0 3600*0.5 = 1800, a1 720*0.5 = 360, a2 1800*0.5 = 900,
    # gpu 1800*1.0 = 1800 (share: 1 of 1 GPU) -> 4860; spot 1800+360 = 2160; on-demand 900+1800 = 2700
    assert r.node_seconds == pytest.approx(4860.0)
    assert r.spot_node_seconds == pytest.approx(2160.0)
    assert r.ondemand_node_seconds == pytest.approx(2700.0)
    # lost: 1200 s of a0's work, x 0.5 = 600 node-seconds
    assert r.lost_work_s == pytest.approx(1200.0)
    assert r.lost_node_seconds == pytest.approx(600.0)
    # useful = node-seconds minus lost: 1200 + 360 + 900 + 1800 = 4260
    assert r.useful_node_seconds == pytest.approx(4260.0)
    # cost (the gpu attempt has no price: excluded):
    #   a0 1800/3600*0.10 = 0.05, a1 360/3600*0.10 = 0.01, a2 900/3600*0.40 = 0.10 -> 0.16
    assert r.spot_cost == pytest.approx(0.06)
    assert r.ondemand_cost == pytest.approx(0.10)
    assert r.cost == pytest.approx(0.16)
    # all on-demand, same useful work: a0 1200/3600*0.40 = 0.1333.., a1 360/3600*0.40 = 0.04 (the
    # user failure would have happened on on-demand too), a2 0.10 -> 0.82/3 = 0.27333..
    assert r.all_ondemand_cost == pytest.approx(0.82 / 3)
    # savings 0.82/3 - 0.48/3 = 0.34/3 = 0.11333..; percent 34/82 = 41.46..%
    assert r.savings == pytest.approx(0.34 / 3)
    assert r.savings_pct == pytest.approx(100 * 34 / 82)
    # lost-work cost: 600/3600*0.10 = 0.01666..
    assert r.lost_cost == pytest.approx(0.1 / 6)
    # the gpu attempt's 1800 node-seconds: no on-demand price for gpu-ondemand / g5.xlarge
    assert r.missing == (
        MissingPrice(node_type="gpu-ondemand", instance_type="g5.xlarge", market="ondemand", lacks=("ondemand",),
                     attempts=1, node_seconds=1800.0),
    )  # fmt: skip
    assert r.missing_node_seconds == pytest.approx(1800.0)


def test_scenario_per_task():
    r = cost_report(scenario(), PRICES)
    tasks = {t.fqn: t for t in r.tasks}
    assert [t.fqn for t in r.tasks] == ["wf.gpu_step", "wf.prep", "wf.train"]
    train = tasks["wf.train"]
    assert (train.calls, train.attempts, train.preemptions, train.user_failures, train.system_failures) == (
        1,
        3,
        1,
        1,
        1,
    )
    assert train.node_seconds == pytest.approx(3060.0)  # 1800 + 360 + 900
    assert train.cost == pytest.approx(0.16)
    assert train.all_ondemand_cost == pytest.approx(0.82 / 3)
    assert train.savings == pytest.approx(0.34 / 3)
    assert train.lost_work_s == pytest.approx(1200.0)
    prep = tasks["wf.prep"]
    assert (prep.calls, prep.attempts, prep.cache_hits, prep.node_seconds, prep.cost) == (1, 0, 1, 0.0, 0.0)
    gpu = tasks["wf.gpu_step"]
    assert (gpu.attempts, gpu.unplaced, gpu.node_seconds) == (2, 1, pytest.approx(1800.0))
    # priced table, but nothing of this task priced: zero money, no percent
    assert (gpu.cost, gpu.all_ondemand_cost, gpu.savings, gpu.savings_pct) == (0.0, 0.0, 0.0, None)
    # totals are the sums over tasks
    assert sum(t.node_seconds for t in r.tasks) == pytest.approx(r.node_seconds)
    assert sum(t.cost or 0.0 for t in r.tasks) == pytest.approx(r.cost)
    assert sum(t.attempts for t in r.tasks) == r.attempts


def test_text_says_what_is_not_priced():
    r = cost_report(scenario(), PRICES)
    text = r.to_text()
    assert "run r1" in text
    assert "USD" in text
    assert "0.1600" in text  # the total cost, 4 decimals
    assert "0.2733" in text  # all on-demand
    assert "0.1133" in text and "41.5%" in text  # savings
    assert "prices missing for gpu-ondemand (g5.xlarge), ondemand attempts" in text
    assert "1,800.0 node-seconds not priced" in text
    assert "exclude" in text
    for line in text.splitlines():
        assert line == line.rstrip()
    assert "total" in text and "(excludes 1,800.0 node-seconds not priced)" in text
    # the money table's columns line up (right-aligned: rows without a note end together)
    rows = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  spot") or ln.startswith("  on-demand")}
    assert len(rows["spot"]) == len(rows["on-demand"])
    assert rows["spot"].index("2,160.0") + 7 == rows["on-demand"].index("2,700.0") + 7


def test_no_price_table_still_reports_node_time():
    r = cost_report(scenario())
    assert not r.priced and r.currency is None
    assert (r.cost, r.all_ondemand_cost, r.savings, r.lost_cost, r.savings_pct) == (None, None, None, None, None)
    assert r.node_seconds == pytest.approx(4860.0)
    assert r.lost_work_s == pytest.approx(1200.0)
    assert r.preemptions == 1
    # every attempt with node time is not priced: 1800 + 360 (spot), 900 + 1800 (on-demand)
    assert r.missing_node_seconds == pytest.approx(4860.0)
    by = {(m.node_type, m.market): m for m in r.missing}
    assert by[("cpu-spot", "spot")].lacks == ("spot", "ondemand")
    assert by[("cpu-spot", "spot")].node_seconds == pytest.approx(2160.0)
    assert by[("cpu-ondemand", "ondemand")].lacks == ("ondemand",)
    text = r.to_text()
    assert "no price table" in text
    assert "prices missing" in text and "4,860.0 node-seconds not priced" in text
    json.dumps(r.to_dict())


def test_to_dict_is_json():
    d = json.loads(json.dumps(cost_report(scenario(), PRICES).to_dict()))
    assert d["cost"] == pytest.approx(0.16)
    assert d["missing"][0]["lacks"] == ["ondemand"]
    assert d["missing_node_seconds"] == pytest.approx(1800.0)
    assert {t["fqn"] for t in d["tasks"]} == {"wf.train", "wf.prep", "wf.gpu_step"}


def test_unknown_share_and_unknown_start():
    evs = [
        # no node totals recorded: share 0 -> the whole node; 3600 s -> 3600 node-seconds
        ev(call_id="a", node_type="cpu-spot", started=0.0, ended=3600.0),
        # a plain task lost with its node, never reported a start: submitted 0, ended 1800 -> 1800 s,
        # all of it lost (no next attempt); share 0.5 -> 900 node-seconds, all lost
        ev(call_id="b", node_type="cpu-spot", submitted=0.0, ended=1800.0, outcome="preemption",
           failure_kind="system", **CPU),
        # cancelled while waiting: no node time
        ev(call_id="c", node_type="cpu-spot", submitted=0.0, ended=500.0, outcome="cancelled", **CPU),
    ]  # fmt: skip
    r = cost_report(evs, PRICES)
    assert (r.share_unknown, r.start_unknown) == (1, 1)
    assert r.node_seconds == pytest.approx(4500.0)  # 3600 + 900 + 0
    assert r.lost_node_seconds == pytest.approx(900.0)
    # cost 4500/3600*0.10 = 0.125; all on-demand: 3600/3600*0.40 = 0.40 (b did nothing useful)
    assert r.cost == pytest.approx(0.125)
    assert r.all_ondemand_cost == pytest.approx(0.40)
    assert r.lost_cost == pytest.approx(0.025)  # 900/3600*0.10
    text = r.to_text()
    assert "counted as the whole node" in text and "never reported a start" in text


def test_prices_from_a_file(tmp_path):
    p = tmp_path / "prices.yaml"
    p.write_text("version: 1\ncurrency: EUR\ninstance_types:\n  m5.2xlarge: {ondemand: 0.4, spot: 0.1}\n")
    r = cost_report([ev(instance_type="m5.2xlarge", started=0.0, ended=3600.0, **CPU)], str(p))
    assert r.currency == "EUR" and r.cost == pytest.approx(0.05)
    assert "EUR" in r.to_text()


# ---------------------------------------------------------------------------- price tables
def test_lookup_order():
    t = PriceTable.from_mapping(
        {
            "version": 1,
            "currency": "USD",
            "instance_types": {"m5.2xlarge": {"ondemand": 0.4, "spot": 0.1}, "x.large": {"ondemand": 2.0}},
            "node_types": {
                "own": {"spot": 0.3, "instance_type": "m5.2xlarge"},
                "mapped": {"instance_type": "x.large"},
            },
        }
    )
    assert t.price("own", "", "spot") == 0.3  # the node type's own price first
    assert t.price("own", "", "ondemand") == 0.4  # then its instance type's
    assert t.ondemand_price("mapped", "m5.2xlarge") == 2.0
    # the node type names x.large, which has no spot price: none, even though the node said m5.2xlarge
    assert t.price("mapped", "m5.2xlarge", "spot") is None
    assert t.price("unknown", "m5.2xlarge", "spot") == 0.1  # unknown node type: the node's instance type
    assert t.price("", "m5.2xlarge", "ondemand") == 0.4
    assert t.price("", "", "spot") is None
    assert t.price("own", "", "weird-market") is None


@pytest.mark.parametrize(
    "table, field, accepted",
    [
        ({"currency": "USD"}, "prices.version: missing", "version: 1"),
        ({"version": 2, "currency": "USD"}, "prices.version", "expected 1"),
        ({"version": True}, "prices.version", "expected 1"),
        ({"version": "1"}, "prices.version", "expected 1"),
        ({"version": 1, "prices": {}}, "prices: unknown key 'prices'", "accepted: version, currency"),
        ({"version": 1, "currency": "usd"}, "prices.currency", "three capital letters"),
        ({"version": 1, "instance_types": {"m5": {"spot": 1.0}}}, "prices.currency: missing", "e.g. USD"),
        ({"version": 1, "instance_types": []}, "prices.instance_types", "expected a mapping"),
        ({"version": 1, "instance_types": {"m5.2xlarge": {"spot": -0.1}}}, "prices.instance_types.m5.2xlarge.spot",
         "finite number >= 0"),
        ({"version": 1, "instance_types": {"m5.2xlarge": {"spot": float("nan")}}},
         "prices.instance_types.m5.2xlarge.spot", "finite number >= 0"),
        ({"version": 1, "instance_types": {"m5.2xlarge": {"ondemand": float("inf")}}},
         "prices.instance_types.m5.2xlarge.ondemand", "finite number >= 0"),
        ({"version": 1, "instance_types": {"m5.2xlarge": {"spot": True}}}, "prices.instance_types.m5.2xlarge.spot",
         "finite number >= 0"),
        ({"version": 1, "instance_types": {"m5.2xlarge": {"spot": "0.12"}}}, "prices.instance_types.m5.2xlarge.spot",
         "unquoted"),
        ({"version": 1, "instance_types": {"m5.2xlarge": {"on-demand": 0.4}}},
         "prices.instance_types.m5.2xlarge: unknown key 'on-demand'", "accepted: ondemand, spot"),
        ({"version": 1, "instance_types": {"m5.2xlarge": 0.4}}, "prices.instance_types.m5.2xlarge",
         "expected a mapping with keys ondemand, spot"),
        ({"version": 1, "instance_types": {5: {"spot": 1.0}}}, "prices.instance_types", "non-empty string"),
        ({"version": 1, "node_types": {True: {"instance_type": "m5"}}}, "prices.node_types", "quote it"),
        ({"version": 1, "node_types": {"cpu-spot": {}}}, "prices.node_types.cpu-spot", "instance_type: NAME"),
        ({"version": 1, "node_types": {"cpu-spot": {"instance_type": 5}}}, "prices.node_types.cpu-spot.instance_type",
         "non-empty string"),
        ({"version": 1, "node_types": {"cpu-spot": {"instance": "m5"}}}, "prices.node_types.cpu-spot: unknown key",
         "accepted: instance_type, ondemand, spot"),
        ({"version": 1, "as_of": 20250101}, "prices.as_of", "expected a string"),
        ([("version", 1)], "prices", "expected a mapping"),
    ],
)  # fmt: skip
def test_validation_names_the_field(table, field, accepted):
    with pytest.raises(ValueError) as ei:
        PriceTable.from_mapping(table)
    msg = str(ei.value)
    assert msg.startswith(field), msg
    assert accepted in msg, msg


def test_load_prices_file_errors(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("version: 1\ncurrency: USD\ninstance_types:\n  m5.2xlarge: {spot: -1}\n")
    with pytest.raises(ValueError, match=r"p\.yaml: prices\.instance_types\.m5\.2xlarge\.spot"):
        load_prices(p)
    p.write_text("version: 1\ncurrency: USD\ninstance_types:\n  m5: {spot: 1}\n  m5: {spot: 2}\n")
    with pytest.raises(ValueError, match="given twice"):
        load_prices(p)
    p.write_text("version: 1\n  : [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_prices(p)
    with pytest.raises(ValueError, match="expected a price table"):
        load_prices(42)  # type: ignore[arg-type]
    # a YAML date is accepted for as_of
    p.write_text("version: 1\nas_of: 2025-01-01\n")
    assert load_prices(p).as_of == "2025-01-01"
    t = load_prices(PRICES)
    assert load_prices(t) is t


def test_merged_field_by_field():
    a = PriceTable.from_mapping(
        {
            "version": 1,
            "currency": "USD",
            "instance_types": {"m5": {"ondemand": 1.0, "spot": 0.5}},
            "node_types": {"cpu": {"instance_type": "m5"}},
        }
    )
    b = PriceTable.from_mapping(
        {
            "version": 1,
            "currency": "USD",
            "instance_types": {"m5": {"spot": 0.25}},
            "node_types": {"cpu": {"spot": 0.2}},
        }
    )
    m = a.merged(b)
    assert m.instance_types["m5"] == Rates(ondemand=1.0, spot=0.25)
    assert m.node_types["cpu"] == NodeTypeEntry(instance_type="m5", rates=Rates(spot=0.2))
    assert m.price("cpu", "", "spot") == 0.2 and m.price("cpu", "", "ondemand") == 1.0
    with pytest.raises(ValueError, match="prices.currency: cannot merge a USD table with a EUR table"):
        a.merged(PriceTable.from_mapping({"version": 1, "currency": "EUR"}))


def test_from_cluster_config_aws():
    t = PriceTable.from_cluster_config(CONFIGS / "aws-spot.yaml")
    got = {k: (e.instance_type, e.market) for k, e in t.node_types.items()}
    assert got == {
        "head": ("m5.xlarge", "ondemand"),
        "cpu-spot": ("m5.2xlarge", "spot"),
        "cpu-ondemand": ("m5.2xlarge", "ondemand"),
        "gpu-spot": ("g5.xlarge", "spot"),
        "gpu-ondemand": ("g5.xlarge", "ondemand"),
        "etl-pool": ("r5.4xlarge", "ondemand"),
        "etl-pool-spot": ("r5.4xlarge", "spot"),
    }
    assert not t.has_prices and t.currency is None
    assert t.instance_type_of("cpu-spot") == "m5.2xlarge" and t.market_of("etl-pool-spot") == "spot"
    # merged with a user's prices: node type -> instance type -> price
    user = PriceTable.from_mapping(
        {"version": 1, "currency": "USD", "instance_types": {"m5.2xlarge": {"ondemand": 0.4, "spot": 0.1}}}
    )
    m = t.merged(user)
    assert m.price("cpu-spot", "", "spot") == 0.1
    assert m.ondemand_price("cpu-spot", "") == 0.4
    assert m.price("gpu-spot", "g5.xlarge", "spot") is None
    assert m.market_of("cpu-spot") == "spot" and m.currency == "USD"


def test_from_cluster_config_gcp():
    t = PriceTable.from_cluster_config(str(CONFIGS / "gcp-spot.yaml"))
    got = {k: (e.instance_type, e.market) for k, e in t.node_types.items()}
    # a GPU is billed apart from the machine type on GCP: the accelerator is part of the name
    assert got == {
        "head": ("n2-standard-4", "ondemand"),
        "cpu-spot": ("n2-standard-8", "spot"),
        "cpu-ondemand": ("n2-standard-8", "ondemand"),
        "gpu-spot": ("n1-standard-8_1xnvidia-tesla-t4", "spot"),
        "gpu-ondemand": ("n1-standard-8_1xnvidia-tesla-t4", "ondemand"),
        "etl-pool": ("n2-highmem-16", "ondemand"),
        "etl-pool-spot": ("n2-highmem-16", "spot"),
    }
    # the machine type's price alone never prices a GPU node type
    user = PriceTable.from_mapping(
        {"version": 1, "currency": "USD", "instance_types": {"n1-standard-8": {"ondemand": 1.0, "spot": 0.5}}}
    )
    assert t.merged(user).price("gpu-spot", "n1-standard-8", "spot") is None


def test_from_cluster_config_other_forms():
    t = PriceTable.from_cluster_config(
        {
            "available_node_types": {
                # Ray's own GCP defaults: scheduling as a list, machineType as a URL
                "g": {"node_config": {"machineType": "zones/us-central1-a/machineTypes/n2-standard-2",
                                      "scheduling": [{"preemptible": True}]}},
                "az": {"node_config": {"azure_arm_parameters": {"vmSize": "Standard_D2s_v3", "priority": "Spot"}}},
                "az-od": {"node_config": {"azure_arm_parameters": {"vmSize": "Standard_D2s_v3"}}},
                "marker-only": {"resources": {"spot": 1000}, "node_config": {}},
                "nothing": None,
            }
        }
    )  # fmt: skip
    got = {k: (e.instance_type, e.market) for k, e in t.node_types.items()}
    assert got == {
        "g": ("n2-standard-2", "spot"),
        "az": ("Standard_D2s_v3", "spot"),
        "az-od": ("Standard_D2s_v3", "ondemand"),
        "marker-only": ("", "spot"),
        "nothing": ("", ""),
    }
    with pytest.raises(ValueError, match="RayCluster names no instance types"):
        PriceTable.from_cluster_config(CONFIGS / "kuberay-raycluster.yaml")
    with pytest.raises(ValueError, match="no available_node_types"):
        PriceTable.from_cluster_config({"provider": {}})


def test_example_price_file_holds_placeholders_only():
    path = ROOT / "examples" / "prices.example.yaml"
    text = path.read_text()
    assert "PLACEHOLDER" in text and "FILL IN" in text
    t = load_prices(path)
    assert t.currency == "USD" and t.as_of == "YYYY-MM-DD" and "PLACEHOLDER" in t.source
    prices = [p for r in t.instance_types.values() for p in (r.ondemand, r.spot) if p is not None]
    prices += [p for e in t.node_types.values() for p in (e.rates.ondemand, e.rates.spot) if p is not None]
    assert prices
    # obviously-round numbers: whole halves, never something that looks like a real price
    assert all(float(p * 2).is_integer() for p in prices), prices
    assert all(r.as_of == "YYYY-MM-DD" and r.source == "FILL IN" for r in t.instance_types.values())
    # it prices the repo's AWS config through the node types
    m = PriceTable.from_cluster_config(CONFIGS / "aws-spot.yaml").merged(t)
    assert m.price("gpu-spot", "", "spot") is not None and m.price("etl-pool", "", "ondemand") is not None


# ---------------------------------------------------------------------------- properties
OUTCOMES = [
    ("succeeded", None),
    ("failed", "user"),
    ("oom", "user"),
    ("timeout", "user"),
    ("preemption", "system"),
    ("node_failure", "system"),
    ("spot_unavailable", None),
    ("queued_timeout", None),
    ("cancelled", None),
    ("cached", None),
]
NODE_TYPES = ["cpu-spot", "cpu-ondemand", "gpu", ""]
INSTANCE_TYPES = ["m5.2xlarge", "g5.xlarge", ""]

price_values = st.one_of(st.none(), st.floats(min_value=0.0, max_value=50.0, allow_nan=False))


@st.composite
def tables(draw):
    def rates():
        d = {}
        for m in ("ondemand", "spot"):
            v = draw(price_values)
            if v is not None:
                d[m] = v
        return d

    inst = {}
    for it in INSTANCE_TYPES[:-1]:
        r = rates()
        if r or draw(st.booleans()):
            inst[it] = r
    nts = {}
    for nt in NODE_TYPES[:-1]:
        kind = draw(st.sampled_from(["none", "instance", "own", "both"]))
        entry = {}
        if kind in ("instance", "both"):
            entry["instance_type"] = draw(st.sampled_from(INSTANCE_TYPES[:-1]))
        if kind in ("own", "both"):
            entry.update(rates())
        if entry:
            nts[nt] = entry
    return {"version": 1, "currency": "USD", "instance_types": inst, "node_types": nts}


@st.composite
def call_events(draw, call_id):
    n = draw(st.integers(min_value=1, max_value=4))
    out = []
    t = draw(st.floats(min_value=0.0, max_value=1e5))
    ckpt = None
    for a in range(n):
        outcome, kind = draw(st.sampled_from(OUTCOMES))
        started = None if draw(st.integers(0, 5)) == 0 else t + draw(st.floats(min_value=0.0, max_value=100.0))
        begin = started if started is not None else t
        ended = begin + draw(st.floats(min_value=0.0, max_value=10_000.0))
        runtime = draw(st.one_of(st.none(), st.floats(min_value=0.0, max_value=ended - begin)))
        resumed = ckpt if draw(st.booleans()) else None
        saved = draw(st.one_of(st.none(), st.floats(min_value=begin, max_value=ended)))
        node_cpus = draw(st.sampled_from([0.0, 4.0, 8.0]))
        out.append(
            AttemptEvent(
                run="r",
                call_id=call_id,
                fqn=draw(st.sampled_from(["wf.a", "wf.b"])),
                attempt=a,
                user_attempt=0,
                system_failures=0,
                market="" if outcome == "cached" else draw(st.sampled_from(["spot", "ondemand"])),
                queue="default",
                outcome=outcome,
                failure_kind=kind,
                submitted=t,
                started=started,
                ended=ended,
                runtime=runtime,
                node_type=draw(st.sampled_from(NODE_TYPES)),
                instance_type=draw(st.sampled_from(INSTANCE_TYPES)),
                cpus=draw(st.sampled_from([0.0, 1.0, 4.0, 16.0])),
                gpus=draw(st.sampled_from([0.0, 1.0])),
                node_cpus=node_cpus,
                node_gpus=draw(st.sampled_from([0.0, 1.0, 2.0])),
                ckpt_resumed_from=resumed,
                ckpt_last_saved=saved,
            )
        )
        if saved is not None:
            ckpt = saved
        t = ended
    return out


@st.composite
def runs(draw):
    k = draw(st.integers(min_value=0, max_value=5))
    evs = []
    for i in range(k):
        evs.extend(draw(call_events(f"root/c-{i}")))
    return draw(st.permutations(evs))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(evs=runs(), table=tables())
def test_property_savings_and_no_negative_costs(evs, table):
    r = cost_report(evs, table)
    assert r.savings == r.all_ondemand_cost - r.cost  # by definition, exactly
    for v in (r.cost, r.spot_cost, r.ondemand_cost, r.all_ondemand_cost, r.lost_cost):
        assert v is not None and v >= 0.0 and math.isfinite(v)
    eps = 1e-9 * (1.0 + (r.cost or 0.0))
    assert r.lost_cost <= r.cost + eps
    assert r.spot_cost + r.ondemand_cost == pytest.approx(r.cost, rel=1e-9, abs=1e-12)
    assert 0.0 <= r.lost_node_seconds <= r.node_seconds + 1e-6
    assert r.useful_node_seconds == pytest.approx(r.node_seconds - r.lost_node_seconds, rel=1e-9, abs=1e-6)
    assert r.spot_node_seconds + r.ondemand_node_seconds == pytest.approx(r.node_seconds, rel=1e-9, abs=1e-6)
    assert r.missing_node_seconds <= r.node_seconds + 1e-6
    for t in r.tasks:
        assert t.savings == t.all_ondemand_cost - t.cost
        assert t.cost >= 0.0 and t.all_ondemand_cost >= 0.0 and t.lost_cost >= 0.0
    assert sum(t.cost for t in r.tasks) == pytest.approx(r.cost, rel=1e-9, abs=1e-12)
    assert r.attempts == sum(1 for e in evs if e.outcome != "cached")
    assert r.cache_hits == sum(1 for e in evs if e.outcome == "cached")
    r.to_text()
    json.dumps(r.to_dict())


@settings(max_examples=200, deadline=None)
@given(evs=runs(), spot=st.floats(min_value=0.0, max_value=10.0), extra=st.floats(min_value=0.0, max_value=10.0))
def test_property_spot_never_costs_more_without_lost_work(evs, spot, extra):
    # every price known, spot <= on-demand: with no work lost, spot can only save
    table = {
        "version": 1,
        "currency": "USD",
        "instance_types": {it: {"spot": spot, "ondemand": spot + extra} for it in INSTANCE_TYPES[:-1]},
        "node_types": {nt: {"spot": spot, "ondemand": spot + extra} for nt in NODE_TYPES[:-1]},
    }
    evs = [e for e in evs if e.instance_type or e.node_type]
    r = cost_report(evs, table)
    assert not r.missing
    if r.lost_work_s == 0:
        assert r.savings >= -1e-9 * (1.0 + r.cost)
