"""Downlink benchmark: the daemon under an HQ flood, measured from outside, next to the limits.

The real daemon runs as a child process against two private Mosquittos (store and
HQ, persistence off); HQ's side publishes with ``gateway.testing.downlink_load``.
Each scenario starts a fresh daemon and database. Figures:

1. ``optout``: 20,000 small valid profile messages as fast as HQ's broker takes
   them, then an opt-out. How many of the 20,001 messages HQ's broker acknowledged
   were applied (limit: all), whether the opt-out was applied and its receipt reached
   HQ, and the time for all of it.
2. ``fuzz``: 10,000 fuzzed messages of up to the size cap (about 0.6 GB in all).
   RSS before, at peak and after (limit: after within 30 MB of before), and the time
   until every one was dead-lettered.
3. ``flood``: 60 s of valid 115 KB profile pages, with a few hundred pages always
   waiting at HQ's broker (far more than the gateway takes at once). RSS at peak
   (limit 200 MB) and after, the worst loop lag (limit 250 ms: the daemon's own
   ``loop_lag_ms`` and the lateness of its 0.2 s health messages), the longest gap
   between watchdog pings (the daemon pings every ``WATCHDOG_USEC``/2; systemd's
   limit is ``WATCHDOG_USEC``), pages sent and applied (limit: all), and the drain
   time after the flood.

Usage:  .venv/bin/python bench/downlink.py [--scenario optout|fuzz|flood|all]
        [--flood-s 60] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.publish import topics
from gateway.testing import downlink_load as load
from gateway.testing.daemon import GatewayProcess, config_text, gateway_sections
from gateway.testing.hq import HqReceiver
from gateway.testing.mosquitto import MosquittoBroker
from gateway.testing.subscriber import TopicRecorder

STORE = "s1"
MB = 1024 * 1024
HEALTH_INTERVAL_S = 0.2
# WatchdogSec for the flood: the daemon pings every half of it. Shorter than the
# shipped unit's 30 s so that a stall of a few seconds shows as a late ping.
WATCHDOG_USEC = 10_000_000
RSS_SETTLE_S = 5.0
# A scenario gives up once the downlink has made no progress for this long (seconds).
STALL_S = 20.0


# Config sections every scenario's daemon gets (command-line choices).
EXTRA: dict[str, Any] = {}


class Rig:
    """Two brokers, a daemon with its own notify socket, its health, its RSS."""

    def __init__(self, workdir: Path, **overrides: Any) -> None:
        self.workdir = workdir
        self.store = MosquittoBroker(workdir / "store", name="store", persistence=False).start()
        self.hq = MosquittoBroker(workdir / "hq", name="hq", persistence=False).start()
        self.db = workdir / "gw.db"
        sections = gateway_sections(
            store_id=STORE,
            db_path=self.db,
            store_port=self.store.port,
            hq_port=self.hq.port,
            store_broker={"health_interval_s": HEALTH_INTERVAL_S},
            **EXTRA,
            **overrides,
        )
        cfg = workdir / "gw.toml"
        cfg.write_text(config_text(sections))
        self.notify = load.NotifySocket(WATCHDOG_USEC)
        self.hq_rx = HqReceiver(self.hq.port).start()
        self.health = TopicRecorder(self.store.port, [topics.STORE_HEALTH]).start()
        self.gw = GatewayProcess(cfg, workdir / "gw.log").start(self.notify.env())
        assert self.gw.proc is not None
        self.rss = load.RssSampler(self.gw.proc.pid).start()
        self.wait(lambda d: d.get("hq", {}).get("connected"), 30, "HQ connected")
        time.sleep(1.0)  # the subscriptions follow the connect
        self.pub = load.LoadPublisher(self.hq.port)

    def latest(self) -> dict[str, Any]:
        return self.health.latest(topics.STORE_HEALTH) or {}

    def downlink(self) -> dict[str, Any]:
        return dict(self.latest().get("downlink", {}))

    def wait(self, pred: Callable[[dict[str, Any]], Any], timeout_s: float, what: str) -> bool:
        """Wait until the latest health satisfies ``pred``; give up after ``timeout_s`` or
        once the downlink has made no progress for ``STALL_S``."""
        deadline = time.monotonic() + timeout_s
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            doc = self.latest()
            if pred(doc):
                return True
            if processed(doc) != last:
                last, last_change = processed(doc), time.monotonic()
            elif time.monotonic() - last_change > STALL_S:
                break
            time.sleep(0.05)
        print(f"  ! gave up waiting for {what}: downlink {self.downlink()}")
        return False

    def health_since(self, since: float, until: float) -> list[tuple[float, dict[str, Any]]]:
        return [
            (m.at, m.doc) for m in self.health.on(topics.STORE_HEALTH) if since <= m.at <= until
        ]

    def rss_now(self, settle_s: float = 1.0) -> int:
        """The median RSS over the last ``settle_s`` (after waiting that long)."""
        time.sleep(settle_s)
        now = time.monotonic()
        recent = [r for t, r in self.rss.samples if t >= now - settle_s]
        return int(statistics.median(recent)) if recent else 0

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def close(self) -> None:
        self.pub.close()
        self.rss.stop()
        rc = self.gw.terminate(15) if self.gw.running else self.gw.wait(1)
        errors = [
            line for line in self.gw.log_lines() if line.get("level") in ("error", "critical")
        ]
        print(f"  daemon exit code {rc}; error log lines {len(errors)}")
        for line in errors[:3]:
            print(f"    {json.dumps(line)[:200]}")
        self.health.stop()
        self.hq_rx.stop()
        self.notify.close()
        self.store.close()
        self.hq.close()


def processed(d: dict[str, Any]) -> int:
    dl = d.get("downlink", {})
    return int(dl.get("applied", 0) + dl.get("duplicates", 0) + dl.get("dead_lettered", 0))


def mb(n: float) -> str:
    return f"{n / MB:,.1f} MB"


# -- scenarios ------------------------------------------------------------------------


def scenario_optout(workdir: Path, n: int, shoppers: int, pool: int) -> None:
    print(f"\n[optout] {n:,} profile messages of {shoppers} shoppers, then an opt-out")
    rig = Rig(workdir)
    try:
        now = time.time()
        started = time.monotonic()
        sent = rig.pub.publish_all(
            (
                (
                    topics.hq_down(STORE, "profiles"),
                    load.profiles_message(f"m-{i}", load.page_shoppers(i, pool, shoppers), now),
                )
                for i in range(n)
            ),
            120,
        )
        sent += rig.pub.publish_all(
            [(topics.hq_down(STORE, "consent"), load.opt_out("out-1", "shopper-000007"))]
        )
        published_s = time.monotonic() - started
        done = rig.wait(
            lambda d: d.get("downlink", {}).get("erased_shoppers") == 1 and processed(d) >= sent,
            300,
            "every message applied and the opt-out",
        )
        took = time.monotonic() - started
        receipt_at = time.monotonic() + 10
        while not rig.hq_rx.by_kind["consent"] and time.monotonic() < receipt_at:
            time.sleep(0.05)
        dl = rig.downlink()
        queued = max(
            (
                d.get("downlink", {}).get("queued", 0)
                for _, d in rig.health_since(started, time.monotonic())
            ),
            default=0,
        )
        print(f"  most queued in the daemon at once: {queued:,}")
        ids = rig.query("SELECT count(*) FROM downlink_applied")[0][0]
        profiles = rig.query("SELECT count(*) FROM profiles")[0][0]
        print(f"  HQ's broker acknowledged {sent:,} messages in {published_s:.1f} s")
        print(
            f"  applied {dl.get('applied', 0):,}, duplicates {dl.get('duplicates', 0):,}, "
            f"dead-lettered {dl.get('dead_lettered', 0):,}, dropped after ack "
            f"{dl.get('overflowed', 0):,}; ids on disk {ids:,} (limit: {sent:,}); "
            f"reads paused {dl.get('reads_paused', 0):,}"
        )
        print(
            f"  opt-out applied: {dl.get('erased_shoppers') == 1} (profiles left {profiles:,}, "
            f"want {min(pool, n * shoppers) - 1:,}); "
            f"receipt at HQ: {bool(rig.hq_rx.by_kind['consent'])}; "
            f"all done in {took:.1f} s" + ("" if done else " (NOT DONE)")
        )
    finally:
        rig.close()


def scenario_fuzz(workdir: Path, n: int, cap: int) -> None:
    print(f"\n[fuzz] {n:,} fuzzed messages of up to {cap:,} bytes")
    rig = Rig(workdir)
    try:
        before = rig.rss_now(2.0)
        rng = random.Random(20261123)
        sizes: list[int] = []

        def messages() -> Iterator[tuple[str, bytes]]:
            for i in range(n):
                kind, payload = load.fuzzed(rng, i, cap)
                sizes.append(len(payload))
                yield (topics.hq_down(STORE, kind) if i % 2 else topics.fleet_down(kind)), payload

        started = time.monotonic()
        sent = rig.pub.publish_all(messages(), 300)
        done = rig.wait(lambda d: processed(d) >= sent, 600, "every fuzzed message dead-lettered")
        took = time.monotonic() - started
        peak = rig.rss.peak(since=started)
        after = rig.rss_now(RSS_SETTLE_S)
        dl = rig.downlink()
        print(f"  sent {sent:,} messages, {mb(sum(sizes))} in all (largest {max(sizes):,} bytes)")
        print(
            f"  dead-lettered {dl.get('dead_lettered', 0):,}, applied {dl.get('applied', 0)}, "
            f"dropped after ack {dl.get('overflowed', 0):,} in {took:.1f} s"
            + ("" if done else " (NOT DONE)")
        )
        print(
            f"  RSS before {mb(before)}, peak {mb(peak)}, {RSS_SETTLE_S:.0f} s after "
            f"{mb(after)}: +{mb(after - before)} (limit +30 MB)"
        )
        print(f"  reasons: {dl.get('dead_letter_reasons')}")
    finally:
        rig.close()


def scenario_flood(workdir: Path, flood_s: float, backlog: int, pool: int, shoppers: bool) -> None:
    per_page = load.page_upserts()
    print(
        f"\n[flood] {flood_s:.0f} s of {load.PAGE_BYTES // 1024} KB profile pages "
        f"({per_page} upserts each, {pool:,} shoppers), {backlog} pages kept waiting"
        + (", with the shopper flow (a satellite zone)" if shoppers else "")
    )
    overrides: dict[str, Any] = {}
    if shoppers:
        overrides["satellites"] = [
            {"id": "sat-1", "firmware": "openmqttgateway", "zone": "produce"}
        ]
    rig = Rig(workdir, **overrides)
    try:
        before = rig.rss_now(2.0)
        now = time.time()
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < flood_s:
            applied = rig.downlink().get("applied", 0)
            if sent - applied >= backlog:
                time.sleep(0.02)
                continue
            rig.pub.publish(
                topics.hq_down(STORE, "profiles"), load.profile_page(sent, pool, per_page, now)
            )
            sent += 1
        flood_end = time.monotonic()
        rig.pub.wait_acked(60)
        done = rig.wait(
            lambda d: d.get("downlink", {}).get("applied", 0) >= sent, 600, "every page applied"
        )
        drained = time.monotonic()
        peak = rig.rss.peak(since=started)
        after = rig.rss_now(RSS_SETTLE_S)
        health = rig.health_since(started, drained)
        lag = load.loop_lag_s([doc for _, doc in health], HEALTH_INTERVAL_S)
        gap = rig.notify.max_gap_s(started, drained)
        dl = rig.downlink()
        pages_on_disk = rig.query(
            "SELECT count(*) FROM downlink_applied WHERE message_id LIKE 'page-%'"
        )[0][0]
        print(
            f"  pages sent {sent:,} ({mb(sent * load.PAGE_BYTES)}, {sent / flood_s:.1f}/s), "
            f"applied {dl.get('applied', 0):,} (ids on disk {pages_on_disk:,}; limit: all), "
            f"dropped after ack {dl.get('overflowed', 0):,}; drained {drained - flood_end:.1f} s "
            "after the flood" + ("" if done else " (NOT DONE)")
        )
        print(
            f"  RSS before {mb(before)}, peak {mb(peak)} (limit 200 MB), "
            f"{RSS_SETTLE_S:.0f} s after {mb(after)}"
        )
        print(
            f"  loop lag worst {lag * 1000:,.0f} ms (limit 250 ms) over {len(health)} health "
            f"messages; watchdog: longest gap {gap:.2f} s, pinging every "
            f"{WATCHDOG_USEC / 2e6:.0f} s (systemd's limit {WATCHDOG_USEC / 1e6:.0f} s), "
            f"{len(rig.notify.pings)} pings"
        )
    finally:
        rig.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", choices=["optout", "fuzz", "flood", "all"], default="all")
    ap.add_argument("--flood-s", type=float, default=60.0)
    ap.add_argument("--backlog", type=int, default=300, help="pages kept waiting at HQ's broker")
    ap.add_argument("--pool", type=int, default=20_000, help="distinct shoppers in the flood")
    ap.add_argument("--shoppers", action="store_true", help="run the shopper flow too")
    ap.add_argument("--optout-shoppers", type=int, default=10, help="shoppers per message")
    ap.add_argument(
        "--inflight", type=int, help="downlink.max_inflight_messages (default: its default)"
    )
    ap.add_argument("--quick", action="store_true", help="a tenth of the messages, a 15 s flood")
    args = ap.parse_args()
    n_opt, n_fuzz, flood_s = (2_000, 1_000, 15.0) if args.quick else (20_000, 10_000, args.flood_s)
    print(
        f"store-gateway downlink bench on {platform.machine()} Python {platform.python_version()}"
    )
    if args.inflight:
        EXTRA["downlink"] = {"max_inflight_messages": args.inflight}
    with tempfile.TemporaryDirectory(prefix="sgw-dl-bench-") as tmp:
        root = Path(tmp)
        if args.scenario in ("optout", "all"):
            scenario_optout(root / "optout", n_opt, args.optout_shoppers, 5_000)
        if args.scenario in ("fuzz", "all"):
            scenario_fuzz(root / "fuzz", n_fuzz, 128 * 1024)
        if args.scenario in ("flood", "all"):
            scenario_flood(root / "flood", flood_s, args.backlog, args.pool, args.shoppers)


if __name__ == "__main__":
    main()
