"""How the stages reach each other: small Protocols, and the one fan-out of events.

A stage never holds another stage's object; it holds one of these ports, and the
composition root (``gateway/app.py``) hands it the object that implements it.
Each port has at most four methods and speaks the project's own types
(``gateway/events.py``, ``gateway/shoppers.py``): no bleak, serial, paho or
onnxruntime type crosses one.

    ShopperLookup          decision (later: kiosks) -> identity   who may see what
    ShopperIdentification  checkout (later: kiosks) -> identity   a shopper made themselves known
    UpstreamSink           every stage -> publish                 events bound for HQ
    StoreDisplay           decision -> publish                    what the store's screens show

``Fanout`` is the one way a stage tells later stages what happened (presence and
visit events, baskets, committed downlink changes): the later stage subscribes
a plain function; a subscriber that raises is counted and logged and never
stops the stage that emitted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from gateway.log import get_logger
from gateway.shoppers import Consent, Profile

T = TypeVar("T")


class ShopperLookup(Protocol):
    """What a stage may know about an opted-in shopper (implemented by the shopper flow)."""

    def consent(self, shopper: str) -> Consent | None:
        """The shopper's consent, or None when they have none (or are not known)."""
        ...

    def allows(self, shopper: str, scope: str, now_s: float) -> bool:
        """True when the shopper's live consent includes ``scope`` at ``now_s``."""
        ...

    def profile(self, shopper: str) -> Profile | None:
        """The shopper's profile as HQ sent it (attributes for the ranker), or None."""
        ...

    def visit_of(self, shopper: str) -> str | None:
        """The shopper's open visit, or None."""
        ...


class ShopperIdentification(Protocol):
    """A shopper identified themselves (a loyalty scan at a lane; later a kiosk)."""

    def by_loyalty(self, loyalty_hash: str, now_s: float) -> str | None:
        """The opted-in shopper with live consent whose salted loyalty hash this is."""
        ...

    def identify(self, shopper: str, source: str, ts: float, zone: str | None) -> str | None:
        """Open or extend the shopper's visit from ``source``; the visit id (None: not
        linked, because the shopper's consent is not live)."""
        ...


class UpstreamSink(Protocol):
    """Where a stage hands an event bound for HQ. Never blocks, never raises for a
    refused event (the sink counts what was committed and what was refused).

    ``event`` is one of the stage events ``gateway.publish.payloads.up_event`` turns
    into a wire payload (a presence or visit event, a completed checkout, a decision,
    an impression, a conversion, an experiment summary).
    """

    def send(self, event: object) -> None:
        """Hand ``event`` over; it is committed to the outbox soon after."""
        ...

    def stats(self) -> dict[str, int]:
        """``{"upstream": committed, "upstream_rejected": refused}`` for health."""
        ...


class StoreDisplay(Protocol):
    """The store's own screens: associates' tablets, zone screens, lane displays."""

    def show(self, output: object) -> None:
        """Publish ``output`` (a ``gateway.decision.records.Shown``) to the devices it is for."""
        ...


class Fanout(Generic[T]):
    """Calls every subscriber with each event, on the loop, in subscription order.

    ``name`` names the stage in the log line a failing subscriber causes. With
    ``propagate`` the failure is also raised to the emitter once every subscriber
    has been called (for what must never pass quietly, such as an erasure).
    """

    def __init__(self, name: str, *, propagate: bool = False) -> None:
        self.name = name
        self.propagate = propagate
        self._subscribers: list[Callable[[T], Any]] = []
        self.emitted = 0
        self.errors = 0
        self._log = get_logger(name)

    def subscribe(self, fn: Callable[[T], Any]) -> None:
        """Call ``fn`` with every event from now on."""
        self._subscribers.append(fn)

    def emit(self, event: T) -> None:
        """Hand ``event`` to every subscriber; one that raises is counted and logged."""
        self.emitted += 1
        failed: Exception | None = None
        for fn in self._subscribers:
            try:
                fn(event)
            except Exception as exc:  # noqa: BLE001 - a later stage's bug must not stop this one
                self.errors += 1
                self._log.error(f"{self.name}_subscriber_failed", error=repr(exc))
                failed = failed or exc
        if failed is not None and self.propagate:
            raise failed

    def __len__(self) -> int:
        return len(self._subscribers)
