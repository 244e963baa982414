"""Visits: one visit per shopper per trip, from BLE presence, POS, kiosk and HQ signals."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.identity.presence import PresenceEvent
from gateway.identity.visits import SOURCES, VisitEvent, VisitParams, VisitTracker

T0 = 1_795_000_000.0
GAP = VisitParams().visit_gap_s


def counting_ids() -> Callable[[], str]:
    """Visit ids v1, v2, ... so that tests can name the visit they expect."""
    numbers = itertools.count(1)
    return lambda: f"v{next(numbers)}"


def tracker(**params: float) -> VisitTracker:
    return VisitTracker(VisitParams(**params), new_visit_id=counting_ids())  # type: ignore[arg-type]


def presence(
    kind: str = "arrived", ts: float = T0, zone: str = "entrance", shopper: str = "s1"
) -> PresenceEvent:
    return PresenceEvent(kind=kind, shopper=shopper, zone=zone, ts=ts)  # type: ignore[arg-type]


def kinds(events: list[VisitEvent]) -> list[str]:
    return [e.kind for e in events]


# -- one trip, one visit -------------------------------------------------------------


def test_ble_arrival_then_left_then_a_pos_scan_within_the_gap_is_one_visit() -> None:
    """A shopper BLE lost at the till (phone in a bag) who then scans a card keeps one visit."""
    visits = tracker()
    events = visits.on_presence(presence("arrived", T0, "entrance"))
    events += visits.on_presence(presence("zone_changed", T0 + 300, "checkout"))
    events += visits.on_presence(presence("left", T0 + 420, "checkout"))
    events += visits.tick(T0 + 600)
    events += visits.signal("s1", "pos", T0 + 600, zone="checkout")
    events += visits.tick(T0 + 600 + GAP - 1)

    assert kinds(events) == ["visit_started"]
    assert visits.visit_of("s1") == "v1"

    (ended,) = visits.tick(T0 + 600 + GAP)
    assert (ended.kind, ended.visit_id) == ("visit_ended", "v1")
    assert ended.sources == ("ble", "pos")
    assert ended.zones == ("entrance", "checkout")
    assert ended.ts == T0 + 600
    assert ended.duration_s == 600
    assert visits.visit_of("s1") is None


def test_a_pos_scan_on_its_own_opens_a_visit() -> None:
    """A shopper with Bluetooth off still gets a visit, made of their loyalty scan."""
    visits = tracker()

    (started,) = visits.signal("s1", "pos", T0, zone="checkout")

    assert (started.kind, started.visit_id, started.ts) == ("visit_started", "v1", T0)
    assert started.sources == ("pos",)
    assert started.zones == ("checkout",)
    assert started.duration_s == 0


def test_sources_are_listed_once_each_in_order_of_first_signal() -> None:
    """HQ's arrival, then BLE, then a kiosk and BLE again read hq_arrival, ble, kiosk."""
    visits = tracker()
    visits.signal("s1", "hq_arrival", T0)
    visits.on_presence(presence("arrived", T0 + 60))
    visits.signal("s1", "kiosk", T0 + 120, zone="produce")
    visits.on_presence(presence("left", T0 + 300))

    (ended,) = visits.tick(T0 + 300 + GAP)
    assert ended.sources == ("hq_arrival", "ble", "kiosk")


def test_zones_are_kept_in_order_with_consecutive_repeats_merged() -> None:
    """entrance, entrance, produce, produce, entrance reads entrance, produce, entrance."""
    visits = tracker()
    for i, zone in enumerate(["entrance", "entrance", "produce", "produce", "entrance"]):
        visits.signal("s1", "ble", T0 + i, zone=zone)
    visits.signal("s1", "pos", T0 + 10)  # no zone: the path is unchanged

    (ended,) = visits.tick(T0 + 10 + GAP)
    assert ended.zones == ("entrance", "produce", "entrance")


# -- the gap -------------------------------------------------------------------------


