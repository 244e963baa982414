"""A checkout lane's serial reader, through real kernel ptys and a real loopback TCP server.

No part of pyserial is mocked: the lane opens a pty slave behind a symlink (as
udev makes /dev/serial/by-id/...) or a socket:// URL, and the test writes
through the pty master or the server's socket. The parser is a small recording
fake (the tokenizer and dialect engine are tested on their own). Waits poll
``stats()`` or the fake parser with generous deadlines; nothing asserts a count
after a sleep. Where the behaviour is about time (the wrong-baud window, the
sink-error log interval) the lane gets a ``ManualClock`` the test moves, so the
result does not depend on the machine's load.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.clock import Clock, ManualClock, SystemClock
from gateway.sensing.pos_serial import LaneSettings, SerialPosLane
from gateway.testing.pty_lane import PtyLane
from gateway.testing.uart import misread
from gateway.testing.waiting import EVENTUALLY_S, wait_until

# A distinctive payload standing in for a card number on a receipt.
CARD_LINE = b"VISA 4929 1234 5678 9012 ZQXJ-SECRET\n"
# 9600 baud 8N1: ten bits per byte.
LINE_BYTES_PER_S = 9600 / 10


def receipt_text(items: int = 40) -> bytes:
    """Plain receipt text as a printer at the right baud would send it (CR LF lines)."""
    lines = [b"CORNER GROCERY #12", b"LANE 3   CASHIER 07"]
    lines += [b"%-26s%9.2f" % (b"ITEM %03d SPARKLING WATER" % i, 1.37 * i) for i in range(items)]
    lines += [b"TOTAL %29.2f" % 123.45, b"THANK YOU"]
    return b"".join(line + b"\r\n" for line in lines)


class RecordingParser:
    """A LaneParser that records what reaches it and returns each completed line as an event.

    ``counts()`` is realistic: printable ASCII (0x20-0x7E) is printable text, any
    other byte except CR and LF is other text, LF is a line feed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = bytearray()
        self._partial = bytearray()
        self.lines: list[bytes] = []
        self.ticks = 0
        self.interrupts: list[str] = []
        self.threads: set[str] = set()
        self._printable = self._other = self._lfs = 0

    def feed(self, data: bytes, ts: float) -> list[Any]:
        self.threads.add(threading.current_thread().name)
        events: list[Any] = []
        with self._lock:
            self._data += data
            for byte in data:
                if byte == 0x0A:
                    self._lfs += 1
                    events.append(("line", bytes(self._partial), ts))
                    self.lines.append(bytes(self._partial))
                    self._partial.clear()
                    continue
                if 0x20 <= byte <= 0x7E:
                    self._printable += 1
                elif byte != 0x0D:
                    self._other += 1
                self._partial.append(byte)
        return events

    def tick(self, now: float) -> list[Any]:
        self.ticks += 1
        return []

    def interrupt(self, ts: float, reason: str) -> list[Any]:
        with self._lock:
            self.interrupts.append(reason)
            partial = bytes(self._partial)
            self._partial.clear()
        return [("incomplete", reason, ts)] if partial else []

    def counts(self) -> tuple[int, int, int]:
        return (self._printable, self._other, self._lfs)

    @property
    def data(self) -> bytes:
        with self._lock:
            return bytes(self._data)


def wait_for(what: str, predicate: Callable[[], object], timeout_s: float = EVENTUALLY_S) -> None:
    """Poll until ``predicate()``; fails the test when it has not come by the deadline."""
    wait_until(predicate, timeout_s, what)


def lane_settings(port: str | Path, **overrides: Any) -> LaneSettings:
    """Fast reconnects and ticks for tests; everything else at the defaults."""
    values: dict[str, Any] = {
        "lane": "lane3",
        "port": str(port),
        "reconnect_min_s": 0.02,
        "reconnect_max_s": 0.2,
        "tick_interval_s": 0.05,
    }
    values.update(overrides)
    return LaneSettings(**values)


LaneFactory = Callable[..., tuple[SerialPosLane, RecordingParser]]


