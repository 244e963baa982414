"""The store broker: retained gateway status with a will, periodic health, and what
the decision stage shows on the store's devices (the ``StoreDisplay`` port).

Status and health are re-published after every reconnect (a restarted
Mosquitto without persistence forgets retained messages). Payloads are
``gateway/publish/payloads.py``'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.clock import Clock
from gateway.config import StoreBrokerSection
from gateway.decision.records import ARRIVAL, DWELL, Shown
from gateway.log import get_logger
from gateway.publish import payloads, topics
from gateway.publish.mqtt import MqttConnection, Will


def store_connection(cfg: StoreBrokerSection, store_id: str) -> MqttConnection:
    """The connection to the store's Mosquitto, with ``offline`` as its retained will."""
    will = Will(
        topics.STORE_STATUS,
        payloads.status(store_id, "offline", 0.0, reason="connection lost"),
    )
    return MqttConnection(
        "store",
        cfg,
        client_id=cfg.client_id or f"store-gateway-{store_id}",
        password_env="STORE_GATEWAY_STORE_BROKER_PASSWORD",  # noqa: S106 - an env variable name
        will=will,
    )


class LocalBus:
    """Publishes to the store's Mosquitto: status, health, and the store's devices."""

    def __init__(
        self,
        conn: MqttConnection,
        store_id: str,
        clock: Clock,
        health: Callable[[], dict[str, Any]],
        *,
        health_interval_s: float,
    ) -> None:
        self.conn = conn
        self.store_id = store_id
        self.clock = clock
        self._health = health
        self.health_interval_s = health_interval_s
        self._log = get_logger("local_bus")
        self.conn.on_up(self._on_up)

    def _on_up(self) -> None:
        self.conn.publish(
            topics.STORE_STATUS,
            payloads.status(self.store_id, "online", self.clock.wall()),
            retain=True,
        )
        self.publish_health()

    def publish_health(self) -> None:
        """Publish one health document now (retained, so a new screen sees the latest)."""
        doc = payloads.health(self.store_id, self.clock.wall(), self._health())
        self.conn.publish(topics.STORE_HEALTH, doc, qos=0, retain=True)

    def show(self, output: object) -> None:
        """``StoreDisplay``: a decision's items to the device its trigger is for; a zone
        screen's content is retained (a screen that starts later shows it at once)."""
        if not isinstance(output, Shown):
            raise TypeError(f"nothing to show for {type(output).__name__}")
        if output.trigger == ARRIVAL:
            topic = topics.ASSOCIATE_ALERTS
        elif output.trigger == DWELL:
            assert output.zone is not None
            topic = topics.zone_screen(output.zone)
        else:
            assert output.lane is not None
            topic = topics.lane_display(output.lane)
        payload = payloads.SHOWN_PAYLOADS[output.trigger](output)
        self.conn.publish(topic, payload, qos=1, retain=output.trigger == DWELL)

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The coroutines the composition root runs: the connection and the health timer."""
        return {"store-connection": self.conn.run(), "store-health": self._health_loop()}

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            self.publish_health()

    async def close(self, timeout_s: float) -> bool:
        return await self.conn.close(
            [
                (
                    topics.STORE_STATUS,
                    payloads.status(self.store_id, "offline", self.clock.wall(), reason="shutdown"),
                    True,
                )
            ],
            timeout_s,
        )
