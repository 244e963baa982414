"""The POS acceptance scenarios at the lane: real kernel ptys, the shipped dialects and captures.

Each lane here is what the daemon runs: a ``SerialPosLane`` read thread feeding
the lane's tokenizer and dialect engine, with the events handed to a sink.
"""

from __future__ import annotations

import json
import random
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import SystemClock
from gateway.sensing import pos_dialect as pd
from gateway.sensing.pos_serial import LaneSettings, SerialPosLane
from gateway.testing.pty_lane import PtyLane
from gateway.testing.receipts import GROCERIES, contract, journal_receipt

POS_DIR = Path(__file__).resolve().parents[2] / "firmware_configs" / "pos"
DIALECTS = ("epson-grocery", "journal-dvr", "eu-escpos")


class Collector:
    """The lane's sink: every event the read thread handed over, in order."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, lane: str, events: list[Any]) -> None:
        with self._cond:
            self.events.extend(events)
            self._cond.notify_all()

    def ended(self) -> list[pd.Transaction]:
        with self._cond:
            return [e.txn for e in self.events if isinstance(e, pd.TransactionEnded)]

    def wait_ended(self, n: int, timeout_s: float = 20.0) -> list[pd.Transaction]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                ended = [e.txn for e in self.events if isinstance(e, pd.TransactionEnded)]
                left = deadline - time.monotonic()
                if len(ended) >= n or left <= 0:
                    return ended
                self._cond.wait(left)


def _lane(link: Path, dialect: pd.Dialect, sink: Collector, **kw: Any) -> SerialPosLane:
    settings = LaneSettings(
        lane="lane-1", port=str(link), reconnect_min_s=0.02, reconnect_max_s=0.1, **kw
    )
    lane = SerialPosLane(settings, pd.DialectParser(dialect), sink, SystemClock())
    lane.start_thread()
    return lane


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyLane]:
    p = PtyLane(tmp_path / "ttyPOS")
    yield p
    p.close()


def _chunks(rng: random.Random) -> Iterator[int]:
    while True:
        yield rng.randint(1, 7)


def _wait(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("name", DIALECTS)
def test_shipped_capture_through_a_pty_in_random_chunks(name: str, pty: PtyLane) -> None:
    """Each shipped capture, written in random 1-7 byte chunks, gives exactly its receipts."""
    dialect = pd.load_dialect(POS_DIR / f"{name}.toml")
    capture = (POS_DIR / "captures" / f"{name}.bin").read_bytes()
    expected = json.loads((POS_DIR / "captures" / f"{name}.expected.json").read_text())
    sink = Collector()
    lane = _lane(pty.link, dialect, sink)
    try:
        _wait(lambda: lane.stats()["connected"])
        pty.write(capture, chunk_sizes=_chunks(random.Random(name)))
        _wait(lambda: lane.stats()["bytes"] >= len(capture))
        # The last receipt ends at its own end marker or cut: nothing is left open.
        got = sink.wait_ended(len(expected))
    finally:
        lane.stop()
    assert [contract(t) for t in got] == expected
    kinds = {e.change for e in sink.events if isinstance(e, pd.TransactionChanged)}
    assert {"started", "item"} <= kinds


def _journal_receipt(number: int) -> tuple[bytes, bytes]:
    """A journal-dvr sale with a loyalty scan and a card line, cut in two after its items."""
    lines = journal_receipt(
        number, list(GROCERIES[:5]), loyalty="9900011122233", card="4111111111111111"
    )
    return b"".join(lines[:4]), b"".join(lines[4:])


def test_unplugged_twenty_times_mid_receipt(pty: PtyLane) -> None:
    """The device vanishes and returns 20 times mid-receipt: every cut-off receipt is
    marked incomplete once, the reader recovers each time, nothing is duplicated."""
    dialect = pd.load_dialect(POS_DIR / "journal-dvr.toml")
    sink = Collector()
    lane = _lane(pty.link, dialect, sink)
    try:
        for i in range(20):
            _wait(lambda: lane.stats()["connected"])
            before = lane.stats()["bytes"]
            head, tail = _journal_receipt(1000 + i)
            pty.write(head)
            goal = before + len(head)
            _wait(lambda g=goal: lane.stats()["bytes"] >= g)
            pty.unplug()
            _wait(lambda: not lane.stats()["connected"])
            pty.replug()
            _wait(lambda: lane.stats()["connected"])
            # The rest of the cut-off receipt arrives after the replug, then a whole one.
            pty.write(tail + b"".join(journal_receipt(2000 + i, list(GROCERIES[:3]))))
            got = sink.wait_ended(2 * (i + 1))
            assert len(got) == 2 * (i + 1), f"round {i}: {len(got)} transactions"
    finally:
        lane.stop()
    stats = lane.stats()
    assert stats["reconnects"] == 20
    ended = sink.ended()
    statuses = [(t.number, t.status) for t in ended]
    assert statuses == [
        x
        for i in range(20)
        for x in ((f"{1000 + i:06d}", "incomplete"), (f"{2000 + i:06d}", "complete"))
    ]
    assert all(t.reason == "disconnect" for t in ended if t.status == "incomplete")
    # What the cut-off receipt had before the unplug is kept: its first three items.
    assert all(len(t.items) == 3 for t in ended if t.status == "incomplete")
    assert all(len(t.items) == 3 and t.totals_match for t in ended if t.status == "complete")


@pytest.mark.parametrize("name", DIALECTS)
def test_ten_megabytes_of_noise_between_receipts(name: str, pty: PtyLane) -> None:
    """10 MB of random bytes between receipts: every receipt after the noise is recovered
    exactly, and the tokenizer's buffer stays bounded throughout."""
    dialect = pd.load_dialect(POS_DIR / f"{name}.toml")
    capture = (POS_DIR / "captures" / f"{name}.bin").read_bytes()
    expected = json.loads((POS_DIR / "captures" / f"{name}.expected.json").read_text())
    sink = Collector()
    lane = _lane(pty.link, dialect, sink)
    parser = lane._parser  # the lane's own parser, to watch its buffer
    rng = random.Random(name)
    peak = 0
    try:
        _wait(lambda: lane.stats()["connected"])
        pty.write(capture)
        sink.wait_ended(len(expected))
        for _ in range(10 * 16):
            pty.write(rng.randbytes(64 * 1024), timeout_s=30)
            peak = max(peak, parser.tokenizer.buffered_bytes)
        pty.write(capture)
        total = 2 * len(capture) + 10 * 1024 * 1024
        _wait(lambda: lane.stats()["bytes"] >= total, timeout_s=120)
        ended = sink.wait_ended(2 * len(expected))
    finally:
        lane.stop()
    before = [contract(t) for t in ended[: len(expected)]]
    assert before == expected
    # The noise may leave one transaction of its own (a random start marker is
    # vanishingly unlikely, but the noise can end one the first capture left open);
    # what matters: the capture after the noise comes back whole.
    after = [contract(t) for t in ended[-len(expected) :]]
    assert after == expected
    assert peak <= 1024
    assert parser.tokenizer.buffered_bytes <= 1024


def test_tokenizer_memory_is_bounded_under_noise() -> None:
    """The tokenizer holds a bounded number of bytes whatever the noise (tracemalloc)."""
    dialect = pd.load_dialect(POS_DIR / "epson-grocery.toml")
    parser = pd.DialectParser(dialect)
    rng = random.Random(7)
    tracemalloc.start()
    try:
        parser.feed(rng.randbytes(64 * 1024), 0.0)
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(64):
            parser.feed(rng.randbytes(64 * 1024), 0.0)
        now, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert now - base < 256 * 1024
