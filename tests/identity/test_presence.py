"""Presence: zones from BLE sightings, against scripted walks and hostile input."""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.events import Sighting
from gateway.identity.presence import (
    PresenceEvent,
    PresenceParams,
    PresenceTracker,
    ReferenceBeacon,
)
from gateway.testing.walks import (
    DEMO_STORE,
    baseline_zones,
    flap_score,
    replay,
    reported_zones,
    simulate_walk,
    tracker_for,
)

T0 = 1_795_000_000.0
ZONES = {"pi": "entrance", "sat-a": "produce", "sat-b": "checkout"}
BEACONS_FILE = (
    Path(__file__).resolve().parents[2] / "firmware_configs/beacons/reference-beacons.toml"
)


def sighting(
    subject: str = "s1",
    scanner: str = "pi",
    rssi: float = -60.0,
    ts: float = T0,
    *,
    reference: bool = False,
) -> Sighting:
    return Sighting(subject=subject, scanner=scanner, rssi=rssi, ts=ts, reference=reference)


def feed(
    tracker: PresenceTracker,
    levels: Mapping[str, float],
    start: float,
    seconds: float,
    *,
    shopper: str = "s1",
    every_s: float = 0.5,
) -> tuple[list[PresenceEvent], float]:
    """Every scanner in ``levels`` hears ``shopper`` at its level every ``every_s``,
    with a tick each second; returns the events and the time after the last step."""
    events: list[PresenceEvent] = []
    steps = round(seconds / every_s)
    per_tick = round(1.0 / every_s)
    for i in range(steps):
        t = start + i * every_s
        for scanner, rssi in levels.items():
            events += tracker.observe(sighting(shopper, scanner, rssi, t))
        if i % per_tick == 0:
            events += tracker.tick(t)
    return events, start + steps * every_s


def kinds(events: list[PresenceEvent]) -> list[str]:
    return [e.kind for e in events]


def arrive(tracker: PresenceTracker, zone_levels: Mapping[str, float]) -> float:
    """Bring shopper s1 in and settle them; returns the time to carry on from."""
    events, t = feed(tracker, zone_levels, T0, 10)
    assert kinds(events) == ["arrived"]
    return t


# -- the acceptance walks ------------------------------------------------------


def test_a_seeded_walk_through_three_zones_reports_exactly_the_true_sequence() -> None:
    """A noisy, shadowed walk entrance -> produce -> checkout is reported as exactly that."""
    walk = simulate_walk(7)
    events = replay(walk, tracker_for())
    mine = [e for e in events if e.shopper == walk.shopper]

    assert walk.zones == ("entrance", "produce", "checkout")
    assert reported_zones(mine, walk.shopper) == walk.zones
    assert mine[0].kind == "arrived" and mine[-1].kind == "left"
    changes = [e for e in mine if e.kind == "zone_changed"]
    for change, true_stay in zip(changes, walk.truth[1:], strict=True):
        # Reported after the shopper really crossed, and while they are still there.
        assert true_stay.start_s < change.ts < true_stay.end_s


def test_over_100_walks_the_flap_rate_is_far_below_the_naive_baseline() -> None:
    """Over 100 seeded walks the tracker flaps at most a fifth as often as naive."""
    walks = [simulate_walk(seed) for seed in range(100)]
    tracker = flap_score((w, reported_zones(replay(w, tracker_for()), w.shopper)) for w in walks)
    naive = flap_score((w, baseline_zones(w)) for w in walks)

    print()
    print(naive.line("naive strongest raw RSSI"))
    print(tracker.line("presence tracker"))
    # The baseline must really flap, or beating it would prove nothing.
    assert naive.spurious_changes > 50 * naive.walks
    assert tracker.spurious_changes * 5 <= naive.spurious_changes
    assert tracker.per_walk <= 0.25
    assert tracker.exact_walks >= 90


# -- hysteresis ---------------------------------------------------------------------


