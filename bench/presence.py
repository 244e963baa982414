"""Presence benchmark: zone flaps against the naive strongest-RSSI baseline, cost, memory.

Figures, from one run over seeded walks (gateway/testing/walks.py: three zones,
4-6 dB noise, 20-40 % missed adverts, 8-15 dB body shadowing, scanners with
gain errors, reference beacons):

1. flaps: zone changes reported beyond the true ones, for the naive baseline
   (zone of the strongest latest raw reading), the naive baseline with perfect
   offsets, and the tracker with its parts switched on one by one; the share of
   walks whose reported sequence is exactly the true one; the latency of the
   tracker's correct zone changes after the true boundary crossing.
2. cost: microseconds per observe() on the walks' sightings, side by side with
   the naive baseline's (the least any classifier can cost); tick() with the
   tracker full.
3. memory: the tracker holding max_tracked shoppers heard by four scanners, and
   after 100,000 shoppers have passed through.

Usage:  .venv/bin/python bench/presence.py [--walks N] [--first-seed S]
400 walks (the default, about 75 s here) are what the comments in
gateway/identity/presence.py quote; --walks 100 is the acceptance test's set.
A Raspberry Pi 4 core is roughly 4-6x slower than a core of a recent laptop.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.events import Sighting
from gateway.identity.presence import PresenceEvent, PresenceParams, PresenceTracker
from gateway.testing.walks import (
    DEMO_STORE,
    StrongestScannerBaseline,
    Walk,
    baseline_zones,
    flap_score,
    replay,
    reported_zones,
    simulate_walk,
    tracker_for,
)

T0 = 1_795_000_000.0


def latencies(walk: Walk, events: list[PresenceEvent]) -> list[float]:
    """Seconds from each true zone change to its report (walks reported exactly only)."""
    if reported_zones(events, walk.shopper) != walk.zones:
        return []
    changes = [e for e in events if e.kind == "zone_changed"]
    return [e.ts - stay.start_s for e, stay in zip(changes, walk.truth[1:], strict=True)]


def flap_figures(walks: list[Walk]) -> None:
    defaults = PresenceParams()
    perfect_offsets = {s.scanner_id: -s.gain_db for s in DEMO_STORE.scanners}
    print(f"1. flaps over {len(walks)} walks ({sum(w.duration_s for w in walks) / 3600:.2f} h)")
    print(flap_score((w, baseline_zones(w)) for w in walks).line("naive strongest raw RSSI"))
    print(
        flap_score((w, baseline_zones(w, offsets_db=perfect_offsets)) for w in walks).line(
            "naive + perfect offsets"
        )
    )
    variants = [
        (
            "smoothing only (no margin/dwell)",
            dataclasses.replace(defaults, margin_db=0, min_dwell_s=0),
            True,
        ),
        ("smoothing + margin (no dwell)", dataclasses.replace(defaults, min_dwell_s=0), True),
        ("tracker without calibration", defaults, False),
        ("median instead of q=0.75", dataclasses.replace(defaults, quantile=0.5), True),
        ("presence tracker (defaults)", defaults, True),
    ]
    for label, params, calibrated in variants:
        results, lags = [], []
        for w in walks:
            events = replay(w, tracker_for(params=params, calibrated=calibrated))
            results.append((w, reported_zones(events, w.shopper)))
            lags += latencies(w, events)
        line = flap_score(results).line(label)
        if lags:
            lags.sort()
            p90 = lags[min(len(lags) - 1, int(len(lags) * 0.9))]
            line += (
                f", change reported {statistics.median(lags):.1f} s (p50) / {p90:.1f} s (p90) late"
            )
        print(line)


def cost_figures(walks: list[Walk]) -> None:
    sightings = [s for w in walks for s in w.sightings if not s.reference]
    zones = DEMO_STORE.scanner_zones()
    naive = StrongestScannerBaseline(zones)
    started = time.perf_counter()
    for s in sightings:
        naive.observe(s)
    naive_us = (time.perf_counter() - started) / len(sightings) * 1e6
    tracker = PresenceTracker(zones)
    started = time.perf_counter()
    for s in sightings:
        tracker.observe(s)
    tracker_us = (time.perf_counter() - started) / len(sightings) * 1e6
    print(f"2. cost over {len(sightings):,} shopper sightings")
    print(f"   naive baseline observe()          {naive_us:6.2f} us/sighting")
    share = tracker_us / 10  # % of a core at 1,000 sightings/s
    print(
        f"   presence tracker observe()        {tracker_us:6.2f} us/sighting "
        f"({tracker_us / naive_us:.1f}x naive; 1,000 sightings/s = {share:.2f} % of a core)"
    )
    full = filled_tracker()
    now = T0 + 10
    started = time.perf_counter()
    for i in range(20):
        full.tick(now + i * 0.01)
    tick_ms = (time.perf_counter() - started) / 20 * 1e3
    print(f"   tick() with {full.stats()['tracked']:,} shoppers tracked   {tick_ms:6.2f} ms")


def filled_tracker() -> PresenceTracker:
    """A tracker at its cap: every shopper heard by every scanner within the window."""
    tracker = PresenceTracker(DEMO_STORE.scanner_zones())
    scanners = list(DEMO_STORE.scanner_zones())
    for n in range(tracker.params.max_tracked):
        for k in range(8):
            for j, scanner in enumerate(scanners):
                tracker.observe(Sighting(f"shopper-{n}", scanner, -60.0 - 3 * j - k % 3, T0 + k))
    return tracker


def memory_figures() -> None:
    tracemalloc.start()
    full = filled_tracker()
    held, _ = tracemalloc.get_traced_memory()
    cap = full.stats()["tracked"]
    del full
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    tracker = PresenceTracker(DEMO_STORE.scanner_zones())
    next_tick = T0
    for n in range(100_000):
        arrival = T0 + n * 0.01
        for k in range(4):
            tracker.observe(Sighting(f"shopper-{n}", "pi", -60.0 - k, arrival + 2 * k))
        if arrival >= next_tick:
            tracker.tick(arrival)
            next_tick += 1.0
    tracker.tick(T0 + 5000)
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stats = tracker.stats()
    print("3. memory")
    each_kb = held / cap / 1e3
    print(f"   {cap:,} shoppers x 4 scanners held  {held / 1e6:6.2f} MB ({each_kb:.1f} kB each)")
    print(
        f"   100,000 passed through            peak {(peak - base) / 1e6:6.2f} MB, "
        f"after {(after - base) / 1e3:6.1f} kB, tracked {stats['tracked']}, "
        f"evicted {stats['evicted']:,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walks", type=int, default=400)
    parser.add_argument("--first-seed", type=int, default=0)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.node()}")
    walks = [simulate_walk(seed) for seed in range(args.first_seed, args.first_seed + args.walks)]
    flap_figures(walks)
    cost_figures(walks)
    memory_figures()


if __name__ == "__main__":
    main()
