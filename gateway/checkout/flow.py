"""The checkout stage's loop: lanes' receipts in; live baskets, loyalty links and sales out.

Each lane in ``[[lanes]]`` is a ``SerialPosLane`` (gateway/sensing/pos_serial.py,
built by the composition root) whose read thread runs the lane's tokenizer and
dialect engine (gateway/sensing/pos_dialect.py) and hands what they decided to
``lane_sink``, which passes it to the event loop. Here, on the loop:

1. **Loyalty scans become salted hashes at once.** The dialect extracts the
   printed number; this stage hashes it with the fleet's salt
   (gateway/identity/loyalty.py), looks the hash up among opted-in shoppers
   with live consent, and forgets the number. An opted-in shopper's scan is a
   ``pos`` signal to the visit book (opening a visit when BLE never saw them);
   anyone else's stays a hash on the sale and links nothing. Without a salt no
   loyalty number leaves this stage at all. The shopper flow is reached through
   the ``ShopperIdentification`` port (gateway/ports.py).
2. **Baskets go to the stages after this one** as ``BasketChanged`` and
   ``CheckoutCompleted`` (gateway/events.py) through the ``notices`` fan-out: the
   decision engine reads them; nothing here publishes a basket on a screen.
3. **Every ended transaction goes to HQ** through the ``UpstreamSink`` as its
   ``CheckoutCompleted`` (``up/transaction``, a class never shed): the transaction
   object of docs/contracts.md section 1 with the loyalty number replaced by its
   hash, plus the lane and the visit (gateway/publish/payloads.py builds it).
   Complete, cancelled and incomplete alike: a receipt cut off by an unplugged
   cable is a sale HQ must hear of, marked as such.

Nothing of a receipt's text is logged: lines may carry card digits, and only
what a dialect extracted (never a tender line) leaves the lane stage.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.clock import Clock
from gateway.config import GatewayConfig, PosSection
from gateway.errors import ConfigError, DialectError
from gateway.events import BasketChanged, BasketItem, CheckoutCompleted, PosNotice
from gateway.identity.loyalty import loyalty_hash
from gateway.log import get_logger
from gateway.ports import Fanout, ShopperIdentification, UpstreamSink
from gateway.sensing import pos_dialect as pd

SALT_ENV = "STORE_GATEWAY_LOYALTY_SALT"


def read_loyalty_salt(pos: PosSection) -> bytes | None:
    """The fleet's loyalty salt: ``$STORE_GATEWAY_LOYALTY_SALT`` or ``pos.loyalty_salt_file``.

    Read as ``hq push-profiles --loyalty-salt-file`` reads it (bytes, surrounding
    whitespace stripped), so both sides hash alike.
    """
    env = os.environ.get(SALT_ENV)
    if env:
        return env.encode().strip()
    if pos.loyalty_salt_file is None:
        return None
    try:
        salt = pos.loyalty_salt_file.read_bytes().strip()
    except OSError as exc:
        raise ConfigError([("pos.loyalty_salt_file", f"cannot read: {exc.strerror}")]) from exc
    if not salt:
        raise ConfigError([("pos.loyalty_salt_file", "the salt file is empty")])
    return salt


def dialect_path(pos: PosSection, dialect: str) -> Path:
    """A lane's dialect file: a path as given, or a name looked up in pos.dialects_dir."""
    if "/" in dialect or dialect.endswith(".toml"):
        return Path(dialect)
    return pos.dialects_dir / f"{dialect}.toml"


def config_problems(config: GatewayConfig) -> list[tuple[str, str]]:
    """Every lane's dialect loads (bad regexes and unknown keys are found by
    check-config, not at 3 am): the checkout stage's own check of a valid config."""
    problems: list[tuple[str, str]] = []
    for i, lane in enumerate(config.lanes):
        try:
            pd.load_dialect(dialect_path(config.pos, lane.dialect))
        except DialectError as exc:
            problems.extend(
                (
                    f"lanes.{i}.dialect",
                    f"{where}: {what}" if where == exc.source else f"{exc.source}: {where}: {what}",
                )
                for where, what in exc.problems
            )
    return problems


def completed(
    txn: pd.Transaction,
    ts: float,
    *,
    lane: str | None = None,
    loyalty: str | None = None,
    shopper: str | None = None,
    visit: str | None = None,
) -> CheckoutCompleted:
    """The ``CheckoutCompleted`` of an ended receipt (``loyalty``: what goes in its place:
    the salted hash at a lane, the raw number in ``pos replay``)."""
    return CheckoutCompleted(
        lane=lane,
        transaction=txn.number,
        status=txn.status,
        items=_items(txn.items),
        total=txn.total,
        totals_match=txn.totals_match,
        shopper=shopper,
        visit=visit,
        ts=ts,
        voids=_items(txn.voids),
        discounts=_items(txn.discounts),
        loyalty=loyalty,
        reason=txn.reason,
    )


