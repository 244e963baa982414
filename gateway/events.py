"""The shared vocabulary: what crosses from one stage to another.

Upstream events and their shedding classes, sightings (sensing -> identity),
baskets and completed checkouts (checkout -> decision, and to HQ), and what a
committed downlink batch changed (publish -> the stages). Every stage speaks these
types; no library type crosses a port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

from gateway.shoppers import Consent, Profile

KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class Priority(IntEnum):
    """Shedding class of an upstream event: a larger value is shed first.

    CRITICAL is never shed: consent changes are legal records, transactions are
    sales, and loss reports are how HQ learns what else was shed.
    """

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3


# The class of each known kind; unknown kinds are NORMAL.
KIND_PRIORITY: dict[str, Priority] = {
    "consent": Priority.CRITICAL,
    "transaction": Priority.CRITICAL,
    "outbox_loss": Priority.CRITICAL,
    "decision": Priority.HIGH,
    "conversion": Priority.HIGH,
    "experiment_summary": Priority.HIGH,
    "presence": Priority.NORMAL,
    "visit": Priority.NORMAL,
    "impression": Priority.NORMAL,
    "telemetry": Priority.LOW,
    "heartbeat": Priority.LOW,
}


def priority_of(kind: str) -> Priority:
    """The shedding class of ``kind`` (NORMAL when the kind is not listed)."""
    return KIND_PRIORITY.get(kind, Priority.NORMAL)


@dataclass(frozen=True, slots=True)
class UpEvent:
    """An event bound for HQ through the outbox.

    ``data`` must be JSON-serialisable; the outbox adds ``v``, ``id``, ``store``,
    ``kind`` and ``ts`` around it when it commits the event.
    """

    kind: str
    data: dict[str, Any]
    ts: float
    priority: Priority = field(default=Priority.NORMAL)
    # The shopper this event identifies, if any: an opt-out erases the shopper's
    # events that have not reached HQ yet (it is stored beside the row, never sent).
    subject: str | None = None

    @classmethod
    def of(
        cls, kind: str, data: dict[str, Any], ts: float, *, subject: str | None = None
    ) -> UpEvent:
        """An event of ``kind`` with the class that kind is registered under."""
        if not KIND_PATTERN.match(kind):
            raise ValueError(f"event kind {kind!r} is not a valid topic segment")
        return cls(kind=kind, data=data, ts=ts, priority=priority_of(kind), subject=subject)


class Sighting(NamedTuple):
    """One resolved advert: an opted-in shopper or a fixed reference beacon, heard by one scanner.

    Only resolved adverts become sightings: a foreign device never gets this far,
    so nothing here can identify anyone who did not opt in. A NamedTuple rather
    than a frozen dataclass: one is built per resolved advert on the hot path,
    and a frozen dataclass's ``__init__`` costs three times as much (1.2 us
    against 0.4 us here).
    """

    subject: str  # shopper id, or the reference beacon's id when ``reference`` is true
    scanner: str  # "pi" (the gateway's own radio) or the satellite's configured id
    rssi: float  # dBm as received
    ts: float  # clock seconds (unix time)
    tx_power: int | None = None  # measured power at 1 m (dBm) when the frame carries it
    reference: bool = False  # a fixed reference beacon used for calibration


# -- the POS stage's events, for the stages after it ---------------------------------


@dataclass(frozen=True, slots=True)
class BasketItem:
    """One line of a basket as the receipt printed it (decimal strings; None when unseen)."""

    code: str | None
    description: str | None
    quantity: str | None
    unit: str | None
    amount: str | None


@dataclass(frozen=True, slots=True)
class BasketChanged:
    """A lane's open transaction changed (an item, a void, a discount, a loyalty scan...).

    ``shopper`` and ``visit`` are set once a loyalty scan linked an opted-in
    shopper; they are for the decision stage, never for a screen.
    """

    lane: str
    transaction: str | None
    change: str  # "started", "item", "void", "discount", "loyalty", "total"
    items: tuple[BasketItem, ...]
    total: str | None
    shopper: str | None
    visit: str | None
    ts: float


@dataclass(frozen=True, slots=True)
class CheckoutCompleted:
    """A lane's transaction ended: ``status`` is complete, cancelled or incomplete.

    It carries everything of the receipt that the transaction object of
    docs/contracts.md section 1 holds (``gateway.publish.payloads.transaction_object``
    builds that object from it), with ``loyalty`` already the salted hash when it
    comes from a lane; ``reason`` says why it ended (``end_marker``, ``disconnect``...).
    ``lane`` is None for a replayed capture (``store-gateway pos replay``).
    """

    lane: str | None
    transaction: str | None
    status: str
    items: tuple[BasketItem, ...]
    total: str | None
    totals_match: bool | None
    shopper: str | None
    visit: str | None
    ts: float
    voids: tuple[BasketItem, ...] = ()
    # Discounts have a description and an amount (code, quantity and unit are None).
    discounts: tuple[BasketItem, ...] = ()
    loyalty: str | None = field(default=None, repr=False)
    reason: str | None = None


PosNotice = BasketChanged | CheckoutCompleted


# -- HQ's downlink, once committed, for the stages ----------------------------------


@dataclass(slots=True)
class DownlinkApplied:
    """What one committed batch of HQ messages changed, for the stages' in-memory state.

    ``erased``: shoppers whose every row is gone (opt-out, a profile delete, expiry,
    eviction over the cap); ``stock``: levels set by inventory messages, after the
    table was replaced as a whole first when ``stock_replaced``.
    """

    profiles: dict[str, Profile] = field(default_factory=dict)
    consents: dict[str, Consent] = field(default_factory=dict)
    erased: set[str] = field(default_factory=set)
    stock: dict[str, float] = field(default_factory=dict)
    stock_replaced: bool = False

    def upsert_profile(self, p: Profile) -> None:
        """A profile arrived (a shopper erased earlier in the batch is back)."""
        self.erased.discard(p.shopper)
        self.profiles[p.shopper] = p

    def set_consent(self, c: Consent) -> None:
        """A consent arrived (a shopper erased earlier in the batch is back)."""
        self.erased.discard(c.shopper)
        self.consents[c.shopper] = c

    def erase(self, shopper: str) -> None:
        """The shopper is erased: nothing of theirs earlier in the batch stands."""
        self.profiles.pop(shopper, None)
        self.consents.pop(shopper, None)
        self.erased.add(shopper)

    def __bool__(self) -> bool:
        return bool(
            self.profiles or self.consents or self.erased or self.stock or self.stock_replaced
        )
