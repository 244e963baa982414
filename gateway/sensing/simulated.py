"""A scripted event source for the demo and for tests (``[simulation]`` in the config).

It produces ``Scripted`` events at a steady rate through the same ``UpstreamSink``
and outbox path a real source uses, each carrying its own counter so that tests
can tell which were taken. It is off unless ``simulation.events_per_s`` is above
zero.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from gateway.clock import Clock
from gateway.config import SimulationSection
from gateway.log import get_logger
from gateway.ports import UpstreamSink


@dataclass(frozen=True, slots=True)
class Scripted:
    """The ``n``-th scripted event, sent up as ``kind`` (gateway/publish/payloads.py)."""

    kind: str
    n: int
    ts: float


class ScriptedEventSource:
    """Emits ``simulation.events_per_s`` events, cycling through ``simulation.kinds``."""

    def __init__(self, cfg: SimulationSection, clock: Clock, upstream: UpstreamSink) -> None:
        self.cfg = cfg
        self.clock = clock
        self.upstream = upstream
        self.produced = 0
        self._log = get_logger("simulation")

    async def run(self) -> None:
        """Produce at the configured rate until ``max_events``; then stay alive, idle."""
        if self.cfg.events_per_s <= 0:
            return
        kinds = itertools.cycle(self.cfg.kinds)
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.cfg.events_per_s
        start = loop.time()
        while not self.cfg.max_events or self.produced < self.cfg.max_events:
            self.produced += 1
            self.upstream.send(Scripted(next(kinds), self.produced, self.clock.wall()))
            delay = start + self.produced * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif self.produced % 256 == 0:
                await asyncio.sleep(0)
        # The summary line waits until the outbox has settled every event (committed or
        # refused), as a producer awaiting its commits would; polled, once, at the end.
        while self._settled() < self.produced:  # noqa: ASYNC110 - the sink has no awaitable
            await asyncio.sleep(0.05)
        self._log.info("simulation_finished", **self.stats())
        # Stay alive: a finished source must not end the daemon.
        await asyncio.Event().wait()

    def _settled(self) -> int:
        sink = self.upstream.stats()
        return sink["upstream"] + sink["upstream_rejected"]

    def stats(self) -> dict[str, Any]:
        """``produced``, and how many the outbox ``taken`` (committed) or ``rejected``."""
        sink = self.upstream.stats()
        return {
            "produced": self.produced,
            "taken": sink["upstream"],
            "rejected": sink["upstream_rejected"],
        }
