"""Seeded shopper walks through a simulated store, and the yardsticks presence is scored by.

A walk is a shopper entering by the front door, stopping in the entrance,
produce and checkout zones, and leaving by the back door, heard by every
scanner as a phone in a store is heard:

- log-distance path loss from each scanner, and a gain error per scanner (the
  thing reference-beacon calibration must remove);
- Gaussian noise of 4-6 dB, part of it slow fading that wanders over seconds;
- missed adverts (20-40 %) and a sensitivity floor;
- body shadowing: scanners behind the shopper's back lose 8-15 dB (tapering
  to nothing at their sides), while walking (the phone faces the way they go)
  and while browsing (they turn to a new direction every 4-15 s);
- adverts every 0.1-1 s with the controller's random delay.

The walk yields ``Sighting``s in time order (reference beacons included, from a
warm-up period before the shopper arrives, as in a store that opened hours
ago) and the ground-truth zone intervals. ``StrongestScannerBaseline`` is the
naive classifier presence must beat (the zone of the strongest latest raw
reading), and ``FlapScore`` counts zone changes nobody made.

For tests/test_presence.py, bench/presence.py and the demo's simulated shoppers.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.events import Sighting
from gateway.identity.presence import (
    PresenceEvent,
    PresenceParams,
    PresenceTracker,
    ReferenceBeacon,
)

# Log-distance path-loss exponent: 2 in free space, 2-3 on open retail floors
# among shelving; 2.2 keeps the far scanners audible, as they are in real stores.
PATH_LOSS_EXPONENT = 2.2
# Scanners on the ceiling at 2.4 m, a phone in a hand or pocket at 1.1 m.
HEIGHT_DIFFERENCE_M = 1.3
# Adverts weaker than this are not reported (ESP32 and Pi radios stop near -100 dBm).
SENSITIVITY_DBM = -98.0
# The slowly wandering part of the noise (Ornstein-Uhlenbeck): a phone standing
# still sees its RSSI drift over seconds rather than jump independently.
FADING_SIGMA_DB = 2.5
FADING_TAU_S = 2.0
# Body loss by direction: none for scanners ahead or to the side, the full depth
# for those within this many degrees of straight behind, a taper in between (the
# shape measured for a phone held in front of or worn on the body).
SHADOW_FULL_WITHIN_DEG = 30.0
# The front wall between the checkout and the street, once the shopper is out.
WALL_LOSS_DB = 10.0
# Reference beacons advertise once a second (battery life of years). A fixed link
# at 1 m in line of sight fluctuates less than a moving phone (only people moving
# nearby stir it), and now and then someone walking past shadows it.
BEACON_INTERVAL_S = 1.0
BEACON_NOISE_SIGMA_DB = 3.0
BEACON_PASSER_BY_SHARE = 0.05
# BLE adds 0-10 ms of random delay to every advertising event (Core spec advDelay).
ADV_DELAY_MAX_S = 0.010
# Where walks start on the clock (any fixed point; seeds are spread apart from it).
EPOCH_S = 1_795_000_000.0


@dataclass(frozen=True, slots=True)
class SimScanner:
    """A scanner in the simulated store and its receiver's gain error."""

    scanner_id: str
    zone: str
    x: float
    y: float
    gain_db: float  # what this receiver reads above a nominal one; calibration removes it


@dataclass(frozen=True, slots=True)
class SimZone:
    """A band of the store across its whole depth, and where shoppers stop in it."""

    name: str
    x0: float
    x1: float
    stop_area: tuple[float, float, float, float]  # x0, x1, y0, y1 of the places people stop


@dataclass(frozen=True, slots=True)
class SimBeacon:
    """A reference beacon and where it is mounted (at its scanner's height)."""

    beacon: ReferenceBeacon
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class StoreLayout:
    """A store: zones left to right, scanners, reference beacons, two doors."""

    width_m: float
    depth_m: float
    zones: tuple[SimZone, ...]
    scanners: tuple[SimScanner, ...]
    beacons: tuple[SimBeacon, ...]
    door_in: tuple[float, float]
    door_out: tuple[float, float]

    def zone_at(self, x: float) -> str | None:
        for zone in self.zones:
            if zone.x0 <= x < zone.x1:
                return zone.name
        return None

    def scanner_zones(self) -> dict[str, str]:
        return {s.scanner_id: s.zone for s in self.scanners}

    def reference_beacons(self) -> tuple[ReferenceBeacon, ...]:
        return tuple(b.beacon for b in self.beacons)


