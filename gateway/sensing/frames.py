"""BLE advert frames: turn the bytes of an advert into typed frames, never raising.

Every parser takes bytes and returns one of three things:

- a frame dataclass (``ShopperToken``, ``IBeacon``, ``AltBeacon``, ``EddystoneUid``,
  ``EddystoneUrl``, ``EddystoneTlm``, ``EddystoneEtlm``, ``EddystoneEid``);
- ``None``: "not this kind of frame" (another Apple advert, an unknown Eddystone
  frame type, a manufacturer payload nobody here speaks);
- ``Malformed(frame, reason)``: "this kind, but broken" (truncated, wrong length,
  unknown version, a value the spec forbids). ``reason`` is one of a few fixed
  strings (``TRUNCATED``, ``BAD_LENGTH``, ``BAD_VERSION``, ``BAD_VALUE``) so health
  can count them by (frame, reason) without parsing prose.

No input of any length or content makes a parser raise: adverts come from any
radio in range, and one odd device must not take the scanner down. The
builders at the end (``ibeacon_payload`` and friends) do raise ``ValueError``:
they serve tests, simulators and benches, where a bad argument is a bug.

Layouts: docs/contracts.md section 2 (shopper token); Apple's iBeacon layout
(``02 15 uuid major minor power``); the AltBeacon spec (github.com/AltBeacon/spec);
the Eddystone specs (github.com/google/eddystone: eddystone-uid, eddystone-url,
eddystone-tlm/tlm-plain.md, tlm-encrypted.md, eddystone-eid). Byte strings are
as bleak reports them: manufacturer data without the company id, service data
from the Eddystone frame type byte on.

Pure: no asyncio, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# --- identifiers -----------------------------------------------------------------

# Bluetooth SIG company identifier of Apple Inc., under which iBeacon lives.
APPLE_COMPANY_ID = 0x004C
# The Eddystone 16-bit service UUID 0xFEAA, in the 128-bit lower-case form that
# bleak uses as the key of ``AdvertisementData.service_data``.
EDDYSTONE_SERVICE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"

# --- Malformed reasons (fixed strings so they can be counted) ------------------------

TRUNCATED = "truncated"  # shorter than the frame's layout
BAD_LENGTH = "bad length"  # longer than the layout, or a length the layout never has
BAD_VERSION = "bad version"  # a version/type byte this gateway does not know
BAD_VALUE = "bad value"  # a field holds a value the spec forbids

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
IBEACON_PAYLOAD_LEN = 2 + _IBEACON_LENGTH

# --- AltBeacon ----------------------------------------------------------------------

# AltBeacon's beacon code, big-endian 0xBEAC, right after the company id.
_ALTBEACON_CODE = b"\xbe\xac"
ALTBEACON_ID_BYTES = 20
# code (2) + beacon id (20) + reference RSSI (1) + manufacturer reserved (1).
ALTBEACON_PAYLOAD_LEN = 2 + ALTBEACON_ID_BYTES + 1 + 1

# --- Eddystone ----------------------------------------------------------------------

# Frame type bytes (google/eddystone protocol-specification.md); 0x40 and above
# are reserved, so they read as "not a frame we know" (None), not as broken.
_EDDYSTONE_UID = 0x00
_EDDYSTONE_URL = 0x10
_EDDYSTONE_TLM = 0x20
_EDDYSTONE_EID = 0x30

EDDYSTONE_NAMESPACE_BYTES = 10
EDDYSTONE_INSTANCE_BYTES = 6
# type + power + namespace + instance, then 2 RFU bytes. The spec's full frame is
# 20 bytes, but it notes that existing UID beacons truncate the RFU bytes (service
# data length 0x15 instead of 0x17), and such beacons are on sale: accept both.
_UID_SHORT_LEN = 2 + EDDYSTONE_NAMESPACE_BYTES + EDDYSTONE_INSTANCE_BYTES
_UID_FULL_LEN = _UID_SHORT_LEN + 2

# type + power + scheme, then 0 to 17 encoded URL bytes (eddystone-url/README.md).
_URL_HEAD_LEN = 3
_URL_MAX_ENCODED = 17
_URL_SCHEMES = ("http://www.", "https://www.", "http://", "https://")
_URL_EXPANSIONS = (
    ".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/",
    ".com", ".org", ".edu", ".net", ".info", ".biz", ".gov",
)  # fmt: skip
# Byte -> text: 0x00-0x0d expand, 0x21-0x7e are themselves, everything else
# (0x0e-0x20, 0x7f-0xff) is reserved by the spec, so a frame using it is broken.
_URL_TEXT: tuple[str | None, ...] = tuple(
    _URL_EXPANSIONS[b] if b < len(_URL_EXPANSIONS) else chr(b) if 0x21 <= b <= 0x7E else None
    for b in range(256)
)

_TLM_PLAIN = 0x00  # tlm-plain.md
_TLM_ENCRYPTED = 0x01  # tlm-encrypted.md
_TLM_PLAIN_LEN = 14  # type, version, VBATT 2, TEMP 2, ADV_CNT 4, SEC_CNT 4
_ETLM_BYTES = 12
_TLM_ENCRYPTED_LEN = 2 + _ETLM_BYTES + 2 + 2  # type, version, ETLM, SALT, MIC
# TEMP is signed 8.8 fixed point; 0x8000 (-128 °C) means "no sensor".
_TLM_NO_TEMPERATURE = 0x8000
_TLM_UPTIME_TICKS_PER_S = 10  # SEC_CNT counts tenths of a second

EID_BYTES = 8
_EID_LEN = 2 + EID_BYTES  # type + power + EID; the spec fixes the length

# Unsigned byte -> int8 by table: one index instead of a branch or from_bytes on
# the hot path.
_INT8: tuple[int, ...] = tuple(range(128)) + tuple(range(-128, 0))


# --- frames ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Malformed:
    """An advert of a known kind that breaks its layout.

    ``frame`` names the kind (``shopper_token``, ``ibeacon``, ``altbeacon``,
    ``eddystone``, ``eddystone_uid``, ``eddystone_url``, ``eddystone_tlm``,
    ``eddystone_eid``); ``reason`` is one of ``TRUNCATED``, ``BAD_LENGTH``,
    ``BAD_VERSION``, ``BAD_VALUE``.
    """

    frame: str
    reason: str


@dataclass(frozen=True, slots=True)
class ShopperToken:
    """A shopper's rotating token (docs/contracts.md section 2)."""

    token: bytes  # 8 bytes
    tx_power: int  # measured power at 1 m, dBm


