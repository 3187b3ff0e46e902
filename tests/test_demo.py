"""README's first command runs ``flyte-ray demo``: it must keep working (real LocalCluster, in a
fresh interpreter without the suite's RAY_AUTH_MODE, as a new user runs it)."""

import os
import subprocess
import sys

import pytest


@pytest.mark.timeout(240)
def test_the_demo_survives_two_preemptions_and_falls_back_to_ondemand(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "flyte_ray.cli", "demo"], capture_output=True, text=True, env=env,
                       timeout=230)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    assert "equal" in out and "resumed from step 14" in out
    table = [line.split() for line in out.splitlines() if line[:1].isdigit() and ("spot" in line or "ondemand" in line)]
    assert [row[1] for row in table] == ["spot", "spot", "spot", "ondemand"]
    assert [row[5] for row in table] == ["preemption", "preemption", "spot_unavailable", "succeeded"]
    assert "user retries used: 0" in out


@pytest.mark.timeout(240)
def test_the_notice_demo_saves_moves_and_redoes_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "flyte_ray.cli", "demo", "--notice"], capture_output=True, text=True,
                       env=env, timeout=230)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    assert "drained Ray node" in out and "for PREEMPTION" in out
    assert "0 steps redone" in out and "equal" in out and "while spot-" in out
    table = [line.split() for line in out.splitlines() if line[:1].isdigit() and "spot" in line]
    assert [row[5] for row in table] == ["preemption", "succeeded"]
    assert table[0][2] != table[1][2]  # the next attempt ran on the other spot node
