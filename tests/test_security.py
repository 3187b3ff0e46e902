"""Closed by default: what a cluster flyte-ray starts exposes, probed from outside on real Ray.

The embedded cluster starts in a fresh interpreter whose environment has no ``RAY_AUTH_MODE`` and
no token (the test suite itself runs with ``RAY_AUTH_MODE=disabled``), with ``HOME`` in a temp
dir. Every TCP socket its processes listen on is then probed without a token: a gRPC server must
answer ``UNAUTHENTICATED`` (an unprotected one answers ``UNIMPLEMENTED`` for an unknown method),
an HTTP server ``401``, except read-only metrics (Prometheus text) and health checks, which Ray
2.60 serves without a token (see flyte_ray/_ray/auth.py).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent('''
    import json, os, socket, sys, urllib.request
    import grpc
    import flyte_ray as flyte
    import ray, psutil

    METHODS = ("/ray.rpc.NodeInfoGcsService/GetAllNodeInfo", "/ray.rpc.NodeManagerService/GetNodeStats",
               "/ray.rpc.CoreWorkerService/NumPendingTasks", "/ray.rpc.ReporterService/GetTraceback",
               "/ray.rpc.LogService/ListLogs", "/ray.rpc.ObjectManagerService/Pull")
    flyte.init(num_cpus=1)

    @ray.remote
    def f():
        return 41 + 1

    assert ray.get(f.remote()) == 42          # the cluster works under token auth
    me = psutil.Process()
    procs = {p.pid: p for p in me.children(recursive=True)}
    procs[me.pid] = me
    env_mode = os.environ.get("RAY_AUTH_MODE")
    found = []
    for c in psutil.net_connections(kind="inet"):
        if c.status != psutil.CONN_LISTEN or c.pid not in procs:
            continue
        ip, port = c.laddr.ip, c.laddr.port
        host = ray.util.get_node_ip_address() if ip in ("::", "0.0.0.0") else ip
        kind = "?"
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=3) as r:
                body = r.read(4096).decode("utf-8", "replace")
                kind = "http-open-metrics" if ("# HELP" in body or "# TYPE" in body or not body.strip()) else "http-open"
        except urllib.error.HTTPError as e:
            kind = f"http-{e.code}"
        except Exception:
            # A real method of each kind of Ray gRPC server, with an empty request: a server that
            # does not have it answers UNIMPLEMENTED, one that has it answers by its auth rules.
            kind = "grpc-UNIMPLEMENTED"
            ch = grpc.insecure_channel(f"{host}:{port}")
            try:
                for method in METHODS:
                    try:
                        ch.unary_unary(method)(b"", timeout=5)
                        kind = "grpc-open"
                    except grpc.RpcError as e:
                        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                            continue
                        kind = "grpc-UNAUTHENTICATED" if e.code() == grpc.StatusCode.UNAUTHENTICATED else "grpc-open"
                    break
            finally:
                ch.close()
        found.append({"ip": ip, "port": port, "kind": kind, "name": procs[c.pid].name()})
    print(json.dumps({"mode": env_mode, "sockets": found,
                      "token_file": os.path.exists(os.path.expanduser("~/.ray/auth_token"))}))
    flyte.shutdown()
''')


@pytest.mark.timeout(180)
def test_the_embedded_cluster_runs_code_only_for_token_holders(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=170)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["mode"] == "token" and out["token_file"] is False  # the token lives in the process only
    kinds = {s["kind"] for s in out["sockets"]}
    public = [s for s in out["sockets"] if s["ip"] not in ("127.0.0.1", "::1")]
    # nothing answers an unauthenticated caller except read-only metrics and health checks
    assert not [s for s in public if s["kind"] in ("grpc-open", "http-open")], out
    assert "grpc-UNAUTHENTICATED" in kinds  # the GCS, raylets and workers
    # UNIMPLEMENTED: a gRPC server with none of the probed methods (none is left unexamined silently)
    assert {s["kind"] for s in public} <= {"grpc-UNAUTHENTICATED", "http-401", "http-open-metrics"}, out