@dataclass(frozen=True, slots=True)
class IBeacon:
    """An iBeacon advert (Apple manufacturer data, type 0x02)."""

    uuid: bytes  # 16 bytes, as sent (big-endian)
    major: int
    minor: int
    tx_power: int  # measured power at 1 m, dBm


@dataclass(frozen=True, slots=True)
class AltBeacon:
    """An AltBeacon advert (code 0xBEAC under any company id)."""

    company_id: int
    beacon_id: bytes  # 20 bytes
    ref_rssi: int  # average RSSI at 1 m, dBm
    mfg_reserved: int


@dataclass(frozen=True, slots=True)
class EddystoneUid:
    """Eddystone-UID: a fixed 16-byte beacon id."""

    namespace: bytes  # 10 bytes
    instance: bytes  # 6 bytes
    tx_power: int  # calibrated power at 0 m, dBm


@dataclass(frozen=True, slots=True)
class EddystoneUrl:
    """Eddystone-URL: a compressed URL, expanded."""

    url: str
    tx_power: int  # calibrated power at 0 m, dBm


@dataclass(frozen=True, slots=True)
class EddystoneTlm:
    """Eddystone-TLM, unencrypted (version 0): the beacon's own telemetry."""

    version: int
    battery_mv: int  # 0 when the beacon has no battery sensor (spec)
    temperature_c: float | None  # None when the beacon has no sensor (0x8000)
    adv_count: int  # adverts sent since power-up
    uptime_s: float  # since power-up, 0.1 s resolution


@dataclass(frozen=True, slots=True)
class EddystoneEtlm:
    """Eddystone-TLM, encrypted (version 1): opaque without the tag's identity key."""

    etlm: bytes  # 12 bytes of AES-EAX ciphertext
    salt: int  # 16-bit
    mic: int  # 16-bit message integrity check


@dataclass(frozen=True, slots=True)
class EddystoneEid:
    """Eddystone-EID: an ephemeral id only the tag's resolver can map to the tag."""

    eid: bytes  # 8 bytes
    tx_power: int  # calibrated power at 0 m, dBm


