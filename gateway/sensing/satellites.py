"""Satellites: turn ESP32 satellites' MQTT reports into the adverts the Pi's own radio hands over.

One job: each message an ESPresense or OpenMQTTGateway/Theengs satellite publishes
on the store broker becomes one ``on_advert(scanner, manufacturer_data,
service_data, rssi, wall_ts)`` call, with the same bytes bleak would report, or
one count under a fixed reason in ``stats()["dropped"]``. Satellites' own
online/offline status is tracked from their retained status topics.

What each firmware carries (read from the firmwares' sources):

- OpenMQTTGateway and Theengs Gateway, ``home/{gateway}/BTtoMQTT/{MAC}`` (OMG
  ``main/ZgatewayBT.ino``, ``procBLETask``, with ``pubadvdata`` on):
  ``manufacturerdata`` is the raw manufacturer-specific data in hex, company id
  first and little-endian, so it maps to bleak's ``{company_id: rest}``;
  ``servicedata`` + ``servicedatauuid`` (one service-data entry per message; OMG
  writes the UUID as ``0xfeaa``, Theengs Gateway as ``feaa``) map to ``{128-bit
  UUID: bytes}``; ``rssi`` is the radio's integer reading of that advert.
  Everything the resolver needs arrives: shopper tokens, Eddystone-EID, iBeacons.
- ESPresense, ``espresense/devices/{id}/{room}`` (``lib/BleFingerprint/
  BleFingerprint.cpp``): a fingerprint *id* instead of bytes. Only
  ``iBeacon:<uuid>-<major>-<minor>`` carries a whole identity; it maps back to
  Apple's ``02 15 uuid major minor power`` with ``rssi@1m`` as the power byte.
  ``md:<company>:<length>`` keeps only the company id and the length (a shopper
  token's 8 bytes are gone), ``eddy:`` is Eddystone-UID only (v3; current v4
  builds dropped Eddystone with NimBLE 2), and no id carries an Eddystone-EID.
  Those ids are counted as ``unsupported_id`` (firmware_configs/satellites/).

Privacy: an advert that does not resolve must leave no trace. Nothing of a
message outlives ``on_message``: the decoder keeps counts per reason and per
configured satellite, never a device id, MAC or payload, and logs one summary of
counts per ``SUMMARY_INTERVAL_S`` at most.

No asyncio, no I/O: the composition root subscribes ``topic_filters()`` on the
store broker and routes each message to ``on_message``; time comes from the clock.
"""

from __future__ import annotations

import collections
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway.clock import Clock
from gateway.config import SatelliteSection
from gateway.log import get_logger
from gateway.sensing.frames import APPLE_COMPANY_ID

# scanner id, manufacturer data (company id -> bytes after it), service data
# (128-bit lower-case UUID -> bytes), RSSI in dBm, wall time of receipt.
AdvertSink = Callable[[str, Mapping[int, bytes], Mapping[str, bytes], float, float], None]

# --- limits ----------------------------------------------------------------------------

# Both firmwares publish well under 1 KiB (ESPresense fills one small ArduinoJson
# document per report, OMG one JSON_MSG_BUFFER of 512-1024 bytes): four times that
# leaves room for firmware growth and caps what a hostile publisher makes us parse.
MAX_PAYLOAD_BYTES = 4096
# Reports are flat JSON objects (depth 1). Anything nested deeper than this comes
# from neither firmware, and is counted apart from other bad JSON.
MAX_JSON_DEPTH = 4
# A status payload is "online" or "offline"; a few bytes of slack for whitespace.
MAX_STATUS_BYTES = 32
# An advertising set carries at most 255 bytes of AD data (Core spec 5, extended
# advertising; legacy adverts 31): no real manufacturer or service data is longer.
MAX_AD_BYTES = 255
# HCI reports an advert's RSSI as int8 in -127..+20 dBm (LE Advertising Report);
# a value outside is a broken satellite or a hostile payload, never a measurement.
MIN_RSSI_DBM = -127.0
MAX_RSSI_DBM = 20.0
# ESPresense's own settings page bounds rx_adj_rssi to -100..100.
MAX_RX_ADJ_DB = 100.0
# One summary line of counts per minute at most (STYLE: a summary per interval,
# never a line per advert): often enough to see a satellite go quiet.
SUMMARY_INTERVAL_S = 60.0

