"""The trust store's state on disk (publish/trust.py, decision/bundle.py).

``trust_state`` holds monotonic numbers by name: ``time`` (the highest signed
``issued_at`` ever accepted) and ``version:{kind}:{target}`` (the highest
version per role and target). ``trust_keys`` holds the rotated key set (the
newest signed ``keys`` document, verbatim JSON). ``trust_bundles`` holds the
highest bundle version accepted per signing key. Values only ever grow: each
write keeps the larger of the stored and the new value.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def load_state(conn: sqlite3.Connection) -> dict[str, float]:
    return {name: value for name, value in conn.execute("SELECT name, value FROM trust_state")}


def raise_state(conn: sqlite3.Connection, values: dict[str, float]) -> None:
    """Store each value unless a larger one is stored already."""
    conn.executemany(
        "INSERT INTO trust_state (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
        list(values.items()),
    )


def load_keys(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """The newest rotated key document (version, JSON), or None: the config's keys rule."""
    row = conn.execute(
        "SELECT version, document FROM trust_keys ORDER BY version DESC LIMIT 1"
    ).fetchone()
    return (int(row[0]), str(row[1])) if row else None


def save_keys(conn: sqlite3.Connection, version: int, document: str) -> None:
    conn.execute("DELETE FROM trust_keys WHERE version < ?", (version,))
    conn.execute("INSERT INTO trust_keys (version, document) VALUES (?, ?)", (version, document))


def bundle_versions(conn: sqlite3.Connection) -> dict[str, int]:
    return {k: int(v) for k, v in conn.execute("SELECT keyid, version FROM trust_bundles")}


def raise_bundle_version(conn: sqlite3.Connection, keyid: str, version: int) -> None:
    conn.execute(
        "INSERT INTO trust_bundles (keyid, version) VALUES (?, ?) "
        "ON CONFLICT (keyid) DO UPDATE SET version = max(version, excluded.version)",
        (keyid, version),
    )


def _open(db_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db_path, timeout=10, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def read_bundle_versions(db_path: Path) -> dict[str, int]:
    """The bundle high-water marks, read on a short connection of its own (the
    ranker's loader thread, which cannot wait on the writer's queue)."""
    conn = _open(db_path)
    try:
        return bundle_versions(conn)
    except sqlite3.OperationalError:
        return {}  # no migration yet: nothing accepted
    finally:
        conn.close()


def write_bundle_version(db_path: Path, keyid: str, version: int) -> None:
    """Raise one bundle high-water mark, committed before the bundle serves."""
    conn = _open(db_path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        raise_bundle_version(conn, keyid, version)
        conn.execute("COMMIT")
    finally:
        conn.close()