Frame = (
    ShopperToken
    | IBeacon
    | AltBeacon
    | EddystoneUid
    | EddystoneUrl
    | EddystoneTlm
    | EddystoneEtlm
    | EddystoneEid
)

# One instance per outcome: Malformed is frozen, so sharing is safe, and a device
# that keeps sending garbage under our company id costs no allocation.
_TOKEN_TRUNCATED = Malformed("shopper_token", TRUNCATED)
_TOKEN_BAD_LENGTH = Malformed("shopper_token", BAD_LENGTH)
_TOKEN_BAD_VERSION = Malformed("shopper_token", BAD_VERSION)


# --- manufacturer data ------------------------------------------------------------------


def parse_shopper_token(payload: bytes) -> ShopperToken | Malformed:
    """The shopper token in ``payload`` (manufacturer data after our company id).

    On the hot path (hundreds of adverts a second on a Pi): a length check, a
    version check, a slice.
    """
    if len(payload) != TOKEN_PAYLOAD_LEN:
        return _TOKEN_TRUNCATED if len(payload) < TOKEN_PAYLOAD_LEN else _TOKEN_BAD_LENGTH
    if payload[0] != TOKEN_FRAME_VERSION:
        return _TOKEN_BAD_VERSION
    return ShopperToken(payload[1:9], _INT8[payload[9]])


def parse_ibeacon(payload: bytes) -> IBeacon | Malformed | None:
    """An iBeacon from Apple manufacturer data; None for Apple's other adverts."""
    if not payload or payload[0] != _IBEACON_TYPE:
        return None
    n = len(payload)
    if n < 2:
        return Malformed("ibeacon", TRUNCATED)
    if payload[1] != _IBEACON_LENGTH:
        return Malformed("ibeacon", BAD_LENGTH)
    if n != IBEACON_PAYLOAD_LEN:
        return Malformed("ibeacon", TRUNCATED if n < IBEACON_PAYLOAD_LEN else BAD_LENGTH)
    return IBeacon(
        uuid=payload[2:18],
        major=(payload[18] << 8) | payload[19],
        minor=(payload[20] << 8) | payload[21],
        tx_power=_INT8[payload[22]],
    )


def parse_altbeacon(company_id: int, payload: bytes) -> AltBeacon | Malformed | None:
    """An AltBeacon from manufacturer data under any company id; None without 0xBEAC."""
    if payload[:2] != _ALTBEACON_CODE:
        return None
    n = len(payload)
    if n != ALTBEACON_PAYLOAD_LEN:
        return Malformed("altbeacon", TRUNCATED if n < ALTBEACON_PAYLOAD_LEN else BAD_LENGTH)
    return AltBeacon(
        company_id=company_id,
        beacon_id=payload[2:22],
        ref_rssi=_INT8[payload[22]],
        mfg_reserved=payload[23],
    )


def parse_manufacturer(
    company_id: int, payload: bytes, token_company_id: int
) -> Frame | Malformed | None:
    """The frame in one manufacturer-data entry (``company_id`` -> ``payload``)."""
    if company_id == token_company_id:
        token = parse_shopper_token(payload)
        # A development id (0xFFFF) is shared with other people's prototypes: an
        # AltBeacon there is an AltBeacon, not a broken token.
        if type(token) is ShopperToken or payload[:2] != _ALTBEACON_CODE:
            return token
    elif company_id == APPLE_COMPANY_ID:
        beacon = parse_ibeacon(payload)
        if beacon is not None:
            return beacon
    return parse_altbeacon(company_id, payload)


# --- Eddystone service data ------------------------------------------------------------


def parse_eddystone_uid(data: bytes) -> EddystoneUid | Malformed | None:
    """An Eddystone-UID frame (20 bytes, or 18 without the RFU bytes)."""
    if not data or data[0] != _EDDYSTONE_UID:
        return None
    n = len(data)
    if n < _UID_SHORT_LEN:
        return Malformed("eddystone_uid", TRUNCATED)
    if n != _UID_SHORT_LEN and n != _UID_FULL_LEN:
        return Malformed("eddystone_uid", BAD_LENGTH)
    # The RFU bytes are ignored, not checked: they are reserved so that a later
    # spec can use them, and a reader that rejects them would break then.
    return EddystoneUid(namespace=data[2:12], instance=data[12:18], tx_power=_INT8[data[1]])


