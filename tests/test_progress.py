"""Progress bars (#16): map and Run.wait() show done / failed / retried and the spot share where
someone watches (a terminal, Jupyter), and stay silent in logs (init(progress="auto") under
pytest, whose stderr is not a terminal) — on a real embedded Ray."""

import pytest

import flyte_ray as flyte
from flyte_ray.progressbar import enabled, set_mode

import tasks_progress as tp

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def shown(embedded):
    set_mode(True)
    yield
    set_mode("auto")


def test_map_shows_progress_with_failures(shown, capfd):
    out = list(flyte.map(tp.inc, range(8), return_exceptions=True))
    assert isinstance(out[3], Exception) and out[:3] == [1, 2, 3]
    err = capfd.readouterr().err
    assert "map prog.inc" in err and "8/8" in err and "failed=1" in err and "spot=0%" in err


def test_run_wait_shows_the_runs_calls(shown, capfd):
    run = flyte.run(tp.fan, 30)
    run.wait()
    assert run.outputs() == sum(i + 1 for i in range(30) if i != 3)
    err = capfd.readouterr().err
    assert f"run {run.name}" in err and "calls=30" in err  # the root and its 29 children


def test_a_gather_wrapped_in_progress_counts_its_calls(shown, capfd):
    import asyncio

    async def go():
        return await asyncio.gather(*flyte.progress((tp.inc.aio(i) for i in range(6)), "sweep"),
                                    return_exceptions=True)

    out = asyncio.run(go())
    assert out[:3] == [1, 2, 3] and isinstance(out[3], Exception)
    err = capfd.readouterr().err
    assert "sweep" in err and "6/6" in err and "failed=1" in err


def test_silent_where_nobody_watches(embedded, capfd):
    assert not enabled()  # pytest captures stderr: not a terminal
    list(flyte.map(tp.inc, range(4), return_exceptions=True))
    flyte.run(tp.fan, 4).wait()
    assert "map prog.inc" not in capfd.readouterr().err
    set_mode(False)  # init(progress=False): silent even where someone watches
    try:
        assert not enabled()
    finally:
        set_mode("auto")
    with pytest.raises(ValueError, match="progress"):
        set_mode("sometimes")
