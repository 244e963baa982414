"""Every payload the gateway sends is built in gateway/publish/payloads.py and matches its
schema in docs/asyncapi.json (objects closed: a field the code sends and the file does
not describe fails)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.decision.experiments import Conversion
from gateway.decision.records import (
    ARRIVAL,
    BASKET,
    DWELL,
    Converted,
    Decision,
    Impression,
    Shown,
    Summary,
)
from gateway.events import BasketItem, CheckoutCompleted
from gateway.identity.presence import PresenceEvent
from gateway.identity.visits import VisitEvent
from gateway.publish import payloads
from gateway.sensing.simulated import Scripted
from gateway.storage.outbox import LossLine
from gateway.testing.asyncapi import ASYNCAPI, _closed_data, up_schemas

T = 1_795_000_000.0
ITEMS = (
    BasketItem("0000000123457", "OAT MILK 1L", "2", None, "4.98"),
    BasketItem("4011", "BANANAS", "1.10", "lb", "0.65"),
)
SALE = CheckoutCompleted(
    lane="lane-1",
    transaction="0042",
    status="complete",
    items=ITEMS,
    total="5.13",
    totals_match=True,
    shopper="s-1",
    visit="v-1",
    ts=T,
    voids=(BasketItem("0000000678900", "SODA 2L", None, None, "-1.99"),),
    discounts=(BasketItem(None, "MEMBER PRICE OAT MILK", None, None, "-0.50"),),
    loyalty="ab" * 32,
    reason="end_marker",
)
DECISION = Decision(
    decision="d" * 16,
    trigger=ARRIVAL,
    shopper="s-1",
    visit="v-1",
    zone="entrance",
    lane=None,
    experiment="e1",
    arm="model",
    shown=True,
    items=("4011", "196"),
    reasons={"4011": ("model",), "196": ("model", "popular")},
    dropped={"in_basket": 1},
    source="model",
    fallback_reason=None,
    model_version=3,
    latency_ms=1.25,
    ts=T,
)
CONVERSION = Conversion("v-1", "s-1", "e1", "model", "4011", True, T - 60, T)
SUMMARY_ROW = {
    "experiment": "e1",
    "start": T - 3600,
    "end": T,
    "arms": [
        {
            "arm": "model",
            "decisions": 3,
            "decisions_shown": 3,
            "items": 9,
            "impressions": 9,
            "conversions": 1,
            "conversions_shown": 1,
            "attach_rate": 1 / 3,
        }
    ],
}

# One stage event of each kind the outbox sends up, and the kind it goes up as.
UP_EVENTS: list[tuple[str, object]] = [
    ("presence", PresenceEvent("arrived", "s-1", "entrance", T, visit="v-1")),
    (
        "presence",
        PresenceEvent(
            "zone_changed",
            "s-1",
            "produce",
            T,
            previous_zone="entrance",
            dwell_s=12.34,
            visit_s=40.0,
        ),
    ),
    ("visit", VisitEvent("visit_started", "s-1", "v-1", T, ("ble",), ("entrance",))),
    ("visit", VisitEvent("visit_ended", "s-1", "v-1", T, ("ble", "pos"), ("entrance",), 600.0)),
    ("transaction", SALE),
    ("decision", DECISION),
    ("impression", Impression("d" * 16, ARRIVAL, "entrance", None, ("4011",), "model", "s-1", T)),
    ("conversion", Converted(CONVERSION, "lane-1", "0042", T)),
    ("experiment_summary", Summary(SUMMARY_ROW, T)),
]


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_closed_data(schema))


def _channel_schema(channel: str) -> dict[str, Any]:
    doc = json.loads(ASYNCAPI.read_text(encoding="utf-8"))
    ops = doc["channels"][channel]
    message = (ops.get("subscribe") or ops["publish"])["message"]
    return message["payload"]  # type: ignore[no-any-return]


def _check(schema: dict[str, Any], doc: Any) -> None:
    errors = sorted(_validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors] == []


@pytest.mark.parametrize(("kind", "event"), UP_EVENTS, ids=[k for k, _ in UP_EVENTS])
def test_every_up_event_matches_its_schema(kind: str, event: object) -> None:
    """A stage event becomes the up event of its kind whose envelope matches docs/asyncapi.json."""
    up = payloads.up_event(event)
    assert up.kind == kind
    env = json.loads(payloads.envelope("s1:7", "s1", up.kind, up.ts, up.data))
    _check(up_schemas()[kind], env)


def test_the_publish_modules_own_payloads_match_their_schemas() -> None:
    """The consent receipt and the loss report (built by the downlink and the outbox)."""
    schemas = up_schemas()
    for kind, data in (
        ("consent", payloads.consent_applied("m-1", T, {"opt_out": 2})),
        (
            "outbox_loss",
            payloads.outbox_loss([LossLine("telemetry", "refused", 3, 3, 600, 0, 0)]),
        ),
    ):
        env = json.loads(payloads.envelope("s1:8", "s1", kind, T, data))
        _check(schemas[kind], env)


def test_a_simulated_event_keeps_the_envelope() -> None:
    """The scripted source's events go up under the kinds they are given, in the envelope."""
    up = payloads.up_event(Scripted("telemetry", 7, T))
    _check(up_schemas()["event"], json.loads(payloads.envelope("s1:9", "s1", up.kind, T, up.data)))


