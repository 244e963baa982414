"""Issue 11 acceptance: loss accounting that adds up through minutes of full disk and SIGKILLs.

The daemon runs as a real child process on a database capped with
``storage.max_size_mb`` (``PRAGMA max_page_count``) while HQ is down, so the
cap stays reached: first low and normal rows are shed to make room, then the
database holds only transactions (never shed) and later events are refused at
the door. It is SIGKILLed several times on the way. Then space comes back (the
cap is lifted) and HQ returns. Health, the ``outbox_loss`` table, the loss
reports HQ received and the ids missing at HQ must then tell the same story.
"""

from __future__ import annotations

import itertools
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.publish import topics
from gateway.storage.store import integrity_check
from gateway.testing.daemon import GatewayProcess, committed_count, config_text, gateway_sections
from gateway.testing.hq import HqReceiver
from gateway.testing.mosquitto import MosquittoBroker
from gateway.testing.subscriber import Received, TopicRecorder

STORE = "s1"
HEALTH = topics.STORE_HEALTH
# One kind per class that may be lost, and transactions, which never may.
KINDS = ["telemetry", "telemetry", "presence", "transaction"]
# 400 events/s of about 200 bytes fill the 0.5 MB cap within seconds; the
# transactions among them (100/s) leave no room for anything else after about
# half a minute, so both kinds of loss happen, each across several SIGKILLs.
EVENTS_PER_S = 400
MAX_SIZE_MB = 0.5
RUNS = 6
# Seconds each run produces before its SIGKILL: about two minutes of full disk in all.
RUN_S = (14.0, 24.0)


def _config(tmp_path: Path, name: str, **overrides: Any) -> Path:
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(
        config_text(gateway_sections(store_id=STORE, db_path=tmp_path / "gw.db", **overrides))
    )
    return cfg


def _loss_table(db: Path) -> dict[str, tuple[int, int]]:
    """``kind:reason`` -> (shed_count, reported_count) of every outbox_loss row."""
    conn = sqlite3.connect(str(db), timeout=10)
    try:
        return {
            f"{k}:{r}": (int(n), int(rep))
            for k, r, n, rep in conn.execute(
                "SELECT kind, reason, shed_count, reported_count FROM outbox_loss"
            )
        }
    finally:
        conn.close()


def _reports(hq: HqReceiver) -> tuple[dict[str, int], dict[str, int]]:
    """From the distinct outbox_loss events HQ got: per ``kind:reason`` the sum of
    ``count`` and the highest ``count_total``."""
    summed: dict[str, int] = {}
    highest: dict[str, int] = {}
    seen: set[str] = set()
    for report in list(hq.loss_reports):
        if report["id"] in seen:
            continue
        seen.add(report["id"])
        for line in report["data"]["shed"]:
            key = f"{line['kind']}:{line['reason']}"
            summed[key] = summed.get(key, 0) + line["count"]
            highest[key] = max(highest.get(key, 0), line["count_total"])
    return summed, highest


def _during(rec: TopicRecorder, started: float, ended: float) -> list[Received]:
    """Health documents a run published (not the retained one of the run before)."""
    return [m for m in rec.on(HEALTH) if started < m.at < ended and not m.retained]


