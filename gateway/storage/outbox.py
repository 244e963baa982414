"""The outbox tables on disk: every SQL statement the outbox runs, as plain functions.

Each function takes the writer's connection and runs inside the caller's
transaction (``store.transaction``); none of them commits. What to insert, what
to shed and when is policy and lives in ``gateway.publish.outbox``; this module
only knows the tables of ``migrations.py``:

* ``outbox``: one row per committed event, ``seq`` assigned by the single
  writer from ``meta.outbox_next_seq`` and never reused;
* ``outbox_loss``: per ``(kind, reason)``, how many events were lost
  (``shed_count``, ``shed_bytes``) and how many of those HQ has been told about
  (``reported_count``, ``reported_bytes``). It is written in the same
  transaction as the deletes (or the refusal fold) it counts, so it never
  counts a delete that was rolled back.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

# The outbox_loss reason for events refused at the door (never committed, no id):
# the other reasons (over_budget, expired, disk_full) count committed rows deleted.
REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A committed event as the HQ link publishes it."""

    seq: int
    kind: str
    payload: bytes
    priority: int


class NewRow(NamedTuple):
    """A row to insert: the columns of ``outbox`` in table order."""

    seq: int
    kind: str
    priority: int
    created_at: float
    size: int
    payload: bytes
    subject: str | None


class LossLine(NamedTuple):
    """One ``outbox_loss`` row."""

    kind: str
    reason: str
    priority: int
    shed_count: int
    shed_bytes: int
    reported_count: int
    reported_bytes: int


# -- sequence and figures ----------------------------------------------------------


def next_seq(conn: sqlite3.Connection) -> int:
    """The seq the next row gets: past both the stored counter and any row in the table."""
    row = conn.execute("SELECT value FROM meta WHERE key='outbox_next_seq'").fetchone()
    max_seq = conn.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
    return max(int(row[0]) if row else 1, max_seq + 1)


def database_id(conn: sqlite3.Connection) -> str:
    """The random name migration m005 gave this database ('' before it ran)."""
    row = conn.execute("SELECT value FROM meta WHERE key='database_id'").fetchone()
    return str(row[0]) if row else ""


