"""Recorded satellite payloads, through the decoder, the resolver and presence, land shoppers in
the satellite's zone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.app import build_shoppers
from gateway.clock import ManualClock
from gateway.config import GatewayConfig
from gateway.identity.flow import ShopperFlow
from gateway.identity.presence import PresenceEvent
from gateway.identity.tokens import window_of
from gateway.publish.upstream import OutboxSink
from gateway.sensing.satellites import SatelliteDecoder
from gateway.shoppers import Consent, IBeaconTag, Profile
from tests.identity.test_shopper_flow import FakeOutbox, day_keys

DATA = Path(__file__).resolve().parents[1] / "data" / "satellites"
# The fixtures' token frame carries the test vector (docs/contracts.md section 2) of this moment.
T0 = 1_795_000_000.0
ROOT = bytes(range(32))
TAG_UUID = bytes.fromhex("b9407f30f5f8466eaff925556b57fe6d")


def recorded(name: str) -> tuple[str, bytes]:
    case = json.loads((DATA / name).read_text())
    return case["topic"], case["payload"].encode()


def as_v3_tag(topic: str, payload: bytes) -> tuple[str, bytes]:
    """The recorded v3 report, for the shopper tag's iBeacon id instead of a reference beacon."""
    old = "iBeacon:5f0c2a7e-3b1d-4e8a-9c61-2d7b8f4a0e13-1-2"
    new = "iBeacon:b9407f30-f5f8-466e-aff9-25556b57fe6d-4660-65535"
    return topic.replace(old, new), payload.replace(old.encode(), new.encode())


def store() -> tuple[ShopperFlow, SatelliteDecoder, ManualClock]:
    cfg = GatewayConfig.model_validate(
        {
            "store": {"id": "s"},
            "hq": {"enabled": False},
            "satellites": [
                {"id": "sat-entrance-2", "firmware": "openmqttgateway", "zone": "entrance"},
                {"id": "sat_produce_1", "firmware": "espresense", "zone": "produce"},
                {"id": "sat_checkout", "firmware": "espresense", "zone": "checkout"},
            ],
        }
    )
    clock = ManualClock(wall=T0)
    flow = build_shoppers(cfg, clock, OutboxSink(FakeOutbox(), "presence_event"))
    consent = frozenset({"presence"})
    flow.load(
        [
            Profile("token-shopper", T0 + 86_400, day_keys(ROOT)),
            Profile(
                "tag-shopper",
                T0 + 86_400,
                ibeacon_tags=(IBeaconTag("tag-0042", TAG_UUID, 4660, 65535),),
            ),
        ],
        [
            Consent("token-shopper", consent, T0 + 86_400),
            Consent("tag-shopper", consent, T0 + 86_400),
        ],
    )
    asyncio.run(flow.rebuild(window_of(T0)))
    decoder = SatelliteDecoder(cfg.satellites, flow.on_advert, clock)
    return flow, decoder, clock


def replay(
    flow: ShopperFlow, decoder: SatelliteDecoder, clock: ManualClock, topic: str, payload: bytes
) -> list[PresenceEvent]:
    """The satellite repeats its report every half second for 10 s (as ESPresense and OMG do)."""
    events: list[PresenceEvent] = []
    for i in range(20):
        clock.advance(0.5)
        decoder.on_message(topic, payload)
        events += flow.drain(100)
        if i % 2:
            events += flow.tracker.tick(clock.wall())
    return events


@pytest.mark.parametrize(
    ("fixture", "v3", "shopper", "zone"),
    [
        ("omg_shopper_token.json", False, "token-shopper", "entrance"),
        ("espresense_v4_tag_ibeacon.json", False, "tag-shopper", "checkout"),
        ("espresense_v3_reference_beacon.json", True, "tag-shopper", "produce"),
    ],
    ids=["openmqttgateway-token", "espresense-v4-tag", "espresense-v3-tag"],
)
def test_recorded_report_lands_the_shopper_in_the_satellites_zone(
    fixture: str, v3: bool, shopper: str, zone: str
) -> None:
    """A recorded OMG, ESPresense v4 or v3 report makes its shopper arrive in that zone."""
    flow, decoder, clock = store()
    topic, payload = recorded(fixture)
    if v3:
        topic, payload = as_v3_tag(topic, payload)
    events = replay(flow, decoder, clock, topic, payload)
    arrived: list[Any] = [(e.kind, e.shopper, e.zone) for e in events]
    assert arrived == [("arrived", shopper, zone)]
    assert flow.tracker.zone_of(shopper) == zone


def test_espresense_cannot_carry_a_rotating_token() -> None:
    """ESPresense reports our token frame as ``md:ffff:12``: nobody arrives from it."""
    flow, decoder, clock = store()
    topic, payload = recorded("espresense_v4_token_as_md.json")
    assert replay(flow, decoder, clock, topic, payload) == []
    assert flow.stats()["resolver"]["resolved"] == 0
