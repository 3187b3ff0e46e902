"""flytekit's ``flytekit.exceptions`` package: the user exceptions are in :mod:`.user`."""

from . import user
from .user import FlyteRecoverableException

__all__ = ["FlyteRecoverableException", "user"]