def test_a_silence_longer_than_the_gap_makes_two_visits() -> None:
    """Two POS scans further apart than visit_gap_s are two visits with different ids."""
    visits = tracker()
    events = visits.signal("s1", "pos", T0)
    events += visits.tick(T0 + GAP)
    events += visits.signal("s1", "pos", T0 + GAP + 1)

    assert kinds(events) == ["visit_started", "visit_ended", "visit_started"]
    assert [e.visit_id for e in events] == ["v1", "v1", "v2"]
    assert visits.visit_of("s1") == "v2"


def test_a_signal_after_the_gap_ends_the_old_visit_before_any_tick() -> None:
    """A signal visit_gap_s after the last ends that visit (at its last signal), opens the next."""
    visits = tracker()
    visits.signal("s1", "kiosk", T0)
    visits.signal("s1", "kiosk", T0 + 60)

    ended, started = visits.signal("s1", "pos", T0 + 60 + GAP)

    assert (ended.kind, ended.visit_id) == ("visit_ended", "v1")
    assert (ended.ts, ended.duration_s) == (T0 + 60, 60)
    assert (started.kind, started.visit_id, started.sources) == ("visit_started", "v2", ("pos",))


def test_presence_holds_the_visit_open_however_long_the_shopper_stays() -> None:
    """A shopper who stays in one zone (no presence events for an hour) keeps their visit."""
    visits = tracker()
    visits.on_presence(presence("arrived", T0))
    visits.on_presence(presence("dwelled", T0 + 30))

    assert visits.tick(T0 + 3600) == []
    assert visits.visit_of("s1") == "v1"
    assert visits.stats()["held_by_presence"] == 1


def test_left_starts_the_gap_rather_than_ending_the_visit() -> None:
    """After BLE 'left' the visit ends visit_gap_s later, not at once."""
    visits = tracker()
    visits.on_presence(presence("arrived", T0))
    assert visits.on_presence(presence("left", T0 + 2000)) == []

    assert visits.tick(T0 + 2000 + GAP - 1) == []
    (ended,) = visits.tick(T0 + 2000 + GAP)
    assert (ended.ts, ended.duration_s) == (T0 + 2000, 2000)


def test_left_without_an_open_visit_opens_none() -> None:
    """A lone 'left' is the end of a stay, not the start of a trip."""
    visits = tracker()

    assert visits.on_presence(presence("left", T0)) == []
    assert visits.visit_of("s1") is None
    assert visits.stats()["rejected"] == {"left_without_visit": 1}


# -- out of order --------------------------------------------------------------------


def test_a_late_hq_arrival_joins_the_open_visit_and_moves_its_start() -> None:
    """HQ's arrival (stamped in the car park) arriving after BLE's joins the visit BLE opened."""
    visits = tracker()
    visits.on_presence(presence("arrived", T0 + 300))

    assert visits.signal("s1", "hq_arrival", T0) == []

    visits.on_presence(presence("left", T0 + 900))
    (ended,) = visits.tick(T0 + 900 + GAP)
    assert ended.visit_id == "v1"
    assert ended.sources == ("ble", "hq_arrival")
    assert ended.duration_s == 900


def test_a_signal_older_than_the_open_visit_by_more_than_the_gap_is_dropped_as_late() -> None:
    """A signal from over visit_gap_s before the open visit's start is counted, not joined."""
    visits = tracker()
    visits.signal("s1", "pos", T0 + 2 * GAP)

    assert visits.signal("s1", "kiosk", T0) == []

    assert visits.stats()["rejected"] == {"late": 1}
    assert visits.stats()["signals"] == {"pos": 1}


def test_with_no_open_visit_a_signal_older_than_the_gap_is_dropped_as_late() -> None:
    """A signal whose visit would already have ended opens nothing."""
    visits = tracker()
    visits.tick(T0 + GAP + 1)

    assert visits.signal("s1", "pos", T0) == []
    assert visits.visit_of("s1") is None
    assert visits.stats()["rejected"] == {"late": 1}


def test_a_signal_stamped_past_max_future_is_refused() -> None:
    """A signal from a clock far ahead cannot hold a visit open on time that never passed."""
    visits = tracker(max_future_s=120)
    visits.tick(T0)

    assert visits.signal("s1", "pos", T0 + 121) == []
    assert visits.signal("s1", "pos", T0 + 120) != []
    assert visits.stats()["rejected"] == {"future": 1}


