"""flyte-ray reaching a cluster whose Python environment does not have it (``init(ship_package=...)``),
and the refusal of local storage on a cluster that spans several hosts.

The cluster is real and its nodes cannot import flyte_ray: a head and a spot worker node started
with ``ray start`` from a separate virtualenv holding ``ray[default]`` at this Ray's version and
flyte-ray's dependencies (read from pyproject.toml, as the cluster configs install them) but no
flyte-ray, started without ``PYTHONPATH`` (the editable install of this checkout is a ``.pth``
finder in the test interpreter's site-packages, which the venv does not see). The venv is built
once per machine (``pip``, ~25 s; set ``FLYTE_RAY_TEST_WORKER_VENV`` to use another one) and
checked each run. A control driver connecting with ``ship_package=False`` proves the workers
cannot import flyte_ray on their own. The nodes start the way the cluster configs start theirs:
``RAY_NODE_MARKET_TYPE`` in the environment of ``ray start`` and the queue label through
``RAY_OVERRIDE_LABELS`` (what ``ray up`` sets from a node type's ``labels:``).

Drivers run in subprocesses with flyte-ray importable (this checkout): through the GCS address
(``init``'s default ``ship_package="auto"``), through Ray client (``ray://``), and as the
README's ``ray job submit`` example (``--runtime-env-json '{"py_modules": ["flyte_ray"]}'``,
``examples/fanout_driver.py``). As in test_attach.py the test process itself never connects.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import pytest
import ray
from filelock import FileLock
from test_attach import _RAY_CLIENT_STARTUP_BUG, _free_ports, _http_ok, _lines, _port_open, _ray_cli, _stop_head

from flyte_ray._ray import ship
from flyte_ray._ray.hosts import local_storage_error, node_hosts

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


# ------------------------------------------------------------------ offline: the shipping plan
def test_ship_package_values():
    assert ship.check_ship_package("auto") == "auto"
    assert ship.check_ship_package(True) is True and ship.check_ship_package(False) is False
    with pytest.raises(ValueError, match="ship_package: expected 'auto'"):
        ship.check_ship_package("always")
    with pytest.raises(TypeError, match="ship_package"):
        ship.check_ship_package(1)


def test_plan_merges_with_the_users_runtime_env():
    user = {
        "working_dir": "/src/app",
        "py_modules": ["/src/mylib", "s3://bucket/other.zip"],
        "env_vars": {"A": "1"},
        "excludes": ["*.csv"],
        "pip": ["numpy"],
    }
    before = json.dumps(user, sort_keys=True)
    p = ship.plan("auto", embedded=False, runtime_env=user, module_path="/stage/flyte_ray")
    assert p.shipped and p.env == {}
    assert p.runtime_env == {**user, "py_modules": ["/src/mylib", "s3://bucket/other.zip", "/stage/flyte_ray"]}
    assert json.dumps(user, sort_keys=True) == before  # the user's dict is not changed
    assert ship.plan("auto", embedded=False, runtime_env=None, module_path="/m").runtime_env == {"py_modules": ["/m"]}


def test_plan_rules():
    def shipped(mode, embedded=False, env=None, pkg=Path("/site-packages/flyte_ray")):
        return ship.plan(mode, embedded=embedded, runtime_env=env, module_path="/m", pkg=pkg).shipped

    assert shipped("auto") and shipped(True)
    assert not shipped(False)
    assert not shipped("auto", embedded=True) and shipped(True, embedded=True)
    # the job delivered this copy (ray job submit with py_modules / a working_dir holding it)
    job_copy = Path("/tmp/ray/session_x/runtime_resources/py_modules_files/_ray_pkg_ab12/flyte_ray")
    assert not shipped("auto", pkg=job_copy) and not shipped(True, pkg=job_copy)
    # the user ships flyte_ray themselves (a folder or a wheel): nothing is added
    assert not shipped("auto", env={"py_modules": ["/src/flyte_ray/"]})
    assert not shipped("auto", env={"py_modules": ["/dist/flyte_ray-0.1.0-py3-none-any.whl"]})
    assert shipped("auto", env={"py_modules": ["/src/flyte_ray_extras"]})
    assert ship.plan(False, embedded=False, runtime_env={"env_vars": {"A": "1"}}, module_path="/m") == (
        {"env_vars": {"A": "1"}},
        {},
        False,
    )


def test_plan_inside_a_job_with_its_own_py_modules():
    """Ray refuses to merge a job's py_modules with ray.init's: ours carries the job's and wins,
    only when py_modules is the one field both set."""
    job = {"py_modules": ["gcs://_ray_pkg_job.zip"], "env_vars": {"J": "1"}}
    p = ship.plan("auto", embedded=False, runtime_env={"env_vars": {"U": "2"}}, module_path="/m", job_env=job)
    assert p.runtime_env == {"env_vars": {"U": "2"}, "py_modules": ["gcs://_ray_pkg_job.zip", "/m"]}
    assert p.env == {"RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
    # another clash (working_dir in both; or the same env var): Ray's own error stays
    both = ship.plan("auto", embedded=False, runtime_env={"working_dir": "/w"}, module_path="/m",
                     job_env={**job, "working_dir": "gcs://_ray_pkg_wd.zip"})
    assert both.env == {} and both.runtime_env == {"working_dir": "/w", "py_modules": ["/m"]}
    same_var = ship.plan("auto", embedded=False, runtime_env={"env_vars": {"J": "2"}}, module_path="/m", job_env=job)
    assert same_var.env == {}
    # a job without py_modules: nothing to carry over
    assert ship.plan("auto", embedded=False, runtime_env=None, module_path="/m",
                     job_env={"working_dir": "gcs://x.zip"}).env == {}


def test_prepared_stages_a_clean_copy_and_removes_it(tmp_path):
    with ship.prepared("auto", embedded=False, runtime_env={"env_vars": {"A": "1"}}) as p:
        staged = Path(p.runtime_env["py_modules"][-1])
        assert staged.name == "flyte_ray" and (staged / "__init__.py").is_file()
        assert (staged / "_ray" / "ship.py").read_text() == (ship.package_dir() / "_ray" / "ship.py").read_text()
        assert not list(staged.rglob("__pycache__")) and not list(staged.rglob("*.pyc"))
        assert p.runtime_env["env_vars"] == {"A": "1"}
    assert not staged.exists()
    with ship.prepared("auto", embedded=True, runtime_env=None) as p:
        assert p == (None, {}, False)


def test_init_checks_the_new_arguments_before_touching_ray():
    import flyte_ray
    from flyte_ray.runtime import _ConfigFile

    connected = ray.is_initialized()
    with pytest.raises(ValueError, match="ship_package"):
        flyte_ray.init(address="127.0.0.1:1", ship_package="always")
    with pytest.raises(TypeError, match="allow_local_storage"):
        flyte_ray.init(address="127.0.0.1:1", allow_local_storage="yes")
    assert ray.is_initialized() == connected
    # init_from_config files take them too
    assert _ConfigFile(ship_package=False, allow_local_storage=True).model_dump()["ship_package"] is False
    assert _ConfigFile().model_dump()["ship_package"] == "auto"


EMBEDDED_TRUE = """
import flyte_ray as flyte, sys
flyte.init(num_cpus=1, storage=sys.argv[1], ship_package=True)
env = flyte.TaskEnvironment(name="ship_embedded")


