"""The downlink's bookkeeping on disk: message ids already applied, and dead letters.

Writer-thread functions: each takes the writer's connection and runs inside the
caller's transaction, so a downlink batch, the ids it applied and the letters it
refused commit together or not at all. A dead letter keeps the topic's kind, the
reason, the size and the time, never the payload (it may carry personal data).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import NamedTuple


class DeadLetter(NamedTuple):
    """One refused message, as the ``dead_letters`` table keeps it."""

    source: str  # the topic's kind, cut to 32 characters
    reason: str
    received_at: float
    size: int


def mark_applied(conn: sqlite3.Connection, message_id: str, kind: str, now_s: float) -> bool:
    """Remember ``message_id`` as applied; False when it already was (a redelivery)."""
    return bool(
        conn.execute(
            "INSERT OR IGNORE INTO downlink_applied (message_id, kind, applied_at) "
            "VALUES (?, ?, ?)",
            (message_id, kind, now_s),
        ).rowcount
    )


def forget_applied_before(conn: sqlite3.Connection, cutoff_s: float) -> None:
    """Drop applied ids older than ``cutoff_s``: no broker redelivers that late."""
    conn.execute("DELETE FROM downlink_applied WHERE applied_at < ?", (cutoff_s,))


def add_dead_letters(conn: sqlite3.Connection, letters: Iterable[DeadLetter], keep: int) -> None:
    """Record refused messages, keeping only the newest ``keep`` rows."""
    rows = list(letters)
    if not rows:
        return
    conn.executemany(
        "INSERT INTO dead_letters (source, reason, received_at, size) VALUES (?, ?, ?, ?)", rows
    )
    conn.execute(
        "DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?", (keep,)
    )
