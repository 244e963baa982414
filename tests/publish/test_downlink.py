"""The HQ downlink on a real SQLite file: validation, apply-once, dead letters and erasure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clock import ManualClock
from gateway.config import BrokerSection, DownlinkSection, OutboxSection, ProfilesSection
from gateway.errors import DownlinkRejected
from gateway.events import DownlinkApplied, UpEvent
from gateway.publish.downlink import (
    MAX_CONTAINERS,
    MAX_DEPTH,
    MAX_VALUES,
    Downlink,
    InventoryMessage,
    ProfilesMessage,
    decode,
)
from gateway.publish.mqtt import Delivery, MqttConnection
from gateway.publish.outbox import Outbox
from gateway.storage import profiles as profile_rows
from gateway.storage import stock as stock_rows
from gateway.storage.store import SqliteWriter
from gateway.testing import downlink_load as load

STORE = "s1"
NOW = 1_795_000_000.0
MAX = 128 * 1024


def make_upsert(shopper: str = "shopper-17", **over: Any) -> dict[str, Any]:
    """A valid profile upsert with distinctive key bytes that a file search can find."""
    entry: dict[str, Any] = {
        "shopper": shopper,
        "expires_at": NOW + 86400,
        "day_keys": {"2026-11-18": "ab" * 32, "2026-11-19": "cd" * 32},
        "loyalty_hashes": ["ef" * 32],
        "eid_tags": [{"tag": "tag-1", "identity_key": "12" * 16, "k": 10, "epoch_offset_s": 0}],
        "consent": {"scopes": ["presence", "associate_assist"], "expires_at": NOW + 86400},
    }
    entry.update(over)
    return entry


def profiles_msg(msg_id: str = "m1", upserts: list[Any] | None = None, **extra: Any) -> bytes:
    doc = {"v": 1, "id": msg_id, "upserts": upserts if upserts is not None else [make_upsert()]}
    doc.update(extra)
    return json.dumps(doc).encode()


def consent_msg(msg_id: str, *changes: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "id": msg_id, "changes": list(changes)}).encode()


@dataclass
class Rig:
    downlink: Downlink
    outbox: Outbox
    writer: SqliteWriter
    db: Path
    seen: list[DownlinkApplied]


@contextlib.asynccontextmanager
async def open_rig(db: Path, **profiles: Any) -> AsyncIterator[Rig]:
    """A writer, an outbox with its commit loop, and a downlink (no broker: fed directly)."""
    writer = SqliteWriter(db, ballast_mb=0)
    writer.start()
    clock = ManualClock(wall=NOW)
    outbox = Outbox(writer, STORE, OutboxSection(), clock)
    await outbox.open()
    task = asyncio.create_task(outbox.run())
    conn = MqttConnection("hq", BrokerSection(), client_id="t", password_env="UNUSED_ENV")  # noqa: S106 - an env name
    dl = Downlink(
        conn, STORE, writer, outbox, clock, DownlinkSection(), ProfilesSection(**profiles)
    )
    seen: list[DownlinkApplied] = []
    dl.changes.subscribe(seen.append)
    try:
        yield Rig(dl, outbox, writer, db, seen)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        writer.close()


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def file_bytes(db: Path) -> bytes:
    """The database file and its WAL, as a search for leftover personal data sees them."""
    data = db.read_bytes()
    wal = db.with_name(db.name + "-wal")
    if wal.exists():
        data += wal.read_bytes()
    return data


def test_profiles_apply_and_survive_a_restart(tmp_path: Path) -> None:
    """A valid profiles message lands in the cache and is there again after a restart."""

    async def scenario() -> None:
        async with open_rig(tmp_path / "g.db") as rig:
            await rig.downlink.apply_batch([("profiles", profiles_msg(), NOW)])
            assert "shopper-17" in rig.seen[-1].profiles
            assert rig.seen[-1].consents["shopper-17"].active(NOW)
        async with open_rig(tmp_path / "g.db") as rig:
            profiles, consents = await rig.writer.run(profile_rows.load_all)
            assert [p.shopper for p in profiles] == ["shopper-17"]
            assert profiles[0].day_keys["2026-11-18"] == bytes.fromhex("ab" * 32)
            assert profiles[0].eid_tags[0].k == 10
            assert consents[0].scopes == {"presence", "associate_assist"}

    asyncio.run(scenario())
    assert query(tmp_path / "g.db", "SELECT hash, shopper_id FROM loyalty") == [
        ("ef" * 32, "shopper-17")
    ]


def test_a_redelivered_message_applies_once(tmp_path: Path) -> None:
    """The same message id twice (QoS 1 redelivery) is applied once and counted as duplicate."""

    async def scenario() -> None:
        async with open_rig(tmp_path / "g.db") as rig:
            msg = profiles_msg("same-id")
            await rig.downlink.apply_batch([("profiles", msg, NOW), ("profiles", msg, NOW)])
            await rig.downlink.apply_batch([("profiles", msg, NOW)])
            assert rig.downlink.applied == 1
            assert rig.downlink.duplicates == 2

    asyncio.run(scenario())


BAD_MESSAGES: list[tuple[str, str, bytes]] = [
    ("garbage", "profiles", b"\x00\xff\xfe garbage"),
    ("truncated", "profiles", profiles_msg()[:-7]),
    ("huge", "profiles", b'{"v":1,"id":"x","pad":"' + b"a" * (MAX + 10) + b'"}'),
    ("not an object", "profiles", b"[1,2,3]"),
    ("wrong version", "profiles", profiles_msg(v=2)),
    ("unknown key", "profiles", profiles_msg(extra_field=1)),
    ("bad key hex", "profiles", profiles_msg(upserts=[make_upsert(day_keys={"2026-11-18": "zz"})])),
    (
        "impossible date",
        "profiles",
        profiles_msg(upserts=[make_upsert(day_keys={"2026-02-31": "ab" * 32})]),
    ),
    (
        "hostile shopper id",
        "profiles",
        profiles_msg(upserts=[make_upsert(shopper="../../etc/passwd")]),
    ),
    ("nan expiry", "profiles", profiles_msg(upserts=[make_upsert(expires_at=float("nan"))])),
    ("bool as number", "profiles", profiles_msg(upserts=[make_upsert(expires_at=True)])),
    (
        "too many entries",
        "profiles",
        profiles_msg(upserts=[make_upsert(f"s{i}") for i in range(5001)]),
    ),
    (
        "deep nesting",
        "profiles",
        b'{"v":1,"id":"d","attributes":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ),
    (
        "unknown scope",
        "consent",
        consent_msg("c", {"shopper": "a", "action": "opt_in", "scopes": ["spy"]}),
    ),
    ("no changes", "consent", consent_msg("c")),
    ("unknown kind", "teleport", profiles_msg()),
]


def test_bad_messages_are_dead_lettered_with_a_reason(tmp_path: Path) -> None:
    """Every kind of bad message goes to dead_letters with a reason; valid ones around it apply."""

    async def scenario() -> None:
        async with open_rig(tmp_path / "g.db") as rig:
            batch = [(kind, payload, NOW) for _, kind, payload in BAD_MESSAGES]
            batch.insert(5, ("profiles", profiles_msg("good-1", [make_upsert("good-a")]), NOW))
            batch.append(("profiles", profiles_msg("good-2", [make_upsert("good-b")]), NOW))
            changes = await rig.downlink.apply_batch(batch)
            assert set(changes.profiles) == {"good-a", "good-b"}
            assert rig.downlink.stats()["dead_lettered"] == len(BAD_MESSAGES)

    asyncio.run(scenario())
    rows = query(tmp_path / "g.db", "SELECT source, reason, size FROM dead_letters ORDER BY id")
    assert len(rows) == len(BAD_MESSAGES)
    for (name, _, payload), (_, reason, size) in zip(BAD_MESSAGES, rows, strict=True):
        assert reason, name
        assert size == len(payload), name
    # A reason never quotes the payload (it may carry personal data).
    assert not any("etc/passwd" in r[1] or "spy" in r[1] or "zz" in r[1] for r in rows)


OTHER = make_upsert(
    "other-9",
    day_keys={"2026-11-18": "77" * 32},
    loyalty_hashes=["88" * 32],
    eid_tags=[{"tag": "tag-9", "identity_key": "99" * 16, "k": 10, "epoch_offset_s": 0}],
)


def test_opt_out_erases_rows_keys_hashes_and_unsent_events(tmp_path: Path) -> None:
    """After an opt-out nothing in the file or its WAL names the shopper or holds their keys."""
    db = tmp_path / "g.db"

    async def scenario() -> None:
        async with open_rig(db) as rig:
            await rig.downlink.apply_batch(
                [("profiles", profiles_msg("p", [make_upsert(), OTHER]), NOW)]
            )
            for i in range(50):
                await rig.outbox.put(
                    UpEvent.of(
                        "presence", {"shopper": "shopper-17", "i": i}, NOW, subject="shopper-17"
                    )
                )
                await rig.outbox.put(
                    UpEvent.of("presence", {"shopper": "other-9", "i": i}, NOW, subject="other-9")
                )
            before = rig.outbox.depth()
            opt_out = {"shopper": "shopper-17", "action": "opt_out"}
            changes = await rig.downlink.apply_batch([("consent", consent_msg("c1", opt_out), NOW)])
            assert changes.erased == {"shopper-17"}
            # Their 50 events are gone; the consent receipt is committed before the
            # message could be acknowledged.
            assert rig.outbox.depth() == before - 50 + 1
            await rig.outbox.flush()

    asyncio.run(scenario())
    data = file_bytes(db)
    for needle in (
        b"shopper-17",
        bytes.fromhex("ab" * 32),
        b"ab" * 32,
        b"cd" * 32,
        b"ef" * 32,
        b"12" * 16,
    ):
        assert needle not in data, needle
    assert b"other-9" in data  # the other shopper is untouched
    assert query(db, "SELECT count(*) FROM outbox WHERE subject='other-9'") == [(50,)]
    assert query(db, "SELECT count(*) FROM outbox WHERE kind='consent'") == [(1,)]


def test_profile_cache_is_bounded(tmp_path: Path) -> None:
    """Above max_shoppers the soonest-expiring profiles are evicted and reported as gone."""

    async def scenario() -> None:
        async with open_rig(tmp_path / "g.db", max_shoppers=10) as rig:
            ups = [make_upsert(f"s{i}", expires_at=NOW + 1000 + i) for i in range(15)]
            changes = await rig.downlink.apply_batch([("profiles", profiles_msg("b", ups), NOW)])
            assert changes.erased == {f"s{i}" for i in range(5)}
            assert rig.downlink.stats()["profiles"] == 10

    asyncio.run(scenario())


def test_expired_consent_erases_the_shopper(tmp_path: Path) -> None:
    """When a consent expires the sweep erases the shopper as an opt-out would."""

    async def scenario() -> None:
        async with open_rig(tmp_path / "g.db") as rig:
            up = make_upsert(consent={"scopes": ["presence"], "expires_at": NOW + 60})
            await rig.downlink.apply_batch([("profiles", profiles_msg("e", [up]), NOW)])
            rig.downlink.clock.advance(61)  # type: ignore[attr-defined]
            assert await rig.downlink.sweep_expired() == 1
            assert rig.seen[-1].erased == {"shopper-17"}

    asyncio.run(scenario())
    assert query(tmp_path / "g.db", "SELECT count(*) FROM profiles") == [(0,)]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["profiles", "consent", "inventory", "model", "x"]),
    payload=st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(
            st.sampled_from(
                ["v", "id", "upserts", "deletes", "changes", "issued_at", "items", "replace"]
            ),
            json_values,
        ).map(lambda d: json.dumps({"v": 1, **d}).encode()),
    ),
)
def test_decode_never_raises_anything_but_rejected(kind: str, payload: bytes) -> None:
    """Arbitrary bytes and JSON shapes either validate or raise DownlinkRejected, nothing else."""
    try:
        decode(kind, payload, MAX)
    except DownlinkRejected as exc:
        assert exc.reason


def inventory_msg(msg_id: str, items: Any, **extra: Any) -> bytes:
    return json.dumps({"v": 1, "id": msg_id, "items": items, **extra}).encode()


def test_inventory_fills_the_stock_table_and_bad_levels_are_dead_lettered(
    tmp_path: Path,
) -> None:
    """Levels update or replace the stock table; hostile ones are refused with a reason."""

    async def scenario() -> list[DownlinkApplied]:
        async with open_rig(tmp_path / "g.db") as rig:
            first = await rig.downlink.apply_batch(
                [
                    (
                        "inventory",
                        inventory_msg(
                            "inv-1",
                            [{"item": "196", "quantity": 14}, {"item": "4011", "quantity": 0}],
                        ),
                        NOW,
                    ),
                ]
            )
            assert first.stock == {"196": 14.0, "4011": 0.0} and not first.stock_replaced
            bad = [
                inventory_msg("inv-bad-1", [{"item": "196", "quantity": "many"}]),
                inventory_msg("inv-bad-2", [{"item": "../../etc", "quantity": 1}]),
                inventory_msg("inv-bad-3", [{"item": "1", "quantity": 1e300}]),
                inventory_msg("inv-bad-4", [{"item": "1", "quantity": 1}] * 5001),
                inventory_msg("inv-bad-5", [{"item": "1"}]),
                b'{"v": 1, "id": "inv-bad-6", "items": [',
            ]
            await rig.downlink.apply_batch([("inventory", p, NOW) for p in bad])
            assert rig.downlink.stats()["dead_lettered"] == len(bad)
            second = await rig.downlink.apply_batch(
                [
                    (
                        "inventory",
                        inventory_msg("inv-2", [{"item": "21903", "quantity": 3.5}], replace=True),
                        NOW,
                    ),
                ]
            )
            assert second.stock_replaced and second.stock == {"21903": 3.5}
            # What the decision rules load at start.
            assert await rig.writer.run(stock_rows.load_levels) == {"21903": 3.5}
            return rig.seen

    seen = asyncio.run(scenario())
    assert len(seen) == 2  # the refused batch changed nothing, so nobody was told
    assert query(tmp_path / "g.db", "SELECT item, quantity FROM stock") == [("21903", 3.5)]


def test_shape_bounds_refuse_costly_payloads_and_pass_the_largest_valid_ones() -> None:
    """Too deep, too many values or too many containers is refused before parsing; the
    largest valid messages pass, and brackets or commas inside strings do not count."""
    # The densest valid message: as many inventory items as fit under the cap.
    items = [{"item": f"{i}", "quantity": i % 7} for i in range(5000)]
    while len(dense := json.dumps({"v": 1, "id": "i", "items": items}).encode()) > MAX:
        items.pop()
    assert isinstance(decode("inventory", dense, MAX), InventoryMessage)
    page = load.profile_page(0, 10_000, load.page_upserts(), NOW)
    assert len(page) > 100 * 1024
    assert isinstance(decode("profiles", page, MAX), ProfilesMessage)
    noisy = make_upsert(attributes={"note": "[{" * 1500 + "," * 4000})
    assert decode("profiles", profiles_msg("noisy", [noisy]), MAX)

    nested: Any = {}
    for _ in range(MAX_DEPTH):
        nested = {"a": nested}
    deep = profiles_msg("deep", [make_upsert(attributes=nested)])
    wide = json.dumps({"v": 1, "id": "wide", "deletes": [0] * MAX_VALUES}).encode()
    boxes = json.dumps({"v": 1, "id": "boxes", "upserts": [{}] * MAX_CONTAINERS}).encode()
    for payload, what in ((deep, "nested deeper"), (wide, "values"), (boxes, "arrays")):
        try:
            decode("profiles", payload, MAX)
        except DownlinkRejected as exc:
            assert exc.reason.startswith("shape:") and what in exc.reason, exc.reason
        else:
            raise AssertionError(f"{what}: accepted")


class RecordingConnection:
    """The connection surface Downlink uses, recording each ack with what was on disk then."""

    def __init__(self, db: Path, expected: int) -> None:
        self.db = db
        self.expected = expected
        self.all_acked = asyncio.Event()
        self.unacked = 0
        self.reads_paused = 0
        self.handlers: list[Any] = []
        self.acks: list[tuple[bytes, int, int]] = []  # payload, applied ids, dead letters

    def acknowledge_manually(self, max_unacked: int) -> None:
        self.max_unacked = max_unacked

    def subscribe_acked(self, topic: str, handler: Any) -> None:
        self.handlers.append(handler)

    def deliver(self, topic: str, payload: bytes) -> None:
        self.unacked += 1
        self.handlers[0](Delivery(topic, payload, 1, len(self.acks) + self.unacked, 1))

    def ack(self, delivery: Delivery) -> None:
        self.unacked -= 1
        applied = query(self.db, "SELECT count(*) FROM downlink_applied")[0][0]
        dead = query(self.db, "SELECT count(*) FROM dead_letters")[0][0]
        self.acks.append((delivery.payload, applied, dead))
        if len(self.acks) >= self.expected:
            self.all_acked.set()


def test_a_message_is_acknowledged_only_once_it_is_committed(tmp_path: Path) -> None:
    """Applied, dead-lettered and duplicate messages are each acknowledged, and only after
    the transaction that keeps them is on disk (seen from another connection)."""
    db = tmp_path / "g.db"

    async def scenario() -> RecordingConnection:
        writer = SqliteWriter(db, ballast_mb=0)
        writer.start()
        outbox = Outbox(writer, STORE, OutboxSection(), ManualClock(wall=NOW))
        await outbox.open()
        commits = asyncio.create_task(outbox.run())
        conn = RecordingConnection(db, expected=4)
        dl = Downlink(
            conn,  # type: ignore[arg-type]
            STORE,
            writer,
            outbox,
            ManualClock(wall=NOW),
            DownlinkSection(max_inflight_messages=4),
            ProfilesSection(),
        )
        tasks = [asyncio.create_task(coro) for coro in dl.tasks().values()]
        try:
            topic = "retail/v1/stores/s1/down/"
            conn.deliver(topic + "profiles", profiles_msg("a"))
            conn.deliver(topic + "profiles", b"not json")
            conn.deliver(topic + "profiles", profiles_msg("a"))
            conn.deliver(topic + "consent", consent_msg("c", {"shopper": "x", "action": "opt_out"}))
            async with asyncio.timeout(10):
                await conn.all_acked.wait()
            assert dl.stats()["acked"] == 4 and conn.unacked == 0
            assert (dl.applied, dl.duplicates, sum(dl.dead_lettered.values())) == (2, 1, 1)
        finally:
            for task in [*tasks, commits]:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            writer.close()
        return conn

    conn = asyncio.run(scenario())
    # Every ack came after the commit that kept its message: by the time the first
    # was sent, the batch's ids and dead letter were already readable elsewhere.
    by_payload = {payload: (applied, dead) for payload, applied, dead in conn.acks}
    assert by_payload[profiles_msg("a")][0] >= 1
    assert by_payload[b"not json"][1] == 1
    assert by_payload[consent_msg("c", {"shopper": "x", "action": "opt_out"})][0] == 2