@env.task
def origin() -> str:
    import flyte_ray
    return "shipped" if "py_modules_files" in flyte_ray.__file__ else flyte_ray.__file__


print("ORIGIN", origin(), flush=True)
flyte.shutdown()
"""


@pytest.mark.timeout(120)
def test_ship_package_true_ships_to_the_embedded_cluster(tmp_path):
    """True ships even to the embedded cluster (whose workers could import this checkout anyway),
    a cheap local check of the shipped copy; "auto" leaves the embedded cluster alone (the rest of
    the suite runs that way)."""
    res = _run_driver(EMBEDDED_TRUE, tmp_path, str(tmp_path / "storage"))
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr[-4000:]}"
    assert _lines(res.stdout, "ORIGIN") == [["ORIGIN", "shipped"]]


# ---------------------------------------------------------- offline: local storage, several hosts
def _node(node_id: str, address: str, alive: bool = True) -> dict:
    """A ``ray.nodes()`` entry as Ray 2.60 returns it (keys and value types of a real one)."""
    return {
        "NodeID": node_id * 56 if len(node_id) == 1 else node_id,
        "Alive": alive, "alive": alive,
        "NodeManagerAddress": address, "NodeManagerHostname": "vm", "NodeManagerPort": 44801,
        "ObjectManagerPort": 34373, "ObjectStoreSocketName": "/tmp/ray/session_x/sockets/plasma_store",
        "RayletSocketName": "/tmp/ray/session_x/sockets/raylet", "MetricsExportPort": 46265,
        "MetricsAgentPort": 36851, "DashboardAgentListenPort": 52365, "NodeName": address,
        "RuntimeEnvAgentPort": 44451, "DeathReason": 0 if alive else 2, "DeathReasonMessage": "",
        "Resources": {"CPU": 2.0, f"node:{address}": 1.0, "ondemand": 1000.0},
        "Labels": {"ray.io/node-id": node_id * 56},
    }


def test_local_storage_decision():
    one_host = [_node("a", "10.0.0.5"), _node("b", "10.0.0.5"), _node("c", "10.0.0.5")]  # LocalCluster's shape
    assert node_hosts(one_host) == {"10.0.0.5"}
    assert local_storage_error("/home/me/.flyte-ray/storage", one_host) is None
    assert local_storage_error("/x", [_node("a", "10.0.0.5")]) is None
    assert local_storage_error("/x", []) is None
    # a dead node on another host does not count
    assert local_storage_error("/x", one_host + [_node("d", "10.0.0.9", alive=False)]) is None
    msg = local_storage_error("/home/me/.flyte-ray/storage", one_host + [_node("e", "10.0.0.9")])
    assert msg is not None
    for part in ("'/home/me/.flyte-ray/storage'", "2 hosts", "storage='s3://", "allow_local_storage=True"):
        assert part in msg, (part, msg)


# --------------------------------------------------------------------- the worker environment
def _dependencies() -> List[str]:
    """flyte-ray's own dependencies (pyproject.toml), Ray pinned to this interpreter's version."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [f"ray[default]=={ray.__version__}"] + [d for d in deps if not d.replace(" ", "").startswith("ray")]


