"""BLE advert frames: spec layouts, public captures, truncation and fuzzing.

Captures quoted below come from public code; each names its source. HCI headers
and the trailing RSSI byte of BlueZ event dumps are stripped so that what is left
is the advertising data, which ``bleak_view`` splits the way BlueZ and bleak do.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.sensing.frames import (
    APPLE_COMPANY_ID,
    BAD_LENGTH,
    BAD_VALUE,
    BAD_VERSION,
    EDDYSTONE_SERVICE_UUID,
    TOKEN_FRAME_VERSION,
    TOKEN_PAYLOAD_LEN,
    TRUNCATED,
    AltBeacon,
    EddystoneEid,
    EddystoneEtlm,
    EddystoneTlm,
    EddystoneUid,
    EddystoneUrl,
    IBeacon,
    Malformed,
    ShopperToken,
    altbeacon_payload,
    eddystone_eid_data,
    eddystone_tlm_data,
    eddystone_uid_data,
    eddystone_url_data,
    ibeacon_payload,
    parse_advert,
    parse_altbeacon,
    parse_eddystone,
    parse_eddystone_eid,
    parse_eddystone_tlm,
    parse_eddystone_uid,
    parse_eddystone_url,
    parse_ibeacon,
    parse_manufacturer,
    parse_shopper_token,
    shopper_token_payload,
)

DEV_COMPANY_ID = 0xFFFF  # docs/contracts.md section 2: the development company id
RADIUS_COMPANY_ID = 0x0118  # any non-Apple, non-token company id will do
# docs/contracts.md section 2 test vector: root key 00..1f at unix 1795000000.
CONTRACT_TOKEN = bytes.fromhex("5e4041bd37d2e8ef")
OTHER_UUID = "0000fe9a-0000-1000-8000-00805f9b34fb"  # Estimote's service, not Eddystone

FRAME_NAMES = {
    "shopper_token",
    "ibeacon",
    "altbeacon",
    "eddystone",
    "eddystone_uid",
    "eddystone_url",
    "eddystone_tlm",
    "eddystone_eid",
}
REASONS = {TRUNCATED, BAD_LENGTH, BAD_VERSION, BAD_VALUE}


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


def hexbytes(text: str) -> bytes:
    """Bytes from a hex dump with spaces and line breaks."""
    return bytes.fromhex("".join(text.split()))


def token_payload(
    token: bytes = CONTRACT_TOKEN, tx_power: int = -59, version: int = TOKEN_FRAME_VERSION
) -> bytes:
    """A shopper-token payload with defaults (the contract's token, -59 dBm)."""
    return bytes((version,)) + token + (tx_power & 0xFF).to_bytes(1, "big")


# --- public captures -----------------------------------------------------------------

# xorbit/py-decode-beacon IBEACON.md and decode_test.py ("BlueZ message with 1 iBeacon
# advertisement"): HCI event 04 3E 2A 02 01 03 00 EC F8 00 EE F3 0C 1E ... BB.
XORBIT_IBEACON_AD = hexbytes("""
    02 01 04 1A FF 4C 00 02 15 8D EE FB B9 F7 38 42 97 80
    40 96 66 8B B4 42 81 13 88 0F 4E C1
""")
# xorbit/py-decode-beacon decode_test.py ("1 iBeacon and 1 AltBeacon advertisement"),
# the second report: 1B FF 44 01 BE AC ... 55, then RSSI B1.
XORBIT_ALTBEACON_AD = hexbytes("""
    1B FF 44 01 BE AC 8D EE FB B9 F7 38 42 97 80
    40 96 66 8B B4 42 81 13 88 0F 4F C1 55
""")
# citruz/beacontools tests/test_parser.py test_cypress_beacon: a Cypress CYALKIT-E02
# sensor beacon, which packs temperature and humidity into the iBeacon minor.
CYPRESS_IBEACON_AD = hexbytes("""
    02 01 04 1a ff 4c 00 02 15 00 05 00 01 00 00 10 00
    80 00 00 80 5f 9b 01 31 00 02 6c 66 c3
""")
# The Eddystone captures added to py-decode-beacon's decode_test.py in a fork of
# xorbit/py-decode-beacon ("BlueZ message with an Eddystone UID / URL / TLM
# advertisement"): one beacon, address 17:01:C5:57:5F:6D... , trailing RSSI stripped.
FORK_EDDYSTONE_UID_AD = hexbytes("""
    02 01 06 03 03 AA FE 15 16 AA FE 00 DE 5D C3 34 87 F0 2E 47 7D 40 58 01 17 C5 57 5F 6D
""")
FORK_EDDYSTONE_URL_AD = hexbytes("""
    02 01 06 03 03 AA FE 13 16 AA FE 10 DE 02 74 6F 6B 2E 74 63 2F 57 6A 2F 42 43 56
""")
FORK_EDDYSTONE_TLM_AD = hexbytes("""
    02 01 06 03 03 AA FE 11 16 AA FE 20 00 0C 3C 20 00 00 00 0F BC 00 00 49 BA
""")
# citruz/beacontools tests/test_parser.py: test_eddystone_uid, _url, _tlm (its final
# byte e4 lies past the AD structure and is left out), _tlm_enc and _eid.
BEACONTOOLS_UID_AD = hexbytes("""
    02 01 06 03 03 aa fe 17 16 aa fe 00 e3 12 34 56 78 90 12 34 67 89 01
    00 00 00 00 00 01 00 00
""")
BEACONTOOLS_URL_AD = b"\x03\x03\xaa\xfe\x13\x16\xaa\xfe\x10\xf8\x03github\x00citruz"
BEACONTOOLS_TLM_AD = hexbytes("""
    02 01 06 03 03 aa fe 11 16 aa fe 20 00 0b 18 13 00 00 00 14 67 00 00 2a c4
""")
# Its eTLM packet says AD length 0x11, which holds only 14 of the frame's 18 bytes
# (beacontools does not check AD lengths); 0x15 here so the whole frame is inside.
BEACONTOOLS_ETLM_AD = hexbytes("""
    02 01 06 03 03 aa fe 15 16 aa fe 20 01 41 41 41 41 41 41 41 41 41 41 41 41 de ad be ff
""")
BEACONTOOLS_EID_AD = b"\x02\x01\x06\x03\x03\xaa\xfe\x0d\x16\xaa\xfe\x30\xe3EID_test"


def eddystone_of(adv: bytes) -> bytes:
    """The Eddystone service data of an advert."""
    return bleak_view(adv)[1][EDDYSTONE_SERVICE_UUID]


# Valid bytes of every frame kind, for truncation and structured fuzzing.
VALID_TOKEN = token_payload()
VALID_IBEACON = ibeacon_payload(bytes(range(16)), 1, 2, -59)
VALID_ALTBEACON = altbeacon_payload(bytes(range(20)), -60, 0x55)
VALID_UID = eddystone_uid_data(bytes(range(10)), bytes(range(10, 16)), -20)
VALID_URL = eddystone_url_data("https://goo.gl/Aq18zF", -18)  # the spec's example URL
VALID_TLM = eddystone_tlm_data(3000, 21.5, 1234, 5678.9)
VALID_ETLM = b"\x20\x01" + bytes(range(12)) + b"\xde\xad\xbe\xef"
VALID_EID = eddystone_eid_data(bytes.fromhex("A9B76A71C5F89290"), -20)
VALID_EDDYSTONE = [VALID_UID, VALID_URL, VALID_TLM, VALID_ETLM, VALID_EID]


# --- declared types, for fuzzing -------------------------------------------------------


def int8(value: object) -> bool:
    return type(value) is int and -128 <= value <= 127


def uint(value: object, bits: int) -> bool:
    return type(value) is int and 0 <= value < 1 << bits


def sized(value: object, size: int) -> bool:
    return type(value) is bytes and len(value) == size


FIELD_CHECKS: dict[type, Callable[[object], bool]] = {
    ShopperToken: lambda f: sized(f.token, 8) and int8(f.tx_power),
    IBeacon: lambda f: (
        sized(f.uuid, 16) and uint(f.major, 16) and uint(f.minor, 16) and int8(f.tx_power)
    ),
    AltBeacon: lambda f: (
        uint(f.company_id, 16)
        and sized(f.beacon_id, 20)
        and int8(f.ref_rssi)
        and uint(f.mfg_reserved, 8)
    ),
    EddystoneUid: lambda f: sized(f.namespace, 10) and sized(f.instance, 6) and int8(f.tx_power),
    EddystoneUrl: lambda f: (
        type(f.url) is str
        and f.url.startswith(("http://", "https://"))
        and f.url.isascii()
        and int8(f.tx_power)
    ),
    EddystoneTlm: lambda f: (
        f.version == 0
        and uint(f.battery_mv, 16)
        and (f.temperature_c is None or -128 <= f.temperature_c < 128)
        and uint(f.adv_count, 32)
        and 0 <= f.uptime_s < 2**32 / 10
    ),
    EddystoneEtlm: lambda f: sized(f.etlm, 12) and uint(f.salt, 16) and uint(f.mic, 16),
    EddystoneEid: lambda f: sized(f.eid, 8) and int8(f.tx_power),
    Malformed: lambda f: f.frame in FRAME_NAMES and f.reason in REASONS,
}


def assert_declared(result: object, allowed: tuple[type, ...]) -> None:
    """``result`` is None or one of ``allowed`` and its fields have their declared types."""
    if result is None:
        return
    assert type(result) in allowed, result
    assert FIELD_CHECKS[type(result)](result), result


ANY_FRAME = (*FIELD_CHECKS,)
EDDYSTONE_RESULTS = (
    EddystoneUid,
    EddystoneUrl,
    EddystoneTlm,
    EddystoneEtlm,
    EddystoneEid,
    Malformed,
)

# Every parser with the result types it declares, each taking one bytes argument.
PARSERS: dict[str, tuple[Callable[[bytes], object], tuple[type, ...]]] = {
    "shopper_token": (parse_shopper_token, (ShopperToken, Malformed)),
    "ibeacon": (parse_ibeacon, (IBeacon, Malformed)),
    "altbeacon": (lambda p: parse_altbeacon(RADIUS_COMPANY_ID, p), (AltBeacon, Malformed)),
    "manufacturer_token_id": (
        lambda p: parse_manufacturer(DEV_COMPANY_ID, p, DEV_COMPANY_ID),
        (ShopperToken, AltBeacon, Malformed),
    ),
    "manufacturer_apple": (
        lambda p: parse_manufacturer(APPLE_COMPANY_ID, p, DEV_COMPANY_ID),
        (IBeacon, AltBeacon, Malformed),
    ),
    "manufacturer_other": (
        lambda p: parse_manufacturer(RADIUS_COMPANY_ID, p, DEV_COMPANY_ID),
        (AltBeacon, Malformed),
    ),
    "eddystone": (parse_eddystone, EDDYSTONE_RESULTS),
    "eddystone_uid": (parse_eddystone_uid, (EddystoneUid, Malformed)),
    "eddystone_url": (parse_eddystone_url, (EddystoneUrl, Malformed)),
    "eddystone_tlm": (parse_eddystone_tlm, (EddystoneTlm, EddystoneEtlm, Malformed)),
    "eddystone_eid": (parse_eddystone_eid, (EddystoneEid, Malformed)),
}


# --- shopper token --------------------------------------------------------------------


def test_shopper_token_parses_contract_layout() -> None:
    """01 || token || power parses to the token and the power (docs/contracts.md section 2)."""
    payload = hexbytes("01 5e 40 41 bd 37 d2 e8 ef c5")
    assert parse_shopper_token(payload) == ShopperToken(CONTRACT_TOKEN, -59)


def test_shopper_token_constants_match_the_contract() -> None:
    """The token frame is version 1 and 10 bytes long."""
    assert (TOKEN_FRAME_VERSION, TOKEN_PAYLOAD_LEN) == (1, 10)


@pytest.mark.parametrize(("byte", "dbm"), [(0x00, 0), (0x7F, 127), (0x80, -128), (0xFF, -1)])
def test_shopper_token_power_is_signed(byte: int, dbm: int) -> None:
    """The measured-power byte reads as int8."""
    result = parse_shopper_token(b"\x01" + CONTRACT_TOKEN + bytes((byte,)))
    assert isinstance(result, ShopperToken)
    assert result.tx_power == dbm


def test_shopper_token_token_is_hashable_bytes() -> None:
    """The parsed token is bytes, so it can be looked up in the token table."""
    result = parse_shopper_token(VALID_TOKEN)
    assert isinstance(result, ShopperToken)
    assert {CONTRACT_TOKEN: "shopper"}[result.token] == "shopper"


@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_shopper_token_unknown_version_is_malformed(version: int) -> None:
    """A version byte other than 1 makes the payload Malformed(bad version)."""
    assert parse_shopper_token(token_payload(version=version)) == Malformed(
        "shopper_token", BAD_VERSION
    )


@pytest.mark.parametrize("size", range(TOKEN_PAYLOAD_LEN))
def test_shopper_token_truncated_is_malformed(size: int) -> None:
    """A token payload cut at any length is Malformed(truncated)."""
    assert parse_shopper_token(VALID_TOKEN[:size]) == Malformed("shopper_token", TRUNCATED)


def test_shopper_token_too_long_is_malformed() -> None:
    """A token payload with an extra byte is Malformed(bad length)."""
    assert parse_shopper_token(VALID_TOKEN + b"\x00") == Malformed("shopper_token", BAD_LENGTH)


def test_shopper_token_builder_round_trips() -> None:
    """shopper_token_payload builds what parse_shopper_token reads back."""
    payload = shopper_token_payload(CONTRACT_TOKEN, -70)
    assert payload == token_payload(tx_power=-70)
    assert parse_shopper_token(payload) == ShopperToken(CONTRACT_TOKEN, -70)


@pytest.mark.parametrize(("token", "power"), [(bytes(7), 0), (bytes(9), 0), (bytes(8), 128)])
def test_shopper_token_builder_refuses_bad_arguments(token: bytes, power: int) -> None:
    """The builder raises ValueError for a token not 8 bytes or a power outside int8."""
    with pytest.raises(ValueError):
        shopper_token_payload(token, power)


# --- iBeacon -----------------------------------------------------------------------------


def test_ibeacon_parses_spec_layout() -> None:
    """02 15 uuid major minor power parses field by field (big-endian major/minor)."""
    payload = hexbytes("02 15") + bytes(range(16)) + hexbytes("01 02 03 04 c5")
    assert parse_ibeacon(payload) == IBeacon(bytes(range(16)), 0x0102, 0x0304, -59)


def test_ibeacon_xorbit_capture() -> None:
    """xorbit/py-decode-beacon's BlueZ capture reads as uuid 8deefbb9..., 5000, 3918, -63."""
    manufacturer, _ = bleak_view(XORBIT_IBEACON_AD)
    assert parse_ibeacon(manufacturer[APPLE_COMPANY_ID]) == IBeacon(
        hexbytes("8deefbb9f7384297804096668bb44281"), 5000, 3918, -63
    )


def test_ibeacon_cypress_capture() -> None:
    """beacontools' Cypress sensor-beacon capture reads as its uuid, major 2, power -61."""
    manufacturer, _ = bleak_view(CYPRESS_IBEACON_AD)
    assert parse_ibeacon(manufacturer[APPLE_COMPANY_ID]) == IBeacon(
        hexbytes("00050001000010008000 00805f9b0131"), 2, 0x6C66, -61
    )


def test_ibeacon_builder_round_trips() -> None:
    """ibeacon_payload builds what parse_ibeacon reads back."""
    built = ibeacon_payload(hexbytes("8deefbb9f7384297804096668bb44281"), 5000, 3918, -63)
    assert built == bleak_view(XORBIT_IBEACON_AD)[0][APPLE_COMPANY_ID]


def test_ibeacon_other_apple_advert_is_not_an_ibeacon() -> None:
    """Apple's other adverts (here Nearby Info, type 0x10) are None, not Malformed."""
    assert parse_ibeacon(hexbytes("10 05 01 18 5a 3c 5e")) is None


def test_ibeacon_empty_apple_payload_is_not_an_ibeacon() -> None:
    """Empty Apple manufacturer data is None (no type byte to go on)."""
    assert parse_ibeacon(b"") is None


def test_ibeacon_wrong_length_byte_is_malformed() -> None:
    """Type 0x02 with a length byte other than 0x15 is Malformed(bad length)."""
    assert parse_ibeacon(b"\x02\x14" + VALID_IBEACON[2:]) == Malformed("ibeacon", BAD_LENGTH)


@pytest.mark.parametrize("size", range(1, len(VALID_IBEACON)))
def test_ibeacon_truncated_is_malformed(size: int) -> None:
    """An iBeacon cut anywhere after its type byte is Malformed(truncated)."""
    assert parse_ibeacon(VALID_IBEACON[:size]) == Malformed("ibeacon", TRUNCATED)


def test_ibeacon_too_long_is_malformed() -> None:
    """An iBeacon with a trailing byte is Malformed(bad length)."""
    assert parse_ibeacon(VALID_IBEACON + b"\x00") == Malformed("ibeacon", BAD_LENGTH)


# --- AltBeacon ---------------------------------------------------------------------------


def test_altbeacon_xorbit_capture() -> None:
    """xorbit/py-decode-beacon's AltBeacon capture reads under company 0x0144."""
    manufacturer, _ = bleak_view(XORBIT_ALTBEACON_AD)
    assert parse_manufacturer(0x0144, manufacturer[0x0144], DEV_COMPANY_ID) == AltBeacon(
        company_id=0x0144,
        beacon_id=hexbytes("8deefbb9f7384297804096668bb44281 13880f4f"),
        ref_rssi=-63,
        mfg_reserved=0x55,
    )


def test_altbeacon_builder_round_trips() -> None:
    """altbeacon_payload builds what parse_altbeacon reads back."""
    assert parse_altbeacon(RADIUS_COMPANY_ID, VALID_ALTBEACON) == AltBeacon(
        RADIUS_COMPANY_ID, bytes(range(20)), -60, 0x55
    )


def test_altbeacon_without_beacon_code_is_not_an_altbeacon() -> None:
    """Manufacturer data not starting BE AC is None."""
    assert parse_altbeacon(RADIUS_COMPANY_ID, b"\xac\xbe" + VALID_ALTBEACON[2:]) is None


@pytest.mark.parametrize("size", range(2, len(VALID_ALTBEACON)))
def test_altbeacon_truncated_is_malformed(size: int) -> None:
    """An AltBeacon cut anywhere after its code is Malformed(truncated)."""
    assert parse_altbeacon(RADIUS_COMPANY_ID, VALID_ALTBEACON[:size]) == Malformed(
        "altbeacon", TRUNCATED
    )


def test_altbeacon_too_long_is_malformed() -> None:
    """An AltBeacon with a trailing byte is Malformed(bad length)."""
    assert parse_altbeacon(RADIUS_COMPANY_ID, VALID_ALTBEACON + b"\x00") == Malformed(
        "altbeacon", BAD_LENGTH
    )


# --- manufacturer dispatch ----------------------------------------------------------------


def test_manufacturer_token_company_gives_a_token() -> None:
    """Under the configured token company id, a token payload is a ShopperToken."""
    assert parse_manufacturer(0x0A0B, VALID_TOKEN, 0x0A0B) == ShopperToken(CONTRACT_TOKEN, -59)


def test_manufacturer_token_company_garbage_is_a_malformed_token() -> None:
    """Under the token company id, any other payload is a Malformed shopper token."""
    assert parse_manufacturer(0x0A0B, b"\x07\x07", 0x0A0B) == Malformed("shopper_token", TRUNCATED)


def test_manufacturer_token_company_altbeacon_stays_an_altbeacon() -> None:
    """An AltBeacon under the (shared development) token company id is an AltBeacon."""
    result = parse_manufacturer(DEV_COMPANY_ID, VALID_ALTBEACON, DEV_COMPANY_ID)
    assert result == AltBeacon(DEV_COMPANY_ID, bytes(range(20)), -60, 0x55)


def test_manufacturer_token_elsewhere_is_not_a_token() -> None:
    """A token-shaped payload under another company id is not a frame."""
    assert parse_manufacturer(RADIUS_COMPANY_ID, VALID_TOKEN, DEV_COMPANY_ID) is None


def test_manufacturer_apple_gives_an_ibeacon() -> None:
    """Apple manufacturer data holding an iBeacon is an IBeacon."""
    result = parse_manufacturer(APPLE_COMPANY_ID, VALID_IBEACON, DEV_COMPANY_ID)
    assert result == IBeacon(bytes(range(16)), 1, 2, -59)


def test_manufacturer_ibeacon_layout_elsewhere_is_not_an_ibeacon() -> None:
    """An iBeacon layout under a non-Apple company id is not a frame."""
    assert parse_manufacturer(RADIUS_COMPANY_ID, VALID_IBEACON, DEV_COMPANY_ID) is None


# --- Eddystone-UID ----------------------------------------------------------------------


def test_eddystone_uid_parses_spec_layout() -> None:
    """00 power namespace(10) instance(6) 00 00 parses field by field."""
    data = hexbytes("00 ec") + bytes(range(10)) + bytes(range(10, 16)) + b"\x00\x00"
    assert parse_eddystone(data) == EddystoneUid(bytes(range(10)), bytes(range(10, 16)), -20)


def test_eddystone_uid_builder_round_trips() -> None:
    """eddystone_uid_data builds the full 20-byte frame parse_eddystone reads back."""
    assert len(VALID_UID) == 20
    assert parse_eddystone(VALID_UID) == EddystoneUid(bytes(range(10)), bytes(range(10, 16)), -20)


def test_eddystone_uid_beacontools_capture() -> None:
    """beacontools' UID capture reads as namespace 1234...8901, instance ...01, -29 dBm."""
    assert parse_eddystone(eddystone_of(BEACONTOOLS_UID_AD)) == EddystoneUid(
        hexbytes("12345678901234678901"), hexbytes("000000000001"), -29
    )


def test_eddystone_uid_short_form_capture() -> None:
    """The fork's UID capture (18 bytes, RFU omitted as the spec allows) parses."""
    assert parse_eddystone(eddystone_of(FORK_EDDYSTONE_UID_AD)) == EddystoneUid(
        hexbytes("5DC33487F02E477D4058"), hexbytes("0117C5575F6D"), -34
    )


def test_eddystone_uid_rfu_bytes_are_ignored() -> None:
    """Non-zero RFU bytes do not make a UID frame Malformed (they are for later specs)."""
    assert parse_eddystone(VALID_UID[:18] + b"\x12\x34") == parse_eddystone(VALID_UID)


@pytest.mark.parametrize("size", [19, 21, 31])
def test_eddystone_uid_odd_length_is_malformed(size: int) -> None:
    """A UID frame of 19 or more than 20 bytes is Malformed(bad length)."""
    data = (VALID_UID + bytes(16))[:size]
    assert parse_eddystone(data) == Malformed("eddystone_uid", BAD_LENGTH)


# --- Eddystone-URL ----------------------------------------------------------------------


def test_eddystone_url_parses_spec_example() -> None:
    """The spec's example URL https://goo.gl/Aq18zF comes back from its encoding."""
    data = hexbytes("10 ee 03") + b"goo.gl/Aq18zF"
    assert parse_eddystone(data) == EddystoneUrl("https://goo.gl/Aq18zF", -18)


def test_eddystone_url_fork_capture() -> None:
    """The fork's URL capture reads as http://tok.tc/Wj/BCV at -34 dBm."""
    assert parse_eddystone(eddystone_of(FORK_EDDYSTONE_URL_AD)) == EddystoneUrl(
        "http://tok.tc/Wj/BCV", -34
    )


def test_eddystone_url_beacontools_capture() -> None:
    """beacontools' URL capture (with a .com/ expansion) reads as https://github.com/citruz."""
    assert parse_eddystone(eddystone_of(BEACONTOOLS_URL_AD)) == EddystoneUrl(
        "https://github.com/citruz", -8
    )


@pytest.mark.parametrize(
    ("scheme", "prefix"),
    [(0, "http://www."), (1, "https://www."), (2, "http://"), (3, "https://")],
)
def test_eddystone_url_scheme_prefixes(scheme: int, prefix: str) -> None:
    """Each scheme byte 0..3 expands to its prefix."""
    result = parse_eddystone(bytes((0x10, 0, scheme)) + b"a")
    assert result == EddystoneUrl(prefix + "a", 0)


@pytest.mark.parametrize(
    ("code", "text"),
    list(
        enumerate(
            [
                ".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/",
                ".com", ".org", ".edu", ".net", ".info", ".biz", ".gov",
            ]
        )
    ),
)  # fmt: skip
def test_eddystone_url_expansion_codes(code: int, text: str) -> None:
    """Each expansion code 0x00..0x0d becomes its text (eddystone-url/README.md table)."""
    result = parse_eddystone(b"\x10\x00\x02x" + bytes((code,)) + b"y")
    assert result == EddystoneUrl("http://x" + text + "y", 0)


def test_eddystone_url_reserved_bytes_are_malformed() -> None:
    """Every reserved byte (0x0e-0x20, 0x7f-0xff) in the URL makes it Malformed(bad value)."""
    reserved = [*range(0x0E, 0x21), *range(0x7F, 0x100)]
    results = {parse_eddystone(b"\x10\x00\x02ab" + bytes((b,))) for b in reserved}
    assert results == {Malformed("eddystone_url", BAD_VALUE)}


@pytest.mark.parametrize("scheme", [4, 0x10, 0xFF])
def test_eddystone_url_unknown_scheme_is_malformed(scheme: int) -> None:
    """A scheme byte above 3 is Malformed(bad value)."""
    assert parse_eddystone(bytes((0x10, 0, scheme)) + b"a") == Malformed("eddystone_url", BAD_VALUE)


def test_eddystone_url_empty_url_is_the_bare_prefix() -> None:
    """A URL frame with no URL bytes (0 is allowed by the spec) is the scheme prefix alone."""
    assert parse_eddystone(b"\x10\x00\x03") == EddystoneUrl("https://", 0)


def test_eddystone_url_longer_than_17_bytes_is_malformed() -> None:
    """A URL frame with 18 encoded bytes is Malformed(bad length)."""
    assert parse_eddystone(b"\x10\x00\x03" + b"a" * 18) == Malformed("eddystone_url", BAD_LENGTH)


URL_TEXT = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)


