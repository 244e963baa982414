"""The POS flow: checkout lanes' serial feeds in; live baskets, loyalty links and sales out.

Each lane in ``[[lanes]]`` is a ``SerialPosLane`` (gateway/sensing/pos_serial.py)
whose read thread runs the lane's tokenizer and dialect engine
(gateway/sensing/pos_dialect.py) and hands what they decided to the event loop.
Here, on the loop:

1. **Loyalty scans become salted hashes at once.** The dialect extracts the
   printed number; this stage hashes it with the fleet's salt
   (gateway/identity/loyalty.py), looks the hash up among opted-in shoppers
   with live consent, and forgets the number. An opted-in shopper's scan is a
   ``pos`` signal to the visit book (opening a visit when BLE never saw them);
   anyone else's stays a hash on the sale and links nothing. Without a salt no
   loyalty number leaves this stage at all.
2. **Baskets go to the stages after this one** as ``BasketChanged`` and
   ``CheckoutCompleted`` (gateway/events.py) through ``subscribe``: the
   decision engine reads them; nothing here publishes a basket on a screen.
3. **Every ended transaction goes to HQ through the outbox** as
   ``up/transaction`` (a class never shed): the transaction object of docs/contracts.md section 1
   with the loyalty number replaced by its hash, plus the lane and the visit.
   Complete, cancelled and incomplete alike: a receipt cut off by an unplugged
   cable is a sale HQ must hear of, marked as such.

Nothing of a receipt's text is logged: lines may carry card digits, and only
what a dialect extracted (never a tender line) leaves the lane stage.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from gateway.clock import Clock
from gateway.config import GatewayConfig, dialect_path
from gateway.errors import ConfigError
from gateway.events import BasketChanged, BasketItem, CheckoutCompleted, PosNotice, UpEvent
from gateway.identity.loyalty import loyalty_hash
from gateway.log import get_logger
from gateway.publish.outbox import UpstreamSender
from gateway.sensing import pos_dialect as pd
from gateway.sensing.pos_serial import LaneSettings, SerialPosLane

SALT_ENV = "STORE_GATEWAY_LOYALTY_SALT"


def read_loyalty_salt(cfg: GatewayConfig) -> bytes | None:
    """The fleet's loyalty salt: ``$STORE_GATEWAY_LOYALTY_SALT`` or ``pos.loyalty_salt_file``.

    Read as ``hq push-profiles --loyalty-salt-file`` reads it (bytes, surrounding
    whitespace stripped), so both sides hash alike.
    """
    env = os.environ.get(SALT_ENV)
    if env:
        return env.encode().strip()
    if cfg.pos.loyalty_salt_file is None:
        return None
    try:
        salt = cfg.pos.loyalty_salt_file.read_bytes().strip()
    except OSError as exc:
        raise ConfigError([("pos.loyalty_salt_file", f"cannot read: {exc.strerror}")]) from exc
    if not salt:
        raise ConfigError([("pos.loyalty_salt_file", "the salt file is empty")])
    return salt


@dataclass(slots=True)
class _Link:
    """What this stage knows about a lane's open transaction beyond the receipt."""

    loyalty_hash: str | None = None
    shopper: str | None = None
    visit: str | None = None


