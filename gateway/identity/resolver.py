"""Resolve an advert to an opted-in shopper or a reference beacon, or to nothing.

Called for every advert any scanner hears, so the common cases cost little: a
shopper token frame is a length check, a version check and one dict lookup in
the token table (``gateway/identity/tokens.py``); an Eddystone-EID tag is one
lookup in the EID table; a reference beacon's iBeacon one lookup in a fixed map.
Everything else is foreign and only counted: the resolver keeps nothing of an
advert it could not resolve, not even in its counters (they count, they do not
remember).

The tables are built off the event loop (``build_eid_table``, ``tokens.window_tokens``)
and swapped in whole with ``install``; an opt-out drops a shopper at once with
``forget``.

Pure: no asyncio, no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.events import Sighting
from gateway.identity.eid import eids_around
from gateway.identity.tokens import WINDOW_S, WINDOW_SLACK
from gateway.sensing.frames import (
    APPLE_COMPANY_ID,
    EDDYSTONE_SERVICE_UUID,
    TOKEN_FRAME_VERSION,
    TOKEN_PAYLOAD_LEN,
)
from gateway.shoppers import EidTag, IBeaconTag

# EIDs computed per tag at most: a tag with a very short rotation period (small
# K) would otherwise need thousands of EIDs to cover three token windows; past
# this cap only the periods around the table's centre are covered.
MAX_EIDS_PER_TAG = 64


def build_eid_table(tags: Iterable[tuple[str, EidTag]], center_window: int) -> dict[bytes, str]:
    """EID -> shopper for every tag, over the windows a token table of ``center_window`` covers.

    Each tag's EIDs of every rotation period that overlaps windows
    ``center_window`` ± ``WINDOW_SLACK``, plus one period either side for a tag
    clock that drifted. Costs two AES blocks per EID: run it off the event loop.
    """
    span_start = (center_window - WINDOW_SLACK) * WINDOW_S
    span_end = (center_window + WINDOW_SLACK + 1) * WINDOW_S
    middle = (span_start + span_end) // 2
    table: dict[bytes, str] = {}
    for shopper, tag in tags:
        period = 1 << tag.k
        half = math.ceil((span_end - span_start) / 2 / period) + 1
        half = min(half, MAX_EIDS_PER_TAG // 2)
        beacon_time = middle - tag.epoch_offset_s
        if beacon_time < 0:
            continue  # the tag's clock has not started at this time
        for eid in eids_around(tag.identity_key, tag.k, beacon_time, half):
            table[eid] = shopper
    return table


# Callables the hot path hands its result to, and the shape of the hot path itself.
SightingSink = Callable[[Sighting], None]
AdvertHandler = Callable[[str, Mapping[int, bytes], Mapping[str, bytes], float, float], None]

_EID_FRAME = 0x30  # Eddystone frame type byte of an EID frame (eddystone-eid spec)
_EID_DATA_LEN = 10  # type, tx power, 8-byte EID
_IBEACON_HEAD = b"\x02\x15"  # Apple's iBeacon type and length bytes
_IBEACON_DATA_LEN = 23  # head, uuid 16, major 2, minor 2, power 1


def _int8(b: int) -> int:
    return b - 256 if b > 127 else b


def ibeacon_key(uuid: bytes, major: int, minor: int) -> bytes:
    """The bytes an iBeacon frame carries for this identity (uuid, major, minor)."""
    return uuid + major.to_bytes(2, "big") + minor.to_bytes(2, "big")


def build_ibeacon_table(tags: Iterable[tuple[str, IBeaconTag]]) -> dict[bytes, str]:
    """Fixed iBeacon identity -> shopper for every registered iBeacon tag."""
    return {ibeacon_key(t.uuid, t.major, t.minor): shopper for shopper, t in tags}


class AdvertResolver:
    """Turns an advert's manufacturer and service data into a ``Sighting``, or drops it."""

    def __init__(
        self,
        token_company_id: int,
        reference_ibeacons: Mapping[tuple[bytes, int, int], str] | None = None,
    ) -> None:
        self._company_id = token_company_id
        # Keyed by the iBeacon's raw uuid+major+minor bytes: one slice, one lookup.
        self._references = {
            ibeacon_key(uuid, major, minor): beacon
            for (uuid, major, minor), beacon in (reference_ibeacons or {}).items()
        }
        self.tokens: dict[bytes, str] = {}
        self.eids: dict[bytes, str] = {}
        self.ibeacons: dict[bytes, str] = {}  # shopper tags with a fixed iBeacon identity
        self.resolved = 0
        self.foreign = 0
        self.malformed: Counter[str] = Counter()

    # -- tables ---------------------------------------------------------------------

    def install(
        self,
        tokens: dict[bytes, str],
        eids: dict[bytes, str],
        ibeacons: dict[bytes, str] | None = None,
    ) -> None:
        """Swap in freshly built tables (one assignment each: a lookup sees old or new)."""
        self.tokens = tokens
        self.eids = eids
        self.ibeacons = ibeacons or {}

    def forget(self, shoppers: set[str]) -> int:
        """Opt-out: the shoppers' tokens and EIDs stop resolving now."""
        n = 0
        for table in (self.tokens, self.eids, self.ibeacons):
            gone = [k for k, s in table.items() if s in shoppers]
            for k in gone:
                del table[k]
            n += len(gone)
        return n

    # -- the hot path -------------------------------------------------------------------

    def handler(self, accept: SightingSink) -> AdvertHandler:
        """``on_advert(scanner, manufacturer_data, service_data, rssi, ts)`` for every scanner.

        A closure, so that the common cases (a foreign advert; a shopper token)
        run on local names only: a token advert costs one ``dict.get`` for the
        frame, a length and a version check, a slice and one table lookup.
        Resolved adverts go to ``accept`` as a ``Sighting``; nothing of any other
        advert outlives the call.
        """
        company_id = self._company_id
        references = self._references
        eddystone_uuid = EDDYSTONE_SERVICE_UUID
        apple = APPLE_COMPANY_ID
        malformed = self.malformed
        resolver = self

        def on_advert(
            scanner: str,
            manufacturer_data: Mapping[int, bytes],
            service_data: Mapping[str, bytes],
            rssi: float,
            ts: float,
        ) -> None:
            payload = manufacturer_data.get(company_id)
            if payload is not None:
                if len(payload) == TOKEN_PAYLOAD_LEN and payload[0] == TOKEN_FRAME_VERSION:
                    shopper = resolver.tokens.get(payload[1:9])
                    if shopper is not None:
                        resolver.resolved += 1
                        accept(Sighting(shopper, scanner, rssi, ts, _int8(payload[9]), False))
                        return
                else:
                    malformed["shopper_token"] += 1
            if service_data:
                data = service_data.get(eddystone_uuid)
                if data is not None and data and data[0] == _EID_FRAME:
                    if len(data) == _EID_DATA_LEN:
                        shopper = resolver.eids.get(data[2:10])
                        if shopper is not None:
                            resolver.resolved += 1
                            accept(Sighting(shopper, scanner, rssi, ts, _int8(data[1]), False))
                            return
                    else:
                        malformed["eddystone_eid"] += 1
            if references or resolver.ibeacons:
                data = manufacturer_data.get(apple)
                if (
                    data is not None
                    and len(data) == _IBEACON_DATA_LEN
                    and data[:2] == _IBEACON_HEAD
                ):
                    key = data[2:22]
                    beacon = references.get(key)
                    if beacon is not None:
                        resolver.resolved += 1
                        accept(Sighting(beacon, scanner, rssi, ts, _int8(data[22]), True))
                        return
                    shopper = resolver.ibeacons.get(key)
                    if shopper is not None:
                        resolver.resolved += 1
                        accept(Sighting(shopper, scanner, rssi, ts, _int8(data[22]), False))
                        return
            resolver.foreign += 1

        return on_advert

    def stats(self) -> dict[str, Any]:
        """Counts only: nothing here names a device or a shopper."""
        return {
            "resolved": self.resolved,
            "foreign_dropped": self.foreign,
            "malformed": dict(self.malformed),
            "tokens": len(self.tokens),
            "eids": len(self.eids),
            "ibeacon_tags": len(self.ibeacons),
            "reference_beacons": len(self._references),
        }
