"""BLE frame builders: the simulator's and the tests' adverts are byte for byte what real
devices send.

Each builder is checked against a published capture or the contract's layout
(the captures are quoted from public code, which each names); decoding those
captures is ``tests/identity/test_resolver.py``'s job, against the resolver.
"""

from __future__ import annotations

import pytest

from gateway.sensing.frames import (
    TOKEN_FRAME_VERSION,
    TOKEN_PAYLOAD_LEN,
    eddystone_eid_data,
    eddystone_uid_data,
    ibeacon_payload,
    shopper_token_payload,
)

# docs/contracts.md section 2 test vector: root key 00..1f at unix 1795000000.
CONTRACT_TOKEN = bytes.fromhex("5e4041bd37d2e8ef")


def hexbytes(text: str) -> bytes:
    """Bytes from a hex dump with spaces and line breaks."""
    return bytes.fromhex("".join(text.split()))


def test_shopper_token_constants_match_the_contract() -> None:
    """The token frame is version 1 and 10 bytes long."""
    assert (TOKEN_FRAME_VERSION, TOKEN_PAYLOAD_LEN) == (1, 10)


def test_shopper_token_builder_writes_the_contract_layout() -> None:
    """shopper_token_payload writes 01 || token || power (docs/contracts.md section 2)."""
    assert shopper_token_payload(CONTRACT_TOKEN, -59) == hexbytes("01 5e 40 41 bd 37 d2 e8 ef c5")


@pytest.mark.parametrize(("token", "power"), [(bytes(7), 0), (bytes(9), 0), (bytes(8), 128)])
def test_shopper_token_builder_refuses_bad_arguments(token: bytes, power: int) -> None:
    """The builder raises ValueError for a token not 8 bytes or a power outside int8."""
    with pytest.raises(ValueError):
        shopper_token_payload(token, power)


def test_ibeacon_builder_matches_the_xorbit_capture() -> None:
    """ibeacon_payload writes what xorbit/py-decode-beacon's BlueZ capture carries after 0x004C."""
    # xorbit/py-decode-beacon IBEACON.md and decode_test.py ("BlueZ message with 1
    # iBeacon advertisement"): AD 1A FF 4C 00, then this.
    captured = hexbytes("02 15 8D EE FB B9 F7 38 42 97 80 40 96 66 8B B4 42 81 13 88 0F 4E C1")
    built = ibeacon_payload(hexbytes("8deefbb9f7384297804096668bb44281"), 5000, 3918, -63)
    assert built == captured


@pytest.mark.parametrize(
    ("uuid", "major", "minor", "power"),
    [
        (bytes(15), 1, 1, 0),
        (bytes(16), -1, 1, 0),
        (bytes(16), 1, 0x10000, 0),
        (bytes(16), 1, 1, -129),
    ],
)
def test_ibeacon_builder_refuses_bad_arguments(
    uuid: bytes, major: int, minor: int, power: int
) -> None:
    """A uuid not 16 bytes, a major or minor outside 16 bits or a power outside int8 raise."""
    with pytest.raises(ValueError):
        ibeacon_payload(uuid, major, minor, power)


def test_eddystone_uid_builder_matches_the_beacontools_capture() -> None:
    """eddystone_uid_data writes the full 20-byte frame of beacontools' UID capture."""
    # citruz/beacontools tests/test_parser.py test_eddystone_uid: AD 17 16 AA FE, then this.
    captured = hexbytes("00 e3 12 34 56 78 90 12 34 67 89 01 00 00 00 00 00 01 00 00")
    built = eddystone_uid_data(hexbytes("12345678901234678901"), hexbytes("000000000001"), -29)
    assert built == captured


def test_eddystone_eid_builder_matches_the_beacontools_capture() -> None:
    """eddystone_eid_data writes beacontools' EID capture (EID "EID_test", -29 dBm)."""
    # citruz/beacontools tests/test_parser.py test_eddystone_eid: AD 0D 16 AA FE, then this.
    assert eddystone_eid_data(b"EID_test", -29) == b"\x30\xe3EID_test"


@pytest.mark.parametrize(("eid", "power"), [(bytes(7), 0), (bytes(9), 0), (bytes(8), 200)])
def test_eddystone_eid_builder_refuses_bad_arguments(eid: bytes, power: int) -> None:
    """An EID not 8 bytes or a power outside int8 raises ValueError."""
    with pytest.raises(ValueError):
        eddystone_eid_data(eid, power)