def _venv_ok(venv: Path) -> bool:
    py = venv / "bin" / "python"
    if not py.exists():
        return False
    check = ("import importlib.util, sys, ray; "
             f"sys.exit(0 if ray.__version__ == {ray.__version__!r} and importlib.util.find_spec('flyte_ray') is None "
             "and all(importlib.util.find_spec(m) for m in ('pydantic', 'fsspec')) else 3)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # from another folder: `python -c` puts the working directory (here the checkout) on sys.path
    return subprocess.run([str(py), "-c", check], env=env, capture_output=True, timeout=60,
                          cwd=tempfile.gettempdir()).returncode == 0


@pytest.fixture(scope="module")
def worker_venv() -> Path:
    """A Python environment with Ray and flyte-ray's dependencies but no flyte-ray."""
    given = os.environ.get("FLYTE_RAY_TEST_WORKER_VENV")
    venv = Path(given) if given else Path(tempfile.gettempdir()) / f"flyte-ray-worker-venv-ray{ray.__version__}-py{PY}"
    with FileLock(str(venv) + ".lock"):
        if not _venv_ok(venv):
            if given:
                pytest.fail(f"FLYTE_RAY_TEST_WORKER_VENV={given}: not a venv with ray=={ray.__version__} "
                            "and flyte-ray's dependencies but without flyte_ray")
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            res = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *_dependencies()], env=env,
                                 capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, f"building the worker venv failed:\n{res.stderr[-3000:]}"
            assert _venv_ok(venv), f"{venv}: flyte_ray importable or Ray {ray.__version__} missing"
            print(f"\n[test_ship] worker venv built in {time.monotonic() - t0:.0f}s at {venv}")
    return venv


