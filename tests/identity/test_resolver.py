"""AdvertResolver's inline frame decoding: public captures, byte layouts and hostile input.

The resolver is the only code that decodes adverts (token frame, iBeacon,
Eddystone-EID), so the real-world vectors and the fuzzing of those layouts live
here and drive it as the scanners do: ``handler(accept)(scanner,
manufacturer_data, service_data, rssi, ts)``. Captures quoted below come from
public code; each names its source. HCI headers and the trailing RSSI byte of
BlueZ event dumps are stripped so that what is left is the advertising data,
which ``bleak_view`` splits the way BlueZ and bleak do.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.events import Sighting
from gateway.identity.resolver import AdvertResolver, build_eid_table, build_ibeacon_table
from gateway.identity.tokens import WINDOW_S, WINDOW_SLACK, build_table, day_key, window_of
from gateway.sensing.frames import APPLE_COMPANY_ID, EDDYSTONE_SERVICE_UUID
from gateway.shoppers import EidTag, IBeaconTag

DEV_COMPANY_ID = 0xFFFF  # docs/contracts.md section 2: the development company id
OTHER_COMPANY_ID = 0x0118  # any non-Apple, non-token company id will do
OTHER_SERVICE_UUID = "0000fe9a-0000-1000-8000-00805f9b34fb"  # Estimote's, not Eddystone
# docs/contracts.md section 2 test vector: root key 00..1f at unix 1795000000.
ROOT = bytes(range(32))
T0 = 1_795_000_000.0
CONTRACT_TOKEN = bytes.fromhex("5e4041bd37d2e8ef")
# RadiusNetworks/ephemeral_calc spec/encryptor_spec.rb: identity key and K = 10; its
# EIDs at beacon time 0 and 2000 s (tests/identity/test_eid.py pins the computation).
EID_IDENTITY_KEY = bytes.fromhex("0102030405060708090A111213141516")
EID_K = 10
EPHEMERAL_CALC_EID_T0 = bytes.fromhex("A9B76A71C5F89290")
EPHEMERAL_CALC_EID_T2000 = bytes.fromhex("4144413E45FEFA58")


def hexbytes(text: str) -> bytes:
    """Bytes from a hex dump with spaces and line breaks."""
    return bytes.fromhex("".join(text.split()))


def bleak_view(adv: bytes) -> tuple[dict[int, bytes], dict[str, bytes]]:
    """Split advertising data into bleak's ``manufacturer_data`` and ``service_data``."""
    manufacturer: dict[int, bytes] = {}
    service: dict[str, bytes] = {}
    i = 0
    while i + 1 < len(adv) and adv[i] and i + 1 + adv[i] <= len(adv):
        ad_type, body = adv[i + 1], adv[i + 2 : i + 1 + adv[i]]
        if ad_type == 0xFF:  # manufacturer specific: company id little-endian first
            manufacturer[int.from_bytes(body[:2], "little")] = body[2:]
        elif ad_type == 0x16:  # service data, 16-bit UUID little-endian first
            uuid16 = int.from_bytes(body[:2], "little")
            service[f"0000{uuid16:04x}-0000-1000-8000-00805f9b34fb"] = body[2:]
        i += 1 + adv[i]
    return manufacturer, service


# --- public captures -----------------------------------------------------------------

# xorbit/py-decode-beacon IBEACON.md and decode_test.py ("BlueZ message with 1 iBeacon
# advertisement"): HCI event 04 3E 2A 02 01 03 00 EC F8 00 EE F3 0C 1E ... BB.
XORBIT_IBEACON_AD = hexbytes("""
    02 01 04 1A FF 4C 00 02 15 8D EE FB B9 F7 38 42 97 80
    40 96 66 8B B4 42 81 13 88 0F 4E C1
""")
XORBIT_IBEACON_UUID = hexbytes("8deefbb9f7384297804096668bb44281")
# citruz/beacontools tests/test_parser.py test_cypress_beacon: a Cypress CYALKIT-E02
# sensor beacon, which packs temperature and humidity into the iBeacon minor.
CYPRESS_IBEACON_AD = hexbytes("""
    02 01 04 1a ff 4c 00 02 15 00 05 00 01 00 00 10 00
    80 00 00 80 5f 9b 01 31 00 02 6c 66 c3
""")
CYPRESS_IBEACON_UUID = hexbytes("00050001000010008000 00805f9b0131")
# citruz/beacontools tests/test_parser.py test_eddystone_eid.
BEACONTOOLS_EID_AD = b"\x02\x01\x06\x03\x03\xaa\xfe\x0d\x16\xaa\xfe\x30\xe3EID_test"

