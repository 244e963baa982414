"""Resolution and the shopper flow: adverts in, sightings and consented events out."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import build_shoppers
from gateway.clock import ManualClock
from gateway.config import BleSection, GatewayConfig
from gateway.events import Sighting, UpEvent
from gateway.identity.eid import beacon_time, eid
from gateway.identity.flow import ShopperFlow
from gateway.identity.resolver import AdvertResolver, build_eid_table
from gateway.identity.tokens import WINDOW_S, build_table, day_key, token_at, window_of
from gateway.publish.upstream import OutboxSink
from gateway.sensing.frames import (
    APPLE_COMPANY_ID,
    EDDYSTONE_SERVICE_UUID,
    eddystone_eid_data,
    ibeacon_payload,
    shopper_token_payload,
)
from gateway.shoppers import Consent, EidTag, Profile
from gateway.testing.waiting import wait_until_async

T0 = 1_795_000_000.0
CID = 0xFFFF
ROOT = bytes(range(32))
OTHER_ROOT = bytes(range(100, 132))
REF_UUID = bytes.fromhex("e2c56db5dffb48d2b060d0f5a71096e0")


def day_keys(root: bytes, at: float = T0) -> dict[str, bytes]:
    today = dt.datetime.fromtimestamp(at, dt.UTC).date()
    return {
        (today + dt.timedelta(days=d)).isoformat(): day_key(root, today + dt.timedelta(days=d))
        for d in (0, 1)
    }


def token_advert(root: bytes = ROOT, at: float = T0, tx: int = -59) -> dict[int, bytes]:
    return {CID: shopper_token_payload(token_at(root, at), tx)}


def resolve(
    resolver: AdvertResolver, manufacturer: dict[int, bytes], service: dict[str, bytes]
) -> Sighting | None:
    """One advert through the hot path (scanner "-", rssi 0, ts 0): its sighting, or None."""
    got: list[Sighting] = []
    resolver.handler(got.append)("-", manufacturer, service, 0.0, 0.0)
    return got[0] if got else None


def make_resolver() -> AdvertResolver:
    r = AdvertResolver(CID, {(REF_UUID, 1, 7): "ref-entrance"})
    r.install(build_table([("s1", day_keys(ROOT))], window_of(T0)), {})
    return r


def test_token_advert_resolves_to_its_shopper_with_tx_power() -> None:
    """A current token under our company id resolves to the shopper, tx power decoded."""
    got = resolve(make_resolver(), token_advert(tx=-61), {})
    assert got == Sighting("s1", "-", 0.0, 0.0, -61, False)


def test_previous_and_next_window_tokens_resolve() -> None:
    """Tokens of w-1 and w+1 resolve (clock skew, BlueZ's merged state); w+2 does not."""
    r = make_resolver()
    assert resolve(r, token_advert(at=T0 - WINDOW_S), {}) is not None
    assert resolve(r, token_advert(at=T0 + WINDOW_S), {}) is not None
    assert resolve(r, token_advert(at=T0 + 2 * WINDOW_S), {}) is None


def test_foreign_adverts_are_only_counted() -> None:
    """An unknown token, an iBeacon nobody listed and random data resolve to nothing."""
    r = make_resolver()
    assert resolve(r, token_advert(root=OTHER_ROOT), {}) is None
    assert resolve(r, {APPLE_COMPANY_ID: ibeacon_payload(bytes(16), 1, 2, -59)}, {}) is None
    assert resolve(r, {0x0006: b"\x01\x09\x20" + bytes(20)}, {}) is None
    assert r.stats()["foreign_dropped"] == 3
    assert r.stats()["resolved"] == 0


def test_malformed_token_frame_is_counted_by_kind() -> None:
    """A frame under our company id with the wrong length is counted as malformed."""
    r = make_resolver()
    assert resolve(r, {CID: b"\x01\x02\x03"}, {}) is None
    assert r.stats()["malformed"] == {"shopper_token": 1}


def test_reference_ibeacon_resolves_as_reference() -> None:
    """A listed reference beacon's iBeacon becomes a reference sighting."""
    got = resolve(make_resolver(), {APPLE_COMPANY_ID: ibeacon_payload(REF_UUID, 1, 7, -59)}, {})
    assert got is not None
    assert (got.subject, got.reference, got.tx_power) == ("ref-entrance", True, -59)


def test_registered_eid_tag_resolves() -> None:
    """An Eddystone-EID frame of a registered tag resolves to its shopper."""
    key = bytes.fromhex("0102030405060708090a111213141516")
    tag = EidTag("tag-1", key, 10, 0)
    r = AdvertResolver(CID)
    r.install({}, build_eid_table([("s9", tag)], window_of(T0)))
    frame = eddystone_eid_data(eid(key, 10, beacon_time(T0, 0)), -20)
    got = resolve(r, {}, {EDDYSTONE_SERVICE_UUID: frame})
    assert got is not None
    assert got.subject == "s9"


def test_forget_stops_resolution_at_once() -> None:
    """After forget (opt-out) the shopper's tokens no longer resolve."""
    r = make_resolver()
    assert r.forget({"s1"}) == 3
    assert resolve(r, token_advert(), {}) is None


def test_forget_drops_only_the_forgotten_shoppers_tokens() -> None:
    """Forgetting one shopper removes their three windows' tokens and keeps everyone else's."""
    r = AdvertResolver(CID)
    keys = [("s1", day_keys(ROOT)), ("s2", day_keys(OTHER_ROOT))]
    r.install(build_table(keys, window_of(T0)), {})
    assert r.forget({"s1"}) == 3
    assert resolve(r, token_advert(ROOT), {}) is None
    got = resolve(r, token_advert(OTHER_ROOT), {})
    assert got is not None
    assert got.subject == "s2"
    assert r.stats()["tokens"] == 3


@settings(max_examples=400, deadline=None)
@given(
    md=st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=40), max_size=4),
    sd=st.dictionaries(
        st.sampled_from([EDDYSTONE_SERVICE_UUID, "0000fe9f-0000-1000-8000-00805f9b34fb"]),
        st.binary(max_size=40),
        max_size=2,
    ),
)
def test_no_advert_makes_the_hot_path_raise(md: dict[int, bytes], sd: dict[str, bytes]) -> None:
    """Arbitrary manufacturer and service data never raise in the hot path."""
    r = make_resolver()
    got: list[Sighting] = []
    r.handler(got.append)("pi", md, sd, -60.0, T0)
    assert len(got) <= 1