def test_a_challenger_within_the_margin_never_takes_the_zone() -> None:
    """A zone leading by less than margin_db never wins; one leading by more does."""
    tracker = PresenceTracker(ZONES)
    t = arrive(tracker, {"pi": -60})

    events, t = feed(tracker, {"pi": -60, "sat-a": -56}, t, 120)
    assert "zone_changed" not in kinds(events)
    assert tracker.zone_of("s1") == "entrance"

    events, t = feed(tracker, {"pi": -60, "sat-a": -54}, t, 30)
    assert [e.zone for e in events if e.kind == "zone_changed"] == ["produce"]


def test_the_challenger_must_lead_without_a_break_for_min_dwell() -> None:
    """Bursts of lead shorter than min_dwell_s never switch; a lead that lasts does, not sooner."""
    tracker = PresenceTracker(ZONES, PresenceParams(min_dwell_s=10))
    t = arrive(tracker, {"pi": -60})

    for _ in range(5):
        events, t = feed(tracker, {"pi": -60, "sat-a": -45}, t, 4)
        events += feed(tracker, {"pi": -60, "sat-a": -75}, t, 10)[0]
        t += 10
        assert "zone_changed" not in kinds(events)

    start = t
    events, t = feed(tracker, {"pi": -60, "sat-a": -45}, t, 30)
    (change,) = [e for e in events if e.kind == "zone_changed"]
    assert (change.previous_zone, change.zone) == ("entrance", "produce")
    assert change.ts - start >= 10
    assert change.dwell_s > 60  # the time spent in the entrance before the move


def test_one_shadowed_scanner_does_not_move_a_shopper_out_of_a_two_scanner_zone() -> None:
    """A zone scores its best scanner: one shadowed satellite does not make the shopper leave."""
    tracker = PresenceTracker({"pi": "entrance", "sat-a": "produce", "sat-a2": "produce"})
    t = arrive(tracker, {"pi": -75, "sat-a": -60, "sat-a2": -62})
    assert tracker.zone_of("s1") == "produce"

    events, _ = feed(tracker, {"pi": -72, "sat-a": -88, "sat-a2": -62}, t, 60)
    assert "zone_changed" not in kinds(events)


def test_weak_readings_keep_a_shopper_present_but_never_move_them() -> None:
    """Readings under floor_dbm (a shopper out in the street) keep them present, in their zone."""
    tracker = PresenceTracker(ZONES)
    floor = tracker.params.floor_dbm
    t = arrive(tracker, {"sat-b": -65})

    events, t = feed(tracker, {"pi": floor - 1, "sat-a": floor - 4}, t, 50)
    assert events == []
    assert tracker.zone_of("s1") == "checkout"
    assert tracker.stats()["below_floor"] == 200

    (left,) = tracker.tick(t - 0.5 + 60)
    assert (left.kind, left.zone) == ("left", "checkout")


# -- arrival, dwell, departure, erasure ---------------------------------------------


def test_a_stray_advert_is_no_arrival_and_leaves_no_trace() -> None:
    """Two adverts from someone passing the window never make an arrival and are pruned silently."""
    tracker = PresenceTracker(ZONES)
    events = tracker.observe(sighting(ts=T0)) + tracker.observe(sighting(ts=T0 + 1))
    for second in range(120):
        events += tracker.tick(T0 + second)

    assert events == []
    assert tracker.stats()["tracked"] == 0


def test_left_fires_after_left_after_s_of_silence_and_drops_the_shopper() -> None:
    """Silence for left_after_s makes one 'left', in the last zone, and drops the state."""
    tracker = PresenceTracker(ZONES)
    last = arrive(tracker, {"pi": -60}) - 0.5

    assert tracker.tick(last + 59.5) == []
    (left,) = tracker.tick(last + 60)
    assert (left.kind, left.zone) == ("left", "entrance")
    assert left.visit_s == pytest.approx(last - T0)
    assert tracker.zone_of("s1") is None
    assert tracker.stats()["tracked"] == 0
    assert tracker.tick(last + 120) == []