class LaneFeed(Protocol):
    """A lane's serial feed (``SerialPosLane``): its read loop and its figures."""

    async def run(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class Figures(Protocol):
    """Anything with health figures (a lane's dialect parser)."""

    def stats(self) -> dict[str, Any]: ...


@dataclass(slots=True)
class _Link:
    """What this stage knows about a lane's open transaction beyond the receipt."""

    loyalty_hash: str | None = None
    shopper: str | None = None
    visit: str | None = None


class CheckoutFlow:
    """Every configured lane, from its dialect's events to baskets, loyalty links and sales."""

    def __init__(
        self,
        clock: Clock,
        upstream: UpstreamSink,
        *,
        shoppers: ShopperIdentification | None = None,
        salt: bytes | None = None,
    ) -> None:
        self.clock = clock
        self.upstream = upstream
        # The shopper flow (loyalty lookup and visits); None: no linking at all.
        self.shoppers = shoppers
        self.salt = salt
        self._log = get_logger("pos")
        self._loop: asyncio.AbstractEventLoop | None = None
        self.notices: Fanout[PosNotice] = Fanout("pos")
        self.zones: dict[str, str] = {}
        self.parsers: dict[str, Figures] = {}
        self.lanes: dict[str, LaneFeed] = {}
        self._links: dict[str, _Link] = {}
        self.transactions: collections.Counter[str] = collections.Counter()
        self.loyalty_scans = 0
        self.loyalty_linked = 0
        self.loyalty_unsalted = 0

    def add_lane(self, lane: str, zone: str, feed: LaneFeed, parser: Figures) -> None:
        """A lane whose feed hands its dialect's events to ``lane_sink``."""
        self.zones[lane] = zone
        self.lanes[lane] = feed
        self.parsers[lane] = parser
        self._links[lane] = _Link()

    # -- tasks ------------------------------------------------------------------------

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The coroutines the composition root runs: one per lane."""
        return {f"pos-{lane}": self._run_lane(lane) for lane in self.lanes}

    async def _run_lane(self, lane: str) -> None:
        self._loop = asyncio.get_running_loop()
        await self.lanes[lane].run()

    def lane_sink(self, lane: str, events: list[pd.PosEvent]) -> None:
        """The lanes' sink, called on their read threads: hand over to the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.on_events, lane, events)

    # -- on the loop --------------------------------------------------------------------

    def on_events(self, lane: str, events: Iterable[pd.PosEvent]) -> None:
        """What a lane's dialect engine decided, in order."""
        for ev in events:
            if isinstance(ev, pd.TransactionChanged):
                self._basket_changed(lane, ev)
            elif isinstance(ev, pd.TransactionEnded):
                self._ended(lane, ev)

    def _basket_changed(self, lane: str, ev: pd.TransactionChanged) -> None:
        txn = ev.txn
        if ev.change == "started":
            self._links[lane] = _Link()
        link = self._links.setdefault(lane, _Link())
        if txn.loyalty and link.loyalty_hash is None:
            self._link_loyalty(lane, link, txn.loyalty, ev.ts)
        self.notices.emit(
            BasketChanged(
                lane=lane,
                transaction=txn.number,
                change=ev.change,
                items=_items(txn.items),
                total=txn.total,
                shopper=link.shopper,
                visit=link.visit,
                ts=ev.ts,
            )
        )

    def _link_loyalty(self, lane: str, link: _Link, number: str, ts: float) -> None:
        self.loyalty_scans += 1
        if self.salt is None:
            self.loyalty_unsalted += 1
            if self.loyalty_unsalted == 1:
                self._log.warning(
                    "pos_loyalty_without_salt",
                    lane=lane,
                    hint="set pos.loyalty_salt_file: scans are not linked or sent without it",
                )
            return
        link.loyalty_hash = loyalty_hash(self.salt, number)
        if self.shoppers is None:
            return
        shopper = self.shoppers.by_loyalty(link.loyalty_hash, self.clock.wall())
        if shopper is None:
            return
        link.shopper = shopper
        link.visit = self.shoppers.identify(shopper, "pos", ts, self.zones.get(lane))
        self.loyalty_linked += 1

    def _ended(self, lane: str, ev: pd.TransactionEnded) -> None:
        txn = ev.txn
        link = self._links.get(lane) or _Link()
        if txn.loyalty and link.loyalty_hash is None:
            self._link_loyalty(lane, link, txn.loyalty, ev.ts)
        self._links[lane] = _Link()
        self.transactions[txn.status] += 1
        sale = completed(
            txn,
            ev.ts,
            lane=lane,
            loyalty=link.loyalty_hash,
            shopper=link.shopper,
            visit=link.visit,
        )
        self.upstream.send(sale)
        self._log.info(
            "pos_transaction",
            lane=lane,
            status=txn.status,
            reason=txn.reason,
            items=len(txn.items),
            voids=len(txn.voids),
            totals_match=txn.totals_match,
            linked=link.shopper is not None,
        )
        self.notices.emit(sale)

    # -- health -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts and figures only: no receipt text, no loyalty number, no shopper."""
        lanes = {}
        for lane_id, lane in self.lanes.items():
            lanes[lane_id] = {**lane.stats(), "parser": self.parsers[lane_id].stats()}
        return {
            "lanes": lanes,
            "transactions": dict(self.transactions),
            "loyalty": {
                "scans": self.loyalty_scans,
                "linked": self.loyalty_linked,
                "without_salt": self.loyalty_unsalted,
            },
            "notices": self.notices.emitted,
            "subscriber_errors": self.notices.errors,
            **self.upstream.stats(),
        }


def _items(items: Iterable[pd.Item]) -> tuple[BasketItem, ...]:
    return tuple(BasketItem(i.code, i.description, i.quantity, i.unit, i.amount) for i in items)
