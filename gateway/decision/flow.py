"""The decision stage's loop: moments in the store in; next best actions on the store broker out.

Three triggers, each within the shopper's consent (gateway/shoppers.py):

- **Arrival** (a visit starts: BLE, a loyalty scan, a kiosk, the app via HQ) of a
  shopper with ``associate_assist``: the associates' tablets get the shopper's
  next best actions on ``store/v1/associates/alerts``. Associates may know who
  the shopper is; that is what the scope allows.
- **Dwell** of a shopper with ``screens`` in a zone: that zone's public screen
  is refreshed with items for the zone and the hour. The content is computed
  WITHOUT the shopper's features and carries no id of any kind, so a screen can
  never tell who is standing in front of it.
- **Basket change** at a lane whose loyalty scan linked a shopper with
  ``screens``: the lane's customer display suggests what completes the basket.
  The payload carries no shopper, visit or loyalty identifier (the shopper is
  standing at the till; the person behind them can read the display).

Each decision runs the ranker (an HQ-trained ONNX model, or the popularity
fallback when there is no model or it fails), the rules (never an item in the
basket, stock, exclusions, caps per visit), and the shopper's experiment arm:
a holdout computes what it would have shown and records it unshown. Decisions
and impressions go to the outbox; a recommended item bought in the same visit
is a conversion, sent upstream with its arm; each experiment's per-arm summary
goes up every ``decision.summary_interval_s``.

Work is queued (bounded: the oldest trigger is dropped, counted) and handled by
one task; inference runs on the ranker's own thread, never on the loop. What it
decides leaves as this module's records (``Decision``, ``Shown``, ``Impression``,
``Converted``, ``Summary``) through two ports: ``StoreDisplay`` for the store's
devices and ``UpstreamSink`` for HQ; ``gateway/publish/payloads.py`` alone turns
them into payloads.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import secrets
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.clock import Clock
from gateway.config import DecisionSection, ExperimentSection
from gateway.decision import experiments as ex
from gateway.decision import rules as rl
from gateway.decision.features import features_from_attributes
from gateway.decision.ranker import DecisionRanker
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
from gateway.events import BasketChanged, CheckoutCompleted, DownlinkApplied, PosNotice
from gateway.identity.presence import PresenceEvent
from gateway.identity.visits import VisitEvent
from gateway.log import get_logger
from gateway.ports import ShopperLookup, StoreDisplay, UpstreamSink

QUEUE_MAX = 1000
# The rules' output for each trigger (its consent scope: gateway/decision/rules.py).
OUTPUT: dict[str, Any] = {ARRIVAL: "associate", DWELL: "screen", BASKET: "lane"}
# Basket changes worth a new suggestion (a total or a tender line changes nothing).
BASKET_CHANGES = frozenset({"item", "void", "discount", "loyalty"})
# How long after a summary period ends its summary is sent: records stamped just
# before the end reach the book first.
SUMMARY_MARGIN_S = 0.5


SHARED_BUNDLE = Path("/usr/share/store-gateway/models/default")


def default_bundle_dir() -> Path:
    """The shipped bundle: models/default in a checkout, else where install.sh put it."""
    import gateway

    here = Path(gateway.__file__).resolve().parent.parent / "models" / "default"
    if (here / "manifest.json").exists():
        return here
    return SHARED_BUNDLE


@dataclass(frozen=True, slots=True)
class Trigger:
    """A moment worth a decision: an arrival, a dwell, or a basket change at a lane."""

    kind: str  # ARRIVAL, DWELL, BASKET
    ts: float
    shopper: str | None = None
    visit: str | None = None
    zone: str | None = None
    lane: str | None = None
    basket: tuple[str, ...] = ()


class DecisionFlow:
    """Triggers -> ranker -> rules -> experiment -> the store's devices and HQ."""

    def __init__(
        self,
        cfg: DecisionSection,
        experiments: tuple[ExperimentSection, ...],
        clock: Clock,
        ranker: DecisionRanker,
        *,
        display: StoreDisplay,
        upstream: UpstreamSink,
        shoppers: ShopperLookup | None = None,
        lane_zones: Mapping[str, str] | None = None,
        stock: dict[str, float] | None = None,
    ) -> None:
        self.dcfg = cfg
        self.clock = clock
        self.ranker = ranker
        self.display = display
        self.upstream = upstream
        self.shoppers = shoppers
        self.stock: dict[str, float] = stock if stock is not None else {}
        self._log = get_logger("decision")
        self.lane_zones = dict(lane_zones or {})
        self.caps = rl.VisitCaps(
            rl.CapParams(
                item_shows_per_visit=self.dcfg.item_cap_per_visit,
                decisions_per_trigger=self.dcfg.decisions_per_visit,
            )
        )
        self.exclusions = rl.Exclusions.build(
            items=self.dcfg.exclude_items, prefixes=self.dcfg.exclude_prefixes
        )
        self.experiments = [ex.Experiment.from_config(e) for e in experiments]
        self.attribution = ex.Attribution(
            ex.AttributionParams(bucket_s=self.dcfg.summary_interval_s)
        )
        self._queue: collections.deque[Trigger] = collections.deque()
        self._wake = asyncio.Event()
        self.triggers: collections.Counter[str] = collections.Counter()
        self.decisions: collections.Counter[str] = collections.Counter()
        self.published: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        self.dropped = 0
        self.conversions = 0
        self.errors = 0

    # -- inputs (on the loop) -----------------------------------------------------------

    def on_shopper_event(self, ev: PresenceEvent | VisitEvent) -> None:
        """A presence or visit event from the shopper flow (its ``events`` fan-out)."""
        if isinstance(ev, VisitEvent):
            if ev.kind == "visit_started" and self.dcfg.on_arrival:
                zone = ev.zones[0] if ev.zones else None
                self._push(
                    Trigger(ARRIVAL, ev.ts, shopper=ev.shopper, visit=ev.visit_id, zone=zone)
                )
            elif ev.kind == "visit_ended":
                self.attribution.end_visit(ev.visit_id)
                self.caps.end_visit(ev.visit_id)
            return
        if ev.kind == "dwelled" and self.dcfg.on_dwell:
            self._push(Trigger(DWELL, ev.ts, shopper=ev.shopper, visit=ev.visit, zone=ev.zone))

    def on_pos_notice(self, notice: PosNotice) -> None:
        """A basket change or a completed checkout from the checkout flow."""
        if isinstance(notice, BasketChanged):
            if (
                self.dcfg.on_basket
                and notice.shopper is not None
                and notice.change in BASKET_CHANGES
            ):
                basket = tuple(i.code for i in notice.items if i.code)
                self._push(
                    Trigger(
                        BASKET,
                        notice.ts,
                        shopper=notice.shopper,
                        visit=notice.visit,
                        lane=notice.lane,
                        zone=self.lane_zones.get(notice.lane),
                        basket=basket,
                    )
                )
        elif isinstance(notice, CheckoutCompleted):
            self._checkout(notice)

    def on_downlink(self, changes: DownlinkApplied) -> None:
        """A committed downlink batch: erasures and stock levels."""
        if changes.erased:
            self.on_erased(set(changes.erased))
        if changes.stock or changes.stock_replaced:
            self.on_stock(changes.stock, changes.stock_replaced)

    def on_erased(self, shoppers: set[str]) -> None:
        """Opt-out: forget what was recommended to them (unsent events go with the outbox)."""
        for shopper in shoppers:
            self.attribution.forget_shopper(shopper)

    def on_stock(self, levels: Mapping[str, float], replaced: bool) -> None:
        """HQ's inventory downlink committed (gateway/publish/downlink.py)."""
        if replaced:
            self.stock.clear()
        self.stock.update(levels)

    def _push(self, trigger: Trigger) -> None:
        self.triggers[trigger.kind] += 1
        if len(self._queue) >= QUEUE_MAX:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(trigger)
        self._wake.set()

    # -- tasks --------------------------------------------------------------------------

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The coroutines the composition root runs: decisions and experiment summaries."""
        return {"decisions": self._run(), "experiment-summary": self._summary_loop()}

    async def _run(self) -> None:
        await self.ranker.start()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                trigger = self._queue.popleft()
                try:
                    await self.decide(trigger)
                except Exception as exc:  # noqa: BLE001 - one bad decision must not stop the rest
                    self.errors += 1
                    self._log.error("decision_failed", trigger=trigger.kind, error=repr(exc))

    async def _summary_loop(self) -> None:
        period = self.dcfg.summary_interval_s
        while True:
            # Wake just after each period ends (on the UTC hour by default), not one
            # interval after start: a period's summary leaves within a second of its end.
            await asyncio.sleep(period - self.clock.wall() % period + SUMMARY_MARGIN_S)
            self.flush_summaries()

    def flush_summaries(self, *, final: bool = False) -> int:
        """Send every completed summary upstream (``final``: the running periods too,
        at shutdown); how many."""
        rows = self.attribution.flush(self.clock.wall(), everything=final)
        for row in rows:
            self.upstream.send(Summary(row, self.clock.wall()))
        return len(rows)

    # -- deciding -----------------------------------------------------------------------

    def _features(self, shopper: str | None) -> Any:
        if shopper is None or self.shoppers is None:
            return None
        profile = self.shoppers.profile(shopper)
        if profile is None:
            return None
        return features_from_attributes(profile.attributes.get("features"))

    def _arm(self, shopper: str | None) -> tuple[str | None, str | None, ex.ArmPlan]:
        """(experiment, arm, plan) for a shopper; the first experiment decides."""
        if shopper is None or not self.experiments:
            return None, None, ex.ArmPlan("model", True)
        exp = self.experiments[0]
        arm = ex.assign(exp, shopper)
        return exp.id, arm, exp.plan(arm)

    async def decide(self, trigger: Trigger) -> Decision | None:
        """One trigger end to end; the decision record (None when refused)."""
        now = self.clock.wall()
        output = OUTPUT[trigger.kind]
        consent = (
            self.shoppers.consent(trigger.shopper)
            if self.shoppers is not None and trigger.shopper is not None
            else None
        )
        # Refusals first (no visit, no consent, a visit's cap), before any inference.
        refusal = rl.decide(
            (),
            visit=trigger.visit,
            trigger=trigger.kind,
            output=output,
            consent=consent,
            now=now,
            k=1,
            caps=self.caps,
        )
        if refusal.refused:
            self.refused[str(refusal.refusal)] += 1
            return None
        local = dt.datetime.fromtimestamp(trigger.ts, dt.UTC).astimezone()
        hour, dow = local.hour, local.weekday()
        if trigger.kind == DWELL:  # a public screen: no experiment, no personal data
            experiment, arm, plan = None, None, ex.ArmPlan("model", True)
        else:
            experiment, arm, plan = self._arm(trigger.shopper)
        features = None if trigger.kind == DWELL else self._features(trigger.shopper)
        k = self.dcfg.k
        want = k * 3 + len(trigger.basket)
        started = time.perf_counter()
        if plan.strategy == "popular":
            rec = self.ranker.popular(trigger.basket, hour, trigger.zone, want)
        else:
            rec = await self.ranker.recommend(
                features, trigger.basket, hour, dow, trigger.zone, want
            )
        decision = rl.decide(
            rl.ranked(rec.items, rec.source),
            visit=trigger.visit,
            trigger=trigger.kind,
            output=output,
            consent=consent,
            now=now,
            k=k,
            caps=self.caps,
            basket=trigger.basket,
            stock=self.stock,
            exclusions=self.exclusions,
        )
        if decision.refused:  # the consent or the cap changed while the ranker ran
            self.refused[str(decision.refusal)] += 1
            return None
        items = tuple(decision.item_ids)
        shown = plan.shown and bool(items)
        public = trigger.kind == DWELL
        record = Decision(
            decision=secrets.token_hex(8),
            trigger=trigger.kind,
            shopper=None if public else trigger.shopper,
            visit=None if public else trigger.visit,
            zone=trigger.zone,
            lane=trigger.lane,
            experiment=experiment,
            arm=arm,
            shown=shown,
            items=items,
            reasons={p.item: tuple(p.reasons) for p in decision.items},
            dropped=dict(collections.Counter(d.reason for d in decision.dropped)),
            source=rec.source,
            fallback_reason=rec.reason,
            model_version=self.ranker.version,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            ts=now,
        )
        self.decisions[f"{trigger.kind}:{rec.source}"] += 1
        assert trigger.visit is not None  # refused above otherwise
        # Recorded for the holdout too: its caps and attach rate compare with the arms'.
        self.caps.record(trigger.visit, trigger.kind, list(items), now)
        if experiment is not None and trigger.shopper is not None:
            self.attribution.record(
                trigger.visit, trigger.shopper, arm or "", experiment, list(items), now, shown=shown
            )
        self.upstream.send(record)
        if shown:
            self._show(trigger, record)
        return record

    def _show(self, trigger: Trigger, record: Decision) -> None:
        associates = trigger.kind == ARRIVAL
        self.display.show(
            Shown(
                trigger=trigger.kind,
                decision=record.decision,
                items=record.items,
                ts=record.ts,
                zone=trigger.zone,
                lane=trigger.lane,
                shopper=trigger.shopper if associates else None,
                visit=trigger.visit if associates else None,
                basket_items=len(trigger.basket),
            )
        )
        self.published[trigger.kind] += 1
        self.upstream.send(
            Impression(
                decision=record.decision,
                output=trigger.kind,
                zone=trigger.zone,
                lane=trigger.lane,
                items=record.items,
                source=record.source,
                shopper=None if trigger.kind == DWELL else trigger.shopper,
                ts=record.ts,
            )
        )

    def _checkout(self, notice: CheckoutCompleted) -> None:
        items = [i.code for i in notice.items if i.code]
        if notice.status != "complete" or not items:
            return
        local = dt.datetime.fromtimestamp(notice.ts, dt.UTC).astimezone()
        self.ranker.observe_purchase(
            self.lane_zones.get(notice.lane) if notice.lane else None, local.hour, items
        )
        if notice.visit is None:
            return
        for conv in self.attribution.on_purchase(notice.visit, items, notice.ts):
            self.conversions += 1
            self.upstream.send(Converted(conv, notice.lane, notice.transaction, notice.ts))

    # -- health -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts and figures; no shopper, no item."""
        return {
            "ranker": self.ranker.stats(),
            "triggers": dict(self.triggers),
            "decisions": dict(self.decisions),
            "published": dict(self.published),
            "refused": dict(self.refused),
            "queue": len(self._queue),
            "dropped": self.dropped,
            "conversions": self.conversions,
            "errors": self.errors,
            "stock_items": len(self.stock),
            "experiments": [e.id for e in self.experiments],
            **self.upstream.stats(),
        }