# -- the flow --------------------------------------------------------------------------


class FakeOutbox:
    """Collects upstream events; each enqueue is committed at once."""

    def __init__(self) -> None:
        self.events: list[UpEvent] = []

    def enqueue(self, event: UpEvent) -> asyncio.Future[str]:
        self.events.append(event)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        fut.set_result(f"s:{len(self.events)}")
        return fut


def make_flow(**presence: Any) -> tuple[ShopperFlow, FakeOutbox, ManualClock]:
    cfg = GatewayConfig.model_validate(
        {
            "store": {"id": "s"},
            "hq": {"enabled": False},
            "ble": {"enabled": True, "company_id": CID, "zone": "entrance"},
            "satellites": [{"id": "sat-1", "firmware": "openmqttgateway", "zone": "produce"}],
            "presence": presence,
        }
    )
    clock = ManualClock(wall=T0)
    outbox = FakeOutbox()
    return build_shoppers(cfg, clock, OutboxSink(outbox, "presence_event")), outbox, clock


def opted_in(shopper: str, root: bytes, scopes: set[str]) -> tuple[Profile, Consent]:
    return (
        Profile(shopper, T0 + 86_400, day_keys(root)),
        Consent(shopper, frozenset(scopes), T0 + 86_400),
    )


def walk_in(flow: ShopperFlow, clock: ManualClock, root: bytes, seconds: int) -> list[Any]:
    """The shopper stands near the Pi for ``seconds``; the presence events that caused."""
    events = []
    for i in range(seconds * 2):
        clock.advance(0.5)
        flow.pi_advert(token_advert(root, clock.wall()), {}, -55, clock.wall())
        events += flow.drain(1000)
        if i % 2:
            events += flow.tracker.tick(clock.wall())
    flow.handle(events)
    return events


async def _built(flow: ShopperFlow, clock: ManualClock) -> None:
    await flow.rebuild(window_of(clock.wall()))


