"""The ``UpstreamSink`` every stage holds: stage events in, committed outbox rows out.

Each stage gets its own ``OutboxSink`` (the composition root builds them), so
health can say per stage how many of its events the outbox committed and how
many it refused. The wire format is ``gateway/publish/payloads.py``'s: the sink
asks it for the ``UpEvent`` of each stage event and hands that to the outbox
without waiting.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from gateway.errors import OutboxRejected
from gateway.events import UpEvent
from gateway.log import get_logger
from gateway.publish import payloads


class Enqueue(Protocol):
    """The outbox's non-blocking entry (``Outbox.enqueue``)."""

    def enqueue(self, event: UpEvent) -> asyncio.Future[str]: ...


class OutboxSink:
    """Hands a stage's events to the outbox without waiting, and counts how they fared.

    ``committed`` counts events the outbox committed, ``rejected`` those it
    refused (shedding by class, a full disk); anything else is a bug and is
    logged as ``{what}_not_committed`` with its type only (an event may name a
    shopper).
    """

    def __init__(self, outbox: Enqueue, what: str, log: Any | None = None) -> None:
        self.outbox = outbox
        self.what = what
        self._log = log or get_logger("outbox")
        self.committed = 0
        self.rejected = 0

    def send(self, event: object) -> None:
        """The stage event's payload goes to the outbox; its fate is counted when known."""
        self.outbox.enqueue(payloads.up_event(event)).add_done_callback(self._done)

    def stats(self) -> dict[str, int]:
        """``upstream`` (committed) and ``upstream_rejected`` for the stage's health."""
        return {"upstream": self.committed, "upstream_rejected": self.rejected}

    def _done(self, fut: asyncio.Future[str]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self.committed += 1
        elif isinstance(exc, OutboxRejected):
            self.rejected += 1
            self._log.warning(f"{self.what}_rejected", error=str(exc))
        else:
            self._log.error(f"{self.what}_not_committed", error=type(exc).__name__)
