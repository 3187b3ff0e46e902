"""Example programs in the style of Flyte 2's documentation, written against ``flyte_ray as flyte``.

Importable (not ``__main__``), so tasks travel to Ray workers by reference.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from functools import partial
from typing import Iterator, List, Optional

from pydantic import BaseModel

import flyte_ray as flyte
import flyte_ray.errors

image = (
    flyte.Image.from_debian_base(python_version=(3, 11))
    .with_apt_packages("curl")
    .with_pip_packages("pydantic>=2", "numpy")
    .with_env_vars({"MODE": "compat"})
)

env = flyte.TaskEnvironment(
    name="compat_examples",
    image=image,
    resources=flyte.Resources(cpu=1, memory="250Mi"),
    secrets=[flyte.Secret(key="api-key", as_env_var="API_KEY")],
)


# --------------------------------------------------------------------------- fan-out with groups
@env.task
async def say_hello(i: int) -> str:
    return f"hello {i} from {flyte.ctx().action}"


@env.task
async def hello_fanout(n: int) -> dict:
    with flyte.group("fanout"):
        inside = flyte.current_group()
        with flyte.group("inner"):
            nested = flyte.current_group()
        greetings = await asyncio.gather(*(say_hello(i) for i in range(n)))
    return {"greetings": greetings, "inside": inside, "nested": nested, "after": flyte.current_group()}


# --------------------------------------------------------------------------- trace
@flyte.trace
def double(x: int) -> int:
    return 2 * x


@flyte.trace
async def add_async(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@flyte.trace
def upto(n: int) -> Iterator[int]:
    yield from range(n)


@env.task
def traced_sum(n: int) -> int:
    total = 0
    with flyte.group("doubles"):
        for i in upto(n):
            total += double(i)
    return total


@env.task
async def traced_async(a: int, b: int) -> int:
    return await add_async(a, b) + double(b)


# --------------------------------------------------------------------------- logger
@env.task
def log_and_capture(name: str) -> str:
    """Logs through flyte.logger, capturing what its own handler writes in this worker."""
    handler = flyte.logger.handlers[0]
    buf = io.StringIO()
    old = handler.setStream(buf)
    try:
        flyte.logger.info("processing %s", name)
        flyte.logger.debug("hidden at INFO")
    finally:
        handler.setStream(old)
    return buf.getvalue()


# --------------------------------------------------------------------------- map
@env.task
def square(x: int) -> int:
    return x * x


@env.task
def scale(factor: int, x: int) -> int:
    return factor * x


@env.task
def map_driver(n: int) -> dict:
    return {
        "plain": list(flyte.map(square, range(n))),
        "bounded": list(flyte.map(square, range(n), concurrency=2)),
        "partial": list(flyte.map(partial(scale, 10), range(n))),
    }


@env.task
async def flaky_square(x: int) -> int:
    if x == 3:
        raise ValueError(f"no threes: {x}")
    return x * x


@env.task
async def map_aio_driver(n: int) -> list:
    out = []
    async for r in flyte.map.aio(flaky_square, range(n), concurrency=2, return_exceptions=True):
        out.append(f"error:{type(r).__name__}" if isinstance(r, Exception) else r)
    return out


# --------------------------------------------------------------------------- pydantic / dataclass
class Address(BaseModel):
    city: str
    zip_code: str


class Customer(BaseModel):
    name: str
    address: Address
    tags: List[str] = []
    note: Optional[str] = None


@dataclass
class Order:
    customer: Customer
    quantity: int
    price: float


class Invoice(BaseModel):
    customer_name: str
    city: str
    total: float


@env.task
async def make_invoice(order: Order) -> Invoice:
    return Invoice(customer_name=order.customer.name, city=order.customer.address.city,
                   total=order.quantity * order.price)


@env.task
async def invoice_all(orders: List[Order]) -> float:
    invoices = await asyncio.gather(*(make_invoice(o) for o in orders))
    return sum(inv.total for inv in invoices)


# --------------------------------------------------------------------------- errors and retries
@env.task(retries=2)
def flaky(x: int) -> dict:
    c = flyte.ctx()
    if c.user_attempt < 2:
        raise RuntimeError(f"transient failure on attempt {c.user_attempt}")
    return {"value": x + 1, "user_attempt": c.user_attempt}


@env.task
async def always_fails(x: int) -> int:
    raise ValueError(f"always fails {x}")


@env.task
async def recover() -> dict:
    try:
        await always_fails(1)
    except flyte.errors.RuntimeUserError as e:
        caught = {"code": e.code, "is_value_error": isinstance(e, ValueError)}
    else:
        caught = {}
    caught["flaky"] = await flaky.aio(41)
    return caught