# Frames the gateway does not decode, heard in every store: they must be dropped as
# foreign (not counted as broken frames of ours). xorbit/py-decode-beacon decode_test.py
# ("1 iBeacon and 1 AltBeacon advertisement", the second report, RSSI B1 stripped).
XORBIT_ALTBEACON_AD = hexbytes("""
    1B FF 44 01 BE AC 8D EE FB B9 F7 38 42 97 80
    40 96 66 8B B4 42 81 13 88 0F 4F C1 55
""")
# Eddystone UID, URL and TLM from a fork of xorbit/py-decode-beacon's decode_test.py
# (one beacon, 17:01:C5:57:5F:6D..., trailing RSSI stripped), and beacontools'
# test_eddystone_uid / _url / _tlm / _tlm_enc (its eTLM AD length raised from 0x11 to
# 0x15 so that the whole frame is inside the AD structure).
FOREIGN_EDDYSTONE_ADS = {
    "fork-uid": hexbytes("""
        02 01 06 03 03 AA FE 15 16 AA FE 00 DE 5D C3 34 87 F0 2E 47 7D 40 58 01 17 C5 57 5F 6D
    """),
    "fork-url": hexbytes("""
        02 01 06 03 03 AA FE 13 16 AA FE 10 DE 02 74 6F 6B 2E 74 63 2F 57 6A 2F 42 43 56
    """),
    "fork-tlm": hexbytes("""
        02 01 06 03 03 AA FE 11 16 AA FE 20 00 0C 3C 20 00 00 00 0F BC 00 00 49 BA
    """),
    "beacontools-uid": hexbytes("""
        02 01 06 03 03 aa fe 17 16 aa fe 00 e3 12 34 56 78 90 12 34 67 89 01
        00 00 00 00 00 01 00 00
    """),
    "beacontools-url": b"\x03\x03\xaa\xfe\x13\x16\xaa\xfe\x10\xf8\x03github\x00citruz",
    "beacontools-tlm": hexbytes("""
        02 01 06 03 03 aa fe 11 16 aa fe 20 00 0b 18 13 00 00 00 14 67 00 00 2a c4
    """),
    "beacontools-etlm": hexbytes("""
        02 01 06 03 03 aa fe 15 16 aa fe 20 01 41 41 41 41 41 41 41 41 41 41 41 41 de ad be ff
    """),
}


# --- a resolver with one of everything registered ------------------------------------------

REFERENCE = ("ref-entrance", (XORBIT_IBEACON_UUID, 5000, 3918))
IBEACON_TAG = ("s-cypress", IBeaconTag("tag-cypress", CYPRESS_IBEACON_UUID, 2, 0x6C66))
CAPTURED_EID = ("s-eid-capture", b"EID_test")
# A tag whose clock reads 0 in the middle of the span the EID table for ``T0`` covers
# (the time build_eid_table computes EIDs around), so ephemeral_calc's vectors apply.
_SPAN_MIDDLE_S = (
    (window_of(T0) - WINDOW_SLACK) * WINDOW_S + (window_of(T0) + WINDOW_SLACK + 1) * WINDOW_S
) // 2
EID_TAG = ("s-eid-tag", EidTag("tag-eid", EID_IDENTITY_KEY, EID_K, _SPAN_MIDDLE_S))
SUBJECTS = {"s1", REFERENCE[0], IBEACON_TAG[0], CAPTURED_EID[0], EID_TAG[0]}

