"""One checkout lane's serial feed: read a POS tap on a thread, hand the parser's events on.

One job: keep the lane's port open and every byte it delivers flowing into the
lane's parser (the tokenizer and dialect engine, behind ``LaneParser``), with
the parser's events going to ``sink``. Nothing here knows ESC/POS or receipts.

The port is a device path (prefer ``/dev/serial/by-id/...``, which survives USB
re-enumeration) or a pyserial URL (``socket://host:port`` for a raw TCP serial
server such as ser2net, ``rfc2217://host:port`` for an RFC 2217 one). It is a
passive tap: flow control stays off (XON/XOFF would swallow 0x11/0x13 bytes of
binary ESC/POS), and DTR/RTS stay asserted as pyserial leaves them on open, so a
sender that waits for "ready" keeps sending. A device path is opened
``exclusive`` (pyserial takes an ``flock``): a second gateway or a forgotten
``screen`` session that read the same port would each get part of the stream.
The lock is advisory: programs that do not flock (getty, ModemManager) still can.

Reads block (pyserial's ``read`` with ``read_timeout_s``), so they run on a
thread of their own, named ``pos-<lane>``, and the parser is only ever called
from it. ``sink(lane, events)`` is called from that thread too; the composition
root makes it hop onto the event loop.

When the device goes (pyserial raises ``SerialException`` or ``OSError``: a pty
whose master closed gives EIO, an unplugged USB adapter "device reports
readiness to read but returned no data", a TCP server that closed "socket
disconnected"), the parser is told (``interrupt(ts, "disconnect")``, so the
receipt in progress ends incomplete), the port is closed, and it is reopened
after a capped, jittered delay (``reconnect_min_s`` doubling to
``reconnect_max_s``; each wait is half to all of the delay) until it comes
back. A missing path or a refused connection is the same loop. The delay
returns to the minimum only after a connection that delivered bytes or lasted
``STABLE_CONNECTION_S``, so a port that opens and fails at once is not hammered.
One log line per disconnect, one for the first failed reopen, one per
reconnect; the failed retries between are counted (``open_failures``).

Health (``stats()``) includes a wrong-baud check: a lane set to the wrong rate
reads garbage (see ``gateway.testing.uart``), which the parser counts as
non-printable text and which rarely contains a line feed. Nothing read from
the port (it may carry card digits) is ever logged or kept in the stats, and
exception messages that might hold it (the sink's, the parser's) are reduced to
their type.

Stopping is bounded: reads time out every ``read_timeout_s`` and the backoff
waits on an event, so the thread ends within about ``read_timeout_s`` plus the
time to close the port (pyserial's ``socket://`` and ``rfc2217://`` close sleep
0.3 s). Opening a URL whose host does not answer blocks in pyserial's connect
for up to 5 s (its ``POLL_TIMEOUT``), and a stop waits for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import serial

from gateway.clock import Clock
from gateway.errors import ConfigError
from gateway.log import get_logger


class LaneParser(Protocol):
    """A lane's byte-stream parser (tokenizer plus dialect engine); called only from the
    lane's read thread, with wall-clock timestamps."""

    def feed(self, data: bytes, ts: float) -> list[Any]: ...

    def tick(self, now: float) -> list[Any]: ...

    def interrupt(self, ts: float, reason: str) -> list[Any]: ...

    def counts(self) -> tuple[int, int, int]:
        """Cumulative (printable text bytes, other text bytes incl. garbage, line feeds)."""
        ...


# sink(lane, events): called from the read thread with every non-empty event list.
EventSink = Callable[[str, list[Any]], None]


@dataclass(frozen=True)
class LaneSettings:
    """One lane's port and timing, built by the composition root from the config."""

    lane: str
    # A device path (prefer /dev/serial/by-id/...) or socket://host:port, rfc2217://host:port.
    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    # flock the device so no second reader splits the stream; device paths only.
    exclusive: bool = True
    # How long one read waits for bytes: bounds how late a stop request is seen.
    read_timeout_s: float = 0.05
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 10.0
    # How often parser.tick runs when no bytes come (receipts end on silence).
    tick_interval_s: float = 0.25
    wrong_baud_window_s: float = 1.0


