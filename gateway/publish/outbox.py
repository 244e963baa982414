"""The durable outbox: every upstream event is committed here before it counts as taken.

Producers ``await put(event)``; the call returns the event's id
(``{store}:{seq}``) only after the row is fsynced (``synchronous=FULL``).
Puts that arrive while a commit is running are gathered into the next one
(group commit), so the fsync is paid once per batch, not once per event. This
module is the policy; every SQL statement is in ``gateway.storage.outbox``.

Rows leave the table in two ways only:

* delivered: the HQ link reports a non-failure PUBACK for the row's message id;
* shed by policy: the table is over ``outbox.max_mb`` or a row is older than
  ``outbox.max_age_h``, or the disk is full. The lowest class goes first
  (``Priority.LOW``, then NORMAL, then HIGH); ``CRITICAL`` rows (consent,
  transactions, loss reports) are never shed.

When SQLite reports SQLITE_FULL, the writer deletes the ballast file,
checkpoints, sheds the lowest classes in batches with a checkpoint after each,
and retries. CRITICAL events that still do not fit are held in memory (their
producers stay blocked, so nothing acknowledged is lost) and retried every
``FULL_RETRY_S``; other events that still do not fit are *refused at the door*:
they never get an id and their producer gets ``OutboxRejected``.

Loss accounting, which adds up (docs/runbook.md, "Loss accounting"):

* Shed after commit (reasons ``over_budget``, ``expired``, ``disk_full``): each
  deleted row is counted in ``outbox_loss`` in the same transaction that
  deletes it. Health's ``shed_total`` is read back from that table after the
  transaction commits, never added up beforehand, so a rolled-back delete is
  never counted and health equals the table, also after a restart.
* Refused at the door (reason ``refused``): the database cannot take a count
  at that moment, so the count goes first to the refusal counter file
  (``gateway.storage.refusals``, pwrite + fdatasync into blocks allocated in
  advance) before the producers are told, and is folded into ``outbox_loss``
  by the next commit that fits. A SIGKILL in between loses nothing.
* Loss reports (``outbox_loss`` events, CRITICAL) carry what ``outbox_loss``
  holds beyond what was reported; the rows are marked reported in the very
  transaction that commits the report, so a crash can neither send a count
  twice nor drop it. So, for HQ: ids committed = ids received + the shed counts
  reported, and the refused counts are the events that never had an id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gateway.clock import Clock
from gateway.config import OutboxSection
from gateway.errors import OutboxRejected, StorageError
from gateway.events import Priority, UpEvent
from gateway.log import get_logger
from gateway.publish import payloads
from gateway.storage import outbox as outbox_rows
from gateway.storage.outbox import REFUSED, LossLine, NewRow, OutboxRow
from gateway.storage.refusals import RefusalCounter, refusals_path
from gateway.storage.store import (
    SqliteWriter,
    checkpoint,
    is_full_error,
    rollback,
    transaction,
)

__all__ = ["REFUSED", "Outbox", "OutboxRow"]

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
# CRITICAL events that did not fit are retried this often while the disk is full:
# often enough that they go in soon after space returns, rarely enough that a
# long full disk does not spend the writer on inserts bound to fail.
FULL_RETRY_S = 1.0
SHEDDABLE = (Priority.LOW, Priority.NORMAL, Priority.HIGH)
REFUSED_MESSAGE = "disk full: event refused (counted in outbox_loss as refused)"


@dataclass
class _Ledger:
    """State owned by the writer thread (only touched inside writer jobs)."""

    next_seq: int = 1
    count: dict[int, int] = field(default_factory=lambda: {p: 0 for p in Priority})
    bytes: dict[int, int] = field(default_factory=lambda: {p: 0 for p in Priority})
    oldest_at: float | None = None
    # outbox_loss as committed, (kind, reason) -> (count, bytes): read back from
    # the table after every commit that wrote to it, never added up in advance.
    loss: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)


@dataclass
class _Pending:
    event: UpEvent
    future: asyncio.Future[str]
    # A loss report carries the outbox_loss rows it reports: they are marked
    # reported in the transaction that commits it.
    reports: tuple[LossLine, ...] = ()


@dataclass(frozen=True)
class _LossFigures:
    """What health says about loss; built on the writer thread after a commit."""

    shed_total: dict[str, int]
    refused_unfolded: int
    refusal_file_ok: bool


class _CommitResult(NamedTuple):
    ids: list[str | None]
    delivered: int
    full: bool
    figures: _LossFigures | None
    # Acks a full disk kept us from deleting: they go back in the queue.
    acked_retry: list[int]


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
        self._refusals = RefusalCounter(refusals_path(writer.path))
        self._pending: list[_Pending] = []
        # CRITICAL events a full disk could not take, retried from _held_retry_at on.
        self._held: list[_Pending] = []
        self._held_retry_at = 0.0
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self._report: _Pending | None = None
        self._log = get_logger("outbox")
        # Figures for health (read on the loop; written from job results).
        self.committed_total = 0
        self.delivered_total = 0
        self.shed_total: dict[str, int] = {}
        self.refused_unfolded = 0
        self.refusal_file_ok = False
        self.disk_full = False
        self.disk_full_events = 0
        self.last_commit_ms = 0.0
        self.commits = 0
        self._last_loss_report = 0.0
        self._last_age_sweep = 0.0
        # Writer-side: a full disk was hit and real headroom has not come back yet.
        self._was_full = False

    # -- start --------------------------------------------------------------------

    async def open(self) -> None:
        """Load the sequence counter and the table's figures; fold refusals left by a crash."""
        self._apply(await self.writer.run(self._open_job))

    def _open_job(self, conn: sqlite3.Connection) -> _LossFigures:
        led = self._ledger
        led.next_seq = outbox_rows.next_seq(conn)
        # An erasure interrupted by a crash (the shopper's rows gone, the outbox's not yet)
        # finishes now, before anything is sent.
        orphans: list[tuple[int, int]] = []
        try:
            with transaction(conn):
                orphans = outbox_rows.delete_orphans(conn)
        except sqlite3.Error as exc:
            if not is_full_error(exc):
                raise
            self._log.error("outbox_orphans_not_erased", reason="disk full", retry="next start")
        if orphans:
            checkpoint(conn)  # the erased bytes leave the WAL too
            self._log.info("outbox_orphans_erased", rows=len(orphans))
        self._reload_counts(conn)
        led.loss = outbox_rows.loss_totals(conn)
        floor = {
            ln.kind: (ln.priority, ln.shed_count, ln.shed_bytes)
            for ln in outbox_rows.loss_lines(conn)
            if ln.reason == REFUSED
        }
        outcome = self._refusals.open(outbox_rows.database_id(conn), floor)
        if outcome != "read":
            self._log.info("refusal_counter_opened", path=str(self._refusals.path), outcome=outcome)
        if self._unfolded():
            try:
                with transaction(conn):
                    self._fold_refusals(conn)
                led.loss = outbox_rows.loss_totals(conn)
            except sqlite3.Error as exc:
                if not is_full_error(exc):
                    raise
                # Still full: the first commit that fits folds them.
        return self._figures()

    # -- producers ----------------------------------------------------------------

    async def put(self, event: UpEvent) -> str:
        """Commit ``event``; its id once it is on disk. Raises OutboxRejected if refused."""
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
        for queue in (self._pending, self._held):
            keep: list[_Pending] = []
            for p in queue:
                if p.event.subject in wanted:
                    dropped += 1
                    if not p.future.done():
                        p.future.set_exception(OutboxRejected("erased: the shopper opted out"))
                else:
                    keep.append(p)
            queue[:] = keep

        def job(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            with transaction(conn):
                return outbox_rows.delete_subjects(conn, wanted)

        gone = await self.writer.run(job)
        self._forget(gone)
        if self.depth() == 0:
            self._ledger.oldest_at = None
        return dropped + len(gone)

    # -- consumers (the HQ link) --------------------------------------------------

    async def fetch(self, after_seq: int, limit: int) -> list[OutboxRow]:
        """Up to ``limit`` rows with ``seq > after_seq``, oldest first."""
        return await self.writer.run(lambda conn: outbox_rows.fetch_after(conn, after_seq, limit))

    async def fetch_seqs(self, seqs: list[int]) -> list[OutboxRow]:
        """The rows among ``seqs`` that are still in the outbox."""
        return await self.writer.run(lambda conn: outbox_rows.fetch_seqs(conn, seqs))

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
            "refused_unfolded": self.refused_unfolded,
            "refusal_file_ok": self.refusal_file_ok,
            "next_seq": led.next_seq,
            "disk_full": self.disk_full,
            "disk_full_events": self.disk_full_events,
            "ballast_present": self.writer.ballast_path.exists(),
            "last_commit_ms": round(self.last_commit_ms, 2),
            "pending": len(self._pending) + len(self._held),
        }

    def _apply(self, figures: _LossFigures | None) -> None:
        if figures is not None:
            self.shed_total = figures.shed_total
            self.refused_unfolded = figures.refused_unfolded
            self.refusal_file_ok = figures.refusal_file_ok

    # -- the commit loop (a task of the composition root) -------------------------

    async def run(self) -> None:
        """Group-commit puts and acks; sweep expired rows; report loss upstream."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                # cancellation that races with the wake-up, and shutdown hangs.
                # The 1 s timeout is also what retries held CRITICAL events.
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
        """Commit everything pending now (used at shutdown and by tests).

        CRITICAL events a full disk holds are retried until they fit: at
        shutdown the caller bounds this with a timeout.
        """
        loop = asyncio.get_running_loop()
        while self._pending or self._acked or self._held:
            if not self._pending and not self._acked:
                await asyncio.sleep(max(0.0, self._held_retry_at - loop.time()))
            await self._commit_once()

    async def _commit_once(self) -> None:
        loop = asyncio.get_running_loop()
        held: list[_Pending] = []
        if self._held and loop.time() >= self._held_retry_at:
            held = self._held[: self.cfg.commit_batch]
            del self._held[: len(held)]
        fresh = self._pending[: self.cfg.commit_batch]
        del self._pending[: len(fresh)]
        # Held events are older than the fresh ones: they keep their place in line.
        batch = held + fresh
        acked, self._acked = self._acked, []
        if not batch and not acked:
            return
        started = time.perf_counter()
        try:
            result = await self.writer.run(lambda conn: self._commit_job(conn, batch, acked))
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
        if result.acked_retry:
            self._acked[:0] = result.acked_retry
        self.delivered_total += result.delivered
        self._apply(result.figures)
        was_full = self.disk_full
        self.disk_full = result.full
        if result.full and not was_full:
            self.disk_full_events += 1
            self._log.error(
                "disk_full",
                path=str(self.writer.path),
                action="shedding lowest classes; critical events held in memory",
            )
        elif was_full and not result.full:
            self._log.warning("disk_space_recovered", path=str(self.writer.path))
        retry: list[_Pending] = []
        for p, ident in zip(batch, result.ids, strict=True):
            if p.future.done():
                continue
            if ident is not None:
                p.future.set_result(ident)
            elif p.event.priority == Priority.CRITICAL:
                retry.append(p)
            else:
                p.future.set_exception(OutboxRejected(REFUSED_MESSAGE))
        n_ok = sum(1 for i in result.ids if i is not None)
        self.committed_total += n_ok
        if n_ok:
            self.new_rows.set()
        if retry:
            # The disk is full even after shedding everything sheddable: hold
            # CRITICAL events (their producers stay blocked) and try again soon,
            # while later events keep being committed or refused meanwhile.
            self._held[:0] = retry
            self._held_retry_at = loop.time() + FULL_RETRY_S

    # -- writer-thread jobs -------------------------------------------------------

    def _commit_job(
        self, conn: sqlite3.Connection, batch: list[_Pending], acked: list[int]
    ) -> _CommitResult:
        """Insert ``batch`` and delete ``acked`` in one transaction (or handle a full disk)."""
        rows, ids = self._rows_for(batch)
        try:
            delivered, wrote_loss = self._write(conn, batch, rows, acked)
        except sqlite3.Error as exc:
            if not is_full_error(exc):
                raise
            return self._commit_when_full(conn, batch, rows, ids, acked)
        if self.writer.ballast_bytes and not self.writer.ballast_path.exists():
            self.writer.ensure_ballast()
        # A commit that fits is not yet recovery: the flag stays up until there
        # is real room again, so health shows it for as long as it matters.
        full = self._was_full and not self._has_headroom(conn)
        self._was_full = full
        return _CommitResult(ids, delivered, full, self._figures() if wrote_loss else None, [])

    def _has_headroom(self, conn: sqlite3.Connection) -> bool:
        """Room to spare under the size cap and on the disk (checked only after a full disk)."""
        pages = outbox_rows.page_figures(conn)
        spare = pages.max_pages - pages.used_pages + pages.free_pages
        if self.writer.max_size_mb > 0 and spare < pages.max_pages * HEADROOM_SHARE:
            return False
        try:
            st = os.statvfs(self.writer.path.parent)
        except OSError:
            return True
        disk_free = st.f_bavail * st.f_frsize
        return disk_free + pages.free_pages * pages.page_size >= max(
            2 * self.writer.ballast_bytes, HEADROOM_MIN_BYTES
        )

    def _rows_for(self, batch: list[_Pending]) -> tuple[list[NewRow], list[str | None]]:
        """The rows ``batch`` becomes if it fits, numbered from the ledger's next seq."""
        seq = self._ledger.next_seq
        now = self.clock.wall()
        rows: list[NewRow] = []
        ids: list[str | None] = []
        for p in batch:
            ev = p.event
            ident = f"{self.store_id}:{seq}"
            payload = payloads.envelope(ident, self.store_id, ev.kind, ev.ts, ev.data)
            rows.append(
                NewRow(seq, ev.kind, int(ev.priority), now, len(payload), payload, ev.subject)
            )
            ids.append(ident)
            seq += 1
        return rows, ids

    def _write(
        self,
        conn: sqlite3.Connection,
        batch: list[_Pending],
        rows: list[NewRow],
        acked: list[int],
    ) -> tuple[int, bool]:
        """The group commit: (rows delivered, whether outbox_loss was written)."""
        led = self._ledger
        added: dict[int, list[int]] = {int(prio): [0, 0] for prio in Priority}
        for r in rows:
            added[r.priority][0] += 1
            added[r.priority][1] += r.size
        shed_classes: dict[int, list[int]] = {}
        with transaction(conn):
            gone = outbox_rows.delete_acked(conn, acked)
            if rows:
                outbox_rows.insert_rows(conn, rows, rows[-1].seq + 1)
            for pending in batch:
                if pending.reports:
                    outbox_rows.mark_reported(conn, pending.reports)
            wrote_loss = self._fold_refusals(conn)
            over = sum(led.bytes.values()) + sum(a[1] for a in added.values()) - self.max_bytes
            if over > 0:
                target = over + int(self.max_bytes * (1 - SHED_TARGET))
                shed_classes = self._shed_over_budget(conn, target)
                wrote_loss = wrote_loss or bool(shed_classes)
        # Committed: only now does the in-memory ledger move.
        if rows:
            led.next_seq = rows[-1].seq + 1
        self._forget(gone)
        for p, (n, size) in added.items():
            led.count[p] += n
            led.bytes[p] += size
        for p, (n, size) in shed_classes.items():
            led.count[p] -= n
            led.bytes[p] -= size
        if rows and led.oldest_at is None:
            led.oldest_at = rows[0].created_at
        if sum(led.count.values()) == 0:
            led.oldest_at = None
        if wrote_loss:
            led.loss = outbox_rows.loss_totals(conn)
        return len(gone), wrote_loss

    def _forget(self, gone: list[tuple[int, int]]) -> None:
        led = self._ledger
        for prio, size in gone:
            led.count[prio] -= 1
            led.bytes[prio] -= size

    def _count_loss(
        self, conn: sqlite3.Connection, victims: list[tuple[str, int]], reason: str, prio: int
    ) -> tuple[int, int]:
        """Record shed ``victims`` (kind, size) in outbox_loss; their (count, bytes)."""
        per_kind: dict[str, list[int]] = {}
        for kind, size in victims:
            acc = per_kind.setdefault(kind, [0, 0])
            acc[0] += 1
            acc[1] += size
        now = self.clock.wall()
        for kind, (n, size) in per_kind.items():
            outbox_rows.record_loss(conn, kind, reason, prio, n, size, now)
        return len(victims), sum(size for _, size in victims)

    def _shed_over_budget(
        self, conn: sqlite3.Connection, target_bytes: int
    ) -> dict[int, list[int]]:
        """Inside the open transaction: shed the oldest rows of the lowest classes.

        Returns priority -> [rows, bytes] shed, applied to the ledger after COMMIT.
        """
        freed = 0
        shed: dict[int, list[int]] = {}
        for prio in SHEDDABLE:
            while freed < target_bytes:
                victims = outbox_rows.shed_oldest(conn, int(prio), SHED_BATCH)
                if not victims:
                    break
                n, size = self._count_loss(conn, victims, "over_budget", int(prio))
                acc = shed.setdefault(int(prio), [0, 0])
                acc[0] += n
                acc[1] += size
                freed += size
            if freed >= target_bytes:
                break
        return shed

    def _shed_when_full(self, conn: sqlite3.Connection, target_bytes: int) -> None:
        """Shed the lowest classes in batches, each its own transaction plus a checkpoint.

        Deleting needs WAL space too: a small committed batch and a checkpoint
        give it back before the next. Stops at the first batch that does not fit.
        """
        freed = 0
        for prio in SHEDDABLE:
            while freed < target_bytes:
                try:
                    with transaction(conn):
                        victims = outbox_rows.shed_oldest(conn, int(prio), SHED_BATCH)
                        if victims:
                            freed += self._count_loss(conn, victims, "disk_full", int(prio))[1]
                except sqlite3.Error as exc:
                    self._log.warning("outbox_shed_failed", error=str(exc), reason="disk_full")
                    return
                if not victims:
                    break
                checkpoint(conn)
            if freed >= target_bytes:
                return

    def _unfolded(self) -> dict[str, tuple[int, int, int]]:
        """Refusals counted in the file but not yet in outbox_loss: kind -> (prio, n, bytes)."""
        out: dict[str, tuple[int, int, int]] = {}
        for kind, (prio, n, size) in self._refusals.totals.items():
            have_n, have_b = self._ledger.loss.get((kind, REFUSED), (0, 0))
            if n > have_n:
                out[kind] = (prio, n - have_n, size - have_b)
        return out

    def _fold_refusals(self, conn: sqlite3.Connection) -> bool:
        """Inside the open transaction: add to outbox_loss what the refusal file has beyond it."""
        todo = self._unfolded()
        now = self.clock.wall()
        for kind, (prio, n, size) in todo.items():
            outbox_rows.record_loss(conn, kind, REFUSED, prio, n, size, now)
        return bool(todo)

    def _figures(self) -> _LossFigures:
        """Health's view of loss: the table as committed, refusals as the file counts them."""
        shed = {
            f"{kind}:{reason}": n
            for (kind, reason), (n, _) in self._ledger.loss.items()
            if reason != REFUSED and n
        }
        for kind, (_, n, _) in self._refusals.totals.items():
            if n:
                shed[f"{kind}:{REFUSED}"] = n
        unfolded = sum(n for _, n, _ in self._unfolded().values())
        return _LossFigures(shed, unfolded, self._refusals.durable)

    def _commit_when_full(
        self,
        conn: sqlite3.Connection,
        batch: list[_Pending],
        rows: list[NewRow],
        ids: list[str | None],
        acked: list[int],
    ) -> _CommitResult:
        """SQLITE_FULL: free space, shed by class, then store what fits; refuse the rest."""
        rollback(conn)
        self._reload_counts(conn)
        self.writer.release_ballast()
        checkpoint(conn)
        need = sum(r.size + 256 for r in rows) + 64 * 1024
        self._shed_when_full(conn, need)
        checkpoint(conn)
        self._reload_counts(conn)
        self._was_full = True
        try:
            delivered, _ = self._write(conn, batch, rows, acked)
        except sqlite3.Error as exc:
            if not is_full_error(exc):
                raise
            self._reload_counts(conn)
        else:
            self._ledger.loss = outbox_rows.loss_totals(conn)
            return _CommitResult(ids, delivered, True, self._figures(), [])
        # Still full. CRITICAL events come back as None and are held; the rest
        # are refused, and counted in the refusal file before anyone is told.
        refused: dict[str, tuple[int, int, int]] = {}
        for p, row in zip(batch, rows, strict=True):
            if p.event.priority != Priority.CRITICAL:
                _, n, size = refused.get(row.kind, (row.priority, 0, 0))
                refused[row.kind] = (row.priority, n + 1, size + row.size)
        if refused:
            self._refusals.add(refused)
        delivered = 0
        acked_retry: list[int] = []
        if acked:
            try:
                with transaction(conn):
                    gone = outbox_rows.delete_acked(conn, acked)
            except sqlite3.Error:
                acked_retry = acked
            else:
                self._forget(gone)
                delivered = len(gone)
        self._ledger.loss = outbox_rows.loss_totals(conn)
        return _CommitResult([None] * len(batch), delivered, True, self._figures(), acked_retry)

    def _reload_counts(self, conn: sqlite3.Connection) -> None:
        led = self._ledger
        figures = outbox_rows.class_figures(conn)
        led.count = {p: figures.get(p, (0, 0))[0] for p in Priority}
        led.bytes = {p: figures.get(p, (0, 0))[1] for p in Priority}
        led.oldest_at = outbox_rows.oldest_created_at(conn)

    async def _sweep_expired(self) -> None:
        cutoff = self.clock.wall() - self.cfg.max_age_h * 3600

        def job(conn: sqlite3.Connection) -> _LossFigures | None:
            led = self._ledger
            if led.oldest_at is None or led.oldest_at >= cutoff:
                return None
            try:
                with transaction(conn):
                    for prio in SHEDDABLE:
                        victims = outbox_rows.shed_created_before(conn, int(prio), cutoff)
                        if victims:
                            self._count_loss(conn, victims, "expired", int(prio))
            finally:
                self._reload_counts(conn)
                led.loss = outbox_rows.loss_totals(conn)
            return self._figures()

        before = dict(self.shed_total)
        try:
            self._apply(await self.writer.run(job))
        except StorageError as exc:
            self._log.warning("outbox_sweep_failed", error=str(exc))
            return
        shed = {
            k: n - before.get(k, 0)
            for k, n in self.shed_total.items()
            if k.endswith(":expired") and n > before.get(k, 0)
        }
        if shed:
            self._log.warning("outbox_expired_shed", shed=shed, max_age_h=self.cfg.max_age_h)

    async def _report_loss(self) -> None:
        """Commit one ``outbox_loss`` event with what was lost since the last report.

        The event carries the rows it reports, and they are marked reported in
        the transaction that commits it: a crash before the commit sends the
        same figures later, a crash after it never sends them twice. This runs
        inside the commit loop, so it must not await put() (nothing else would
        commit it: deadlock); it goes first in the queue and this loop commits
        it itself. If the disk is too full for it, it is held like any CRITICAL
        event, and no second report is built until it is in.
        """
        if self._report is not None and not self._report.future.done():
            return
        try:
            lines = await self.writer.run(
                lambda conn: outbox_rows.loss_lines(conn, unreported_only=True)
            )
        except StorageError:
            return
        if not lines:
            return
        event = UpEvent.of("outbox_loss", payloads.outbox_loss(lines), self.clock.wall())
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        report = _Pending(event, fut, reports=tuple(lines))
        self._report = report
        self._pending.insert(0, report)
        while not fut.done():
            if any(p is report for p in self._pending):
                await self._commit_once()
            elif any(p is report for p in self._held):
                return  # the commit loop retries it, with its lines
            else:
                # Another committer (a test's loop, flush()) holds it: wait for that.
                await asyncio.wait({fut}, timeout=FULL_RETRY_S)
        if not fut.cancelled() and fut.exception() is None:
            self._log.warning("outbox_loss_reported", shed=event.data["shed"])
