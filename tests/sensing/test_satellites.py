"""Satellites: recorded ESPresense and OpenMQTTGateway reports become the Pi radio's advert call."""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.clock import ManualClock
from gateway.config import BrokerSection, SatelliteSection
from gateway.events import Sighting
from gateway.identity.resolver import AdvertResolver
from gateway.identity.tokens import token_at
from gateway.log import configure_logging
from gateway.publish.mqtt import MqttConnection
from gateway.sensing import satellites as sat
from gateway.sensing.satellites import DROP_REASONS, SatelliteDecoder, service_uuid
from gateway.testing.mosquitto import MosquittoBroker

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[1] / "data" / "satellites"
FIRMWARE_CONFIGS = ROOT / "firmware_configs" / "satellites"
FIXTURES = sorted(DATA.glob("*.json"))

# The example store's satellites (firmware_configs/beacons/reference-beacons.toml):
# ESPresense rooms are slugs (lower case, "_"), OMG gateway names keep their "-".
SATELLITES = (
    SatelliteSection(id="sat_produce_1", firmware="espresense", zone="produce"),
    SatelliteSection(id="sat_produce_2", firmware="espresense", zone="produce"),
    SatelliteSection(id="sat_checkout", firmware="espresense", zone="checkout"),
    SatelliteSection(id="sat-entrance-2", firmware="openmqttgateway", zone="entrance"),
    SatelliteSection(id="sat-checkout-2", firmware="openmqttgateway", zone="checkout"),
)
REF_UUID = "5f0c2a7e-3b1d-4e8a-9c61-2d7b8f4a0e13"
ESP_TOPIC = f"espresense/devices/iBeacon:{REF_UUID}-1-2/sat_produce_1"
OMG_TOPIC = "home/sat-entrance-2/BTtoMQTT/5A3F1C9D0E42"
EDDYSTONE = "0000feaa-0000-1000-8000-00805f9b34fb"


@dataclass
class Recorder:
    """An ``on_advert`` that remembers every call (copies, so nothing aliases the decoder)."""

    calls: list[tuple[str, dict[int, bytes], dict[str, bytes], float, float]] = field(
        default_factory=list
    )

    def __call__(
        self,
        scanner: str,
        manufacturer_data: Mapping[int, bytes],
        service_data: Mapping[str, bytes],
        rssi: float,
        wall_ts: float,
    ) -> None:
        self.calls.append((scanner, dict(manufacturer_data), dict(service_data), rssi, wall_ts))


def make_decoder(
    on_advert: Callable[..., None] | None = None, clock: ManualClock | None = None
) -> tuple[SatelliteDecoder, Recorder]:
    rec = Recorder()
    return SatelliteDecoder(SATELLITES, on_advert or rec, clock or ManualClock()), rec