# --- drop reasons (fixed strings, so health can count them) ----------------------------

TOO_LARGE = "too_large"  # over MAX_PAYLOAD_BYTES, refused unparsed
BAD_TOPIC = "bad_topic"  # not a topic shape either firmware publishes
UNKNOWN_SATELLITE = "unknown_satellite"  # room/gateway not in [[satellites]]
WRONG_FIRMWARE = "wrong_firmware"  # a configured id on the other firmware's topics
BAD_JSON = "bad_json"  # not UTF-8, not JSON, NaN/Infinity literals, not an object
TOO_DEEP = "too_deep"  # nested deeper than MAX_JSON_DEPTH
BAD_FIELD = "bad_field"  # a field missing, of the wrong type or out of range
BAD_RSSI = "bad_rssi"  # RSSI missing, not a finite number, or outside int8 dBm
BAD_HEX = "bad_hex"  # non-hex, odd length, empty or longer than an advert
UNSUPPORTED_ID = "unsupported_id"  # an ESPresense id that carries no usable bytes
NO_ADVERT = "no_advert"  # an OMG message without advertising data (pubadvdata off?)
BAD_STATUS = "bad_status"  # a status payload other than online/offline
CALLBACK_FAILED = "callback_failed"  # on_advert raised (a bug downstream)
INTERNAL_ERROR = "internal_error"  # this module raised (a bug here)

DROP_REASONS: tuple[str, ...] = (
    TOO_LARGE,
    BAD_TOPIC,
    UNKNOWN_SATELLITE,
    WRONG_FIRMWARE,
    BAD_JSON,
    TOO_DEEP,
    BAD_FIELD,
    BAD_RSSI,
    BAD_HEX,
    UNSUPPORTED_ID,
    NO_ADVERT,
    BAD_STATUS,
    CALLBACK_FAILED,
    INTERNAL_ERROR,
)

ESPRESENSE = "espresense"
OPENMQTTGATEWAY = "openmqttgateway"

# --- formats ------------------------------------------------------------------------------

# BleFingerprint.cpp: Sprintf("iBeacon:%s-%u-%u", proximity UUID, major, minor);
# NimBLE prints the UUID lower-case in transmitted (big-endian) order.
_IBEACON_ID = re.compile(
    r"iBeacon:([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"-([0-9]{1,5})-([0-9]{1,5})"
)
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_HEX4 = re.compile(r"[0-9a-f]{4}")
_HEX8 = re.compile(r"[0-9a-f]{8}")
_UUID128 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The Bluetooth base UUID: a 16- or 32-bit UUID xxxx is 0000xxxx-0000-1000-8000-00805f9b34fb.
_BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"
_IBEACON_HEAD = b"\x02\x15"  # Apple type 0x02 (iBeacon), 21 bytes follow
_MAX_SAFE_INT = 2**53  # beyond this a JSON integer is not a measurement (nor a float)
_NO_DATA: Mapping[Any, bytes] = MappingProxyType({})


def _refuse_constant(name: str) -> float:
    """json.loads hook: NaN and Infinity are not JSON, and neither firmware writes them."""
    raise ValueError("non-finite constant")


def _nested_deeper_than(doc: Any, limit: int) -> bool:
    """True when ``doc`` (parsed JSON) nests containers more than ``limit`` deep."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def _load_object(payload: bytes) -> dict[str, Any] | str:
    """The JSON object in ``payload``, or the drop reason."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return TOO_LARGE
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:  # the C parser's own guard, far beyond MAX_JSON_DEPTH
        return TOO_DEEP
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return BAD_JSON
    if type(doc) is dict:
        # Reports are flat: only a document with a nested value needs the walk.
        nested = any(type(v) is dict or type(v) is list for v in doc.values())
        return TOO_DEEP if nested and _nested_deeper_than(doc, MAX_JSON_DEPTH) else doc
    if type(doc) is list and _nested_deeper_than(doc, MAX_JSON_DEPTH):
        return TOO_DEEP
    return BAD_JSON