@given(
    scheme=st.sampled_from(["http://www.", "https://www.", "http://", "https://"]), rest=URL_TEXT
)
def test_eddystone_url_builder_round_trips(scheme: str, rest: str) -> None:
    """Any URL that fits comes back from eddystone_url_data unchanged."""
    try:
        data = eddystone_url_data(scheme + rest, -10)
    except ValueError:
        assume(False)  # too long to fit 17 bytes: not a URL a beacon could send
    assert parse_eddystone(data) == EddystoneUrl(scheme + rest, -10)


def test_eddystone_url_builder_uses_expansions() -> None:
    """The builder encodes .com/ as one byte (0x00), as a beacon would."""
    assert eddystone_url_data("https://github.com/citruz", -8) == eddystone_of(BEACONTOOLS_URL_AD)


# --- Eddystone-TLM ----------------------------------------------------------------------


def test_eddystone_tlm_fork_capture() -> None:
    """The fork's TLM capture reads as 3132 mV, 32.0 °C, 4028 adverts, 1887.4 s."""
    assert parse_eddystone(eddystone_of(FORK_EDDYSTONE_TLM_AD)) == EddystoneTlm(
        version=0, battery_mv=3132, temperature_c=32.0, adv_count=4028, uptime_s=1887.4
    )


def test_eddystone_tlm_beacontools_capture() -> None:
    """beacontools' TLM capture reads as 2840 mV, 19.0 °C, 5223 adverts, 1094.8 s."""
    # beacontools asserts seconds_since_boot == 10948: it reports SEC_CNT raw, but
    # tlm-plain.md says SEC_CNT counts tenths of a second, so 1094.8 s.
    assert parse_eddystone(eddystone_of(BEACONTOOLS_TLM_AD)) == EddystoneTlm(
        version=0, battery_mv=2840, temperature_c=19.0, adv_count=5223, uptime_s=1094.8
    )