# The store of firmware_configs/beacons/reference-beacons.toml: 36 x 15 m in three
# 12 m bands, the entrance watched by the Pi, produce by two satellites, checkout
# by one, each zone's scanners on its centre line so that the zone boundaries are
# where the radio says they are. The gain errors are what mixed hardware does (a
# satellite in a metal housing reads low, one with a better antenna reads high);
# each beacon hangs 1 m from its scanner. Shoppers stop at least 3 m inside a zone.
DEMO_STORE = StoreLayout(
    width_m=36.0,
    depth_m=15.0,
    zones=(
        SimZone("entrance", 0.0, 12.0, (2.0, 9.0, 2.0, 13.0)),
        SimZone("produce", 12.0, 24.0, (15.0, 21.0, 2.0, 13.0)),
        SimZone("checkout", 24.0, 36.0, (27.0, 34.0, 2.0, 13.0)),
    ),
    scanners=(
        SimScanner("pi", "entrance", 6.0, 7.5, 0.0),
        SimScanner("sat-produce-1", "produce", 18.0, 4.0, -6.0),
        SimScanner("sat-produce-2", "produce", 18.0, 11.0, 2.0),
        SimScanner("sat-checkout", "checkout", 30.0, 7.5, 8.0),
    ),
    beacons=(
        SimBeacon(ReferenceBeacon("ref-entrance", "pi", -59.0, "entrance"), 7.0, 7.5),
        SimBeacon(ReferenceBeacon("ref-produce-1", "sat-produce-1", -59.0, "produce"), 18.0, 5.0),
        SimBeacon(ReferenceBeacon("ref-produce-2", "sat-produce-2", -59.0, "produce"), 18.0, 10.0),
        SimBeacon(ReferenceBeacon("ref-checkout", "sat-checkout", -59.0, "checkout"), 29.0, 7.5),
    ),
    door_in=(0.5, 7.5),
    door_out=(35.5, 7.5),
)


@dataclass(frozen=True, slots=True)
class WalkConditions:
    """The radio and the shopper of one walk, drawn from its seed."""

    noise_sigma_db: float  # total per-reading noise, 4-6 dB
    dropout: float  # share of adverts each scanner misses, 0.2-0.4
    advert_interval_s: float  # 0.1-1 s (log-uniform: phones and tags differ)
    shadow_db: float  # body shadowing depth, 8-15 dB
    speed_m_s: float  # walking speed, 0.8-1.4 m/s
    tx_1m_dbm: float  # the phone's RSSI at 1 m from a nominal receiver


@dataclass(frozen=True, slots=True)
class ZoneInterval:
    """Ground truth: the shopper was in ``zone`` from ``start_s`` to ``end_s``."""

    zone: str
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class Walk:
    """One seeded walk: sightings in time order, and the truth to score them by."""

    seed: int
    shopper: str
    conditions: WalkConditions
    sightings: tuple[Sighting, ...]
    truth: tuple[ZoneInterval, ...]
    entered_s: float
    exited_s: float

    @property
    def zones(self) -> tuple[str, ...]:
        """The true zone sequence."""
        return tuple(i.zone for i in self.truth)

    @property
    def duration_s(self) -> float:
        return self.exited_s - self.entered_s


@dataclass(frozen=True, slots=True)
class _Leg:
    t0: float
    t1: float
    x0: float
    y0: float
    x1: float
    y1: float
    # Dwelling: the times the shopper turns and the way they face from then on.
    turns: tuple[float, ...] = ()
    facings: tuple[float, ...] = ()

    def at(self, t: float) -> tuple[float, float, float]:
        """Position and facing (radians) at ``t``."""
        if self.turns:
            i = bisect.bisect_right(self.turns, t) - 1
            return self.x0, self.y0, self.facings[max(i, 0)]
        span = self.t1 - self.t0
        f = 0.0 if span <= 0 else min(1.0, max(0.0, (t - self.t0) / span))
        heading = math.atan2(self.y1 - self.y0, self.x1 - self.x0)
        return self.x0 + f * (self.x1 - self.x0), self.y0 + f * (self.y1 - self.y0), heading


