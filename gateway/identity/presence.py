"""Presence: which zone each opted-in shopper is in, decided from BLE sightings.

Input is every resolved ``Sighting`` (a shopper or a fixed reference beacon heard
by one scanner); output is ``PresenceEvent``s (arrived, zone_changed, dwelled,
left) for the pipeline. Pure: no I/O, no asyncio, time comes in with each call.

Why it is built this way (the lessons of ESPresense and Bermuda, two open-source
room-presence systems that are known to flap between rooms):

1. **Compare calibrated RSSI, never distances.** Both projects turn RSSI into
   metres with a per-device "rssi@1m" and a per-node absorption factor, then pick
   the nearest node. ESPresense #692 ("Calibration help") shows where that goes:
   six nodes stacked over three floors, the owner re-tuning absorption and
   rssi@1m day after day, the node in the room still reporting a longer distance
   than the one a floor below, and the workaround an automation that waits a
   minute before believing a room change. The zone question only asks which
   scanner hears this phone best *right now*; for one phone at one moment its
   transmit power cancels out, so no per-device figure is needed. What does not
   cancel is the receiver: antenna, enclosure and mounting differ by several dB
   between scanners (Bermuda #329, one proxy per room and presence jumping
   between three rooms, is debugged by swapping proxies and power supplies). So
   each scanner gets an offset, measured rather than guessed: fixed reference
   beacons (``firmware_configs/beacons/``) with a known expected RSSI at their
   scanner; offset = expected - median observed (``Calibrator``).

2. **Smooth with a windowed upper quantile.** ESPresense smooths with a 1-Euro
   filter, a low-pass whose cutoff rises with the signal's rate of change. It was
   designed for pointing devices, where the derivative means motion; with
   4-6 dB of RSSI noise the derivative is mostly noise, so the filter opens up on
   noise, and ESPresense had to bolt a median trim onto it
   (``FilteredDistance.cpp``); its per-sample time constants also over-smooth
   slow advertisers (ESPresense #770). A Kalman filter assumes zero-mean Gaussian
   noise, but BLE noise is one-sided: body shadowing and fades pull readings down
   by 8-15 dB for seconds while nothing lifts a reading much above the
   line-of-sight value. Bermuda's author says exactly that in ``calculate_data``
   ("noise in RSSI readings is VERY asymmetric ... a closer distance is always
   more accurate") and its filter hugs the nearest readings of a window; newer
   Bermuda also clamps outliers to a MAD-scaled median (``rssi_filters.py``).
   Here: per (shopper, scanner), the ``quantile`` (0.75) of the readings of the
   last ``window_s`` seconds, then a light exponential average over that. A
   minority of shadowed readings does not move the quantile at all (a Kalman
   filter or a plain EMA averages them in); a missed advert is no reading rather
   than a weak one, so dropouts cause no fake decay; the window and the average
   are in seconds, so latency does not depend on the advertising rate; the cost
   is sorting at most ``max_samples`` floats. Readings near the radio's floor
   (``floor_dbm``) keep the shopper present but do not place them: only the
   luckiest adverts get reported there, a bias that differs per receiver.

3. **Hysteresis in dB and in time.** Smoothing cannot stop flapping where two
   scanners really are about equal, or while a shopper keeps their back to the
   zone's scanner. A challenger zone takes over only when its score beats the
   current zone's by ``margin_db`` at every evaluation for ``min_dwell_s``.
   Bermuda's hysteresis is a percentage difference of distances, and a bug in it
   made rooms over-sticky at close range (Bermuda #669); a dB margin is the same
   distance ratio at every range, with nothing to convert.

4. **Bounded state.** Bermuda kept every address it ever saw: loop time grew
   from 5 ms to over 100 ms in five days (Bermuda PR #170), and users still see
   its CPU climb from 10 % to 50 % over a week (Bermuda #482). Here state exists
   only for shoppers heard within ``left_after_s``, is dropped whole when they
   leave or opt out, is capped at ``max_tracked`` (least recently heard evicted
   first), and every buffer has a fixed size.

A zone's score is the best calibrated estimate among its scanners: several
scanners in one zone extend its coverage, and one shadowed scanner does not make
the shopper leave a zone another of its scanners still hears well.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.events import Sighting

EventKind = Literal["arrived", "zone_changed", "dwelled", "left"]

# What HCI can report in an LE advertising report (-127..+20 dBm); anything else
# is a broken satellite or a hostile payload, never a measurement.
RSSI_MIN_DBM = -127.0
RSSI_MAX_DBM = 20.0


@dataclass(frozen=True, slots=True)
class PresenceParams:
    """Tuning of the presence decision; every value carries the reason for it.

    Figures quoted below are spurious zone changes over 400 seeded walks of
    ``gateway.testing.walks`` (29 with these defaults, against about 50,000 for
    the naive strongest-reading classifier), as ``bench/presence.py`` measures.

    The values store IT may change come from ``[presence]``, validated there
    (gateway/config.py ``PresenceSection``); the others are the constants below,
    each with its reason. Nothing is checked twice.
    """

    # Seconds of readings one estimate looks at. Long enough to hold 3+ readings
    # from a phone advertising at 1 Hz with 30 % of adverts missed, short enough
    # that a walker (about 1.2 m/s) moves under 5 m inside it.
    window_s: float = 4.0
    # Readings kept per (shopper, scanner): 4 s of a 4 Hz advertiser. A fast
    # (10 Hz) advertiser keeps its newest 16, which only shortens its window.
    max_samples: int = 16
    # Which quantile of the window is the estimate. Above the median because
    # noise is one-sided (shadowing and fades pull down, nothing pushes up), below
    # the maximum so that one constructive-multipath spike cannot carry it. The
    # median instead: 41 flaps.
    quantile: float = 0.75
    # Time constant (s) of an exponential average over the quantile: a slow
    # advertiser puts only 2-3 readings in a window, and their quantile still
    # jitters by 3 dB. Without this average: 72 flaps; the outliers the quantile
    # already threw out cannot come back through it. 0 turns it off.
    smoothing_tau_s: float = 2.0
    # A scanner that has not heard the shopper for this long stops counting for
    # its zone: twice the window, so a short dropout burst does not wipe it.
    stale_s: float = 8.0
    # Readings weaker than this (dBm, as received) say the shopper is around but
    # not where: near the radio's floor (ESP32 and Pi radios stop at -98..-100
    # dBm) a scanner reports only the adverts noise lifted above it, so weak
    # readings are biased upwards by an amount that differs per receiver, and
    # calibration offsets amplify it. About one noise sigma above the floor: with
    # no floor, 53 flaps, most of them once the shopper is out in the street.
    floor_dbm: float = -93.0
    # How much a challenger zone must beat the current one by (dB). About one
    # sigma of single-reading noise (4-6 dB), twice the smoothed estimate's own
    # jitter, while walking 3 m into the next zone adds 6-10 dB of difference.
    # 4 dB: 60 flaps; 6 dB: 14 flaps, but the slowest tenth of moves take 5 s
    # longer to report.
    margin_db: float = 5.0
    # ...and for how long, without a break (s). What is left after smoothing is
    # mostly a shopper with their back to the zone's only scanner (8-15 dB of
    # body) for several seconds. 4 s: 98 flaps; 8 s: 10 flaps, but every move is
    # reported 2 s later (median 11 s after the crossing instead of 9 s).
    min_dwell_s: float = 6.0
    # A new shopper is announced after being heard this long (and this many
    # times): at 40 % loss a 1 Hz advertiser is missed by a scanner five times
    # running only 1 % of the time, so by then every scanner nearby has had its
    # say (deciding at 2 s: 45 flaps, mostly arrivals in the wrong zone). And one
    # stray advert from someone passing the shop window is not an arrival.
    arrive_after_s: float = 5.0
    arrive_min_sightings: int = 3
    # "dwelled" fires once per stay after this long in one zone: half a minute is
    # when a stop at a shelf stops being walking past it.
    dwelled_after_s: float = 30.0
    # Silence from every scanner for this long means the shopper left. Phones in
    # pockets go quiet for 10-20 s at a time; a minute rides that out.
    left_after_s: float = 60.0
    # A sighting older than the shopper's newest by up to this much is taken as
    # "now" (satellites report over MQTT and may trail the Pi's radio); older
    # than that it is rejected as late rather than rewriting the past.
    max_lateness_s: float = 2.0
    # A sighting stamped further than this past the last tick is rejected: one
    # bad clock must not keep a shopper "present" for ever.
    max_future_s: float = 30.0
    # Most shoppers tracked at once; the least recently heard is evicted beyond
    # it. A hypermarket at peak holds about 1,000 people; with at most a few
    # hundred opted in, this leaves room and caps memory at a few MB.
    max_tracked: int = 2000
    # Readings kept per reference beacon: about three minutes at 1 Hz with
    # dropouts. Receivers do not drift in minutes, so a long window costs nothing
    # and keeps the median within about 0.5 dB; shoppers walking past a beacon (a
    # few seconds of shadow) stay a minority the median ignores.
    calibration_samples: int = 128
    # A beacon's offset counts only once it rests on this many readings.
    calibration_min_samples: int = 10
    # Offsets are clamped to this (dB): beyond it the beacon is misplaced or the
    # scanner is broken, and a wild offset would move every shopper.
    max_offset_db: float = 20.0


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A presence change for one shopper, for the pipeline.

    ``ts`` is when the tracker decided (events come out in time order). Durations
    start from the evidence, not the decision: a stay begins when the new zone
    first started to lead, a visit when the shopper was first heard.
    """

    kind: EventKind
    shopper: str
    zone: str  # the zone arrived in, moved to, dwelled in, or last seen in (left)
    ts: float
    previous_zone: str | None = None  # zone_changed: the zone left behind
    dwell_s: float = 0.0  # zone_changed/left: time spent in the zone left; dwelled: so far
    visit_s: float = 0.0  # time since the shopper was first heard (left: until last heard)
    # The shopper's open visit, set by the shopper flow once the visit book has seen the
    # event (the tracker knows nothing of visits): later stages need not look it up.
    visit: str | None = None