def fixture(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def expected_call(case: dict[str, Any]) -> tuple[str, dict[int, bytes], dict[str, bytes], float]:
    """The (scanner, manufacturer data, service data, rssi) a recorded report must produce."""
    expect = case["expect"]
    return (
        expect["scanner"],
        {int(k, 16): bytes.fromhex(v) for k, v in expect["manufacturer_data"].items()},
        {k: bytes.fromhex(v) for k, v in expect["service_data"].items()},
        expect["rssi"],
    )


def esp_payload(**changes: Any) -> bytes:
    """A v4 ESPresense report of reference beacon 1-2; a value of ... removes the key."""
    doc: dict[str, Any] = {
        "mac": "d3a1c29be4f0",
        "id": f"iBeacon:{REF_UUID}-1-2",
        "rssi@1m": -59,
        "rssi": -61.25,
        "rxAdj": 0,
        "rssiVar": 1.84,
        "distance": 1.12,
        "var": 0.04,
        "int": 1021,
    }
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def omg_payload(**changes: Any) -> bytes:
    """An OMG report of a shopper token frame; a value of ... removes the key."""
    doc: dict[str, Any] = {
        "id": "5A:3F:1C:9D:0E:42",
        "mac_type": 1,
        "adv_type": 0,
        "manufacturerdata": "ffff015e4041bd37d2e8efc5",
        "rssi": -67,
    }
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def dropped(decoder: SatelliteDecoder) -> dict[str, int]:
    return {r: n for r, n in decoder.stats()["dropped"].items() if n}


def accounted(decoder: SatelliteDecoder) -> int:
    s = decoder.stats()
    return s["adverts"] + s["status_updates"] + sum(s["dropped"].values())


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """JSON logs into a buffer for the test, then back to the session's configuration."""
    buf = io.StringIO()
    configure_logging("debug", "json", stream=buf)
    try:
        yield buf
    finally:
        configure_logging("debug", "json")


# -- recorded payloads ----------------------------------------------------------------------


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_recorded_payload_decodes_to_the_advert_it_stands_for(path: Path) -> None:
    """Each recorded firmware message yields its scanner, advert bytes and RSSI, or its count."""
    case = json.loads(path.read_text())
    clock = ManualClock()
    decoder, rec = make_decoder(clock=clock)
    decoder.on_message(case["topic"], case["payload"].encode())
    expect = case["expect"]
    if "scanner" in expect:
        assert rec.calls == [(*expected_call(case), clock.wall())]
        assert dropped(decoder) == {}
    elif "dropped" in expect:
        assert rec.calls == []
        assert dropped(decoder) == {expect["dropped"]: 1}
    else:
        scanner = case["topic"].split("/")[2 if case["topic"].startswith("espresense") else 1]
        assert decoder.stats()["satellites"][scanner]["online"] is expect["online"]
        assert decoder.stats()["status_updates"] == 1


def test_recorded_payloads_cover_both_firmwares_and_both_espresense_versions() -> None:
    """The fixtures hold ESPresense v3 and v4, OMG and Theengs Gateway reports, and statuses."""
    names = {p.stem for p in FIXTURES}
    assert {n.split("_")[0] for n in names} >= {"espresense", "omg", "theengs"}
    v3 = [n for n in names if n.startswith("espresense_v3")]
    v4 = [n for n in names if n.startswith("espresense_v4")]
    assert v3 and v4
    assert all("idType" in fixture(f"{n}.json")["payload"] for n in v3)
    assert all('"rxAdj"' in fixture(f"{n}.json")["payload"] for n in v4)


def test_satellite_reports_resolve_like_the_pis_own_radio() -> None:
    """The decoded bytes resolve: a reference beacon via ESPresense, a token and an EID via OMG."""
    tok = token_at(bytes(range(32)), 1_795_000_000)
    assert tok.hex() == "5e4041bd37d2e8ef"  # docs/contracts.md section 2 test vector
    resolver = AdvertResolver(0xFFFF, {(bytes.fromhex(REF_UUID.replace("-", "")), 1, 2): "ref-1"})
    resolver.install({tok: "shopper-17"}, {bytes.fromhex("8b0ca750e7a74e15"): "shopper-18"})
    sightings: list[Sighting] = []
    decoder, _ = make_decoder(resolver.handler(sightings.append))  # the daemon's wiring
    for name in (
        "espresense_v4_reference_beacon.json",
        "omg_shopper_token.json",
        "omg_eddystone_eid.json",
        "espresense_v4_token_as_md.json",
    ):
        case = fixture(name)
        decoder.on_message(case["topic"], case["payload"].encode())
    assert [(s.scanner, s.subject, s.rssi, s.tx_power) for s in sightings] == [
        ("sat_produce_1", "ref-1", -61.25, -59),
        ("sat-entrance-2", "shopper-17", -67.0, -59),
        ("sat-entrance-2", "shopper-18", -72.0, -10),
    ]
    assert resolver.stats()["foreign_dropped"] == 0  # md:ffff:12 never reached it


def test_topic_filters_match_the_firmware_topics_and_nothing_deeper() -> None:
    """Every recorded topic matches a filter; ESPresense sub-reports and OMG's echo do not."""
    filters = make_decoder()[0].topic_filters()
    for path in FIXTURES:
        topic = json.loads(path.read_text())["topic"]
        assert any(topic_matches_sub(f, topic) for f in filters), topic
    for other in (
        f"espresense/devices/iBeacon:{REF_UUID}-1-2/sat_produce_1/batt",
        "espresense/rooms/sat_produce_1/telemetry",
        "home/sat-entrance-2/BTtoMQTT",
        "home/sat-entrance-2/commands/MQTTtoBT/config",
    ):
        assert not any(topic_matches_sub(f, other) for f in filters), other


def test_service_data_uuids_become_bleaks_128_bit_keys() -> None:
    """OMG's 0xfeaa, Theengs' feaa, 32- and 128-bit forms all key Eddystone as bleak does."""
    for form in ("0xfeaa", "feaa", "FEAA", "0x0000feaa", "0000feaa", EDDYSTONE.upper()):
        assert service_uuid(form) == EDDYSTONE
    for bad in ("", "0x", "feaa0", "gggg", "0xfeaa-", None, 65194, "0000feaa-0000-1000-8000"):
        assert service_uuid(bad) is None


# -- what is dropped, and why ----------------------------------------------------------------------

DEEP = b"[" * 2000 + b"]" * 2000
HOSTILE: list[Any] = [
    # sizes and shapes
    pytest.param(ESP_TOPIC, esp_payload(name="x" * 4200), "too_large", id="over-4KiB"),
    pytest.param(ESP_TOPIC, DEEP, "too_deep", id="deep-array"),
    pytest.param(OMG_TOPIC, b'{"a":' * 8 + b"1" + b"}" * 8, "too_deep", id="deep-object"),
    pytest.param(ESP_TOPIC, b"", "bad_json", id="empty"),
    pytest.param(ESP_TOPIC, b"not json", "bad_json", id="not-json"),
    pytest.param(ESP_TOPIC, esp_payload()[:-7], "bad_json", id="truncated"),
    pytest.param(ESP_TOPIC, b"[1, 2]", "bad_json", id="array"),
    pytest.param(ESP_TOPIC, b'"online"', "bad_json", id="string"),
    pytest.param(ESP_TOPIC, b"\xff\xfe{}", "bad_json", id="not-utf8"),
    pytest.param(ESP_TOPIC, esp_payload(rssi=math.nan), "bad_json", id="NaN-literal"),
    pytest.param(OMG_TOPIC, omg_payload(rssi=-math.inf), "bad_json", id="Infinity-literal"),
    # RSSI
    pytest.param(
        ESP_TOPIC, esp_payload().replace(b"-61.25", b"-1e999"), "bad_rssi", id="rssi-overflow"
    ),
    pytest.param(ESP_TOPIC, esp_payload(rssi=10**40), "bad_rssi", id="rssi-huge-int"),
    pytest.param(ESP_TOPIC, esp_payload(rssi="-61"), "bad_rssi", id="rssi-string"),
    pytest.param(ESP_TOPIC, esp_payload(rssi=True), "bad_rssi", id="rssi-bool"),
    pytest.param(ESP_TOPIC, esp_payload(rssi=-300.5), "bad_rssi", id="rssi-below-int8"),
    pytest.param(ESP_TOPIC, esp_payload(rssi=...), "bad_rssi", id="rssi-missing"),
    pytest.param(ESP_TOPIC, esp_payload(rssi=-120, rxAdj=-20), "bad_rssi", id="rssi-adjusted-out"),
    pytest.param(OMG_TOPIC, omg_payload(rssi=127.5), "bad_rssi", id="omg-rssi-positive"),
    pytest.param(OMG_TOPIC, omg_payload(rssi=[-60]), "bad_rssi", id="omg-rssi-list"),
    pytest.param(OMG_TOPIC, omg_payload(rssi=...), "bad_rssi", id="omg-rssi-missing"),
    # ESPresense fields
    pytest.param(ESP_TOPIC, esp_payload(rxAdj="20"), "bad_field", id="rxadj-string"),
    pytest.param(ESP_TOPIC, esp_payload(rxAdj=1e6), "bad_field", id="rxadj-huge"),
    pytest.param(ESP_TOPIC, esp_payload(**{"rssi@1m": 500}), "bad_field", id="power-out-of-int8"),
    pytest.param(ESP_TOPIC, esp_payload(**{"rssi@1m": ...}), "bad_field", id="power-missing"),
    pytest.param(
        ESP_TOPIC, esp_payload(id=f"iBeacon:{REF_UUID}-1-3"), "bad_field", id="id-mismatch"
    ),
    pytest.param(ESP_TOPIC, esp_payload(id=7), "bad_field", id="id-not-a-string"),
    pytest.param(
        f"espresense/devices/iBeacon:{REF_UUID}-70000-2/sat_produce_1",
        esp_payload(id=f"iBeacon:{REF_UUID}-70000-2"),
        "bad_field",
        id="major-over-16-bit",
    ),
    pytest.param(
        "espresense/devices/apple:1005:9-26/sat_produce_1",
        b"\x00garbage",
        "unsupported_id",
        id="apple",
    ),
    pytest.param(
        f"espresense/devices/iBeacon:{REF_UUID}-1/sat_produce_1",
        b"{}",
        "unsupported_id",
        id="ibeacon-short",
    ),
    # OMG hex
    pytest.param(OMG_TOPIC, omg_payload(manufacturerdata="zz00"), "bad_hex", id="non-hex"),
    pytest.param(OMG_TOPIC, omg_payload(manufacturerdata="4c0"), "bad_hex", id="odd-length"),
    pytest.param(OMG_TOPIC, omg_payload(manufacturerdata="4c 00 02"), "bad_hex", id="spaces"),
    pytest.param(
        OMG_TOPIC, omg_payload(manufacturerdata="00" * 300), "bad_hex", id="longer-than-advert"
    ),
    pytest.param(OMG_TOPIC, omg_payload(manufacturerdata=""), "bad_hex", id="empty-hex"),
    pytest.param(OMG_TOPIC, omg_payload(manufacturerdata=1234), "bad_hex", id="hex-number"),
    pytest.param(OMG_TOPIC, omg_payload(manufacturerdata="٠١٢٣"), "bad_hex", id="unicode-digits"),
    pytest.param(OMG_TOPIC, omg_payload(manufacturerdata="4c"), "bad_field", id="no-company-id"),
    pytest.param(OMG_TOPIC, omg_payload(servicedata="30f6"), "bad_field", id="servicedata-no-uuid"),
    pytest.param(
        OMG_TOPIC,
        omg_payload(servicedata="30f6", servicedatauuid="xyz"),
        "bad_field",
        id="bad-uuid",
    ),
    pytest.param(
        OMG_TOPIC, omg_payload(servicedata="3", servicedatauuid="0xfeaa"), "bad_hex", id="sd-odd"
    ),
    pytest.param(OMG_TOPIC, omg_payload(manufacturerdata=...), "no_advert", id="no-adv-data"),
    pytest.param(
        OMG_TOPIC, b'{"id":"5A:3F:1C:9D:0E:42","state":"offline"}', "no_advert", id="tracker"
    ),
    # topics and satellites
    pytest.param("espresense/devices/x", esp_payload(), "bad_topic", id="short-topic"),
    pytest.param(OMG_TOPIC + "/extra", omg_payload(), "bad_topic", id="long-topic"),
    pytest.param("", b"{}", "bad_topic", id="empty-topic"),
    pytest.param("store/v1/demand", b"{}", "bad_topic", id="foreign-topic"),
    pytest.param(None, b"{}", "bad_topic", id="topic-not-str"),
    pytest.param(ESP_TOPIC, None, "bad_json", id="payload-none"),
    pytest.param(ESP_TOPIC, "a str", "bad_json", id="payload-str"),
    pytest.param(
        f"espresense/devices/iBeacon:{REF_UUID}-1-2/dairy",
        esp_payload(),
        "unknown_satellite",
        id="room",
    ),
    pytest.param(
        "home/OpenMQTTGateway/BTtoMQTT/AA", omg_payload(), "unknown_satellite", id="gateway"
    ),
    pytest.param("espresense/rooms/dairy/status", b"online", "unknown_satellite", id="room-status"),
    pytest.param(
        "home/sat_produce_1/BTtoMQTT/AA", omg_payload(), "wrong_firmware", id="omg-as-esp"
    ),
    pytest.param("home/sat_produce_1/LWT", b"online", "wrong_firmware", id="lwt-of-esp"),
    pytest.param("espresense/rooms/sat_produce_1/status", b"maybe", "bad_status", id="status-word"),
    pytest.param("home/sat-entrance-2/LWT", b"online" * 100, "bad_status", id="status-huge"),
]


@pytest.mark.parametrize(("topic", "payload", "reason"), HOSTILE)
def test_hostile_message_is_counted_under_its_reason_and_dropped(
    topic: Any, payload: Any, reason: str
) -> None:
    """Garbage, truncated, huge and hostile messages are counted by reason, never delivered."""
    decoder, rec = make_decoder()
    decoder.on_message(topic, payload)
    assert rec.calls == []
    assert dropped(decoder) == {reason: 1}
    assert decoder.stats()["received"] == 1


def test_every_drop_reason_is_reachable_from_a_message() -> None:
    """The hostile cases exercise every reason but the two that only a bug can cause."""
    reached = {p.values[2] for p in HOSTILE}
    assert reached == set(DROP_REASONS) - {"callback_failed", "internal_error"}


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """A device name full of brackets is text, not depth: the report still decodes."""
    decoder, rec = make_decoder()
    decoder.on_message(ESP_TOPIC, esp_payload(name='[[[[{{{{[[[[ tag \\" [[[['))
    assert len(rec.calls) == 1


def test_a_raising_on_advert_is_counted_and_never_escapes() -> None:
    """A downstream bug is counted as callback_failed; on_message still returns normally."""

    def broken(*args: Any) -> None:
        raise KeyError("boom")

    decoder, _ = make_decoder(broken)
    decoder.on_message(ESP_TOPIC, esp_payload())
    assert dropped(decoder) == {"callback_failed": 1}
    assert decoder.stats()["satellites"]["sat_produce_1"]["adverts"] == 0


# -- fuzz ---------------------------------------------------------------------------------------

TOPICS = st.one_of(
    st.sampled_from(
        [
            ESP_TOPIC,
            OMG_TOPIC,
            "home/sat-checkout-2/BTtoMQTT/C1D2E3F4A5B6",
            "espresense/rooms/sat_produce_2/status",
            "home/sat-entrance-2/LWT",
            "espresense/devices/md:ffff:12/sat_checkout",
            "home/sat_produce_1/BTtoMQTT/AA",
        ]
    ),
    st.builds(
        "espresense/devices/{}/{}".format,
        st.text(max_size=60),
        st.sampled_from(["sat_produce_1", "sat_checkout", "nowhere"]),
    ),
    st.builds(
        "home/{}/BTtoMQTT/{}".format, st.sampled_from(["sat-entrance-2", "x"]), st.text(max_size=12)
    ),
    st.text(max_size=80),
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=40)
    | st.text(alphabet="0123456789abcdefABCDEF xg-", max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["id", "rssi", "rssi@1m", "rxAdj", "manufacturerdata", "servicedata", "servicedatauuid"]
JSON_DOCS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), JSON_VALUES, max_size=8)