def _conditions(rng: random.Random) -> WalkConditions:
    return WalkConditions(
        noise_sigma_db=rng.uniform(4.0, 6.0),
        dropout=rng.uniform(0.2, 0.4),
        advert_interval_s=math.exp(rng.uniform(math.log(0.1), math.log(1.0))),
        shadow_db=rng.uniform(8.0, 15.0),
        speed_m_s=rng.uniform(0.8, 1.4),
        tx_1m_dbm=rng.uniform(-63.0, -55.0),
    )


def _spot(rng: random.Random, zone: SimZone) -> tuple[float, float]:
    x0, x1, y0, y1 = zone.stop_area
    return rng.uniform(x0, x1), rng.uniform(y0, y1)


def _script(
    rng: random.Random, store: StoreLayout, speed: float, t: float
) -> tuple[list[_Leg], float]:
    """Legs of a walk starting at ``t``; returns them and the time the walk ends."""
    by_name = {z.name: z for z in store.zones}
    stops: list[tuple[tuple[float, float], float]] = [
        (_spot(rng, by_name["entrance"]), rng.uniform(8.0, 25.0)),
        (_spot(rng, by_name["produce"]), rng.uniform(20.0, 60.0)),
    ]
    if rng.random() < 0.6:  # a second shelf in produce
        stops.append((_spot(rng, by_name["produce"]), rng.uniform(10.0, 40.0)))
    stops.append((_spot(rng, by_name["checkout"]), rng.uniform(30.0, 90.0)))
    legs: list[_Leg] = []
    x, y = store.door_in

    def walk_to(x1: float, y1: float) -> None:
        nonlocal x, y, t
        duration = math.hypot(x1 - x, y1 - y) / speed
        legs.append(_Leg(t, t + duration, x, y, x1, y1))
        x, y, t = x1, y1, t + duration

    for (sx, sy), dwell in stops:
        walk_to(sx, sy)
        turns = [t]
        facings = [rng.uniform(-math.pi, math.pi)]
        while turns[-1] < t + dwell:
            turns.append(turns[-1] + rng.uniform(4.0, 15.0))
            facings.append(rng.uniform(-math.pi, math.pi))
        legs.append(_Leg(t, t + dwell, sx, sy, sx, sy, tuple(turns), tuple(facings)))
        t += dwell
    walk_to(*store.door_out)
    walk_to(store.width_m + 22.0, store.door_out[1])  # out along the street
    return legs, t


def _received(
    tx_1m: float,
    scanner: SimScanner,
    x: float,
    y: float,
    dz: float,
    outside: bool,
) -> float:
    d = math.sqrt((x - scanner.x) ** 2 + (y - scanner.y) ** 2 + dz * dz)
    loss = 10.0 * PATH_LOSS_EXPONENT * math.log10(max(d, 0.3))
    return tx_1m + scanner.gain_db - loss - (WALL_LOSS_DB if outside else 0.0)


