"""The durable outbox on a real SQLite file: ids, group commit, acks, shedding, disk full, loss.

Loss accounting is checked against the file: what health says was shed equals
``outbox_loss``, which equals the committed ids no longer in the table; events
refused at the door are counted in the refusal file and folded into
``outbox_loss`` once there is room, across reopens (a new Outbox on the same
files knows only what is on disk, as after a SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.clock import ManualClock
from gateway.config import OutboxSection
from gateway.errors import OutboxRejected
from gateway.events import Priority, UpEvent
from gateway.publish.outbox import Outbox
from gateway.storage.refusals import refusals_path
from gateway.storage.store import SqliteWriter
from tests.full_disk import fill, resize, small_filesystem

STORE = "s1"
# One kind per shedding class (see gateway.events.KIND_PRIORITY).
KIND_OF = {
    Priority.LOW: "telemetry",
    Priority.NORMAL: "presence",
    Priority.HIGH: "decision",
    Priority.CRITICAL: "transaction",
}


def make_event(kind: str = "telemetry", pad: int = 0, ts: float = 1_795_000_000.0) -> UpEvent:
    """An event of ``kind`` (its registered class) with ``pad`` bytes of filler in its data."""
    return UpEvent.of(kind, {"n": 1, "pad": "x" * pad}, ts)


@contextlib.asynccontextmanager
async def open_outbox(
    db: Path,
    *,
    clock: ManualClock | None = None,
    max_size_mb: float = 0,
    ballast_mb: float = 0,
    **outbox: Any,
) -> AsyncIterator[Outbox]:
    """A started writer on ``db`` and an opened Outbox whose commit loop runs as a task."""
    writer = SqliteWriter(db, max_size_mb=max_size_mb, ballast_mb=ballast_mb)
    writer.start()
    ob = Outbox(writer, STORE, OutboxSection(**outbox), clock or ManualClock())
    await ob.open()
    task = asyncio.create_task(ob.run(), name="outbox")
    try:
        yield ob
        assert not task.done(), "the commit loop died"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        writer.close()


def rows_in_file(db: Path) -> list[tuple[int, str, int]]:
    """(seq, kind, priority) of every outbox row, read through a separate connection."""
    conn = sqlite3.connect(str(db))
    try:
        return list(conn.execute("SELECT seq, kind, priority FROM outbox ORDER BY seq"))
    finally:
        conn.close()


def shed_in_file(db: Path) -> dict[str, int]:
    """``kind:reason`` -> shed_count of every outbox_loss row (health's shed_total keys)."""
    return {f"{k}:{r}": n for (k, r), (n, _) in loss_in_file(db).items()}


def loss_in_file(db: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(kind, reason) -> (shed_count, reported_count) from the outbox_loss table."""
    conn = sqlite3.connect(str(db))
    try:
        return {
            (k, r): (n, rep)
            for k, r, n, rep in conn.execute(
                "SELECT kind, reason, shed_count, reported_count FROM outbox_loss"
            )
        }
    finally:
        conn.close()


def payloads_of_kind(db: Path, kind: str) -> list[dict[str, Any]]:
    """The decoded payloads of the outbox rows of ``kind``."""
    conn = sqlite3.connect(str(db))
    try:
        return [
            json.loads(p)
            for (p,) in conn.execute(
                "SELECT payload FROM outbox WHERE kind = ? ORDER BY seq", (kind,)
            )
        ]
    finally:
        conn.close()


def seq_of(ident: str) -> int:
    store, seq = ident.split(":")
    assert store == STORE
    return int(seq)


def count_by_class(db: Path) -> dict[Priority, int]:
    counts = dict.fromkeys(Priority, 0)
    for _, _, prio in rows_in_file(db):
        counts[Priority(prio)] += 1
    return counts


# -- ids and commits -------------------------------------------------------------


def test_put_returns_ids_in_order_and_the_row_is_in_the_file(tmp_path: Path) -> None:
    """put() returns `{store}:{seq}` in order, and once it returns the row is in the file."""
    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db) as ob:
            ids = []
            for _ in range(3):
                ident = await ob.put(make_event())
                ids.append(ident)
                assert seq_of(ident) in [seq for seq, _, _ in rows_in_file(db)]
            assert ids == ["s1:1", "s1:2", "s1:3"]
            assert [p["id"] for p in payloads_of_kind(db, "telemetry")] == ids

    asyncio.run(scenario())


def test_ids_are_not_reused_after_the_table_drains(tmp_path: Path) -> None:
    """Acked rows are deleted and later puts continue the sequence, also across a reopen."""
    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db) as ob:
            ids = [await ob.put(make_event()) for _ in range(3)]
            for ident in ids:
                ob.acked(seq_of(ident))
            await ob.flush()
            assert rows_in_file(db) == []
            assert await ob.put(make_event()) == "s1:4"
            ob.acked(4)
            await ob.flush()
            assert rows_in_file(db) == []
        async with open_outbox(db) as ob:
            assert await ob.put(make_event()) == "s1:5"

    asyncio.run(scenario())


def test_concurrent_puts_are_group_committed(tmp_path: Path) -> None:
    """Many concurrent puts share few commits (one fsync per batch, not per event)."""
    db = tmp_path / "gw.db"
    n = 500

    async def scenario() -> None:
        async with open_outbox(db) as ob:
            ids = await asyncio.gather(*(ob.put(make_event()) for _ in range(n)))
            assert sorted(seq_of(i) for i in ids) == list(range(1, n + 1))
            assert ob.commits <= n // 50, ob.commits
            assert len(rows_in_file(db)) == n

    asyncio.run(scenario())


def test_acked_deletes_exactly_that_row(tmp_path: Path) -> None:
    """acked(seq) deletes that row and no other, and counts it as delivered."""
    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db) as ob:
            for _ in range(3):
                await ob.put(make_event())
            ob.acked(2)
            await ob.flush()
            assert [seq for seq, _, _ in rows_in_file(db)] == [1, 3]
            assert ob.stats()["delivered_total"] == 1
            assert ob.depth() == 2

    asyncio.run(scenario())


def test_ack_of_an_unknown_seq_changes_nothing(tmp_path: Path) -> None:
    """An ack for a seq that is not in the table (a duplicate PUBACK) deletes nothing."""
    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db) as ob:
            await ob.put(make_event())
            ob.acked(1)
            ob.acked(1)
            ob.acked(99)
            await ob.flush()
            await ob.put(make_event())
            assert [seq for seq, _, _ in rows_in_file(db)] == [2]
            assert ob.stats()["delivered_total"] == 1
            assert ob.depth() == 1

    asyncio.run(scenario())


# -- byte budget -----------------------------------------------------------------


def test_byte_budget_sheds_low_then_normal_then_high_never_critical(tmp_path: Path) -> None:
    """Over outbox.max_mb, LOW goes before NORMAL before HIGH, and CRITICAL is never shed."""
    db = tmp_path / "gw.db"
    per_class = 10
    # About 300-byte rows: 3 sheddable classes x 10 rows fit in the 0.012 MB budget
    # (12,582 bytes); CRITICAL rows are then added one by one until nothing else is left.
    pad = 200

    async def scenario() -> None:
        async with open_outbox(db, max_mb=0.012) as ob:
            for prio in (Priority.HIGH, Priority.NORMAL, Priority.LOW):
                for _ in range(per_class):
                    await ob.put(make_event(KIND_OF[prio], pad=pad))
            assert count_by_class(db)[Priority.LOW] == per_class
            critical = 0
            while sum(
                count_by_class(db)[p] for p in (Priority.LOW, Priority.NORMAL, Priority.HIGH)
            ):
                await ob.put(make_event(KIND_OF[Priority.CRITICAL], pad=pad))
                critical += 1
                counts = count_by_class(db)
                if counts[Priority.NORMAL] < per_class:
                    assert counts[Priority.LOW] == 0, counts
                if counts[Priority.HIGH] < per_class:
                    assert counts[Priority.NORMAL] == 0, counts
                assert counts[Priority.CRITICAL] == critical, counts
                assert critical < 200, "shedding never emptied the sheddable classes"
            # Beyond the budget with CRITICAL alone: they are still all kept.
            for _ in range(20):
                await ob.put(make_event(KIND_OF[Priority.CRITICAL], pad=pad))
            assert count_by_class(db)[Priority.CRITICAL] == critical + 20
            stats = ob.stats()
        expected = {
            ("telemetry", "over_budget"): per_class,
            ("presence", "over_budget"): per_class,
            ("decision", "over_budget"): per_class,
        }
        assert {k: n for k, (n, _) in loss_in_file(db).items()} == expected
        assert stats["shed_total"] == {f"{k}:{r}": n for (k, r), n in expected.items()}

    asyncio.run(scenario())


def test_ledger_matches_the_file_after_shedding(tmp_path: Path) -> None:
    """After budget shedding, stats() depth and bytes equal what the file holds."""
    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db, max_mb=0.01) as ob:
            for i in range(120):
                await ob.put(make_event(KIND_OF[Priority(i % 4)], pad=150))
            stats = ob.stats()
        conn = sqlite3.connect(str(db))
        try:
            n, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM outbox").fetchone()
        finally:
            conn.close()
        assert (stats["depth"], stats["bytes"]) == (n, size)
        assert size <= stats["max_bytes"] or count_by_class(db)[Priority.LOW] == 0

    asyncio.run(scenario())


# -- age -------------------------------------------------------------------------


def test_expiry_sheds_only_old_sheddable_rows(tmp_path: Path) -> None:
    """Rows older than max_age_h are shed unless CRITICAL; younger rows stay.

    The sweep runs from run() every 30 s of loop time; this test calls the private
    _sweep_expired() directly so that it does not wait for loop time to pass.
    """
    db = tmp_path / "gw.db"
    clock = ManualClock()

    async def scenario() -> None:
        async with open_outbox(db, clock=clock, max_age_h=1) as ob:
            seqs = {prio: seq_of(await ob.put(make_event(KIND_OF[prio]))) for prio in Priority}
            clock.advance(3600 + 1)
            fresh = seq_of(await ob.put(make_event("telemetry")))
            await ob._sweep_expired()
            rows = rows_in_file(db)
            assert [(seq, kind) for seq, kind, _ in rows] == [
                (seqs[Priority.CRITICAL], "transaction"),
                (fresh, "telemetry"),
            ]
            assert ob.stats()["shed_total"] == {
                "telemetry:expired": 1,
                "presence:expired": 1,
                "decision:expired": 1,
            }
            assert ob.depth() == 2
        assert {k: n for k, (n, _) in loss_in_file(db).items()} == {
            ("telemetry", "expired"): 1,
            ("presence", "expired"): 1,
            ("decision", "expired"): 1,
        }

    asyncio.run(scenario())


def test_expiry_counts_one_kind_shed_from_two_classes(tmp_path: Path) -> None:
    """A kind expired from two classes counts both rows in stats(), as outbox_loss does.

    Calls the private _sweep_expired() (run() does it every 30 s of loop time).
    """
    db = tmp_path / "gw.db"
    clock = ManualClock()

    async def scenario() -> None:
        async with open_outbox(db, clock=clock, max_age_h=1) as ob:
            for prio in (Priority.LOW, Priority.NORMAL):
                await ob.put(UpEvent(kind="sensor", data={}, ts=clock.wall(), priority=prio))
            clock.advance(3600 + 1)
            await ob._sweep_expired()
            assert rows_in_file(db) == []
            assert loss_in_file(db)[("sensor", "expired")][0] == 2
            assert ob.stats()["shed_total"] == {"sensor:expired": 2}

    asyncio.run(scenario())


def test_expiry_keeps_rows_younger_than_max_age(tmp_path: Path) -> None:
    """A sweep before max_age_h has passed sheds nothing."""
    db = tmp_path / "gw.db"
    clock = ManualClock()

    async def scenario() -> None:
        async with open_outbox(db, clock=clock, max_age_h=1) as ob:
            await ob.put(make_event("telemetry"))
            clock.advance(3600 - 1)
            await ob._sweep_expired()  # private: the 30 s loop-time sweep, called directly
            assert len(rows_in_file(db)) == 1
            assert ob.stats()["shed_total"] == {}

    asyncio.run(scenario())


# -- disk full -------------------------------------------------------------------


def test_disk_full_sheds_old_low_rows_and_recovers_after_acks(tmp_path: Path) -> None:
    """At the size cap, LOW puts keep being taken or rejected while older LOW rows are shed;
    disk_full is reported, and a commit after acks free space clears it."""
    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db, max_size_mb=0.25) as ob:
            taken = rejected = 0
            for _ in range(1500):
                try:
                    await ob.put(make_event("telemetry", pad=1000))
                    taken += 1
                except OutboxRejected:
                    rejected += 1
                if ob.stats()["disk_full"]:
                    break
            stats = ob.stats()
            assert stats["disk_full"] is True, f"never full after {taken} puts"
            assert stats["disk_full_events"] == 1
            assert stats["shed_total"].get("telemetry:disk_full", 0) > 0
            seqs = [seq for seq, _, _ in rows_in_file(db)]
            assert 1 not in seqs, "the oldest LOW row should have been shed"
            # Keep producing at the cap: never an exception other than OutboxRejected.
            for _ in range(100):
                with contextlib.suppress(OutboxRejected):
                    await ob.put(make_event("telemetry", pad=1000))
            for seq in [seq for seq, _, _ in rows_in_file(db)]:
                ob.acked(seq)
            await ob.flush()
            await ob.put(make_event("telemetry", pad=10))
            assert ob.stats()["disk_full"] is False
            assert ob.depth() == len(rows_in_file(db))
        assert loss_in_file(db)[("telemetry", "disk_full")][0] > 0

    asyncio.run(scenario())


def test_disk_full_sheds_low_before_high(tmp_path: Path) -> None:
    """At the size cap, LOW rows are shed to make room while older HIGH rows are kept."""
    db = tmp_path / "gw.db"
    high = 20

    async def scenario() -> None:
        async with open_outbox(db, max_size_mb=0.25) as ob:
            for _ in range(high):
                await ob.put(make_event(KIND_OF[Priority.HIGH], pad=1000))
            for _ in range(1500):
                with contextlib.suppress(OutboxRejected):
                    await ob.put(make_event(KIND_OF[Priority.LOW], pad=1000))
                if ob.stats()["disk_full"]:
                    break
            assert ob.stats()["disk_full"] is True
            counts = count_by_class(db)
            assert counts[Priority.HIGH] == high, counts

    asyncio.run(scenario())


def test_disk_full_never_sheds_critical_rows(tmp_path: Path) -> None:
    """Filling the capped database with CRITICAL and LOW rows sheds LOW only."""
    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db, max_size_mb=0.25) as ob:
            critical = 0
            for i in range(300):
                if i % 10 == 0:
                    await asyncio.wait_for(ob.put(make_event("transaction", pad=1000)), timeout=10)
                    critical += 1
                else:
                    with contextlib.suppress(OutboxRejected):
                        await ob.put(make_event("telemetry", pad=1000))
            assert ob.stats()["disk_full_events"] >= 1
            assert count_by_class(db)[Priority.CRITICAL] == critical

    asyncio.run(scenario())


# -- loss reports ----------------------------------------------------------------


def test_loss_report_is_one_event_with_counts_and_is_sent_once(tmp_path: Path) -> None:
    """_report_loss() commits one outbox_loss event with per kind/reason counts, then none."""
    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db, max_mb=0.005) as ob:
            for _ in range(30):
                await ob.put(make_event("telemetry", pad=300))
            for _ in range(5):
                await ob.put(make_event("presence", pad=1000))
            shed = dict(ob.stats()["shed_total"])
            assert shed, "the scenario must shed something"
            await ob._report_loss()
            reports = payloads_of_kind(db, "outbox_loss")
            assert len(reports) == 1
            lines = reports[0]["data"]["shed"]
            assert {f"{line['kind']}:{line['reason']}": line["count"] for line in lines} == shed
            assert all(line["count_total"] == line["count"] for line in lines)
            await ob._report_loss()
            assert len(payloads_of_kind(db, "outbox_loss")) == 1
        assert all(n == rep for n, rep in loss_in_file(db).values())

    asyncio.run(scenario())


def test_loss_report_after_more_shedding_reports_only_the_new_loss(tmp_path: Path) -> None:
    """A second report carries only what was shed since the first, with the running total."""
    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db, max_mb=0.005) as ob:
            for _ in range(30):
                await ob.put(make_event("telemetry", pad=300))
            first_total = ob.stats()["shed_total"]["telemetry:over_budget"]
            await ob._report_loss()
            for _ in range(30):
                await ob.put(make_event("telemetry", pad=300))
            total = ob.stats()["shed_total"]["telemetry:over_budget"]
            await ob._report_loss()
            reports = payloads_of_kind(db, "outbox_loss")
            assert len(reports) == 2
            (line,) = reports[1]["data"]["shed"]
            assert (line["count"], line["count_total"]) == (total - first_total, total)

    asyncio.run(scenario())


def test_no_loss_means_no_report(tmp_path: Path) -> None:
    """Without any shedding, _report_loss() commits nothing."""
    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db) as ob:
            await ob.put(make_event())
            await ob._report_loss()
            assert payloads_of_kind(db, "outbox_loss") == []

    asyncio.run(scenario())


def test_shed_totals_survive_a_reopen(tmp_path: Path) -> None:
    """stats()['shed_total'] after a restart equals the counts recorded in the file."""
    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db, max_mb=0.005) as ob:
            for _ in range(30):
                await ob.put(make_event("telemetry", pad=300))
            before = ob.stats()["shed_total"]
        async with open_outbox(db, max_mb=0.005) as ob:
            assert ob.stats()["shed_total"] == before

    asyncio.run(scenario())


# -- loss accounting that adds up ------------------------------------------------


def committed_but_gone(ids: list[str], db: Path) -> int:
    """How many of the committed ``ids`` are no longer in the table (nothing was acked)."""
    left = {seq for seq, _, _ in rows_in_file(db)}
    return sum(1 for ident in ids if seq_of(ident) not in left)


def is_held(ob: Outbox, fut: asyncio.Future[str]) -> bool:
    """True once the outbox holds ``fut``'s CRITICAL event for want of room (private state)."""
    return any(p.future is fut for p in ob._held)


async def fill_with_critical(ob: Outbox, pad: int = 1000) -> asyncio.Future[str]:
    """Commit CRITICAL rows until one no longer fits; that one, held by the outbox."""
    for _ in range(5000):
        fut = ob.enqueue(make_event("transaction", pad=pad))
        async with asyncio.timeout(30):
            # Polling: being held is no event the outbox signals.
            while not fut.done() and not is_held(ob, fut):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        if not fut.done():
            return fut
        fut.result()
    raise AssertionError("the capped database never filled up")


def test_health_shed_counts_equal_the_table_through_a_full_disk(tmp_path: Path) -> None:
    """Through a full disk with budget shedding too, stats' shed_total equals outbox_loss
    row for row, and the committed ids missing from the table are exactly the shed ones."""
    db = tmp_path / "gw.db"
    # One transaction in eight: 100 CRITICAL rows take under a third of the 0.25 MB cap,
    # so LOW and NORMAL rows keep hitting both the cap and the 0.1 MB budget.
    kinds = ["telemetry"] * 4 + ["presence"] * 3 + ["transaction"]

    async def scenario() -> None:
        async with open_outbox(db, max_size_mb=0.25, max_mb=0.1) as ob:
            ids: list[str] = []
            refused = 0
            for _ in range(100):
                futs = [ob.enqueue(make_event(kind, pad=600)) for kind in kinds]
                for fut in futs:
                    try:
                        ids.append(await asyncio.wait_for(fut, timeout=10))
                    except OutboxRejected:
                        refused += 1
            stats = ob.stats()
            assert stats["disk_full_events"] >= 1
            assert stats["shed_total"] == shed_in_file(db)
            shed_after_commit = {
                k: n for k, n in stats["shed_total"].items() if not k.endswith(":refused")
            }
            assert {k.split(":")[1] for k in shed_after_commit} >= {"disk_full", "over_budget"}
            assert not any(k.startswith("transaction:") for k in stats["shed_total"])
            assert sum(shed_after_commit.values()) == committed_but_gone(ids, db)
            refused_counted = sum(
                n for k, n in stats["shed_total"].items() if k.endswith(":refused")
            )
            assert refused_counted == refused
        async with open_outbox(db, max_size_mb=0.25, max_mb=0.1) as ob:
            assert ob.stats()["shed_total"] == shed_in_file(db) == stats["shed_total"]

    asyncio.run(scenario())


def test_refused_events_are_counted_durably_and_folded_once_there_is_room(
    tmp_path: Path,
) -> None:
    """Events refused on a database full of CRITICAL rows are counted in the refusal file
    (not in outbox_loss, which cannot take them then), still counted by a new Outbox on
    the same files, folded into outbox_loss (reason refused) exactly once, and reported."""
    db = tmp_path / "gw.db"
    refused = 0

    async def scenario() -> None:
        nonlocal refused
        async with open_outbox(db, max_size_mb=0.25) as ob:
            await fill_with_critical(ob)
            for _ in range(30):
                try:
                    # As large as the CRITICAL event that did not fit: nor does this.
                    await asyncio.wait_for(ob.put(make_event("telemetry", pad=1000)), timeout=10)
                except OutboxRejected:
                    refused += 1
            assert refused == 30, "with only CRITICAL rows nothing else fits"
            stats = ob.stats()
            assert stats["shed_total"] == {"telemetry:refused": refused}
            assert stats["refused_unfolded"] == refused
            assert stats["refusal_file_ok"] is True
            assert loss_in_file(db) == {}
        # As after a SIGKILL: a new Outbox knows only the files. Opening folds the
        # count into outbox_loss (one small row fits where a 1 KB event did not).
        async with open_outbox(db, max_size_mb=0.25) as ob:
            assert ob.stats()["shed_total"] == {"telemetry:refused": refused}
            assert ob.stats()["refused_unfolded"] == 0
            assert loss_in_file(db) == {("telemetry", "refused"): (refused, 0)}
        # Folded once only, and reported once there is room for the report.
        async with open_outbox(db) as ob:
            assert loss_in_file(db) == {("telemetry", "refused"): (refused, 0)}
            assert ob.stats()["shed_total"] == {"telemetry:refused": refused}
            await ob._report_loss()
            (report,) = payloads_of_kind(db, "outbox_loss")
            assert report["data"]["shed"] == [
                {
                    "kind": "telemetry",
                    "reason": "refused",
                    "class": "low",
                    "count": refused,
                    "bytes": report["data"]["shed"][0]["bytes"],
                    "count_total": refused,
                }
            ]
            assert report["data"]["shed"][0]["bytes"] > refused * 1000
        async with open_outbox(db) as ob:
            assert ob.stats()["shed_total"] == {"telemetry:refused": refused}
        assert loss_in_file(db) == {("telemetry", "refused"): (refused, refused)}

    asyncio.run(scenario())


def test_a_held_critical_event_holds_back_no_other_event(tmp_path: Path) -> None:
    """While a CRITICAL event waits for room, later events are still refused at once, and
    the CRITICAL one is committed as soon as the database may grow again."""
    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db, max_size_mb=0.25) as ob:
            held = await fill_with_critical(ob)
            assert ob.stats()["pending"] == 1
            for _ in range(5):
                with contextlib.suppress(OutboxRejected):
                    await asyncio.wait_for(ob.put(make_event("telemetry", pad=1000)), timeout=5)
                    raise AssertionError("a LOW event fitted where a CRITICAL one did not")
            assert not held.done()
            await ob.writer.run(lambda conn: conn.execute("PRAGMA max_page_count=1000000"))
            ident = await asyncio.wait_for(held, timeout=10)
            assert seq_of(ident) in [seq for seq, _, _ in rows_in_file(db)]
            assert ob.stats()["pending"] == 0
            # The next commit that fits folds the refusals.
            await ob.put(make_event("telemetry"))
            assert loss_in_file(db) == {("telemetry", "refused"): (5, 0)}

    asyncio.run(scenario())


def test_a_report_the_disk_cannot_take_is_sent_once_when_it_can(tmp_path: Path) -> None:
    """A loss report held by a full disk is not built twice; once in, its lines are
    marked reported in the same commit, so the next report has nothing to say."""
    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db, max_size_mb=0.3) as ob:
            for _ in range(200):
                with contextlib.suppress(OutboxRejected):
                    await ob.put(make_event("telemetry", pad=1000))
            # Down to the smallest CRITICAL event: a loss report no longer fits either.
            for pad in (1000, 100, 0):
                await fill_with_critical(ob, pad=pad)
            assert loss_in_file(db), "the scenario must shed something"
            await ob._report_loss()
            await ob._report_loss()
            assert payloads_of_kind(db, "outbox_loss") == []
            await ob.writer.run(lambda conn: conn.execute("PRAGMA max_page_count=1000000"))
            for _ in range(100):
                await asyncio.sleep(0.1)
                if payloads_of_kind(db, "outbox_loss"):
                    break
            (report,) = payloads_of_kind(db, "outbox_loss")
            assert {
                f"{ln['kind']}:{ln['reason']}": ln["count"] for ln in report["data"]["shed"]
            } == {k: n for k, n in shed_in_file(db).items()}
            assert all(n == rep for n, rep in loss_in_file(db).values())
            await ob._report_loss()
            assert len(payloads_of_kind(db, "outbox_loss")) == 1

    asyncio.run(scenario())