def assert_sane_calls(decoder: SatelliteDecoder, rec: Recorder) -> None:
    """Every delivered advert has the scanner, types and ranges on_advert is promised."""
    configured = {s.id for s in SATELLITES}
    for scanner, mfr, sd, rssi, _ts in rec.calls:
        assert scanner in configured
        assert type(rssi) is float and sat.MIN_RSSI_DBM <= rssi <= sat.MAX_RSSI_DBM
        assert all(type(k) is int and 0 <= k <= 0xFFFF and type(v) is bytes for k, v in mfr.items())
        assert all(re.fullmatch(r"[0-9a-f-]{36}", k) and type(v) is bytes for k, v in sd.items())
        assert mfr or sd
    s = decoder.stats()
    assert accounted(decoder) == s["received"]
    assert s["dropped"]["internal_error"] == 0
    assert s["dropped"]["callback_failed"] == 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=TOPICS, payload=st.binary(max_size=5000))
def test_fuzz_arbitrary_bytes_never_raise_and_are_all_accounted_for(
    topic: str, payload: bytes
) -> None:
    """Arbitrary bytes on any topic: no exception, and each message is delivered or counted once."""
    decoder, rec = make_decoder()
    decoder.on_message(topic, payload)
    assert_sane_calls(decoder, rec)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=TOPICS, doc=JSON_DOCS | JSON_VALUES)