TOKEN_FRAME = hexbytes("01 5e 40 41 bd 37 d2 e8 ef c5")  # the contract's token, -59 dBm
REFERENCE_FRAME = bleak_view(XORBIT_IBEACON_AD)[0][APPLE_COMPANY_ID]
EID_FRAME = b"\x30\xec" + EPHEMERAL_CALC_EID_T0  # -20 dBm
# Each registered frame and who it resolves to.
REGISTERED = {
    "token": (TOKEN_FRAME, "s1"),
    "ibeacon": (REFERENCE_FRAME, REFERENCE[0]),
    "eid": (EID_FRAME, EID_TAG[0]),
}


def day_keys(root: bytes) -> dict[str, bytes]:
    today = dt.datetime.fromtimestamp(T0, dt.UTC).date()
    return {
        (today + dt.timedelta(days=d)).isoformat(): day_key(root, today + dt.timedelta(days=d))
        for d in (0, 1)
    }


def make_resolver() -> AdvertResolver:
    """Token shopper s1 (the contract's root key), a reference beacon, an iBeacon tag and
    two EID shoppers (a captured EID, and a tag keyed with ephemeral_calc's identity key)."""
    r = AdvertResolver(DEV_COMPANY_ID, {REFERENCE[1]: REFERENCE[0]})
    eids = build_eid_table([EID_TAG], window_of(T0))
    eids[CAPTURED_EID[1]] = CAPTURED_EID[0]
    r.install(
        build_table([("s1", day_keys(ROOT))], window_of(T0)),
        eids,
        build_ibeacon_table([IBEACON_TAG]),
    )
    return r


def hear(
    r: AdvertResolver, manufacturer: Mapping[int, bytes], service: Mapping[str, bytes]
) -> Sighting | None:
    """One advert through the hot path as the Pi's scanner hands it over; its sighting."""
    got: list[Sighting] = []
    r.handler(got.append)("pi", manufacturer, service, -60.0, T0)
    assert len(got) <= 1
    return got[0] if got else None


def advert_of(kind: str, frame: bytes) -> tuple[dict[int, bytes], dict[str, bytes]]:
    """``frame`` placed where a frame of ``kind`` travels."""
    if kind == "eid":
        return {}, {EDDYSTONE_SERVICE_UUID: frame}
    return {DEV_COMPANY_ID if kind == "token" else APPLE_COMPANY_ID: frame}, {}


# --- shopper token frame ---------------------------------------------------------------------


def test_contract_token_frame_resolves_with_its_power() -> None:
    """01 || token || power, the contract's vector, resolves to its shopper at -59 dBm."""
    got = hear(make_resolver(), {DEV_COMPANY_ID: TOKEN_FRAME}, {})
    assert got == Sighting("s1", "pi", -60.0, T0, -59, False)


@pytest.mark.parametrize(("byte", "dbm"), [(0x00, 0), (0x7F, 127), (0x80, -128), (0xFF, -1)])
def test_token_frame_power_is_signed(byte: int, dbm: int) -> None:
    """The token frame's measured-power byte reads as int8."""
    got = hear(make_resolver(), {DEV_COMPANY_ID: TOKEN_FRAME[:9] + bytes((byte,))}, {})
    assert got is not None
    assert got.tx_power == dbm


@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_token_frame_of_another_version_never_resolves(version: int) -> None:
    """A registered token under a version byte other than 1 does not resolve; it is counted."""
    r = make_resolver()
    assert hear(r, {DEV_COMPANY_ID: bytes((version,)) + TOKEN_FRAME[1:]}, {}) is None
    assert r.stats()["malformed"] == {"shopper_token": 1}


def test_token_frame_cut_at_any_length_never_resolves() -> None:
    """A registered token frame cut anywhere (empty included) is counted, never resolved."""
    r = make_resolver()
    for size in range(len(TOKEN_FRAME)):
        assert hear(r, {DEV_COMPANY_ID: TOKEN_FRAME[:size]}, {}) is None, size
    assert r.stats()["malformed"] == {"shopper_token": len(TOKEN_FRAME)}
    assert r.stats()["resolved"] == 0