def test_on_a_really_full_file_system_every_event_is_committed_or_counted(
    tmp_path: Path,
) -> None:
    """On a tmpfs with no byte free (ENOSPC, not a page cap) each LOW event is committed
    or refused and counted; the counts survive a reopen and reach outbox_loss once the
    file system has room again, and no committed CRITICAL row is lost."""
    refused = 0
    ids: list[str] = []

    with small_filesystem(tmp_path / "fs", 2048) as fs:
        db = fs / "gw.db"

        async def fill_up() -> None:
            nonlocal refused
            # Ballast on, as in a store: it is given back when the disk fills.
            async with open_outbox(db, ballast_mb=0.25) as ob:
                for _ in range(100):
                    ids.append(await ob.put(make_event("transaction", pad=1000)))
                fill(fs)
                # In commits of 50: the first fit in what the ballast gave back, later
                # ones shed those, and the rest are refused.
                for _ in range(12):
                    futs = [ob.enqueue(make_event("telemetry", pad=1000)) for _ in range(50)]
                    for fut in futs:
                        try:
                            ids.append(await asyncio.wait_for(fut, timeout=10))
                        except OutboxRejected:
                            refused += 1
                assert len(ids) - 100 + refused == 600
                stats = ob.stats()
                assert stats["disk_full"] is True
                assert stats["ballast_present"] is False
                assert refused > 0, "the file system never refused an event"
                assert stats["shed_total"].get("telemetry:refused") == refused
                assert stats["refusal_file_ok"] is True

        async def reopen_full() -> None:
            async with open_outbox(db) as ob:
                assert ob.stats()["shed_total"].get("telemetry:refused") == refused

        async def reopen_with_room() -> None:
            async with open_outbox(db) as ob:
                await ob.put(make_event("telemetry"))
                assert ob.stats()["refused_unfolded"] == 0
                assert ob.stats()["shed_total"] == shed_in_file(db)

        asyncio.run(fill_up())
        asyncio.run(reopen_full())
        (fs / "filler").unlink()
        resize(fs, 4096)
        asyncio.run(reopen_with_room())
        assert refusals_path(db).stat().st_size > 0
        loss = shed_in_file(db)
        assert loss["telemetry:refused"] == refused
        shed_after_commit = sum(n for k, n in loss.items() if not k.endswith(":refused"))
        assert shed_after_commit == committed_but_gone(ids, db)
        assert count_by_class(db)[Priority.CRITICAL] == 100