@pytest.mark.parametrize(
    ("raw", "celsius"),
    [
        (0x0000, 0.0),
        (0x1580, 21.5),
        (0xFF80, -0.5),
        (0x7FFF, 127 + 255 / 256),
        (0x8001, -127.99609375),
    ],
)
def test_eddystone_tlm_temperature_is_signed_8_8(raw: int, celsius: float) -> None:
    """TEMP reads as signed 8.8 fixed point."""
    data = b"\x20\x00\x0b\xb8" + raw.to_bytes(2, "big") + bytes(8)
    result = parse_eddystone(data)
    assert isinstance(result, EddystoneTlm)
    assert result.temperature_c == celsius


def test_eddystone_tlm_no_temperature_sensor_is_none() -> None:
    """TEMP 0x8000 (the spec's "not supported") reads as None."""
    result = parse_eddystone(eddystone_tlm_data(3000, None, 1, 1.0))
    assert isinstance(result, EddystoneTlm)
    assert result.temperature_c is None


def test_eddystone_tlm_builder_round_trips() -> None:
    """eddystone_tlm_data builds what parse_eddystone reads back."""
    assert parse_eddystone(VALID_TLM) == EddystoneTlm(0, 3000, 21.5, 1234, 5678.9)


def test_eddystone_etlm_beacontools_capture() -> None:
    """beacontools' encrypted TLM reads as 12 bytes of ETLM, salt 0xDEAD, MIC 0xBEFF."""
    # beacontools reads salt and MIC little-endian (44510, 65470); tlm-encrypted.md
    # says all multi-byte values are big-endian, so 0xDEAD and 0xBEFF.
    assert parse_eddystone(eddystone_of(BEACONTOOLS_ETLM_AD)) == EddystoneEtlm(
        etlm=b"A" * 12, salt=0xDEAD, mic=0xBEFF
    )


