"""HQ -> store messages: validate, apply once, dead-letter the rest, then acknowledge.

Subscribes to ``retail/v1/stores/{store}/down/{kind}`` and
``retail/v1/fleet/down/{kind}``. A message is acknowledged to HQ's broker
(PUBACK) only after it is kept: applied and committed, or dead-lettered and
committed, or recognised as an id already applied. Until then the broker
holds it, and redelivers it after a reconnect or a restart. At most
``downlink.max_inflight_messages`` are in the gateway's hands at once; the
rest wait at the broker (back-pressure, see ``publish/mqtt.py``), so a flood
costs the broker memory, not the store's.

Every payload is bounded before it is parsed (size, nesting depth, how many
values and containers it holds), then validated against a strict schema
(``v: 1``, a message ``id``, unknown keys rejected). Decoding happens in the
writer's job, off the event loop, and batches are bounded in bytes, so large
pages keep neither the loop nor the writer thread busy for long. A message
applies entirely, in one transaction, or not at all: a bad one goes to the
``dead_letters`` table with its reason and a health count, never a crash.
Message ids already applied are remembered, so a redelivery (QoS 1, or HQ
re-sending) applies once.

Dead-letter reasons name the field path and the kind of problem, never a value
from the payload: a rejected message may carry personal data.

Kinds handled now: ``profiles`` and ``consent``. Opt-out (and a profile delete,
or expiry) erases the shopper: rows, keys, loyalty hashes, not-yet-sent outbox
events, and the in-memory resolvers, then truncates the WAL.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import itertools
import json
import re
import sqlite3
import time
from collections.abc import Coroutine
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.clock import Clock
from gateway.config import DownlinkSection, ProfilesSection
from gateway.errors import DownlinkRejected, OutboxRejected, StorageError
from gateway.events import DownlinkApplied, UpEvent
from gateway.log import get_logger
from gateway.ports import Fanout
from gateway.publish import payloads, topics
from gateway.publish.mqtt import Delivery, MqttConnection
from gateway.publish.outbox import Outbox
from gateway.shoppers import SCOPES, Consent, EidTag, IBeaconTag, Profile
from gateway.storage import downlink as downlink_rows
from gateway.storage import profiles as profile_rows
from gateway.storage import stock as stock_rows
from gateway.storage.downlink import DeadLetter
from gateway.storage.store import SqliteWriter

# More entries than this in one message is an HQ bug or an attack, not a sync
# (a store holds ~100k shoppers; HQ sends deltas in pages).
MAX_ENTRIES = 5000
# Opaque attributes a later stage may need (segments, features); kept small.
MAX_ATTRIBUTES_BYTES = 8 * 1024
KNOWN_KINDS = ("profiles", "consent", "inventory")

# What a payload may hold before it is parsed. Parsing builds one Python object
# per value (a 128 KiB list of empty objects is about 3 MB of them), so these
# bound its cost; each is about twice what the largest valid message can need.
# Depth: the schema nests 4 levels (profiles, upserts, eid_tags, a tag), leaving
# attributes room for their own structure.
MAX_DEPTH = 32
# Arrays and objects: 5,000 inventory items are 5,002 of them.
MAX_CONTAINERS = 10_000
# Values, counted as commas + 1 (a bound on every array's length): 5,000
# inventory items, two fields each, are 10,000.
MAX_VALUES = 20_000

# A batch's payloads at most: about nine 115 KB pages, which the writer applies
# in about 0.1 s here (bench/downlink.py), far inside the watchdog's ping interval.
MAX_BATCH_BYTES = 1024 * 1024

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_ALL_BUT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_NESTING_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")

ShopperId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:@-]{1,64}$")]
MessageId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
DayStr = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]
Scope = Literal["presence", "associate_assist", "screens", "kiosk", "analytics"]
assert set(SCOPES) == set(Scope.__args__)  # type: ignore[attr-defined]
UnixTime = Annotated[float, Field(ge=0, le=1e11)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class EidTagIn(_Strict):
    tag: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
    identity_key: Hex32
    k: Annotated[int, Field(ge=0, le=15)]
    epoch_offset_s: Annotated[int, Field(ge=0, le=2**40)]


class IBeaconTagIn(_Strict):
    tag: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
    uuid: Hex32
    major: Annotated[int, Field(ge=0, le=65535)]
    minor: Annotated[int, Field(ge=0, le=65535)]


class ConsentIn(_Strict):
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=len(SCOPES))]
    expires_at: UnixTime


class ProfileUpsert(_Strict):
    shopper: ShopperId
    expires_at: UnixTime
    day_keys: Annotated[dict[DayStr, Hex64], Field(max_length=3)] = {}
    eid_tags: Annotated[list[EidTagIn], Field(max_length=4)] = []
    ibeacon_tags: Annotated[list[IBeaconTagIn], Field(max_length=4)] = []
    loyalty_hashes: Annotated[list[Hex64], Field(max_length=8)] = []
    consent: ConsentIn | None = None
    attributes: dict[str, Any] = {}

    @field_validator("day_keys")
    @classmethod
    def _real_dates(cls, value: dict[str, str]) -> dict[str, str]:
        for day in value:
            dt.date.fromisoformat(day)  # ValueError -> a validation error
        return value

    @field_validator("attributes")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, separators=(",", ":"))) > MAX_ATTRIBUTES_BYTES:
            raise ValueError("attributes too large")
        return value


class ProfilesMessage(_Strict):
    v: Literal[1]
    id: MessageId
    issued_at: UnixTime | None = None
    upserts: Annotated[list[ProfileUpsert], Field(max_length=MAX_ENTRIES)] = []
    deletes: Annotated[list[ShopperId], Field(max_length=MAX_ENTRIES)] = []


class ConsentChange(_Strict):
    shopper: ShopperId
    action: Literal["opt_in", "opt_out", "scopes"]
    scopes: Annotated[list[Scope], Field(max_length=len(SCOPES))] = []
    expires_at: UnixTime | None = None
    at: UnixTime | None = None

    @field_validator("scopes")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("scopes repeat")
        return value


class ConsentMessage(_Strict):
    v: Literal[1]
    id: MessageId
    issued_at: UnixTime | None = None
    changes: Annotated[list[ConsentChange], Field(min_length=1, max_length=MAX_ENTRIES)]


class StockLevel(_Strict):
    item: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
    # On hand; 0 or less is out of stock. Fractions for weighed goods (kg).
    quantity: Annotated[float, Field(strict=False, ge=-1e9, le=1e9)]


class InventoryMessage(_Strict):
    v: Literal[1]
    id: MessageId
    issued_at: UnixTime | None = None
    # True: these levels replace the whole table (a nightly full sync); else they update it.
    replace: bool = False
    items: Annotated[list[StockLevel], Field(max_length=MAX_ENTRIES)] = []


SCHEMAS: dict[str, type[_Strict]] = {
    "profiles": ProfilesMessage,
    "consent": ConsentMessage,
    "inventory": InventoryMessage,
}
_FIELD_NAMES = frozenset(
    name
    for model in (
        ProfilesMessage,
        ProfileUpsert,
        EidTagIn,
        IBeaconTagIn,
        ConsentIn,
        ConsentMessage,
        ConsentChange,
        InventoryMessage,
        StockLevel,
    )
    for name in model.model_fields
)


def _safe_loc(loc: tuple[Any, ...]) -> str:
    # Dict keys in a location are payload data (a day, an attribute name): mask them.
    parts = [str(p) if isinstance(p, int) or p in _FIELD_NAMES else "*" for p in loc]
    return ".".join(parts) or "(message)"


def check_shape(payload: bytes) -> None:
    """Refuse a payload whose structure would be costly to parse (DownlinkRejected).

    Strings are blanked first, so brackets and commas inside them do not count;
    everything here runs at C speed (about 1 ms for a 115 KB page).
    """
    bare = _STRING.sub(b'""', payload)
    containers = bare.count(b"[") + bare.count(b"{")
    if containers > MAX_CONTAINERS:
        raise DownlinkRejected(f"shape: more than {MAX_CONTAINERS} arrays and objects")
    if bare.count(b",") + 1 > MAX_VALUES:
        raise DownlinkRejected(f"shape: more than {MAX_VALUES} values")
    steps = memoryview(bare.translate(None, _ALL_BUT_BRACKETS).translate(_NESTING_STEP))
    if max(itertools.accumulate(steps.cast("b")), default=0) > MAX_DEPTH:
        raise DownlinkRejected(f"shape: nested deeper than {MAX_DEPTH} levels")


def decode(kind: str, payload: bytes, max_bytes: int) -> _Strict:
    """The validated message, or DownlinkRejected with a reason that quotes no payload data."""
    if kind not in SCHEMAS:
        raise DownlinkRejected(
            f"kind {kind!r} is not handled by this gateway version"
            if kind.isidentifier() and len(kind) <= 32
            else "unknown kind"
        )
    if len(payload) > max_bytes:
        raise DownlinkRejected(
            f"size: payload of {len(payload)} bytes exceeds the {max_bytes}-byte cap"
        )
    check_shape(payload)
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DownlinkRejected(f"not JSON ({type(exc).__name__})") from None
    except RecursionError:
        raise DownlinkRejected("not JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise DownlinkRejected("not a JSON object")
    if doc.get("v") != 1:
        raise DownlinkRejected("unsupported or missing version (want v: 1)")
    try:
        return SCHEMAS[kind].model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        first = "; ".join(f"{_safe_loc(e['loc'])}: {e['type']}" for e in errors[:3])
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        raise DownlinkRejected(f"schema: {first}{more}") from None
    except RecursionError:
        raise DownlinkRejected("schema: nested too deeply") from None


def to_profile(u: ProfileUpsert) -> Profile:
    return Profile(
        shopper=u.shopper,
        expires_at=u.expires_at,
        day_keys={day: bytes.fromhex(key) for day, key in u.day_keys.items()},
        eid_tags=tuple(
            EidTag(t.tag, bytes.fromhex(t.identity_key), t.k, t.epoch_offset_s) for t in u.eid_tags
        ),
        ibeacon_tags=tuple(
            IBeaconTag(t.tag, bytes.fromhex(t.uuid), t.major, t.minor) for t in u.ibeacon_tags
        ),
        loyalty_hashes=tuple(u.loyalty_hashes),
        attributes=u.attributes,
    )


def _kind_of(topic: str) -> str:
    return topic.rsplit("/", 1)[-1]


class Downlink:
    """Receives HQ's downlink on the HQ connection and applies it through the writer."""

    def __init__(
        self,
        conn: MqttConnection,
        store_id: str,
        writer: SqliteWriter,
        outbox: Outbox,
        clock: Clock,
        cfg: DownlinkSection,
        profiles_cfg: ProfilesSection,
    ) -> None:
        self.conn = conn
        self.store_id = store_id
        self.writer = writer
        self.outbox = outbox
        self.clock = clock
        self.cfg = cfg
        self.profiles_cfg = profiles_cfg
        # Received, not yet applied; at most cfg.max_inflight_messages (the connection
        # hands over no more until some are acknowledged).
        self._queue: collections.deque[tuple[Delivery, float]] = collections.deque()
        self._wake = asyncio.Event()
        # Each committed batch that changed something, for the stages' in-memory state. An
        # erasure the stages could not apply must not pass quietly: a subscriber that
        # raises stops the downlink, and the restart rebuilds memory from the database.
        self.changes: Fanout[DownlinkApplied] = Fanout("downlink", propagate=True)
        self._log = get_logger("downlink")
        self.received = 0
        self.applied = 0
        self.duplicates = 0
        self.acked = 0
        self.dead_lettered: collections.Counter[str] = collections.Counter()
        self.erased_total = 0
        self.last_erase_ms = 0.0
        self.store_counts: dict[str, Any] = {}
        conn.acknowledge_manually(cfg.max_inflight_messages)
        conn.subscribe_acked(topics.hq_down(store_id, "+"), self._on_delivery)
        conn.subscribe_acked(topics.FLEET_DOWN_ALL, self._on_delivery)

    def stats(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "dead_lettered": sum(self.dead_lettered.values()),
            "dead_letter_reasons": dict(self.dead_lettered.most_common(5)),
            "queued": len(self._queue),
            "unacked": self.conn.unacked,
            "acked": self.acked,
            "reads_paused": self.conn.reads_paused,
            "erased_shoppers": self.erased_total,
            "last_erase_ms": round(self.last_erase_ms, 1),
            **self.store_counts,
        }

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {"downlink": self._run(), "profile-expiry": self._expiry_loop()}

    # -- receive (event loop) -----------------------------------------------------------

    def _on_delivery(self, delivery: Delivery) -> None:
        self.received += 1
        self._queue.append((delivery, self.clock.wall()))
        self._wake.set()

    # -- apply ---------------------------------------------------------------------

    async def _run(self) -> None:
        # Half the window per batch: while one half is applied, the broker can send
        # the other half, so the writer does not wait for the network.
        most = max(1, self.cfg.max_inflight_messages // 2)
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft()]
                size = len(batch[0][0].payload)
                while self._queue and len(batch) < most:
                    size += len(self._queue[0][0].payload)
                    if size > MAX_BATCH_BYTES:
                        break
                    batch.append(self._queue.popleft())
                await self.apply_batch([(_kind_of(d.topic), d.payload, at) for d, at in batch])
                # Kept (applied, dead-lettered or a duplicate, all committed): only
                # now may the broker forget them.
                for delivery, _ in batch:
                    self.conn.ack(delivery)
                self.acked += len(batch)

    async def apply_batch(self, batch: list[tuple[str, bytes, float]]) -> DownlinkApplied:
        """Validate and apply ``(kind, payload, received_at)`` messages in one transaction."""
        now = self.clock.wall()
        started = time.perf_counter()
        result = await self.writer.run(lambda conn: self._apply_job(conn, batch, now))
        changes, applied, duplicates, dead, receipts, counts = result
        self.applied += applied
        self.duplicates += duplicates
        self.store_counts = counts
        for letter in dead:
            self.dead_lettered[letter.reason.split(":", 1)[0]] += 1
            self._log.warning(
                "downlink_dead_lettered", kind=letter.source, reason=letter.reason, size=letter.size
            )
        if changes.erased:
            erased_rows = await self.outbox.erase_subjects(changes.erased)
            await self.writer.run(profile_rows.purge_wal)
            self.erased_total += len(changes.erased)
            self.last_erase_ms = (time.perf_counter() - started) * 1000
            self._log.info(
                "shoppers_erased",
                count=len(changes.erased),
                outbox_rows=erased_rows,
                took_ms=round(self.last_erase_ms, 1),
            )
        if changes:
            self.changes.emit(changes)
        await self._send_receipts(receipts, now)
        return changes

    async def _send_receipts(self, receipts: list[dict[str, Any]], now: float) -> None:
        """Commit the consent receipts before the messages are acknowledged."""
        if not receipts:
            return
        kept = await asyncio.gather(
            *(self.outbox.enqueue(UpEvent.of("consent", r, now)) for r in receipts),
            return_exceptions=True,
        )
        for receipt, result in zip(receipts, kept, strict=True):
            if isinstance(result, OutboxRejected | StorageError):
                self._log.error(
                    "consent_receipt_not_kept", message=receipt["message"], error=str(result)
                )
            elif isinstance(result, BaseException):
                raise result

    def _apply_job(
        self, conn: sqlite3.Connection, batch: list[tuple[str, bytes, float]], now: float
    ) -> tuple[DownlinkApplied, int, int, list[DeadLetter], list[dict[str, Any]], dict[str, Any]]:
        # Decoded here, one message at a time, not on the event loop: the loop stays
        # free, and each message's parsed objects are garbage before the next is read
        # (a batch of parsed pages kept alive together made the collector walk the
        # whole heap every batch: bench/downlink.py).
        changes = DownlinkApplied()
        applied = duplicates = 0
        dead: list[DeadLetter] = []
        receipts: list[dict[str, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        for kind, payload, received_at in batch:
            try:
                msg = decode(kind, payload, self.cfg.max_payload_bytes)
            except DownlinkRejected as exc:
                dead.append(DeadLetter(kind[:32], exc.reason, received_at, len(payload)))
                continue
            if not downlink_rows.mark_applied(conn, msg.id, kind, now):  # type: ignore[attr-defined]
                duplicates += 1
                continue
            applied += 1
            if isinstance(msg, ProfilesMessage):
                self._apply_profiles(conn, msg, changes, now)
            elif isinstance(msg, ConsentMessage):
                receipts.append(self._apply_consent(conn, msg, changes, now))
            elif isinstance(msg, InventoryMessage):
                self._apply_inventory(conn, msg, changes, now)
        if changes.erased:
            profile_rows.erase_shoppers(conn, changes.erased)
        for shopper in profile_rows.evict_over_cap(conn, self.profiles_cfg.max_shoppers):
            changes.profiles.pop(shopper, None)
            changes.erased.add(shopper)
        downlink_rows.add_dead_letters(conn, dead, self.cfg.dead_letters_kept)
        downlink_rows.forget_applied_before(conn, now - self.cfg.applied_ids_kept_days * 86400)
        conn.execute("COMMIT")
        return changes, applied, duplicates, dead, receipts, profile_rows.counts(conn)

    def _apply_profiles(
        self, conn: sqlite3.Connection, msg: ProfilesMessage, changes: DownlinkApplied, now: float
    ) -> None:
        fresh = [to_profile(u) for u in msg.upserts if u.expires_at > now]
        profile_rows.upsert_profiles(conn, fresh, now)
        for p in fresh:
            changes.upsert_profile(p)
        consents = [
            Consent(u.shopper, frozenset(u.consent.scopes), u.consent.expires_at)
            for u in msg.upserts
            if u.consent is not None and u.expires_at > now
        ]
        profile_rows.upsert_consent(conn, consents, now)
        for c in consents:
            changes.set_consent(c)
        for shopper in msg.deletes:
            changes.erase(shopper)

    def _apply_inventory(
        self, conn: sqlite3.Connection, msg: InventoryMessage, changes: DownlinkApplied, now: float
    ) -> None:
        if msg.replace:
            stock_rows.clear(conn)
            changes.stock.clear()
            changes.stock_replaced = True
        stock_rows.set_levels(conn, [(level.item, level.quantity) for level in msg.items], now)
        for level in msg.items:
            changes.stock[level.item] = level.quantity

    def _apply_consent(
        self, conn: sqlite3.Connection, msg: ConsentMessage, changes: DownlinkApplied, now: float
    ) -> dict[str, Any]:
        counts = collections.Counter[str]()
        for ch in msg.changes:
            counts[ch.action] += 1
            if ch.action == "opt_out" or (ch.action == "scopes" and not ch.scopes):
                changes.erase(ch.shopper)
                continue
            expires = ch.expires_at if ch.expires_at is not None else now + 365 * 86400
            c = Consent(ch.shopper, frozenset(ch.scopes), expires)
            profile_rows.upsert_consent(conn, [c], now)
            changes.set_consent(c)
        # The receipt HQ keeps as its legal record: which message, applied when.
        # It names no shopper: HQ knows who was in its own message.
        return payloads.consent_applied(msg.id, now, counts)

    # -- expiry --------------------------------------------------------------------

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.profiles_cfg.sweep_interval_s)
            await self.sweep_expired()

    async def sweep_expired(self) -> int:
        """Erase shoppers whose profile or consent expired; how many."""
        now = self.clock.wall()

        def job(conn: sqlite3.Connection) -> list[str]:
            conn.execute("BEGIN IMMEDIATE")
            gone = profile_rows.expired(conn, now)
            if gone:
                profile_rows.erase_shoppers(conn, gone)
            conn.execute("COMMIT")
            return gone

        gone = await self.writer.run(job)
        if gone:
            changes = DownlinkApplied()
            for shopper in gone:
                changes.erase(shopper)
            await self.outbox.erase_subjects(changes.erased)
            await self.writer.run(profile_rows.purge_wal)
            self.changes.emit(changes)
            self._log.info("profiles_expired", count=len(gone))
        return len(gone)
