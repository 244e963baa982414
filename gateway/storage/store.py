"""The SQLite database and its single writer thread.

Every write goes through one thread fed by a queue (the datasette pattern), so
there is never lock contention and the outbox can assign sequence numbers
without races. Reads that must see the latest writes go through the same
thread. The connection runs in WAL mode with ``synchronous=FULL``: a commit is
on the disk before anyone is told it happened, and callers batch their work
into few commits (group commit) to pay for the fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from gateway.errors import StorageError, StorageFullError
from gateway.log import get_logger
from gateway.storage.migrations import migrations

T = TypeVar("T")
SQLITE_FULL = 13
# Keep the WAL from growing without bound between checkpoints (bytes).
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024
_STOP = object()


def is_full_error(exc: BaseException) -> bool:
    """True when SQLite said the database or disk is full."""
    code: int | None = getattr(exc, "sqlite_errorcode", None)  # sqlite3.Error, Python 3.11+
    if code is not None:
        return code & 0xFF == SQLITE_FULL
    return isinstance(exc, sqlite3.Error) and "full" in str(exc).lower()


def open_connection(path: Path, max_size_mb: float = 0) -> sqlite3.Connection:
    """A connection configured the way every gateway connection must be."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is fsynced before it returns, so an acknowledged event
    # survives a power cut, not only a crash (NORMAL may lose the last commits).
    conn.execute("PRAGMA synchronous=FULL")
    # Erased rows (opt-out, delivered events) are overwritten, not just unlinked.
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    conn.execute("PRAGMA foreign_keys=ON")
    if max_size_mb > 0:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = max(16, int(max_size_mb * 1024 * 1024 // page_size))
        conn.execute(f"PRAGMA max_page_count={pages}")
    return conn


class SqliteWriter:
    """Owns the one read-write connection and the thread that uses it."""

    def __init__(self, path: Path, *, max_size_mb: float = 0, ballast_mb: float = 0) -> None:
        self.path = Path(path)
        self.max_size_mb = max_size_mb
        self.ballast_path = self.path.with_name(self.path.name + ".ballast")
        self.ballast_bytes = int(ballast_mb * 1024 * 1024)
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._log = get_logger("storage")

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Open the database, apply migrations and start the writer thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = open_connection(self.path, self.max_size_mb)
            migrations.apply(Database(conn))
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {self.path}: {exc}") from exc
        self._conn = conn
        self.ensure_ballast()
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Finish queued jobs, checkpoint and close."""
        if self._thread is not None:
            self._jobs.put(_STOP)
            self._thread.join(timeout_s)
            self._thread = None
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None

    # -- work ----------------------------------------------------------------------

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        """Run ``fn(conn)`` on the writer thread; the future holds its result."""
        fut: Future[T] = Future()
        if self._thread is None:
            fut.set_exception(StorageError("the database is closed"))
            return fut
        self._jobs.put((fn, fut))
        return fut

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Await ``fn(conn)`` run on the writer thread."""
        return await asyncio.wrap_future(self.submit(fn))

    def _run(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn(conn)
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                err: StorageError = (
                    StorageFullError(str(exc)) if is_full_error(exc) else StorageError(str(exc))
                )
                err.__cause__ = exc
                fut.set_exception(err)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    # -- disk full -----------------------------------------------------------------

    def ensure_ballast(self) -> bool:
        """Create the ballast file when there is room for it twice over; True if present."""
        if self.ballast_bytes <= 0:
            return False
        if self.ballast_path.exists():
            return True
        try:
            st = os.statvfs(self.path.parent)
            if st.f_bavail * st.f_frsize < 2 * self.ballast_bytes:
                return False
            with open(self.ballast_path, "wb") as f:
                # Real blocks, not a sparse file: it must give space back when deleted.
                chunk = b"\0" * (1024 * 1024)
                remaining = self.ballast_bytes
                while remaining > 0:
                    f.write(chunk[: min(len(chunk), remaining)])
                    remaining -= len(chunk)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            self._log.warning(
                "ballast_not_created", path=str(self.ballast_path), error=exc.strerror
            )
            with contextlib.suppress(OSError):
                self.ballast_path.unlink()
            return False
        return True

    def release_ballast(self) -> bool:
        """Delete the ballast file to give SQLite room; True if there was one."""
        try:
            self.ballast_path.unlink()
        except FileNotFoundError:
            return False
        self._log.warning("ballast_released", path=str(self.ballast_path), bytes=self.ballast_bytes)
        return True


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back if the body or the COMMIT raises.

    A COMMIT that fails (SQLITE_FULL) leaves the transaction open in SQLite, so
    the rollback covers that case too.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any (a failed ROLLBACK leaves nothing to undo)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def ping(conn: sqlite3.Connection) -> None:
    """The cheapest statement: proof that the writer thread answers (the watchdog's check)."""
    conn.execute("SELECT 1").fetchone()


def checkpoint(conn: sqlite3.Connection) -> None:
    """Move the WAL into the database and truncate it (frees disk after deletes)."""
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def integrity_check(path: Path) -> str:
    """``PRAGMA integrity_check`` on a fresh connection: 'ok' when the file is sound."""
    conn = sqlite3.connect(str(path))
    try:
        return ";".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()