@pytest.mark.parametrize("version", [2, 0x10, 0xFF])
def test_eddystone_tlm_unknown_version_is_malformed(version: int) -> None:
    """A TLM version other than 0 and 1 is Malformed(bad version)."""
    data = bytes((0x20, version)) + VALID_TLM[2:]
    assert parse_eddystone(data) == Malformed("eddystone_tlm", BAD_VERSION)


@pytest.mark.parametrize("frame", [VALID_TLM, VALID_ETLM], ids=["plain", "encrypted"])
def test_eddystone_tlm_too_long_is_malformed(frame: bytes) -> None:
    """A TLM frame with a trailing byte is Malformed(bad length)."""
    assert parse_eddystone(frame + b"\x00") == Malformed("eddystone_tlm", BAD_LENGTH)


# --- Eddystone-EID ----------------------------------------------------------------------


def test_eddystone_eid_beacontools_capture() -> None:
    """beacontools' EID capture reads as EID b"EID_test" at -29 dBm."""
    assert parse_eddystone(eddystone_of(BEACONTOOLS_EID_AD)) == EddystoneEid(b"EID_test", -29)


def test_eddystone_eid_builder_round_trips() -> None:
    """eddystone_eid_data builds what parse_eddystone reads back."""
    assert parse_eddystone(VALID_EID) == EddystoneEid(bytes.fromhex("A9B76A71C5F89290"), -20)


