"""Simulated shoppers' phones and other people's devices, as the scanners hear them.

Turns the seeded walks of ``gateway.testing.walks`` into timed adverts: an
opted-in shopper's phone sends the docs/contracts.md section 2 token frame (the token of
the moment, from its root key); a foreign device sends what phones, watches
and beacons nobody registered send (tokens of another app install, iBeacons,
Apple continuity frames, Eddystone, other companies' data); reference beacons
send their iBeacon. Each advert is ``(wall_ts, scanner, manufacturer_data,
service_data, rssi)``, the shape every scanner hands to the resolver.

For the demo (which replays the Pi's adverts through the BLE scanner and
publishes the satellites' over MQTT) and for the acceptance tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gateway.events import Sighting
from gateway.identity.tokens import token_at
from gateway.sensing.frames import (
    APPLE_COMPANY_ID,
    EDDYSTONE_SERVICE_UUID,
    eddystone_uid_data,
    ibeacon_payload,
    shopper_token_payload,
)
from gateway.testing.walks import DEMO_STORE, StoreLayout, Walk, simulate_walk

# The UUID of the example store's reference beacons (firmware_configs/beacons/).
REFERENCE_UUID = bytes.fromhex("5f3c8a1e29b04d7c9e6a1b2c3d4e5f60")
# What a phone app's token frame says its power at 1 m is.
PHONE_TX_1M_DBM = -59

Advert = tuple[float, str, dict[int, bytes], dict[str, bytes], float]


@dataclass(frozen=True, slots=True)
class SimShopper:
    """An opted-in shopper: the id HQ gave them and their app's root key."""

    shopper: str
    root_key: bytes
    seed: int  # the walk they take


def reference_ibeacons(store: StoreLayout = DEMO_STORE) -> dict[str, tuple[bytes, int, int]]:
    """Each reference beacon's iBeacon identity (uuid, major 1, minor n) by beacon id."""
    return {b.beacon.beacon_id: (REFERENCE_UUID, 1, i + 1) for i, b in enumerate(store.beacons)}


def shifted(walk: Walk, enter_at: float) -> list[Sighting]:
    """The walk's sightings moved so that the shopper enters at ``enter_at``."""
    delta = enter_at - walk.entered_s
    return [s._replace(ts=s.ts + delta) for s in walk.sightings]


def shopper_adverts(
    shopper: SimShopper, enter_at: float, company_id: int, *, beacons: bool = True
) -> tuple[Walk, list[Advert]]:
    """The shopper's walk and every advert it produces from ``enter_at`` on."""
    walk = simulate_walk(shopper.seed)
    refs = reference_ibeacons()
    out: list[Advert] = []
    for s in shifted(walk, enter_at):
        if s.reference:
            if not beacons:
                continue
            uuid, major, minor = refs[s.subject]
            md = {APPLE_COMPANY_ID: ibeacon_payload(uuid, major, minor, PHONE_TX_1M_DBM)}
            out.append((s.ts, s.scanner, md, {}, s.rssi))
        else:
            frame = shopper_token_payload(token_at(shopper.root_key, s.ts), PHONE_TX_1M_DBM)
            out.append((s.ts, s.scanner, {company_id: frame}, {}, s.rssi))
    return walk, out


def foreign_frames(
    rng: random.Random, company_id: int
) -> tuple[dict[int, bytes], dict[str, bytes]]:
    """What one device nobody registered keeps sending (fixed per device)."""
    r = rng.random()
    if r < 0.25:  # our app on a phone whose owner did not opt in at this retailer
        return {company_id: shopper_token_payload(rng.randbytes(8), PHONE_TX_1M_DBM)}, {}
    if r < 0.45:  # Apple continuity (nearby info)
        return {APPLE_COMPANY_ID: bytes([0x10, 0x05]) + rng.randbytes(5)}, {}
    if r < 0.60:  # somebody's iBeacon
        return {APPLE_COMPANY_ID: ibeacon_payload(rng.randbytes(16), 7, 9, -60)}, {}
    if r < 0.75:  # Eddystone UID
        return {}, {
            EDDYSTONE_SERVICE_UUID: eddystone_uid_data(rng.randbytes(10), rng.randbytes(6), -20)
        }
    if r < 0.90:  # Microsoft Swift Pair
        return {0x0006: bytes([0x03, 0x00, 0x80]) + rng.randbytes(10)}, {}
    return {rng.randrange(1, 0xFFFE): rng.randbytes(rng.randrange(3, 24))}, {}


def foreign_adverts(seed: int, enter_at: float, company_id: int) -> list[Advert]:
    """A foreign device walking the store (one of the walks), sending its fixed frames."""
    rng = random.Random(f"foreign-{seed}")
    md, sd = foreign_frames(rng, company_id)
    walk = simulate_walk(seed)
    return [
        (s.ts, s.scanner, dict(md), dict(sd), s.rssi)
        for s in shifted(walk, enter_at)
        if not s.reference
    ]
