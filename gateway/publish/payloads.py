"""The wire format: every payload the gateway sends, one function per kind.

Stages say what happened in their own types (a ``PresenceEvent``, a
``CheckoutCompleted``, a ``Decision``...); this module alone decides what goes on
the wire, so docs/mqtt-api.md and docs/asyncapi.json describe exactly what is
built here (tests/publish/test_payloads.py checks each function's output
against its schema in docs/asyncapi.json).

Two families:

- **up events** to HQ (``retail/v1/stores/{store}/up/{kind}``): ``up_event`` turns
  a stage event into an ``UpEvent`` (kind, data, time, the shopper it identifies);
  the outbox wraps the data in the envelope ``envelope`` builds when it commits.
- **store broker and status messages**: ``status``, ``health``, ``associate_alert``,
  ``zone_screen``, ``lane_display``, each JSON bytes with ``"v": 1``.

Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

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
from gateway.events import BasketItem, CheckoutCompleted, Priority, UpEvent
from gateway.identity.presence import PresenceEvent
from gateway.identity.visits import VisitEvent
from gateway.sensing.simulated import Scripted
from gateway.storage.outbox import LossLine


def _json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


# -- up events: the data of each kind ---------------------------------------------------


def presence(ev: PresenceEvent) -> dict[str, Any]:
    """``presence``: a shopper arrived, changed zone, dwelled or left (within ``analytics``)."""
    return {
        "event": ev.kind,
        "shopper": ev.shopper,
        "visit": ev.visit,
        "zone": ev.zone,
        "previous_zone": ev.previous_zone,
        "dwell_s": round(ev.dwell_s, 1),
        "visit_s": round(ev.visit_s, 1),
    }


def visit(ev: VisitEvent) -> dict[str, Any]:
    """``visit``: a shopper's trip opened or closed (within ``analytics``)."""
    return {
        "event": ev.kind,
        "shopper": ev.shopper,
        "visit": ev.visit_id,
        "sources": list(ev.sources),
        "zones": list(ev.zones),
        "duration_s": round(ev.duration_s, 1),
    }


def _item(i: BasketItem) -> dict[str, Any]:
    entry: dict[str, Any] = {"code": i.code, "description": i.description, "quantity": i.quantity}
    # docs/contracts.md section 1: "unit" only where the receipt printed one.
    if i.unit is not None:
        entry["unit"] = i.unit
    entry["amount"] = i.amount
    return entry


def transaction_object(ev: CheckoutCompleted) -> dict[str, Any]:
    """The transaction object of docs/contracts.md section 1 (``pos replay --json`` prints
    it with the raw loyalty number; upstream it carries the salted hash)."""
    return {
        "v": 1,
        "status": ev.status,
        "transaction": ev.transaction,
        "items": [_item(i) for i in ev.items],
        "voids": [
            {"code": v.code, "description": v.description, "amount": v.amount} for v in ev.voids
        ],
        "discounts": [{"description": d.description, "amount": d.amount} for d in ev.discounts],
        "loyalty": ev.loyalty,
        "total": ev.total,
        "totals_match": ev.totals_match,
    }


def transaction(ev: CheckoutCompleted) -> dict[str, Any]:
    """``transaction``: the transaction object, plus the lane and the linked visit."""
    return {**transaction_object(ev), "lane": ev.lane, "visit": ev.visit}


def decision(ev: Decision) -> dict[str, Any]:
    """``decision``: what was decided for one trigger, shown or not (a holdout's too)."""
    return {
        "decision": ev.decision,
        "trigger": ev.trigger,
        "shopper": ev.shopper,
        "visit": ev.visit,
        "zone": ev.zone,
        "lane": ev.lane,
        "experiment": ev.experiment,
        "arm": ev.arm,
        "shown": ev.shown,
        "items": list(ev.items),
        "reasons": {item: list(reasons) for item, reasons in ev.reasons.items()},
        "dropped": dict(ev.dropped),
        "source": ev.source,
        "fallback_reason": ev.fallback_reason,
        "model_version": ev.model_version,
        "latency_ms": ev.latency_ms,
    }


def impression(ev: Impression) -> dict[str, Any]:
    """``impression``: a decision's items were put on a device."""
    return {
        "decision": ev.decision,
        "output": ev.output,
        "zone": ev.zone,
        "lane": ev.lane,
        "items": list(ev.items),
        "source": ev.source,
    }


def conversion(ev: Converted) -> dict[str, Any]:
    """``conversion``: a recommended item bought in the same visit (no shopper id)."""
    return {**ev.conversion.as_dict(), "lane": ev.lane, "transaction": ev.transaction}


def experiment_summary(ev: Summary) -> dict[str, Any]:
    """``experiment_summary``: one experiment's per-arm counts over one period."""
    return dict(ev.row)


