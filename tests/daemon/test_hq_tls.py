"""Issue 11 acceptance, item 7: a broken HQ TLS file leaves the store running.

The real daemon, the replayed radio, a POS lane on a real pty and a TLS HQ broker:
with a garbage ``hq.tls.ca_file`` the gateway reports the problem in health and
keeps scanning, reading the lane and filling the outbox; once the file is right it
connects without a restart and HQ gets everything that waited.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gateway.publish import topics
from gateway.testing.daemon import GatewayProcess, config_text, gateway_sections
from gateway.testing.hq import HqReceiver
from gateway.testing.mosquitto import MosquittoBroker
from gateway.testing.pty_lane import PtyLane
from gateway.testing.receipts import GROCERIES, journal_receipt
from gateway.testing.subscriber import TopicRecorder
from gateway.testing.tls import TlsMosquittoBroker, make_certificates

STORE = "s1"
POS_DIR = Path(__file__).resolve().parents[2] / "firmware_configs" / "pos"
N_ADVERTS = 200
N_EVENTS = 300


def wait_health(rec: TopicRecorder, pred: Any, timeout_s: float, what: str) -> dict[str, Any]:
    got = rec.wait_for(topics.STORE_HEALTH, pred, timeout_s, since=time.monotonic())
    last = rec.latest(topics.STORE_HEALTH) or {}
    assert got is not None, f"health never showed {what}; hq: {last.get('hq')}"
    return got.doc


def test_a_broken_hq_ca_file_leaves_ble_lanes_and_the_outbox_running(
    tmp_path: Path, store_broker: MosquittoBroker
) -> None:
    """Garbage in hq.tls.ca_file: the daemon runs on, health names the HQ problem, BLE,
    the lane and the outbox keep working; the fixed file is picked up without a restart
    and every event that waited reaches HQ."""
    certs = make_certificates(tmp_path / "certs")
    hq = TlsMosquittoBroker(tmp_path / "hq-broker", certs, name="hq").start()
    ca_file = tmp_path / "hq-ca.pem"
    ca_file.write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    replay = tmp_path / "radio.jsonl"
    replay.write_text(
        "".join(
            json.dumps(
                {
                    "t": 1 + i / 100,
                    "address": f"5A:3F:1C:9D:{i >> 8:02X}:{i & 255:02X}",
                    "rssi": -70,
                    "md": {"6": f"0300{i:04x}"},
                }
            )
            + "\n"
            for i in range(N_ADVERTS)
        )
    )
    lane = PtyLane(tmp_path / "ttyLANE1")
    db = tmp_path / "gw.db"
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        config_text(
            gateway_sections(
                store_id=STORE,
                db_path=db,
                store_port=store_broker.port,
                hq_port=hq.port,
                hq={"tls": {"ca_file": str(ca_file)}, "reconnect_max_s": 0.5},
                store_broker={"health_interval_s": 0.2},
                ble={
                    "enabled": True,
                    "company_id": 0xFFFF,
                    "zone": "entrance",
                    "backend": "replay",
                    "replay_file": str(replay),
                },
                pos={"dialects_dir": str(POS_DIR)},
                lanes=[{"id": "lane-1", "port": str(lane.link), "dialect": "journal-dvr"}],
                simulation={"events_per_s": 100, "max_events": N_EVENTS},
            )
        )
    )
    hq_rx = HqReceiver(hq.plain_port).start()
    rec = TopicRecorder(store_broker.port, [topics.STORE_HEALTH]).start()
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    try:
        broken = wait_health(
            rec,
            lambda d: (
                "TLS files unusable" in (d.get("hq", {}).get("last_error") or "")
                and d.get("pos", {}).get("lanes", {}).get("lane-1", {}).get("connected")
            ),
            20,
            "the HQ TLS problem and the lane connected",
        )
        assert broken["hq"]["connected"] is False
        for line in journal_receipt(41, list(GROCERIES[:3])):
            lane.write(line)
        working = wait_health(
            rec,
            lambda d: (
                d.get("ble", {}).get("adverts", 0) >= N_ADVERTS
                and d.get("pos", {}).get("transactions", {}).get("complete", 0) >= 1
                and d.get("outbox", {}).get("committed_total", 0) >= N_EVENTS + 1
            ),
            30,
            "BLE adverts heard, the sale read and the events committed",
        )
        assert gw.running, "the daemon exited over HQ's TLS file"
        assert working["hq"]["connected"] is False and working["hq"]["connects"] == 0
        waiting = working["outbox"]["committed_total"]
        assert working["outbox"]["depth"] >= waiting

        # The right CA file: the next attempt reads it, no restart.
        ca_file.write_bytes(certs.ca_file.read_bytes())
        wait_health(rec, lambda d: d.get("hq", {}).get("connected"), 20, "HQ connected")
        assert hq_rx.wait_for(waiting, 30), f"HQ got {hq_rx.count()} of {waiting} events"
        assert hq_rx.by_kind["transaction"] >= 1
        rc = gw.terminate()
    finally:
        if gw.running:
            gw.kill()
        rec.stop()
        hq_rx.stop()
        lane.close()
        hq.close()
    assert rc == 0
    assert "Traceback" not in (tmp_path / "gw.log").read_text(errors="replace")
