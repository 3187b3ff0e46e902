"""Flyte 2 documentation-style programs (tests/tasks_compat.py) run with ``import flyte_ray as flyte``,
on the embedded one-CPU Ray; plus the stand-ins of flyte_ray/compat.py on their own."""

import asyncio
import inspect
import logging

import pytest

import flyte_ray as flyte
from flyte_ray import compat
from flyte_ray.errors import RuntimeUserError

import tasks_compat as tc

FLYTE_NAMES = ("Image", "Link", "PodTemplate", "Secret", "SecretRequest", "group", "trace", "logger", "version",
               "map")


# --------------------------------------------------------------------------- no Ray needed
def test_flyte_names_are_exported_and_documented():
    for name in FLYTE_NAMES:
        assert name in flyte.__all__ and hasattr(flyte, name), name
    assert flyte.map is compat.map and flyte.group is compat.group
    for obj in (compat.Image, compat.Link, compat.PodTemplate, compat.Secret, compat.group, compat.trace,
                compat.version, compat.map, type(compat.map), compat.Image.runtime_env, compat.current_group):
        doc = inspect.getdoc(obj) or ""
        assert "Ray" in doc or "flyte-ray" in doc or "flyte_ray" in doc, obj
    assert flyte.version() == flyte.__version__


def test_image_records_builder_calls_and_is_immutable():
    base = flyte.Image.from_debian_base()
    img = base.with_pip_packages("numpy", "pandas").with_env_vars({"A": "1"}).with_source_folder("/src")
    assert base.layers == () and base.base.op == "from_debian_base"
    assert [layer.op for layer in img.layers] == ["with_pip_packages", "with_env_vars", "with_source_folder"]
    assert img.runtime_env() == {"pip": ["numpy", "pandas"], "env_vars": {"A": "1"}, "working_dir": "/src"}
    named = img.clone(name="my-image", addl_layer="wheels")
    assert named.name == "my-image" and named.layers[-1].kwargs["addl_layer"] == "wheels" and img.name is None
    assert flyte.Image.from_base("ghcr.io/org/img:1").uri == "ghcr.io/org/img:1"
    assert flyte.Image.from_uv_script("s.py", name="uv").name == "uv"
    assert flyte.Image.from_dockerfile("Dockerfile", registry="r", name="d").with_commands(["ls"]).uri is None
    assert "with_pip_packages('numpy', 'pandas')" in repr(img)
    for method in ("with_apt_packages", "with_requirements", "with_workdir", "with_uv_project", "with_local_v2"):
        assert "On Ray" in getattr(flyte.Image, method).__doc__
    assert tc.env.image is tc.image and tc.env.secrets[0].key == "api-key"


def test_group_and_trace_work_outside_tasks():
    assert flyte.current_group() is None
    with flyte.group("a"):
        with flyte.group("b"):
            assert flyte.current_group() == "a/b"
        assert flyte.current_group() == "a"
    assert flyte.current_group() is None
    with pytest.raises(ValueError):
        with flyte.group(""):
            pass
    assert tc.double(4) == 8 and tc.double.__name__ == "double"
    assert inspect.iscoroutinefunction(tc.add_async) and asyncio.run(tc.add_async(1, 2)) == 3
    assert inspect.isgeneratorfunction(tc.upto) and list(tc.upto(3)) == [0, 1, 2]


def test_user_logger(caplog):
    assert flyte.logger.name == "flyte_ray.user" and flyte.logger.level == logging.INFO
    stream = flyte.logger.handlers[0]
    import io

    buf = io.StringIO()
    old = stream.setStream(buf)
    try:
        flyte.logger.info("outside %d", 1)
    finally:
        stream.setStream(old)
    assert buf.getvalue() == "[-] INFO outside 1\n"


# --------------------------------------------------------------------------- on Ray
on_ray = pytest.mark.usefixtures("embedded")


@on_ray
def test_hello_fanout_with_groups_and_run_handle():
    run = flyte.run(tc.hello_fanout, 4)
    assert run.wait() is run and run.phase == "succeeded"
    assert run.url is None  # embedded Ray without a dashboard; Flyte's examples just print it
    out = run.outputs()
    assert out["greetings"] == [f"hello {i} from compat_examples.say_hello#root/say_hello-{i}" for i in range(4)]
    assert (out["inside"], out["nested"], out["after"]) == ("fanout", "fanout/inner", None)


@on_ray
def test_trace_in_sync_and_async_tasks():
    assert tc.traced_sum(5) == 2 * sum(range(5))
    assert asyncio.run(tc.traced_async.aio(2, 3)) == 2 + 3 + 6


@on_ray
def test_logger_in_a_task_prefixes_the_action():
    assert tc.log_and_capture("x") == "[compat_examples.log_and_capture#root] INFO processing x\n"


@on_ray
def test_map_sync_bounded_partial_and_aio():
    run = flyte.with_runcontext(name="compat-map").run(tc.map_driver, 5)
    assert run.name == "compat-map"
    assert run.outputs() == {"plain": [0, 1, 4, 9, 16], "bounded": [0, 1, 4, 9, 16], "partial": [0, 10, 20, 30, 40]}
    assert asyncio.run(tc.map_aio_driver.aio(5)) == [0, 1, 4, "error:ValueError", 16]
    # from the driver too
    assert list(flyte.map(tc.square, [1, 2, 3], concurrency=1)) == [1, 4, 9]

    async def driver():
        return [r async for r in flyte.map.aio(tc.square, range(4), group_name="squares")]

    assert asyncio.run(driver()) == [0, 1, 4, 9]
    with pytest.raises(ValueError, match="concurrency"):
        list(flyte.map(tc.square, [1], concurrency=-1))


@on_ray
def test_pydantic_and_dataclass_inputs():
    orders = [tc.Order(customer=tc.Customer(name=f"c{i}", address=tc.Address(city="Lyon", zip_code="69001")),
                       quantity=i + 1, price=2.5) for i in range(3)]
    inv = asyncio.run(tc.make_invoice.aio(orders[1]))
    assert isinstance(inv, tc.Invoice) and inv == tc.Invoice(customer_name="c1", city="Lyon", total=5.0)
    assert flyte.run(tc.invoice_all, orders).outputs() == 2.5 * (1 + 2 + 3)


@on_ray
def test_exception_handling_and_retries():
    out = flyte.run(tc.recover).outputs()
    assert out == {"code": "ValueError", "is_value_error": True, "flaky": {"value": 42, "user_attempt": 2}}
    run = flyte.run(tc.always_fails, 7)
    run.wait()
    assert run.phase == "failed"
    with pytest.raises(ValueError, match="always fails 7") as ei:
        run.outputs()
    assert isinstance(ei.value, RuntimeUserError)
