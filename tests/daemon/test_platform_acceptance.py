"""Issue 2 acceptance: the daemon as a real child process against real Mosquitto and SQLite.

HQ outage, SIGKILLs, a full database, a store broker restart and SIGTERM, each
checked from the outside: what HQ's consumer received, what the store broker
holds retained, and what the SQLite file says after the process is gone.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway.publish import topics
from gateway.storage.store import integrity_check
from gateway.testing.daemon import GatewayProcess, committed_count, config_text, gateway_sections
from gateway.testing.hq import HqReceiver
from gateway.testing.mosquitto import MosquittoBroker
from gateway.testing.subscriber import TopicRecorder

STORE = "s1"


def _write_config(tmp_path: Path, name: str, **overrides: Any) -> Path:
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(
        config_text(gateway_sections(store_id=STORE, db_path=tmp_path / "gw.db", **overrides))
    )
    return cfg


def _ids(first: int, last: int) -> set[str]:
    return {f"{STORE}:{i}" for i in range(first, last + 1)}


def _outbox_depth(db: Path) -> int:
    conn = sqlite3.connect(str(db), timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


def _missing(hq: HqReceiver, expected: set[str]) -> str:
    missing = sorted(expected - hq.ids, key=lambda i: int(i.split(":")[1]))
    extra = sorted(hq.ids - expected)
    return (
        f"{len(hq.ids)} distinct of {len(expected)} expected ({hq.messages} messages, "
        f"{hq.messages - len(hq.ids)} duplicates); missing {len(missing)} e.g. {missing[:5]}, "
        f"unexpected {extra[:5]}"
    )


def test_hq_outage_of_20000_events_loses_nothing(
    tmp_path: Path,
    store_broker: MosquittoBroker,
    hq_broker: MosquittoBroker,
    hq_receiver: HqReceiver,
) -> None:
    """20,000 events produced while the HQ broker is down all arrive, by id, once it is back."""
    n = 20_000
    cfg = _write_config(
        tmp_path,
        "gw",
        store_port=store_broker.port,
        hq_port=hq_broker.port,
        simulation={"events_per_s": 4000, "max_events": n},
    )
    hq_broker.stop()
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    try:
        finished = gw.wait_log("simulation_finished", timeout_s=60)
        assert finished is not None, "the simulation did not finish"
        assert finished["taken"] == n and finished["rejected"] == 0, finished
        assert hq_receiver.count() == 0
        assert _outbox_depth(tmp_path / "gw.db") == n
        started = time.monotonic()
        hq_broker.start()
        arrived = hq_receiver.wait_for(n, 90)
        drain_s = time.monotonic() - started
        assert arrived, _missing(hq_receiver, _ids(1, n))
        assert hq_receiver.ids == _ids(1, n), _missing(hq_receiver, _ids(1, n))
        print(
            f"drain of {n} after the outage: {drain_s:.2f}s, {hq_receiver.messages - n} duplicates"
        )
    finally:
        rc = gw.terminate()
    assert rc == 0


def test_sigkill_at_20_random_moments_loses_no_committed_event(
    tmp_path: Path,
    store_broker: MosquittoBroker,
    hq_broker: MosquittoBroker,
    hq_receiver: HqReceiver,
) -> None:
    """Events committed before any of 20 SIGKILLs all reach HQ and the database stays sound."""
    # HQ stays up the whole time: kills land while rows are in flight to HQ,
    # between commit and PUBACK, and in the middle of group commits.
    cfg = _write_config(
        tmp_path,
        "gw",
        store_port=store_broker.port,
        hq_port=hq_broker.port,
        simulation={"events_per_s": 800},
    )
    drain_cfg = _write_config(
        tmp_path, "drain", store_port=store_broker.port, hq_port=hq_broker.port
    )
    rng = random.Random(20_000)
    delays = []
    for i in range(20):
        gw = GatewayProcess(cfg, tmp_path / f"gw-{i}.log").start()
        assert gw.wait_log("gateway_ready", timeout_s=20) is not None, f"run {i} did not start"
        delay = rng.uniform(0.2, 1.5)
        delays.append(delay)
        time.sleep(delay)
        assert gw.running, f"run {i} died on its own"
        assert gw.kill() == -signal.SIGKILL
    # The last start has the same store, database and brokers, but no source:
    # what is left in the outbox drains, then SIGTERM.
    db = tmp_path / "gw.db"
    gw = GatewayProcess(drain_cfg, tmp_path / "gw-drain.log").start()
    started = time.monotonic()
    try:
        assert gw.wait_log("gateway_ready", timeout_s=20) is not None
        deadline = time.monotonic() + 60
        while _outbox_depth(db) and time.monotonic() < deadline:
            time.sleep(0.1)
        drain_s = time.monotonic() - started
        assert _outbox_depth(db) == 0, "the outbox did not drain"
    finally:
        rc = gw.terminate()
    assert rc == 0
    committed = committed_count(db)
    assert committed > 1000, f"only {committed} events committed in 20 runs"
    expected = _ids(1, committed)
    assert hq_receiver.wait_for(committed, 30), _missing(hq_receiver, expected)
    assert hq_receiver.ids == expected, _missing(hq_receiver, expected)
    assert integrity_check(db) == "ok"
    print(
        f"20 kills after {[round(d, 2) for d in delays]} s; {committed} committed, "
        f"{hq_receiver.messages - committed} duplicates, drain {drain_s:.2f}s"
    )


def test_full_database_sheds_low_class_reports_it_and_recovers(
    tmp_path: Path,
    store_broker: MosquittoBroker,
    hq_broker: MosquittoBroker,
    hq_receiver: HqReceiver,
) -> None:
    """A full database sheds telemetry, never transactions, reports it (health, HQ), recovers."""
    produced = 24_000
    kinds = ["telemetry"] * 9 + ["transaction"]
    cfg = _write_config(
        tmp_path,
        "gw",
        store_port=store_broker.port,
        hq_port=hq_broker.port,
        # max_page_count caps the file at 2 MB; the outbox byte budget is far
        # above it, so SQLITE_FULL is what triggers shedding, not the budget.
        storage={"max_size_mb": 2},
        outbox={"max_mb": 64, "loss_report_interval_s": 1},
        simulation={"events_per_s": 2000, "max_events": produced, "kinds": kinds},
    )
    hq_broker.stop()
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    health = topics.STORE_HEALTH
    try:
        with TopicRecorder(store_broker.port, [health]) as rec:
            # The flag is true from a commit that hit SQLITE_FULL until one that
            # did not, so a 1 s health sample may miss it; the counter cannot.
            full = rec.wait_for(health, lambda d: d["outbox"]["disk_full_events"] > 0, timeout_s=30)
            assert full is not None, f"never full: {rec.latest(health)}"
            finished = gw.wait_log("simulation_finished", timeout_s=60)
            assert finished is not None, f"the simulation did not finish: {rec.latest(health)}"
            assert gw.running
            assert finished["rejected"] + finished["taken"] == produced
            settled = rec.wait_for(
                health,
                lambda d: d["outbox"]["pending"] == 0,
                timeout_s=10,
                since=time.monotonic(),
            )
            assert settled is not None
            shed = settled.doc["outbox"]["shed_total"]
            assert shed.get("telemetry:disk_full", 0) > 0, shed
            assert not any(k.startswith("transaction:") for k in shed), shed
            flags_seen = {m.doc["storage"]["disk_full"] for m in rec.on(health)}
            # The flag lasts while space is short, so a 1 s health sample sees it.
            assert True in flags_seen, f"disk_full never shown in health: {flags_seen}"

            hq_back = time.monotonic()
            hq_broker.start()
            n_tx = produced // len(kinds)

            def drained(d: dict[str, Any]) -> bool:
                return (
                    d["outbox"]["depth"] == 0
                    and not d["storage"]["disk_full"]
                    and not d["outbox"]["disk_full"]
                )

            recovered = rec.wait_for(health, drained, timeout_s=60, since=hq_back)
            assert recovered is not None, f"no recovery: {rec.latest(health)}"
            final_shed = recovered.doc["outbox"]["shed_total"]
            # The loss reports themselves need room, so a little more may be
            # shed after the producers stopped; never a transaction.
            assert final_shed["telemetry:disk_full"] >= shed["telemetry:disk_full"]
            assert not any(k.startswith("transaction:") for k in final_shed), final_shed
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _reported(hq_receiver) != final_shed:
                time.sleep(0.1)
            assert _reported(hq_receiver) == final_shed, (hq_receiver.loss_reports, final_shed)
            tx = hq_receiver.ids_by_kind.get("transaction", set())
            assert len(tx) == n_tx, f"{len(tx)} of {n_tx} transactions arrived"
            # Every committed id either arrived or was counted as shed after commit.
            committed = recovered.doc["outbox"]["next_seq"] - 1
            shed_after_commit = sum(final_shed.values()) - finished["rejected"]
            assert len(hq_receiver.ids) + shed_after_commit == committed, (
                len(hq_receiver.ids),
                shed_after_commit,
                committed,
            )
            print(
                f"shed {final_shed}; rejected at the door {finished['rejected']}; "
                f"disk_full values seen in health {flags_seen}; "
                f"{len(hq_receiver.loss_reports)} loss reports; {n_tx} transactions arrived"
            )
    finally:
        rc = gw.terminate()
    assert rc == 0


def _reported(hq: HqReceiver) -> dict[str, int]:
    """``kind:reason`` -> count, summed over the outbox_loss events HQ received (once per id)."""
    out: dict[str, int] = {}
    seen: set[str] = set()
    for report in list(hq.loss_reports):
        if report["id"] in seen:
            continue
        seen.add(report["id"])
        for line in report["data"]["shed"]:
            key = f"{line['kind']}:{line['reason']}"
            out[key] = out.get(key, 0) + line["count"]
    return out


def test_store_broker_restart_brings_status_and_health_back_within_5s(
    tmp_path: Path, store_broker: MosquittoBroker
) -> None:
    """After the store broker restarts empty, retained status and health are back within 5 s."""
    cfg = _write_config(tmp_path, "gw", store_port=store_broker.port)
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    try:
        with TopicRecorder(store_broker.port, [topics.STORE_STATUS]) as rec:
            assert rec.wait_for(topics.STORE_STATUS, lambda d: d["state"] == "online") is not None
        # Kill the broker and remove its persistence: whatever is retained
        # after the restart can only have been published again by the gateway.
        store_broker.stop(kill=True)
        (store_broker.workdir / "mosquitto.db").unlink(missing_ok=True)
        restarted_wall = time.time()
        started = time.monotonic()
        store_broker.start()
        with TopicRecorder(store_broker.port, [topics.STORE_STATUS, topics.STORE_HEALTH]) as rec:
            status = rec.wait_for(
                topics.STORE_STATUS,
                lambda d: d["state"] == "online" and d["ts"] >= restarted_wall,
                timeout_s=10,
            )
            health = rec.wait_for(
                topics.STORE_HEALTH, lambda d: d["ts"] >= restarted_wall, timeout_s=10
            )
        assert status is not None and health is not None
        status_s, health_s = status.at - started, health.at - started
        print(f"status back after {status_s:.2f}s, health after {health_s:.2f}s")
        assert status_s < 5.0
        assert health_s < 5.0
        assert gw.running
    finally:
        rc = gw.terminate()
    assert rc == 0


def test_sigterm_exits_0_within_5s_and_publishes_offline_itself(
    tmp_path: Path,
    store_broker: MosquittoBroker,
    hq_broker: MosquittoBroker,
    hq_receiver: HqReceiver,
) -> None:
    """SIGTERM exits 0 within 5 s after the gateway itself set offline (shutdown) on both sides."""
    cfg = _write_config(
        tmp_path,
        "gw",
        store_port=store_broker.port,
        hq_port=hq_broker.port,
        simulation={"events_per_s": 500},
    )
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    assert gw.wait_log("gateway_ready") is not None
    deadline = time.monotonic() + 10
    while not any(s["state"] == "online" for s in hq_receiver.statuses):
        assert time.monotonic() < deadline, "no online status at HQ"
        time.sleep(0.05)
    time.sleep(1.0)  # events flowing, rows in flight
    started = time.monotonic()
    rc = gw.terminate(timeout_s=10)
    took = time.monotonic() - started
    print(f"SIGTERM to exit: {took:.2f}s")
    assert rc == 0
    assert took < 5.0
    with TopicRecorder(store_broker.port, [topics.STORE_STATUS]) as rec:
        got = rec.wait_for(topics.STORE_STATUS)
    assert got is not None and got.retained
    # The will says "connection lost" with ts 0: this is the gateway's own message.
    assert got.doc["state"] == "offline" and got.doc["reason"] == "shutdown", got.doc
    assert got.doc["ts"] > 0
    deadline = time.monotonic() + 5
    while hq_receiver.statuses[-1]["state"] != "offline" and time.monotonic() < deadline:
        time.sleep(0.05)
    last = hq_receiver.statuses[-1]
    assert last["state"] == "offline" and last["reason"] == "shutdown", hq_receiver.statuses
    assert last["ts"] > 0
