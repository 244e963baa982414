"""Waiting in tests: poll a condition until it holds, failing only after a generous deadline.

A test that sleeps and then asserts a count or a state passes or fails with the
machine's load. One that waits for the condition fails only when the condition
never comes: the deadline is there to end the wait, not to measure anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# The default deadline: what takes milliseconds on an idle machine can take seconds on
# a loaded 2-core CI runner, and the deadline only has to catch what never happens.
EVENTUALLY_S = 10.0
# Short next to what tests wait for (a pty read, an MQTT round trip), long enough that
# polling costs the code under test nothing noticeable.
POLL_INTERVAL_S = 0.005


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float = EVENTUALLY_S,
    what: str = "the condition",
    *,
    poll_s: float = POLL_INTERVAL_S,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises AssertionError naming ``what`` when it is still falsy at the deadline
    (it is called once more then, so a slow machine gets every chance).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


async def wait_until_async(
    predicate: Callable[[], T],
    timeout_s: float = EVENTUALLY_S,
    what: str = "the condition",
    *,
    poll_s: float = POLL_INTERVAL_S,
) -> T:
    """``wait_until`` on an event loop: sleeps with ``asyncio.sleep``, so the tasks that
    make the condition come true keep running meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(poll_s)
