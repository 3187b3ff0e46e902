"""``flyte_ray.doctor``: cluster summary and placement verdicts, against a real LocalCluster."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest

from flyte_ray.doctor import doctor, load_node_types, main, task_markets

ROOT = Path(__file__).resolve().parent.parent
AWS = str(ROOT / "cluster-configs" / "aws-spot.yaml")

TASKS = textwrap.dedent('''
    import flyte_ray

    env = flyte_ray.TaskEnvironment(name="doc", resources=flyte_ray.Resources(cpu=1), interruptible=True)
    gpu_env = flyte_ray.TaskEnvironment(name="docgpu", resources=flyte_ray.Resources(cpu=1, gpu="A100:1"))

    @env.task(retries=2)
    def placeable(x: int) -> int:
        return x

    @env.task(queue="etl", interruptible=False)
    def etl_job() -> None: ...

    @env.task(queue="nowhere")
    def lost() -> None: ...

    @gpu_env.task
    def train() -> None: ...

    # a task only reachable through its environment's registry
    @gpu_env.task(interruptible=False)
    def _hidden() -> None: ...
    del _hidden

    a10g_env = flyte_ray.TaskEnvironment(name="doca10g", resources=flyte_ray.Resources(cpu=1, gpu="A10G:1"))

    @a10g_env.task
    def infer() -> None: ...
''')


@pytest.fixture(scope="module")
def cluster():
    from flyte_ray.testing import LocalCluster, NodeSpec

    nodes = [NodeSpec("spot-1", market="spot"), NodeSpec("ondemand-1", market="ondemand"),
             NodeSpec("etl-od", market="ondemand", queues=("etl",))]
    with LocalCluster(nodes) as c:
        yield c


@pytest.fixture()
def module_file(tmp_path):
    path = tmp_path / "doctor_tasks_mod.py"
    path.write_text(TASKS)
    return str(path)


def _run(**kw) -> tuple[int, str]:
    buf = io.StringIO()
    rc = doctor(out=buf, **kw)
    return rc, buf.getvalue()


def _task_block(report: str, name: str) -> str:
    """The lines of the report about one task (its header up to the next task header)."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {name} ("))
    end = start + 1
    while end < len(lines) and lines[end].startswith("    "):
        end += 1
    return "\n".join(lines[start:end])


@pytest.mark.timeout(120)
def test_cluster_summary_without_module(cluster):
    rc, report = _run(address=cluster.address)
    assert rc == 0, report
    assert "Live nodes: 4" in report  # head + 3
    markets = report.split("Markets:")[1].split("Queues:")[0]
    assert "spot" in markets and "ondemand" in markets
    spot_line = next(line for line in markets.splitlines() if line.strip().startswith("spot"))
    od_line = next(line for line in markets.splitlines() if line.strip().startswith("ondemand"))
    assert "1 node " in spot_line and "CPU 1" in spot_line
    assert "3 nodes" in od_line and "CPU 2" in od_line  # the head has 0 CPU
    queues = report.split("Queues:")[1].split("Accelerators:")[0]
    assert "default" in queues and "etl" in queues
    etl_line = next(line for line in queues.splitlines() if line.strip().startswith("etl"))
    assert "ondemand: 1 node" in etl_line and "spot" not in etl_line
    # The doctor kept LocalCluster's connection.
    import flyte_ray

    assert flyte_ray.is_initialized()


@pytest.mark.timeout(120)
def test_flags_unplaceable_tasks(cluster, module_file):
    rc, report = _run(address=cluster.address, module=module_file)
    assert rc == 1, report
    assert "Tasks in" in report and ": 6" in report  # _hidden comes from env.tasks

    ok = _task_block(report, "doc.placeable")
    assert ": OK" in ok.splitlines()[0]
    assert "spot " in ok and "ondemand " in ok  # interruptible with retries: both markets
    assert "CANNOT" not in ok

    etl = _task_block(report, "doc.etl_job")
    assert ": OK" in etl.splitlines()[0]
    assert "spot " not in etl  # not interruptible: on-demand only

    lost = _task_block(report, "doc.lost")
    assert "CANNOT BE PLACED" in lost
    assert "queue:nowhere" in lost

    gpu = _task_block(report, "docgpu.train")
    assert "CANNOT BE PLACED" in gpu
    assert "accelerator_type:A100" in gpu and "GPU" in gpu

    assert "docgpu._hidden" in report
    fail_line = next(line for line in report.splitlines() if line.startswith("FAIL:"))
    assert "doc.lost" in fail_line and "docgpu.train" in fail_line and "doc.placeable" not in fail_line


