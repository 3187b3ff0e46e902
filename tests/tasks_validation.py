"""Tasks used by test_validation.py (a module, so workers import them by reference)."""

import os

import flyte_ray as flyte

#: a stand-in for a real credential; test_validation asserts it is never printed
SENTINEL = "s3cr3t-SENTINEL-7f3a"

env = flyte.TaskEnvironment(
    name="validation",
    resources=flyte.Resources(cpu=0.5),
    env_vars={"API_TOKEN": SENTINEL},
    secrets=[flyte.Secret(key="api-token", as_env_var="API_TOKEN")],
)


@env.task(retries=1)
def token_seen(name: str, fail_first: bool) -> bool:
    """True when the worker's variable ``name`` holds the sentinel; the first attempt fails (a user
    error) if asked, so the run's history has a failed attempt too. Never returns or raises the
    value itself."""
    if fail_first and flyte.ctx().attempt == 0:
        raise RuntimeError("first attempt fails on purpose")
    return os.environ.get(name) == SENTINEL
