"""The node-side notice watcher without Ray (#15): the three metadata services as a real HTTP
server on loopback (flyte_ray.preemption.emulator), the providers that poll them, and the
watcher's rules (drain once, log trouble once, rebalance is a hint) with a scripted GCS.
The same watcher against a real cluster is in tests/test_notices.py."""

import ast
import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flyte_ray.preemption import providers as pv
from flyte_ray.preemption.emulator import MetadataEmulator
from flyte_ray.preemption.watcher import Watcher

PKG = Path(__file__).resolve().parent.parent / "flyte_ray" / "preemption"


@pytest.fixture
def meta():
    m = MetadataEmulator()
    yield m
    m.stop()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def clear(self):
        self.records = []


@pytest.fixture
def logs():
    """The watcher's log records (flyte_ray's logger does not propagate to pytest's caplog)."""
    h = _Records()
    log = logging.getLogger("flyte_ray.preemption")
    old = log.level
    log.addHandler(h)
    log.setLevel(logging.DEBUG)
    yield h
    log.removeHandler(h)
    log.setLevel(old)


class ScriptedGCS:
    """What the watcher asks the GCS, scripted: node states and the drains it was asked for."""

    def __init__(self, state="ALIVE", fail=0):
        self.state = state
        self.drains = []
        self.fail = fail

    def local_node_id(self, address):
        return "n" * 56

    def node_states(self, address):
        if self.fail:
            self.fail -= 1
            raise ConnectionError("GCS unreachable")
        return {"n" * 56: (self.state, "10.0.0.1")}

    def drain_node(self, address, node, deadline, message):
        self.drains.append((node, deadline, message))
        self.state = "DRAINING"
        return True, ""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ parsing (pure)
def test_parse_aws_instance_action():
    n = pv.parse_aws_instance_action(b'{"action": "terminate", "time": "2026-11-29T08:22:00Z"}')
    assert n.kind == "terminate" and n.final and n.provider == "aws"
    assert n.deadline == pv.parse_iso8601("2026-11-29T08:22:00+00:00")
    for bad in (b"not json", b'{"action": "terminate"}', b'{"action": "explode", "time": "2026-11-29T08:22:00Z"}',
                b'{"action": "stop", "time": "yesterday"}', b"[]"):
        with pytest.raises(pv.MetadataUnavailable):
            pv.parse_aws_instance_action(bad)


def test_parse_gcp_and_azure():
    assert pv.parse_gcp_preempted(b"TRUE\n") is True
    assert pv.parse_gcp_preempted(b"FALSE") is False
    with pytest.raises(pv.MetadataUnavailable):
        pv.parse_gcp_preempted(b"<html>proxy login</html>")
    doc = {"DocumentIncarnation": 2, "Events": [
        {"EventId": "a", "EventType": "Freeze", "Resources": ["vm1"]},
        {"EventId": "b", "EventType": "Preempt", "Resources": ["vm2"], "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT"},
        {"EventId": "c", "EventType": "Preempt", "Resources": ["vm1"], "NotBefore": "Mon, 19 Sep 2016 18:30:47 GMT"},
    ]}
    n = pv.parse_azure_events(json.dumps(doc).encode(), "vm1")
    assert n is not None and n.kind == "preempt" and "c" in n.detail
    assert n.deadline == pytest.approx(1474309847.0)
    assert pv.parse_azure_events(json.dumps(doc).encode(), "vm9") is None  # events for other VMs only
    assert pv.parse_azure_events(b'{"Events": []}', "vm1") is None
    with pytest.raises(pv.MetadataUnavailable):
        pv.parse_azure_events(b"{", "vm1")


# ------------------------------------------------------------------ providers vs a real server
def test_aws_imdsv2_token_then_notice_then_rebalance(meta):
    aws = pv.AWS(meta.url("a"))
    assert aws.probe() and aws.poll() is None
    meta.rebalance("a")
    assert aws.poll().kind == "rebalance"
    deadline = meta.notify("a", "aws", notice_s=120)
    n = aws.poll()
    assert n.kind == "terminate" and abs(n.deadline - deadline) <= 1.0
    aws._token = "forged"  # an expired / foreign token: one fresh token, then on
    assert aws.poll().kind == "terminate"


def test_gcp_wait_for_change_answers_at_once_on_a_notice(meta):
    gcp = pv.GCP(meta.url("g"))
    assert gcp.probe() and gcp.poll() is None  # first look: the value and its ETag
    t0 = time.monotonic()
    assert gcp.poll(wait=1) is None  # nothing changes: the server holds it ~1 s
    assert time.monotonic() - t0 >= 0.8
    import threading

    threading.Timer(0.3, meta.notify, args=("g", "gcp")).start()
    t0 = time.monotonic()
    n = gcp.poll(wait=20)
    assert n is not None and n.kind == "preempt" and time.monotonic() - t0 < 10
    assert n.deadline == pytest.approx(time.time() + pv.GCP_NOTICE_S, abs=2)
    time.sleep(1.1)  # a later look (say, the drain is retried after a GCS error) keeps the deadline
    assert gcp.poll().deadline == n.deadline


def test_azure_scheduled_events(meta):
    az = pv.Azure(meta.url("vm1"))
    meta.url("vm2")
    assert az.probe() and az.poll() is None
    meta.notify("vm2", "azure", notice_s=60)
    assert az.poll() is None  # another VM's event
    deadline = meta.notify("vm1", "azure", notice_s=60)
    n = az.poll()
    assert n.kind == "preempt" and abs(n.deadline - deadline) <= 1.0