@pytest.mark.timeout(120)
def test_cluster_config_autoscaler_verdict(cluster, module_file):
    rc, report = _run(address=cluster.address, module=module_file, cluster_config=AWS)
    assert rc == 1, report  # queue "nowhere" and A100 exist in no node type of aws-spot.yaml
    assert "Cluster config" in report and "etl-pool" in report

    etl = _task_block(report, "doc.etl_job")
    assert "can launch etl-pool" in etl

    # A10G: no live node, but gpu-ondemand in aws-spot.yaml can be launched.
    a10g = _task_block(report, "doca10g.infer")
    assert "OK after scale-up" in a10g.splitlines()[0]
    assert "accelerator_type:A10G" in a10g
    assert "can launch gpu-ondemand" in a10g

    lost = _task_block(report, "doc.lost")
    assert "CANNOT BE PLACED" in lost and "no node type fits" in lost and "queue:nowhere" in lost
    gpu = _task_block(report, "docgpu.train")
    assert "no node type fits" in gpu and "accelerator_type:A100" in gpu

    fail_line = next(line for line in report.splitlines() if line.startswith("FAIL:"))
    assert "doca10g.infer" not in fail_line and "doc.lost" in fail_line


@pytest.mark.timeout(120)
def test_main_parses_cli_arguments(cluster, module_file, capsys):
    rc = main(["--address", cluster.address, "--cluster-config", AWS, module_file])
    report = capsys.readouterr().out
    assert rc == 1
    assert "doc.lost" in report and "autoscaler (aws-spot.yaml)" in report


@pytest.mark.timeout(120)
def test_placeable_module_exits_zero(cluster, tmp_path):
    path = tmp_path / "doctor_ok_mod.py"
    path.write_text(textwrap.dedent('''
        import flyte_ray
        env = flyte_ray.TaskEnvironment(name="fine", interruptible=True)

        @env.task(retries=1)
        def a() -> None: ...

        @env.task(queue="etl")
        def b() -> None: ...
    '''))
    rc, report = _run(address=cluster.address, module=str(path))
    assert rc == 0, report
    assert "OK: every task can be placed (2 checked)" in report


@pytest.mark.timeout(120)
def test_setup_errors_exit_two(cluster, tmp_path):
    rc, report = _run(address=cluster.address, module=str(tmp_path / "missing.py"))
    assert rc == 2 and "error: cannot import" in report, report
    bad = tmp_path / "bad.yaml"
    bad.write_text("just: a mapping\n")
    rc, report = _run(address=cluster.address, cluster_config=str(bad))
    assert rc == 2 and "error: cannot read cluster config" in report, report
    rc, report = _run(address="127.0.0.1:1")  # already connected elsewhere: refused, connection kept
    assert rc == 2 and "already connected" in report, report


def test_task_markets_follow_the_supervisor_rule():
    import flyte_ray

    env = flyte_ray.TaskEnvironment(name="mk", interruptible=True)

    @env.task(retries=2)
    def a() -> None: ...

    @env.task
    def b() -> None: ...

    @env.task(retries=3, interruptible=False)
    def c() -> None: ...

    assert task_markets(a.spec, threshold=3) == ["spot", "ondemand"]
    assert task_markets(b.spec, threshold=3) == ["ondemand"]  # the only attempt is the final one
    assert task_markets(c.spec, threshold=3) == ["ondemand"]


def test_load_node_types_reads_ray_up_and_kuberay_configs():
    nodes, head = load_node_types(AWS)
    assert head == "head"
    by_name = {n.name: n for n in nodes}
    assert by_name["etl-pool"].queues == ["etl"] and by_name["etl-pool"].market == "ondemand"
    assert by_name["gpu-spot"].accelerators == ["A10G"]
    kuberay = ROOT / "cluster-configs" / "kuberay-raycluster.yaml"
    if kuberay.exists():
        knodes, _ = load_node_types(str(kuberay))
        assert any("ondemand" in n.markets for n in knodes)


def test_module_import_has_no_output():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", "import flyte_ray.doctor"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