def class_figures(conn: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """priority -> (rows, payload bytes) of the rows in the table."""
    return {
        int(prio): (int(n), int(size))
        for prio, n, size in conn.execute(
            "SELECT priority, count(*), coalesce(sum(size), 0) FROM outbox GROUP BY priority"
        )
    }


def oldest_created_at(conn: sqlite3.Connection) -> float | None:
    value = conn.execute("SELECT min(created_at) FROM outbox").fetchone()[0]
    return float(value) if value is not None else None


class PageFigures(NamedTuple):
    """How full the database file is, in pages (``max_pages`` is the size cap)."""

    page_size: int
    max_pages: int
    used_pages: int
    free_pages: int


def page_figures(conn: sqlite3.Connection) -> PageFigures:
    return PageFigures(
        conn.execute("PRAGMA page_size").fetchone()[0],
        conn.execute("PRAGMA max_page_count").fetchone()[0],
        conn.execute("PRAGMA page_count").fetchone()[0],
        conn.execute("PRAGMA freelist_count").fetchone()[0],
    )


# -- rows in, rows out -------------------------------------------------------------


def insert_rows(conn: sqlite3.Connection, rows: Sequence[NewRow], next_seq_after: int) -> None:
    """Insert ``rows`` and move the stored sequence counter to ``next_seq_after``."""
    conn.executemany(
        "INSERT INTO outbox (seq, kind, priority, created_at, size, payload, subject) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('outbox_next_seq', ?)",
        (str(next_seq_after),),
    )


def delete_acked(conn: sqlite3.Connection, seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Delete delivered rows; the (priority, size) of each row that was there."""
    gone: list[tuple[int, int]] = []
    for seq in seqs:
        row = conn.execute(
            "DELETE FROM outbox WHERE seq = ? RETURNING priority, size", (seq,)
        ).fetchone()
        if row is not None:
            gone.append((int(row[0]), int(row[1])))
    return gone


def delete_subjects(conn: sqlite3.Connection, subjects: Iterable[str]) -> list[tuple[int, int]]:
    """Delete every row identifying one of ``subjects``; (priority, size) of each."""
    gone = conn.execute(
        "DELETE FROM outbox WHERE subject IN (SELECT value FROM json_each(?)) "
        "RETURNING priority, size",
        (json.dumps(sorted(set(subjects))),),
    ).fetchall()
    return [(int(p), int(n)) for p, n in gone]


def delete_orphans(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    """Delete every row identifying a shopper the store no longer knows; (priority, size).

    Events name a subject only while the shopper has a consent row, and an erasure
    deletes the shopper's rows first and the outbox's next, in two transactions: a
    crash between them leaves rows of an erased shopper, found and deleted here.
    """
    gone = conn.execute(
        "DELETE FROM outbox WHERE subject IS NOT NULL "
        "AND subject NOT IN (SELECT shopper_id FROM consent) "
        "AND subject NOT IN (SELECT shopper_id FROM profiles) RETURNING priority, size"
    ).fetchall()
    return [(int(p), int(n)) for p, n in gone]


def shed_oldest(conn: sqlite3.Connection, priority: int, limit: int) -> list[tuple[str, int]]:
    """Delete the ``limit`` oldest rows of one class; (kind, size) of each."""
    return [
        (str(k), int(n))
        for k, n in conn.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE priority = ? "
            "ORDER BY seq LIMIT ?) RETURNING kind, size",
            (priority, limit),
        )
    ]


def shed_created_before(
    conn: sqlite3.Connection, priority: int, cutoff: float
) -> list[tuple[str, int]]:
    """Delete the rows of one class created before ``cutoff``; (kind, size) of each."""
    return [
        (str(k), int(n))
        for k, n in conn.execute(
            "DELETE FROM outbox WHERE priority = ? AND created_at < ? RETURNING kind, size",
            (priority, cutoff),
        )
    ]


def fetch_after(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[OutboxRow]:
    """Up to ``limit`` rows with ``seq > after_seq``, oldest first."""
    return [
        OutboxRow(*r)
        for r in conn.execute(
            "SELECT seq, kind, payload, priority FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
    ]


def fetch_seqs(conn: sqlite3.Connection, seqs: Iterable[int]) -> list[OutboxRow]:
    """The rows among ``seqs`` still in the table, oldest first."""
    wanted = list(seqs)
    if not wanted:
        return []
    marks = ",".join("?" * len(wanted))
    return [
        OutboxRow(*r)
        for r in conn.execute(
            f"SELECT seq, kind, payload, priority FROM outbox WHERE seq IN ({marks}) "  # noqa: S608 - placeholders only
            "ORDER BY seq",
            wanted,
        )
    ]


# -- loss ----------------------------------------------------------------------------


def record_loss(
    conn: sqlite3.Connection,
    kind: str,
    reason: str,
    priority: int,
    count: int,
    size: int,
    now_s: float,
) -> None:
    """Add ``count`` events (``size`` bytes) to the loss of ``(kind, reason)``."""
    conn.execute(
        "INSERT INTO outbox_loss (kind, reason, priority, shed_count, shed_bytes, first_at, "
        "last_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, reason) DO UPDATE SET "
        "shed_count = shed_count + excluded.shed_count, "
        "shed_bytes = shed_bytes + excluded.shed_bytes, last_at = excluded.last_at",
        (kind, reason, priority, count, size, now_s, now_s),
    )


def loss_lines(conn: sqlite3.Connection, *, unreported_only: bool = False) -> list[LossLine]:
    """The rows of ``outbox_loss`` (only those with loss HQ has not been told about)."""
    sql = (
        "SELECT kind, reason, priority, shed_count, shed_bytes, reported_count, "
        "reported_bytes FROM outbox_loss"
    )
    if unreported_only:
        sql += " WHERE shed_count > reported_count"
    return [LossLine(*r) for r in conn.execute(sql + " ORDER BY kind, reason")]


def loss_totals(conn: sqlite3.Connection) -> dict[tuple[str, str], tuple[int, int]]:
    """(kind, reason) -> (shed_count, shed_bytes): what ``outbox_loss`` holds now."""
    return {
        (str(k), str(r)): (int(n), int(b))
        for k, r, n, b in conn.execute(
            "SELECT kind, reason, shed_count, shed_bytes FROM outbox_loss"
        )
    }


def mark_reported(conn: sqlite3.Connection, lines: Iterable[LossLine]) -> None:
    """Count the loss in ``lines`` as reported (in the transaction that commits the report)."""
    conn.executemany(
        "UPDATE outbox_loss SET reported_count = reported_count + ?, "
        "reported_bytes = reported_bytes + ? WHERE kind = ? AND reason = ?",
        [
            (
                ln.shed_count - ln.reported_count,
                ln.shed_bytes - ln.reported_bytes,
                ln.kind,
                ln.reason,
            )
            for ln in lines
        ],
    )
