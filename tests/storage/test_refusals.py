"""The refusal counter file: durable counts in blocks allocated in advance, torn writes, owner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.storage.refusals import (
    FILE_BYTES,
    MAX_KINDS,
    OTHER_KIND,
    SLOT_BYTES,
    RefusalCounter,
)
from tests.full_disk import fill, free_bytes, small_filesystem

DB_ID = "0123456789abcdef"


def opened(path: Path, database_id: str = DB_ID, floor: dict | None = None) -> RefusalCounter:
    counter = RefusalCounter(path)
    counter.open(database_id, floor or {})
    return counter


def test_counts_add_up_and_survive_a_reopen(tmp_path: Path) -> None:
    """Counts added in several writes are all there when a new counter reads the file."""
    path = tmp_path / "gw.db.refusals"
    counter = opened(path)
    assert counter.add({"telemetry": (1, 3, 300)})
    assert counter.add({"telemetry": (1, 2, 200), "presence": (2, 1, 90)})
    again = opened(path)
    assert again.totals == {"telemetry": (1, 5, 500), "presence": (2, 1, 90)}
    assert again.durable


def test_writes_overwrite_the_same_allocated_blocks(tmp_path: Path) -> None:
    """The file is allocated in full at creation; writes never change its size or blocks."""
    path = tmp_path / "gw.db.refusals"
    counter = opened(path)
    before = os.stat(path)
    assert before.st_size == FILE_BYTES
    assert before.st_blocks * 512 >= FILE_BYTES, "sparse: later writes would allocate"
    for i in range(200):
        assert counter.add({f"kind_{i % 20}": (1, 1, 100)})
    after = os.stat(path)
    assert (after.st_size, after.st_blocks, after.st_ino) == (
        before.st_size,
        before.st_blocks,
        before.st_ino,
    )


def test_counts_are_written_on_a_file_system_with_no_byte_free(tmp_path: Path) -> None:
    """With the file system full (a new file cannot get one byte), counts still reach the file."""
    with small_filesystem(tmp_path / "fs", 256) as fs:
        path = fs / "gw.db.refusals"
        counter = opened(path)
        fill(fs)
        assert free_bytes(fs) == 0
        with pytest.raises(OSError):
            (fs / "probe").write_bytes(b"x")
        for _ in range(50):
            assert counter.add({"telemetry": (1, 10, 1000)}), counter.last_error
        assert opened(path).totals == {"telemetry": (1, 500, 50_000)}


def test_a_torn_write_leaves_the_previous_totals(tmp_path: Path) -> None:
    """A slot damaged mid-write (power cut) is ignored and the other slot's totals are read."""
    path = tmp_path / "gw.db.refusals"
    counter = opened(path)
    counter.add({"telemetry": (1, 1, 100)})
    counter.add({"telemetry": (1, 1, 100)})
    latest = counter._generation  # which slot the last write went to
    with open(path, "r+b") as f:
        f.seek((latest % 2) * SLOT_BYTES + 40)
        f.write(b"garbage")
    assert opened(path).totals == {"telemetry": (1, 1, 100)}


def test_a_file_of_another_database_is_reset_to_what_the_table_holds(tmp_path: Path) -> None:
    """A counter left by another database is not taken over: totals restart from the table."""
    path = tmp_path / "gw.db.refusals"
    opened(path, database_id="another").add({"telemetry": (1, 99, 9900)})
    counter = RefusalCounter(path)
    outcome = counter.open(DB_ID, {"presence": (2, 4, 400)})
    assert outcome == "reset (another database)"
    assert counter.totals == {"presence": (2, 4, 400)}
    assert opened(path).totals == {"presence": (2, 4, 400)}


def test_a_lost_file_starts_from_what_the_table_holds(tmp_path: Path) -> None:
    """Without a file the totals are the table's (never below what was already folded)."""
    path = tmp_path / "gw.db.refusals"
    counter = RefusalCounter(path)
    assert counter.open(DB_ID, {"telemetry": (1, 7, 700)}) == "created"
    assert counter.totals == {"telemetry": (1, 7, 700)}
    assert path.stat().st_size == FILE_BYTES


def test_kinds_beyond_the_slots_room_are_counted_together(tmp_path: Path) -> None:
    """Past MAX_KINDS distinct kinds the rest are counted under one key, and nothing is lost."""
    path = tmp_path / "gw.db.refusals"
    counter = opened(path)
    for i in range(MAX_KINDS + 10):
        assert counter.add({f"kind_{i}": (2, 1, 10)})
    assert counter.add({"k" * 200: (2, 1, 10)})
    totals = opened(path).totals
    assert len(totals) == MAX_KINDS + 1
    assert totals[OTHER_KIND] == (2, 11, 110)
    assert sum(n for _, n, _ in totals.values()) == MAX_KINDS + 11


def test_a_counter_that_cannot_write_keeps_counting_in_memory(tmp_path: Path) -> None:
    """A file that cannot be created leaves durable false, counts in memory, and the next
    write that can reach the file carries them all."""
    where = tmp_path / "missing-dir"
    counter = RefusalCounter(where / "gw.db.refusals")
    counter.open(DB_ID, {})
    assert not counter.durable
    assert not counter.add({"telemetry": (1, 2, 200)})
    assert counter.last_error
    where.mkdir()
    assert counter.add({"telemetry": (1, 1, 100)})
    assert opened(where / "gw.db.refusals").totals == {"telemetry": (1, 3, 300)}
