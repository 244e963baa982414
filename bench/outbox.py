"""Outbox benchmark: durable drain rate against raw paho QoS 1, ingest, and a big backlog.

Everything runs against one private local Mosquitto (persistence off) started
with gateway.testing.mosquitto.MosquittoBroker. Figures, from one run:

1. raw paho QoS 1 publish rate (the limit): one paho 2.x client, MQTT v5, the
   gateway's in-flight window, gateway-sized payloads, PUBACKs counted in
   on_publish; msg/s from the first publish to the last PUBACK.
2. durable drain rate: events already committed in the outbox (SQLite, WAL,
   synchronous=FULL) drained by the real SqliteWriter + Outbox + HqLink into the
   same broker; msg/s from connect to the outbox being empty (rows deleted on
   PUBACK). ratio = durable / raw, goal >= 0.7.
3. durable ingest rate: events/s through Outbox.put with many producers in
   flight (group commit, one fsync per commit), p50/p99 put latency.
4. a backlog (default 1,000,000 events) filled through Outbox.enqueue in big
   batches, then drained completely: fill time, db+wal size, drain time, peak
   RSS, db size after the drain. This phase runs in a child process so its peak
   RSS is its own.

Usage:  .venv/bin/python bench/outbox.py [--events N] [--backlog N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as paho
import psutil
from paho.mqtt import __version__ as PAHO_VERSION
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.clock import SystemClock
from gateway.config import HqSection, OutboxSection
from gateway.events import UpEvent
from gateway.log import configure_logging
from gateway.publish import topics
from gateway.publish.hq_link import HqLink, hq_connection
from gateway.publish.outbox import Outbox
from gateway.storage.store import SqliteWriter
from gateway.testing.mosquitto import MosquittoBroker

STORE = "bench-store"
KIND = "telemetry"
GOAL = 0.7
OUTBOX_CFG = OutboxSection()  # the gateway's defaults (publish_window, commit_batch, max_mb)
WINDOW = OUTBOX_CFG.publish_window
REFILL = max(1, WINDOW // 4)


def make_event(n: int) -> UpEvent:
    """An event shaped like the demo's scripted source."""
    return UpEvent.of(KIND, {"n": n, "simulated": True}, time.time())