SHOWN = [
    Shown(ARRIVAL, "d" * 16, ("4011",), T, zone="entrance", shopper="s-1", visit="v-1"),
    Shown(DWELL, "d" * 16, ("4011", "196"), T, zone="produce"),
    Shown(BASKET, "d" * 16, ("196",), T, zone="checkout", lane="lane-1", basket_items=2),
]
SHOWN_CHANNELS = {
    ARRIVAL: "store/v1/associates/alerts",
    DWELL: "store/v1/zones/{zone}/screen",
    BASKET: "store/v1/lanes/{lane}/display",
}


@pytest.mark.parametrize("shown", SHOWN, ids=[s.trigger for s in SHOWN])
def test_what_the_store_devices_get_matches_its_schema(shown: Shown) -> None:
    """Associates' alerts, zone screens and lane displays each match their channel."""
    doc = json.loads(payloads.SHOWN_PAYLOADS[shown.trigger](shown))
    _check(_channel_schema(SHOWN_CHANNELS[shown.trigger]), doc)


def test_status_and_health_match_their_schemas(tmp_path: Path) -> None:
    """Both brokers' retained status (live and will) and a real health document."""
    from gateway.app import Gateway
    from gateway.config import parse_config

    for channel in ("store/v1/gateway/status", "retail/v1/stores/{store}/status"):
        schema = _channel_schema(channel)
        _check(schema, json.loads(payloads.status("s1", "online", T)))
        _check(schema, json.loads(payloads.status("s1", "offline", 0.0, reason="connection lost")))
    cfg = parse_config({"store": {"id": "s1"}, "storage": {"path": str(tmp_path / "g.db")}})
    doc = json.loads(payloads.health("s1", T, Gateway(cfg).health()))
    errors = list(
        jsonschema.Draft202012Validator(_channel_schema("store/v1/gateway/health")).iter_errors(doc)
    )
    assert errors == []


def test_every_payload_function_is_checked_here() -> None:
    """A payload function added to payloads.py without a case above fails this test."""
    source = Path(__file__).read_text(encoding="utf-8")
    public: dict[str, Callable[..., Any]] = {
        name: fn
        for name, fn in inspect.getmembers(payloads, inspect.isfunction)
        if fn.__module__ == payloads.__name__ and not name.startswith("_")
    }
    # Built from the cases above by up_event / SHOWN_PAYLOADS rather than by name.
    reached = {
        "presence",
        "visit",
        "transaction",
        "transaction_object",
        "decision",
        "impression",
        "conversion",
        "experiment_summary",
        "simulated",
        "associate_alert",
        "zone_screen",
        "lane_display",
    }
    unchecked = [n for n in public if n not in reached and f"payloads.{n}(" not in source]
    assert unchecked == []
