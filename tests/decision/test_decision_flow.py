"""The decision flow in-process with the shipped default bundle and real onnxruntime:
triggers, consent, the rules, experiments and attribution, and what each output carries."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.app import build_decision, build_shoppers
from gateway.clock import SystemClock
from gateway.config import parse_config
from gateway.decision import experiments as ex
from gateway.decision.features import ShopperFeatures
from gateway.decision.flow import ARRIVAL, BASKET, DWELL, DecisionFlow, Trigger, default_bundle_dir
from gateway.events import BasketItem, CheckoutCompleted
from gateway.hq.features import features_to_attributes
from gateway.identity.flow import ShopperFlow
from gateway.identity.presence import PresenceEvent
from gateway.publish.local_bus import LocalBus
from gateway.publish.upstream import OutboxSink
from gateway.shoppers import Consent, Profile
from gateway.testing.connection import FakeConnection
from gateway.testing.waiting import wait_until_async

POS_DIR = Path(__file__).resolve().parents[2] / "firmware_configs" / "pos"
ALL_SCOPES = frozenset({"presence", "associate_assist", "screens", "analytics"})


class Outbox:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def enqueue(self, event: Any) -> asyncio.Future[str]:
        self.events.append(event)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        fut.set_result("ok")
        return fut

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.kind == kind]


class Published(FakeConnection):
    """The store broker as the local bus sees it: what the devices were sent."""

    @property
    def messages(self) -> list[tuple[str, dict[str, Any], bool]]:
        return [(m.topic, m.json(), m.retain) for m in self.sent]


def display(published: Published) -> LocalBus:
    return LocalBus(published, "s1", SystemClock(), dict, health_interval_s=10)


def catalogue() -> list[str]:
    manifest = json.loads((default_bundle_dir() / "manifest.json").read_text())
    return [str(i) for i in manifest["catalogue"]]


def make_flow(
    tmp_path: Path, experiments: list[dict[str, Any]] | None = None, **decision: Any
) -> tuple[DecisionFlow, ShopperFlow, Outbox, Published]:
    cfg = parse_config(
        {
            "store": {"id": "s1"},
            "storage": {"path": str(tmp_path / "g.db")},
            "lanes": [
                {
                    "id": "lane-1",
                    "port": str(tmp_path / "tty"),
                    "dialect": str(POS_DIR / "journal-dvr.toml"),
                }
            ],
            "decision": {"k": 3, **decision},
            "experiments": experiments or [],
        }
    )
    outbox, published = Outbox(), Published()
    shoppers = build_shoppers(cfg, SystemClock(), OutboxSink(outbox, "presence_event"))
    items = catalogue()
    profiles = []
    consents = []
    for i, (shopper, scopes) in enumerate(
        [
            ("s-all", ALL_SCOPES),
            ("s-presence-only", frozenset({"presence"})),
        ]
    ):
        hist = tuple((items[(i * 7 + j) % len(items)], 1.0 / (j + 1)) for j in range(6))
        attrs = {"features": features_to_attributes(ShopperFeatures(hist=hist, nbr=()))}
        profiles.append(Profile(shopper, time.time() + 86400, attributes=attrs))
        consents.append(Consent(shopper, scopes, time.time() + 86400))
    shoppers.load(profiles, consents)
    flow = build_decision(
        cfg, SystemClock(), OutboxSink(outbox, "decision_event"), display(published), shoppers
    )
    return flow, shoppers, outbox, published


def test_every_trigger_decides_with_the_model_and_outputs_name_nobody(tmp_path: Path) -> None:
    async def main() -> None:
        flow, shoppers, outbox, published = make_flow(tmp_path)
        assert await flow.ranker.start()
        now = time.time()
        visit = shoppers.identify("s-all", "pos", now, "checkout")
        assert visit
        arrival = await flow.decide(
            Trigger(ARRIVAL, now, shopper="s-all", visit=visit, zone="entrance")
        )
        basket = tuple(catalogue()[:2])
        lane = await flow.decide(
            Trigger(
                BASKET,
                now,
                shopper="s-all",
                visit=visit,
                lane="lane-1",
                zone="checkout",
                basket=basket,
            )
        )
        screen = await flow.decide(
            Trigger(DWELL, now, shopper="s-all", visit=visit, zone="produce")
        )
        flow.ranker.close()
        assert arrival and lane and screen
        assert {arrival.source, lane.source, screen.source} == {"model"}
        assert arrival.model_version is not None
        assert not set(lane.items) & set(basket)
        assert all(len(r.items) == 3 and r.shown for r in (arrival, lane, screen))
        topics = {t: (doc, retain) for t, doc, retain in published.messages}
        alert, _ = topics["store/v1/associates/alerts"]
        assert alert["shopper"] == "s-all" and alert["items"] == list(arrival.items)
        display, _ = topics["store/v1/lanes/lane-1/display"]
        shown_screen, retained = topics["store/v1/zones/produce/screen"]
        assert retained
        for doc in (display, shown_screen):
            text = json.dumps(doc)
            for needle in (
                "s-all",
                visit,
                arrival.decision,
                lane.decision,
                screen.decision,
            ):
                assert needle not in text
        # The screen's record names nobody either; the others name the shopper (subject).
        assert screen.shopper is None and screen.visit is None
        decisions = [e for e in outbox.events if e.kind == "decision"]
        assert [e.subject for e in decisions] == ["s-all", "s-all", None]
        assert len(outbox.of("impression")) == 3

    asyncio.run(main())


def test_screen_content_does_not_depend_on_who_is_there(tmp_path: Path) -> None:
    """Two different shoppers dwelling in the same zone at the same hour: the same screen."""

    async def main() -> list[list[str]]:
        flow, shoppers, _outbox, published = make_flow(tmp_path)
        await flow.ranker.start()
        now = time.time()
        out = []
        for shopper in ("s-all", "s-presence-only"):
            visit = shoppers.identify(shopper, "pos", now, "produce")
            # s-presence-only lacks "screens": only the consented one's dwell shows.
            record = await flow.decide(
                Trigger(DWELL, now, shopper=shopper, visit=visit, zone="produce")
            )
            out.append(record.items if record else [])
        flow.ranker.close()
        assert [t for t, _, _ in published.messages] == ["store/v1/zones/produce/screen"]
        assert flow.refused["no_consent"] == 1
        return out

    first, second = asyncio.run(main())
    assert first and second == []

    # Same zone, same hour, a different consented shopper: identical content.
    async def again() -> list[str]:
        flow, shoppers, _outbox, _published = make_flow(tmp_path)
        await flow.ranker.start()
        shoppers.load(
            [Profile("s-other", time.time() + 86400)],
            [Consent("s-other", ALL_SCOPES, time.time() + 86400)],
        )
        visit = shoppers.identify("s-other", "kiosk", time.time(), "produce")
        record = await flow.decide(
            Trigger(DWELL, time.time(), shopper="s-other", visit=visit, zone="produce")
        )
        flow.ranker.close()
        assert record
        return record.items

    assert asyncio.run(again()) == first


def test_consent_stock_and_caps(tmp_path: Path) -> None:
    async def main() -> None:
        flow, shoppers, _outbox, published = make_flow(tmp_path, decisions_per_visit=2)
        await flow.ranker.start()
        now = time.time()
        visit = shoppers.identify("s-presence-only", "pos", now, "checkout")
        # No associate_assist scope: refused before any inference, nothing shown.
        assert (
            await flow.decide(Trigger(ARRIVAL, now, shopper="s-presence-only", visit=visit)) is None
        )
        assert flow.refused["no_consent"] == 1 and not published.messages
        visit = shoppers.identify("s-all", "pos", now, "checkout")
        first = await flow.decide(Trigger(ARRIVAL, now, shopper="s-all", visit=visit))
        assert first
        # The top item runs out: the next decision never shows it.
        flow.on_stock({first.items[0]: 0.0}, replaced=True)
        second = await flow.decide(Trigger(ARRIVAL, now, shopper="s-all", visit=visit))
        assert second and first.items[0] not in second.items
        assert second.dropped.get("out_of_stock") == 1
        # Two arrivals per visit at most (decision.decisions_per_visit = 2).
        assert await flow.decide(Trigger(ARRIVAL, now, shopper="s-all", visit=visit)) is None
        assert flow.refused["visit_cap"] == 1
        flow.ranker.close()

    asyncio.run(main())


@pytest.mark.parametrize("holdout_share", [0.0, 0.999])
def test_arms_holdout_and_one_conversion(tmp_path: Path, holdout_share: float) -> None:
    """A recommendation then a purchase of it in the same visit: exactly one conversion,
    with the arm; a holdout records what it would have shown, unshown."""
    exp = {
        "id": "e1",
        "salt": "salt-for-e1",
        "holdout": holdout_share,
        "arms": [
            {"name": "a", "weight": 1.0, "strategy": "model"},
            {"name": "b", "weight": 1.0, "strategy": "popular"},
        ],
    }

    async def main() -> None:
        flow, shoppers, outbox, published = make_flow(tmp_path, experiments=[exp])
        await flow.ranker.start()
        now = time.time()
        visit = shoppers.identify("s-all", "pos", now, "checkout")
        record = await flow.decide(Trigger(ARRIVAL, now, shopper="s-all", visit=visit))
        assert record
        arm = ex.assign(flow.experiments[0], "s-all")
        assert record.arm == arm and record.experiment == "e1"
        holdout = arm == ex.HOLDOUT
        assert record.shown is (not holdout)
        assert bool(published.messages) is (not holdout)
        bought = record.items[0]
        items = (BasketItem(bought, "X", "1", None, "1.00"), BasketItem("zzz", "Y", "1", None, "2"))
        for _ in range(2):  # the same sale reported twice still converts once
            flow.on_pos_notice(
                CheckoutCompleted(
                    "lane-1", "0001", "complete", items, "3.00", True, "s-all", visit, now + 60
                )
            )
        convs = outbox.of("conversion")
        assert len(convs) == 1
        assert convs[0]["item"] == bought and convs[0]["arm"] == arm
        assert convs[0]["shown"] is (not holdout)
        # Another visit's purchase of the same item is no conversion.
        flow.on_pos_notice(
            CheckoutCompleted(
                "lane-1",
                "0002",
                "complete",
                items,
                "3.00",
                True,
                "s-all",
                "another-visit",
                now + 90,
            )
        )
        assert len(outbox.of("conversion")) == 1
        # At shutdown the running period is handed over too, once.
        assert flow.flush_summaries(final=True) >= 1
        assert flow.flush_summaries(final=True) == 0
        arms = [a for row in outbox.of("experiment_summary") for a in row["arms"]]
        assert {a["arm"] for a in arms} == {arm}
        assert sum(a["decisions"] for a in arms) == 1
        assert sum(a["conversions"] for a in arms) == 1
        assert sum(a["impressions"] for a in arms) == (0 if holdout else len(record.items))
        flow.ranker.close()

    asyncio.run(main())


def test_summaries_leave_just_after_each_period_ends(tmp_path: Path) -> None:
    """With 1 s periods, a decision's per-arm summary is upstream within a second or so."""
    exp = {
        "id": "e1",
        "salt": "salt-for-e1",
        "holdout": 0.0,
        "arms": [{"name": "a", "weight": 1.0, "strategy": "model"}],
    }

    async def main() -> None:
        flow, shoppers, outbox, _published = make_flow(
            tmp_path, experiments=[exp], summary_interval_s=1
        )
        await flow.ranker.start()
        loop = asyncio.create_task(flow._summary_loop())
        visit = shoppers.identify("s-all", "pos", time.time(), "checkout")
        assert await flow.decide(Trigger(ARRIVAL, time.time(), shopper="s-all", visit=visit))
        await wait_until_async(lambda: outbox.of("experiment_summary"), what="a summary")
        loop.cancel()
        flow.ranker.close()
        (row,) = outbox.of("experiment_summary")
        assert row["experiment"] == "e1" and row["end"] - row["start"] == 1
        assert [(a["arm"], a["decisions"]) for a in row["arms"]] == [("a", 1)]

    asyncio.run(main())


def test_dwell_presence_events_become_screen_triggers(tmp_path: Path) -> None:
    async def main() -> None:
        flow, shoppers, _outbox, _published = make_flow(tmp_path)
        shoppers.identify("s-all", "pos", time.time(), "produce")
        # The loyalty scan opened a visit: that is an arrival (the flow heard it).
        assert [t.kind for t in flow._queue] == ["arrival"]
        flow.on_shopper_event(PresenceEvent("dwelled", "s-all", "produce", time.time()))
        flow.on_shopper_event(PresenceEvent("zone_changed", "s-all", "dairy", time.time()))
        assert flow.triggers == {"arrival": 1, "dwell": 1}
        assert [t.kind for t in flow._queue] == ["arrival", "dwell"]
        flow.ranker.close()

    asyncio.run(main())
