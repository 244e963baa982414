"""A plain MQTT v5 subscriber for tests: every message on some topics, with its arrival time."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    doc: dict[str, Any]
    retained: bool
    at: float  # time.monotonic() on arrival


class TopicRecorder:
    """Subscribes (clean session, QoS 1) to ``topics`` and keeps every JSON message it gets."""

    def __init__(self, port: int, topics: list[str], host: str = "127.0.0.1") -> None:
        self.topics = topics
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._on_message
        self.host, self.port = host, port

    def start(self, timeout_s: float = 10.0) -> TopicRecorder:
        self._client.connect(self.host, self.port)
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s):
            raise TimeoutError("subscriber did not subscribe")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> TopicRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            self.messages.append(Received(msg.topic, doc, bool(msg.retain), time.monotonic()))

    def on(self, topic: str) -> list[Received]:
        """Messages received so far on ``topic``, oldest first."""
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def latest(self, topic: str) -> dict[str, Any] | None:
        got = self.on(topic)
        return got[-1].doc if got else None

    def wait_for(
        self,
        topic: str,
        pred: Any = None,
        timeout_s: float = 10.0,
        *,
        since: float | None = None,
    ) -> Received | None:
        """The first message on ``topic`` for which ``pred(doc)`` is true (any, without pred).

        ``since`` (a ``time.monotonic()`` value) skips messages that arrived before it.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            for m in self.on(topic):
                if since is not None and m.at < since:
                    continue
                if pred is None or pred(m.doc):
                    return m
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
