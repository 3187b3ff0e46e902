"""A flytekit-style layer over flyte-ray: flytekit task code runs on Ray after swapping the import::

    import flyte_ray.flytekit as flytekit
    from flyte_ray.flytekit import current_context, task, workflow
    from flyte_ray.flytekit.exceptions.user import FlyteRecoverableException

    @task(retries=3, interruptible=True)
    def train(n_iterations: int) -> int:
        cp = current_context().checkpoint
        start = int(cp.read() or b"0")
        for i in range(start, n_iterations):
            ...
            cp.write(f"{i + 1}".encode())
        return n_iterations

    @workflow
    def wf(n_iterations: int) -> int:
        return train(n_iterations=n_iterations)

    print(wf(n_iterations=10))        # runs on the embedded local Ray (or init(address=...))

What each name does, and where it differs from flytekit, is in :mod:`._tasks` and
:mod:`._context` and in ``docs/flyte-compat.md``. In short: only ``FlyteRecoverableException``
is retried (flytekit's rule); preemptions are system retries with their own budget; workflows
run eagerly as a task with no CPU reserved; ``current_context().checkpoint`` is flyte-ray's
checkpoint. ``flyte_ray.init(...)`` is optional: the first call starts an embedded local Ray.
"""

from .._version import __version__
from ..checkpoint import Checkpoint
from ..compat import logger
from ..errors import NonRecoverableError
from ..runtime import init
from ._context import Deck, ExecutionParameters, SecretsManager, current_context
from ._tasks import Cache, Resources, dynamic, map_task, task, workflow
from .exceptions import FlyteRecoverableException

__all__ = [
    "Cache",
    "Checkpoint",
    "Deck",
    "ExecutionParameters",
    "FlyteRecoverableException",
    "NonRecoverableError",
    "Resources",
    "SecretsManager",
    "current_context",
    "dynamic",
    "init",
    "logger",
    "map_task",
    "task",
    "workflow",
    "__version__",
]