@dataclass(frozen=True, slots=True)
class ReferenceBeacon:
    """A fixed beacon next to one scanner, with the RSSI that scanner should hear."""

    beacon_id: str  # the sighting subject the resolver gives it
    scanner: str
    expected_rssi_dbm: float
    zone: str | None = None  # where store IT says it is; checked against the scanner's zone


class Calibrator:
    """Per-scanner RSSI offsets from reference beacons: expected - median(observed).

    Only readings by the beacon's own scanner count (other scanners hear it
    through shelves and people, at distances nobody measured). A scanner with
    several beacons gets the mean of their offsets. A beacon that falls silent
    keeps its last offset: receivers do not drift, and a silent beacon shows in
    ``beacon_status()`` (the tracker's ``stats()["beacons"]``, so health) with the
    age of its last reading.
    """

    def __init__(self, beacons: Iterable[ReferenceBeacon], params: PresenceParams) -> None:
        self._params = params
        self._beacons: dict[str, ReferenceBeacon] = {}
        self._readings: dict[str, array[float]] = {}
        self._next: dict[str, int] = {}
        self._count: dict[str, int] = {}
        self._last_s: dict[str, float] = {}
        for beacon in beacons:
            if beacon.beacon_id in self._beacons:
                raise ValueError(f"reference beacon {beacon.beacon_id!r} is listed twice")
            if not math.isfinite(beacon.expected_rssi_dbm):
                raise ValueError(f"reference beacon {beacon.beacon_id!r}: expected RSSI not finite")
            self._beacons[beacon.beacon_id] = beacon
            self._readings[beacon.beacon_id] = array("d", [0.0]) * params.calibration_samples
            self._next[beacon.beacon_id] = 0
            self._count[beacon.beacon_id] = 0

    @property
    def beacons(self) -> Mapping[str, ReferenceBeacon]:
        return self._beacons

    def observe(self, beacon_id: str, scanner: str, rssi: float, ts: float) -> bool:
        """Take one reading (already validated); False when it is not one we calibrate on."""
        beacon = self._beacons.get(beacon_id)
        if beacon is None or beacon.scanner != scanner:
            return False
        ring = self._readings[beacon_id]
        i = self._next[beacon_id]
        ring[i] = rssi
        self._next[beacon_id] = (i + 1) % len(ring)
        self._count[beacon_id] = min(self._count[beacon_id] + 1, len(ring))
        self._last_s[beacon_id] = max(ts, self._last_s.get(beacon_id, ts))
        return True

    def offsets(self) -> dict[str, float]:
        """Offset (dB) to add to each calibrated scanner's readings."""
        per_scanner: dict[str, list[float]] = {}
        for beacon_id, beacon in self._beacons.items():
            offset = self._beacon_offset(beacon_id)
            if offset is not None:
                per_scanner.setdefault(beacon.scanner, []).append(offset)
        return {scanner: sum(v) / len(v) for scanner, v in per_scanner.items()}

    def _beacon_offset(self, beacon_id: str) -> float | None:
        n = self._count[beacon_id]
        if n < self._params.calibration_min_samples:
            return None
        observed = _median(self._readings[beacon_id][:n])
        limit = self._params.max_offset_db
        return min(limit, max(-limit, self._beacons[beacon_id].expected_rssi_dbm - observed))

    def beacon_status(self, now_s: float | None) -> dict[str, dict[str, Any]]:
        """Per beacon: readings held, its own offset, seconds since its last reading.

        An offset at ``max_offset_db`` means a misplaced beacon or a broken
        scanner; an age of minutes means a flat battery (None: never heard, or
        ``now_s`` None because time has not started).
        """
        return {
            beacon_id: {
                "scanner": beacon.scanner,
                "readings": self._count[beacon_id],
                "offset_db": self._beacon_offset(beacon_id),
                "age_s": (
                    # A reading may be stamped up to max_future_s ahead of the last
                    # tick; it is fresh, not from the future.
                    round(max(0.0, now_s - self._last_s[beacon_id]), 1)
                    if now_s is not None and beacon_id in self._last_s
                    else None
                ),
            }
            for beacon_id, beacon in self._beacons.items()
        }


