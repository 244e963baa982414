"""``store-gateway demo``: a whole simulated store on this machine.

Two private Mosquitto brokers ("store" and "HQ") on free loopback ports, the
real daemon as a child process on a temporary config with a scripted event
source, opted-in and foreign shoppers walking past a replayed radio and three
satellites, a checkout lane on a real pty where receipts are scanned item by
item (gateway/demo/pos.py), a live view from the store broker's health topic,
an HQ outage in the middle (the outbox fills, then drains), and a summary of
what was produced, what HQ received and what was lost.
"""

from __future__ import annotations

import collections
import contextlib
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.demo.decisions import StoreView, demo_features, experiment_for
from gateway.demo.pos import SALT as LOYALTY_SALT
from gateway.demo.pos import DemoTill
from gateway.demo.shoppers import DemoShoppers
from gateway.publish import topics
from gateway.testing.daemon import GatewayProcess, committed_count, config_text, gateway_sections
from gateway.testing.hq import HqReceiver
from gateway.testing.mosquitto import MosquittoBroker

STORE_ID = "demo-store"
# After the scripted trading ends, how long the demo waits for HQ to catch up (s).
DRAIN_GRACE_S = 90.0


class HealthWatcher:
    """Keeps the latest retained health and status documents of the store broker."""

    def __init__(self, port: int) -> None:
        self.health: dict[str, Any] = {}
        self.status: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="demo-view", protocol=MQTTProtocolVersion.MQTTv5
        )
        self._client.on_connect = lambda c, *a: c.subscribe("store/v1/gateway/#", qos=1)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with contextlib.suppress(ValueError), self._lock:
            doc = json.loads(msg.payload)
            if msg.topic == topics.STORE_HEALTH:
                self.health = doc
            elif msg.topic == topics.STORE_STATUS:
                self.status = doc

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        with self._lock:
            return dict(self.health), dict(self.status)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class LiveView:
    """Redraws in place on a terminal; prints a line every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self._last_line = 0.0
        self._drawn = 0

    def show(
        self, phase: str, elapsed: float, health: dict[str, Any], received: int, total: int
    ) -> None:
        outbox = health.get("outbox", {})
        hq = health.get("hq", {})
        sim = health.get("simulation", {})
        shoppers = health.get("shoppers", {})
        res = shoppers.get("resolver", {})
        presence = shoppers.get("presence") or {}
        pos = health.get("pos", {})
        decision = health.get("decision", {})
        published = decision.get("published", {})
        sources = decision.get("ranker", {}).get("sources", {})
        lane = pos.get("lanes", {}).get("lane-1", {})
        sales = pos.get("transactions", {})
        rows = [
            f"store-gateway demo  t={elapsed:5.1f}s  phase: {phase}",
            f"  produced    {sim.get('produced', 0):>7} / {total}",
            f"  outbox      {outbox.get('depth', 0):>7} rows  "
            f"{outbox.get('bytes', 0) / 1024:8.1f} KiB  "
            f"commit {outbox.get('last_commit_ms', 0)} ms",
            f"  HQ link     {'up  ' if hq.get('connected') else 'DOWN'}  "
            f"in flight {hq.get('inflight', 0):>5}  acked {hq.get('acked_total', 0):>7}",
            f"  HQ received {received:>7} distinct events",
            f"  shoppers    {presence.get('present', 0):>7} present (opted in)  "
            f"arrivals {shoppers.get('events', {}).get('arrived', 0)}  "
            f"adverts: resolved {res.get('resolved', 0)}, foreign dropped "
            f"{res.get('foreign_dropped', 0)}",
            f"  lane-1      {'open' if lane.get('connected') else 'DOWN'}  "
            f"sales {sales.get('complete', 0)} complete, {sales.get('incomplete', 0)} incomplete  "
            f"loyalty linked {pos.get('loyalty', {}).get('linked', 0)}  "
            f"{lane.get('bytes', 0)} bytes",
            f"  decisions   alerts {published.get('arrival', 0)}  screens "
            f"{published.get('dwell', 0)}  lane displays {published.get('basket', 0)}  "
            f"(model {sources.get('model', 0)}, fallback {sources.get('fallback', 0)})  "
            f"conversions {decision.get('conversions', 0)}",
        ]
        if self.tty:
            if self._drawn:
                sys.stdout.write(f"\x1b[{self._drawn}F")
            sys.stdout.write("".join(f"\x1b[2K{r}\n" for r in rows))
            sys.stdout.flush()
            self._drawn = len(rows)
        elif elapsed - self._last_line >= 3 or phase.startswith("done"):
            self._last_line = elapsed
            print(
                f"[{elapsed:5.1f}s] {phase:<22} produced={sim.get('produced', 0)} "
                f"outbox={outbox.get('depth', 0)} hq={'up' if hq.get('connected') else 'down'} "
                f"received={received} present={presence.get('present', 0)} "
                f"foreign_dropped={res.get('foreign_dropped', 0)} "
                f"sales={sales.get('complete', 0)}",
                flush=True,
            )


def run_demo(*, duration_s: float, outage_s: float, events_per_s: float, summary_json: bool) -> int:
    """Run the demo store; 0 when nothing was lost and the gateway stopped cleanly."""
    workdir = Path(tempfile.mkdtemp(prefix="store-gateway-demo-"))
    total = max(1, int(events_per_s * duration_s))
    outage_at = duration_s * 0.3
    print(
        f"store-gateway demo: {total} events over {duration_s:.0f}s, HQ cut off for "
        f"{outage_s:.0f}s from t={outage_at:.0f}s (work dir {workdir})",
        flush=True,
    )
    shoppers = DemoShoppers(time.time() + 2.0, workdir)
    view_holder: list[StoreView] = []
    till = DemoTill(
        workdir,
        shoppers.checkouts,
        anonymous_at=[shoppers.start_at + 20.0, shoppers.start_at + 50.0],
        suggestion=lambda who: view_holder[0].suggestion(who) if view_holder else None,
    )
    features = demo_features([s.shopper for s in shoppers.opted_in])
    print(
        f"  shoppers: {len(shoppers.opted_in)} opted in and {shoppers.foreign_devices} foreign "
        f"devices walk entrance -> produce -> checkout (Pi radio replayed, three "
        f"OpenMQTTGateway satellites over MQTT)",
        flush=True,
    )
    print(
        f"  checkout: {till.receipts} receipts scanned item by item on lane-1 (a real pty, "
        f"the journal-dvr dialect), one with a loyalty scan and a card payment",
        flush=True,
    )
    store = MosquittoBroker(workdir / "store-broker", name="store").start()
    hq = MosquittoBroker(workdir / "hq-broker", name="hq").start()
    receiver = HqReceiver(hq.port).start()
    watcher = HealthWatcher(store.port)
    store_view = StoreView(store.port)
    view_holder.append(store_view)
    db = workdir / "gateway.db"
    cfg = workdir / "gateway.toml"
    cfg.write_text(
        config_text(
            gateway_sections(
                store_id=STORE_ID,
                db_path=db,
                store_port=store.port,
                hq_port=hq.port,
                simulation={
                    "events_per_s": events_per_s,
                    "max_events": total,
                    # Sales come from the lane; the scripted source adds volume only.
                    "kinds": ["presence", "telemetry"],
                },
                outbox={"loss_report_interval_s": 5},
                store_broker={"health_interval_s": 0.5},
                log={"format": "json", "level": "info"},
                **shoppers.config_sections(),
                **till.config_sections(),
                experiments=[experiment_for(till.loyalty_shopper)],
            )
        )
    )
    gateway = GatewayProcess(cfg, workdir / "gateway.log").start()
    shoppers.start_satellites(store.port)
    till.start()
    last_push = -1e9
    view = LiveView()
    started = time.monotonic()
    phase = "trading"
    max_depth = 0
    outage_done = False
    drained_at: float | None = None
    rc: int | None = None
    try:
        shoppers_done = started + (max(shoppers.ends_at, till.ends_at) - time.time())
        deadline = max(started + duration_s + outage_s, shoppers_done) + DRAIN_GRACE_S
        while time.monotonic() < deadline:
            elapsed = time.monotonic() - started
            health_now = watcher.snapshot()[0]
            known = health_now.get("shoppers", {}).get("shoppers_known", 0)
            if (
                known < len(shoppers.opted_in)
                and health_now.get("hq", {}).get("connected")
                and time.monotonic() - last_push >= 5.0
            ):
                # Pushed until applied: a message that reaches HQ's broker before the
                # gateway's first subscription is not queued for it (HQ re-sends).
                time.sleep(0.5)  # the downlink subscription follows the connect
                shoppers.push_profiles(
                    hq.port, STORE_ID, till.loyalty_ids(), LOYALTY_SALT, features
                )
                last_push = time.monotonic()
            if not gateway.running:
                phase = "gateway exited"
                break
            if not outage_done and hq.running and elapsed >= outage_at:
                hq.stop()
                phase = "HQ DOWN: outbox filling"
            elif not outage_done and not hq.running and elapsed >= outage_at + outage_s:
                hq.start()
                receiver.wait_connected(10)
                outage_done = True
                phase = "HQ back: draining"
            health, _ = watcher.snapshot()
            depth = health.get("outbox", {}).get("depth", 0)
            max_depth = max(max_depth, depth)
            produced = health.get("simulation", {}).get("produced", 0)
            if outage_done and produced >= total and depth == 0 and phase.startswith("HQ back"):
                phase = "HQ caught up; shoppers"
            if (
                outage_done
                and produced >= total
                and depth == 0
                and time.monotonic() >= shoppers_done
                and not (health.get("shoppers", {}).get("presence") or {}).get("present")
                and len(receiver.of_kind("transaction")) >= till.receipts
                and receiver.count() >= committed_count(db)
            ):
                drained_at = elapsed
                phase = "done: HQ caught up"
                view.show(phase, elapsed, health, receiver.count(), total)
                break
            view.show(phase, elapsed, health, receiver.count(), total)
            time.sleep(0.5)
        stop_started = time.monotonic()
        rc = gateway.terminate(timeout_s=15)
        stop_s = time.monotonic() - stop_started
        time.sleep(0.3)
        _, status = watcher.snapshot()
        committed = committed_count(db)
        expected = {f"{STORE_ID}:{i}" for i in range(1, committed + 1)}
        received = len(receiver.ids & expected)
        health, _ = watcher.snapshot()
        shed = sum(health.get("outbox", {}).get("shed_total", {}).values())
        scores = shoppers.score(dict(receiver.presence))
        resolver = health.get("shoppers", {}).get("resolver", {})
        sales = receiver.of_kind("transaction")
        summary = {
            "produced": committed,
            "received_at_hq": received,
            "lost": committed - received,
            "duplicates_at_hq": receiver.messages - len(receiver.ids),
            "shed_by_policy": shed,
            "hq_outage_s": outage_s,
            "max_outbox_depth": max_depth,
            "caught_up_at_s": round(drained_at, 1) if drained_at is not None else None,
            "gateway_exit_code": rc,
            "gateway_stop_s": round(stop_s, 2),
            "final_status": status.get("state"),
            **scores,
            "foreign_adverts_dropped": resolver.get("foreign_dropped"),
            "adverts_resolved": resolver.get("resolved"),
            "receipts_scanned": till.receipts,
            "transactions_at_hq": len(sales),
            "transactions_complete": sum(t.get("status") == "complete" for t in sales),
            "items_sold": sum(len(t.get("items") or []) for t in sales),
            "sales_linked_to_visits": sum(bool(t.get("visit")) for t in sales),
            "recommendations_shown": sum(
                bool(d.get("shown")) for d in receiver.of_kind("decision")
            ),
            "recommendations_by_source": dict(
                collections.Counter(str(d.get("source")) for d in receiver.of_kind("decision"))
            ),
            **{f"store_{k}": v for k, v in store_view.counts().items()},
            "suggestion_bought": till.took_suggestion,
            "conversions": len(receiver.of_kind("conversion")),
        }
    finally:
        shoppers.stop()
        till.stop()
        store_view.stop()
        if gateway.running:
            gateway.kill()
        watcher.stop()
        receiver.stop()
        store.close()
        hq.close()
    print()
    print("summary")
    for key, value in summary.items():
        print(f"  {key:<24} {value}")
    ok = (
        summary["lost"] == 0
        and rc == 0
        and drained_at is not None
        and summary["shoppers_detected"] == summary["shoppers_opted_in"]
        and bool(summary["foreign_adverts_dropped"])
        and summary["transactions_complete"] == summary["receipts_scanned"]
        and summary["sales_linked_to_visits"] >= 1
        and summary["recommendations_shown"] >= 1
        and summary["conversions"] >= 1
    )
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"  (kept {workdir} for inspection: gateway.log, gateway.db)")
    if summary_json:
        print(json.dumps(summary, separators=(",", ":")))
    return 0 if ok else 1
