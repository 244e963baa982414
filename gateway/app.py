"""The composition root: builds every adapter and stage from the config, wires them,
and supervises them.

The only module that builds adapters (the SQLite writer, broker connections, the
BLE scanner, serial lanes, the ranker) and hands each stage its own config
sections and the ports it needs (gateway/ports.py); later stages subscribe to
earlier stages' fan-outs here. docs/architecture.md draws the result.

All long-running work is a named task in one TaskGroup; a task that dies takes
the process down (systemd restarts it). A stop request (SIGTERM) ends the
group, then shutdown runs in reverse order of start within
``daemon.shutdown_timeout_s``: producers stop, the outbox commits what it was
handed, ``offline`` is published on both brokers, the database is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Coroutine
from typing import Any

from gateway import __version__
from gateway.checkout.flow import CheckoutFlow, dialect_path, read_loyalty_salt
from gateway.clock import Clock, SystemClock
from gateway.config import GatewayConfig
from gateway.decision.flow import DecisionFlow, default_bundle_dir
from gateway.decision.ranker import DecisionRanker
from gateway.errors import StorageError
from gateway.identity.flow import ShopperFlow, scanner_zones
from gateway.log import get_logger
from gateway.publish.downlink import Downlink
from gateway.publish.hq_link import HqLink, hq_connection
from gateway.publish.local_bus import LocalBus, store_connection
from gateway.publish.outbox import Outbox
from gateway.publish.sd_notify import SystemdNotifier
from gateway.publish.upstream import OutboxSink
from gateway.sensing import pos_dialect
from gateway.sensing.ble import BleScanner
from gateway.sensing.pos_serial import LaneSettings, SerialPosLane
from gateway.sensing.replay import replay_backend
from gateway.sensing.satellites import SatelliteDecoder
from gateway.sensing.simulated import ScriptedEventSource
from gateway.storage import profiles as profile_rows
from gateway.storage import stock as stock_rows
from gateway.storage.store import SqliteWriter, ping

# A loop that falls this far behind its own timer is not healthy enough to
# vouch for itself to systemd's watchdog (seconds).
MAX_LOOP_LAG_S = 5.0
# How often loop lag is sampled when no watchdog interval is set (seconds).
LAG_SAMPLE_S = 1.0


class _StopRequested(Exception):
    """Raised inside the TaskGroup to end it on a stop request."""


def build_shoppers(cfg: GatewayConfig, clock: Clock, upstream: OutboxSink) -> ShopperFlow:
    """The identity stage, handed only its own sections."""
    return ShopperFlow(
        cfg.ble, cfg.satellites, cfg.reference_beacons, cfg.presence, clock, upstream
    )


def build_checkout(
    cfg: GatewayConfig, clock: Clock, upstream: OutboxSink, shoppers: ShopperFlow | None
) -> CheckoutFlow:
    """The checkout stage with one ``SerialPosLane`` per ``[[lanes]]`` entry."""
    checkout = CheckoutFlow(clock, upstream, shoppers=shoppers, salt=read_loyalty_salt(cfg.pos))
    for lane in cfg.lanes:
        parser = pos_dialect.DialectParser(
            pos_dialect.load_dialect(dialect_path(cfg.pos, lane.dialect))
        )
        settings = LaneSettings(
            lane=lane.id,
            port=lane.port,
            baudrate=lane.baudrate,
            bytesize=lane.bytesize,
            parity=lane.parity,
            stopbits=lane.stopbits,
            exclusive=lane.exclusive,
            reconnect_min_s=lane.reconnect_min_s,
            reconnect_max_s=lane.reconnect_max_s,
            wrong_baud_window_s=cfg.pos.wrong_baud_window_s,
        )
        feed = SerialPosLane(settings, parser, checkout.lane_sink, clock)
        checkout.add_lane(lane.id, lane.zone, feed, parser)
    return checkout


def build_decision(
    cfg: GatewayConfig,
    clock: Clock,
    upstream: OutboxSink,
    display: LocalBus,
    shoppers: ShopperFlow | None,
    checkout: CheckoutFlow | None = None,
) -> DecisionFlow:
    """The decision stage with its ranker (onnxruntime on a thread of its own),
    hearing the shoppers' presence and visit events and the lanes' baskets."""
    ranker = DecisionRanker(
        cfg.decision.bundle_dir or default_bundle_dir(),
        trusted_keys=list(cfg.decision.trusted_keys),
        threads=cfg.decision.threads,
    )
    decision = DecisionFlow(
        cfg.decision,
        cfg.experiments,
        clock,
        ranker,
        display=display,
        upstream=upstream,
        shoppers=shoppers,
        lane_zones={lane.id: lane.zone for lane in cfg.lanes},
    )
    if shoppers is not None:
        shoppers.events.subscribe(decision.on_shopper_event)
    if checkout is not None:
        checkout.notices.subscribe(decision.on_pos_notice)
    return decision


class Gateway:
    """One store gateway process: every adapter, built from the config, and their tasks."""

    def __init__(
        self,
        cfg: GatewayConfig,
        *,
        clock: Clock | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.notifier = notifier or SystemdNotifier()
        self.log = get_logger("app")
        self.started_at = time.monotonic()
        self.loop_lag_ms = 0.0
        self.watchdog_pings = 0
        self.writer = SqliteWriter(
            cfg.storage.path, max_size_mb=cfg.storage.max_size_mb, ballast_mb=cfg.storage.ballast_mb
        )
        self.outbox = Outbox(self.writer, cfg.store.id, cfg.outbox, self.clock)
        self.hq: HqLink | None = (
            HqLink(
                hq_connection(cfg.hq, cfg.store.id, cfg.outbox.publish_window),
                cfg.store.id,
                self.outbox,
                self.clock,
                cfg.outbox.publish_window,
            )
            if cfg.hq.enabled
            else None
        )
        self.downlink: Downlink | None = (
            Downlink(
                self.hq.conn,
                cfg.store.id,
                self.writer,
                self.outbox,
                self.clock,
                cfg.downlink,
                cfg.profiles,
            )
            if self.hq is not None
            else None
        )
        self.bus = LocalBus(
            store_connection(cfg.store_broker, cfg.store.id),
            cfg.store.id,
            self.clock,
            self.health,
            health_interval_s=cfg.store_broker.health_interval_s,
        )
        # Shoppers: when there is a scanner to hear them (the Pi's radio or a satellite)
        # or a lane where they can identify themselves with a loyalty scan.
        self.shoppers: ShopperFlow | None = None
        if scanner_zones(cfg.ble, cfg.satellites) or cfg.lanes:
            self.shoppers = build_shoppers(
                cfg, self.clock, OutboxSink(self.outbox, "presence_event")
            )
        self.scanner: BleScanner | None = None
        self.satellites: SatelliteDecoder | None = None
        if self.shoppers is not None:
            if cfg.ble.enabled:
                backend = (
                    replay_backend(cfg.ble.replay_file)
                    if cfg.ble.backend == "replay" and cfg.ble.replay_file is not None
                    else None  # BlueZ, bleak's own choice
                )
                self.scanner = BleScanner(
                    cfg.ble, self.shoppers.pi_advert, self.clock, backend=backend
                )
            if cfg.satellites:
                self.satellites = SatelliteDecoder(
                    cfg.satellites, self.shoppers.on_advert, self.clock
                )
                for topic in self.satellites.topic_filters():
                    self.bus.conn.subscribe(topic, self.satellites.on_message)
            if self.downlink is not None:
                self.downlink.changes.subscribe(self.shoppers.on_downlink)
        self.checkout: CheckoutFlow | None = None
        if cfg.lanes:
            self.checkout = build_checkout(
                cfg, self.clock, OutboxSink(self.outbox, "pos_transaction"), self.shoppers
            )
        self.decision: DecisionFlow | None = None
        if cfg.decision.enabled:
            self.decision = build_decision(
                cfg,
                self.clock,
                OutboxSink(self.outbox, "decision_event"),
                self.bus,
                self.shoppers,
                self.checkout,
            )
            if self.downlink is not None:
                self.downlink.changes.subscribe(self.decision.on_downlink)
        self.simulation = ScriptedEventSource(
            cfg.simulation, self.clock, OutboxSink(self.outbox, "simulated_event")
        )

    # -- health -------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The figures store IT needs, published on ``store/v1/gateway/health``."""
        db = self.cfg.storage.path
        sizes = {}
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                sizes["db_bytes" if not suffix else "wal_bytes"] = os.stat(f"{db}{suffix}").st_size
        disk_free = None
        with contextlib.suppress(OSError):
            disk_free = shutil.disk_usage(db.parent).free
        doc: dict[str, Any] = {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "loop_lag_ms": round(self.loop_lag_ms, 2),
            "rss_bytes": _rss_bytes(),
            "outbox": self.outbox.stats(),
            "storage": {**sizes, "disk_free_bytes": disk_free, "disk_full": self.outbox.disk_full},
            "hq": self.hq.stats() if self.hq else {"enabled": False},
            "store_broker": {
                "connects": self.bus.conn.connects,
                "last_error": self.bus.conn.last_error,
            },
            "watchdog_pings": self.watchdog_pings,
        }
        if self.downlink is not None:
            doc["downlink"] = self.downlink.stats()
        if self.scanner is not None:
            doc["ble"] = self.scanner.stats()
        if self.satellites is not None:
            doc["satellites"] = self.satellites.stats()
        if self.shoppers is not None:
            doc["shoppers"] = self.shoppers.stats()
        if self.checkout is not None:
            doc["pos"] = self.checkout.stats()
        if self.decision is not None:
            doc["decision"] = self.decision.stats()
        if self.cfg.simulation.events_per_s > 0:
            doc["simulation"] = self.simulation.stats()
        return doc

    # -- run ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down gracefully."""
        await asyncio.to_thread(self.writer.start)
        try:
            await self.outbox.open()
            self.log.info(
                "gateway_starting",
                store=self.cfg.store.id,
                version=__version__,
                db=str(self.cfg.storage.path),
                outbox_depth=self.outbox.depth(),
                hq=f"{self.cfg.hq.host}:{self.cfg.hq.port}" if self.cfg.hq.enabled else "disabled",
            )
            tasks: dict[str, Coroutine[Any, Any, None]] = {
                "outbox-commit": self.outbox.run(),
                **self.bus.tasks(),
                "watchdog": self._watchdog(),
                "simulation": self.simulation.run(),
                "stop-request": self._wait_stop(stop),
            }
            if self.hq is not None:
                tasks.update(self.hq.tasks())
            if self.downlink is not None:
                tasks.update(self.downlink.tasks())
            if self.shoppers is not None:
                profiles, consents = await self.writer.run(profile_rows.load_all)
                self.shoppers.load(profiles, consents)
                tasks.update(self.shoppers.tasks())
            if self.scanner is not None:
                tasks["ble-scanner"] = self.scanner.run()
            if self.checkout is not None:
                tasks.update(self.checkout.tasks())
            if self.decision is not None:
                self.decision.stock.update(await self.writer.run(stock_rows.load_levels))
                tasks.update(self.decision.tasks())
            self.notifier.ready(status=f"store {self.cfg.store.id} running")
            self.log.info("gateway_ready", tasks=sorted(tasks))
            try:
                async with asyncio.TaskGroup() as tg:
                    for name, coro in tasks.items():
                        tg.create_task(coro, name=name)
            except* _StopRequested:
                pass
        finally:
            await self._shutdown()

    async def _wait_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        await self._last_words()
        raise _StopRequested

    async def _last_words(self) -> None:
        """Before the tasks stop: the running experiment summaries go into the outbox and,
        while HQ is connected, get a moment (a quarter of the stop budget, 2 s at most)
        to leave; what has not left by then goes at the next start."""
        if self.decision is None:
            return
        sent = self.decision.flush_summaries(final=True)
        self.log.info("experiment_summaries_flushed", summaries=sent)
        if not sent:
            return
        wait_s = min(2.0, self.cfg.daemon.shutdown_timeout_s / 4)
        with contextlib.suppress(StorageError, TimeoutError):
            async with asyncio.timeout(wait_s):
                await self.outbox.flush()
                # Polled: acks come in one by one and nothing else waits on them.
                while self.hq is not None and self.hq.conn.connected and self.outbox.depth():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)

    async def _shutdown(self) -> None:
        """Bounded graceful stop, in reverse order of start."""
        started = time.monotonic()
        budget = self.cfg.daemon.shutdown_timeout_s
        self.notifier.stopping()
        self.log.info("gateway_stopping", outbox_depth=self.outbox.depth())
        if self.decision is not None:
            # The running period's experiment summary goes up now, not never.
            self.decision.flush_summaries(final=True)
        with contextlib.suppress(StorageError, TimeoutError):
            await asyncio.wait_for(self.outbox.flush(), timeout=budget / 2)
        remaining = max(0.2, budget - (time.monotonic() - started))
        closes = [self.bus.close(remaining / 2)]
        if self.hq is not None:
            closes.append(self.hq.close(remaining / 2))
        results = await asyncio.gather(*closes, return_exceptions=True)
        if self.decision is not None:
            self.decision.ranker.close()
        await asyncio.to_thread(self.writer.close)
        self.notifier.close()
        self.log.info(
            "gateway_stopped",
            offline_published=[r is True for r in results],
            took_s=round(time.monotonic() - started, 2),
            outbox_depth=self.outbox.depth(),
        )

    async def _watchdog(self) -> None:
        """Ping systemd only while the loop is on time and the writer answers."""
        interval = self.notifier.watchdog_interval_s or LAG_SAMPLE_S
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            lag = loop.time() - before - interval
            self.loop_lag_ms = lag * 1000
            healthy = lag < MAX_LOOP_LAG_S
            if healthy:
                try:
                    # asyncio.timeout, not wait_for (3.11 wait_for can swallow a cancel).
                    async with asyncio.timeout(interval):
                        await self.writer.run(ping)
                except (TimeoutError, StorageError) as exc:
                    healthy = False
                    self.log.error("watchdog_writer_unresponsive", error=repr(exc))
            else:
                self.log.error("watchdog_loop_lagging", lag_s=round(lag, 3))
            if healthy and self.notifier.watchdog():
                self.watchdog_pings += 1
                self.notifier.status(
                    f"outbox {self.outbox.depth()} rows, "
                    f"hq {'up' if self.hq and self.hq.conn.connected else 'down'}"
                )


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
