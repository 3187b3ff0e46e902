"""flyte-ray: Flyte's task-execution model on a Ray cluster.

Define tasks as in Flyte 2 and run them on Ray, on spot capacity where allowed, with retries
that tell a preemption (a *system* failure, its own budget) from a failure of your code::

    import flyte_ray as flyte

    env = flyte.TaskEnvironment(name="demo", resources=flyte.Resources(cpu=1), interruptible=True)

    @env.task(retries=2)
    def square(x: int) -> int:
        return x * x

    @env.task
    async def main(n: int) -> list[int]:
        import asyncio
        return await asyncio.gather(*(square.aio(i) for i in range(n)))

    flyte.init()                       # embedded local Ray; or init(address="ray://head:10001")
    print(flyte.run(main, 10).outputs())

Public names are re-exported here; the modules are small and named after what they hold.
"""

from . import durable, errors, io, report
from ._core.notice import PreemptionNotice
from ._core.records import AttemptRecord, format_history
from ._version import __version__  # noqa: E402
from .cache import Cache, CachePolicy, CacheRequest, FunctionBodyPolicy, VersionParameters
from .checkpoint import Checkpoint, Storage

# Flyte's ``flyte.map`` extras (``map.aio``, ``concurrency``, ``group_name``) over run.map; a
# plain ``map(task, xs)`` call is run.map itself (see compat.py).
from .compat import (
    Image,
    Link,
    PodTemplate,
    Secret,
    SecretRequest,
    current_group,
    group,
    logger,
    map,  # Flyte's flyte.map (map.aio, concurrency, group_name) over run.map
    trace,
    version,
)
from .context import TaskContext, ctx, custom_context, get_custom_context
from .environment import TaskEnvironment
from .progressbar import progress
from .resources import GPU, TPU, Device, Resources
from .retry import Backoff, RetryStrategy
from .reuse import ReusePolicy
from .run import Run, RunContext, run, with_runcontext
from .runtime import Settings, current_settings, init, init_from_config, is_initialized, shutdown
from .task import TaskTemplate
from .timeout import Timeout, TimeoutType

__all__ = [
    "AttemptRecord",
    "Backoff",
    "Cache",
    "CachePolicy",
    "CacheRequest",
    "FunctionBodyPolicy",
    "VersionParameters",
    "Checkpoint",
    "PreemptionNotice",
    "progress",
    "Device",
    "GPU",
    "Image",
    "Link",
    "PodTemplate",
    "ReusePolicy",
    "Resources",
    "RetryStrategy",
    "Run",
    "RunContext",
    "Secret",
    "SecretRequest",
    "Settings",
    "Storage",
    "TPU",
    "TaskContext",
    "TaskEnvironment",
    "TaskTemplate",
    "Timeout",
    "TimeoutType",
    "__version__",
    "ctx",
    "custom_context",
    "durable",
    "get_custom_context",
    "report",
    "current_group",
    "current_settings",
    "errors",
    "format_history",
    "group",
    "init",
    "init_from_config",
    "io",
    "is_initialized",
    "logger",
    "map",
    "run",
    "shutdown",
    "trace",
    "version",
    "with_runcontext",
]
