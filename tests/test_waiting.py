"""gateway.testing.waiting: the deadline-bounded waits the timing-sensitive tests use."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.testing.waiting import wait_until, wait_until_async


def test_wait_until_returns_the_first_truthy_value_another_thread_brings() -> None:
    """wait_until returns once the predicate turns truthy, with the value it returned."""
    box: list[str] = []
    timer = threading.Timer(0.05, box.append, args=("ready",))
    timer.start()
    try:
        assert wait_until(lambda: box[:1], what="the box") == ["ready"]
    finally:
        timer.join()


def test_wait_until_fails_naming_what_never_came() -> None:
    """A predicate that stays falsy fails the test with AssertionError saying what it waited for."""
    calls: list[int] = []

    def never() -> bool:
        calls.append(1)
        return False

    with pytest.raises(AssertionError, match="waiting for the moon"):
        wait_until(never, timeout_s=0.05, what="the moon")
    assert len(calls) >= 2  # polled, and asked once more at the deadline


def test_wait_until_async_lets_the_loop_run_the_task_it_waits_for() -> None:
    """wait_until_async yields to the loop, so a task on it can make the condition true."""

    async def scenario() -> int:
        counter = [0]

        async def count() -> None:
            for _ in range(3):
                await asyncio.sleep(0)
                counter[0] += 1

        task = asyncio.create_task(count())
        got = await wait_until_async(lambda: counter[0] >= 3 and counter[0], what="three counts")
        await task
        return got

    assert asyncio.run(scenario()) == 3


def test_wait_until_async_fails_naming_what_never_came() -> None:
    """On the loop too, a condition that never holds ends in AssertionError naming it."""
    with pytest.raises(AssertionError, match="waiting for a reply"):
        asyncio.run(wait_until_async(lambda: None, timeout_s=0.05, what="a reply"))