@pytest.fixture
def start_lane() -> Iterator[LaneFactory]:
    """Start lanes on their threads; every one is stopped and joined at the end (the
    threads are not daemons, so one left running would hang the test run)."""
    started: list[SerialPosLane] = []

    def start(
        port: str | Path,
        *,
        sink: Callable[[str, list[Any]], None] | None = None,
        clock: Clock | None = None,
        **overrides: Any,
    ) -> tuple[SerialPosLane, RecordingParser]:
        parser = RecordingParser()
        settings = lane_settings(port, **overrides)
        sink = sink or (lambda _lane, _ev: None)
        lane = SerialPosLane(settings, parser, sink, clock or SystemClock())
        lane.start_thread()
        started.append(lane)
        return lane, parser

    yield start
    for lane in started:
        lane.stop()
    for lane in started:
        assert lane.join(EVENTUALLY_S), "a lane's read thread did not stop"
        assert lane.failure is None


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyLane]:
    device = PtyLane(tmp_path / "usb-Prolific_PL2303-if00-port0")
    yield device
    device.close()


def connected(lane: SerialPosLane) -> Callable[[], bool]:
    return lambda: lane.stats()["connected"]


# -- bytes in -------------------------------------------------------------------------


def test_random_small_chunks_arrive_intact_and_in_order(
    pty: PtyLane, start_lane: LaneFactory
) -> None:
    """Every byte value, written in random 1-7 byte chunks, reaches the parser unchanged
    and in order (raw mode: no CR/LF translation, no XON/XOFF, no stripping)."""
    lane, parser = start_lane(pty.link)
    wait_for("connected", connected(lane))
    rng = random.Random(7)
    payload = bytes(rng.randrange(256) for _ in range(20_000)) + bytes(range(256))
    pty.write(payload, chunk_sizes=[rng.randint(1, 7) for _ in range(500)])
    wait_for("all bytes", lambda: len(parser.data) >= len(payload))
    assert parser.data == payload
    assert parser.threads == {"pos-lane3"}


def test_a_write_larger_than_the_pty_buffer_arrives_intact(
    pty: PtyLane, start_lane: LaneFactory
) -> None:
    """230 KB in one write (the pty holds about 18 KB) neither deadlocks nor loses a byte."""
    lane, parser = start_lane(pty.link)
    wait_for("connected", connected(lane))
    payload = receipt_text() * 150
    assert len(payload) > 200_000
    pty.write(payload)
    wait_for("all bytes", lambda: len(parser.data) >= len(payload))
    assert parser.data == payload
    assert lane.stats()["events"] == payload.count(b"\n")


def test_pty_write_times_out_instead_of_hanging_when_nobody_reads(pty: PtyLane) -> None:
    """With no reader the pty fills up and write() raises TimeoutError after its bound."""
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        pty.write(b"x" * 1_000_000, timeout_s=0.3)
    took_s = time.monotonic() - start
    # Not before its bound (the write's own monotonic deadline, so this cannot flake);
    # a write that hung would never return, which the generous upper bound catches.
    assert 0.3 <= took_s < EVENTUALLY_S


def test_an_idle_lane_ticks_the_parser(pty: PtyLane, start_lane: LaneFactory) -> None:
    """With no bytes coming, parser.tick keeps running, and never more often than once
    per tick_interval_s."""
    # Four times the read timeout (0.05 s), so that ticking after every empty read
    # would break the bound below.
    interval_s = 0.2
    lane, parser = start_lane(pty.link, tick_interval_s=interval_s)
    wait_for("connected", connected(lane))
    started = time.monotonic()
    before = parser.ticks
    wait_for("three idle ticks", lambda: parser.ticks >= before + 3)
    ticks = parser.ticks - before
    took_s = time.monotonic() - started
    # Each tick is decided at least interval_s after the one before (on the monotonic
    # clock the test reads too); only the first one counted may have been decided
    # before `started`. Load makes took_s longer, which never makes the bound wrong.
    assert ticks <= took_s / interval_s + 2


# -- the device comes and goes ---------------------------------------------------------