# The wrong-baud check. Below 128 text bytes in the window the ratio says little (one
# receipt header with a logo escape can be half "other"). Receipt text is printable
# ASCII with a line feed every 32-64 columns (58/80 mm paper), so well over 0.75 of it
# is printable and 1024 text bytes without a line feed is no receipt; the same text
# misread at twice or half the baud rate is 30-45 % printable (gateway.testing.uart).
WRONG_BAUD_MIN_TEXT_BYTES = 128
WRONG_BAUD_MIN_PRINTABLE = 0.75
WRONG_BAUD_MAX_TEXT_WITHOUT_LF = 1024
# bytes_per_s covers this many seconds, kept in 1 s buckets: long enough to smooth a
# receipt's burst, short enough to show a lane that just went quiet.
RATE_WINDOW_S = 10.0
# A connection that lasted this long (or delivered bytes) proved the device works, so
# the next reconnect starts again from reconnect_min_s; shorter ones keep doubling.
STABLE_CONNECTION_S = 1.0
# pyserial's socket:// in_waiting is a 0/1 readiness flag, not a byte count, so a
# socket read asks for this much and returns what came within read_timeout_s.
SOCKET_READ_SIZE = 4096
# A raising sink is logged at most this often (with the count), not once per event list.
SINK_ERROR_LOG_INTERVAL_S = 10.0
# Longest exception text kept in a log line or in stats.
DETAIL_MAX_CHARS = 200

# What an unplugged device, a missing path, a held lock or a dead TCP server raises.
# SerialException derives from OSError; both are named for the reader. in_waiting on a
# pty whose master closed raises a bare OSError (EIO), not pyserial's exception.
PORT_ERRORS: tuple[type[Exception], ...] = (serial.SerialException, OSError)


def _detail(exc: BaseException) -> str:
    return str(exc)[:DETAIL_MAX_CHARS]


def _is_url(port: str) -> bool:
    return "://" in port


