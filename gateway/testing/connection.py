"""A broker connection made of plain Python, the shape of ``MqttConnection``'s face.

For unit tests of what sits on a connection (the local bus, the HQ link, the
downlink) without a broker: ``publish`` records, ``deliver`` plays an incoming
message to the subscription it matches, ``up()`` runs the on-connect hooks. The
daemon-level tests keep real Mosquitto.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from paho.mqtt.client import topic_matches_sub


@dataclass(frozen=True)
class Sent:
    """One message handed to the fake connection."""

    topic: str
    payload: bytes
    qos: int
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class FakeConnection:
    """Records what is published; delivers what a test plays in."""

    def __init__(self, *, connected: bool = True) -> None:
        self.connected = connected
        self.connects = 1 if connected else 0
        self.last_error: str | None = None
        self.sent: list[Sent] = []
        self._routes: list[tuple[str, Callable[[str, bytes], Any]]] = []
        self._on_up: list[Callable[[], Any]] = []
        self._mid = 0

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None:
        if not self.connected:
            return None
        self.sent.append(Sent(topic, payload, qos, retain))
        self._mid += 1
        return self._mid

    def subscribe(self, topic: str, handler: Callable[[str, bytes], Any]) -> None:
        self._routes.append((topic, handler))

    def on_up(self, hook: Callable[[], Any]) -> None:
        self._on_up.append(hook)

    def up(self) -> None:
        """A (re)connect: the hooks run, as ``MqttConnection`` runs them."""
        self.connected = True
        self.connects += 1
        for hook in self._on_up:
            hook()

    def deliver(self, topic: str, payload: bytes) -> bool:
        """An incoming message to the first subscription matching ``topic``."""
        for pattern, handler in self._routes:
            if topic_matches_sub(pattern, topic):
                handler(topic, payload)
                return True
        return False

    def on(self, topic: str) -> list[Sent]:
        """What was published on ``topic``, in order."""
        return [m for m in self.sent if m.topic == topic]