def test_eddystone_eid_too_long_is_malformed() -> None:
    """An EID frame with a trailing byte is Malformed(bad length) (its length is fixed)."""
    assert parse_eddystone(VALID_EID + b"\x00") == Malformed("eddystone_eid", BAD_LENGTH)


# --- Eddystone dispatch -----------------------------------------------------------------


@pytest.mark.parametrize("frame_type", [0x40, 0x50, 0x01, 0xFF])
def test_eddystone_unknown_frame_type_is_not_a_frame(frame_type: int) -> None:
    """Reserved or unknown Eddystone frame types are None."""
    assert parse_eddystone(bytes((frame_type,)) + bytes(19)) is None


def test_eddystone_empty_service_data_is_malformed() -> None:
    """Empty Eddystone service data is Malformed(eddystone, truncated)."""
    assert parse_eddystone(b"") == Malformed("eddystone", TRUNCATED)


@pytest.mark.parametrize(
    ("parser", "data"),
    [
        (parse_eddystone_uid, VALID_URL),
        (parse_eddystone_url, VALID_TLM),
        (parse_eddystone_tlm, VALID_EID),
        (parse_eddystone_eid, VALID_UID),
    ],
    ids=["uid", "url", "tlm", "eid"],
)
def test_eddystone_parser_ignores_other_frame_types(
    parser: Callable[[bytes], object], data: bytes
) -> None:
    """Each per-type Eddystone parser returns None for another frame type."""
    assert parser(data) is None


