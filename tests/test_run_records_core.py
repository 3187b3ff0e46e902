"""Run records without Ray (#16): the event codec treats storage as untrusted, the lost-work
rule, the run log's layout on a real local storage, and the tree."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from flyte_ray._core.events import AttemptEvent, decode_batch, encode_batch, with_lost_work
from flyte_ray._core.runlog import RunSummary, list_runs, load_run, write_batch, write_summary
from flyte_ray.report.tables import build_tree, tree_html, tree_text
from flyte_ray.storage import Storage


def ev(call_id="root", attempt=0, outcome="succeeded", kind=None, **kw):
    base = dict(run="r1", call_id=call_id, fqn="env.t", attempt=attempt, user_attempt=0, system_failures=0,
                market="spot", queue="default", outcome=outcome, failure_kind=kind, submitted=100.0)
    base.update(kw)
    return AttemptEvent(**base)


def test_a_batch_round_trips_and_hostile_lines_are_skipped_not_half_read():
    a = ev(started=101.0, ended=110.0, runtime=9.0, node_name="spot-1", error="x" * 3000)
    data = encode_batch([a, ev(attempt=1)])
    got, skipped = decode_batch(data)
    assert skipped == [] and got[1] == ev(attempt=1) and len(got[0].error) == 2000
    lines = data.decode().splitlines()
    hostile = [
        {**json.loads(lines[1]), "attempt": -1},
        {**json.loads(lines[1]), "attempt": True},
        {**json.loads(lines[1]), "submitted": "yesterday"},
        {**json.loads(lines[1]), "started": 1e300},
        {k: v for k, v in json.loads(lines[1]).items() if k != "run"},
        ["not", "an", "object"],
    ]
    bad = "\n".join([lines[0], *map(json.dumps, hostile), "{not json", lines[2]]).encode()
    got, skipped = decode_batch(bad)
    assert got == [ev(attempt=1)] and len(skipped) == 7
    assert any("event.attempt" in s for s in skipped) and any("event.run: missing" in s for s in skipped)
    assert decode_batch(b'{"format": "flyte-ray-events", "v": 99}\n')[1][0].startswith("events format version 99")
    assert decode_batch(b"<html>")[0] == [] and decode_batch(b"")[1] == ["empty batch"]


@pytest.mark.parametrize("events, lost", [
    # preempted after running 50 s; the retry resumed from a checkpoint saved 20 s before the end
    ([ev(outcome="preemption", kind="system", ended=160.0, runtime=50.0),
      ev(attempt=1, ckpt_resumed_from=140.0)], [20.0, 0.0]),
    # the retry resumed from nothing: all 50 s are lost
    ([ev(outcome="preemption", kind="system", ended=160.0, runtime=50.0), ev(attempt=1)], [50.0, 0.0]),
    # resumed from a checkpoint older than the preempted attempt's start: all of its run is lost
    ([ev(outcome="preemption", kind="system", ended=160.0, runtime=50.0),
      ev(attempt=1, ckpt_resumed_from=90.0)], [50.0, 0.0]),
    # user failures lose nothing to preemption; no runtime known: seconds on the node
    ([ev(outcome="failed", kind="user", ended=120.0, runtime=20.0),
      ev(attempt=1, outcome="node_failure", kind="system", started=130.0, ended=140.0),
      ev(attempt=2, ckpt_resumed_from=135.0)], [0.0, 5.0, 0.0]),
    # the demo's path: preempted, the spot retry never started (no spot capacity), the on-demand
    # attempt resumed from a save 5 s before the end: 5 s lost, not the whole run
    ([ev(outcome="preemption", kind="system", ended=160.0, runtime=60.0),
      ev(attempt=1, outcome="spot_unavailable"),
      ev(attempt=2, market="ondemand", ckpt_resumed_from=155.0)], [5.0, 0.0, 0.0]),
])
def test_lost_work_is_the_run_after_the_checkpoint_the_retry_resumed_from(events, lost):
    assert [lw for _, lw in with_lost_work(list(reversed(events)))] == lost


def test_the_run_log_on_a_real_local_storage(tmp_path):
    storage = Storage(str(tmp_path))
    write_summary(storage, RunSummary("r1", "env.t", started=100.0, ended=130.0, phase="succeeded"))
    write_batch(storage, "r1", [ev(), ev("root/a-0")], 1)
    write_batch(storage, "r1", [ev("root/a-0", attempt=1)], 2)
    write_batch(storage, "r2", [ev(run="r2")], 3)
    (tmp_path / "runs" / "r1" / "events" / "zz-junk.jsonl").write_text("garbage")
    log = load_run(storage, "r1")
    assert log.summary.phase == "succeeded" and len(log.events) == 3
    assert any("not a flyte-ray events batch" in s or "no header" in s for s in log.skipped)
    (tmp_path / "runs" / "r3" / "events").mkdir(parents=True)
    (tmp_path / "runs" / "r3" / "run.json").write_text('{"run": 5}')
    runs = list_runs(storage)
    assert [r.run for r in runs][:1] == ["r1"] and {r.run for r in runs} == {"r1", "r2", "r3"}
    assert next(r for r in runs if r.run == "r3").phase == "unknown"
    assert [r.run for r in list_runs(storage, since=150.0)] == ["r2", "r3"]  # no start time: kept


def test_the_tree_nests_children_in_call_order_and_wraps_errors():
    events = [
        ev("root", outcome="succeeded", submitted=100.0, started=100.0, ended=200.0, market="ondemand"),
        ev("root/b-0", submitted=120.0, outcome="cached", market=""),
        ev("root/a-0", submitted=110.0, outcome="preemption", kind="system", ended=150.0, runtime=30.0,
           node_name="spot-1"),
        ev("root/a-0", attempt=1, submitted=151.0, node_name="spot-2", ckpt_resumed_from=140.0),
        ev("root/a-0/c-0", submitted=152.0, outcome="failed", kind="user", error="ValueError: " + "word " * 80),
        ev("root/x-0/orphan-0", submitted=190.0),  # its parent was not recorded: under the nearest ancestor
    ]
    tree = build_tree("r1", events, "succeeded")
    assert [c.call_id for c in tree.roots[0].children] == ["root/a-0", "root/b-0", "root/x-0/orphan-0"]
    assert tree.roots[0].children[0].children[0].call_id == "root/a-0/c-0"
    t = tree.totals()
    assert t["preemptions"] == 1 and t["cached"] == 1 and t["lost_work_seconds"] == 10.0
    text = tree_text(tree, width=80)
    assert "spot-1" in text and "lost 10.0s" in text and "cached (no attempt ran)" in text
    error_lines = [ln for ln in text.splitlines() if "word" in ln]
    assert 1 < len(error_lines) <= 4 and all(len(ln) <= 80 for ln in error_lines)
    assert all(not ln.rstrip().endswith("wor") for ln in error_lines)  # wrapped at words, not cut
    page = tree_html(build_tree("r1", [ev(node_name="<script>alert(1)</script>", error="<b>x</b>")]))
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;" in page


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["preemption", "node_failure", "failed", "succeeded"]),
                          st.floats(0, 1000), st.floats(0, 1000), st.one_of(st.none(), st.floats(0, 2000))),
                min_size=1, max_size=6))
def test_lost_work_is_never_negative_nor_more_than_the_run(rows):
    events = []
    for i, (outcome, ran, end, resumed) in enumerate(rows):
        kind = {"preemption": "system", "node_failure": "system", "failed": "user"}.get(outcome)
        events.append(ev(attempt=i, outcome=outcome, kind=kind, runtime=ran, ended=1000.0 + end,
                         ckpt_resumed_from=resumed))
    for e, lost in with_lost_work(events):
        assert lost is not None and 0.0 <= lost <= (e.runtime or 0.0) + 1e-9


def test_an_error_that_fits_in_four_lines_is_not_marked_cut():
    from flyte_ray._core.records import AttemptRecord, format_history

    rec = AttemptRecord(attempt=0, user_attempt=0, system_failures=0, market="spot", queue="default", submitted=1.0)
    rec.error = " ".join(["word"] * 47)  # 4 lines of 60 columns exactly
    assert "…" not in format_history([rec])
    rec.error = " ".join(["word"] * 60)
    assert format_history([rec]).count("…") == 1
