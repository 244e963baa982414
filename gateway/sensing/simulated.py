"""A scripted event source for the demo and for tests (``[simulation]`` in the config).

It produces events at a steady rate through the same outbox path a real
source uses, each carrying its own counter so that tests can tell which were
taken. It is off unless ``simulation.events_per_s`` is above zero.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from gateway.clock import Clock
from gateway.config import SimulationSection
from gateway.errors import OutboxRejected
from gateway.events import UpEvent
from gateway.log import get_logger

# Hands an event over and returns a future that resolves once it is committed.
Sink = Callable[[UpEvent], asyncio.Future[str]]


class ScriptedEventSource:
    """Emits ``simulation.events_per_s`` events, cycling through ``simulation.kinds``."""

    def __init__(self, cfg: SimulationSection, clock: Clock, sink: Sink) -> None:
        self.cfg = cfg
        self.clock = clock
        self.sink = sink
        self.produced = 0
        self.taken = 0
        self.rejected = 0
        self._log = get_logger("simulation")

    async def run(self) -> None:
        if self.cfg.events_per_s <= 0:
            return
        kinds = itertools.cycle(self.cfg.kinds)
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.cfg.events_per_s
        start = loop.time()
        # Producers await their commit; keep many in flight so group commit works.
        inflight: set[asyncio.Future[str]] = set()
        while not self.cfg.max_events or self.produced < self.cfg.max_events:
            self.produced += 1
            ev = UpEvent.of(next(kinds), {"n": self.produced, "simulated": True}, self.clock.wall())
            fut = self.sink(ev)
            inflight.add(fut)
            fut.add_done_callback(self._done)
            fut.add_done_callback(inflight.discard)
            delay = start + self.produced * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif self.produced % 256 == 0:
                await asyncio.sleep(0)
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)
        self._log.info(
            "simulation_finished", produced=self.produced, taken=self.taken, rejected=self.rejected
        )
        # Stay alive: a finished source must not end the daemon.
        await asyncio.Event().wait()

    def _done(self, fut: asyncio.Future[str]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self.taken += 1
        elif isinstance(exc, OutboxRejected):
            self.rejected += 1
        else:
            self._log.error("simulated_event_failed", error=str(exc))