def _number(value: Any) -> float | None:
    """A finite JSON number as a float; None for anything else (bool included)."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int and -_MAX_SAFE_INT < value < _MAX_SAFE_INT:
        return float(value)
    return None


def _rssi(value: float | None) -> float | None:
    if value is None or not MIN_RSSI_DBM <= value <= MAX_RSSI_DBM:
        return None
    return value


def _hex_bytes(value: Any) -> bytes | None:
    """Bytes from a hex string of whole bytes (1..MAX_AD_BYTES); None otherwise."""
    if type(value) is not str or len(value) > 2 * MAX_AD_BYTES or not _HEX.fullmatch(value):
        return None
    return bytes.fromhex(value)


def service_uuid(value: Any) -> str | None:
    """A service-data UUID as bleak keys it (128-bit, lower case), from any firmware's form.

    OMG writes NimBLE's ``0xfeaa``, Theengs Gateway ``feaa``; 32-bit and full
    128-bit forms are accepted too. None for anything else.
    """
    if type(value) is not str or len(value) > 36:
        return None
    text = value.lower()
    if text.startswith("0x"):
        text = text[2:]
    if len(text) == 4 and _HEX4.fullmatch(text):
        return "0000" + text + _BASE_UUID_TAIL
    if len(text) == 8 and _HEX8.fullmatch(text):
        return text + _BASE_UUID_TAIL
    if _UUID128.fullmatch(text):
        return text
    return None


def _status_value(payload: bytes) -> bool | None:
    if len(payload) > MAX_STATUS_BYTES:
        return None
    text = payload.strip()
    if text == b"online":
        return True
    if text == b"offline":
        return False
    return None


# (manufacturer data, service data, rssi) or a drop reason
_Decoded = tuple[Mapping[int, bytes], Mapping[str, bytes], float] | str


def decode_espresense(device_id: str, doc: Mapping[str, Any]) -> _Decoded:
    """The advert bytes an ESPresense report stands for, or the drop reason.

    ``device_id`` is the topic's ``{id}`` segment; the payload's ``id`` must agree.
    """
    match = _IBEACON_ID.fullmatch(device_id)
    if match is None:
        return UNSUPPORTED_ID
    reported_id = doc.get("id", device_id)
    if reported_id != device_id:
        return BAD_FIELD
    major, minor = int(match[2]), int(match[3])
    if major > 0xFFFF or minor > 0xFFFF:
        return BAD_FIELD
    # RSSI: the report's ``rssi`` field, never ``distance`` (a model's output) nor
    # v3's ``raw`` (a distance too, despite its name). v3 sends an integer reading;
    # v4 sends a float that ESPresense has already filtered (median/IQR over recent
    # adverts) after subtracting the node's ``rx_adj_rssi``, which it reports as
    # ``rxAdj``: it is added back so that every scanner speaks in what its radio
    # heard and the reference beacons (identity/presence.py) are the one correction.
    # The filtering cannot be undone; it adds a second or so of lag.
    rssi = _number(doc.get("rssi"))
    if rssi is None:
        return BAD_RSSI
    if "rxAdj" in doc:
        rx_adj = _number(doc["rxAdj"])
        if rx_adj is None or abs(rx_adj) > MAX_RX_ADJ_DB:
            return BAD_FIELD
        rssi += rx_adj
    if _rssi(rssi) is None:
        return BAD_RSSI
    # ``rssi@1m`` is the iBeacon's own measured-power byte (unless the store
    # overrode it per device on the node): the power byte of the frame.
    power = _number(doc.get("rssi@1m"))
    if power is None or not -128 <= power <= 127:
        return BAD_FIELD
    frame = (
        _IBEACON_HEAD
        + bytes.fromhex(match[1].replace("-", ""))
        + major.to_bytes(2, "big")
        + minor.to_bytes(2, "big")
        + (round(power) & 0xFF).to_bytes(1, "big")
    )
    return {APPLE_COMPANY_ID: frame}, _NO_DATA, rssi


def decode_openmqttgateway(doc: Mapping[str, Any]) -> _Decoded:
    """The advert bytes an OpenMQTTGateway/Theengs report carries, or the drop reason."""
    manufacturer: Mapping[int, bytes] = _NO_DATA
    service: Mapping[str, bytes] = _NO_DATA
    raw = doc.get("manufacturerdata")
    if raw is not None:
        data = _hex_bytes(raw)
        if data is None:
            return BAD_HEX
        if len(data) < 2:
            return BAD_FIELD  # no room for the company id
        manufacturer = {data[0] | data[1] << 8: data[2:]}
    service_hex = doc.get("servicedata")
    service_key = doc.get("servicedatauuid")
    if service_hex is not None or service_key is not None:
        if service_hex is None or service_key is None:
            return BAD_FIELD
        data = _hex_bytes(service_hex)
        if data is None:
            return BAD_HEX
        key = service_uuid(service_key)
        if key is None:
            return BAD_FIELD
        service = {key: data}
    if not manufacturer and not service:
        # A tracker's "offline" state, a connect result, or pubadvdata turned off.
        return NO_ADVERT
    # RSSI: ``rssi``, the radio's integer reading of this very advert.
    rssi = _rssi(_number(doc.get("rssi")))
    if rssi is None:
        return BAD_RSSI
    return manufacturer, service, rssi


@dataclass(slots=True)
class _Satellite:
    """What the decoder knows about one configured satellite: counts and times only."""

    firmware: str
    messages: int = 0  # reports received (status messages not included)
    adverts: int = 0  # reports handed to on_advert
    dropped: int = 0
    last_message_at: float | None = None  # clock.monotonic()
    online: bool | None = None  # from its retained status topic; None until one arrives


class SatelliteDecoder:
    """Routes satellites' MQTT messages to ``on_advert``; counts what it drops, keeps nothing."""

    def __init__(
        self, satellites: Iterable[SatelliteSection], on_advert: AdvertSink, clock: Clock
    ) -> None:
        self._satellites = {s.id: _Satellite(s.firmware) for s in satellites}
        self._on_advert = on_advert
        self._clock = clock
        self._log = get_logger("satellites")
        self.received = 0
        self.adverts = 0
        self.status_updates = 0
        self._dropped: collections.Counter[str] = collections.Counter()
        self._errors: collections.Counter[str] = collections.Counter()  # exception type names
        self._summary_at = clock.monotonic()
        self._summary_base: tuple[int, int, dict[str, int]] = (0, 0, {})

    # -- wiring -------------------------------------------------------------------------

    def topic_filters(self) -> list[str]:
        """What to subscribe on the store broker (reports first, then retained statuses)."""
        return [
            "espresense/devices/+/+",
            "home/+/BTtoMQTT/+",
            "espresense/rooms/+/status",
            "home/+/LWT",
        ]

    # -- the hot path -------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        """One message from the store broker; never raises, whatever it holds."""
        self.received += 1
        try:
            reason = self._dispatch(topic, payload)
        except Exception as exc:  # noqa: BLE001 - must never raise; counted, logged by type only
            reason = INTERNAL_ERROR
            self._errors[type(exc).__name__] += 1
        if reason is not None:
            self._dropped[reason] += 1
        now = self._clock.monotonic()
        if now - self._summary_at >= SUMMARY_INTERVAL_S:
            self._summarise(now)

    def _dispatch(self, topic: str, payload: bytes) -> str | None:
        if type(topic) is not str:
            return BAD_TOPIC
        if type(payload) is not bytes:
            if not isinstance(payload, bytearray | memoryview):
                return BAD_JSON
            payload = bytes(payload)
        parts = topic.split("/", 4)
        n = len(parts)
        if parts[0] == "espresense" and n == 4:
            if parts[1] == "devices":
                return self._report(parts[3], ESPRESENSE, payload, parts[2])
            if parts[1] == "rooms" and parts[3] == "status":
                return self._status(parts[2], ESPRESENSE, payload)
        elif parts[0] == "home":
            if n == 4 and parts[2] == "BTtoMQTT":
                return self._report(parts[1], OPENMQTTGATEWAY, payload, None)
            if n == 3 and parts[2] == "LWT":
                return self._status(parts[1], OPENMQTTGATEWAY, payload)
        return BAD_TOPIC

    def _report(
        self, scanner: str, firmware: str, payload: bytes, device_id: str | None
    ) -> str | None:
        sat = self._satellites.get(scanner)
        if sat is None:
            return UNKNOWN_SATELLITE
        sat.messages += 1
        sat.last_message_at = self._clock.monotonic()
        reason = self._deliver(sat, scanner, firmware, payload, device_id)
        if reason is not None:
            sat.dropped += 1
        return reason

    def _deliver(
        self, sat: _Satellite, scanner: str, firmware: str, payload: bytes, device_id: str | None
    ) -> str | None:
        if sat.firmware != firmware:
            return WRONG_FIRMWARE
        # ESPresense's id is in the topic: most ids carry no bytes, and are dropped
        # before their payload is parsed at all.
        if device_id is not None and _IBEACON_ID.fullmatch(device_id) is None:
            return UNSUPPORTED_ID
        doc = _load_object(payload)
        # isinstance rather than ``type(x) is str``: it narrows the other branch for mypy
        # (a reason is always a plain str constant, so both tests mean the same here).
        if isinstance(doc, str):
            return doc
        decoded = (
            decode_openmqttgateway(doc) if device_id is None else decode_espresense(device_id, doc)
        )
        if isinstance(decoded, str):
            return decoded
        manufacturer, service, rssi = decoded
        try:
            self._on_advert(scanner, manufacturer, service, rssi, self._clock.wall())
        except Exception as exc:  # noqa: BLE001 - a bug downstream must not stop satellites
            self._errors[type(exc).__name__] += 1
            return CALLBACK_FAILED
        sat.adverts += 1
        self.adverts += 1
        return None

    def _status(self, scanner: str, firmware: str, payload: bytes) -> str | None:
        sat = self._satellites.get(scanner)
        if sat is None:
            return UNKNOWN_SATELLITE
        if sat.firmware != firmware:
            return WRONG_FIRMWARE
        online = _status_value(payload)
        if online is None:
            return BAD_STATUS
        sat.online = online
        self.status_updates += 1
        return None

    # -- figures ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts per satellite and per drop reason; nothing here names a device."""
        now = self._clock.monotonic()
        return {
            "received": self.received,
            "adverts": self.adverts,
            "status_updates": self.status_updates,
            "dropped": {reason: self._dropped[reason] for reason in DROP_REASONS},
            "satellites": {
                sat_id: {
                    "firmware": sat.firmware,
                    "messages": sat.messages,
                    "adverts": sat.adverts,
                    "dropped": sat.dropped,
                    "last_message_age_s": None
                    if sat.last_message_at is None
                    else round(now - sat.last_message_at, 1),
                    "online": sat.online,
                }
                for sat_id, sat in self._satellites.items()
            },
        }

    def _summarise(self, now: float) -> None:
        received, adverts, dropped = self._summary_base
        delta = {
            r: n - dropped.get(r, 0) for r, n in self._dropped.items() if n > dropped.get(r, 0)
        }
        fields: dict[str, Any] = {
            "interval_s": round(now - self._summary_at, 1),
            "received": self.received - received,
            "adverts": self.adverts - adverts,
            "dropped": delta,
            "offline": sorted(i for i, s in self._satellites.items() if s.online is False),
            "silent": sorted(
                i
                for i, s in self._satellites.items()
                if s.last_message_at is None or now - s.last_message_at > SUMMARY_INTERVAL_S
            ),
        }
        if CALLBACK_FAILED in delta or INTERNAL_ERROR in delta:
            self._log.warning("satellites_summary", errors=dict(self._errors), **fields)
        else:
            self._log.info("satellites_summary", **fields)
        self._summary_at = now
        self._summary_base = (self.received, self.adverts, dict(self._dropped))