@pytest.mark.slow
def test_full_disk_for_minutes_with_sigkills_loses_no_count(
    tmp_path: Path,
    store_broker: MosquittoBroker,
    hq_broker: MosquittoBroker,
    hq_receiver: HqReceiver,
) -> None:
    """Through minutes of full disk and 6 SIGKILLs, then space and HQ back: health's loss
    counts equal outbox_loss per kind and reason, the ids missing at HQ are exactly the
    ones counted as shed after commit, the loss reports HQ got add up to the table, and
    no count ever went backwards across a SIGKILL."""
    full_cfg = _config(
        tmp_path,
        "full",
        store_port=store_broker.port,
        hq_port=hq_broker.port,
        storage={"max_size_mb": MAX_SIZE_MB},
        outbox={"max_mb": 64, "loss_report_interval_s": 1},
        simulation={"events_per_s": EVENTS_PER_S, "kinds": KINDS},
    )
    # Space back (no cap), HQ back, no more traffic: what is left drains.
    drain_cfg = _config(
        tmp_path,
        "drain",
        store_port=store_broker.port,
        hq_port=hq_broker.port,
        outbox={"loss_report_interval_s": 1},
    )
    db = tmp_path / "gw.db"
    rng = random.Random(11)
    hq_broker.stop()
    runs: list[list[Received]] = []
    with TopicRecorder(store_broker.port, [HEALTH]) as rec:
        for i in range(RUNS):
            started = time.monotonic()
            gw = GatewayProcess(full_cfg, tmp_path / f"gw-{i}.log").start()
            assert gw.wait_log("gateway_ready", timeout_s=30) is not None, f"run {i} did not start"
            time.sleep(rng.uniform(*RUN_S))
            assert gw.running, f"run {i} died on its own"
            assert gw.kill() == -signal.SIGKILL
            runs.append(_during(rec, started, time.monotonic()))
            assert runs[-1], f"run {i} published no health"

        gw = GatewayProcess(drain_cfg, tmp_path / "gw-drain.log").start()
        try:
            assert gw.wait_log("gateway_ready", timeout_s=30) is not None
            hq_back = time.monotonic()
            hq_broker.start()

            def settled(d: dict[str, Any]) -> bool:
                ob = d["outbox"]
                return (
                    ob["depth"] == 0
                    and ob["pending"] == 0
                    and ob["refused_unfolded"] == 0
                    and _reports(hq_receiver)[0] == ob["shed_total"]
                )

            final = rec.wait_for(HEALTH, settled, timeout_s=90, since=hq_back)
            assert final is not None, (rec.latest(HEALTH), _reports(hq_receiver))
        finally:
            rc = gw.terminate()
        assert rc == 0

    health = final.doc["outbox"]["shed_total"]
    table = _loss_table(db)
    committed = committed_count(db)
    received = hq_receiver.ids
    summed, highest = _reports(hq_receiver)
    shed_after_commit = {k: n for k, (n, _) in table.items() if not k.endswith(":refused")}
    refused = {k: n for k, (n, _) in table.items() if k.endswith(":refused")}

    # Both kinds of loss happened, for both sheddable kinds, and never to a transaction.
    for kind in ("telemetry", "presence"):
        assert shed_after_commit.get(f"{kind}:disk_full", 0) > 0, table
        assert refused.get(f"{kind}:refused", 0) > 0, table
    assert not any(k.startswith("transaction:") for k in table), table
    # Health equals the table, per kind and reason, and everything was reported.
    assert health == {k: n for k, (n, _) in table.items()}
    assert all(n == rep for n, rep in table.values()), table
    assert summed == highest == health
    # The ids missing at HQ are exactly those counted as shed after commit...
    assert received <= {f"{STORE}:{i}" for i in range(1, committed + 1)}
    assert committed - len(received) == sum(shed_after_commit.values())
    # ...so what HQ got plus what it was told it lost is what was committed + refused.
    assert len(received) + sum(summed.values()) == committed + sum(refused.values())
    # A SIGKILL never took a count back: each run starts where the one before stopped.
    for before, after in itertools.pairwise(runs):
        last, first = before[-1].doc["outbox"]["shed_total"], after[0].doc["outbox"]["shed_total"]
        assert all(first.get(k, 0) >= n for k, n in last.items()), (last, first)
    # Every refusal a producer heard of before a kill is in the table.
    told = sum(run[-1].doc["simulation"]["rejected"] for run in runs)
    assert 0 < told <= sum(refused.values()), (told, refused)
    assert integrity_check(db) == "ok"
    print(
        f"{RUNS} kills; committed {committed}, received {len(received)}, "
        f"shed after commit {shed_after_commit}, refused {refused} "
        f"(producers told of {told} before the kills)"
    )