def simulate_walk(seed: int, store: StoreLayout = DEMO_STORE, *, warmup_s: float = 120.0) -> Walk:
    """The walk of ``seed``: the same seed gives the same sightings, byte for byte."""
    rng = random.Random(seed)
    cond = _conditions(rng)
    shopper = f"shopper-{seed}"
    entered = EPOCH_S + seed * 10_000.0
    legs, end = _script(rng, store, cond.speed_m_s, entered)
    white_sigma = math.sqrt(max(cond.noise_sigma_db**2 - FADING_SIGMA_DB**2, 0.0))
    cos_full = math.cos(math.radians(SHADOW_FULL_WITHIN_DEG))
    out: list[Sighting] = []

    # The shopper's phone.
    fading = {s.scanner_id: rng.gauss(0.0, FADING_SIGMA_DB) for s in store.scanners}
    t = entered
    last_t = entered
    leg_i = 0
    while t < end:
        while legs[leg_i].t1 < t and leg_i < len(legs) - 1:
            leg_i += 1
        x, y, facing = legs[leg_i].at(t)
        fx, fy = math.cos(facing), math.sin(facing)
        decay = math.exp(-(t - last_t) / FADING_TAU_S)
        kick = FADING_SIGMA_DB * math.sqrt(1.0 - decay * decay)
        last_t = t
        outside = x >= store.width_m
        for sc in store.scanners:
            f = fading[sc.scanner_id] = fading[sc.scanner_id] * decay + kick * rng.gauss(0, 1)
            rssi = _received(cond.tx_1m_dbm, sc, x, y, HEIGHT_DIFFERENCE_M, outside)
            dx, dy = sc.x - x, sc.y - y
            norm = math.hypot(dx, dy)
            behind = -(dx * fx + dy * fy) / norm if norm > 0.5 else 0.0
            if behind > 0.0:
                rssi -= cond.shadow_db * min(1.0, behind / cos_full)
            rssi += f + rng.gauss(0.0, white_sigma)
            if rssi < SENSITIVITY_DBM or rng.random() < cond.dropout:
                continue
            out.append(Sighting(shopper, sc.scanner_id, float(round(rssi)), t))
        t += cond.advert_interval_s + rng.uniform(0.0, ADV_DELAY_MAX_S)

    # Reference beacons, from the warm-up on; every scanner hears them.
    for sb in store.beacons:
        t = entered - warmup_s + rng.uniform(0.0, BEACON_INTERVAL_S)
        while t < end:
            for sc in store.scanners:
                rssi = _received(sb.beacon.expected_rssi_dbm, sc, sb.x, sb.y, 0.0, False)
                rssi += rng.gauss(0.0, BEACON_NOISE_SIGMA_DB)
                if rng.random() < BEACON_PASSER_BY_SHARE:
                    rssi -= cond.shadow_db
                if rssi < SENSITIVITY_DBM or rng.random() < cond.dropout:
                    continue
                out.append(
                    Sighting(sb.beacon.beacon_id, sc.scanner_id, float(round(rssi)), t, None, True)
                )
            t += BEACON_INTERVAL_S + rng.uniform(0.0, ADV_DELAY_MAX_S)

    out.sort(key=lambda s: s.ts)
    truth, exited = _truth(store, legs, entered, end)
    return Walk(seed, shopper, cond, tuple(out), truth, entered, exited)


def _truth(
    store: StoreLayout, legs: Sequence[_Leg], start: float, end: float
) -> tuple[tuple[ZoneInterval, ...], float]:
    """Zone intervals at 50 ms resolution, and when the shopper went out of the door."""
    step = 0.05
    intervals: list[ZoneInterval] = []
    current: str | None = None
    since = start
    exited = end
    leg_i = 0
    n = 0
    while True:
        t = start + n * step
        if t > end:
            break
        while legs[leg_i].t1 < t and leg_i < len(legs) - 1:
            leg_i += 1
        x, _, _ = legs[leg_i].at(t)
        zone = store.zone_at(x)
        if zone != current:
            if current is not None:
                intervals.append(ZoneInterval(current, since, t))
            if zone is None:
                exited = t
                break
            current, since = zone, t
        n += 1
    return tuple(intervals), exited


def replay(
    walk: Walk, tracker: PresenceTracker, *, tick_every_s: float = 1.0
) -> list[PresenceEvent]:
    """Feed a walk to a tracker with a tick every second, until the shopper has left."""
    events: list[PresenceEvent] = []
    if not walk.sightings:
        return events
    next_tick = walk.sightings[0].ts + tick_every_s
    for s in walk.sightings:
        while s.ts >= next_tick:
            events.extend(tracker.tick(next_tick))
            next_tick += tick_every_s
        events.extend(tracker.observe(s))
    settle = walk.sightings[-1].ts + tracker.params.left_after_s + 2 * tick_every_s
    while next_tick <= settle:
        events.extend(tracker.tick(next_tick))
        next_tick += tick_every_s
    return events


