"""MqttConnection against a real Mosquitto: manual acknowledgement, back-pressure, TLS files."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from gateway.config import BrokerSection, TlsSection
from gateway.publish.mqtt import Delivery, MqttConnection
from gateway.testing import downlink_load as load
from gateway.testing.mosquitto import MosquittoBroker
from gateway.testing.tls import TlsMosquittoBroker, make_certificates

TOPIC = "retail/v1/stores/s1/down/profiles"


def broker_section(port: int) -> BrokerSection:
    return BrokerSection(port=port, reconnect_min_s=0.05, reconnect_max_s=0.2)


@contextlib.asynccontextmanager
async def running(conn: MqttConnection) -> AsyncIterator[MqttConnection]:
    """``conn.run()`` as a task, up and subscribed; cancelled and closed afterwards."""
    task = asyncio.create_task(conn.run())
    try:
        async with asyncio.timeout(10):
            await conn.wait_up()
        await asyncio.sleep(0.3)  # the subscriptions follow the connect
        yield conn
    finally:
        await conn.close([], 1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def manual(port: int, max_unacked: int, got: list[Delivery]) -> MqttConnection:
    conn = MqttConnection(
        "hq",
        broker_section(port),
        client_id="manual-acks",
        password_env="UNUSED_ENV",  # noqa: S106 - an env variable name
        session_expiry_s=600,
    )
    conn.acknowledge_manually(max_unacked)
    conn.subscribe_acked(TOPIC, got.append)
    return conn


def test_an_unacknowledged_message_comes_again_and_an_acknowledged_one_does_not(
    hq_broker: MosquittoBroker,
) -> None:
    """A delivery is PUBACKed only by ``ack``: after a broker restart the broker sends the
    unacknowledged ones again (same session), never the one that was acknowledged."""

    async def scenario() -> None:
        got: list[Delivery] = []
        async with running(manual(hq_broker.port, 8, got)) as conn:
            pub = load.LoadPublisher(hq_broker.port)
            try:
                pub.publish_all((TOPIC, f"m{i}".encode()) for i in range(3))
            finally:
                pub.close()
            await until(lambda: len(got) == 3)
            conn.ack(got[0])
            await asyncio.sleep(0.3)  # the PUBACK reaches the broker
            first = [d.payload for d in got]
            hq_broker.restart()  # persistence on: the session and its unacked messages survive
            await until(lambda: len(got) >= 5, 20)
            await asyncio.sleep(0.5)
            assert first == [b"m0", b"m1", b"m2"]
            assert sorted(d.payload for d in got[3:]) == [b"m1", b"m2"]
            # The first copies came on a connection that is gone: acking them sends
            # nothing; the new copies are the ones to acknowledge.
            for d in got[1:]:
                conn.ack(d)
            assert conn.unacked == 0

    asyncio.run(scenario())


def test_no_more_than_max_unacked_deliveries_are_handed_over(hq_broker: MosquittoBroker) -> None:
    """However many the broker sends (QoS 0 is not bounded by Receive Maximum, and
    Mosquitto 2.0.11 refills a whole window per PUBACK), at most ``max_unacked``
    deliveries are in hand; paho's thread stops reading and acking lets the rest in."""

    async def scenario() -> None:
        got: list[Delivery] = []
        async with running(manual(hq_broker.port, 4, got)) as conn:
            pub = load.LoadPublisher(hq_broker.port)
            try:
                pub.publish_all(((TOPIC, f"q1-{i}".encode()) for i in range(50)), qos=1)
                pub.publish_all(((TOPIC, f"q0-{i}".encode()) for i in range(50)), qos=0)
            finally:
                pub.close()
            await until(lambda: len(got) == 4)
            await asyncio.sleep(0.3)
            assert len(got) == 4
            acked = 0
            most_in_hand = 0
            while acked < 100:
                await until(lambda n=acked: len(got) > n)
                most_in_hand = max(most_in_hand, len(got) - acked)
                conn.ack(got[acked])
                acked += 1
            wanted = {f"q{q}-{i}".encode() for q in (0, 1) for i in range(50)}
            assert sorted(d.payload for d in got) == sorted(wanted)
            assert most_in_hand <= 4
            assert conn.reads_paused > 0

    asyncio.run(scenario())


def test_close_returns_while_the_network_thread_waits_for_room(hq_broker: MosquittoBroker) -> None:
    """Shutdown cannot hang on back-pressure: with paho's thread waiting for room, close
    still publishes its final message, gets its PUBACK and stops the network thread."""

    async def scenario() -> None:
        got: list[Delivery] = []
        conn = manual(hq_broker.port, 2, got)
        task = asyncio.create_task(conn.run())
        try:
            async with asyncio.timeout(10):
                await conn.wait_up()
            await asyncio.sleep(0.3)
            pub = load.LoadPublisher(hq_broker.port)
            try:
                pub.publish_all(((TOPIC, b"x") for _ in range(20)), qos=0)
            finally:
                pub.close()
            await until(lambda: conn.reads_paused > 0)
            async with asyncio.timeout(10):
                acked = await conn.close([("retail/v1/stores/s1/status", b"{}", True)], 5.0)
            assert acked
            assert len(got) == 2
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


def test_an_unusable_tls_file_is_retried_until_it_is_fixed(tmp_path: Path) -> None:
    """A garbage CA file neither raises at construction nor ends ``run``: it is reported in
    ``last_error`` and retried with the backoff, and once the file is right the connection
    comes up without a restart."""
    certs = make_certificates(tmp_path / "certs")
    ca_file = tmp_path / "hq-ca.pem"
    ca_file.write_text("this is not a certificate\n")
    broker = TlsMosquittoBroker(tmp_path / "broker", certs).start()

    async def scenario() -> None:
        cfg = BrokerSection(
            port=broker.port,
            tls=TlsSection(ca_file=ca_file),
            reconnect_min_s=0.05,
            reconnect_max_s=0.2,
        )
        conn = MqttConnection("hq", cfg, client_id="tls", password_env="UNUSED_ENV")  # noqa: S106
        task = asyncio.create_task(conn.run())
        try:
            await until(lambda: "TLS files unusable" in (conn.last_error or ""))
            await asyncio.sleep(0.5)  # several attempts at the reconnect backoff
            assert not task.done() and conn.connects == 0
            ca_file.write_bytes(certs.ca_file.read_bytes())
            async with asyncio.timeout(10):
                await conn.wait_up()
            assert conn.connects == 1
        finally:
            await conn.close([], 1.0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        asyncio.run(scenario())
    finally:
        broker.close()