def test_auto_detection_and_headers_are_required(meta):
    assert isinstance(pv.detect(meta.url("x")), pv.AWS)  # the emulator answers all three: AWS first
    assert pv.detect(f"http://127.0.0.1:{_free_port()}") is None
    import urllib.request

    for path in ("/computeMetadata/v1/instance/preempted", "/metadata/scheduledevents?api-version=2020-07-01",
                 "/latest/meta-data/spot/instance-action"):
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(meta.url("x") + path, timeout=5)
        assert ei.value.code in (400, 401, 403)


def test_requests_never_use_a_proxy_from_the_environment(meta, monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_free_port()}")
    assert pv.AWS(meta.url("p")).poll() is None  # would fail through the (dead) proxy


def test_a_dead_endpoint_is_unavailable_not_a_crash():
    for make in pv.PROVIDERS.values():
        with pytest.raises(pv.MetadataUnavailable):
            make(f"http://127.0.0.1:{_free_port()}", timeout=1).poll()


# ------------------------------------------------------------------ the watcher's rules
def test_watcher_drains_once_with_the_clouds_deadline(meta):
    gcs = ScriptedGCS()
    w = Watcher("aws", address="10.0.0.1:6379", metadata_url=meta.url("n1"), gcs=gcs, interval=0.1)
    assert w.step() is None and gcs.drains == []
    deadline = meta.notify("n1", "aws", notice_s=90)
    assert w.step() == "drained"
    assert len(gcs.drains) == 1 and abs(gcs.drains[0][1] - deadline) <= 1.0
    assert "terminate" in gcs.drains[0][2]
    for _ in range(3):  # the notice stays up: never a second drain
        assert w.step() is None
    assert len(gcs.drains) == 1
    # a restarted watcher on a node that is draining already does not drain again
    w2 = Watcher("aws", address="10.0.0.1:6379", metadata_url=meta.url("n1"), gcs=gcs)
    assert w2.step() == "already-draining" and len(gcs.drains) == 1


def test_watcher_survives_a_dead_metadata_service_and_a_dead_gcs_logging_each_once(meta, logs):
    caplog = logs
    dead = Watcher("gcp", address="10.0.0.1:6379", metadata_url=f"http://127.0.0.1:{_free_port()}",
                   gcs=ScriptedGCS(), interval=0.1)
    for _ in range(5):
        assert dead.step() is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()
    caplog.clear()
    gcs = ScriptedGCS(fail=3)
    w = Watcher("azure", address="10.0.0.1:6379", metadata_url=meta.url("n2"), gcs=gcs)
    meta.notify("n2", "azure", notice_s=60)
    results = [w.step() for _ in range(5)]
    assert results == [None, None, None, "drained", None] and len(gcs.drains) == 1
    gcs_warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "GCS" in r.getMessage()]
    assert len(gcs_warnings) == 1


def test_rebalance_is_a_hint_unless_asked(meta):
    gcs = ScriptedGCS()
    meta.rebalance("r1")
    w = Watcher("aws", address="x:1", metadata_url=meta.url("r1"), gcs=gcs)
    assert w.step() == "rebalance" and gcs.drains == []
    w2 = Watcher("aws", address="x:1", metadata_url=meta.url("r1"), gcs=gcs, drain_on_rebalance=True)
    assert w2.step() == "drained" and gcs.drains[0][1] is None


def test_watcher_is_cheap_while_nothing_happens(meta):
    """GCP is a long poll: ~1 request per interval; AWS: 2 per look (action, rebalance) + a token."""
    gcs = ScriptedGCS()
    w = Watcher("gcp", address="x:1", metadata_url=meta.url("q"), gcs=gcs, interval=1)
    import threading

    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    time.sleep(2.2)
    stop.set()
    t.join(10)
    assert not t.is_alive()
    assert meta.requests("q") <= 5 and gcs.drains == []


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="provider"):
        Watcher("oracle")
    with pytest.raises(ValueError, match="interval"):
        Watcher("aws", interval=0)
    r = subprocess.run([sys.executable, "-m", "flyte_ray.preemption", "--provider", "ibm"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--provider" in r.stderr


def test_the_cli_exits_cleanly_on_sigterm_and_once(meta):
    r = subprocess.run([sys.executable, "-m", "flyte_ray.cli", "watch-preemption", "--provider", "aws",
                        "--metadata-url", meta.url("c"), "--address", "127.0.0.1:1", "--once"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    p = subprocess.Popen([sys.executable, "-m", "flyte_ray.preemption", "--provider", "gcp", "--interval", "1",
                          "--metadata-url", meta.url("c"), "--address", "127.0.0.1:1"],
                         stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    p.terminate()
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0 and "stopped" in err


def test_the_package_is_self_contained():
    """Cluster configs copy flyte_ray/preemption alone to nodes that lack flyte-ray: it may import
    the standard library, Ray and itself, nothing else of flyte_ray."""
    for path in PKG.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name}: imports outside the package ({ast.unparse(node)})"
                if node.level == 0:
                    assert not (node.module or "").startswith("flyte_ray"), f"{path.name}: {ast.unparse(node)}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    assert not a.name.startswith("flyte_ray"), f"{path.name}: {ast.unparse(node)}"
    # and it runs from a copy under another name, as the configs mount it
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        shutil.copytree(PKG, Path(d) / "flyte_ray_preemption")
        r = subprocess.run([sys.executable, "-m", "flyte_ray_preemption", "--help"], cwd=d,
                           capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
        assert r.returncode == 0 and "--provider" in r.stdout, r.stderr