# --- truncation of every frame at every length -------------------------------------------

FIXED_LENGTH_EDDYSTONE = {
    "uid": (VALID_UID, "eddystone_uid"),
    "tlm": (VALID_TLM, "eddystone_tlm"),
    "etlm": (VALID_ETLM, "eddystone_tlm"),
    "eid": (VALID_EID, "eddystone_eid"),
}


@pytest.mark.parametrize("kind", FIXED_LENGTH_EDDYSTONE)
def test_fixed_length_eddystone_truncated_is_malformed(kind: str) -> None:
    """UID (below 18), TLM, eTLM and EID frames cut at any length are Malformed(truncated)."""
    data, name = FIXED_LENGTH_EDDYSTONE[kind]
    shortest_valid = 18 if kind == "uid" else len(data)
    for size in range(1, shortest_valid):
        assert parse_eddystone(data[:size]) == Malformed(name, TRUNCATED), size


def test_eddystone_url_truncated_inside_its_head_is_malformed() -> None:
    """A URL frame cut before its scheme byte is Malformed(truncated)."""
    assert {parse_eddystone(VALID_URL[:size]) for size in (1, 2)} == {
        Malformed("eddystone_url", TRUNCATED)
    }


def test_eddystone_url_truncated_after_its_head_is_a_shorter_url() -> None:
    """A URL frame cut after its scheme is a valid frame with a prefix of the URL.

    The URL's length is only known from the frame's, so a cut URL cannot be told
    from a short one; what matters is that it is a URL frame, never an exception.
    """
    for size in range(3, len(VALID_URL)):
        result = parse_eddystone(VALID_URL[:size])
        assert isinstance(result, EddystoneUrl), size
        assert "https://goo.gl/Aq18zF".startswith(result.url)