def parse_eddystone_url(data: bytes) -> EddystoneUrl | Malformed | None:
    """An Eddystone-URL frame, its URL expanded; reserved bytes make it Malformed."""
    if not data or data[0] != _EDDYSTONE_URL:
        return None
    n = len(data)
    if n < _URL_HEAD_LEN:
        return Malformed("eddystone_url", TRUNCATED)
    if n > _URL_HEAD_LEN + _URL_MAX_ENCODED:
        return Malformed("eddystone_url", BAD_LENGTH)
    if data[2] >= len(_URL_SCHEMES):
        return Malformed("eddystone_url", BAD_VALUE)
    parts = [_URL_SCHEMES[data[2]]]
    for b in data[_URL_HEAD_LEN:]:
        text = _URL_TEXT[b]
        if text is None:
            return Malformed("eddystone_url", BAD_VALUE)
        parts.append(text)
    return EddystoneUrl(url="".join(parts), tx_power=_INT8[data[1]])


def parse_eddystone_tlm(data: bytes) -> EddystoneTlm | EddystoneEtlm | Malformed | None:
    """An Eddystone-TLM frame: plain (version 0) or encrypted (version 1)."""
    if not data or data[0] != _EDDYSTONE_TLM:
        return None
    n = len(data)
    if n < 2:
        return Malformed("eddystone_tlm", TRUNCATED)
    version = data[1]
    if version == _TLM_PLAIN:
        if n != _TLM_PLAIN_LEN:
            return Malformed("eddystone_tlm", TRUNCATED if n < _TLM_PLAIN_LEN else BAD_LENGTH)
        raw_temp = (data[4] << 8) | data[5]
        return EddystoneTlm(
            version=version,
            battery_mv=(data[2] << 8) | data[3],
            temperature_c=None
            if raw_temp == _TLM_NO_TEMPERATURE
            else int.from_bytes(data[4:6], "big", signed=True) / 256,
            adv_count=int.from_bytes(data[6:10], "big"),
            uptime_s=int.from_bytes(data[10:14], "big") / _TLM_UPTIME_TICKS_PER_S,
        )
    if version == _TLM_ENCRYPTED:
        if n != _TLM_ENCRYPTED_LEN:
            return Malformed("eddystone_tlm", TRUNCATED if n < _TLM_ENCRYPTED_LEN else BAD_LENGTH)
        return EddystoneEtlm(
            etlm=data[2:14],
            salt=(data[14] << 8) | data[15],
            mic=(data[16] << 8) | data[17],
        )
    return Malformed("eddystone_tlm", BAD_VERSION)


def parse_eddystone_eid(data: bytes) -> EddystoneEid | Malformed | None:
    """An Eddystone-EID frame (exactly 10 bytes)."""
    if not data or data[0] != _EDDYSTONE_EID:
        return None
    n = len(data)
    if n != _EID_LEN:
        return Malformed("eddystone_eid", TRUNCATED if n < _EID_LEN else BAD_LENGTH)
    return EddystoneEid(eid=data[2:10], tx_power=_INT8[data[1]])


_EDDYSTONE_PARSERS = {
    _EDDYSTONE_UID: parse_eddystone_uid,
    _EDDYSTONE_URL: parse_eddystone_url,
    _EDDYSTONE_TLM: parse_eddystone_tlm,
    _EDDYSTONE_EID: parse_eddystone_eid,
}


def parse_eddystone(data: bytes) -> Frame | Malformed | None:
    """The frame in Eddystone service data; None for reserved or unknown frame types."""
    if not data:
        return Malformed("eddystone", TRUNCATED)
    parser = _EDDYSTONE_PARSERS.get(data[0])
    return None if parser is None else parser(data)


# --- whole adverts -----------------------------------------------------------------------


def parse_advert(
    manufacturer_data: Mapping[int, bytes],
    service_data: Mapping[str, bytes],
    token_company_id: int,
) -> list[Frame | Malformed]:
    """Every frame in one advert (bleak's ``manufacturer_data`` and ``service_data``).

    Entries that are no kind of frame known here are left out.
    """
    found: list[Frame | Malformed] = []
    for company_id, payload in manufacturer_data.items():
        frame = parse_manufacturer(company_id, payload, token_company_id)
        if frame is not None:
            found.append(frame)
    if service_data:
        data = service_data.get(EDDYSTONE_SERVICE_UUID)
        if data is not None:
            frame = parse_eddystone(data)
            if frame is not None:
                found.append(frame)
    return found


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
        + _exact(uuid, 16, "an iBeacon uuid")
        + _u16(major, "major")
        + _u16(minor, "minor")
        + bytes((_int8_byte(tx_power, "tx_power"),))
    )