def _cluster_env(venv: Path, **extra: str) -> Dict[str, str]:
    """The environment of the cluster's ``ray start``: the venv first on PATH, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "RAY_ADDRESS", "FLYTE_RAY_ADDRESS", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               RAY_AUTH_MODE="disabled", GRPC_ENABLE_FORK_SUPPORT="false")
    env.update(extra)
    return env


def _wait_for(proc: subprocess.Popen, log: Path, ready, what: str) -> None:
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() - t0 > START_TIMEOUT:
            raise RuntimeError(f"{what} not ready after {START_TIMEOUT}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


class Cluster:
    def __init__(self, gcs: int, client: int, dashboard: int, temp_dir: str, storage: str):
        self.gcs_address = f"127.0.0.1:{gcs}"
        self.client_address = f"ray://127.0.0.1:{client}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard}"
        self.temp_dir = temp_dir
        self.storage = storage


@pytest.fixture(scope="module")
def bare_cluster(worker_venv):
    """A head (on-demand, with the dashboard for the Jobs API) and a spot worker node, both
    ``ray start`` from the venv without flyte-ray, on free ports and their own temp dir."""
    gcs, client, dash, agent = _free_ports(4)
    temp_dir = tempfile.mkdtemp(prefix="frs-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray_cli = str(worker_venv / "bin" / "ray")
    head_log, node_log = Path(temp_dir) / "head.log", Path(temp_dir) / "node.log"
    head_cmd = [ray_cli, "start", "--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                "--include-dashboard=true", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                f"--dashboard-agent-listen-port={agent}", "--num-cpus=1",
                '--resources={"ondemand": 1000, "queue:default": 1000}',
                f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block"]
    node_cmd = [ray_cli, "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1",
                '--resources={"spot": 1000, "queue:default": 1000}', "--disable-usage-stats", "--block"]
    # as the configs do: the market in RAY_NODE_MARKET_TYPE and in the node type's labels (which
    # `ray up` hands to ray start as RAY_OVERRIDE_LABELS), with the queue label
    def node_env(market: str) -> Dict[str, str]:
        labels = {"ray.io/market-type": market, "flyte-ray.io/queue-default": "true"}
        return _cluster_env(worker_venv, RAY_NODE_MARKET_TYPE=market, RAY_OVERRIDE_LABELS=json.dumps(labels))

    procs: List[subprocess.Popen] = []
    t0 = time.monotonic()
    try:
        with open(head_log, "w") as log:
            procs.append(subprocess.Popen(
                head_cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=node_env("on-demand"), cwd=temp_dir))
        _wait_for(procs[0], head_log, lambda: "block forever" in head_log.read_text() and _port_open(gcs)
                  and _port_open(client) and _http_ok(f"http://127.0.0.1:{dash}/api/version"), "head")
        with open(node_log, "w") as log:
            procs.append(subprocess.Popen(
                node_cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=node_env("spot"), cwd=temp_dir))
        _wait_for(procs[1], node_log, lambda: "block forever" in node_log.read_text(), "spot node")
        print(f"\n[test_ship] head + spot node (no flyte-ray) ready in {time.monotonic() - t0:.1f}s")
        yield Cluster(gcs, client, dash, temp_dir, os.path.join(temp_dir, "storage"))
    finally:
        t1 = time.monotonic()
        for p in reversed(procs[1:]):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        _stop_head(procs[0], temp_dir) if procs else None
        print(f"\n[test_ship] cluster stopped in {time.monotonic() - t1:.1f}s")


def _driver_env(**extra: str) -> Dict[str, str]:
    """A driver's environment: this checkout importable (PYTHONPATH as the suite has it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "FLYTE_RAY_ADDRESS")}
    env["RAY_AUTH_MODE"] = "disabled"
    env.update(extra)
    return env