def test_fuzz_arbitrary_json_never_raises_and_is_all_accounted_for(topic: str, doc: Any) -> None:
    """Arbitrary JSON (NaN and Infinity included) with the firmwares' field names: same promise."""
    decoder, rec = make_decoder()
    decoder.on_message(topic, json.dumps(doc).encode())
    assert_sane_calls(decoder, rec)


@settings(max_examples=200, deadline=None)
@given(
    rssi=st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
    major=st.integers(0, 0xFFFF),
    minor=st.integers(0, 0xFFFF),
    power=st.integers(-128, 127),
)
def test_fuzz_espresense_ibeacon_ids_map_back_to_the_exact_frame(
    rssi: float, major: int, minor: int, power: int
) -> None:
    """Any iBeacon id and power round-trips to Apple's 02 15 uuid major minor power frame,
    which the resolver maps to the beacon registered with that identity."""
    fid = f"iBeacon:{REF_UUID}-{major}-{minor}"
    decoder, rec = make_decoder()
    decoder.on_message(
        f"espresense/devices/{fid}/sat_checkout",
        esp_payload(id=fid, rssi=rssi, **{"rssi@1m": power}),
    )
    if not -127 <= rssi <= 20:
        assert dropped(decoder) == {"bad_rssi": 1}
        return
    [(scanner, mfr, sd, got_rssi, ts)] = rec.calls
    uuid = bytes.fromhex(REF_UUID.replace("-", ""))
    assert mfr == {
        0x004C: b"\x02\x15"
        + uuid
        + major.to_bytes(2, "big")
        + minor.to_bytes(2, "big")
        + (power & 0xFF).to_bytes(1, "big")
    }
    assert got_rssi == float(rssi)
    sightings: list[Sighting] = []
    AdvertResolver(0xFFFF, {(uuid, major, minor): "ref"}).handler(sightings.append)(
        scanner, mfr, sd, got_rssi, ts
    )
    assert [(s.subject, s.tx_power, s.reference) for s in sightings] == [("ref", power, True)]