def test_dwelled_fires_once_per_stay() -> None:
    """'dwelled' comes once for each stay longer than dwelled_after_s, in that stay's zone."""
    tracker = PresenceTracker(ZONES)
    events, t = feed(tracker, {"pi": -60}, T0, 100)
    more, t = feed(tracker, {"pi": -80, "sat-a": -60}, t, 100)
    events += more

    dwelled = [e for e in events if e.kind == "dwelled"]
    assert [e.zone for e in dwelled] == ["entrance", "produce"]
    assert all(e.dwell_s >= 30 for e in dwelled)


def test_forget_erases_the_shopper_at_once() -> None:
    """Opt-out drops everything about the shopper with no event; they start over if heard again."""
    tracker = PresenceTracker(ZONES)
    t = arrive(tracker, {"pi": -60})

    assert tracker.forget("s1") is True
    assert tracker.zone_of("s1") is None
    assert tracker.stats()["tracked"] == 0
    assert tracker.tick(t + 3600) == []
    assert tracker.forget("s1") is False
    assert tracker.observe(sighting(ts=t + 3600)) == []  # a new shopper: no arrival yet


# -- calibration ----------------------------------------------------------------------


def beacon_readings(
    beacon: str, scanner: str, level: float, start: float, n: int
) -> list[Sighting]:
    """``n`` readings around ``level`` (+/-2 dB), one in ten shadowed by a passer-by."""
    wobble = [2.0, -2.0, 1.0, -1.0, 0.0]
    return [
        sighting(
            beacon,
            scanner,
            level + wobble[i % 5] - (12.0 if i % 10 == 9 else 0.0),
            start + i,
            reference=True,
        )
        for i in range(n)
    ]


def test_calibration_removes_a_scanner_gain_error() -> None:
    """A satellite reading 10 dB hot steals the shopper until its reference beacon corrects it."""
    zones = {"pi": "entrance", "sat-b": "checkout"}
    beacons = [
        ReferenceBeacon("ref-pi", "pi", -59.0, "entrance"),
        ReferenceBeacon("ref-b", "sat-b", -59.0, "checkout"),
    ]
    # The shopper is nearer the Pi (-65 dBm) than sat-b (-72), which reads +10 dB.
    shopper = {"pi": -65, "sat-b": -62}

    uncalibrated = PresenceTracker(zones)
    arrive(uncalibrated, shopper)
    assert uncalibrated.zone_of("s1") == "checkout"

    calibrated = PresenceTracker(zones, beacons=beacons)
    readings = beacon_readings("ref-pi", "pi", -59, T0 - 100, 40)
    readings += beacon_readings("ref-b", "sat-b", -49, T0 - 100, 40)
    readings += beacon_readings("ref-pi", "sat-b", -70, T0 - 100, 40)  # heard afar: unused
    for s in sorted(readings, key=lambda s: s.ts):
        assert calibrated.observe(s) == []
    calibrated.tick(T0 - 1)
    offsets = calibrated.offsets_db()
    assert offsets["pi"] == pytest.approx(0.0, abs=0.5)
    assert offsets["sat-b"] == pytest.approx(-10.0, abs=0.5)

    arrive(calibrated, shopper)
    assert calibrated.zone_of("s1") == "entrance"


def test_reference_sightings_never_make_shopper_events() -> None:
    """Reference beacons feed calibration only; an unknown beacon is rejected and counted."""
    tracker = PresenceTracker(ZONES, beacons=[ReferenceBeacon("ref-pi", "pi", -59.0)])
    events = []
    for i in range(200):
        events += tracker.observe(sighting("ref-pi", "pi", -59, T0 + i, reference=True))
        events += tracker.observe(sighting("ref-pi", "sat-a", -80, T0 + i, reference=True))
        events += tracker.tick(T0 + i)
    events += tracker.observe(sighting("ref-nowhere", "pi", -59, T0 + 200, reference=True))

    stats = tracker.stats()
    assert events == []
    assert stats["tracked"] == 0
    assert stats["reference_sightings"] == 200
    assert stats["reference_other_scanner"] == 200
    assert stats["rejected"] == {"unknown_beacon": 1}


