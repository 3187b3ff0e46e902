"""Small helpers shared by the tests."""

import time


def wait_until(pred, timeout: float = 60, poll: float = 0.03) -> None:
    """Poll ``pred`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, "timed out"
        time.sleep(poll)