def test_token_frame_with_trailing_bytes_never_resolves() -> None:
    """A registered token frame with any bytes after it is counted, never resolved."""
    r = make_resolver()
    for tail in (b"\x00", b"\xc5", bytes(21)):
        assert hear(r, {DEV_COMPANY_ID: TOKEN_FRAME + tail}, {}) is None
    assert r.stats()["malformed"] == {"shopper_token": 3}


def test_token_frame_under_another_company_id_is_foreign() -> None:
    """The token layout under any company id but ours is somebody else's data."""
    r = make_resolver()
    for company_id in (OTHER_COMPANY_ID, APPLE_COMPANY_ID, 0x0000):
        assert hear(r, {company_id: TOKEN_FRAME}, {}) is None
    assert r.stats()["foreign_dropped"] == 3
    assert r.stats()["malformed"] == {}


# --- iBeacon -----------------------------------------------------------------------------


def test_xorbit_ibeacon_capture_resolves_to_its_reference_beacon() -> None:
    """xorbit/py-decode-beacon's BlueZ capture (8deefbb9..., 5000, 3918, -63) is the
    registered reference beacon, as bleak splits the advert."""
    manufacturer, service = bleak_view(XORBIT_IBEACON_AD)
    got = hear(make_resolver(), manufacturer, service)
    assert got == Sighting(REFERENCE[0], "pi", -60.0, T0, -63, True)


def test_beacontools_cypress_ibeacon_capture_resolves_to_the_registered_tag() -> None:
    """beacontools' Cypress sensor-beacon capture (major 2, minor 0x6C66, -61 dBm) is the
    shopper whose iBeacon tag HQ registered with that identity."""
    manufacturer, service = bleak_view(CYPRESS_IBEACON_AD)
    got = hear(make_resolver(), manufacturer, service)
    assert got == Sighting(IBEACON_TAG[0], "pi", -60.0, T0, -61, False)


def test_ibeacon_major_and_minor_are_big_endian() -> None:
    """Major and minor are read big-endian: the byte-swapped identity is someone else."""
    uuid = XORBIT_IBEACON_UUID
    r = AdvertResolver(DEV_COMPANY_ID, {(uuid, 0x0102, 0x0304): "ref"})
    frame = b"\x02\x15" + uuid + bytes((0x01, 0x02, 0x03, 0x04, 0xC5))
    assert hear(r, {APPLE_COMPANY_ID: frame}, {}) == Sighting("ref", "pi", -60.0, T0, -59, True)
    swapped = b"\x02\x15" + uuid + bytes((0x02, 0x01, 0x04, 0x03, 0xC5))
    assert hear(r, {APPLE_COMPANY_ID: swapped}, {}) is None


def test_broken_ibeacon_frames_of_a_registered_beacon_never_resolve() -> None:
    """Cut anywhere, extended, a wrong length byte or another Apple type: dropped as foreign."""
    r = make_resolver()
    broken = [REFERENCE_FRAME[:size] for size in range(len(REFERENCE_FRAME))]
    broken += [
        REFERENCE_FRAME + b"\x00",
        b"\x02\x14" + REFERENCE_FRAME[2:],
        b"\x10" + REFERENCE_FRAME[1:],  # Apple Nearby Info's type byte
    ]
    for frame in broken:
        assert hear(r, {APPLE_COMPANY_ID: frame}, {}) is None, frame.hex()
    assert r.stats()["foreign_dropped"] == len(broken)
    assert r.stats()["resolved"] == 0


def test_ibeacon_layout_under_another_company_id_is_foreign() -> None:
    """A registered beacon's iBeacon bytes under a non-Apple company id do not resolve."""
    assert hear(make_resolver(), {OTHER_COMPANY_ID: REFERENCE_FRAME}, {}) is None


# --- Eddystone-EID -----------------------------------------------------------------------


