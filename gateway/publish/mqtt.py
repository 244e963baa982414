"""One supervised MQTT v5 connection (paho-mqtt 2.x) seen from asyncio.

paho's network thread runs only while a connection is up (``loop_start`` with
``reconnect_on_failure=False``); reconnecting is ours, with capped, jittered
exponential backoff so a fleet of stores does not reconnect in lockstep after
an HQ outage. One ``Client`` lives for the whole process: its in-flight QoS 1
messages are resent (DUP) on reconnect, so message ids stay valid across
connections. paho callbacks are handed to the event loop with
``call_soon_threadsafe``; no paho type leaves this module.

A connection may take over acknowledging (``acknowledge_manually``): messages
on its ``subscribe_acked`` topics are PUBACKed only when their receiver calls
``ack``, after it has kept them, and at most ``max_unacked`` are in the
receiver's hands at once. The broker is asked for that bound (MQTT v5 Receive
Maximum); a broker that sends more anyway (Mosquitto before 2.0.15 refills a
whole window per PUBACK) or QoS 0 traffic finds paho's network thread waiting
for room, so the socket stops being read and TCP pushes back on the broker.

TLS files and the password file are read at each connect attempt, not at
construction: a broken file is a connection problem (``last_error``, retried
with backoff), not a reason for the whole gateway to exit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.client import topic_matches_sub
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import BrokerSection, read_secret
from gateway.errors import BrokerError
from gateway.log import get_logger

AckHandler = Callable[[int, bool, int], None]
MessageHandler = Callable[[str, bytes], None]


@dataclass(frozen=True, slots=True)
class Delivery:
    """A received message whose acknowledgement belongs to its receiver (``ack``)."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    # Which connection it came on: a PUBACK is only meaningful on that one (the
    # broker redelivers what was not acknowledged before a disconnect).
    connection: int


DeliveryHandler = Callable[[Delivery], None]


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True


# MQTT v5 carries Receive Maximum in two bytes; 0 is not allowed.
MAX_RECEIVE_MAXIMUM = 65_535


def jittered(backoff_s: float) -> float:
    """Equal jitter: at least half the backoff, so retries neither stampede nor spin."""
    return backoff_s / 2 + random.uniform(0, backoff_s / 2)