def _run_driver(script: str, tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a driver script from ``tmp_path`` (Ray adds a driver's folder and working directory to its
    workers' sys.path: neither may hold flyte_ray); once more if Ray's client proxy lost its
    server while connecting (ray-project/ray#63202, see test_attach.py)."""
    path = tmp_path / "driver.py"
    path.write_text(script)
    for attempt in range(2):
        res = subprocess.run([sys.executable, str(path), *args], env=_driver_env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=timeout)
        if res.returncode == 0 or _RAY_CLIENT_STARTUP_BUG not in res.stderr or attempt:
            return res
    return res


CONTROL = '''
import importlib.util, sys
import ray
import flyte_ray as flyte

flyte.init(address=sys.argv[1], storage=sys.argv[2], ship_package=False, supervisor="inline")


@ray.remote(num_cpus=0.5)
def importable() -> bool:
    return importlib.util.find_spec("flyte_ray") is not None


print("IMPORTABLE", ray.get(importable.remote(), timeout=60), flush=True)
labels = {n["Labels"].get("ray.io/market-type"): n["Labels"] for n in ray.nodes() if n["Alive"]}
print("LABELS", sorted(labels), labels["spot"].get("flyte-ray.io/queue-default"),
      labels["on-demand"].get("flyte-ray.io/queue-default"), flush=True)
flyte.shutdown()
'''


@pytest.mark.timeout(120)
def test_workers_cannot_import_flyte_ray_without_shipping(bare_cluster, tmp_path):
    """The control: without shipping the cluster's workers have no flyte_ray; and the nodes carry
    the labels the configs give theirs (RAY_NODE_MARKET_TYPE, a queue label via RAY_OVERRIDE_LABELS)."""
    res = _run_driver(CONTROL, tmp_path, bare_cluster.gcs_address, bare_cluster.storage)
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr[-4000:]}"
    assert _lines(res.stdout, "IMPORTABLE") == [["IMPORTABLE", "False"]]
    assert _lines(res.stdout, "LABELS") == [["LABELS", "['on-demand',", "'spot']", "true", "true"]]


DRIVER = '''
import asyncio, os, sys, time
t0 = time.time()
import flyte_ray as flyte

address, storage, workdir = sys.argv[1], sys.argv[2], sys.argv[3]
# The user's own runtime_env (their code in working_dir, an env var) is kept next to flyte-ray's.
flyte.init(address=address, storage=storage, runtime_env={"working_dir": workdir, "env_vars": {"FR_USER_MARK": "kept"}})
print("CONNECTED", round(time.time() - t0, 2), flush=True)

env = flyte.TaskEnvironment(name="ship", resources=flyte.Resources(cpu=0.5), interruptible=True)


@env.task
def where() -> str:
    import flyte_ray, usermod
    origin = "shipped" if "py_modules_files" in flyte_ray.__file__ else flyte_ray.__file__
    return f"{origin} {usermod.VALUE} {os.environ.get('FR_USER_MARK')}"


@env.task
def add(a: int, b: int) -> int:
    return a + b


@env.task
async def parent(n: int) -> int:
    return sum(await asyncio.gather(*(add.aio(i, 1) for i in range(n))))


@env.task
def sync_parent(n: int) -> int:
    return sum(add(i, i) for i in range(n))


@env.task(retries=1)
def checkpointed() -> str:
    c = flyte.ctx()
    cp = c.checkpoint
    prev = cp.read()
    if c.attempt == 0:
        assert prev is None, prev
        cp.write(c.node_id.encode())
        raise RuntimeError("dies after writing its checkpoint")
    return "resumed" if prev and prev.decode() != c.node_id else f"same-node:{prev!r}"


t1 = time.time()
print("WHERE", where(), round(time.time() - t1, 2), flush=True)
print("NESTED", flyte.run(parent, 6).outputs(), flush=True)
print("SYNC_NESTED", sync_parent(4), flush=True)
r = flyte.run(checkpointed)
print("CHECKPOINT", r.outputs(), ",".join(h.market for h in r.history), flush=True)
flyte.shutdown()
print("DONE", round(time.time() - t0, 2), flush=True)
'''


def _check_driver(res: subprocess.CompletedProcess, storage: str) -> None:
    out = res.stdout
    assert res.returncode == 0, f"stdout:\n{out}\nstderr:\n{res.stderr[-4000:]}"
    assert _lines(out, "WHERE")[0][:4] == ["WHERE", "shipped", "user-code", "kept"], out
    assert _lines(out, "NESTED") == [["NESTED", str(sum(i + 1 for i in range(6)))]]
    assert _lines(out, "SYNC_NESTED") == [["SYNC_NESTED", str(sum(2 * i for i in range(4)))]]
    # attempt 0 on the spot node wrote its node id; the on-demand retry (the head) read it back
    assert _lines(out, "CHECKPOINT") == [["CHECKPOINT", "resumed", "spot,ondemand"]], out
    assert _lines(out, "DONE"), out
    assert list(Path(storage).rglob("_COMPLETE")), f"no checkpoint under {storage}"
    timings = [line for line in out.splitlines() if line.startswith(("CONNECTED", "WHERE", "DONE"))]
    print("\n[test_ship] " + " | ".join(timings))


def _user_code(tmp_path: Path) -> Path:
    workdir = tmp_path / "usercode"
    workdir.mkdir()
    (workdir / "usermod.py").write_text("VALUE = 'user-code'\n")
    return workdir


@pytest.mark.timeout(180)
@pytest.mark.parametrize("via", ["gcs", "client"])
def test_driver_ships_flyte_ray(bare_cluster, tmp_path, via):
    """init(address=...) with the default ship_package="auto": nested and checkpointed tasks run
    on workers that import the driver's shipped flyte_ray, next to the user's runtime_env."""
    address = bare_cluster.gcs_address if via == "gcs" else bare_cluster.client_address
    storage = os.path.join(bare_cluster.storage, via)
    res = _run_driver(DRIVER, tmp_path, address, storage, str(_user_code(tmp_path)), timeout=170)
    _check_driver(res, storage)


@pytest.mark.timeout(180)
def test_ray_job_submit_ships_flyte_ray(bare_cluster, tmp_path):
    """The README's `ray job submit` example, run from the repository root: the job's py_modules
    carry flyte_ray to the driver on the head and to every worker; the driver's init("auto") adds
    nothing more (its flyte_ray came from the job)."""
    storage = os.path.join(bare_cluster.storage, "job")
    runtime_env = {"py_modules": ["flyte_ray"],
                   "env_vars": {"FLYTE_RAY_STORAGE": storage, "FANOUT_N": "6", "RAY_AUTH_MODE": "disabled"}}
    cmd = [_ray_cli(), "job", "submit", "--address", bare_cluster.dashboard_url,
           "--working-dir", "examples", "--runtime-env-json", json.dumps(runtime_env), "--",
           "python", "fanout_driver.py"]
    res = subprocess.run(cmd, env=_driver_env(), capture_output=True, text=True, timeout=170, cwd=ROOT)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    result = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert result == [f"RESULT ok fanout={sum(i * i for i in range(6))} retried_attempts=2 checkpoint=resumed@3"], \
        out[-5000:]
    assert list(Path(storage).rglob("_COMPLETE")), f"the job wrote no checkpoint under {storage}"


REFUSE = '''
import sys
import ray
import flyte_ray as flyte

address, storage = sys.argv[1], sys.argv[2]
real_nodes = ray.nodes


def two_hosts():
    """The cluster's real nodes plus one more on another host (a real entry with another address)."""
    nodes = real_nodes()
    other = dict(nodes[0], NodeID="f" * 56, NodeManagerAddress="198.51.100.7", NodeName="198.51.100.7")
    return nodes + [other]


ray.nodes = two_hosts
try:
    flyte.init(address=address, storage=storage, supervisor="inline")
    print("NOT_REFUSED", flush=True)
except ValueError as e:
    print("REFUSED", ray.is_initialized(), flush=True)
    print("MESSAGE", str(e), flush=True)
flyte.init(address=address, storage=storage, supervisor="inline", allow_local_storage=True)
print("ALLOWED", ray.is_initialized(), flush=True)
flyte.shutdown()
ray.nodes = real_nodes
flyte.init(address=address, storage=storage, supervisor="inline")   # the real cluster: one host
print("ONE_HOST_OK", len({n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}), flush=True)
flyte.shutdown()
'''


@pytest.mark.timeout(120)
def test_local_storage_refused_on_several_hosts(bare_cluster, tmp_path):
    """init refuses a local folder when the live nodes span two hosts (one node entry given another
    address: every local cluster here shares one host), disconnects so that the next init starts
    afresh, accepts it with allow_local_storage=True, and on the real single-host cluster."""
    storage = os.path.join(bare_cluster.storage, "refuse")
    res = _run_driver(REFUSE, tmp_path, bare_cluster.gcs_address, storage)
    out = res.stdout
    assert res.returncode == 0, f"stdout:\n{out}\nstderr:\n{res.stderr[-4000:]}"
    assert _lines(out, "REFUSED") == [["REFUSED", "False"]], out
    message = next(line for line in out.splitlines() if line.startswith("MESSAGE "))
    assert repr(storage) in message and "2 hosts" in message and "allow_local_storage=True" in message
    assert _lines(out, "ALLOWED") == [["ALLOWED", "True"]]
    assert _lines(out, "ONE_HOST_OK") == [["ONE_HOST_OK", "1"]]