class PosFlow:
    """Every configured lane, from serial bytes to baskets, loyalty links and sales."""

    def __init__(
        self,
        cfg: GatewayConfig,
        clock: Clock,
        outbox: Any,
        *,
        shoppers: Any | None = None,
        salt: bytes | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.outbox = outbox
        # The shopper flow (loyalty lookup and visits); None: no linking at all.
        self.shoppers = shoppers
        self.salt = salt
        self._log = get_logger("pos")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: list[Callable[[PosNotice], None]] = []
        self.zones = {lane.id: lane.zone for lane in cfg.lanes}
        self.parsers: dict[str, pd.DialectParser] = {}
        self.lanes: dict[str, SerialPosLane] = {}
        self._links: dict[str, _Link] = {}
        for lane in cfg.lanes:
            dialect = pd.load_dialect(dialect_path(cfg, lane.dialect))
            parser = pd.DialectParser(dialect)
            settings = LaneSettings(
                lane=lane.id,
                port=lane.port,
                baudrate=lane.baudrate,
                bytesize=lane.bytesize,
                parity=lane.parity,
                stopbits=lane.stopbits,
                exclusive=lane.exclusive,
                reconnect_min_s=lane.reconnect_min_s,
                reconnect_max_s=lane.reconnect_max_s,
                wrong_baud_window_s=cfg.pos.wrong_baud_window_s,
            )
            self.parsers[lane.id] = parser
            self.lanes[lane.id] = SerialPosLane(settings, parser, self._from_thread, clock)
            self._links[lane.id] = _Link()
        self.transactions: collections.Counter[str] = collections.Counter()
        self.notices = 0
        self.subscriber_errors = 0
        self.loyalty_scans = 0
        self.loyalty_linked = 0
        self.loyalty_unsalted = 0
        self._sender = UpstreamSender(outbox, "pos_transaction", self._log)
        self._upstream = self._sender.send

    def subscribe(self, fn: Callable[[PosNotice], None]) -> None:
        """Call ``fn`` on the loop with every ``BasketChanged`` and ``CheckoutCompleted``."""
        self._subscribers.append(fn)

    # -- tasks ------------------------------------------------------------------------

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {f"pos-{lane}": self._run_lane(lane) for lane in self.lanes}

    async def _run_lane(self, lane: str) -> None:
        self._loop = asyncio.get_running_loop()
        await self.lanes[lane].run()

    def _from_thread(self, lane: str, events: list[Any]) -> None:
        """The lanes' sink, called on their read threads: hand over to the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.on_events, lane, events)

    # -- on the loop --------------------------------------------------------------------

    def on_events(self, lane: str, events: list[Any]) -> None:
        """What a lane's dialect engine decided, in order."""
        for ev in events:
            if isinstance(ev, pd.BasketChanged):
                self._basket_changed(lane, ev)
            elif isinstance(ev, pd.TransactionEnded):
                self._ended(lane, ev)

    def _basket_changed(self, lane: str, ev: pd.BasketChanged) -> None:
        txn = ev.txn
        if ev.change == "started":
            self._links[lane] = _Link()
        link = self._links.setdefault(lane, _Link())
        if txn.loyalty and link.loyalty_hash is None:
            self._link_loyalty(lane, link, txn.loyalty, ev.ts)
        self._notify(
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
        shopper = self.shoppers.directory.by_loyalty(link.loyalty_hash, self.clock.wall())
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
        doc = txn.to_contract()
        doc["loyalty"] = link.loyalty_hash
        doc["lane"] = lane
        doc["visit"] = link.visit
        self._upstream(UpEvent.of("transaction", doc, ev.ts))
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
        self._notify(
            CheckoutCompleted(
                lane=lane,
                transaction=txn.number,
                status=txn.status,
                items=_items(txn.items),
                total=txn.total,
                totals_match=txn.totals_match,
                shopper=link.shopper,
                visit=link.visit,
                ts=ev.ts,
            )
        )

    def _notify(self, notice: PosNotice) -> None:
        self.notices += 1
        for fn in self._subscribers:
            try:
                fn(notice)
            except Exception as exc:  # noqa: BLE001 - a subscriber's bug must not stop the tills
                self.subscriber_errors += 1
                self._log.error("pos_subscriber_failed", error=repr(exc))

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
            "notices": self.notices,
            "subscriber_errors": self.subscriber_errors,
            "upstream": self._sender.committed,
            "upstream_rejected": self._sender.rejected,
        }


def _items(items: list[Any]) -> tuple[BasketItem, ...]:
    return tuple(BasketItem(i.code, i.description, i.quantity, i.unit, i.amount) for i in items)
