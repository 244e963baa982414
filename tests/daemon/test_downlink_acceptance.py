"""Issue 3 acceptance, downlink: fuzzed HQ messages through real Mosquitto into the daemon."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.publish import topics
from gateway.testing.daemon import GatewayProcess, config_text, gateway_sections
from gateway.testing.hq import push_until_applied
from gateway.testing.mosquitto import MosquittoBroker

STORE = "s1"
N_MESSAGES = 10_000
VALID_EVERY = 50
# Valid profiles sent first, one per downlink topic, until the daemon has applied both:
# proof that it subscribed. Numbers far from the fuzz's own, so their shoppers are apart.
PROBES = {topics.hq_down(STORE, "profiles"): 1_000_001, topics.fleet_down("profiles"): 1_000_002}


def _valid(i: int) -> bytes:
    up = {
        "shopper": f"good-{i}",
        "expires_at": time.time() + 86400,
        "day_keys": {"2026-11-23": f"{i:064x}"},
        "consent": {"scopes": ["presence"], "expires_at": time.time() + 86400},
    }
    return json.dumps({"v": 1, "id": f"valid-{i}", "upserts": [up]}).encode()


def _fuzzed(rng: random.Random, i: int) -> tuple[str, bytes]:
    """One of many ways a message can be wrong: bytes, JSON, schema, size, hostile values."""
    good = _valid(i)
    choice = rng.randrange(10)
    kind = rng.choice(["profiles", "consent"])
    if choice == 0:
        return kind, rng.randbytes(rng.randrange(0, 400))
    if choice == 1:
        return kind, good[: rng.randrange(1, len(good) - 1)]
    if choice == 2:
        return kind, good.replace(b'"v": 1', b'"v": ' + str(rng.randrange(2, 99)).encode())
    if choice == 3:
        doc = json.loads(good)
        doc["upserts"][0]["day_keys"] = {"2026-11-23": rng.randbytes(8).hex()}
        return "profiles", json.dumps(doc).encode()
    if choice == 4:
        doc = json.loads(good)
        doc["upserts"][0]["expires_at"] = rng.choice(["soon", None, [], {"a": 1}, -5, 1e300])
        return "profiles", json.dumps(doc).encode()
    if choice == 5:
        return "consent", json.dumps(
            {
                "v": 1,
                "id": f"c{i}",
                "changes": [{"shopper": "x" * rng.randrange(65, 500), "action": "opt_out"}],
            }
        ).encode()
    if choice == 6:
        return kind, b"[" * rng.randrange(1000, 50_000)
    if choice == 7:
        return kind, json.dumps({"v": 1, "id": f"u{i}", "upserts": [], "extra": True}).encode()
    if choice == 8:
        return rng.choice(["teleport", "model", "x" * 40]), good
    return kind, json.dumps(rng.choice([1, "s", None, [1, 2], {"v": "1"}])).encode()


def test_ten_thousand_fuzzed_messages_dead_lettered_valid_ones_applied(tmp_path: Path) -> None:
    """10,000 bad downlink messages: no crash, each dead-lettered; valid ones in between apply."""
    rng = random.Random(20261123)
    store = MosquittoBroker(tmp_path / "store-broker", name="store").start()
    hq = MosquittoBroker(tmp_path / "hq-broker", name="hq").start()
    cfg = tmp_path / "gw.toml"
    db = tmp_path / "gw.db"
    cfg.write_text(
        config_text(
            gateway_sections(store_id=STORE, db_path=db, store_port=store.port, hq_port=hq.port)
        )
    )
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    pub = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="fuzzer", protocol=MQTTProtocolVersion.MQTTv5
    )

    def shoppers_in_db() -> set[str]:
        conn = sqlite3.connect(str(db), timeout=10)
        try:
            return {r[0] for r in conn.execute("SELECT shopper_id FROM profiles")}
        finally:
            conn.close()

    probe_shoppers = {f"good-{i}" for i in PROBES.values()}

    try:
        assert gw.wait_log("gateway_ready", 20), "daemon did not start"
        # The daemon subscribes once connected to HQ, and what reaches the broker before
        # that is not queued for it (a fixed sleep here was a guess a loaded machine
        # could outrun): each topic's probe is re-sent until applied.
        for topic, i in PROBES.items():
            push_until_applied(
                hq.port,
                topic,
                [json.loads(_valid(i))],
                lambda i=i: f"good-{i}" in shoppers_in_db(),
            )
        pub.connect("127.0.0.1", hq.port)
        pub.loop_start()
        valid_ids: list[int] = []
        bad = 0
        infos = []
        for i in range(N_MESSAGES + N_MESSAGES // VALID_EVERY):
            if i % (VALID_EVERY + 1) == VALID_EVERY:
                valid_ids.append(i)
                kind, payload = "profiles", _valid(i)
            else:
                kind, payload = _fuzzed(rng, i)
                bad += 1
            topic = topics.hq_down(STORE, kind) if i % 2 else topics.fleet_down(kind)
            infos.append(pub.publish(topic, payload, qos=1))
        for info in infos:
            info.wait_for_publish(30)
        assert bad == N_MESSAGES

        def counts() -> tuple[int, int]:
            conn = sqlite3.connect(str(db), timeout=10)
            try:
                return (
                    conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0],
                    conn.execute("SELECT count(*) FROM profiles").fetchone()[0],
                )
            finally:
                conn.close()

        expected = (bad, len(valid_ids) + len(PROBES))
        deadline = time.monotonic() + 60
        while counts() != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gw.running, "the daemon died"
        assert counts() == expected
        rc = gw.terminate()
        assert rc == 0
        conn = sqlite3.connect(str(db))
        try:
            shoppers = {r[0] for r in conn.execute("SELECT shopper_id FROM profiles")}
            reasons = [r[0] for r in conn.execute("SELECT reason FROM dead_letters")]
        finally:
            conn.close()
        assert shoppers == {f"good-{i}" for i in valid_ids} | probe_shoppers
        assert all(reasons)
        kinds_of_reason = {r.split(":")[0].split(" (")[0] for r in reasons}
        print(
            f"\n{bad} fuzzed messages dead-lettered, {len(valid_ids)} valid applied; "
            f"reasons: {sorted(kinds_of_reason)[:12]}"
        )
        errors = [line for line in gw.log_lines() if line.get("level") in ("error", "critical")]
        assert errors == []
    finally:
        pub.loop_stop()
        if gw.running:
            gw.kill()
        store.close()
        hq.close()