# -- privacy -------------------------------------------------------------------------


def test_forget_emits_nothing_and_drops_the_visit() -> None:
    """Opt-out drops the open visit at once: no event then, none later, no id to find."""
    visits = tracker()
    visits.on_presence(presence("arrived", T0))

    assert visits.forget("s1") is True
    assert visits.visit_of("s1") is None
    assert visits.tick(T0 + 10 * GAP) == []
    assert visits.stats()["open"] == 0
    assert visits.forget("s1") is False


def test_default_visit_ids_are_random_and_do_not_contain_the_shopper() -> None:
    """Two visits of one shopper get unrelated 16-hex-digit ids carrying nothing of the shopper."""
    visits = VisitTracker()
    (first,) = visits.signal("0123456789abcdef", "pos", T0)
    visits.forget("0123456789abcdef")
    (second,) = visits.signal("0123456789abcdef", "pos", T0)

    for visit_id in (first.visit_id, second.visit_id):
        assert re.fullmatch(r"[0-9a-f]{16}", visit_id)
    assert first.visit_id != second.visit_id
    assert first.visit_id != "0123456789abcdef"


def test_stats_hold_counts_and_never_a_shopper_or_visit_id() -> None:
    """Health figures name no shopper and no visit."""
    visits = tracker()
    visits.on_presence(presence("arrived", T0, shopper="shopper-7"))
    visits.signal("shopper-8", "kiosk", T0)
    visits.tick(T0 + GAP)

    text = json.dumps(visits.stats())
    assert "shopper-" not in text
    assert "v1" not in text and "v2" not in text
    assert visits.stats()["open"] == 1
    assert visits.stats()["ended"] == {"gap": 1}


# -- bounds --------------------------------------------------------------------------


def test_open_visits_are_capped_by_ending_the_least_recently_signalled() -> None:
    """Opening a visit beyond max_open ends the visit signalled longest ago, at its last signal."""
    visits = tracker(max_open=3)
    for i, shopper in enumerate(["a", "b", "c"]):
        visits.signal(shopper, "pos", T0 + i)
    visits.signal("a", "kiosk", T0 + 10)  # "b" is now the least recently signalled

    ended, started = visits.signal("d", "pos", T0 + 11)

    assert (ended.shopper, ended.kind, ended.ts) == ("b", "visit_ended", T0 + 1)
    assert (started.shopper, started.kind) == ("d", "visit_started")
    assert visits.stats()["open"] == 3
    assert visits.stats()["ended"] == {"evicted": 1}


def test_eviction_spares_visits_presence_holds_while_another_is_idle() -> None:
    """A shopper BLE says is here is not evicted while a merely idle visit exists."""
    visits = tracker(max_open=2)
    visits.on_presence(presence("arrived", T0, shopper="here"))
    visits.signal("idle", "pos", T0 + 1)

    ended, _ = visits.signal("new", "pos", T0 + 2)

    assert ended.shopper == "idle"
    assert visits.visit_of("here") == "v1"


def test_zones_are_capped_with_the_last_slot_following_the_newest_zone() -> None:
    """Beyond max_zones the path keeps its beginning and where the shopper is now."""
    visits = tracker(max_zones=3)
    for i, zone in enumerate(["z1", "z2", "z3", "z4", "z5"]):
        visits.signal("s1", "ble", T0 + i, zone=zone)

    (ended,) = visits.tick(T0 + 4 + GAP)
    assert ended.zones == ("z1", "z2", "z5")
    assert visits.stats()["zones_truncated"] == 2


def test_a_visit_held_open_longer_than_max_visit_s_is_ended() -> None:
    """A phone left in a locker ends its visit at max_visit_s, however present BLE says it is."""
    visits = tracker(max_visit_s=12 * 3600)
    visits.on_presence(presence("arrived", T0))

    assert visits.tick(T0 + 12 * 3600 - 1) == []
    (ended,) = visits.tick(T0 + 12 * 3600)
    assert (ended.ts, ended.duration_s) == (T0 + 12 * 3600, 12 * 3600)
    assert visits.stats()["ended"] == {"too_long": 1}