def _median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


class _ScannerTrack:
    """The recent readings of one shopper at one scanner, and their estimate."""

    __slots__ = ("estimate", "last_s", "next", "times", "values")

    def __init__(self, size: int) -> None:
        self.values = array("d", [0.0]) * size
        # -inf marks an empty slot: it is older than any window.
        self.times = array("d", [-math.inf]) * size
        self.next = 0
        self.estimate = -math.inf
        self.last_s = -math.inf

    def add(self, rssi: float, ts: float, window_s: float, quantile: float, tau_s: float) -> None:
        i = self.next
        dt = ts - self.last_s
        self.values[i] = rssi
        self.times[i] = ts
        self.next = (i + 1) % len(self.values)
        self.last_s = ts
        horizon = ts - window_s
        recent = sorted([v for v, t in zip(self.values, self.times, strict=True) if t >= horizon])
        # Nearest rank; the reading just added is always in the window.
        q = recent[int(quantile * (len(recent) - 1) + 0.5)]
        if tau_s <= 0 or self.estimate == -math.inf or dt >= window_s:
            self.estimate = q
        else:
            self.estimate += (1.0 - math.exp(-dt / tau_s)) * (q - self.estimate)


class _Shopper:
    """Everything known about one shopper; dropped whole on leave, evict or forget."""

    __slots__ = (
        "arrived",
        "dwelled",
        "first_s",
        "last_s",
        "pending",
        "pending_since_s",
        "sightings",
        "tracks",
        "zone",
        "zone_since_s",
    )

    def __init__(self, ts: float) -> None:
        self.tracks: dict[str, _ScannerTrack] = {}
        self.first_s = ts
        self.last_s = ts
        self.sightings = 0
        self.arrived = False
        self.zone = ""
        self.zone_since_s = ts
        self.pending: str | None = None
        self.pending_since_s = ts
        self.dwelled = False


