"""The refusal counter: a fixed-size file counting events refused while the database could not grow.

When the disk is full and shedding cannot make room, the outbox refuses
non-critical events "at the door": they never get an id, and the producer gets
``OutboxRejected``. Their number must survive a SIGKILL or a power cut, so that
HQ's loss report adds up, and it has to be made durable exactly when SQLite
cannot write. Where can a count go then?

* Not into the database. An UPDATE in place of a pre-existing row still needs
  room: in WAL mode every changed page is appended to the WAL as a new frame,
  and right after the full-disk recovery's ``wal_checkpoint(TRUNCATE)`` the WAL
  is empty, so the first frame needs a new block and fails with the same
  SQLITE_FULL. A rollback journal would need a new file.
* Not in memory only: a SIGKILL loses it. That is how health once said 12,757
  events shed while ``outbox_loss`` held 1,000.
* Into a file whose blocks were allocated in advance. Overwriting blocks a
  regular file already owns allocates nothing on ext4 (Raspberry Pi OS's root
  file system) or tmpfs, and ``fdatasync`` writes those blocks in place (plus at
  most a record in ext4's journal, which is itself allocated in advance). A
  copy-on-write file system (btrfs, ZFS) would need new blocks; the gateway does
  not run on one.

So this file (``gateway.db.refusals``, 16 KiB) is written with real zero blocks
and fsynced when the outbox opens, while there is room, and after that only
overwritten with ``pwrite`` + ``fdatasync`` before the refused producers are
told. It holds two slots written in turn, each with a generation number and a
CRC32: a write torn by a power cut damages only the slot being written, and the
other still holds the previous totals.

The totals are cumulative since the database was created and are never reset.
The outbox folds into ``outbox_loss`` (reason ``refused``) only the difference
between these totals and what the table already holds for that reason, inside
an ordinary commit: a crash before the commit folds it again later, a crash
after it finds nothing left to fold, so a count is neither lost nor doubled.
The file names the database it belongs to (``meta.database_id``): a file left
over from another database is reset, never folded into this one.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from gateway.log import get_logger

MAGIC = b"SGWREFU1"
# magic, generation, CRC32 of the body, body length.
HEADER = struct.Struct("<8sQII")
# One slot holds the whole document; two slots so that a torn write leaves the other.
SLOT_BYTES = 8192
SLOTS = 2
FILE_BYTES = SLOT_BYTES * SLOTS
# Kinds past this many, or with names longer than this (JSON-encoded), are counted
# under OTHER_KIND: together they keep the document inside one slot
# (48 x ~130 bytes < 8 KiB), and the gateway sends about a dozen kinds.
MAX_KINDS = 48
MAX_KIND_JSON_CHARS = 80
OTHER_KIND = "other_kinds"

# kind -> (priority, count, bytes)
Totals = dict[str, tuple[int, int, int]]


def refusals_path(db_path: Path) -> Path:
    """Where the counter of the database at ``db_path`` lives (beside it, like the ballast)."""
    return db_path.with_name(db_path.name + ".refusals")


class RefusalCounter:
    """Cumulative counts of refused events per kind, kept in memory and in the file.

    Used from the database writer thread only (like the connection).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.database_id = ""
        self.totals: Totals = {}
        # True while the file holds everything in ``totals``.
        self.durable = False
        self.last_error: str | None = None
        self._generation = 0
        self._log = get_logger("storage")

    # -- open / close ------------------------------------------------------------------

    def open(self, database_id: str, floor: Totals) -> str:
        """Load the file for ``database_id``, creating it if needed; how it went.

        ``floor`` is what ``outbox_loss`` already holds for reason ``refused``:
        the totals are never below it (a lost or reset file starts from there).
        Returns ``read``, ``created``, or ``reset (<why>)``; a file that cannot
        be created leaves the counter in memory only (``durable`` false) until a
        later write manages to create it.
        """
        self.database_id = database_id
        found, why = self._read()
        self.totals = dict(found) if found is not None else {}
        for kind, (prio, count, size) in floor.items():
            have = self.totals.get(kind)
            if have is None or have[1] < count:
                self.totals[kind] = (prio, count, size)
        if found is None:
            self._create()
            return "created" if why == "missing" else f"reset ({why})"
        if self.totals != found:
            self.persist()
        else:
            self.durable = True
        return "read"

    # -- counting ------------------------------------------------------------------------

    def key(self, kind: str) -> str:
        """The file's key for ``kind`` (``OTHER_KIND`` once the file has no room for it)."""
        if kind in self.totals:
            return kind
        if len(self.totals) >= MAX_KINDS or len(json.dumps(kind)) > MAX_KIND_JSON_CHARS:
            return OTHER_KIND
        return kind

    def add(self, refused: dict[str, tuple[int, int, int]]) -> bool:
        """Count ``refused`` (kind -> (priority, count, bytes)); True once it is on disk.

        The counts are taken in memory first; if the file cannot be written
        they go there with the next write that succeeds (``durable`` is false
        until then and ``last_error`` says why).
        """
        for kind, (prio, count, size) in refused.items():
            k = self.key(kind)
            _, have_n, have_b = self.totals.get(k, (prio, 0, 0))
            self.totals[k] = (prio, have_n + count, have_b + size)
        self.durable = False
        return self.persist()

    def persist(self) -> bool:
        """Write the totals over the older slot (creating the file if it is gone); True if done.

        The file is opened for each write rather than held open: opening an
        existing file allocates nothing, and nothing has to close it.
        """
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return self._create()
        except OSError as exc:
            self._failed(exc)
            return False
        generation = self._generation + 1
        try:
            if os.fstat(fd).st_size != FILE_BYTES:
                # Cut short behind our back: allocate it again in full.
                generation = 0
            else:
                _write_slot(fd, self._encode(generation), generation)
        except OSError as exc:
            self._failed(exc)
            return False
        finally:
            os.close(fd)
        if generation == 0:
            return self._create()
        self._generation = generation
        self.durable = True
        self.last_error = None
        return True

    # -- the file ------------------------------------------------------------------------

    def _encode(self, generation: int) -> bytes:
        doc = {
            "database": self.database_id,
            "refused": {k: list(v) for k, v in sorted(self.totals.items())},
        }
        body = json.dumps(doc, separators=(",", ":")).encode()
        if HEADER.size + len(body) > SLOT_BYTES:
            # key() keeps the document small enough; reaching this is a bug.
            raise ValueError(f"refusal counts do not fit a {SLOT_BYTES}-byte slot")
        head = HEADER.pack(MAGIC, generation, zlib.crc32(body), len(body))
        return (head + body).ljust(SLOT_BYTES, b"\0")

    @staticmethod
    def _decode(slot: bytes) -> tuple[int, dict[str, Any]] | None:
        if len(slot) < HEADER.size:
            return None
        magic, generation, crc, length = HEADER.unpack_from(slot)
        body = slot[HEADER.size : HEADER.size + length]
        if magic != MAGIC or len(body) != length or zlib.crc32(body) != crc:
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        return (generation, doc) if isinstance(doc, dict) else None

    def _read(self) -> tuple[Totals | None, str]:
        """The totals in the file, or None and why not."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None, "missing"
        except OSError as exc:
            return None, f"unreadable: {exc.strerror}"
        if len(data) != FILE_BYTES:
            return None, f"size {len(data)}"
        slots = [self._decode(data[i * SLOT_BYTES : (i + 1) * SLOT_BYTES]) for i in range(SLOTS)]
        valid = [s for s in slots if s is not None]
        if not valid:
            return None, "no valid slot"
        generation, doc = max(valid, key=lambda s: s[0])
        if doc.get("database") != self.database_id:
            return None, "another database"
        try:
            totals = {str(k): (int(v[0]), int(v[1]), int(v[2])) for k, v in doc["refused"].items()}
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            return None, "bad document"
        self._generation = generation
        return totals, "read"

    def _create(self) -> bool:
        """Allocate the whole file with real blocks and write the totals; True on success.

        An existing file is overwritten in place (its blocks are kept: on a full
        disk they may be the only ones to be had), both slots zeroed first so
        that no older generation outlives the reset.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            self._failed(exc)
            return False
        try:
            # Real zero blocks, not a sparse file or a bare size: later overwrites
            # must find their blocks already allocated.
            os.pwrite(fd, b"\0" * FILE_BYTES, 0)
            if os.fstat(fd).st_size > FILE_BYTES:
                os.ftruncate(fd, FILE_BYTES)
            _write_slot(fd, self._encode(1), 1)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            self._failed(exc)
            return False
        finally:
            os.close(fd)
        self._generation = 1
        self.durable = True
        self.last_error = None
        return True

    def _failed(self, exc: OSError) -> None:
        self.durable = False
        self.last_error = exc.strerror or str(exc)
        self._log.error("refusal_count_not_durable", path=str(self.path), error=self.last_error)


def _write_slot(fd: int, slot: bytes, generation: int) -> None:
    """Overwrite the slot of ``generation`` (they alternate) and wait for the disk."""
    written = os.pwrite(fd, slot, (generation % SLOTS) * SLOT_BYTES)
    if written != len(slot):
        raise OSError(0, f"short write: {written} of {len(slot)} bytes")
    os.fdatasync(fd)


def _fsync_dir(path: Path) -> None:
    """Make a new file's directory entry durable too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