def test_stats_show_each_beacon_with_the_age_of_its_last_reading() -> None:
    """Per reference beacon, stats() (health) give readings, offset and the age of its last
    reading at the last tick: a beacon gone silent ages, one never heard has no age."""
    beacons = [
        ReferenceBeacon("ref-pi", "pi", -59.0, "entrance"),
        ReferenceBeacon("ref-b", "sat-b", -59.0, "checkout"),
    ]
    tracker = PresenceTracker(ZONES, beacons=beacons)
    for s in beacon_readings("ref-pi", "pi", -49, T0 - 100, 40):  # last reading at T0 - 61
        tracker.observe(s)
    assert tracker.stats()["beacons"]["ref-pi"]["age_s"] is None  # no tick yet: no clock
    tracker.tick(T0)
    status = tracker.stats()["beacons"]
    assert status["ref-pi"]["offset_db"] == pytest.approx(-10.0, abs=0.5)
    assert (status["ref-pi"]["scanner"], status["ref-pi"]["readings"]) == ("pi", 40)
    assert status["ref-pi"]["age_s"] == 61.0
    assert status["ref-b"] == {"scanner": "sat-b", "readings": 0, "offset_db": None, "age_s": None}
    tracker.tick(T0 + 600)
    assert tracker.stats()["beacons"]["ref-pi"]["age_s"] == 661.0


def test_a_beacon_listed_in_another_zone_than_its_scanner_is_refused() -> None:
    """A beacon whose zone and scanner disagree would mis-calibrate the scanner: refused."""
    with pytest.raises(ValueError, match="zone 'produce'"):
        PresenceTracker(ZONES, beacons=[ReferenceBeacon("ref-pi", "pi", -59.0, "produce")])
    with pytest.raises(ValueError, match="unknown scanner"):
        PresenceTracker(ZONES, beacons=[ReferenceBeacon("ref-x", "sat-x", -59.0)])


def test_the_shipped_reference_beacons_describe_the_demo_store() -> None:
    """firmware_configs/beacons/ is complete, well-formed and the store the walks simulate."""
    doc = tomllib.loads(BEACONS_FILE.read_text())
    entries = doc["reference_beacons"]
    uuid = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    keys = {"id", "uuid", "major", "minor", "zone", "scanner", "expected_rssi_dbm"}

    for entry in entries:
        assert keys <= entry.keys() <= keys | {"mount_distance_m", "notes"}
        assert uuid.match(entry["uuid"])
        assert 0 <= entry["major"] <= 0xFFFF and 0 <= entry["minor"] <= 0xFFFF
        assert entry["mount_distance_m"] == 1.0
    assert len({e["id"] for e in entries}) == len(entries)
    assert len({(e["major"], e["minor"]) for e in entries}) == len(entries)
    listed = tuple(
        ReferenceBeacon(e["id"], e["scanner"], e["expected_rssi_dbm"], e["zone"]) for e in entries
    )
    assert listed == DEMO_STORE.reference_beacons()
    PresenceTracker(DEMO_STORE.scanner_zones(), beacons=listed)  # coherent with the zones


# -- bounded state and hostile input ---------------------------------------------------