def gateway_payload(n: int) -> bytes:
    """The bytes the outbox would commit for event ``n`` (same document, same encoding)."""
    ev = make_event(n)
    return json.dumps(
        {
            "v": 1,
            "id": f"{STORE}:{n}",
            "store": STORE,
            "kind": ev.kind,
            "ts": ev.ts,
            "data": ev.data,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def file_mb(db: Path) -> tuple[float, float]:
    sizes = []
    for suffix in ("", "-wal"):
        try:
            sizes.append(os.stat(f"{db}{suffix}").st_size / 1e6)
        except OSError:
            sizes.append(0.0)
    return sizes[0], sizes[1]


# -- optional subscriber (same for both figures) ----------------------------------


class Subscriber:
    """A QoS 1 subscriber on the event topics that just counts messages."""

    def __init__(self, port: int) -> None:
        self.n = 0
        self._c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=MQTTProtocolVersion.MQTTv5
        )
        self._c.max_inflight_messages_set(0)
        self._ready = threading.Event()
        self._c.on_connect = lambda c, *a: (
            c.subscribe(f"retail/v1/stores/{STORE}/up/#", qos=1),
            self._ready.set(),
        )
        self._c.on_message = self._on_message
        self._c.connect("127.0.0.1", port)
        self._c.loop_start()
        self._ready.wait(10)
        time.sleep(0.2)

    def _on_message(self, *a: Any) -> None:
        self.n += 1

    def stop(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()


# -- 1. raw paho ------------------------------------------------------------------


def raw_paho(port: int, n: int) -> dict[str, Any]:
    """At most WINDOW messages in flight, topped up as PUBACKs arrive (as the gateway does).

    Handing paho all n at once is not a valid limit: its message ids wrap at
    65,535 (later messages overwrite earlier ones in its table) and it rescans
    its whole queue on every PUBACK.
    """
    payloads = [gateway_payload(i + 1) for i in range(n)]
    topic = topics.hq_up(STORE, KIND)
    cond = threading.Condition()
    acked = 0
    failed = 0
    last = 0.0

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        nonlocal acked, failed, last
        with cond:
            acked += 1
            failed += reason.is_failure
            if acked >= n:
                last = time.perf_counter()
            if acked >= n or acked % REFILL == 0:
                cond.notify()  # wake the publisher once per chunk, not per PUBACK

    up = threading.Event()
    c = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=MQTTProtocolVersion.MQTTv5
    )
    c.max_inflight_messages_set(WINDOW)
    c.on_publish = on_publish
    c.on_connect = lambda *a: up.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    up.wait(10)
    first = time.perf_counter()
    sent = 0
    deadline = time.monotonic() + 600
    # Never publish while holding cond: paho calls on_publish with its own locks held.
    while sent < n:
        with cond:
            # Top up in chunks (a quarter window), not one message per PUBACK.
            while WINDOW - (sent - acked) < min(REFILL, n - sent):
                if not cond.wait(5) and time.monotonic() > deadline:
                    raise RuntimeError(f"raw paho stuck: {acked}/{n} PUBACKs")
            room = min(WINDOW - (sent - acked), n - sent)
        for p in payloads[sent : sent + room]:
            c.publish(topic, p, qos=1)
        sent += room
    with cond:
        while acked < n:
            if not cond.wait(5) and time.monotonic() > deadline:
                raise RuntimeError(f"raw paho stuck: {acked}/{n} PUBACKs")
    c.disconnect()
    c.loop_stop()
    if failed:
        raise RuntimeError(f"raw paho: {failed} failure PUBACKs")
    return {
        "n": n,
        "seconds": last - first,
        "rate": n / (last - first),
        "payload_bytes": statistics.mean(len(p) for p in payloads),
    }


# -- shared: the real components --------------------------------------------------


class Parts:
    """SqliteWriter + Outbox (+ HqLink on demand), wired as gateway.app wires them."""

    def __init__(self, db: Path, port: int) -> None:
        self.db = db
        self.writer = SqliteWriter(db, max_size_mb=0, ballast_mb=0)
        self.outbox = Outbox(self.writer, STORE, OUTBOX_CFG, SystemClock())
        self.hq_cfg = HqSection(
            enabled=True, host="127.0.0.1", port=port, reconnect_min_s=0.1, reconnect_max_s=1
        )
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await asyncio.to_thread(self.writer.start)
        await self.outbox.open()
        self.tasks.append(asyncio.create_task(self.outbox.run(), name="outbox-commit"))

    async def drain(
        self, expect: int, rss_sampler: bool = False, profile: bool = False
    ) -> dict[str, Any]:
        """Start the HQ link; time from connect to an empty outbox."""
        assert self.outbox.depth() == expect, (self.outbox.depth(), expect)
        prof = cProfile.Profile() if profile else None
        wprof = cProfile.Profile() if profile else None
        submit = self.writer.submit
        if wprof:
            # Profile the writer thread too: every job runs under the same profiler.
            self.writer.submit = lambda fn: submit(lambda conn: wprof.runcall(fn, conn))
        hq = HqLink(
            hq_connection(self.hq_cfg, STORE, WINDOW), STORE, self.outbox, SystemClock(), WINDOW
        )
        proc = psutil.Process()
        peak_rss = proc.memory_info().rss
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        hq_tasks = [asyncio.create_task(c, name=n) for n, c in hq.tasks().items()]
        next_sample = t0
        while self.outbox.depth() > 0:
            await asyncio.sleep(0.005)
            if rss_sampler and time.perf_counter() >= next_sample:
                peak_rss = max(peak_rss, proc.memory_info().rss)
                next_sample += 0.25
            if time.perf_counter() - t0 > 1800:
                raise RuntimeError(f"drain stuck at depth {self.outbox.depth()}")
        t1 = time.perf_counter()
        if prof:
            prof.disable()
            self.writer.submit = submit
        stats = hq.stats()
        await hq.close(2.0)
        for t in hq_tasks:
            t.cancel()
        await asyncio.gather(*hq_tasks, return_exceptions=True)
        out = {
            "n": expect,
            "seconds": t1 - t0,
            "rate": expect / (t1 - t0),
            "acked": stats["acked_total"],
            "published": stats["published_total"],
            "commits": self.outbox.commits,
            "peak_rss_drain_mb": peak_rss / 1e6,
        }
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
            out["profile"] = s.getvalue()
            s = io.StringIO()
            pstats.Stats(wprof, stream=s).sort_stats("tottime").print_stats(15)
            out["wprofile"] = s.getvalue()
        return out

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.to_thread(self.writer.close)


# -- 2 + 3. ingest then drain -----------------------------------------------------


async def ingest_and_drain(port: int, n: int, producers: int, profile: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sgw-bench-") as d:
        parts = Parts(Path(d) / "gateway.db", port)
        await parts.start()
        lat: list[float] = []
        counter = iter(range(1, n + 1))

        async def producer() -> None:
            for i in counter:
                ev = make_event(i)
                t = time.perf_counter()
                await parts.outbox.put(ev)
                lat.append(time.perf_counter() - t)

        commits0 = parts.outbox.commits
        t0 = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(producers)))
        t_ingest = time.perf_counter() - t0
        commits = parts.outbox.commits - commits0
        lat.sort()
        ingest = {
            "n": n,
            "producers": producers,
            "seconds": t_ingest,
            "rate": n / t_ingest,
            "commits": commits,
            "events_per_commit": n / max(commits, 1),
            "p50_ms": lat[len(lat) // 2] * 1000,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        }
        drain = await parts.drain(n, profile=profile)
        await parts.stop()
        return {"ingest": ingest, "drain": drain}


# -- 4. backlog (child process) ---------------------------------------------------


async def backlog_child(port: int, n: int, db: Path) -> dict[str, Any]:
    parts = Parts(db, port)
    await parts.start()
    chunk = 50_000
    t0 = time.perf_counter()
    prev: list[asyncio.Future[str]] = []
    i = 0
    while i < n:
        m = min(chunk, n - i)
        futs = [parts.outbox.enqueue(make_event(i + k + 1)) for k in range(m)]
        i += m
        if prev:
            await asyncio.gather(*prev)
        prev = futs
    await asyncio.gather(*prev)
    t_fill = time.perf_counter() - t0
    db_mb, wal_mb = file_mb(db)
    rss_after_fill = psutil.Process().memory_info().rss / 1e6
    drain = await parts.drain(n, rss_sampler=True)
    end_db, end_wal = file_mb(db)
    await parts.stop()
    closed_db, closed_wal = file_mb(db)
    return {
        "n": n,
        "fill_seconds": t_fill,
        "fill_rate": n / t_fill,
        "db_mb": db_mb,
        "wal_mb": wal_mb,
        "rss_after_fill_mb": rss_after_fill,
        "drain_seconds": drain["seconds"],
        "drain_rate": drain["rate"],
        "drain_acked": drain["acked"],
        "peak_rss_drain_mb": drain["peak_rss_drain_mb"],
        "end_db_mb": end_db,
        "end_wal_mb": end_wal,
        "closed_db_mb": closed_db,
        "closed_wal_mb": closed_wal,
        # ru_maxrss is in KiB on Linux: the child's peak over fill and drain.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,
    }


def run_backlog(port: int, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sgw-bench-backlog-") as d:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--backlog-child",
                "--port",
                str(port),
                "--backlog",
                str(n),
                "--db",
                str(Path(d) / "gateway.db"),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])


# -- main -------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--events",
        type=int,
        default=100_000,
        help="events for the raw, ingest and drain figures (default 100000)",
    )
    ap.add_argument("--backlog", type=int, default=1_000_000, help="backlog size (default 1e6)")
    ap.add_argument("--producers", type=int, default=500, help="concurrent put() callers")
    ap.add_argument("--quick", action="store_true", help="small run: 10000 events, 50000 backlog")
    ap.add_argument(
        "--subscriber",
        action="store_true",
        help="run a QoS 1 subscriber on the event topics during figures 1 and 2",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the event loop thread during the drain of figure 2",
    )
    ap.add_argument("--backlog-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    configure_logging(level="error", fmt="json", stream=sys.stderr)

    if args.backlog_child:
        print(json.dumps(asyncio.run(backlog_child(args.port, args.backlog, args.db))))
        return
    if args.quick:
        args.events, args.backlog = 10_000, 50_000

    broker = MosquittoBroker(persistence=False, name="bench").start()
    sub = None
    try:
        if args.subscriber:
            sub = Subscriber(broker.port)
        print(f"[1/4] raw paho QoS 1, {args.events} msgs ...", flush=True)
        raw = raw_paho(broker.port, args.events)
        print(f"[2-3/4] ingest + durable drain, {args.events} events ...", flush=True)
        res = asyncio.run(ingest_and_drain(broker.port, args.events, args.producers, args.profile))
        if sub:
            sub.stop()
            sub = None
        print(f"[4/4] backlog {args.backlog} events (child process) ...", flush=True)
        bl = run_backlog(broker.port, args.backlog)
    finally:
        if sub:
            sub.stop()
        broker.close()

    ing, dr = res["ingest"], res["drain"]
    ratio = dr["rate"] / raw["rate"]
    rows = [
        (
            "raw paho QoS 1 publish (limit)",
            f"{raw['rate']:,.0f} msg/s",
            f"{raw['n']} msgs in {raw['seconds']:.2f} s",
        ),
        (
            "durable drain (outbox -> broker)",
            f"{dr['rate']:,.0f} msg/s",
            f"{dr['n']} in {dr['seconds']:.2f} s, acked {dr['acked']}",
        ),
        (
            "  ratio durable / raw",
            f"{ratio:.2f}",
            f"goal >= {GOAL}: {'MET' if ratio >= GOAL else 'NOT MET'}",
        ),
        (
            "durable ingest (put, FULL)",
            f"{ing['rate']:,.0f} ev/s",
            f"{ing['producers']} producers, {ing['events_per_commit']:.0f} ev/commit",
        ),
        (
            "  put latency p50 / p99",
            f"{ing['p50_ms']:.1f} / {ing['p99_ms']:.1f} ms",
            f"{ing['commits']} commits (fsync each)",
        ),
        (
            f"backlog fill ({bl['n']:,} via enqueue)",
            f"{bl['fill_seconds']:.1f} s",
            f"{bl['fill_rate']:,.0f} ev/s",
        ),
        (
            "  db + wal after fill",
            f"{bl['db_mb'] + bl['wal_mb']:.1f} MB",
            f"db {bl['db_mb']:.1f} + wal {bl['wal_mb']:.1f}; "
            f"{(bl['db_mb'] + bl['wal_mb']) * 1e6 / bl['n']:.0f} B/event",
        ),
        (
            "  time to drain completely",
            f"{bl['drain_seconds']:.1f} s",
            f"{bl['drain_rate']:,.0f} msg/s vs raw {raw['rate']:,.0f} "
            f"({bl['drain_rate'] / raw['rate']:.2f})",
        ),
        (
            "  peak RSS (fill + drain)",
            f"{bl['peak_rss_mb']:.0f} MB",
            f"during drain {bl['peak_rss_drain_mb']:.0f} MB, after fill "
            f"{bl['rss_after_fill_mb']:.0f} MB",
        ),
        (
            "  db + wal after drain",
            f"{bl['end_db_mb'] + bl['end_wal_mb']:.1f} MB",
            f"db {bl['end_db_mb']:.1f} + wal {bl['end_wal_mb']:.1f}; after close "
            f"{bl['closed_db_mb'] + bl['closed_wal_mb']:.1f} MB",
        ),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print()
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, "
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
        f"paho-mqtt {PAHO_VERSION}, "
        f"mosquitto persistence off"
    )
    print(
        f"payload: {raw['payload_bytes']:.0f} B JSON, QoS 1, window {WINDOW}, "
        f"commit_batch {OUTBOX_CFG.commit_batch}, synchronous=FULL, "
        f"subscriber {'present (QoS 1)' if args.subscriber else 'none'} (same for raw and drain)"
    )
    print(f"{'figure':<{w0}}  {'value':>{w1}}  peer / limit / detail")
    print("-" * (w0 + w1 + 40))
    for name, val, detail in rows:
        print(f"{name:<{w0}}  {val:>{w1}}  {detail}")
    if "profile" in dr:
        print("\ncProfile of the event loop thread during the drain (top 25 by tottime):")
        print(dr["profile"])
        print("cProfile of the sqlite writer thread's jobs during the drain (top 15 by tottime):")
        print(dr["wprofile"])


if __name__ == "__main__":
    main()