def test_lane_survives_twenty_unplugs_mid_receipt(pty: PtyLane, start_lane: LaneFactory) -> None:
    """Unplugged mid-line and replugged 20 times: each unplug interrupts the parser once
    ("disconnect"), the lane reconnects every time, and no byte is lost or duplicated."""
    lane, parser = start_lane(pty.link)
    wait_for("connected", connected(lane))
    expected = b""
    for i in range(20):
        head = b"ITEM %02d HALF A LI" % i
        pty.write(head)
        expected += head
        wait_for("head of the line", lambda: parser.data == expected)  # noqa: B023
        pty.unplug()
        wait_for("disconnect", lambda: parser.interrupts.count("disconnect") == i + 1)  # noqa: B023
        assert not lane.stats()["connected"]
        pty.replug()
        wait_for(
            "reconnect",
            lambda: lane.stats()["connected"] and lane.stats()["reconnects"] == i + 1,  # noqa: B023
        )
        tail = b"NE %02d\n" % i
        pty.write(tail)
        expected += tail
    # Bytes reach the parser in order, so a duplicate of anything before would arrive
    # before this last line: once it is there, nothing is still on its way.
    pty.write(b"END\n")
    expected += b"END\n"
    wait_for("the last line", lambda: parser.data.endswith(b"END\n"))
    assert parser.data == expected
    assert parser.interrupts == ["disconnect"] * 20
    stats = lane.stats()
    assert stats["reconnects"] == 20
    assert stats["disconnects"] == 20
    assert stats["opens"] == 21
    assert stats["connected"]
    # Each unplug ended the line in progress as an incomplete event, then the tail
    # made a line of its own: 20 incomplete + 20 lines, and the END line.
    assert stats["events"] == 41
    assert lane.failure is None


def most_attempts_within(elapsed_s: float, min_s: float, max_s: float) -> int:
    """How many opens fit in ``elapsed_s`` when the n-th wait lasts at least half of
    min(min_s * 2**(n-1), max_s): the first open is at once, each next one after a wait."""
    attempts, waited_s, delay_s = 1, 0.0, min_s
    while waited_s + delay_s / 2 <= elapsed_s:
        waited_s += delay_s / 2
        attempts += 1
        delay_s = min(delay_s * 2, max_s)
    return attempts


def test_missing_device_at_start_backs_off_then_connects(
    tmp_path: Path, start_lane: LaneFactory
) -> None:
    """A lane whose device is absent retries with growing delays, logs the first failure
    only, and connects once the device appears."""
    link = tmp_path / "usb-late-if00-port0"
    min_s, max_s = 0.02, 0.32
    with capture_logs() as logs:
        started = time.monotonic()
        lane, parser = start_lane(link, reconnect_min_s=min_s, reconnect_max_s=max_s)
        wait_for("six failed opens", lambda: lane.stats()["open_failures"] >= 6)
        stats = lane.stats()
        took_s = time.monotonic() - started
        assert not stats["connected"]
        # Each wait is half to all of a delay doubling from min_s to max_s, so n failed
        # opens need at least the sum of the first n - 1 half-delays (0.31 s for six;
        # without backoff 0.05 s). A bound on what fits in took_s: load only adds time.
        assert stats["open_failures"] <= most_attempts_within(took_s, min_s, max_s)
        assert "No such file" in stats["last_error"]
        device = PtyLane(link)
        try:
            wait_for("connected", connected(lane))
            device.write(b"HELLO\n")
            wait_for("a line", lambda: parser.lines == [b"HELLO"])
        finally:
            device.close()
        lane.stop()
        assert lane.join(EVENTUALLY_S)
    events = [entry["event"] for entry in logs]
    assert events.count("pos_open_failed") == 1
    assert events.count("pos_connected") == 1
    connected_log = next(e for e in logs if e["event"] == "pos_connected")
    assert connected_log["failed_attempts"] == lane.stats()["open_failures"]
    stats = lane.stats()
    assert (stats["opens"], stats["reconnects"]) == (1, 0)


def test_second_lane_on_a_held_port_fails_to_open(pty: PtyLane, start_lane: LaneFactory) -> None:
    """The exclusive lock keeps a second reader off the port: its opens fail and are
    counted, it does not crash, and the first lane keeps every byte."""
    first, first_parser = start_lane(pty.link, lane="lane3")
    wait_for("first connected", connected(first))
    second, second_parser = start_lane(pty.link, lane="lane3b")
    wait_for("second's failed opens", lambda: second.stats()["open_failures"] >= 3)
    assert "exclusively lock" in second.stats()["last_error"]
    pty.write(receipt_text())
    wait_for("the receipt", lambda: first_parser.data == receipt_text())
    assert second_parser.data == b""
    assert not second.stats()["connected"]
    assert second.stats()["opens"] == 0
    assert second.join(0.0) is False  # still alive and retrying