def test_ephemeral_calc_eid_frames_resolve_to_the_tag_keyed_with_its_identity_key() -> None:
    """The EIDs RadiusNetworks' ephemeral_calc publishes for its identity key (beacon time
    0 and 2000 s, K=10), in an Eddystone-EID frame, resolve to the tag with that key."""
    r = make_resolver()
    for eid in (EPHEMERAL_CALC_EID_T0, EPHEMERAL_CALC_EID_T2000):
        got = hear(r, {}, {EDDYSTONE_SERVICE_UUID: b"\x30\xec" + eid})
        assert got == Sighting(EID_TAG[0], "pi", -60.0, T0, -20, False)


def test_beacontools_eid_capture_resolves_with_its_power() -> None:
    """beacontools' EID capture (EID "EID_test", -29 dBm) resolves to the shopper holding it."""
    manufacturer, service = bleak_view(BEACONTOOLS_EID_AD)
    got = hear(make_resolver(), manufacturer, service)
    assert got == Sighting(CAPTURED_EID[0], "pi", -60.0, T0, -29, False)


def test_broken_eid_frames_of_a_registered_tag_never_resolve() -> None:
    """A registered EID frame cut after its type byte or extended is counted, never resolved."""
    r = make_resolver()
    broken = [EID_FRAME[:size] for size in range(1, len(EID_FRAME))] + [EID_FRAME + b"\x00"]
    for frame in broken:
        assert hear(r, {}, {EDDYSTONE_SERVICE_UUID: frame}) is None, frame.hex()
    assert r.stats()["malformed"] == {"eddystone_eid": len(broken)}


@pytest.mark.parametrize("frame_type", [0x00, 0x10, 0x20, 0x31, 0x40, 0xFF])
def test_eid_bytes_in_another_eddystone_frame_type_are_foreign(frame_type: int) -> None:
    """A registered EID inside a UID, URL, TLM or unknown frame type is not an EID frame."""
    r = make_resolver()
    assert hear(r, {}, {EDDYSTONE_SERVICE_UUID: bytes((frame_type,)) + EID_FRAME[1:]}) is None
    assert (r.stats()["foreign_dropped"], r.stats()["malformed"]) == (1, {})


def test_eid_frame_under_another_service_is_foreign() -> None:
    """A registered EID frame in another service's data (or empty Eddystone data) is foreign."""
    r = make_resolver()
    assert hear(r, {}, {OTHER_SERVICE_UUID: EID_FRAME}) is None
    assert hear(r, {}, {EDDYSTONE_SERVICE_UUID: b""}) is None
    assert (r.stats()["foreign_dropped"], r.stats()["malformed"]) == (2, {})


# --- what every store hears and nobody registered ------------------------------------------


@pytest.mark.parametrize("name", sorted(FOREIGN_EDDYSTONE_ADS))
def test_eddystone_uid_url_tlm_captures_are_foreign_not_broken(name: str) -> None:
    """Real Eddystone UID, URL, TLM and eTLM adverts share the EID's service: dropped as
    foreign, and not counted as broken EID frames."""
    r = make_resolver()
    manufacturer, service = bleak_view(FOREIGN_EDDYSTONE_ADS[name])
    assert EDDYSTONE_SERVICE_UUID in service
    assert hear(r, manufacturer, service) is None
    assert (r.stats()["foreign_dropped"], r.stats()["malformed"]) == (1, {})


def test_altbeacon_capture_is_foreign() -> None:
    """xorbit's AltBeacon capture (company 0x0144) is dropped as foreign."""
    r = make_resolver()
    manufacturer, service = bleak_view(XORBIT_ALTBEACON_AD)
    assert hear(r, manufacturer, service) is None
    assert (r.stats()["foreign_dropped"], r.stats()["malformed"]) == (1, {})


# --- fuzzing --------------------------------------------------------------------------------

COMPANY_IDS = st.sampled_from([DEV_COMPANY_ID, APPLE_COMPANY_ID, OTHER_COMPANY_ID]) | st.integers(
    0, 0xFFFF
)
SERVICE_KEYS = st.sampled_from([EDDYSTONE_SERVICE_UUID, OTHER_SERVICE_UUID, "feaa", ""])
FRAMES = st.binary(max_size=40) | st.sampled_from([f for f, _ in REGISTERED.values()])