def test_state_stays_bounded_for_100k_shoppers_passing_through() -> None:
    """100,000 shoppers passing through never hold more than max_tracked, and all go in the end."""
    tracker = PresenceTracker(ZONES)
    cap = tracker.params.max_tracked
    peak = 0
    next_tick = T0
    for n in range(100_000):
        arrival = T0 + n * 0.01  # one new shopper every 10 ms, each heard for 6 s
        for k in range(4):
            tracker.observe(sighting(f"shopper-{n}", "pi", -60 - k, arrival + 2 * k))
        if arrival >= next_tick:
            tracker.tick(arrival)
            next_tick += 1.0
            peak = max(peak, tracker.stats()["tracked"])
    tracker.tick(T0 + 100_000 * 0.01 + 3600)

    stats = tracker.stats()
    assert peak == cap  # the cap was reached (the test pushed it) and held
    assert stats["tracked"] == 0
    assert stats["evicted"] > 0
    assert stats["events"]["left"] == stats["events"]["arrived"]


def test_late_and_future_sightings_are_rejected_and_counted() -> None:
    """A sighting older than max_lateness_s or stamped past the clock is dropped, not replayed."""
    tracker = PresenceTracker(ZONES)
    t = arrive(tracker, {"pi": -60})
    tracker.tick(t)

    tracker.observe(sighting(ts=t - 1))  # satellites trail a little: taken as now
    tracker.observe(sighting(ts=t - 5))
    tracker.observe(sighting(ts=t + 31))

    stats = tracker.stats()
    assert stats["rejected"] == {"late": 1, "future": 1}
    assert tracker.zone_of("s1") == "entrance"


HOSTILE_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-130, max_value=25),
    st.sampled_from([math.nan, math.inf, -math.inf, -127.0, 20.0, 0.0, -1e308]),
)
HOSTILE_SIGHTINGS = st.builds(
    Sighting,
    subject=st.sampled_from(["s1", "s2", "s3", "", "ref-pi", "ref-ghost"]),
    scanner=st.sampled_from(["pi", "sat-a", "sat-b", "sat-unknown", ""]),
    rssi=HOSTILE_FLOATS,
    ts=st.one_of(
        st.floats(min_value=T0 - 100, max_value=T0 + 300),
        st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e18]),
    ),
    reference=st.booleans(),
)
STEPS = st.lists(
    st.one_of(
        HOSTILE_SIGHTINGS,
        st.floats(min_value=T0 - 100, max_value=T0 + 400).map(lambda t: ("tick", t)),
        st.sampled_from([("tick", math.nan), ("forget", "s1")]),
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_hostile_sightings_never_raise_and_every_one_is_accounted_for(steps: list) -> None:
    """NaN/inf RSSI, wild clocks, unknown scanners: nothing raises, each sighting counted once."""
    tracker = PresenceTracker(
        ZONES,
        PresenceParams(max_tracked=2),
        beacons=[ReferenceBeacon("ref-pi", "pi", -59.0)],
    )
    record: list[PresenceEvent | str] = []  # events, and the shoppers forgotten between them
    observed = 0
    for step in steps:
        if isinstance(step, Sighting):
            observed += 1
            record += tracker.observe(step)
        elif step[0] == "tick":
            record += tracker.tick(step[1])
        else:
            tracker.forget(step[1])
            record.append(step[1])

    stats = tracker.stats()
    accounted = (
        stats["sightings"]
        + stats["reference_sightings"]
        + stats["reference_other_scanner"]
        + stats["rejected_total"]
    )
    assert accounted == observed
    assert stats["tracked"] <= 2
    # Per shopper: arrived first, changes chain from the zone before, left closes the stay.
    zone: dict[str, str | None] = {}
    for e in record:
        if isinstance(e, str):
            zone[e] = None
            continue
        assert e.zone
        if e.kind == "arrived":
            assert zone.get(e.shopper) is None
        elif e.kind == "left":
            zone[e.shopper] = None
            continue
        elif e.kind == "zone_changed":
            assert e.previous_zone == zone.get(e.shopper) != e.zone
        else:
            assert zone.get(e.shopper) == e.zone
        zone[e.shopper] = e.zone