ALL_VALID = {
    "token": (VALID_TOKEN, "shopper_token"),
    "ibeacon": (VALID_IBEACON, "ibeacon"),
    "altbeacon": (VALID_ALTBEACON, "altbeacon"),
    "uid": (VALID_UID, "eddystone"),
    "url": (VALID_URL, "eddystone"),
    "tlm": (VALID_TLM, "eddystone"),
    "etlm": (VALID_ETLM, "eddystone"),
    "eid": (VALID_EID, "eddystone"),
}


@pytest.mark.parametrize("kind", ALL_VALID)
@pytest.mark.parametrize("parser_name", PARSERS)
def test_every_parser_survives_every_truncation_of_every_frame(kind: str, parser_name: str) -> None:
    """Every parser given every prefix of every valid frame returns a declared type."""
    data, _ = ALL_VALID[kind]
    parser, allowed = PARSERS[parser_name]
    for size in range(len(data) + 1):
        assert_declared(parser(data[:size]), allowed)


# --- parse_advert -------------------------------------------------------------------------


def test_advert_with_a_token_gives_the_token() -> None:
    """A typical phone advert (token under the company id, nothing else) gives one token."""
    result = parse_advert({DEV_COMPANY_ID: VALID_TOKEN}, {}, DEV_COMPANY_ID)
    assert result == [ShopperToken(CONTRACT_TOKEN, -59)]


def test_advert_gives_manufacturer_and_eddystone_frames() -> None:
    """An advert with a token and an Eddystone EID gives both, manufacturer first."""
    result = parse_advert(
        {DEV_COMPANY_ID: VALID_TOKEN},
        {EDDYSTONE_SERVICE_UUID: VALID_EID},
        DEV_COMPANY_ID,
    )
    assert result == [
        ShopperToken(CONTRACT_TOKEN, -59),
        EddystoneEid(bytes.fromhex("A9B76A71C5F89290"), -20),
    ]


def test_advert_leaves_out_unknown_entries() -> None:
    """Manufacturer data nobody here speaks and other services' data are left out."""
    result = parse_advert(
        {0x0006: b"\x01\x09\x20\x02", APPLE_COMPANY_ID: hexbytes("10 05 01 18 5a 3c 5e")},
        {OTHER_UUID: b"\x22" * 20},
        DEV_COMPANY_ID,
    )
    assert result == []


def test_advert_keeps_malformed_frames() -> None:
    """A broken frame of a known kind is reported as Malformed, not dropped."""
    result = parse_advert({DEV_COMPANY_ID: b"\x01\x02"}, {}, DEV_COMPANY_ID)
    assert result == [Malformed("shopper_token", TRUNCATED)]


def test_advert_empty_gives_nothing() -> None:
    """An advert with neither manufacturer nor service data gives no frames."""
    assert parse_advert({}, {}, DEV_COMPANY_ID) == []


def test_advert_xorbit_ibeacon_capture() -> None:
    """The xorbit iBeacon capture, split as bleak does, gives its IBeacon."""
    manufacturer, service = bleak_view(XORBIT_IBEACON_AD)
    assert parse_advert(manufacturer, service, DEV_COMPANY_ID) == [
        IBeacon(hexbytes("8deefbb9f7384297804096668bb44281"), 5000, 3918, -63)
    ]


def test_advert_fork_tlm_capture() -> None:
    """The fork's TLM capture, split as bleak does, gives its TLM frame."""
    manufacturer, service = bleak_view(FORK_EDDYSTONE_TLM_AD)
    assert parse_advert(manufacturer, service, DEV_COMPANY_ID) == [
        EddystoneTlm(0, 3132, 32.0, 4028, 1887.4)
    ]


