"""Reusing a run name never resumes another run's checkpoints by accident (embedded Ray)."""

import pytest

import flyte_ray as flyte

import tasks_runs as tr

pytestmark = [pytest.mark.usefixtures("embedded"), pytest.mark.timeout(120)]


def test_a_used_run_name_is_refused_unless_resume_is_asked_for():
    first = flyte.with_runcontext(name="counting").run(tr.count_up, 5)
    assert first.outputs(timeout=60) == 0
    with pytest.raises(ValueError, match=r"with_runcontext.name: a run named 'counting' ran before.*resume=True"):
        flyte.with_runcontext(name="counting").run(tr.count_up, 5)
    resumed = flyte.with_runcontext(name="counting", resume=True).run(tr.count_up, 5)
    assert resumed.outputs(timeout=60) == 5  # it resumed from the first run's checkpoint, as asked
    assert flyte.with_runcontext(name="counting-2").run(tr.count_up, 1).outputs(timeout=60) == 0


def test_resume_needs_a_name():
    with pytest.raises(ValueError, match="with_runcontext.resume"):
        flyte.with_runcontext(resume=True)
    with pytest.raises(TypeError, match="with_runcontext.resume"):
        flyte.with_runcontext(name="x", resume="yes")