# -- satellites, status, figures ------------------------------------------------------------------


def test_status_topics_track_each_satellite_online_and_offline() -> None:
    """Retained status and will messages set online; a report alone leaves it unknown."""
    decoder, _ = make_decoder()
    decoder.on_message("espresense/rooms/sat_produce_1/status", b"online")
    decoder.on_message("home/sat-entrance-2/LWT", b"offline\n")
    decoder.on_message(ESP_TOPIC.replace("sat_produce_1", "sat_checkout"), b"{}")
    sats = decoder.stats()["satellites"]
    assert (sats["sat_produce_1"]["online"], sats["sat-entrance-2"]["online"]) == (True, False)
    assert sats["sat_checkout"]["online"] is None


def test_stats_give_per_satellite_counts_and_the_age_of_the_last_report() -> None:
    """Messages, adverts and drops per satellite; the age follows the clock; never-heard is None."""
    clock = ManualClock()
    decoder, _ = make_decoder(clock=clock)
    decoder.on_message(ESP_TOPIC, esp_payload())
    decoder.on_message(ESP_TOPIC, esp_payload(rssi="x"))
    clock.advance(12.5)
    s = decoder.stats()
    assert s["satellites"]["sat_produce_1"] == {
        "firmware": "espresense",
        "messages": 2,
        "adverts": 1,
        "dropped": 1,
        "last_message_age_s": 12.5,
        "online": None,
    }
    assert s["satellites"]["sat-entrance-2"]["last_message_age_s"] is None
    assert set(s["dropped"]) == set(DROP_REASONS)
    assert (s["received"], s["adverts"]) == (2, 1)


