"""A stand-in for HQ: a persistent-session subscriber that records every event id."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class HqReceiver:
    """Subscribes to ``retail/v1/stores/+/up/#`` and ``.../status`` at QoS 1.

    Its session survives broker restarts (clean_start=False, session expiry, and
    a broker with persistence), like a real HQ consumer's would.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", client_id: str = "hq-receiver") -> None:
        self.ids: set[str] = set()
        self.messages = 0
        self.by_kind: Counter[str] = Counter()
        # Distinct ids per event kind (``by_kind`` counts duplicates too).
        self.ids_by_kind: dict[str, set[str]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.loss_reports: list[dict[str, Any]] = []
        self.bad_payloads = 0
        # Presence events by event id (the demo scores zone sequences from them).
        self.presence: dict[str, dict[str, Any]] = {}
        # The data of every event of these kinds, by event id (tests read them back).
        self.kept_kinds = {
            "transaction",
            "visit",
            "decision",
            "conversion",
            "impression",
            "experiment_summary",
        }
        self.data: dict[str, dict[str, dict[str, Any]]] = {}
        # Set to a list to keep every event as received, (topic, envelope): the
        # AsyncAPI check reads them (off by default: some tests send 100,000s).
        self.envelopes: list[tuple[str, dict[str, Any]]] | None = None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self._client.max_inflight_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *a: self._connected.clear()
        self._client.on_message = self._on_message
        # paho types these as int but sleeps on them as float: a test must reconnect fast.
        self._client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]
        self.host, self.port = host, port

    def start(self, timeout_s: float = 10.0) -> HqReceiver:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho's own
        props.SessionExpiryInterval = 3600
        self._client.connect(self.host, self.port, clean_start=False, properties=props)
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            raise TimeoutError("HQ receiver did not connect")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        return self._connected.wait(timeout_s)

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe("retail/v1/stores/+/up/#", qos=1)
            client.subscribe("retail/v1/stores/+/status", qos=1)
            self._connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            with self._lock:
                self.bad_payloads += 1
            return
        with self._lock:
            if msg.topic.endswith("/status"):
                self.statuses.append(doc)
                return
            self.messages += 1
            if self.envelopes is not None:
                self.envelopes.append((msg.topic, doc))
            self.ids.add(doc.get("id", ""))
            self.by_kind[doc.get("kind", "?")] += 1
            self.ids_by_kind.setdefault(doc.get("kind", "?"), set()).add(doc.get("id", ""))
            if doc.get("kind") == "outbox_loss":
                self.loss_reports.append(doc)
            elif doc.get("kind") == "presence" and isinstance(doc.get("data"), dict):
                self.presence.setdefault(doc.get("id", ""), doc["data"])
            elif doc.get("kind") in self.kept_kinds and isinstance(doc.get("data"), dict):
                self.data.setdefault(doc["kind"], {}).setdefault(doc.get("id", ""), doc["data"])

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The data of the distinct events of ``kind`` received (a kept kind), in id order."""
        with self._lock:
            kept = dict(self.data.get(kind, {}))
        return [kept[i] for i in sorted(kept, key=lambda i: int(i.rsplit(":", 1)[-1] or 0))]

    def count(self) -> int:
        with self._lock:
            return len(self.ids)

    def wait_for(self, n: int, timeout_s: float) -> bool:
        """Wait until ``n`` distinct ids have arrived."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.count() >= n:
                return True
            time.sleep(0.05)
        return self.count() >= n


def push_until_applied(
    hq_port: int,
    topic: str,
    messages: list[dict[str, Any]],
    applied: Any,
    *,
    tries: int = 6,
    wait_s: float = 3.0,
) -> None:
    """Publish downlink ``messages`` until ``applied()`` holds, as a real HQ re-sends.

    A message that reaches the broker before the gateway's first subscription is
    not queued for it; the same message id applies once however often it comes.
    """
    from gateway.hq import tools

    for _ in range(tries):
        pub = tools.Publisher("127.0.0.1", hq_port)
        try:
            if pub.publish_all(topic, messages, 10) != len(messages):
                raise AssertionError("HQ's broker did not acknowledge the downlink")
        finally:
            pub.close()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if applied():
                return
            time.sleep(0.05)
    raise AssertionError(f"{topic}: never applied after {tries} sends")