# --- frames are values ----------------------------------------------------------------------


def test_frames_are_frozen() -> None:
    """A parsed frame cannot be changed after parsing."""
    frame = parse_shopper_token(VALID_TOKEN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.tx_power = 0  # type: ignore[misc]


def test_frames_are_slotted() -> None:
    """Frames have slots, so a Pi keeping many of them pays no per-instance dict."""
    assert not hasattr(parse_shopper_token(VALID_TOKEN), "__dict__")


# --- fuzzing --------------------------------------------------------------------------------


@pytest.mark.parametrize("parser_name", PARSERS)
@given(data=st.binary(max_size=64))
def test_fuzz_random_bytes_never_raise(parser_name: str, data: bytes) -> None:
    """Any bytes up to 64 long give each parser's declared types, never an exception."""
    parser, allowed = PARSERS[parser_name]
    assert_declared(parser(data), allowed)


MUTATIONS = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 255)), min_size=1, max_size=4)


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None, tail: bytes) -> bytes:
    """``data`` with bytes XOR-flipped, then cut at ``cut`` and ``tail`` appended."""
    out = bytearray(data)
    for index, mask in flips:
        if out:
            out[index % len(out)] ^= mask
    return bytes(out[:cut]) + tail


@pytest.mark.parametrize("parser_name", PARSERS)
@given(
    kind=st.sampled_from(sorted(ALL_VALID)),
    flips=MUTATIONS,
    cut=st.none() | st.integers(0, 30),
    tail=st.binary(max_size=4),
)
def test_fuzz_flipped_valid_frames_never_raise(
    parser_name: str, kind: str, flips: list[tuple[int, int]], cut: int | None, tail: bytes
) -> None:
    """Valid frames with flipped bytes, cuts and tails give declared types, never exceptions."""
    parser, allowed = PARSERS[parser_name]
    data, _ = ALL_VALID[kind]
    assert_declared(parser(mutate(data, flips, cut, tail)), allowed)


@given(
    index=st.integers(0, 19),
    value=st.integers(0, 255),
    base=st.sampled_from(VALID_EDDYSTONE),
)
def test_fuzz_one_byte_changed_eddystone_stays_typed(index: int, value: int, base: bytes) -> None:
    """Changing any one byte of a valid Eddystone frame gives a frame, Malformed or None."""
    data = bytearray(base)
    data[index % len(data)] = value
    assert_declared(parse_eddystone(bytes(data)), EDDYSTONE_RESULTS)


SERVICE_KEYS = st.sampled_from([EDDYSTONE_SERVICE_UUID, OTHER_UUID, "feaa", ""])


@given(
    manufacturer=st.dictionaries(
        st.sampled_from([DEV_COMPANY_ID, APPLE_COMPANY_ID, RADIUS_COMPANY_ID])
        | st.integers(0, 0xFFFF),
        st.binary(max_size=40) | st.sampled_from([VALID_TOKEN, VALID_IBEACON, VALID_ALTBEACON]),
        max_size=4,
    ),
    service=st.dictionaries(
        SERVICE_KEYS, st.binary(max_size=40) | st.sampled_from(VALID_EDDYSTONE), max_size=3
    ),
)
def test_fuzz_parse_advert_never_raises(
    manufacturer: dict[int, bytes], service: dict[str, bytes]
) -> None:
    """Any manufacturer and service data give a list of declared frames, never an exception."""
    result = parse_advert(manufacturer, service, DEV_COMPANY_ID)
    assert type(result) is list
    assert len(result) <= len(manufacturer) + 1
    for frame in result:
        assert frame is not None
        assert_declared(frame, ANY_FRAME)


HUGE = 100_000


def huge_inputs() -> dict[str, bytes]:
    """100 KB inputs: noise, a valid frame's head followed by noise, a constant fill."""
    noise = random.Random(20260118).randbytes(HUGE)
    out = {"noise": noise}
    for kind, (data, _) in ALL_VALID.items():
        out[f"{kind}+noise"] = data + noise
    for byte in (0x00, 0x01, 0x02, 0x10, 0x20, 0x30, 0xBE, 0xFF):
        out[f"fill-{byte:02x}"] = bytes((byte,)) * HUGE
    return out


HUGE_INPUTS = huge_inputs()


@pytest.mark.parametrize("parser_name", PARSERS)
@pytest.mark.parametrize("input_name", HUGE_INPUTS)
def test_huge_input_never_raises(parser_name: str, input_name: str) -> None:
    """A 100 KB input gives each parser's declared types, never an exception."""
    parser, allowed = PARSERS[parser_name]
    assert_declared(parser(HUGE_INPUTS[input_name]), allowed)


def test_huge_advert_never_raises() -> None:
    """parse_advert with 100 KB entries everywhere gives declared frames."""
    manufacturer: Mapping[int, bytes] = {
        DEV_COMPANY_ID: HUGE_INPUTS["token+noise"],
        APPLE_COMPANY_ID: HUGE_INPUTS["ibeacon+noise"],
        RADIUS_COMPANY_ID: HUGE_INPUTS["altbeacon+noise"],
    }
    service = {EDDYSTONE_SERVICE_UUID: HUGE_INPUTS["url+noise"]}
    result = parse_advert(manufacturer, service, DEV_COMPANY_ID)
    assert result == [
        Malformed("shopper_token", BAD_LENGTH),
        Malformed("ibeacon", BAD_LENGTH),
        Malformed("altbeacon", BAD_LENGTH),
        Malformed("eddystone_url", BAD_LENGTH),
    ]