def test_unknown_satellites_are_counted_dropped_and_not_remembered() -> None:
    """A room or gateway not in the config is counted; no new satellite appears in stats."""
    decoder, rec = make_decoder()
    for room in ("dairy", "bakery", "dairy"):
        decoder.on_message(ESP_TOPIC.replace("sat_produce_1", room), esp_payload())
    assert rec.calls == []
    assert dropped(decoder) == {"unknown_satellite": 3}
    assert set(decoder.stats()["satellites"]) == {s.id for s in SATELLITES}


# -- logs and privacy -----------------------------------------------------------------------------


def summaries(buf: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == "satellites_summary"]


def test_logs_are_one_summary_of_counts_per_interval_at_most(captured_logs: io.StringIO) -> None:
    """Hundreds of messages in a minute log nothing until the minute is up, then one summary."""
    clock = ManualClock()
    decoder, _ = make_decoder(clock=clock)
    for _ in range(300):
        decoder.on_message(ESP_TOPIC, esp_payload())
        decoder.on_message(OMG_TOPIC, b"junk")
    assert summaries(captured_logs) == []
    clock.advance(sat.SUMMARY_INTERVAL_S)
    for _ in range(300):
        decoder.on_message(OMG_TOPIC, omg_payload())
    (line,) = summaries(captured_logs)
    assert (line["received"], line["adverts"], line["dropped"]) == (601, 301, {"bad_json": 300})
    assert line["silent"] == ["sat-checkout-2", "sat_checkout", "sat_produce_2"]
    clock.advance(sat.SUMMARY_INTERVAL_S)
    decoder.on_message(OMG_TOPIC, omg_payload())
    assert len(summaries(captured_logs)) == 2
    assert summaries(captured_logs)[1]["received"] == 300


