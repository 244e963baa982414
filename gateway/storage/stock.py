"""Stock levels from HQ's inventory downlink, on disk.

An item with no row is unknown, not out of stock: an empty table means the store
has no stock feed yet. Writes take the writer's connection and run inside the
caller's transaction (the inventory message that carries them).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable


def set_levels(conn: sqlite3.Connection, levels: Iterable[tuple[str, float]], now_s: float) -> None:
    """Insert or update ``(item, quantity)`` levels."""
    conn.executemany(
        "INSERT OR REPLACE INTO stock (item, quantity, updated_at) VALUES (?, ?, ?)",
        [(item, quantity, now_s) for item, quantity in levels],
    )


def clear(conn: sqlite3.Connection) -> None:
    """Forget every level (a full sync replaces the table)."""
    conn.execute("DELETE FROM stock")


def load_levels(conn: sqlite3.Connection) -> dict[str, float]:
    """Every known level, item -> quantity (the decision rules load them at start)."""
    return {item: quantity for item, quantity in conn.execute("SELECT item, quantity FROM stock")}
