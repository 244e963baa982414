"""BLE advert layouts: the constants of the frames the gateway decodes, and builders of them.

The gateway decodes three kinds of frame, all inline on the hot path in
``gateway/identity/resolver.py`` (one length check, one slice, one lookup; a
general parser there would cost more than the lookup it feeds): the shopper
token frame under our company id (docs/contracts.md section 2), an iBeacon under
Apple's company id (Apple's ``02 15 uuid major minor power``), and an
Eddystone-EID frame in the Eddystone service data (github.com/google/eddystone,
eddystone-eid). This module holds what those layouts share with the rest of the
package (company and service ids, the token frame's version and length) and
builds the bytes of each frame, plus Eddystone-UID (a foreign device in the
simulator), for the simulator (``gateway/testing/shoppers.py``), tests and
benches. Byte strings are as bleak reports them: manufacturer data without the
company id, service data from the Eddystone frame type byte on.

The builders raise ``ValueError`` on a bad argument: they serve tests,
simulators and benches, where a bad argument is a bug.

Pure: no asyncio, no I/O.
"""

from __future__ import annotations

# --- identifiers -----------------------------------------------------------------

# Bluetooth SIG company identifier of Apple Inc., under which iBeacon lives.
APPLE_COMPANY_ID = 0x004C
# The Eddystone 16-bit service UUID 0xFEAA, in the 128-bit lower-case form that
# bleak uses as the key of ``AdvertisementData.service_data``.
EDDYSTONE_SERVICE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"

# --- shopper token (docs/contracts.md section 2) -------------------------------------------

TOKEN_FRAME_VERSION = 1  # the first payload byte; a new layout gets a new number
TOKEN_BYTES = 8  # HMAC-SHA256 truncated to 64 bits (docs/contracts.md section 2)
# version (1) + token (8) + measured power at 1 m (1).
TOKEN_PAYLOAD_LEN = 1 + TOKEN_BYTES + 1

# --- iBeacon -----------------------------------------------------------------------

# Apple's manufacturer data starts with a type byte; 0x02 is iBeacon, followed by
# 0x15 (21 = the bytes that follow: uuid 16 + major 2 + minor 2 + power 1).
_IBEACON_TYPE = 0x02
_IBEACON_LENGTH = 0x15
_IBEACON_UUID_BYTES = 16

# --- Eddystone ----------------------------------------------------------------------

# Frame type bytes (google/eddystone protocol-specification.md).
_EDDYSTONE_UID = 0x00
_EDDYSTONE_EID = 0x30

EDDYSTONE_NAMESPACE_BYTES = 10
EDDYSTONE_INSTANCE_BYTES = 6
EID_BYTES = 8  # eddystone-eid: the AES output truncated to 64 bits


# --- builders (tests, simulators, benches) ------------------------------------------------


def _int8_byte(value: int, what: str) -> int:
    if not -128 <= value <= 127:
        raise ValueError(f"{what} is a signed byte (-128..127), not {value}")
    return value & 0xFF


def _exact(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise ValueError(f"{what} is {size} bytes, not {len(value)}")
    return bytes(value)


def _u16(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{what} is 0..65535, not {value}")
    return value.to_bytes(2, "big")


def shopper_token_payload(token: bytes, tx_power: int) -> bytes:
    """Manufacturer data (after the company id) carrying ``token``."""
    return (
        bytes((TOKEN_FRAME_VERSION,))
        + _exact(token, TOKEN_BYTES, "a token")
        + bytes((_int8_byte(tx_power, "tx_power"),))
    )


def ibeacon_payload(uuid: bytes, major: int, minor: int, tx_power: int) -> bytes:
    """Apple manufacturer data (after 0x004C) of an iBeacon."""
    return (
        bytes((_IBEACON_TYPE, _IBEACON_LENGTH))
        + _exact(uuid, _IBEACON_UUID_BYTES, "an iBeacon uuid")
        + _u16(major, "major")
        + _u16(minor, "minor")
        + bytes((_int8_byte(tx_power, "tx_power"),))
    )


def eddystone_uid_data(namespace: bytes, instance: bytes, tx_power: int) -> bytes:
    """Eddystone service data of a UID frame (full 20-byte form, RFU zero)."""
    return (
        bytes((_EDDYSTONE_UID, _int8_byte(tx_power, "tx_power")))
        + _exact(namespace, EDDYSTONE_NAMESPACE_BYTES, "a namespace")
        + _exact(instance, EDDYSTONE_INSTANCE_BYTES, "an instance")
        + b"\x00\x00"
    )


def eddystone_eid_data(eid: bytes, tx_power: int) -> bytes:
    """Eddystone service data of an EID frame."""
    return bytes((_EDDYSTONE_EID, _int8_byte(tx_power, "tx_power"))) + _exact(
        eid, EID_BYTES, "an EID"
    )