def test_a_foreign_device_leaves_no_trace_in_logs_or_in_the_decoder(
    captured_logs: io.StringIO,
) -> None:
    """Unresolved adverts and garbage: their MAC, id and hex appear in no log and no state."""
    mac, mac_bare = "DE:AD:BE:EF:42:17", "DEADBEEF4217"
    manufacturer_hex = "7500" + "0215c0ffee00c0ffee00c0ffee00c0ffee00" + "abcd1234c5"
    service_hex = "10f603676f6f676c6507"
    esp_id = "iBeacon:c0ffee00-c0ff-ee00-c0ff-ee00c0ffee00-43981-4660"
    secrets = [
        mac,
        mac_bare,
        mac_bare.lower(),
        manufacturer_hex,
        service_hex,
        "c0ffee00",
        "abcd1234",
    ]
    clock = ManualClock()
    decoder, _ = make_decoder(lambda *a: None, clock)  # resolves nothing
    foreign = [
        (
            f"home/sat-entrance-2/BTtoMQTT/{mac_bare}",
            omg_payload(id=mac, manufacturerdata=manufacturer_hex),
        ),
        (
            f"home/sat-entrance-2/BTtoMQTT/{mac_bare}",
            omg_payload(id=mac, servicedata=service_hex, servicedatauuid="0xfeaa"),
        ),
        (
            f"home/sat-entrance-2/BTtoMQTT/{mac_bare}",
            omg_payload(id=mac, manufacturerdata=manufacturer_hex + "z"),
        ),
        (
            f"espresense/devices/{esp_id}/sat_produce_1",
            esp_payload(id=esp_id, mac=mac_bare.lower()),
        ),
        (f"espresense/devices/{esp_id}/sat_produce_1", esp_payload(id=esp_id, rssi="NaN")),
        (f"espresense/devices/{mac_bare.lower()}/sat_produce_1", esp_payload(id=mac_bare.lower())),
        (
            f"home/unknown-gw/BTtoMQTT/{mac_bare}",
            omg_payload(id=mac, manufacturerdata=manufacturer_hex),
        ),
        (f"espresense/devices/{esp_id}/unknown_room", b"{" + mac.encode()),
    ]
    for topic, payload in foreign:
        decoder.on_message(topic, payload)
    clock.advance(sat.SUMMARY_INTERVAL_S)
    decoder.on_message(*foreign[0])
    assert len(summaries(captured_logs)) == 1  # the summary ran: the check below can fail
    logged = captured_logs.getvalue()
    kept = repr(vars(decoder)) + repr(decoder.stats())
    for secret in secrets:
        assert secret.lower() not in logged.lower()
        assert secret.lower() not in kept.lower()