# -- hostile input -------------------------------------------------------------------


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf, True, 10**400, "1795000000"])
def test_a_hostile_timestamp_is_counted_and_ignored(ts: object) -> None:
    """NaN, infinities, a bool, an int beyond float and a string open nothing and are counted."""
    visits = tracker()

    assert visits.signal("s1", "pos", ts) == []  # type: ignore[arg-type]
    assert visits.on_presence(presence("arrived", ts)) == []  # type: ignore[arg-type]
    assert visits.visit_of("s1") is None
    assert visits.stats()["rejected"] == {"bad_ts": 2}


def test_a_hostile_tick_is_counted_and_a_clock_going_back_is_ignored() -> None:
    """tick(NaN) does nothing but count; an earlier tick neither closes nor reopens anything."""
    visits = tracker()
    visits.signal("s1", "pos", T0)

    assert visits.tick(math.nan) == []
    assert visits.tick(T0 + GAP - 1) == []
    assert visits.tick(T0 - 10**6) == []
    assert visits.stats()["bad_ticks"] == 1
    assert len(visits.tick(T0 + GAP)) == 1


def test_programmer_errors_raise_at_the_boundary() -> None:
    """An unknown source, an empty shopper, an empty zone or presence kind is a ValueError."""
    visits = tracker()
    with pytest.raises(ValueError, match="unknown visit source"):
        visits.signal("s1", "wifi", T0)
    with pytest.raises(ValueError, match="shopper"):
        visits.signal("", "pos", T0)
    with pytest.raises(ValueError, match="zone"):
        visits.signal("s1", "pos", T0, zone="")
    with pytest.raises(ValueError, match="presence event kind"):
        visits.on_presence(presence("teleported"))


SHOPPERS = st.sampled_from(["s1", "s2", "s3"])
TIMES = st.one_of(
    st.floats(min_value=T0 - 200, max_value=T0 + 2000),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1e308, 1e308, T0]),
)
ZONES = st.sampled_from([None, "entrance", "produce", "checkout"])
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("signal"), SHOPPERS, st.sampled_from(SOURCES), TIMES, ZONES),
        st.tuples(
            st.just("presence"),
            SHOPPERS,
            st.sampled_from(["arrived", "zone_changed", "dwelled", "left"]),
            TIMES,
            st.sampled_from(["entrance", "produce", "checkout"]),
        ),
        st.tuples(st.just("tick"), TIMES),
        st.tuples(st.just("forget"), SHOPPERS),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_random_signal_sequences_never_raise_nor_open_two_visits_for_one_shopper(
    steps: list[tuple],
) -> None:
    """Any mix of signals, presence, ticks and forgets keeps at most one open visit per shopper."""
    visits = VisitTracker(
        VisitParams(visit_gap_s=60, max_open=2, max_zones=3, max_visit_s=600),
        new_visit_id=counting_ids(),
    )
    open_ids: dict[str, str] = {}
    seen_ids: set[str] = set()
    for step in steps:
        if step[0] == "signal":
            _, shopper, source, ts, zone = step
            events = visits.signal(shopper, source, ts, zone)
        elif step[0] == "presence":
            _, shopper, kind, ts, zone = step
            events = visits.on_presence(presence(kind, ts, zone, shopper))
        elif step[0] == "tick":
            events = visits.tick(step[1])
        else:
            visits.forget(step[1])
            open_ids.pop(step[1], None)
            events = []
        for ev in events:
            if ev.kind == "visit_started":
                assert ev.shopper not in open_ids
                assert ev.visit_id not in seen_ids
                open_ids[ev.shopper] = ev.visit_id
                seen_ids.add(ev.visit_id)
            else:
                assert open_ids.pop(ev.shopper) == ev.visit_id
                assert ev.duration_s >= 0
            assert len(ev.zones) <= 3
        for shopper in ("s1", "s2", "s3"):
            assert visits.visit_of(shopper) == open_ids.get(shopper)
        assert visits.stats()["open"] == len(open_ids) <= 2