class SerialPosLane:
    """Reads one lane's port on its own thread and keeps it open; see the module docstring."""

    def __init__(
        self,
        settings: LaneSettings,
        parser: LaneParser,
        sink: EventSink,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._parser = parser
        self._sink = sink
        self._clock = clock
        self._log = get_logger("pos").bind(lane=settings.lane, port=settings.port)
        self._is_socket = settings.port.lower().startswith("socket://")
        try:
            self._new_port()  # bad parameters fail here, not on the thread
        except (ValueError, serial.SerialException) as exc:
            raise ConfigError([(f"lanes[{settings.lane}]", str(exc))]) from exc
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_exit: Callable[[], None] | None = None
        self.failure: BaseException | None = None  # what killed the thread (a parser bug)
        # Health, written by the read thread.
        now = clock.monotonic()
        self._started_at = now
        self._connected = False
        self._opens = 0
        self._reconnects = 0
        self._disconnects = 0
        self._open_failures = 0
        self._parser_errors = 0
        self._last_error: str | None = None
        self._last_error_type: str | None = None
        self._last_error_detail: str | None = None
        self._bytes = 0
        self._events = 0
        self._sink_errors = 0
        self._sink_errors_logged = 0
        self._sink_error_logged_at: float | None = None
        self._last_byte_at: float | None = None
        self._last_line_at: float | None = None
        self._last_parser_call = now
        self._down_since: float | None = None
        # The wrong-baud window: (monotonic, printable, other) per read, under _lock.
        self._lock = threading.Lock()
        self._window: deque[tuple[float, int, int]] = deque()
        self._window_printable = 0
        self._window_other = 0
        self._text_since_lf = 0
        self._counts = (0, 0, 0)
        self._wrong_baud = False
        self._wrong_baud_episodes = 0
        # Bytes per whole monotonic second, for bytes_per_s; under _lock.
        self._rate: deque[list[int]] = deque()

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        """Read the lane until cancelled; cancellation stops the thread and joins it off
        the loop. Re-raises what killed the thread (a parser bug) if it dies; returns if
        ``stop()`` was called from elsewhere."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ended.done():
                ended.set_result(None)

        def on_exit() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(wake)

        self._on_exit = on_exit
        self.start_thread()
        try:
            await ended
        finally:
            self.stop()
            thread = self._thread
            if thread is not None:
                await asyncio.to_thread(thread.join)
        if self.failure is not None:
            raise self.failure

    def start_thread(self) -> None:
        """Start the read thread (tests and bench drive it without asyncio)."""
        if self._thread is not None:
            raise RuntimeError(f"lane {self._settings.lane} already started")
        self._started_at = self._clock.monotonic()
        self._thread = threading.Thread(
            target=self._thread_main, name=f"pos-{self._settings.lane}", daemon=False
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the read thread to stop; thread-safe, returns at once (``join`` waits)."""
        self._stop.set()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the read thread to end; True when it has (or never started)."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    # -- the read thread ------------------------------------------------------------

    def _thread_main(self) -> None:
        self._log.info("pos_lane_starting", baudrate=self._settings.baudrate)
        try:
            self._supervise()
        except BaseException as exc:  # noqa: BLE001 - handed to run(), which re-raises it
            # Only the type: a parser's message may quote the bytes it choked on.
            self.failure = exc
            self._log.error("pos_lane_failed", error=type(exc).__name__)
        finally:
            self._connected = False
            self._log.info("pos_lane_stopped", **self._counters())
            if self._on_exit is not None:
                self._on_exit()

    def _supervise(self) -> None:
        """Open, read until the port is lost, wait, reopen; until stopped."""
        s = self._settings
        delay_s = s.reconnect_min_s
        wait_s = 0.0
        failed_in_row = 0
        while not self._stop.is_set():
            if wait_s > 0 and self._idle(wait_s):
                return
            port = self._try_open()
            if port is None:
                failed_in_row += 1
                wait_s = random.uniform(delay_s / 2, delay_s)  # half to all: no lockstep
                delay_s = min(delay_s * 2, s.reconnect_max_s)
                if failed_in_row == 1:
                    self._log.warning(
                        "pos_open_failed",
                        error=self._last_error_type,
                        detail=self._last_error_detail,
                        retry_in_s=round(wait_s, 2),
                        open_failures=self._open_failures,
                    )
                continue
            self._connected_now(failed_in_row)
            failed_in_row = 0
            try:
                stable = self._read_until_lost(port)
            finally:
                self._connected = False
                self._close_quietly(port)
            if stable:
                delay_s = s.reconnect_min_s
            wait_s = random.uniform(delay_s / 2, delay_s)
            delay_s = min(delay_s * 2, s.reconnect_max_s)

    # Ports are typed serial.Serial, what serial_for_url is declared to return. A
    # socket:// URL really gives protocol_socket.Serial (another SerialBase), which has the
    # same open/read/in_waiting/close; SerialBase itself declares neither open nor in_waiting.
    def _new_port(self) -> serial.Serial:
        s = self._settings
        port = serial.serial_for_url(s.port, do_not_open=True)
        port.baudrate = s.baudrate
        port.bytesize = s.bytesize
        port.parity = s.parity
        port.stopbits = s.stopbits
        port.xonxoff = False
        port.rtscts = False
        port.dsrdtr = False
        port.timeout = s.read_timeout_s
        if not _is_url(s.port):
            port.exclusive = s.exclusive
        return port

    def _try_open(self) -> serial.Serial | None:
        try:
            port = self._new_port()
            port.open()
        except PORT_ERRORS as exc:
            self._open_failures += 1
            self._last_error_type = type(exc).__name__
            self._last_error_detail = _detail(exc)
            self._last_error = f"{type(exc).__name__}: {_detail(exc)}"
            return None
        return port

    def _connected_now(self, failed_attempts: int) -> None:
        now = self._clock.monotonic()
        self._opens += 1
        with self._lock:
            self._window.clear()
            self._window_printable = self._window_other = 0
            self._text_since_lf = 0
        self._counts = self._parser.counts()
        self._connected = True
        if self._opens == 1:
            self._log.info("pos_connected", failed_attempts=failed_attempts)
            return
        self._reconnects += 1
        down_for_s = None if self._down_since is None else round(now - self._down_since, 2)
        self._log.info(
            "pos_reconnected",
            failed_attempts=failed_attempts,
            down_for_s=down_for_s,
            reconnects=self._reconnects,
        )

    def _read_until_lost(self, port: serial.Serial) -> bool:
        """Read and feed until the port fails or a stop is asked for; True when the
        connection proved the device works (bytes came, or it lasted)."""
        s = self._settings
        opened_at = self._clock.monotonic()
        got_bytes = False
        while not self._stop.is_set():
            try:
                size = SOCKET_READ_SIZE if self._is_socket else max(1, port.in_waiting)
                data = port.read(size)
            except PORT_ERRORS as exc:
                self._lost(exc)
                lasted_s = self._clock.monotonic() - opened_at
                return got_bytes or lasted_s >= STABLE_CONNECTION_S
            now = self._clock.monotonic()
            if data:
                got_bytes = True
                self._last_parser_call = now
                self._deliver(self._parse(self._parser.feed, data, self._clock.wall()))
                self._account(data, now)
            elif now - self._last_parser_call >= s.tick_interval_s:
                self._last_parser_call = now
                self._deliver(self._parse(self._parser.tick, self._clock.wall()))
        # Stopping with the port up: the receipt in progress ends here, incomplete.
        self._deliver(self._parse(self._parser.interrupt, self._clock.wall(), "stop"))
        return True

    def _lost(self, exc: BaseException) -> None:
        self._connected = False
        self._disconnects += 1
        self._down_since = self._clock.monotonic()
        self._last_error_type = type(exc).__name__
        self._last_error = f"{type(exc).__name__}: {_detail(exc)}"
        self._log.warning(
            "pos_disconnected",
            error=type(exc).__name__,
            detail=_detail(exc),
            disconnects=self._disconnects,
            bytes=self._bytes,
        )
        self._deliver(self._parse(self._parser.interrupt, self._clock.wall(), "disconnect"))

    def _close_quietly(self, port: serial.Serial) -> None:
        try:
            port.close()
        except PORT_ERRORS as exc:
            self._log.debug("pos_close_failed", error=type(exc).__name__, detail=_detail(exc))

    def _idle(self, wait_s: float) -> bool:
        """Wait between reopen attempts, ticking the parser; True when a stop came."""
        clock = self._clock
        deadline = clock.monotonic() + wait_s
        tick_s = self._settings.tick_interval_s
        while True:
            left_s = deadline - clock.monotonic()
            if left_s <= 0:
                return self._stop.is_set()
            if self._stop.wait(min(left_s, tick_s)):
                return True
            now = clock.monotonic()
            if now - self._last_parser_call >= tick_s:
                self._last_parser_call = now
                self._deliver(self._parse(self._parser.tick, clock.wall()))

    def _parse(self, method: Callable[..., list[Any]], *args: Any) -> list[Any]:
        """Call the parser; a parser bug is counted and logged, and the lane reads on.

        The parsers are pure and fuzzed, so this should never fire; if it does,
        one bad receipt must not stop the till's feed (nor restart the daemon
        on every burst of line noise). The parser's state is then suspect, so the
        receipt in progress is ended as incomplete and the tokenizer reset.
        """
        try:
            return method(*args)
        except Exception as exc:  # noqa: BLE001 - counted, logged by type; the lane goes on
            self._parser_errors += 1
            # Only the type: a parser's message may quote the bytes it choked on.
            self._log.error(
                "pos_parser_failed", error=type(exc).__name__, parser_errors=self._parser_errors
            )
            if method == self._parser.interrupt:
                return []
            try:
                return self._parser.interrupt(self._clock.wall(), "parser_error")
            except Exception:  # noqa: BLE001 - nothing more to do than count it
                return []

    def _deliver(self, events: list[Any]) -> None:
        if not events:
            return
        self._events += len(events)
        try:
            self._sink(self._settings.lane, events)
        except Exception as exc:  # noqa: BLE001 - counted and logged; the lane keeps reading
            self._sink_errors += 1
            now = self._clock.monotonic()
            last = self._sink_error_logged_at
            if last is None or now - last >= SINK_ERROR_LOG_INTERVAL_S:
                # Only the type: the message and traceback may hold receipt content.
                self._log.error(
                    "pos_sink_failed",
                    error=type(exc).__name__,
                    errors=self._sink_errors - self._sink_errors_logged,
                    sink_errors=self._sink_errors,
                )
                self._sink_error_logged_at = now
                self._sink_errors_logged = self._sink_errors

    # -- health accounting (read thread) --------------------------------------------

    def _account(self, data: bytes, now: float) -> None:
        self._bytes += len(data)
        self._last_byte_at = now
        printable, other, lfs = self._parser.counts()
        old_p, old_o, old_lf = self._counts
        self._counts = (printable, other, lfs)
        d_printable = max(0, printable - old_p)
        d_other = max(0, other - old_o)
        text = d_printable + d_other
        if lfs > old_lf:
            self._last_line_at = now
            # The parser's counts do not say where in this read the last line feed
            # was; the raw bytes after the last LF bound the text that followed it.
            self._text_since_lf = min(text, len(data) - 1 - data.rfind(b"\n"))
        else:
            self._text_since_lf += text
        second = int(now)
        with self._lock:
            if self._rate and self._rate[-1][0] == second:
                self._rate[-1][1] += len(data)
            else:
                self._rate.append([second, len(data)])
                while self._rate and self._rate[0][0] <= second - RATE_WINDOW_S:
                    self._rate.popleft()
            if text:
                self._window.append((now, d_printable, d_other))
                self._window_printable += d_printable
                self._window_other += d_other
            self._prune_window(now)
            window_p, window_o = self._window_printable, self._window_other
        self._judge_baud(window_p, window_o)

    def _prune_window(self, now: float) -> None:
        """Drop window entries older than wrong_baud_window_s (caller holds _lock)."""
        horizon = now - self._settings.wrong_baud_window_s
        window = self._window
        while window and window[0][0] < horizon:
            _, p, o = window.popleft()
            self._window_printable -= p
            self._window_other -= o

    def _judge_baud(self, printable: int, other: int) -> None:
        text = printable + other
        if text < WRONG_BAUD_MIN_TEXT_BYTES:
            return  # too little to say either way: the flag stays as it is
        ratio = printable / text
        bad = (
            ratio < WRONG_BAUD_MIN_PRINTABLE
            or self._text_since_lf >= WRONG_BAUD_MAX_TEXT_WITHOUT_LF
        )
        if bad and not self._wrong_baud:
            self._wrong_baud = True
            self._wrong_baud_episodes += 1
            self._log.warning(
                "pos_wrong_baud_suspected",
                baudrate=self._settings.baudrate,
                printable_ratio=round(ratio, 3),
                text_bytes_without_lf=self._text_since_lf,
                window_s=self._settings.wrong_baud_window_s,
                episodes=self._wrong_baud_episodes,
            )
        elif not bad and self._wrong_baud:
            self._wrong_baud = False
            self._log.info("pos_wrong_baud_cleared", printable_ratio=round(ratio, 3))

    # -- health ---------------------------------------------------------------------

    def _counters(self) -> dict[str, int]:
        return {
            "opens": self._opens,
            "reconnects": self._reconnects,
            "disconnects": self._disconnects,
            "open_failures": self._open_failures,
            "parser_errors": self._parser_errors,
            "bytes": self._bytes,
            "events": self._events,
            "sink_errors": self._sink_errors,
            "wrong_baud_episodes": self._wrong_baud_episodes,
        }

    def stats(self) -> dict[str, Any]:
        """The lane's health; safe from any thread. Counters and ages only: nothing read
        from the port. Ages are None until the first byte / line feed; ``garbage_ratio``
        is None while the wrong-baud window holds no text."""
        now = self._clock.monotonic()
        with self._lock:
            self._prune_window(now)
            printable, other = self._window_printable, self._window_other
            recent = sum(n for second, n in self._rate if second > now - RATE_WINDOW_S)
        span_s = max(1.0, min(RATE_WINDOW_S, now - self._started_at))
        last_byte, last_line = self._last_byte_at, self._last_line_at
        return {
            "lane": self._settings.lane,
            "port": self._settings.port,
            "connected": self._connected,
            **self._counters(),
            "last_error": self._last_error,
            "bytes_per_s": round(recent / span_s, 1),
            "last_byte_age_s": None if last_byte is None else round(now - last_byte, 2),
            "last_line_age_s": None if last_line is None else round(now - last_line, 2),
            "garbage_ratio": (
                None if printable + other == 0 else round(other / (printable + other), 3)
            ),
            "wrong_baud_suspected": self._wrong_baud,
        }