def altbeacon_payload(beacon_id: bytes, ref_rssi: int, mfg_reserved: int = 0) -> bytes:
    """Manufacturer data (after any company id) of an AltBeacon."""
    if not 0 <= mfg_reserved <= 0xFF:
        raise ValueError(f"mfg_reserved is one byte, not {mfg_reserved}")
    return (
        _ALTBEACON_CODE
        + _exact(beacon_id, ALTBEACON_ID_BYTES, "an AltBeacon id")
        + bytes((_int8_byte(ref_rssi, "ref_rssi"), mfg_reserved))
    )


def eddystone_uid_data(namespace: bytes, instance: bytes, tx_power: int) -> bytes:
    """Eddystone service data of a UID frame (full 20-byte form, RFU zero)."""
    return (
        bytes((_EDDYSTONE_UID, _int8_byte(tx_power, "tx_power")))
        + _exact(namespace, EDDYSTONE_NAMESPACE_BYTES, "a namespace")
        + _exact(instance, EDDYSTONE_INSTANCE_BYTES, "an instance")
        + b"\x00\x00"
    )


def eddystone_url_data(url: str, tx_power: int) -> bytes:
    """Eddystone service data of a URL frame (longest matching expansions first)."""
    # Longest scheme first, so "https://www." is not taken as "https://" + "www.".
    by_length = sorted(range(len(_URL_SCHEMES)), key=lambda c: -len(_URL_SCHEMES[c]))
    code = next((c for c in by_length if url.startswith(_URL_SCHEMES[c])), None)
    if code is None:
        raise ValueError(f"an Eddystone URL starts with one of {_URL_SCHEMES}")
    scheme = _URL_SCHEMES[code]
    # Longest expansion first, so ".com/" wins over ".com".
    expansions = sorted(enumerate(_URL_EXPANSIONS), key=lambda ce: -len(ce[1]))
    encoded = bytearray()
    rest = url[len(scheme) :]
    while rest:
        for ecode, text in expansions:
            if rest.startswith(text):
                encoded.append(ecode)
                rest = rest[len(text) :]
                break
        else:
            char = ord(rest[0])
            if not 0x21 <= char <= 0x7E:
                raise ValueError(f"an Eddystone URL has printable ASCII only, not {rest[0]!r}")
            encoded.append(char)
            rest = rest[1:]
    if len(encoded) > _URL_MAX_ENCODED:
        raise ValueError(f"{url!r} encodes to {len(encoded)} bytes, over {_URL_MAX_ENCODED}")
    return bytes((_EDDYSTONE_URL, _int8_byte(tx_power, "tx_power"), code)) + bytes(encoded)


def eddystone_tlm_data(
    battery_mv: int, temperature_c: float | None, adv_count: int, uptime_s: float
) -> bytes:
    """Eddystone service data of a plain (version 0) TLM frame."""
    if temperature_c is None:
        temp = _TLM_NO_TEMPERATURE
    else:
        fixed = round(temperature_c * 256)
        if not -0x8000 < fixed <= 0x7FFF:  # -0x8000 is the "no sensor" marker
            raise ValueError(f"temperature {temperature_c} °C is out of 8.8 range")
        temp = fixed & 0xFFFF
    ticks = round(uptime_s * _TLM_UPTIME_TICKS_PER_S)
    if not 0 <= adv_count <= 0xFFFFFFFF or not 0 <= ticks <= 0xFFFFFFFF:
        raise ValueError("adv_count and uptime are 32-bit counters")
    return (
        bytes((_EDDYSTONE_TLM, _TLM_PLAIN))
        + _u16(battery_mv, "battery_mv")
        + temp.to_bytes(2, "big")
        + adv_count.to_bytes(4, "big")
        + ticks.to_bytes(4, "big")
    )


def eddystone_eid_data(eid: bytes, tx_power: int) -> bytes:
    """Eddystone service data of an EID frame."""
    return bytes((_EDDYSTONE_EID, _int8_byte(tx_power, "tx_power"))) + _exact(
        eid, EID_BYTES, "an EID"
    )
