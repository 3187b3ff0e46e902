"""The supervising actor's store of finished results, without a cluster: bounded by count, bytes
and age; a run's results go when the run ends."""

from flyte_ray._controller.supervision import ResultStore
from flyte_ray._ray.wire import VERSION, SupervisedResult


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def res(value, runtime=0.1) -> SupervisedResult:
    return SupervisedResult(VERSION, True, value, "", runtime, False)


def test_results_round_trip_and_stay_in_use_order():
    s = ResultStore(max_count=2)
    s.put("r1|a", res(1))
    s.put("r1|b", res([2, "x"]))
    assert s.get("r1|a").value == 1  # a is now the most recently used
    s.put("r1|c", res(3))
    assert s.get("r1|b") is None and s.get("r1|a").value == 1 and s.get("r1|c").value == 3
    assert len(s) == 2


def test_bounded_by_bytes_and_a_result_larger_than_the_bound_is_not_kept():
    s = ResultStore(max_bytes=10_000)
    for i in range(20):
        s.put(f"r|{i}", res(b"x" * 1_000))
    assert s.bytes <= 10_000 and 5 <= len(s) < 20
    assert s.get("r|19") is not None and s.get("r|0") is None
    s.put("r|big", res(b"y" * 20_000))
    assert s.get("r|big") is None and s.bytes <= 10_000


def test_old_results_expire_and_a_runs_results_can_be_forgotten():
    clock = Clock()
    s = ResultStore(max_age=60, clock=clock)
    s.put("run-a|1", res(1))
    s.put("run-a|2", res(2))
    s.put("run-b|1", res(3))
    s.forget_run("run-a")
    assert s.get("run-a|1") is None and s.get("run-a|2") is None and s.get("run-b|1").value == 3
    clock.t = 61
    assert s.get("run-b|1") is None and s.bytes == 0 and len(s) == 0
    s.put("run-c|1", res(4))  # puts also evict what has aged out
    assert len(s) == 1


def test_an_unpicklable_result_is_simply_not_kept():
    s = ResultStore()
    s.put("r|lock", res(__import__("threading").Lock()))
    assert s.get("r|lock") is None and len(s) == 0
