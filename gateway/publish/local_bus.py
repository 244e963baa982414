"""The store broker: retained gateway status with a will, and periodic health.

Status and health are re-published after every reconnect (a restarted
Mosquitto without persistence forgets retained messages).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.clock import Clock
from gateway.config import StoreBrokerSection
from gateway.log import get_logger
from gateway.publish import topics
from gateway.publish.hq_link import status_payload
from gateway.publish.mqtt import MqttConnection, Will


class LocalBus:
    """Publishes to the store's Mosquitto; later issues add subscriptions here."""

    def __init__(
        self,
        cfg: StoreBrokerSection,
        store_id: str,
        clock: Clock,
        health: Callable[[], dict[str, Any]],
    ) -> None:
        self.cfg = cfg
        self.store_id = store_id
        self.clock = clock
        self._health = health
        self._log = get_logger("local_bus")
        will = Will(
            topics.STORE_STATUS, status_payload(store_id, "offline", 0.0, reason="connection lost")
        )
        self.conn = MqttConnection(
            "store",
            cfg,
            client_id=cfg.client_id or f"store-gateway-{store_id}",
            password_env="STORE_GATEWAY_STORE_BROKER_PASSWORD",  # noqa: S106 - an env variable name
            will=will,
        )
        self.conn.on_up(self._on_up)
        self.health_published = 0

    def _on_up(self) -> None:
        self.conn.publish(
            topics.STORE_STATUS,
            status_payload(self.store_id, "online", self.clock.wall()),
            retain=True,
        )
        self.publish_health()

    def publish_health(self) -> None:
        """Publish one health document now (retained, so a new screen sees the latest)."""
        doc = {"v": 1, "store": self.store_id, "ts": self.clock.wall(), **self._health()}
        if (
            self.conn.publish(
                topics.STORE_HEALTH,
                json.dumps(doc, separators=(",", ":")).encode(),
                qos=0,
                retain=True,
            )
            is not None
        ):
            self.health_published += 1

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The coroutines the composition root runs: the connection and the health timer."""
        return {"store-connection": self.conn.run(), "store-health": self._health_loop()}

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.health_interval_s)
            self.publish_health()

    async def close(self, timeout_s: float) -> bool:
        return await self.conn.close(
            [
                (
                    topics.STORE_STATUS,
                    status_payload(self.store_id, "offline", self.clock.wall(), reason="shutdown"),
                    True,
                )
            ],
            timeout_s,
        )
