"""The profile cache and consent on disk: writer-thread jobs, one transaction each.

Profiles (with their day keys, tag keys and loyalty hashes) and consent survive
restarts here. Every function takes the writer's connection and runs inside
one transaction, so a downlink message applies entirely or not at all. Erasure
deletes with ``secure_delete`` on and then truncates the WAL, so the erased
bytes are in neither file afterwards.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from gateway.shoppers import Consent, EidTag, IBeaconTag, Profile
from gateway.storage.store import checkpoint


def profile_to_row(p: Profile, now_s: float) -> tuple[str, str, float, float]:
    data = {
        "day_keys": {day: key.hex() for day, key in p.day_keys.items()},
        "eid_tags": [
            {
                "tag": t.tag,
                "identity_key": t.identity_key.hex(),
                "k": t.k,
                "epoch_offset_s": t.epoch_offset_s,
            }
            for t in p.eid_tags
        ],
        "ibeacon_tags": [
            {"tag": t.tag, "uuid": t.uuid.hex(), "major": t.major, "minor": t.minor}
            for t in p.ibeacon_tags
        ],
        "loyalty_hashes": list(p.loyalty_hashes),
        "attributes": dict(p.attributes),
    }
    return (p.shopper, json.dumps(data, separators=(",", ":")), now_s, p.expires_at)


def profile_from_row(shopper: str, data: str, expires_at: float) -> Profile:
    doc = json.loads(data)
    return Profile(
        shopper=shopper,
        expires_at=expires_at,
        day_keys={day: bytes.fromhex(key) for day, key in doc.get("day_keys", {}).items()},
        eid_tags=tuple(
            EidTag(
                t["tag"], bytes.fromhex(t["identity_key"]), int(t["k"]), int(t["epoch_offset_s"])
            )
            for t in doc.get("eid_tags", [])
        ),
        ibeacon_tags=tuple(
            IBeaconTag(t["tag"], bytes.fromhex(t["uuid"]), int(t["major"]), int(t["minor"]))
            for t in doc.get("ibeacon_tags", [])
        ),
        loyalty_hashes=tuple(doc.get("loyalty_hashes", [])),
        attributes=doc.get("attributes", {}),
    )


def upsert_profiles(conn: sqlite3.Connection, profiles: Iterable[Profile], now_s: float) -> None:
    """Insert or replace profiles and their loyalty hashes (inside the caller's transaction)."""
    for p in profiles:
        conn.execute(
            "INSERT OR REPLACE INTO profiles (shopper_id, data, updated_at, expires_at) "
            "VALUES (?, ?, ?, ?)",
            profile_to_row(p, now_s),
        )
        conn.execute("DELETE FROM loyalty WHERE shopper_id = ?", (p.shopper,))
        conn.executemany(
            "INSERT OR REPLACE INTO loyalty (hash, shopper_id) VALUES (?, ?)",
            [(h, p.shopper) for h in p.loyalty_hashes],
        )


def upsert_consent(conn: sqlite3.Connection, consents: Iterable[Consent], now_s: float) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO consent (shopper_id, scopes, expires_at, updated_at) "
        "VALUES (?, ?, ?, ?)",
        [(c.shopper, json.dumps(sorted(c.scopes)), c.expires_at, now_s) for c in consents],
    )


def erase_shoppers(conn: sqlite3.Connection, shoppers: Iterable[str]) -> int:
    """Delete every row about ``shoppers`` except the outbox's (the outbox erases its own)."""
    names = json.dumps(sorted(set(shoppers)))
    n = 0
    for table, column in (
        ("profiles", "shopper_id"),
        ("consent", "shopper_id"),
        ("loyalty", "shopper_id"),
    ):
        n += conn.execute(
            f"DELETE FROM {table} WHERE {column} IN (SELECT value FROM json_each(?))",  # noqa: S608 - fixed names
            (names,),
        ).rowcount
    return n


def evict_over_cap(conn: sqlite3.Connection, max_profiles: int) -> list[str]:
    """Drop the soonest-expiring profiles above the cap; the shoppers evicted."""
    over = conn.execute("SELECT count(*) FROM profiles").fetchone()[0] - max_profiles
    if over <= 0:
        return []
    gone = [
        r[0]
        for r in conn.execute(
            "DELETE FROM profiles WHERE shopper_id IN (SELECT shopper_id FROM profiles "
            "ORDER BY expires_at LIMIT ?) RETURNING shopper_id",
            (over,),
        )
    ]
    conn.executemany("DELETE FROM loyalty WHERE shopper_id = ?", [(s,) for s in gone])
    return gone


def expired(conn: sqlite3.Connection, now_s: float) -> list[str]:
    """Shoppers whose profile or consent has expired (to be erased)."""
    rows = conn.execute(
        "SELECT shopper_id FROM profiles WHERE expires_at <= ?1 "
        "UNION SELECT shopper_id FROM consent WHERE expires_at <= ?1",
        (now_s,),
    )
    return [r[0] for r in rows]


def load_all(conn: sqlite3.Connection) -> tuple[list[Profile], list[Consent]]:
    """Everything the in-memory directory needs at start."""
    profiles = [
        profile_from_row(s, d, e)
        for s, d, e in conn.execute("SELECT shopper_id, data, expires_at FROM profiles")
    ]
    consents = [
        Consent(s, frozenset(json.loads(sc)), e)
        for s, sc, e in conn.execute("SELECT shopper_id, scopes, expires_at FROM consent")
    ]
    return profiles, consents


def purge_wal(conn: sqlite3.Connection) -> None:
    """After an erasure: copy the WAL into the file and truncate it, so old page images go."""
    checkpoint(conn)


def counts(conn: sqlite3.Connection) -> dict[str, Any]:
    return {
        "profiles": conn.execute("SELECT count(*) FROM profiles").fetchone()[0],
        "consents": conn.execute("SELECT count(*) FROM consent").fetchone()[0],
        "loyalty_hashes": conn.execute("SELECT count(*) FROM loyalty").fetchone()[0],
    }