class TcpSerialServer:
    """A serial device server on 127.0.0.1 (like ser2net in raw mode) that can go away and
    come back on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self.listen()

    def listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(1)
        listener.settimeout(EVENTUALLY_S)
        self.port = listener.getsockname()[1]
        self._listener = listener

    def accept(self) -> None:
        assert self._listener is not None
        self._conn, _ = self._listener.accept()

    def send(self, data: bytes) -> None:
        assert self._conn is not None
        self._conn.sendall(data)

    def close(self) -> None:
        for sock in (self._conn, self._listener):
            if sock is not None:
                sock.close()
        self._conn = self._listener = None


def test_socket_url_reads_and_reconnects_when_the_server_returns(
    start_lane: LaneFactory,
) -> None:
    """socket://127.0.0.1:port: lines arrive; the server going away is a disconnect,
    refused reconnects are counted, and the lane reconnects when it listens again."""
    server = TcpSerialServer()
    try:
        lane, parser = start_lane(f"socket://127.0.0.1:{server.port}")
        server.accept()
        # pyserial's open() drains what already arrived, so send only once connected.
        wait_for("connected", connected(lane))
        server.send(b"RECEIPT 1001\r\nTOTAL 4.20\r\n")
        wait_for("two lines", lambda: len(parser.lines) == 2)
        server.close()
        wait_for("disconnect", lambda: parser.interrupts == ["disconnect"])
        wait_for("refused reconnects", lambda: lane.stats()["open_failures"] >= 2)
        assert "refused" in lane.stats()["last_error"].lower()
        server.listen()
        server.accept()
        wait_for("reconnected", lambda: lane.stats()["connected"])
        server.send(b"RECEIPT 1002\r\n")
        wait_for("third line", lambda: len(parser.lines) == 3)
    finally:
        server.close()
    assert parser.lines == [b"RECEIPT 1001\r", b"TOTAL 4.20\r", b"RECEIPT 1002\r"]
    assert lane.stats()["reconnects"] == 1


# -- wrong baud -----------------------------------------------------------------------


def feed_in_line_time(
    pty: PtyLane,
    lane: SerialPosLane,
    clock: ManualClock,
    data: bytes,
    seconds: float,
    *,
    sent_bytes: int | None = None,
) -> Iterator[float]:
    """Write ``data`` over and over in 32-byte chunks for ``seconds`` of line time, as a
    9600 baud line delivers ``sent_bytes`` (what the printer sent; ``data`` may be its
    misread form, longer or shorter); yields the line time so far after each chunk.

    ``clock`` is the lane's: it moves by each chunk's line time, and each chunk is read
    by the lane before the next is written, so the lane sees the bytes of a real line
    at its real rate, however loaded this machine is.
    """
    chunk = 32
    chunk_s = (sent_bytes or len(data)) / LINE_BYTES_PER_S * chunk / len(data)
    line_s = 0.0
    while True:
        for pos in range(0, len(data), chunk):
            piece = data[pos : pos + chunk]
            read_before = lane.stats()["bytes"]
            clock.advance(chunk_s)  # the chunk's bytes took this long on the line
            pty.write(piece)
            want = read_before + len(piece)
            wait_for("the chunk read", lambda: lane.stats()["bytes"] >= want)  # noqa: B023
            line_s += chunk_s
            yield line_s
            if line_s >= seconds:
                return


@pytest.mark.parametrize("read_baud", [19200, 4800])
def test_wrong_baud_is_suspected_within_two_seconds(
    pty: PtyLane, start_lane: LaneFactory, read_baud: int
) -> None:
    """A 9600 baud printer read at twice or half the rate raises wrong_baud_suspected
    within 2 s (of line time) of the garbage starting, with one warning for the episode."""
    text = receipt_text()
    garbage = misread(text, 9600, read_baud)
    clock = ManualClock()
    flagged_at_s: float | None = None
    with capture_logs() as logs:
        lane, _parser = start_lane(pty.link, baudrate=read_baud, clock=clock)
        wait_for("connected", connected(lane))
        for line_s in feed_in_line_time(pty, lane, clock, garbage, 5.0, sent_bytes=len(text)):
            if flagged_at_s is None and lane.stats()["wrong_baud_suspected"]:
                flagged_at_s = line_s
            if flagged_at_s is not None and line_s >= flagged_at_s + 0.5:
                break  # the flag held for 0.5 s while garbage kept coming
        stats = lane.stats()
        lane.stop()
        assert lane.join(EVENTUALLY_S)
    assert flagged_at_s is not None, "no wrong baud flag in 5 s of garbage"
    assert flagged_at_s < 2.0
    assert stats["wrong_baud_suspected"]
    assert stats["wrong_baud_episodes"] == 1
    assert stats["garbage_ratio"] > 0.25
    warnings = [e for e in logs if e["event"] == "pos_wrong_baud_suspected"]
    assert len(warnings) == 1
    assert warnings[0]["baudrate"] == read_baud


def test_correct_baud_text_never_raises_the_flag(pty: PtyLane, start_lane: LaneFactory) -> None:
    """Receipt text at the right rate, judged over several windows, never looks like garbage."""
    clock = ManualClock()
    lane, _parser = start_lane(pty.link, clock=clock)
    wait_for("connected", connected(lane))
    seen = [lane.stats() for _ in feed_in_line_time(pty, lane, clock, receipt_text(), 2.5)]
    assert not any(s["wrong_baud_suspected"] for s in seen)
    assert seen[-1]["wrong_baud_episodes"] == 0
    ratios = [s["garbage_ratio"] for s in seen if s["garbage_ratio"] is not None]
    assert ratios, "the window never held any text: the check was never exercised"
    assert max(ratios) == 0.0
    assert seen[-1]["bytes_per_s"] > 300


def test_wrong_baud_flag_clears_when_text_is_healthy_again(
    pty: PtyLane, start_lane: LaneFactory
) -> None:
    """After garbage, a window of good text clears the flag; the episode count stays."""
    clock = ManualClock()
    lane, _parser = start_lane(pty.link, wrong_baud_window_s=0.5, clock=clock)
    wait_for("connected", connected(lane))
    garbage = misread(receipt_text(10), 9600, 19200)
    pty.write(garbage)
    wait_for("wrong baud flag", lambda: lane.stats()["wrong_baud_suspected"])
    wait_for("all the garbage read", lambda: lane.stats()["bytes"] == len(garbage))
    clock.advance(0.6)  # the garbage leaves the 0.5 s window
    pty.write(receipt_text(10))
    wait_for("flag cleared", lambda: not lane.stats()["wrong_baud_suspected"])
    assert lane.stats()["wrong_baud_episodes"] == 1


def test_misread_at_the_right_baud_is_the_identity() -> None:
    """The UART model delivers what was sent when both ends agree on the rate."""
    data = bytes(range(256)) + receipt_text()
    assert misread(data, 9600, 9600, seed=3) == data
    assert misread(data, 115200, 115200, seed=4) == data
    assert misread(data, 9600, 19200) != data


# -- the sink, stopping and asyncio ----------------------------------------------------


def test_a_raising_sink_does_not_kill_the_lane(pty: PtyLane, start_lane: LaneFactory) -> None:
    """Every sink call raises: the errors are counted and logged by type, the lane keeps
    reading, and no log line carries the receipt."""

    def broken_sink(lane: str, events: list[Any]) -> None:
        raise ValueError(f"cannot handle {events!r}")

    with capture_logs() as logs:
        # The clock stands still, so all six errors fall in one log interval
        # (SINK_ERROR_LOG_INTERVAL_S) however long this machine takes to send them.
        lane, parser = start_lane(pty.link, sink=broken_sink, clock=ManualClock())
        wait_for("connected", connected(lane))
        for i in range(5):
            pty.write(b"LINE %d\n" % i)
            wait_for("line", lambda: len(parser.lines) == i + 1)  # noqa: B023
        pty.write(CARD_LINE)
        wait_for("card line", lambda: len(parser.lines) == 6)
        stats = lane.stats()
        lane.stop()
        assert lane.join(EVENTUALLY_S)
    assert stats["connected"]
    assert stats["sink_errors"] == 6
    assert stats["events"] == 6
    assert lane.failure is None
    failures = [e for e in logs if e["event"] == "pos_sink_failed"]
    assert len(failures) == 1  # rate-limited: one line per interval, with the count
    assert failures[0]["error"] == "ValueError"
    assert b"ZQXJ" not in json.dumps(logs, default=str).encode()


@pytest.mark.parametrize("state", ["connected", "backing_off"])
def test_stop_ends_the_thread_promptly(
    tmp_path: Path, pty: PtyLane, start_lane: LaneFactory, state: str
) -> None:
    """stop() ends the read thread without waiting for bytes that do not come, nor out
    a long backoff (15 to 30 s here)."""
    if state == "connected":
        lane, _ = start_lane(pty.link)
        wait_for("connected", connected(lane))
    else:
        lane, _ = start_lane(tmp_path / "absent", reconnect_min_s=30.0, reconnect_max_s=60.0)
        wait_for("a failed open", lambda: lane.stats()["open_failures"] == 1)
    lane.stop()
    # EVENTUALLY_S is below the shortest backoff wait (half of 30 s), and a read without
    # a timeout never returns: ending by then means stop cut the wait short, with no
    # latency figure that a loaded machine could miss (how soon is bench/ material).
    assert lane.join(EVENTUALLY_S)
    assert not lane.stats()["connected"]


def test_run_is_cancellable_under_asyncio(pty: PtyLane) -> None:
    """run() reads on a named non-daemon thread, feeds the loop through a thread-safe sink,
    and on cancel stops and joins the thread (off the loop) without waiting for bytes."""
    parser = RecordingParser()

    async def main() -> tuple[list[Any], float, threading.Thread]:
        loop = asyncio.get_running_loop()
        received: list[Any] = []
        two_lines = asyncio.Event()

        def on_loop(events: list[Any]) -> None:
            received.extend(events)
            if len(received) >= 2:
                two_lines.set()

        def sink(lane_id: str, events: list[Any]) -> None:
            loop.call_soon_threadsafe(on_loop, events)

        lane = SerialPosLane(lane_settings(pty.link), parser, sink, SystemClock())
        task = asyncio.create_task(lane.run(), name="pos-lane3")
        await asyncio.to_thread(wait_for, "connected", connected(lane))
        (thread,) = [t for t in threading.enumerate() if t.name == "pos-lane3"]
        assert not thread.daemon
        await asyncio.to_thread(pty.write, b"SUBTOTAL 9.99\nTOTAL 9.99\nPARTIAL")
        await two_lines.wait()
        start = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        took_s = time.monotonic() - start
        return received, took_s, thread

    received, took_s, thread = asyncio.run(asyncio.wait_for(main(), 20))
    assert took_s < EVENTUALLY_S  # generous: a join that waited for bytes would never end
    assert not thread.is_alive()
    assert [e[0] for e in received] == ["line", "line", "incomplete"]
    assert parser.interrupts == ["stop"]


def test_stats_and_logs_never_hold_the_bytes_read(pty: PtyLane, start_lane: LaneFactory) -> None:
    """stats() and the log carry counters, ages and errors, never the payload, even right
    after the card line arrived and the device was pulled mid-line."""
    with capture_logs() as logs:
        lane, parser = start_lane(pty.link)
        wait_for("connected", connected(lane))
        pty.write(receipt_text(3) + CARD_LINE + CARD_LINE[:20])
        wait_for("card line", lambda: parser.data.endswith(CARD_LINE[:20]))
        connected_stats = lane.stats()
        pty.unplug()
        wait_for("disconnect", lambda: parser.interrupts == ["disconnect"])
        stats = lane.stats()
        lane.stop()
        assert lane.join(EVENTUALLY_S)
    for snapshot in (connected_stats, stats):
        dumped = json.dumps(snapshot)
        assert "ZQXJ" not in dumped
        assert "4929" not in dumped
    assert b"ZQXJ" not in json.dumps(logs, default=str).encode()
    assert set(stats) >= {
        "lane",
        "port",
        "connected",
        "opens",
        "reconnects",
        "open_failures",
        "last_error",
        "bytes",
        "bytes_per_s",
        "last_byte_age_s",
        "last_line_age_s",
        "garbage_ratio",
        "wrong_baud_suspected",
        "wrong_baud_episodes",
        "events",
        "sink_errors",
    }
    assert stats["bytes"] == len(receipt_text(3) + CARD_LINE + CARD_LINE[:20])
    assert stats["last_error"].startswith("SerialException") or "Errno 5" in stats["last_error"]
    assert 0 <= stats["last_byte_age_s"] < EVENTUALLY_S
    assert 0 <= stats["last_line_age_s"] < EVENTUALLY_S
    assert [e["event"] for e in logs if e["event"] == "pos_disconnected"] == ["pos_disconnected"]