def test_an_erasure_cut_short_by_a_crash_finishes_when_the_outbox_opens(tmp_path: Path) -> None:
    """Rows of a shopper whose profile and consent are gone (a crash between the erasure's
    two transactions) are deleted at the next open; a known shopper's rows and events
    naming nobody stay."""
    from gateway.shoppers import Consent
    from gateway.storage import profiles as profile_rows

    db = tmp_path / "gw.db"

    async def scenario() -> None:
        async with open_outbox(db) as ob:
            await ob.put(UpEvent.of("presence", {"n": 1}, 1.0, subject="s-erased"))
            await ob.put(UpEvent.of("presence", {"n": 2}, 1.0, subject="s-kept"))
            await ob.put(make_event("telemetry"))
            keep = Consent("s-kept", frozenset({"presence", "analytics"}), 2e9)
            await ob.writer.run(lambda conn: profile_rows.upsert_consent(conn, [keep], 1.0))
        assert len(rows_in_file(db)) == 3
        async with open_outbox(db) as ob:
            assert ob.depth() == 2

    asyncio.run(scenario())
    conn = sqlite3.connect(str(db))
    try:
        subjects = [s for (s,) in conn.execute("SELECT subject FROM outbox ORDER BY seq")]
    finally:
        conn.close()
    assert subjects == ["s-kept", None]
    for path in (db, db.with_name(db.name + "-wal")):
        assert not path.exists() or b"s-erased" not in path.read_bytes()