def consent_applied(message: str, applied_at: float, changes: Mapping[str, int]) -> dict[str, Any]:
    """``consent``: the receipt HQ keeps as its legal record of a consent message applied.
    It names no shopper: HQ knows who was in its own message."""
    return {"message": message, "applied_at": applied_at, "changes": dict(changes)}


def outbox_loss(lines: Iterable[LossLine]) -> dict[str, Any]:
    """``outbox_loss``: what the outbox shed or refused since the last report, per kind and
    reason (``count_total``: all of it ever, so HQ can tell a re-sent report apart)."""
    return {
        "shed": [
            {
                "kind": ln.kind,
                "reason": ln.reason,
                "class": Priority(ln.priority).name.lower(),
                "count": ln.shed_count - ln.reported_count,
                "bytes": ln.shed_bytes - ln.reported_bytes,
                "count_total": ln.shed_count,
            }
            for ln in lines
        ]
    }


def simulated(n: int) -> dict[str, Any]:
    """The scripted source's events (``[simulation]``, demo and tests only)."""
    return {"n": n, "simulated": True}


def up_event(ev: object) -> UpEvent:
    """The ``UpEvent`` for a stage event, with the shopper it identifies as its subject
    (an opt-out erases the shopper's events not yet at HQ)."""
    if isinstance(ev, PresenceEvent):
        return UpEvent.of("presence", presence(ev), ev.ts, subject=ev.shopper)
    if isinstance(ev, VisitEvent):
        return UpEvent.of("visit", visit(ev), ev.ts, subject=ev.shopper)
    if isinstance(ev, CheckoutCompleted):
        # A sale is a record HQ keeps whoever bought: no subject, never erased.
        return UpEvent.of("transaction", transaction(ev), ev.ts)
    if isinstance(ev, Decision):
        return UpEvent.of("decision", decision(ev), ev.ts, subject=ev.shopper)
    if isinstance(ev, Impression):
        return UpEvent.of("impression", impression(ev), ev.ts, subject=ev.shopper)
    if isinstance(ev, Converted):
        return UpEvent.of("conversion", conversion(ev), ev.ts, subject=ev.conversion.shopper)
    if isinstance(ev, Summary):
        return UpEvent.of("experiment_summary", experiment_summary(ev), ev.ts)
    if isinstance(ev, Scripted):
        return UpEvent.of(ev.kind, simulated(ev.n), ev.ts)
    raise TypeError(f"no up event for {type(ev).__name__}")


def envelope(ident: str, store: str, kind: str, ts: float, data: Mapping[str, Any]) -> bytes:
    """The bytes HQ receives for one up event: ``v``, ``id`` (``{store}:{seq}``, for
    de-duplication), ``store``, ``kind``, ``ts`` and the kind's ``data``."""
    return _json({"v": 1, "id": ident, "store": store, "kind": kind, "ts": ts, "data": data})


# -- status and the store broker --------------------------------------------------------


def status(store: str, state: str, ts: float, **extra: Any) -> bytes:
    """The retained status document of docs/contracts.md section 3 (store broker and HQ)."""
    return _json({"v": 1, "state": state, "store": store, "ts": ts, **extra})


def health(store: str, ts: float, figures: Mapping[str, Any]) -> bytes:
    """``store/v1/gateway/health``: the figures store IT reads (docs/mqtt-api.md)."""
    return _json({"v": 1, "store": store, "ts": ts, **figures})


def associate_alert(shown: Shown) -> bytes:
    """``store/v1/associates/alerts``: an arrival's next best actions, for associates only
    (within the shopper's ``associate_assist`` consent, so it may name the shopper)."""
    return _json(
        {
            "v": 1,
            "type": "next_best_action",
            "trigger": "arrival",
            "shopper": shown.shopper,
            "visit": shown.visit,
            "zone": shown.zone,
            "items": list(shown.items),
            "decision": shown.decision,
            "ts": shown.ts,
        }
    )


def zone_screen(shown: Shown) -> bytes:
    """``store/v1/zones/{zone}/screen``: public content, never who is present."""
    return _json({"v": 1, "zone": shown.zone, "items": list(shown.items), "ts": shown.ts})


def lane_display(shown: Shown) -> bytes:
    """``store/v1/lanes/{lane}/display``: suggestions for the basket, no identifier at all."""
    return _json(
        {
            "v": 1,
            "lane": shown.lane,
            "suggestions": list(shown.items),
            "basket_items": shown.basket_items,
            "ts": shown.ts,
        }
    )


# Each trigger's output, by the device it is for.
SHOWN_PAYLOADS = {ARRIVAL: associate_alert, DWELL: zone_screen, BASKET: lane_display}