def reported_zones(events: Iterable[PresenceEvent], shopper: str) -> tuple[str, ...]:
    """The zone sequence a tracker reported for ``shopper`` (arrival, then each change)."""
    return tuple(
        e.zone for e in events if e.shopper == shopper and e.kind in ("arrived", "zone_changed")
    )


def tracker_for(
    store: StoreLayout = DEMO_STORE,
    params: PresenceParams | None = None,
    *,
    calibrated: bool = True,
) -> PresenceTracker:
    """A tracker for ``store``, calibrated by its reference beacons unless told otherwise."""
    beacons = store.reference_beacons() if calibrated else ()
    return PresenceTracker(store.scanner_zones(), params, beacons=beacons)


class StrongestScannerBaseline:
    """The naive classifier: the zone of the scanner with the strongest latest raw reading.

    No smoothing, no margin, no dwell; optional fixed offsets only to show what
    calibration alone buys. A scanner's latest reading counts for ``stale_s``.
    """

    def __init__(
        self,
        scanner_zones: Mapping[str, str],
        *,
        stale_s: float = 8.0,
        offsets_db: Mapping[str, float] | None = None,
    ) -> None:
        self._zones = dict(scanner_zones)
        self._offsets = dict(offsets_db or {})
        self._stale_s = stale_s
        self._latest: dict[str, dict[str, tuple[float, float]]] = {}

    def observe(self, s: Sighting) -> str | None:
        """The zone after this sighting (None for reference beacons and unknown scanners)."""
        if s.reference or s.scanner not in self._zones:
            return None
        latest = self._latest.setdefault(s.subject, {})
        latest[s.scanner] = (s.rssi + self._offsets.get(s.scanner, 0.0), s.ts)
        best_zone, best = None, -math.inf
        for scanner, (rssi, ts) in latest.items():
            if s.ts - ts <= self._stale_s and rssi > best:
                best_zone, best = self._zones[scanner], rssi
        return best_zone


def baseline_zones(
    walk: Walk, store: StoreLayout = DEMO_STORE, *, offsets_db: Mapping[str, float] | None = None
) -> tuple[str, ...]:
    """The naive classifier's zone sequence over a walk (consecutive repeats collapsed)."""
    naive = StrongestScannerBaseline(store.scanner_zones(), offsets_db=offsets_db)
    sequence: list[str] = []
    for s in walk.sightings:
        zone = naive.observe(s)
        if zone is not None and (not sequence or sequence[-1] != zone):
            sequence.append(zone)
    return tuple(sequence)


@dataclass(frozen=True, slots=True)
class FlapScore:
    """Zone changes reported beyond the true ones, over a set of walks."""

    walks: int
    true_changes: int
    reported_changes: int
    spurious_changes: int  # per walk max(0, reported - true), summed
    exact_walks: int  # walks whose reported sequence is exactly the true one
    walk_hours: float

    @property
    def per_walk(self) -> float:
        return self.spurious_changes / self.walks if self.walks else 0.0

    @property
    def per_hour(self) -> float:
        return self.spurious_changes / self.walk_hours if self.walk_hours else 0.0

    def line(self, label: str) -> str:
        return (
            f"{label:<34} spurious zone changes {self.spurious_changes:>6} "
            f"({self.per_walk:6.2f}/walk, {self.per_hour:7.1f}/shopper-hour), "
            f"exact sequence {self.exact_walks}/{self.walks}"
        )


def flap_score(results: Iterable[tuple[Walk, Sequence[str]]]) -> FlapScore:
    """Score reported zone sequences against their walks' truth."""
    walks = true_changes = reported = spurious = exact = 0
    seconds = 0.0
    for walk, zones in results:
        walks += 1
        truth = walk.zones
        true_n = max(len(truth) - 1, 0)
        got_n = max(len(zones) - 1, 0)
        true_changes += true_n
        reported += got_n
        spurious += max(0, got_n - true_n)
        exact += tuple(zones) == truth
        seconds += walk.duration_s
    return FlapScore(walks, true_changes, reported, spurious, exact, seconds / 3600.0)
