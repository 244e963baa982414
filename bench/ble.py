"""BLE benchmark: adverts/s through parse + resolve + presence, next to a peer and a limit.

One process pinned to one core, 50,000 opted-in shoppers (random day keys for
today and tomorrow), and a stream of adverts of which 90 % are foreign: Apple
iBeacons and continuity frames, Microsoft Swift Pair, Eddystone UID/URL/TLM,
other companies' manufacturer data, and frames under our own company id with
tokens nobody holds. The other 10 % are token adverts of 500 shoppers in the
store, heard by the Pi and three satellites. Figures, from one run:

1. full path: ``ShopperFlow.on_advert`` (frame parse, token/EID/iBeacon lookup,
   drop or queue) and ``drain`` into the presence tracker, exactly the code the
   daemon runs; adverts/s, and p50/p99 per advert.
2. the limit: a bare loop that only parses the token frame and does the dict
   lookup, over the same adverts.
3. the peer: TheengsDecoder's ``decodeBLE`` (the decoder Theengs Gateway and
   OpenMQTTGateway use) through its JSON API, decode only, on the same adverts
   (a sample: it is slow); it needs ``pip install '.[bench]'``.
4. the token table for 50,000 shoppers: full build time (three windows, at
   start or after HQ changes profiles), the window-change rebuild (one new
   window), and its memory; the EID table for 1,000 tags.
5. RSS of the process at the end.

Usage:  .venv/bin/python bench/ble.py [--shoppers N] [--adverts N] [--peer-sample N]
A Raspberry Pi 4 core is roughly 4-6x slower than a core here.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.app import build_shoppers
from gateway.config import GatewayConfig
from gateway.identity.flow import ShopperFlow
from gateway.identity.resolver import build_eid_table
from gateway.identity.tokens import build_table, day_of_window, token, window_of, window_tokens
from gateway.publish.upstream import OutboxSink
from gateway.sensing.frames import EDDYSTONE_SERVICE_UUID
from gateway.shoppers import Consent, EidTag, Profile

NOW = 1_795_000_000.0
COMPANY_ID = 0xFFFF
SCANNERS = ("pi", "sat-produce", "sat-checkout", "sat-bakery")


class CountingOutbox:
    """Takes upstream events without storage: this bench measures the radio side."""

    def __init__(self) -> None:
        import asyncio

        self._loop = asyncio.new_event_loop()
        self.events = 0

    def enqueue(self, event: object) -> object:
        self.events += 1
        fut = self._loop.create_future()
        fut.set_result("x")
        return fut


def make_flow(profiles: list[Profile], consents: list[Consent]) -> ShopperFlow:
    cfg = GatewayConfig.model_validate(
        {
            "store": {"id": "bench"},
            "hq": {"enabled": False},
            "ble": {
                "enabled": True,
                "company_id": COMPANY_ID,
                "zone": "entrance",
                "queue_max": 1_000_000,
            },
            "satellites": [
                {"id": "sat-produce", "firmware": "openmqttgateway", "zone": "produce"},
                {"id": "sat-checkout", "firmware": "openmqttgateway", "zone": "checkout"},
                {"id": "sat-bakery", "firmware": "espresense", "zone": "bakery"},
            ],
        }
    )
    flow = build_shoppers(cfg, _Clock(), OutboxSink(CountingOutbox(), "presence_event"))
    flow.load(profiles, consents)
    return flow


class _Clock:
    def wall(self) -> float:
        return NOW

    def monotonic(self) -> float:
        return time.monotonic()


def shoppers(n: int, rng: random.Random) -> tuple[list[Profile], list[Consent]]:
    w = window_of(NOW)
    days = {day_of_window(w), day_of_window(w + 96)}
    profiles = [
        Profile(f"shopper-{i}", NOW + 86_400, {d: rng.randbytes(32) for d in sorted(days)})
        for i in range(n)
    ]
    consents = [
        Consent(p.shopper, frozenset({"presence", "analytics"}), NOW + 86_400) for p in profiles
    ]
    return profiles, consents


def foreign_advert(rng: random.Random) -> tuple[dict[int, bytes], dict[str, bytes]]:
    """A device that did not opt in, in the proportions a busy store hears them."""
    r = rng.random()
    if r < 0.30:  # Apple: continuity (nearby, find-my) and some iBeacons
        if rng.random() < 0.2:
            return {0x004C: bytes([0x02, 0x15]) + rng.randbytes(20) + bytes([0xC5])}, {}
        return {0x004C: bytes([0x10, 0x05]) + rng.randbytes(5)}, {}
    if r < 0.45:  # Microsoft Swift Pair / CDP
        return {0x0006: bytes([0x01, 0x09, 0x20]) + rng.randbytes(24)}, {}
    if r < 0.60:  # Eddystone UID, URL and TLM
        kind = rng.choice((0x00, 0x10, 0x20))
        if kind == 0x00:
            data = bytes([0x00, 0xEE]) + rng.randbytes(16) + b"\x00\x00"
        elif kind == 0x10:
            data = bytes([0x10, 0xEE, 0x03]) + b"example" + bytes([0x07])
        else:
            data = bytes([0x20, 0x00]) + rng.randbytes(12)
        return {}, {EDDYSTONE_SERVICE_UUID: data}
    if r < 0.75:  # our company id, a token nobody holds (another store's app, or noise)
        return {COMPANY_ID: bytes([0x01]) + rng.randbytes(8) + bytes([0xC5])}, {}
    # Anything else: other companies' manufacturer data of any length.
    return {rng.randrange(0x0001, 0xFFFE): rng.randbytes(rng.randrange(2, 27))}, {}


def adverts(
    n: int, profiles: list[Profile], present: int, foreign_share: float, rng: random.Random
) -> list[tuple[str, dict[int, bytes], dict[str, bytes], int]]:
    w = window_of(NOW)
    day = day_of_window(w)
    inside = [token(p.day_keys[day], w) for p in profiles[:present]]
    out = []
    for _ in range(n):
        scanner = rng.choice(SCANNERS)
        if rng.random() < foreign_share:
            md, sd = foreign_advert(rng)
        else:
            md, sd = {COMPANY_ID: bytes([0x01]) + rng.choice(inside) + bytes([0xC5])}, {}
        out.append((scanner, md, sd, rng.randrange(-95, -45)))
    return out


def run_full(flow: ShopperFlow, ads: list, batch: int = 512) -> float:
    """Adverts/s through on_advert + drain (the daemon's path), wall time."""
    on_advert = flow.on_advert
    drain = flow.drain
    handle = flow.handle
    t0 = time.perf_counter()
    # As the daemon runs: the radio hands over a burst of adverts, then the presence
    # task drains the queue (BATCH in gateway/identity/flow.py is 512 too).
    for start in range(0, len(ads), batch):
        ts = NOW + start * 0.002  # adverts arrive at 500/s of simulated time
        for scanner, md, sd, rssi in ads[start : start + batch]:
            on_advert(scanner, md, sd, rssi, ts)
        handle(drain(1 << 30))
    return len(ads) / (time.perf_counter() - t0)


def per_advert_latency(flow: ShopperFlow, ads: list) -> tuple[float, float]:
    """p50 and p99 (microseconds) of one on_advert call, timer overhead subtracted."""
    clock = time.perf_counter_ns
    on_advert = flow.on_advert
    samples = []
    overhead = min(-(clock() - clock()) for _ in range(1000))
    for scanner, md, sd, rssi in ads:
        t0 = clock()
        on_advert(scanner, md, sd, rssi, NOW)
        samples.append(clock() - t0 - overhead)
    flow.drain(1 << 30)
    q = statistics.quantiles(samples, n=100)
    return q[49] / 1000, q[98] / 1000


def run_limit(table: dict[bytes, str], ads: list) -> float:
    """The least a resolver can do: take the token frame, look it up."""
    cid = COMPANY_ID
    get = table.get
    hits = 0
    t0 = time.perf_counter()
    for _scanner, md, _sd, _rssi in ads:
        p = md.get(cid)
        if p is not None and len(p) == 10 and p[0] == 1 and get(p[1:9]) is not None:
            hits += 1
    rate = len(ads) / (time.perf_counter() - t0)
    return rate


def run_peer(ads: list, sample: int) -> float | None:
    try:
        import TheengsDecoder
    except ImportError:
        return None
    docs = []
    for i, (_scanner, md, sd, rssi) in enumerate(ads[:sample]):
        doc: dict[str, object] = {
            "id": f"AA:BB:CC:{i >> 16 & 255:02X}:{i >> 8 & 255:02X}:{i & 255:02X}",
            "rssi": rssi,
        }
        for cid, payload in md.items():
            doc["manufacturerdata"] = (cid.to_bytes(2, "little") + payload).hex()
        for _uuid, data in sd.items():
            doc["servicedata"] = data.hex()
            doc["servicedatauuid"] = "0xfeaa"
        docs.append(json.dumps(doc))
    decode = TheengsDecoder.decodeBLE
    t0 = time.perf_counter()
    for d in docs:
        decode(d)
    return len(docs) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shoppers", type=int, default=50_000)
    ap.add_argument("--adverts", type=int, default=300_000)
    ap.add_argument("--present", type=int, default=500, help="opted-in shoppers in the store")
    ap.add_argument("--foreign-share", type=float, default=0.9)
    ap.add_argument("--peer-sample", type=int, default=5_000)
    ap.add_argument("--tags", type=int, default=1_000)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    rng = random.Random(7)
    print(
        f"bench/ble.py on {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, one core; {args.shoppers:,} opted-in shoppers, "
        f"{args.adverts:,} adverts, {args.foreign_share:.0%} foreign"
    )

    profiles, consents = shoppers(args.shoppers, rng)
    w = window_of(NOW)
    keys = [(p.shopper, p.day_keys) for p in profiles]
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    table = build_table(keys, w)
    build_s = time.perf_counter() - t0
    table_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    t0 = time.perf_counter()
    window_tokens(keys, w + 2)
    change_s = time.perf_counter() - t0
    print(
        f"token table: {len(table):,} tokens for {args.shoppers:,} shoppers x 3 windows, "
        f"full build {build_s * 1000:.0f} ms, {table_bytes / 1e6:.1f} MB; at a window "
        f"change only the new window is computed: {change_s * 1000:.0f} ms"
    )
    tags = [(f"tag-{i}", EidTag(f"t{i}", rng.randbytes(16), 10, 0)) for i in range(args.tags)]
    t0 = time.perf_counter()
    eids = build_eid_table(tags, w)
    print(
        f"EID table: {len(eids):,} EIDs for {args.tags:,} tags (K=10), "
        f"built in {(time.perf_counter() - t0) * 1000:.0f} ms"
    )

    flow = make_flow(profiles, consents)
    flow.resolver.install(table, eids)
    ads = adverts(args.adverts, profiles, args.present, args.foreign_share, rng)

    run_full(flow, ads[: len(ads) // 10])  # warm-up: shoppers arrive, caches fill
    full = statistics.median(run_full(flow, ads) for _ in range(3))
    p50, p99 = per_advert_latency(flow, ads[: min(len(ads), 100_000)])
    limit = statistics.median(run_limit(table, ads) for _ in range(3))
    peer = run_peer(ads, args.peer_sample)
    stats = flow.stats()
    print()
    print(f"{'path':<44}{'adverts/s':>14}")
    print(f"{'full: parse + resolve + presence (ours)':<44}{full:>14,.0f}")
    print(f"{'limit: bare frame parse + dict lookup':<44}{limit:>14,.0f}")
    if peer is None:
        print(
            f"{'peer: TheengsDecoder decodeBLE (JSON API)':<44}{'not installed':>14}"
            "  (pip install '.[bench]')"
        )
    else:
        print(
            f"{'peer: TheengsDecoder decodeBLE (JSON API)':<44}{peer:>14,.0f}"
            f"  ({args.peer_sample:,} adverts)"
        )
    print()
    print(
        f"full / limit = {full / limit:.2f} (goal >= 0.25)"
        + (f"; full / peer = {full / peer:.0f}x" if peer else "")
    )
    print(f"per advert (on_advert): p50 {p50:.2f} us, p99 {p99:.2f} us")
    res = stats["resolver"]
    print(
        f"resolved {res['resolved']:,}, foreign dropped {res['foreign_dropped']:,}, "
        f"shed {stats['shed']:,}; presence events {sum(stats['events'].values()):,}, "
        f"tracked {stats['presence']['tracked']}"
    )
    print(f"RSS at the end: {psutil.Process().memory_info().rss / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
