"""The HQ link: drains the outbox to HQ at QoS 1 and deletes rows on PUBACK.

Rows are published in seq order in a bounded window (``outbox.publish_window``
messages in flight), far below paho's 65,535 message ids: paho's in-memory
queue is a transmitter, not a ledger. A row is deleted only when a PUBACK with
a non-failure reason code comes back for the message id it was sent under. A
failure PUBACK (e.g. 0x87 not authorised) leaves the row in place and it is
retried later. After a reconnect paho resends the in-flight messages itself
(same ids, DUP set); after a restart everything still in the outbox is sent
again, and HQ drops duplicates by ``id``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from gateway.clock import Clock
from gateway.config import HqSection
from gateway.log import get_logger
from gateway.publish import payloads, topics
from gateway.publish.mqtt import MqttConnection, Will
from gateway.publish.outbox import Outbox

# A row whose PUBACK said failure is offered again after this long (seconds).
FAILED_RETRY_S = 30.0


def hq_connection(cfg: HqSection, store_id: str, window: int) -> MqttConnection:
    """The connection to HQ: ``offline`` as its retained will, a persistent session, and
    at most ``window`` of our messages in flight."""
    will = Will(
        topics.hq_status(store_id),
        payloads.status(store_id, "offline", 0.0, reason="connection lost"),
    )
    return MqttConnection(
        "hq",
        cfg,
        client_id=cfg.client_id or f"store-gateway-{store_id}",
        password_env="STORE_GATEWAY_HQ_PASSWORD",  # noqa: S106 - an env variable name
        will=will,
        session_expiry_s=cfg.session_expiry_s,
        max_inflight=window,
    )


class HqLink:
    """Publishes outbox rows to HQ and reports their acknowledgement back."""

    def __init__(
        self, conn: MqttConnection, store_id: str, outbox: Outbox, clock: Clock, window: int
    ) -> None:
        self.conn = conn
        self.store_id = store_id
        self.outbox = outbox
        self.clock = clock
        self.window = window
        self._log = get_logger("hq_link")
        self.conn.on_ack(self._on_ack)
        self.conn.on_up(self._on_up)
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._dispatched_upto = 0
        self._failed: list[tuple[float, int]] = []
        self._room = asyncio.Event()
        self.published_total = 0
        self.acked_total = 0
        self.failed_acks = 0

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.conn.connected,
            "inflight": len(self._inflight),
            "published_total": self.published_total,
            "acked_total": self.acked_total,
            "failed_acks": self.failed_acks,
            "connects": self.conn.connects,
            "last_error": self.conn.last_error,
        }

    def _on_up(self) -> None:
        self.conn.publish(
            topics.hq_status(self.store_id),
            payloads.status(self.store_id, "online", self.clock.wall()),
            retain=True,
        )
        self._room.set()

    def _on_ack(self, mid: int, ok: bool, reason: int) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return
        if ok:
            self.acked_total += 1
            self.outbox.acked(seq)
        else:
            self.failed_acks += 1
            self._failed.append((self.clock.monotonic() + FAILED_RETRY_S, seq))
            self._log.warning("hq_rejected_event", seq=seq, reason_code=reason)
        self._room.set()

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The coroutines the composition root runs: the connection and the pump."""
        return {"hq-connection": self.conn.run(), "hq-pump": self._pump()}

    async def _pump(self) -> None:
        while True:
            await self.conn.wait_up()
            room = self.window - len(self._inflight)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            rows = []
            now = self.clock.monotonic()
            due = [seq for t, seq in self._failed if t <= now]
            if due:
                self._failed = [(t, s) for t, s in self._failed if t > now]
                rows = await self.outbox.fetch_seqs(due[:room])
            if not rows:
                self.outbox.new_rows.clear()
                rows = await self.outbox.fetch(self._dispatched_upto, min(room, 1000))
            if not rows:
                # Nothing new: wait for a commit, an ack, or the retry timer.
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                # cancellation that races with the event being set, and the task
                # then never ends (SIGTERM hung the TaskGroup).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.outbox.new_rows.wait()
                continue
            for row in rows:
                mid = self.conn.publish(topics.hq_up(self.store_id, row.kind), row.payload, qos=1)
                if mid is None:
                    break  # disconnected: what was not handed over is fetched again
                self._inflight[mid] = row.seq
                self.published_total += 1
                self._dispatched_upto = max(self._dispatched_upto, row.seq)

    async def close(self, timeout_s: float) -> bool:
        """Publish ``offline`` ourselves (retained) and disconnect cleanly."""
        return await self.conn.close(
            [
                (
                    topics.hq_status(self.store_id),
                    payloads.status(self.store_id, "offline", self.clock.wall(), reason="shutdown"),
                    True,
                )
            ],
            timeout_s,
        )