def test_opted_in_shopper_arrives_and_goes_upstream_with_analytics_consent() -> None:
    """A shopper with presence+analytics consent arrives, and HQ gets the presence event."""

    async def scenario() -> None:
        flow, outbox, clock = make_flow()
        flow.load(*zip(opted_in("s1", ROOT, {"presence", "analytics"}), strict=True))
        await _built(flow, clock)
        events = walk_in(flow, clock, ROOT, 8)
        assert [e.kind for e in events] == ["arrived"]
        await asyncio.sleep(0)
        kinds = [(e.kind, e.data["event"]) for e in outbox.events]
        assert ("presence", "arrived") in kinds
        assert ("visit", "visit_started") in kinds
        assert all(e.subject == "s1" for e in outbox.events)

    asyncio.run(scenario())


def test_presence_without_analytics_consent_stays_in_the_store() -> None:
    """Consent to presence alone: the shopper is noticed, but nothing goes upstream."""

    async def scenario() -> None:
        flow, outbox, clock = make_flow()
        flow.load(*zip(opted_in("s1", ROOT, {"presence"}), strict=True))
        await _built(flow, clock)
        assert [e.kind for e in walk_in(flow, clock, ROOT, 8)] == ["arrived"]
        assert outbox.events == []

    asyncio.run(scenario())


def test_consent_without_presence_scope_is_never_noticed() -> None:
    """A shopper whose consent lacks ``presence`` has no tokens in the table."""

    async def scenario() -> None:
        flow, _, clock = make_flow()
        flow.load(*zip(opted_in("s1", ROOT, {"analytics"}), strict=True))
        await _built(flow, clock)
        assert walk_in(flow, clock, ROOT, 8) == []
        assert flow.stats()["resolver"]["tokens"] == 0

    asyncio.run(scenario())


def test_opt_out_forgets_at_once_and_drops_queued_sightings() -> None:
    """On erasure the shopper stops resolving, presence forgets them, queued sightings go."""

    async def scenario() -> None:
        flow, _, clock = make_flow()
        flow.load(*zip(opted_in("s1", ROOT, {"presence"}), strict=True))
        await _built(flow, clock)
        walk_in(flow, clock, ROOT, 8)
        assert flow.tracker.zone_of("s1") == "entrance"
        flow.pi_advert(token_advert(ROOT, clock.wall()), {}, -55, clock.wall())
        flow.on_changes({}, {}, {"s1"})
        assert flow.tracker.zone_of("s1") is None
        assert flow.visits.visit_of("s1") is None
        assert flow.drain(1000) == []
        before = flow.resolver.stats()["foreign_dropped"]
        flow.pi_advert(token_advert(ROOT, clock.wall()), {}, -55, clock.wall())
        assert flow.resolver.stats()["foreign_dropped"] == before + 1

    asyncio.run(scenario())


def test_opt_out_during_a_table_build_is_not_undone_by_the_swap() -> None:
    """An erasure that lands while the next table is built is applied to the new table."""

    async def scenario() -> None:
        flow, _, clock = make_flow()
        flow.load(*zip(opted_in("s1", ROOT, {"presence"}), strict=True))
        build = asyncio.create_task(flow.rebuild(window_of(clock.wall())))
        await asyncio.sleep(0)  # the build is now running in its thread
        flow.on_changes({}, {}, {"s1"})
        await build
        assert resolve(flow.resolver, token_advert(ROOT, clock.wall()), {}) is None

    asyncio.run(scenario())


def test_new_profile_resolves_after_the_rebuild() -> None:
    """A profile HQ sends later resolves once the tables are rebuilt."""

    async def scenario() -> None:
        flow, _, clock = make_flow()
        await _built(flow, clock)
        assert resolve(flow.resolver, token_advert(), {}) is None
        profile, consent = opted_in("s2", ROOT, {"presence"})
        flow.on_changes({"s2": profile}, {"s2": consent}, set())
        await _built(flow, clock)
        got = resolve(flow.resolver, token_advert(), {})
        assert got is not None
        assert got.subject == "s2"

    asyncio.run(scenario())


def test_table_loop_swaps_in_the_next_window_at_the_change() -> None:
    """Built ahead of the window change, the next table is installed at the change."""

    async def scenario() -> None:
        flow, _, clock = make_flow()
        flow.load(*zip(opted_in("s1", ROOT, {"presence"}), strict=True))
        w = window_of(clock.wall())
        await flow.rebuild(w)
        clock.advance((w + 1) * WINDOW_S - clock.wall() + 0.01)
        await flow.rebuild(w + 1, install_at=clock.wall())
        assert flow.table_window == w + 1
        later = (w + 2) * WINDOW_S + 1
        assert resolve(flow.resolver, token_advert(ROOT, later), {}) is not None

    asyncio.run(scenario())


