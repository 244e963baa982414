"""The durable outbox: every upstream event is committed here before it counts as taken.

Producers ``await put(event)``; the call returns the event's id
(``{store}:{seq}``) only after the row is fsynced (``synchronous=FULL``).
Puts that arrive while a commit is running are gathered into the next one
(group commit), so the fsync is paid once per batch, not once per event.

Rows leave the table in two ways only:

* delivered: the HQ link reports a non-failure PUBACK for the row's message id;
* shed by policy: the table is over ``outbox.max_mb`` or a row is older than
  ``outbox.max_age_h``, or the disk is full. The lowest class goes first
  (``Priority.LOW``, then NORMAL, then HIGH); ``CRITICAL`` rows (consent,
  transactions, loss reports) are never shed. Every shed row is counted in
  ``outbox_loss`` in the same transaction that deletes it, and those counts go
  upstream as ``outbox_loss`` events (themselves CRITICAL).

When SQLite reports SQLITE_FULL, the writer deletes the ballast file,
checkpoints, sheds the lowest classes in batches with a checkpoint after each,
and retries. CRITICAL events that still do not fit wait in memory (their
producers stay blocked, so nothing acknowledged is lost) and are retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.clock import Clock
from gateway.config import OutboxSection
from gateway.errors import OutboxRejected, StorageError
from gateway.events import Priority, UpEvent
from gateway.log import get_logger
from gateway.storage.store import SqliteWriter, checkpoint, is_full_error

# Rows deleted per transaction while recovering from a full disk: small enough
# that the delete fits in the WAL space the ballast gave back.
SHED_BATCH = 1000
# Shed down to this share of max_mb once over it, so shedding is not paid on every put.
SHED_TARGET = 0.95
# After a full disk, disk_full clears only once this share of the size cap is
# free again (or, without a cap, this much disk), so the health signal lasts
# while space is really short instead of for one commit.
HEADROOM_SHARE = 0.10
HEADROOM_MIN_BYTES = 16 * 1024 * 1024
# How often expired rows are swept (seconds).
AGE_SWEEP_S = 30.0
# A CRITICAL event that did not fit is retried this often while the disk is full.
FULL_RETRY_S = 1.0
SHEDDABLE = (Priority.LOW, Priority.NORMAL, Priority.HIGH)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    kind: str
    payload: bytes
    priority: int


@dataclass
class _Ledger:
    """State owned by the writer thread (only touched inside writer jobs)."""

    next_seq: int = 1
    count: dict[int, int] = field(default_factory=lambda: {p: 0 for p in Priority})
    bytes: dict[int, int] = field(default_factory=lambda: {p: 0 for p in Priority})
    oldest_at: float | None = None
    # Loss not yet written to outbox_loss (the disk was full): (kind, reason, prio) -> [n, bytes]
    unwritten_loss: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)


@dataclass
class _Pending:
    event: UpEvent
    future: asyncio.Future[str]


class Outbox:
    """The ledger of events bound for HQ."""

    def __init__(
        self, writer: SqliteWriter, store_id: str, cfg: OutboxSection, clock: Clock
    ) -> None:
        self.writer = writer
        self.store_id = store_id
        self.cfg = cfg
        self.clock = clock
        self.max_bytes = int(cfg.max_mb * 1024 * 1024)
        self.new_rows = asyncio.Event()
        self._ledger = _Ledger()
        self._pending: list[_Pending] = []
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self._log = get_logger("outbox")
        # Figures for health (read on the loop; written from job results).
        self.committed_total = 0
        self.delivered_total = 0
        self.shed_total: dict[str, int] = {}
        self.disk_full = False
        self.disk_full_events = 0
        self.last_commit_ms = 0.0
        self.commits = 0
        self._last_loss_report = 0.0
        self._last_age_sweep = 0.0
        # Acks a full disk kept us from deleting (set by a writer job, read after it).
        self._acked_retry: list[int] = []
        # Writer-side: a full disk was hit and real headroom has not come back yet.
        self._was_full = False

    # -- start --------------------------------------------------------------------

    async def open(self) -> None:
        """Load the sequence counter and the table's figures."""
        await self.writer.run(self._load_job)
        self.shed_total = await self.writer.run(_shed_totals)

    def _load_job(self, conn: sqlite3.Connection) -> None:
        led = self._ledger
        row = conn.execute("SELECT value FROM meta WHERE key='outbox_next_seq'").fetchone()
        max_seq = conn.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
        led.next_seq = max(int(row[0]) if row else 1, max_seq + 1)
        for prio, n, size in conn.execute(
            "SELECT priority, count(*), coalesce(sum(size), 0) FROM outbox GROUP BY priority"
        ):
            led.count[prio] = n
            led.bytes[prio] = size
        led.oldest_at = conn.execute("SELECT min(created_at) FROM outbox").fetchone()[0]

    # -- producers ----------------------------------------------------------------

    async def put(self, event: UpEvent) -> str:
        """Commit ``event``; its id once it is on disk. Raises OutboxRejected if shed."""
        return await self.enqueue(event)

    def enqueue(self, event: UpEvent) -> asyncio.Future[str]:
        """Hand ``event`` over without waiting; the future resolves once it is committed.

        For producers that keep many events in flight (no task per event needed).
        """
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(event, fut))
        self._wake.set()
        return fut

    async def erase_subjects(self, subjects: Collection[str]) -> int:
        """Erase every event identifying one of ``subjects`` that HQ has not acknowledged.

        Pending events are dropped (their producers get OutboxRejected); committed
        rows are deleted with ``secure_delete`` on. The writer runs jobs in order,
        so a commit already handed over runs before this and is erased too.
        Returns how many events were erased.
        """
        wanted = set(subjects)
        if not wanted:
            return 0
        dropped = 0
        keep: list[_Pending] = []
        for p in self._pending:
            if p.event.subject in wanted:
                dropped += 1
                if not p.future.done():
                    p.future.set_exception(OutboxRejected("erased: the shopper opted out"))
            else:
                keep.append(p)
        self._pending = keep
        names = sorted(wanted)

        def job(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            conn.execute("BEGIN IMMEDIATE")
            gone = conn.execute(
                "DELETE FROM outbox WHERE subject IN (SELECT value FROM json_each(?)) "
                "RETURNING priority, size",
                (json.dumps(names),),
            ).fetchall()
            conn.execute("COMMIT")
            return [(int(p), int(n)) for p, n in gone]

        gone = await self.writer.run(job)
        self._forget(gone)
        if self.depth() == 0:
            self._ledger.oldest_at = None
        return dropped + len(gone)

    # -- consumers (the HQ link) --------------------------------------------------

    async def fetch(self, after_seq: int, limit: int) -> list[OutboxRow]:
        """Up to ``limit`` rows with ``seq > after_seq``, oldest first."""
        return await self.writer.run(lambda conn: _fetch(conn, after_seq, limit))

    async def fetch_seqs(self, seqs: list[int]) -> list[OutboxRow]:
        """The rows among ``seqs`` that are still in the outbox."""
        return await self.writer.run(lambda conn: _fetch_seqs(conn, seqs))

    def acked(self, seq: int) -> None:
        """HQ acknowledged ``seq``: delete it in the next commit."""
        self._acked.append(seq)
        self._wake.set()

    # -- figures ------------------------------------------------------------------

    def depth(self) -> int:
        return sum(self._ledger.count.values())

    def stats(self) -> dict[str, Any]:
        led = self._ledger
        now = self.clock.wall()
        return {
            "depth": self.depth(),
            "bytes": sum(led.bytes.values()),
            "max_bytes": self.max_bytes,
            "depth_by_class": {Priority(p).name.lower(): n for p, n in led.count.items()},
            "oldest_age_s": round(now - led.oldest_at, 1) if led.oldest_at else 0.0,
            "committed_total": self.committed_total,
            "delivered_total": self.delivered_total,
            "shed_total": dict(self.shed_total),
            "next_seq": led.next_seq,
            "disk_full": self.disk_full,
            "disk_full_events": self.disk_full_events,
            "ballast_present": self.writer.ballast_path.exists(),
            "last_commit_ms": round(self.last_commit_ms, 2),
            "pending": len(self._pending),
        }

    # -- the commit loop (a task of the composition root) -------------------------

    async def run(self) -> None:
        """Group-commit puts and acks; sweep expired rows; report loss upstream."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                # cancellation that races with the wake-up, and shutdown hangs.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                self._wake.clear()
                await self._commit_once()
                now = loop.time()
                if now - self._last_age_sweep >= AGE_SWEEP_S:
                    self._last_age_sweep = now
                    await self._sweep_expired()
                if now - self._last_loss_report >= self.cfg.loss_report_interval_s:
                    self._last_loss_report = now
                    await self._report_loss()
                if self._pending or self._acked:
                    self._wake.set()
        finally:
            # Shutdown: commit what producers already handed over, off the loop.
            with contextlib.suppress(StorageError):
                await asyncio.shield(self._commit_once())

    async def flush(self) -> None:
        """Commit everything pending now (used at shutdown and by tests)."""
        while self._pending or self._acked:
            await self._commit_once()

    async def _commit_once(self) -> None:
        batch = self._pending[: self.cfg.commit_batch]
        del self._pending[: len(batch)]
        acked, self._acked = self._acked, []
        if not batch and not acked:
            return
        events = [p.event for p in batch]
        started = time.perf_counter()
        try:
            result = await self.writer.run(lambda conn: self._commit_job(conn, events, acked))
        except StorageError as exc:
            # Not a full disk (that is handled inside the job): give the error to
            # the producers; acks are kept for the next try.
            self._acked[:0] = acked
            self._log.error("outbox_commit_failed", error=str(exc), events=len(batch))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        self.last_commit_ms = (time.perf_counter() - started) * 1000
        self.commits += 1
        ids, rejected, delivered, shed, full = result
        if self._acked_retry:
            self._acked[:0] = self._acked_retry
            self._acked_retry = []
        self.delivered_total += delivered
        for key, n in shed.items():
            self.shed_total[key] = self.shed_total.get(key, 0) + n
        was_full = self.disk_full
        self.disk_full = full
        if full and not was_full:
            self.disk_full_events += 1
            self._log.error(
                "disk_full",
                path=str(self.writer.path),
                action="shedding lowest classes; critical events held in memory",
            )
        elif was_full and not full:
            self._log.warning("disk_space_recovered", path=str(self.writer.path))
        retry: list[_Pending] = []
        for p, ident in zip(batch, ids, strict=True):
            if p.future.done():
                continue
            if ident is not None:
                p.future.set_result(ident)
            elif p.event.priority == Priority.CRITICAL:
                retry.append(p)
            else:
                p.future.set_exception(OutboxRejected(rejected))
        n_ok = sum(1 for i in ids if i is not None)
        self.committed_total += n_ok
        if n_ok:
            self.new_rows.set()
        if retry:
            # The disk is full even after shedding everything sheddable: hold
            # CRITICAL events (their producers stay blocked) and try again soon.
            await asyncio.sleep(FULL_RETRY_S)
            self._pending[:0] = retry

    # -- writer-thread jobs -------------------------------------------------------

    def _commit_job(
        self, conn: sqlite3.Connection, events: list[UpEvent], acked: list[int]
    ) -> tuple[list[str | None], str, int, dict[str, int], bool]:
        """Insert ``events`` and delete ``acked`` in one transaction.

        Returns (ids or None per event, rejection reason, delivered, shed counts, full).
        """
        shed: dict[str, int] = {}
        try:
            ids, delivered = self._insert_and_delete(conn, events, acked, shed)
        except sqlite3.Error as exc:
            if not is_full_error(exc):
                raise
            return self._commit_when_full(conn, events, acked, shed)
        if self.writer.ballast_bytes and not self.writer.ballast_path.exists():
            self.writer.ensure_ballast()
        # A commit that fits is not yet recovery: the flag stays up until there
        # is real room again, so health shows it for as long as it matters.
        full = self._was_full and not self._has_headroom(conn)
        self._was_full = full
        return ids, "", delivered, shed, full

    def _has_headroom(self, conn: sqlite3.Connection) -> bool:
        """Room to spare under the size cap and on the disk (checked only after a full disk)."""
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        cap = conn.execute("PRAGMA max_page_count").fetchone()[0]
        used = conn.execute("PRAGMA page_count").fetchone()[0]
        free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if self.writer.max_size_mb > 0 and (cap - used + free_pages) < cap * HEADROOM_SHARE:
            return False
        try:
            st = os.statvfs(self.writer.path.parent)
        except OSError:
            return True
        disk_free = st.f_bavail * st.f_frsize
        return disk_free + free_pages * page_size >= max(
            2 * self.writer.ballast_bytes, HEADROOM_MIN_BYTES
        )

    def _insert_and_delete(
        self,
        conn: sqlite3.Connection,
        events: list[UpEvent],
        acked: list[int],
        shed: dict[str, int],
    ) -> tuple[list[str | None], int]:
        led = self._ledger
        rows: list[tuple[int, str, int, float, int, bytes, str | None]] = []
        ids: list[str | None] = []
        seq = led.next_seq
        now = self.clock.wall()
        for ev in events:
            ident = f"{self.store_id}:{seq}"
            payload = json.dumps(
                {
                    "v": 1,
                    "id": ident,
                    "store": self.store_id,
                    "kind": ev.kind,
                    "ts": ev.ts,
                    "data": ev.data,
                },
                separators=(",", ":"),
                ensure_ascii=False,
            ).encode()
            rows.append((seq, ev.kind, int(ev.priority), now, len(payload), payload, ev.subject))
            ids.append(ident)
            seq += 1
        conn.execute("BEGIN IMMEDIATE")
        gone = self._delete_acked(conn, acked)
        if rows:
            conn.executemany(
                "INSERT INTO outbox (seq, kind, priority, created_at, size, payload, subject) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('outbox_next_seq', ?)",
                (str(seq),),
            )
        self._write_unwritten_loss(conn)
        added = {p: [0, 0] for p in Priority}
        for r in rows:
            added[r[2]][0] += 1
            added[r[2]][1] += r[4]
        over = sum(led.bytes.values()) + sum(a[1] for a in added.values()) - self.max_bytes
        shed_bytes: dict[int, int] = {}
        shed_counts: dict[int, int] = {}
        if over > 0:
            target = over + int(self.max_bytes * (1 - SHED_TARGET))
            self._shed(conn, target, "over_budget", shed, shed_counts, shed_bytes)
        conn.execute("COMMIT")
        # Committed: only now does the in-memory ledger move.
        led.next_seq = seq
        self._forget(gone)
        for p, (n, size) in added.items():
            led.count[p] += n
            led.bytes[p] += size
        for p in shed_counts:
            led.count[p] -= shed_counts[p]
            led.bytes[p] -= shed_bytes[p]
        if rows and led.oldest_at is None:
            led.oldest_at = now
        if sum(led.count.values()) == 0:
            led.oldest_at = None
        return ids, len(gone)

    @staticmethod
    def _delete_acked(conn: sqlite3.Connection, acked: list[int]) -> list[tuple[int, int]]:
        """Delete delivered rows; their (priority, size), applied to the ledger after COMMIT."""
        gone: list[tuple[int, int]] = []
        for seq in acked:
            row = conn.execute(
                "DELETE FROM outbox WHERE seq = ? RETURNING priority, size", (seq,)
            ).fetchone()
            if row is not None:
                gone.append((row[0], row[1]))
        return gone

    def _forget(self, gone: list[tuple[int, int]]) -> None:
        led = self._ledger
        for prio, size in gone:
            led.count[prio] -= 1
            led.bytes[prio] -= size

    def _shed(
        self,
        conn: sqlite3.Connection,
        target_bytes: int,
        reason: str,
        shed: dict[str, int],
        shed_counts: dict[int, int],
        shed_bytes: dict[int, int],
        *,
        commit_each: bool = False,
    ) -> int:
        """Delete the oldest rows of the lowest classes until ``target_bytes`` are freed."""
        freed = 0
        for prio in SHEDDABLE:
            while freed < target_bytes:
                victims = conn.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE priority = ? "
                    "ORDER BY seq LIMIT ?) RETURNING kind, size",
                    (int(prio), SHED_BATCH),
                ).fetchall()
                if not victims:
                    break
                per_kind: dict[str, list[int]] = {}
                for kind, size in victims:
                    freed += size
                    acc = per_kind.setdefault(kind, [0, 0])
                    acc[0] += 1
                    acc[1] += size
                    shed_counts[prio] = shed_counts.get(prio, 0) + 1
                    shed_bytes[prio] = shed_bytes.get(prio, 0) + size
                for kind, (n, size) in per_kind.items():
                    _record_loss(conn, kind, reason, int(prio), n, size, self.clock.wall())
                    key = f"{kind}:{reason}"
                    shed[key] = shed.get(key, 0) + n
                if commit_each:
                    conn.execute("COMMIT")
                    checkpoint(conn)
                    conn.execute("BEGIN IMMEDIATE")
            if freed >= target_bytes:
                break
        return freed

    def _write_unwritten_loss(self, conn: sqlite3.Connection) -> None:
        led = self._ledger
        for (kind, reason, prio), (n, size) in list(led.unwritten_loss.items()):
            _record_loss(conn, kind, reason, prio, n, size, self.clock.wall())
        led.unwritten_loss.clear()

    def _commit_when_full(
        self,
        conn: sqlite3.Connection,
        events: list[UpEvent],
        acked: list[int],
        shed: dict[str, int],
    ) -> tuple[list[str | None], str, int, dict[str, int], bool]:
        """SQLITE_FULL: free space, shed by class, then store what fits."""
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        self._reload_counts(conn)
        self.writer.release_ballast()
        checkpoint(conn)
        need = sum(256 + len(json.dumps(e.data)) for e in events) + 64 * 1024
        # Deleting needs WAL space too; commit after each batch and checkpoint.
        shed_counts: dict[int, int] = {}
        shed_bytes: dict[int, int] = {}
        with contextlib.suppress(sqlite3.Error):
            conn.execute("BEGIN IMMEDIATE")
            self._shed(conn, need, "disk_full", shed, shed_counts, shed_bytes, commit_each=True)
            conn.execute("COMMIT")
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        checkpoint(conn)
        self._reload_counts(conn)
        try:
            ids, delivered = self._insert_and_delete(conn, events, acked, shed)
            self._was_full = True
            return ids, "", delivered, shed, True
        except sqlite3.Error as exc:
            if not is_full_error(exc):
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._reload_counts(conn)
        # Still full. Keep CRITICAL events (returned as None, retried by the
        # loop); drop the rest now and count them, and try acks alone.
        ids_out: list[str | None] = [None] * len(events)
        for e in events:
            if e.priority != Priority.CRITICAL:
                size = len(json.dumps(e.data)) + 128
                acc = self._ledger.unwritten_loss.setdefault(
                    (e.kind, "disk_full", int(e.priority)), [0, 0]
                )
                acc[0] += 1
                acc[1] += size
                key = f"{e.kind}:disk_full"
                shed[key] = shed.get(key, 0) + 1
        delivered = 0
        if acked:
            try:
                conn.execute("BEGIN IMMEDIATE")
                gone = self._delete_acked(conn, acked)
                conn.execute("COMMIT")
                self._forget(gone)
                delivered = len(gone)
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._acked_retry = acked
        self._was_full = True
        return ids_out, "disk full: event class shed", delivered, shed, True

    def _reload_counts(self, conn: sqlite3.Connection) -> None:
        led = self._ledger
        led.count = {p: 0 for p in Priority}
        led.bytes = {p: 0 for p in Priority}
        for prio, n, size in conn.execute(
            "SELECT priority, count(*), coalesce(sum(size), 0) FROM outbox GROUP BY priority"
        ):
            led.count[prio] = n
            led.bytes[prio] = size
        led.oldest_at = conn.execute("SELECT min(created_at) FROM outbox").fetchone()[0]

    async def _sweep_expired(self) -> None:
        cutoff = self.clock.wall() - self.cfg.max_age_h * 3600

        def job(conn: sqlite3.Connection) -> dict[str, int]:
            shed: dict[str, int] = {}
            led = self._ledger
            if led.oldest_at is None or led.oldest_at >= cutoff:
                return shed
            try:
                conn.execute("BEGIN IMMEDIATE")
                for prio in SHEDDABLE:
                    victims = conn.execute(
                        "DELETE FROM outbox WHERE priority = ? AND created_at < ? "
                        "RETURNING kind, size",
                        (int(prio), cutoff),
                    ).fetchall()
                    per_kind: dict[str, list[int]] = {}
                    for kind, size in victims:
                        acc = per_kind.setdefault(kind, [0, 0])
                        acc[0] += 1
                        acc[1] += size
                    for kind, (n, size) in per_kind.items():
                        _record_loss(conn, kind, "expired", int(prio), n, size, self.clock.wall())
                        shed[f"{kind}:expired"] = shed.get(f"{kind}:expired", 0) + n
                conn.execute("COMMIT")
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._reload_counts(conn)
            return shed

        try:
            shed = await self.writer.run(job)
        except StorageError as exc:
            self._log.warning("outbox_sweep_failed", error=str(exc))
            return
        for key, n in shed.items():
            self.shed_total[key] = self.shed_total.get(key, 0) + n
        if shed:
            self._log.warning("outbox_expired_shed", shed=shed, max_age_h=self.cfg.max_age_h)

    async def _report_loss(self) -> None:
        """Send one ``outbox_loss`` event with what was shed since the last report."""

        def job(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [
                {
                    "kind": k,
                    "reason": r,
                    "class": Priority(p).name.lower(),
                    "count": sc - rc,
                    "bytes": sb - rb,
                    "count_total": sc,
                }
                for k, r, p, sc, rc, sb, rb in conn.execute(
                    "SELECT kind, reason, priority, shed_count, reported_count, shed_bytes, "
                    "reported_bytes FROM outbox_loss WHERE shed_count > reported_count"
                )
            ]

        try:
            lines = await self.writer.run(job)
        except StorageError:
            return
        if not lines:
            return
        event = UpEvent.of("outbox_loss", {"shed": lines}, self.clock.wall())
        # The report is committed like any event; once committed, mark the
        # counts reported. A crash in between re-sends the same figures, which
        # HQ can tell apart by count_total. This runs inside the commit loop, so
        # it must not await put() (nothing else would commit it: deadlock);
        # it goes first in the queue and this loop commits it itself.
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        report = _Pending(event, fut)
        self._pending.insert(0, report)
        while not fut.done():
            if any(p is report for p in self._pending):
                await self._commit_once()
            else:
                # Another committer (a test's loop, flush()) holds it: wait for that.
                await asyncio.wait({fut}, timeout=FULL_RETRY_S)
        if fut.exception() is not None:
            return

        def mark(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            for line in lines:
                conn.execute(
                    "UPDATE outbox_loss SET reported_count = reported_count + ?, "
                    "reported_bytes = reported_bytes + ? WHERE kind = ? AND reason = ?",
                    (line["count"], line["bytes"], line["kind"], line["reason"]),
                )
            conn.execute("COMMIT")

        with contextlib.suppress(StorageError):
            await self.writer.run(mark)
        self._log.warning("outbox_loss_reported", shed=lines)


def _record_loss(
    conn: sqlite3.Connection, kind: str, reason: str, prio: int, n: int, size: int, now: float
) -> None:
    conn.execute(
        "INSERT INTO outbox_loss (kind, reason, priority, shed_count, shed_bytes, first_at, "
        "last_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, reason) DO UPDATE SET "
        "shed_count = shed_count + excluded.shed_count, "
        "shed_bytes = shed_bytes + excluded.shed_bytes, last_at = excluded.last_at",
        (kind, reason, prio, n, size, now, now),
    )


def _shed_totals(conn: sqlite3.Connection) -> dict[str, int]:
    return {
        f"{k}:{r}": n
        for k, r, n in conn.execute("SELECT kind, reason, shed_count FROM outbox_loss")
    }


def _fetch(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[OutboxRow]:
    return [
        OutboxRow(*r)
        for r in conn.execute(
            "SELECT seq, kind, payload, priority FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
    ]


def _fetch_seqs(conn: sqlite3.Connection, seqs: Iterable[int]) -> list[OutboxRow]:
    seqs = list(seqs)
    if not seqs:
        return []
    marks = ",".join("?" * len(seqs))
    return [
        OutboxRow(*r)
        for r in conn.execute(
            f"SELECT seq, kind, payload, priority FROM outbox WHERE seq IN ({marks}) "  # noqa: S608 - placeholders only
            "ORDER BY seq",
            seqs,
        )
    ]


class UpstreamSender:
    """Hands a stage's events to the outbox without waiting, and counts how they fared.

    ``committed`` counts events the outbox committed, ``rejected`` those it
    refused (shedding by class, a full disk); anything else is a bug and is
    logged as ``{what}_not_committed`` with its type only (an event may name a
    shopper).
    """

    def __init__(self, outbox: Any, what: str, log: Any | None = None) -> None:
        self.outbox = outbox
        self.what = what
        self._log = log or get_logger("outbox")
        self.committed = 0
        self.rejected = 0

    def send(self, event: UpEvent) -> None:
        self.outbox.enqueue(event).add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[str]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self.committed += 1
        elif isinstance(exc, OutboxRejected):
            self.rejected += 1
            self._log.warning(f"{self.what}_rejected", error=str(exc))
        else:
            self._log.error(f"{self.what}_not_committed", error=type(exc).__name__)
