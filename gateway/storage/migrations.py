"""Schema migrations, applied in order at every start (sqlite-utils Migrations).

Add a new function at the end to change the schema; never edit one that has
shipped. Hot-path tables are written with raw SQL, so columns here are the
contract with ``store.py``, ``outbox.py`` and ``profiles.py`` here.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("store-gateway")


@migrations()
def m001_meta_and_outbox(db: Database) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    # seq is assigned by the single writer from meta.outbox_next_seq, never reused,
    # so ids {store}:{seq} stay unique even after the table drains to empty.
    db.execute(
        """CREATE TABLE outbox (
               seq INTEGER PRIMARY KEY,
               kind TEXT NOT NULL,
               priority INTEGER NOT NULL,
               created_at REAL NOT NULL,
               size INTEGER NOT NULL,
               payload BLOB NOT NULL
           )"""
    )
    db.execute("CREATE INDEX outbox_shed ON outbox (priority, seq)")
    db.execute(
        """CREATE TABLE outbox_loss (
               kind TEXT NOT NULL,
               reason TEXT NOT NULL,
               priority INTEGER NOT NULL,
               shed_count INTEGER NOT NULL DEFAULT 0,
               shed_bytes INTEGER NOT NULL DEFAULT 0,
               reported_count INTEGER NOT NULL DEFAULT 0,
               reported_bytes INTEGER NOT NULL DEFAULT 0,
               first_at REAL NOT NULL,
               last_at REAL NOT NULL,
               PRIMARY KEY (kind, reason)
           )"""
    )


@migrations()
def m002_profiles_consent_models(db: Database) -> None:
    db.table("profiles").create(
        {"shopper_id": str, "data": str, "updated_at": float, "expires_at": float},
        pk="shopper_id",
    )
    db.table("profiles").create_index(["expires_at"])
    db.table("consent").create(
        {"shopper_id": str, "scopes": str, "expires_at": float, "updated_at": float},
        pk="shopper_id",
    )
    db.table("models").create(
        {"version": int, "sha256": str, "path": str, "installed_at": float, "active": int},
        pk="version",
    )
    db.table("dead_letters").create(
        {"id": int, "source": str, "reason": str, "received_at": float, "size": int},
        pk="id",
    )


@migrations()
def m003_shoppers(db: Database) -> None:
    # Who an outbox row identifies (never sent): an opt-out deletes the shopper's
    # rows that have not reached HQ yet. NULL for rows that identify nobody.
    db.execute("ALTER TABLE outbox ADD COLUMN subject TEXT")
    db.execute("CREATE INDEX outbox_subject ON outbox (subject) WHERE subject IS NOT NULL")
    # Salted hashes of loyalty numbers -> shopper, for POS loyalty scans.
    db.execute(
        "CREATE TABLE loyalty (hash TEXT PRIMARY KEY, shopper_id TEXT NOT NULL) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX loyalty_shopper ON loyalty (shopper_id)")
    # Downlink message ids already applied: a redelivered message applies once.
    db.execute(
        "CREATE TABLE downlink_applied (message_id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
        "applied_at REAL NOT NULL) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX downlink_applied_at ON downlink_applied (applied_at)")
    db.execute("CREATE INDEX dead_letters_received ON dead_letters (received_at)")


@migrations()
def m004_stock(db: Database) -> None:
    # Stock levels from HQ's inventory downlink. An item with no row is unknown (not
    # out of stock): an empty table means the store has no stock feed yet.
    db.execute(
        "CREATE TABLE stock (item TEXT PRIMARY KEY, quantity REAL NOT NULL, "
        "updated_at REAL NOT NULL) WITHOUT ROWID"
    )


@migrations()
def m005_database_id(db: Database) -> None:
    # A random name for this database, so that a file kept beside it (the refusal
    # counter, storage/refusals.py) is never taken for another database's.
    db.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('database_id', lower(hex(randomblob(16))))"
    )


@migrations()
def m006_trust(db: Database) -> None:
    # HQ trust state (publish/trust.py): the highest signed time and versions ever
    # accepted, the rotated key set, and the highest bundle version per signing key.
    # Nothing here may go backwards: that is what defeats rollback and replay.
    db.execute(
        "CREATE TABLE trust_state (name TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID"
    )
    db.execute("CREATE TABLE trust_keys (version INTEGER NOT NULL, document TEXT NOT NULL)")
    db.execute(
        "CREATE TABLE trust_bundles (keyid TEXT PRIMARY KEY, version INTEGER NOT NULL) "
        "WITHOUT ROWID"
    )
