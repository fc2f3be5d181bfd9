"""Waiting on a condition: the one ``wait_for`` of the test suite."""

from __future__ import annotations

import time


def wait_for(pred, timeout: float = 30.0, what="condition", *, interval: float = 0.05):
    """Call ``pred()`` until it returns something truthy and return that;
    after ``timeout`` seconds fail with ``what`` (a string, or a callable
    giving one, for a message that shows the state at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        time.sleep(interval)