def test_a_profile_arriving_while_the_next_table_waits_resolves_at_once() -> None:
    """Within ble.rebuild_ahead_s of a window change the next window's tables are built
    and wait for the change; a profile HQ sends meanwhile must not wait with them."""

    async def scenario() -> None:
        flow, _, clock = make_flow()
        w = window_of(clock.wall())
        clock.advance((w + 1) * WINDOW_S - clock.wall() - 30)  # 30 s before the change
        loop = asyncio.create_task(flow._table_loop())
        # The current window's tables, then the next window's, built and waiting.
        await wait_until_async(lambda: flow._building, what="the pre-built tables waiting")
        assert flow._building and flow.table_window == w
        profile, consent = opted_in("s2", ROOT, {"presence"})
        flow.on_changes({"s2": profile}, {"s2": consent}, set())
        await wait_until_async(
            lambda: resolve(flow.resolver, token_advert(ROOT, clock.wall()), {}) is not None,
            what="the new profile resolving",
        )
        loop.cancel()
        got = resolve(flow.resolver, token_advert(ROOT, clock.wall()), {})
        assert got is not None and got.subject == "s2"

    asyncio.run(scenario())


def test_a_full_queue_sheds_and_counts() -> None:
    """Beyond ``ble.queue_max`` sightings wait, BLE sheds and counts what it shed."""

    async def scenario() -> None:
        flow, _, clock = make_flow()
        flow.load(*zip(opted_in("s1", ROOT, {"presence"}), strict=True))
        await _built(flow, clock)
        for _ in range(BleSection().queue_max + 5):
            flow.pi_advert(token_advert(ROOT, clock.wall()), {}, -55, clock.wall())
        assert flow.stats()["shed"] == 5
        assert flow.stats()["queue"] == BleSection().queue_max

    asyncio.run(scenario())


def test_a_window_change_computes_only_the_new_window() -> None:
    """Moving to the next window reuses the two windows already computed, and the result is
    exactly a full build's."""

    async def scenario() -> None:
        flow, _, clock = make_flow()
        flow.load(*zip(opted_in("s1", ROOT, {"presence"}), strict=True))
        w = window_of(clock.wall())
        await flow.rebuild(w)
        before = dict(flow._window_cache)
        await flow.rebuild(w + 1)
        after = flow._window_cache
        assert after[w] is before[w] and after[w + 1] is before[w + 1]
        assert flow.resolver.tokens == build_table([("s1", day_keys(ROOT))], w + 1)

    asyncio.run(scenario())


def test_a_profile_change_forces_a_full_rebuild() -> None:
    """After HQ changes profiles no cached window is reused: new keys take effect everywhere."""

    async def scenario() -> None:
        flow, _, clock = make_flow()
        flow.load(*zip(opted_in("s1", ROOT, {"presence"}), strict=True))
        w = window_of(clock.wall())
        await flow.rebuild(w)
        profile, consent = opted_in("s1", OTHER_ROOT, {"presence"})
        flow.on_changes({"s1": profile}, {"s1": consent}, set())
        await flow.rebuild(w + 1)
        assert flow.resolver.tokens == build_table([("s1", day_keys(OTHER_ROOT))], w + 1)

    asyncio.run(scenario())


def test_configured_offsets_apply_to_scanners_without_a_beacon() -> None:
    """A satellite's and the Pi's ``rssi_offset_db`` become the tracker's fixed offsets."""
    cfg = GatewayConfig.model_validate(
        {
            "store": {"id": "s"},
            "hq": {"enabled": False},
            "ble": {"enabled": True, "rssi_offset_db": -3},
            "satellites": [
                {
                    "id": "sat-1",
                    "firmware": "openmqttgateway",
                    "zone": "produce",
                    "rssi_offset_db": 4.5,
                },
            ],
        }
    )
    flow = build_shoppers(cfg, ManualClock(wall=T0), OutboxSink(FakeOutbox(), "presence_event"))
    assert flow.tracker.offsets_db() == {"pi": -3.0, "sat-1": 4.5}