@settings(max_examples=300, deadline=None)
@given(
    manufacturer=st.dictionaries(COMPANY_IDS, FRAMES, max_size=4),
    service=st.dictionaries(SERVICE_KEYS, FRAMES, max_size=3),
)
def test_fuzz_any_advert_is_resolved_or_dropped_never_raises(
    manufacturer: dict[int, bytes], service: dict[str, bytes]
) -> None:
    """Any manufacturer and service data: no exception, at most one sighting, of a
    registered subject, and the advert counted exactly once as resolved or foreign."""
    r = make_resolver()
    got = hear(r, manufacturer, service)
    stats = r.stats()
    assert stats["resolved"] + stats["foreign_dropped"] == 1
    assert (got is not None) == (stats["resolved"] == 1)
    assert got is None or got.subject in SUBJECTS
    assert set(stats["malformed"]) <= {"shopper_token", "eddystone_eid"}


MUTATIONS = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 255)), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(REGISTERED)),
    flips=MUTATIONS,
    cut=st.none() | st.integers(0, 30),
    tail=st.binary(max_size=4),
)
def test_fuzz_a_damaged_registered_frame_never_resolves_to_anyone_else(
    kind: str, flips: list[tuple[int, int]], cut: int | None, tail: bytes
) -> None:
    """A registered frame with flipped bytes, a cut and a tail resolves to its own subject
    (a flipped power byte changes only the power) or to nobody, and never raises."""
    frame, subject = REGISTERED[kind]
    damaged = bytearray(frame)
    for index, mask in flips:
        damaged[index % len(damaged)] ^= mask
    data = bytes(damaged[:cut]) + tail
    got = hear(make_resolver(), *advert_of(kind, data))
    assert got is None or got.subject == subject
    if got is not None:
        assert len(data) == len(frame)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 64).filter(lambda n: n != len(TOKEN_FRAME)),
    filler=st.binary(min_size=64, max_size=64),
    version=st.integers(0, 255),
)
def test_fuzz_a_truncated_overlong_or_wrong_version_token_frame_never_resolves(
    size: int, filler: bytes, version: int
) -> None:
    """A frame under our company id that starts with a registered token but has the wrong
    length, or the right length and a version other than 1, never resolves and is counted."""
    wrong_length = (TOKEN_FRAME + filler)[:size]
    r = make_resolver()
    assert hear(r, {DEV_COMPANY_ID: wrong_length}, {}) is None
    if version != TOKEN_FRAME[0]:
        assert hear(r, {DEV_COMPANY_ID: bytes((version,)) + TOKEN_FRAME[1:]}, {}) is None
    assert r.stats()["resolved"] == 0
    assert r.stats()["malformed"]["shopper_token"] == r.stats()["foreign_dropped"]


HUGE = 100_000


def huge_inputs() -> dict[str, bytes]:
    """100 KB inputs: noise, a registered frame followed by noise, constant fills."""
    noise = random.Random(20260118).randbytes(HUGE)
    out = {"noise": noise}
    for kind, (frame, _) in REGISTERED.items():
        out[f"{kind}+noise"] = frame + noise
    for byte in (0x00, 0x01, 0x02, 0x30, 0xFF):
        out[f"fill-{byte:02x}"] = bytes((byte,)) * HUGE
    return out


HUGE_INPUTS = huge_inputs()


@pytest.mark.parametrize("input_name", HUGE_INPUTS)
def test_huge_entries_everywhere_never_resolve_or_raise(input_name: str) -> None:
    """A 100 KB entry under our company id, Apple's and in Eddystone service data is dropped."""
    data = HUGE_INPUTS[input_name]
    r = make_resolver()
    manufacturer = {DEV_COMPANY_ID: data, APPLE_COMPANY_ID: data, OTHER_COMPANY_ID: data}
    assert hear(r, manufacturer, {EDDYSTONE_SERVICE_UUID: data}) is None
    assert r.stats()["foreign_dropped"] == 1
