"""A real kernel pty standing in for a checkout lane's serial device, unpluggable on demand.

``PtyLane(link)`` opens a pty pair and points ``link`` (a symlink, as udev makes
``/dev/serial/by-id/...``) at the slave; the lane under test opens ``link`` with
pyserial like a USB adapter, and the test writes the printer's bytes into the
master. ``unplug()`` behaves like pulling the adapter: the reader's next read
fails (EIO) and reopening fails (the link is gone) until ``replug()``.

What the kernel does that a test has to know:

- pyserial's ``open()`` flushes the input queue (``tcflush(TCIFLUSH)``), so bytes
  written before the reader has opened are lost, as on a real port: wait for the
  lane to report ``connected`` before writing.
- Closing the master hangs the slave up and discards what the reader has not
  read yet; ``unplug()`` mid-stream loses the bytes still in flight, so a test
  that counts bytes waits until they arrived before unplugging.
- The pty buffers only a few KB (about 18 KB here) while nobody reads. The
  master is non-blocking and ``write()`` waits for room with ``select``, so a
  reader that stops reading makes ``write()`` raise ``TimeoutError`` after
  ``timeout_s`` instead of hanging the test; partial writes and EAGAIN are
  retried.
- The slave is set raw (``tty.setraw``) as soon as it exists and this object
  keeps it open: before the reader opens it, the default line discipline would
  echo input back into the master and turn CR into LF. pyserial sets raw mode
  again when it opens the port. ptys ignore baud and parity (see
  ``gateway.testing.uart`` for wrong-baud bytes).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import threading
import time
import tty
from collections.abc import Iterable, Iterator, Sequence
from itertools import cycle
from pathlib import Path

# How long write() waits for the pty to take more bytes before deciding the reader
# is not reading: far longer than a healthy reader needs, far shorter than a test's timeout.
WRITE_TIMEOUT_S = 10.0


class PtyLane:
    """One pty pair behind a stable symlink; writes go in through the master."""

    def __init__(self, link: Path) -> None:
        self.link = Path(link)
        self._lock = threading.Lock()  # one writer at a time; unplug waits for a chunk
        self._master: int | None = None
        self._slave: int | None = None
        self.plugged = False
        self._plug()

    # -- the device -----------------------------------------------------------------

    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        name = os.ttyname(slave)
        # Swap the link atomically so a reader never sees a half-made one.
        tmp = self.link.with_name(f".{self.link.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(name)
        os.replace(tmp, self.link)
        self._master, self._slave = master, slave
        self.plugged = True

    def unplug(self) -> None:
        """Pull the device: the reader's next read fails with EIO; the link disappears."""
        with self._lock:
            if not self.plugged:
                return
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self._close_fds()
            self.plugged = False

    def replug(self) -> None:
        """Plug a device back in: a fresh pty behind the same link."""
        with self._lock:
            if self.plugged:
                raise RuntimeError("replug() while plugged: unplug() first")
            self._plug()

    def close(self) -> None:
        """Unplug for good (idempotent)."""
        self.unplug()

    def _close_fds(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def __enter__(self) -> PtyLane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bytes in -------------------------------------------------------------------

    def write(
        self,
        data: bytes,
        chunk_sizes: Iterable[int] | None = None,
        pause_s: float = 0.0,
        *,
        timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        """Write ``data`` through the master; returns once the kernel has all of it.

        ``chunk_sizes`` splits the data into separate writes with ``pause_s``
        between them, as a slow printer port or a network hop delivers it: a list
        is cycled, an iterator (an endless random one, say) is consumed as needed.
        Raises ``TimeoutError`` when the pty has had no room for ``timeout_s``
        (the reader is not reading) and ``OSError`` (EIO) when it is unplugged.
        """
        for i, chunk in enumerate(_chunks(data, chunk_sizes)):
            if i and pause_s > 0:
                time.sleep(pause_s)
            with self._lock:
                self._write_all(chunk, timeout_s)

    def _write_all(self, chunk: bytes, timeout_s: float) -> None:
        view = memoryview(chunk)
        deadline = time.monotonic() + timeout_s
        while view:
            if self._master is None:
                raise OSError(errno.EIO, f"pty behind {self.link} is unplugged")
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                written = 0
            view = view[written:]
            if not view:
                return
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise TimeoutError(f"pty behind {self.link} took no bytes for {timeout_s} s")
            select.select([], [self._master], [], min(left_s, 0.1))


def _chunks(data: bytes, chunk_sizes: Iterable[int] | None) -> Iterator[bytes]:
    """Split ``data``: a sequence of sizes is cycled; an iterator (say an endless random
    one) is consumed as it goes, and if it runs out the rest goes in one write."""
    if chunk_sizes is None:
        yield data
        return
    if isinstance(chunk_sizes, Sequence):
        if not chunk_sizes:
            raise ValueError("chunk_sizes is empty")
        sizes: Iterator[int] = cycle(chunk_sizes)
    else:
        sizes = iter(chunk_sizes)
    pos = 0
    while pos < len(data):
        size = next(sizes, len(data) - pos)
        if size <= 0:
            raise ValueError("chunk sizes must be positive")
        yield data[pos : pos + size]
        pos += size