class PresenceTracker:
    """Turns sightings into zone events for every opted-in shopper in the store.

    ``scanner_zones`` maps each scanner id ("pi" or a satellite id) to its zone;
    ``offsets_db`` are fixed per-scanner offsets for scanners without a
    reference beacon; ``beacons`` are the reference beacons whose sightings
    calibrate the others (their offsets replace the fixed ones).
    """

    def __init__(
        self,
        scanner_zones: Mapping[str, str],
        params: PresenceParams | None = None,
        offsets_db: Mapping[str, float] | None = None,
        *,
        beacons: Iterable[ReferenceBeacon] = (),
    ) -> None:
        if not scanner_zones:
            raise ValueError("presence needs at least one scanner with a zone")
        self.params = params or PresenceParams()
        self._zone_of_scanner = dict(scanner_zones)
        self._fixed_offsets = {k: float(v) for k, v in (offsets_db or {}).items()}
        for scanner, offset in self._fixed_offsets.items():
            if scanner not in self._zone_of_scanner:
                raise ValueError(f"offset for unknown scanner {scanner!r}")
            if not math.isfinite(offset):
                raise ValueError(f"offset for scanner {scanner!r} is not finite")
        beacons = tuple(beacons)
        for beacon in beacons:
            zone = self._zone_of_scanner.get(beacon.scanner)
            if zone is None:
                raise ValueError(
                    f"reference beacon {beacon.beacon_id!r} sits at unknown scanner "
                    f"{beacon.scanner!r}"
                )
            if beacon.zone is not None and beacon.zone != zone:
                raise ValueError(
                    f"reference beacon {beacon.beacon_id!r} is listed in zone {beacon.zone!r} "
                    f"but its scanner {beacon.scanner!r} is in zone {zone!r}"
                )
        self.calibrator = Calibrator(beacons, self.params)
        self._offsets = dict(self._fixed_offsets)
        self._calibration_dirty = False
        # Ordered by last update: the front is the least recently heard.
        self._shoppers: OrderedDict[str, _Shopper] = OrderedDict()
        self._clock_s: float | None = None  # the last tick's time
        self._accepted = 0
        self._reference_accepted = 0
        self._rejected: Counter[str] = Counter()
        self._events: Counter[str] = Counter()
        self._evicted = 0
        self._below_floor = 0
        self._reference_other_scanner = 0
        self._bad_ticks = 0

    # -- the hot path ---------------------------------------------------------

    def observe(self, s: Sighting) -> list[PresenceEvent]:
        """Take one sighting; return the events it caused (usually none).

        Invalid sightings are counted by reason in ``stats()`` and dropped.
        """
        rssi = s.rssi
        if not (isinstance(rssi, int | float) and RSSI_MIN_DBM <= rssi <= RSSI_MAX_DBM):
            return self._reject("bad_rssi")  # NaN fails both comparisons too
        ts = s.ts
        if not (isinstance(ts, int | float) and math.isfinite(ts)):
            return self._reject("bad_ts")
        if self._clock_s is not None and ts > self._clock_s + self.params.max_future_s:
            return self._reject("future")
        if s.scanner not in self._zone_of_scanner:
            return self._reject("unknown_scanner")
        if not isinstance(s.subject, str) or not s.subject:
            return self._reject("bad_subject")
        if s.reference:
            beacon = self.calibrator.beacons.get(s.subject)
            if beacon is None:
                return self._reject("unknown_beacon")
            # Other scanners hear the beacon too, at distances nobody measured:
            # normal, not an error, and not used.
            if self.calibrator.observe(s.subject, s.scanner, float(rssi), float(ts)):
                self._reference_accepted += 1
                self._calibration_dirty = True
            else:
                self._reference_other_scanner += 1
            return []
        return self._observe_shopper(s.subject, s.scanner, float(rssi), float(ts))

    def _observe_shopper(
        self, shopper_id: str, scanner: str, rssi: float, ts: float
    ) -> list[PresenceEvent]:
        p = self.params
        out: list[PresenceEvent] = []
        sh = self._shoppers.get(shopper_id)
        if sh is None:
            if self._clock_s is not None and ts < self._clock_s - p.stale_s:
                return self._reject("late")
            if len(self._shoppers) >= p.max_tracked:
                self._evict_oldest(ts, out)
            sh = self._shoppers[shopper_id] = _Shopper(ts)
        else:
            if ts < sh.last_s - p.max_lateness_s:
                return self._reject("late")
            ts = max(ts, sh.last_s)
            self._shoppers.move_to_end(shopper_id)
        self._accepted += 1
        sh.sightings += 1
        sh.last_s = ts
        if rssi < p.floor_dbm:
            self._below_floor += 1
            return out
        track = sh.tracks.get(scanner)
        if track is None:
            track = sh.tracks[scanner] = _ScannerTrack(p.max_samples)
        track.add(rssi, ts, p.window_s, p.quantile, p.smoothing_tau_s)
        self._decide(shopper_id, sh, ts, out)
        return out

    def _decide(self, shopper_id: str, sh: _Shopper, now: float, out: list[PresenceEvent]) -> None:
        p = self.params
        zone_of = self._zone_of_scanner
        offsets = self._offsets
        scores: dict[str, float] = {}
        horizon = now - p.stale_s
        for scanner, track in sh.tracks.items():
            if track.last_s < horizon:
                continue
            zone = zone_of[scanner]
            score = track.estimate + offsets.get(scanner, 0.0)
            if score > scores.get(zone, -math.inf):
                scores[zone] = score
        if not scores:
            return
        best_zone = max(scores, key=scores.__getitem__)
        best = scores[best_zone]
        if not sh.arrived:
            if sh.sightings >= p.arrive_min_sightings and now - sh.first_s >= p.arrive_after_s:
                sh.arrived = True
                sh.zone = best_zone
                sh.zone_since_s = sh.first_s
                sh.dwelled = False
                self._emit(out, "arrived", shopper_id, best_zone, now)
            return
        current = scores.get(sh.zone, -math.inf)
        if best_zone != sh.zone and best - current >= p.margin_db:
            if sh.pending != best_zone:
                sh.pending = best_zone
                sh.pending_since_s = now
            if now - sh.pending_since_s >= p.min_dwell_s:
                entered = sh.pending_since_s
                previous = sh.zone
                self._emit(
                    out,
                    "zone_changed",
                    shopper_id,
                    best_zone,
                    now,
                    previous_zone=previous,
                    dwell_s=max(0.0, entered - sh.zone_since_s),
                    visit_s=now - sh.first_s,
                )
                sh.zone = best_zone
                sh.zone_since_s = entered
                sh.pending = None
                sh.dwelled = False
        else:
            sh.pending = None
        if not sh.dwelled and now - sh.zone_since_s >= p.dwelled_after_s:
            sh.dwelled = True
            self._emit(
                out,
                "dwelled",
                shopper_id,
                sh.zone,
                now,
                dwell_s=now - sh.zone_since_s,
                visit_s=now - sh.first_s,
            )

    # -- time passing -----------------------------------------------------------

    def tick(self, now_s: float) -> list[PresenceEvent]:
        """Let time pass: absences become ``left``, stays ``dwelled``, stale readings go.

        Call it about once a second; its cost is one pass over the tracked
        shoppers (never more than ``max_tracked``).
        """
        if not (isinstance(now_s, int | float) and math.isfinite(now_s)):
            self._bad_ticks += 1
            return []
        p = self.params
        if self._clock_s is None or now_s > self._clock_s:
            self._clock_s = float(now_s)
        now = self._clock_s
        if self._calibration_dirty:
            self._calibration_dirty = False
            self._offsets = {**self._fixed_offsets, **self.calibrator.offsets()}
        out: list[PresenceEvent] = []
        gone: list[str] = []
        stale_before = now - p.stale_s
        for shopper_id, sh in self._shoppers.items():
            if now - sh.last_s >= p.left_after_s:
                gone.append(shopper_id)
                continue
            stale = [k for k, t in sh.tracks.items() if t.last_s < stale_before]
            for scanner in stale:
                del sh.tracks[scanner]
            self._decide(shopper_id, sh, now, out)
        for shopper_id in gone:
            self._leave(shopper_id, now, out)
        return out

    def forget(self, shopper_id: str) -> bool:
        """Opt-out erasure: drop everything about the shopper at once, emit nothing."""
        return self._shoppers.pop(shopper_id, None) is not None

    # -- what others may ask ------------------------------------------------------

    def zone_of(self, shopper_id: str) -> str | None:
        """The shopper's current zone; None when not (yet) present."""
        sh = self._shoppers.get(shopper_id)
        return sh.zone if sh is not None and sh.arrived else None

    def offsets_db(self) -> dict[str, float]:
        """The offsets in use (calibrated where a reference beacon allows, else fixed)."""
        return dict(self._offsets)

    def stats(self) -> dict[str, Any]:
        """Counters for health: nothing here names a shopper."""
        present = sum(1 for sh in self._shoppers.values() if sh.arrived)
        return {
            "tracked": len(self._shoppers),
            "present": present,
            "sightings": self._accepted,
            "below_floor": self._below_floor,
            "reference_sightings": self._reference_accepted,
            "reference_other_scanner": self._reference_other_scanner,
            "rejected": dict(self._rejected),
            "rejected_total": sum(self._rejected.values()),
            "events": dict(self._events),
            "evicted": self._evicted,
            "bad_ticks": self._bad_ticks,
            "offsets_db": {k: round(v, 1) for k, v in self._offsets.items()},
            # Aged at the last tick: stats() takes no time, and ticks come every second.
            "beacons": self.calibrator.beacon_status(self._clock_s),
        }

    # -- internals ----------------------------------------------------------------

    def _reject(self, reason: str) -> list[PresenceEvent]:
        self._rejected[reason] += 1
        return []

    def _emit(
        self,
        out: list[PresenceEvent],
        kind: EventKind,
        shopper_id: str,
        zone: str,
        ts: float,
        **extra: Any,
    ) -> None:
        self._events[kind] += 1
        out.append(PresenceEvent(kind=kind, shopper=shopper_id, zone=zone, ts=ts, **extra))

    def _leave(self, shopper_id: str, now: float, out: list[PresenceEvent]) -> None:
        sh = self._shoppers.pop(shopper_id)
        if sh.arrived:
            self._emit(
                out,
                "left",
                shopper_id,
                sh.zone,
                now,
                dwell_s=max(0.0, sh.last_s - sh.zone_since_s),
                visit_s=sh.last_s - sh.first_s,
            )

    def _evict_oldest(self, now: float, out: list[PresenceEvent]) -> None:
        shopper_id = next(iter(self._shoppers))
        self._evicted += 1
        self._leave(shopper_id, now, out)
