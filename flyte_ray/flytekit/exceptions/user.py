"""flytekit's user exceptions (``flytekit.exceptions.user``) that task code raises.

In flytekit -- and in :mod:`flyte_ray.flytekit` -- a task's exception is *not* retried unless it
is a :class:`FlyteRecoverableException`; these names let such code run after swapping the import.
"""

from __future__ import annotations

__all__ = [
    "FlyteRecoverableException",
    "FlyteUserException",
    "FlyteValueException",
    "FlyteTypeException",
    "FlyteAssertion",
]


class FlyteUserException(Exception):
    """Base of flytekit's user exceptions (not retried, as any other exception)."""


class FlyteRecoverableException(FlyteUserException):
    """Raise it to fail this attempt *and* have the task retried (within its ``retries``)::

    raise FlyteRecoverableException(f"failed at step {i}; retry resumes from the checkpoint")
    """


class FlyteValueException(FlyteUserException, ValueError):
    """A bad value (flytekit's name); not retried."""


class FlyteTypeException(FlyteUserException, TypeError):
    """A value of the wrong type (flytekit's name); not retried."""


class FlyteAssertion(FlyteUserException, AssertionError):
    """A failed assertion (flytekit's name); not retried."""