# -- a real broker ---------------------------------------------------------------------------------


async def wait_until(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


def publisher(port: int) -> paho.Client:
    """A satellite's MQTT client: 3.1.1, as ESPresense's AsyncMqttClient and OMG speak it."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise TimeoutError("publisher did not connect")
        time.sleep(0.01)
    return client


def test_reports_reach_on_advert_through_a_real_broker(store_broker: MosquittoBroker) -> None:
    """Through Mosquitto and MqttConnection, each report reaches on_advert under its satellite."""
    reports = [
        fixture(n)
        for n in (
            "espresense_v4_reference_beacon.json",
            "espresense_v3_speed_reference_beacon.json",
            "espresense_v4_tag_ibeacon.json",
            "omg_shopper_token.json",
            "omg_eddystone_eid.json",
            "theengs_gateway_eddystone_eid.json",
        )
    ]

    async def scenario() -> None:
        sats = publisher(store_broker.port)
        try:
            # Retained before the gateway subscribes, as a satellite that came up first leaves them.
            for topic in ("espresense/rooms/sat_produce_1/status", "home/sat-entrance-2/LWT"):
                sats.publish(topic, b"online", qos=1, retain=True).wait_for_publish(5)
            decoder, rec = make_decoder()
            conn = MqttConnection(
                "store",
                BrokerSection(port=store_broker.port),
                client_id="satellites-e2e",
                password_env="UNUSED_ENV",  # noqa: S106 - an env variable name
            )
            for topic_filter in decoder.topic_filters():
                conn.subscribe(topic_filter, decoder.on_message)
            task = asyncio.create_task(conn.run())
            try:
                await asyncio.wait_for(conn.wait_up(), 10)
                # Status filters come last: their retained messages mean every filter is live.
                await wait_until(lambda: decoder.status_updates == 2)
                for case in reports:
                    sats.publish(case["topic"], case["payload"].encode(), qos=1)
                sats.publish(ESP_TOPIC.replace("sat_produce_1", "dairy"), esp_payload(), qos=1)
                sats.publish(OMG_TOPIC, b"\x00\x01garbage", qos=1)
                await wait_until(lambda: decoder.received == 2 + len(reports) + 2)
            finally:
                await conn.close([], 2.0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            sats.loop_stop()
            sats.disconnect()
        got = sorted((call[:4] for call in rec.calls), key=repr)
        want = sorted((expected_call(case) for case in reports), key=repr)
        assert got == want
        assert dropped(decoder) == {"unknown_satellite": 1, "bad_json": 1}
        stats = decoder.stats()["satellites"]
        assert (
            stats["sat_produce_1"]["online"] is True and stats["sat-entrance-2"]["online"] is True
        )

    asyncio.run(scenario())


# -- the settings and the guide ------------------------------------------------------------------


def test_omg_settings_publish_raw_advertising_data_of_every_device() -> None:
    """The OMG/Theengs BT config keeps raw adverts, random addresses and the standard topic."""
    cfg = json.loads((FIRMWARE_CONFIGS / "openmqttgateway-bt-config.json").read_text())
    assert cfg["pubadvdata"] is True  # manufacturerdata / servicedata stay in the JSON
    assert cfg["randommacs"] is True  # phones advertise from random addresses
    assert cfg["onlysensors"] is False  # not only decoded sensors
    assert cfg["filterConnectable"] is False  # phones advertise connectable
    assert cfg["extDecoderEnable"] is False  # else reports go to another topic
    assert cfg["pubuuid4topic"] is False  # keep home/{gateway}/BTtoMQTT/{MAC}
    assert cfg["bleconnect"] is False  # never connect to a shopper's device
    assert cfg["save"] is True


def test_the_guide_explains_every_drop_reason() -> None:
    """Each reason stats() can report is explained in firmware_configs/satellites/README.md."""
    guide = (FIRMWARE_CONFIGS / "README.md").read_text()
    missing = [r for r in DROP_REASONS if f"`{r}`" not in guide]
    assert missing == []
