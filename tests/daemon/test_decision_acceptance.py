"""Issue 5 acceptance, end to end: the real daemon deciding from a lane's loyalty scan.

A corrupt model bundle: the gateway falls back to popular items, says so in
health and keeps going. A scripted visit (a loyalty scan opens it, the
associates get the next best actions, the shopper buys one of them) yields
exactly one conversion at HQ with the shopper's arm. The lane display's
payloads never carry the shopper, the visit or the loyalty number.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

from gateway.decision import experiments as ex
from gateway.hq import tools
from gateway.identity.loyalty import loyalty_hash
from gateway.publish import topics
from gateway.testing.asyncapi import check_up_events
from gateway.testing.daemon import GatewayProcess, config_text, gateway_sections
from gateway.testing.hq import HqReceiver, push_until_applied
from gateway.testing.mosquitto import MosquittoBroker
from gateway.testing.pty_lane import PtyLane
from gateway.testing.receipts import GROCERIES, journal_receipt
from gateway.testing.subscriber import TopicRecorder

STORE = "s1"
SALT = b"fleet-salt-for-decisions"
LOYALTY = "9900011122233"
SHOPPER = "shopper-7"
EXPERIMENT = {
    "id": "nba-1",
    "salt": "experiment-salt-1",
    "holdout": 0.0,
    "arms": [
        {"name": "model", "weight": 1, "strategy": "model"},
        {"name": "popular", "weight": 1, "strategy": "popular"},
    ],
}
POS_DIR = Path(__file__).resolve().parents[2] / "firmware_configs" / "pos"


def wait_for(pred: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_scripted_visit_with_a_corrupt_model(
    tmp_path: Path,
    store_broker: MosquittoBroker,
    hq_broker: MosquittoBroker,
    hq_receiver: HqReceiver,
) -> None:
    # A bundle whose model does not match its manifest's sha256.
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(
        json.dumps(
            {
                "format": "store-gateway-ranker/1",
                "version": 1,
                "sha256": "0" * 64,
                "model_file": "model.onnx",
                "catalogue": ["1", "2"],
            }
        )
    )
    (bundle / "model.onnx").write_bytes(b"\x08\x07 not an onnx model")
    salt_file = tmp_path / "loyalty.salt"
    salt_file.write_bytes(SALT)
    os.chmod(salt_file, 0o600)
    lane = PtyLane(tmp_path / "ttyLANE1")
    db = tmp_path / "gateway.db"
    log = tmp_path / "gateway.log"
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        config_text(
            gateway_sections(
                store_id=STORE,
                db_path=db,
                store_port=store_broker.port,
                hq_port=hq_broker.port,
                store_broker={"health_interval_s": 0.2},
                pos={"dialects_dir": str(POS_DIR), "loyalty_salt_file": str(salt_file)},
                lanes=[{"id": "lane-1", "port": str(lane.link), "dialect": "journal-dvr"}],
                decision={"bundle_dir": str(bundle), "k": 3},
                experiments=[EXPERIMENT],
            )
        )
    )
    watched = [
        topics.STORE_HEALTH,
        topics.ASSOCIATE_ALERTS,
        "store/v1/lanes/+/display",
        "store/v1/zones/+/screen",
    ]
    hq_receiver.envelopes = []
    gw = GatewayProcess(cfg, log).start()
    try:
        with TopicRecorder(store_broker.port, watched) as rec:
            health = wait_for(
                lambda: (
                    (rec.latest(topics.STORE_HEALTH) or {})
                    .get("pos", {})
                    .get("lanes", {})
                    .get("lane-1", {})
                    .get("connected")
                    and rec.latest(topics.STORE_HEALTH)
                ),
                20,
                "the lane",
            )
            assert health["decision"]["ranker"]["model_version"] is None
            wait_for(lambda: hq_receiver.wait_connected(0.1), 10, "HQ")
            # HQ: shopper-7 with every scope the three outputs need, and their card.
            doc = {
                "shoppers": [
                    {
                        "shopper": SHOPPER,
                        "root_key": bytes(range(32)).hex(),
                        "loyalty_ids": [LOYALTY],
                        "consent": {
                            "scopes": ["presence", "associate_assist", "screens", "analytics"]
                        },
                    }
                ]
            }
            push_until_applied(
                hq_broker.port,
                topics.hq_down(STORE, "profiles"),
                tools.profiles_messages(doc, dt.datetime.now(dt.UTC), SALT),
                lambda: (
                    (rec.latest(topics.STORE_HEALTH) or {})
                    .get("shoppers", {})
                    .get("shoppers_known")
                    == 1
                ),
            )
            # An anonymous sale first: the fallback learns what sells here.
            for line in journal_receipt(1, list(GROCERIES[:5])):
                lane.write(line)
            wait_for(lambda: len(hq_receiver.of_kind("transaction")) == 1, 15, "sale 1")
            # shopper-7 at the till: the loyalty scan opens their visit (an arrival).
            alerts = lambda: [m for m in rec.messages if m.topic == topics.ASSOCIATE_ALERTS]  # noqa: E731
            lane.write(journal_receipt(2, [], loyalty=LOYALTY)[0])  # TXN START
            lane.write(journal_receipt(2, [], loyalty=LOYALTY)[1])  # LOYALTY
            alert = wait_for(alerts, 15, "the alert")[0].doc
            assert alert["shopper"] == SHOPPER and alert["trigger"] == "arrival"
            recommended = alert["items"]
            assert recommended and set(recommended) <= {g.code for g in GROCERIES[:5]}
            # They take the first suggestion, and the item they came for.
            bought = next(g for g in GROCERIES if g.code == recommended[0])
            lines = journal_receipt(2, [GROCERIES[7], bought], loyalty=LOYALTY)
            for line in lines[1:3] + lines[4:]:  # the items, then the totals and the end
                lane.write(line)
                time.sleep(0.05)
            conv = wait_for(lambda: hq_receiver.of_kind("conversion"), 20, "the conversion")
            time.sleep(1.0)  # anything else would have arrived by now
            final = rec.latest(topics.STORE_HEALTH) or {}
            displays = [m.doc for m in rec.messages if m.topic.startswith("store/v1/lanes/")]
            shown = [m for m in rec.messages if m.topic != topics.STORE_HEALTH]
    finally:
        rc = gw.terminate(timeout_s=15)
        lane.close()
    assert rc == 0

    # The corrupt model: refused at load, counted, and the fallback served (read at the
    # end: the first health may come before the load was tried).
    ranker = final["decision"]["ranker"]
    assert ranker["model_version"] is None and sum(ranker["load_failures"].values()) == 1
    assert ranker["last_error"]["reason"] in ("sha256_mismatch", "bad_manifest", "load_failed")
    assert final["decision"]["ranker"]["sources"].get("fallback", 0) >= 1
    assert final["decision"]["errors"] == 0
    # Exactly one conversion, for the item recommended and bought, with the arm.
    arm = ex.assign(ex.Experiment.from_config(_Section(EXPERIMENT)), SHOPPER)
    assert len(conv) == 1, conv
    assert conv[0]["item"] == bought.code and conv[0]["arm"] == arm
    assert conv[0]["experiment"] == "nba-1" and conv[0]["shown"] is True
    decisions = hq_receiver.of_kind("decision")
    assert decisions and all(d["arm"] == arm for d in decisions if d["trigger"] != "dwell")
    # At the stop, the running hour's per-arm summary left for HQ too (HQ adds up
    # rows of the same period): the arm's decisions and its one conversion.
    summaries = wait_for(lambda: hq_receiver.of_kind("experiment_summary"), 5, "the summary")
    arms = [a for row in summaries if row["experiment"] == "nba-1" for a in row["arms"]]
    assert sum(a["conversions"] for a in arms if a["arm"] == arm) == 1
    assert sum(a["decisions"] for a in arms if a["arm"] == arm) == len(
        [d for d in decisions if d["arm"] == arm and d.get("experiment") == "nba-1"]
    )
    # Every event HQ got is as docs/asyncapi.json describes it, field by field.
    checked = check_up_events(list(hq_receiver.envelopes))
    assert {
        "transaction",
        "visit",
        "decision",
        "impression",
        "conversion",
        "experiment_summary",
    } <= set(checked), checked
    # The lane display updated as the basket changed, and named nobody.
    assert displays and all(d["lane"] == "lane-1" for d in displays)
    visit = alert["visit"]
    needles = [SHOPPER, visit, LOYALTY, loyalty_hash(SALT, LOYALTY)]
    for m in shown:
        if m.topic == topics.ASSOCIATE_ALERTS:
            continue  # the associates' alert may name the shopper (associate_assist)
        text = json.dumps(m.doc)
        for needle in needles:
            assert needle not in text, (needle, m.topic, text)


class _Section:
    """A config-section stand-in for Experiment.from_config."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.id, self.salt, self.holdout = doc["id"], doc["salt"], doc["holdout"]
        self.arms = [type("Arm", (), a)() for a in doc["arms"]]