class MqttConnection:
    """A connection that keeps itself up; publish only while ``connected``."""

    def __init__(
        self,
        name: str,
        cfg: BrokerSection,
        *,
        client_id: str,
        password_env: str,
        will: Will | None = None,
        session_expiry_s: int | None = None,
        max_inflight: int = 1000,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.session_expiry_s = session_expiry_s
        self.connected = False
        self.connects = 0
        self.disconnects = 0
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self._log = get_logger(f"mqtt.{name}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._ack_handler: AckHandler | None = None
        # PUBACKs handed from paho's thread to the loop (deque ops are atomic).
        self._acks: collections.deque[tuple[int, bool, int]] = collections.deque()
        self._routes: list[tuple[str, MessageHandler]] = []
        self._acked_routes: list[tuple[str, DeliveryHandler]] = []
        self._on_up: list[Callable[[], Awaitable[None] | None]] = []
        self._subscriptions: list[str] = []
        self._password_env = password_env
        self._tls_ready = False
        # Manual acknowledgement: deliveries in the receiver's hands, and the bound.
        # _connection counts connects and disconnects (paho's thread writes it).
        self._max_unacked: int | None = None
        self._unacked = 0
        self._room = threading.Condition()
        self._closing = False
        self._connection = 0
        self.reads_paused = 0
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        # The window of in-flight QoS 1 messages is bounded by the caller; let
        # paho send all of them instead of queueing them behind 20.
        self._client.max_inflight_messages_set(max_inflight)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        self._client.on_connect = self._paho_on_connect
        self._client.on_disconnect = self._paho_on_disconnect
        self._client.on_publish = self._paho_on_publish
        self._client.on_message = self._paho_on_message

    # -- wiring -------------------------------------------------------------------

    def on_ack(self, handler: AckHandler) -> None:
        """``handler(mid, ok, reason_code)`` runs on the event loop for every PUBACK."""
        self._ack_handler = handler

    def on_up(self, hook: Callable[[], Awaitable[None] | None]) -> None:
        """Run ``hook`` on the event loop after every successful connect."""
        self._on_up.append(hook)

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        """Subscribe (now and after every reconnect); messages reach ``handler`` on the loop."""
        self._routes.append((topic, handler))
        self._subscriptions.append(topic)
        if self.connected:
            self._client.subscribe(topic, qos=1)

    def acknowledge_manually(self, max_unacked: int) -> None:
        """Acknowledge ``subscribe_acked`` messages only through ``ack``; at most
        ``max_unacked`` of them unacknowledged at once. Call before ``run``."""
        if max_unacked < 1 or max_unacked > MAX_RECEIVE_MAXIMUM:
            raise ValueError(f"max_unacked must be 1-{MAX_RECEIVE_MAXIMUM}")
        self._max_unacked = max_unacked
        self._client.manual_ack_set(True)

    def subscribe_acked(self, topic: str, handler: DeliveryHandler) -> None:
        """Subscribe; each message reaches ``handler`` on the loop as a Delivery, and is
        acknowledged to the broker only when ``ack`` is called for it."""
        if self._max_unacked is None:
            raise ValueError("subscribe_acked needs acknowledge_manually first")
        self._acked_routes.append((topic, handler))
        self._subscriptions.append(topic)
        if self.connected:
            self._client.subscribe(topic, qos=1)

    def ack(self, delivery: Delivery) -> None:
        """The receiver has kept ``delivery``: PUBACK it and make room for the next.

        A delivery from an earlier connection is not acknowledged: its packet id
        belongs to that connection, and the broker sends the message again.
        """
        with self._room:
            self._unacked -= 1
            self._room.notify()
        if delivery.qos > 0 and delivery.connection == self._connection:
            self._client.ack(delivery.mid, delivery.qos)

    @property
    def unacked(self) -> int:
        """Deliveries handed to receivers and not acknowledged yet."""
        return self._unacked

    async def wait_up(self) -> None:
        await self._up.wait()

    # -- publishing ---------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None:
        """Hand a message to paho; the message id, or None when not connected."""
        if not self.connected:
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        # NO_CONN: the socket died under us; paho keeps QoS 1 messages queued
        # and resends them after reconnect, so the id is still good.
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            return None
        return info.mid

    # -- supervision --------------------------------------------------------------

    async def run(self) -> None:
        """Connect, stay connected, reconnect with backoff; returns only by cancellation."""
        self._loop = asyncio.get_running_loop()
        # A live connection is left up when this is cancelled, on purpose:
        # close() still has to publish the final retained status through it.
        backoff = self.cfg.reconnect_min_s
        while True:
            self._down.clear()
            try:
                await asyncio.to_thread(self._connect_blocking)
            except (BrokerError, OSError, ssl.SSLError, ValueError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = jittered(backoff)
                self._log.warning(
                    "broker_unusable" if isinstance(exc, BrokerError) else "broker_unreachable",
                    host=self.cfg.host,
                    port=self.cfg.port,
                    error=self.last_error,
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                continue
            # paho 2.2's loop_start makes a new wake-up socket pair over the one it still
            # holds (from connect() or the previous thread) without closing it: close it
            # first, or every reconnect leaks two sockets.
            self._client._reset_sockets(sockpair_only=True)
            self._client.loop_start()
            await self._down.wait()
            await asyncio.to_thread(self._client.loop_stop)
            stable = (
                self.connected_since is not None and time.monotonic() - self.connected_since > 10
            )
            self.connected_since = None
            if stable:
                backoff = self.cfg.reconnect_min_s
            await asyncio.sleep(jittered(backoff))
            backoff = min(backoff * 2, self.cfg.reconnect_max_s)

    def _prepare_blocking(self) -> None:
        """Read the password and TLS files (each attempt, until they work once)."""
        cfg = self.cfg
        if cfg.username is not None:
            try:
                password = read_secret(self._password_env, cfg.password_file)
            except OSError as exc:
                raise BrokerError(f"password file unusable: {exc.strerror}") from exc
            self._client.username_pw_set(cfg.username, password)
        if cfg.tls is not None and not self._tls_ready:
            try:
                # paho builds the whole context before taking it, so a file that fails
                # here leaves the client untouched and the next attempt tries again.
                self._client.tls_set(
                    ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                    certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                    keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise BrokerError(f"TLS files unusable: {type(exc).__name__}: {exc}") from exc
            self._tls_ready = True

    def _connect_blocking(self) -> None:
        self._prepare_blocking()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho untyped
        if self.session_expiry_s is not None:
            props.SessionExpiryInterval = self.session_expiry_s
        if self._max_unacked is not None:
            props.ReceiveMaximum = self._max_unacked
        # clean_start=False keeps HQ's session (subscriptions, queued downlink)
        # across restarts; paho's default would wipe it at every process start.
        self._client.connect(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=self.session_expiry_s is None,
            properties=props,
        )

    async def close(self, final: list[tuple[str, bytes, bool]], timeout_s: float) -> bool:
        """Publish ``final`` (QoS 1), wait for their PUBACKs, disconnect cleanly.

        True when every final message was acknowledged in time.
        """
        # A network thread waiting for room would never read the final PUBACKs:
        # let it go (what it holds is not acknowledged, so the broker keeps it).
        with self._room:
            self._closing = True
            self._room.notify_all()
        acked = True
        if self.connected and final:
            infos = [self._client.publish(t, p, qos=1, retain=r) for t, p, r in final]
            deadline = time.monotonic() + timeout_s
            for info in infos:
                # paho offers no awaitable for a PUBACK; poll it briefly (shutdown only).
                while not info.is_published() and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                acked = acked and info.is_published()
        with contextlib.suppress(Exception):
            self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._mark_down()
        return acked

    # -- paho callbacks (network thread) ------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    def _paho_on_connect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connection += 1
        self._call(
            self._handle_connect,
            not reason.is_failure,
            str(reason),
            bool(getattr(flags, "session_present", False)),
        )

    def _paho_on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connection += 1
        self._call(self._handle_disconnect, str(reason))

    def _paho_on_publish(
        self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        # One loop wake-up per burst of PUBACKs, not one per message: a
        # call_soon_threadsafe per ack cost a third of the drain rate (bench/outbox.py).
        acks = self._acks
        acks.append((mid, not reason.is_failure, int(reason.value)))
        if len(acks) == 1:
            self._call(self._drain_acks)

    def _drain_acks(self) -> None:
        handler = self._ack_handler
        acks = self._acks
        while acks:
            mid, ok, reason = acks.popleft()
            if handler is not None:
                handler(mid, ok, reason)

    def _paho_on_message(self, client: Any, userdata: Any, message: Any) -> None:
        topic = message.topic
        for pattern, acked_handler in self._acked_routes:
            if topic_matches_sub(pattern, topic):
                self._deliver(acked_handler, message)
                return
        for pattern, handler in self._routes:
            if topic_matches_sub(pattern, topic):
                self._call(handler, topic, bytes(message.payload))
                break
        if self._max_unacked is not None and message.qos > 0:
            # Nobody keeps these: acknowledge as paho would have, or they would hold
            # the broker's window forever.
            client.ack(message.mid, message.qos)

    def _deliver(self, handler: DeliveryHandler, message: Any) -> None:
        """Hand one message over once there is room (network thread; may wait)."""
        assert self._max_unacked is not None
        with self._room:
            if self._unacked >= self._max_unacked and not self._closing:
                # Waiting here stops paho reading the socket: back-pressure by TCP.
                self.reads_paused += 1
                self._room.wait_for(
                    lambda: self._unacked < (self._max_unacked or 0) or self._closing
                )
            if self._closing:
                return  # not acknowledged: the broker sends it again next session
            self._unacked += 1
        delivery = Delivery(
            message.topic, bytes(message.payload), message.qos, message.mid, self._connection
        )
        self._call(handler, delivery)

    # -- state (event loop) -------------------------------------------------------

    def _handle_connect(self, ok: bool, reason: str, session_present: bool) -> None:
        if not ok:
            self.last_error = f"refused: {reason}"
            self._log.error("broker_refused", host=self.cfg.host, port=self.cfg.port, reason=reason)
            # paho closes the socket after a refusal; make sure run() notices.
            self._mark_down()
            return
        self.connected = True
        self.connects += 1
        self.connected_since = time.monotonic()
        self._down.clear()
        self._up.set()
        self._log.info(
            "broker_connected",
            host=self.cfg.host,
            port=self.cfg.port,
            session_present=session_present,
            connects=self.connects,
        )
        for topic in self._subscriptions:
            self._client.subscribe(topic, qos=1)
        for hook in self._on_up:
            result = hook()
            if asyncio.iscoroutine(result):
                # Hooks that await are run by their owners' tasks; a coroutine
                # here would escape the TaskGroup.
                result.close()
                raise TypeError("on_up hooks must be plain functions")

    def _handle_disconnect(self, reason: str) -> None:
        if self.connected:
            self.disconnects += 1
            self._log.warning(
                "broker_disconnected", host=self.cfg.host, port=self.cfg.port, reason=reason
            )
        self.last_error = f"disconnected: {reason}"
        self._mark_down()

    def _mark_down(self) -> None:
        self.connected = False
        self._up.clear()
        self._down.set()
