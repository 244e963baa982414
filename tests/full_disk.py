"""A real file system that really fills up: a small tmpfs mounted for one test.

``PRAGMA max_page_count`` caps the database but not the WAL, the ballast or any
other file, so it cannot show what still works when ``write()`` itself fails
with ENOSPC. Mounting needs root: a developer's run as another user skips these
tests; as root (CI) a mount that fails is a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# Written in pieces of one page: the last piece that fits leaves less than a page free.
FILL_CHUNK = 4096


@contextlib.contextmanager
def small_filesystem(where: Path, size_kib: int) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB mounted at ``where`` (created) for the duration."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs as root: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], capture_output=True, check=False)


def resize(where: Path, size_kib: int) -> None:
    """Give the mounted tmpfs a new size (space comes back, or goes)."""
    subprocess.run(
        ["mount", "-o", f"remount,size={size_kib}k", str(where)], capture_output=True, check=True
    )


def fill(where: Path) -> Path:
    """Write a filler file until the file system refuses another byte; its path."""
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (FILL_CHUNK, 512, 1):
            while True:
                try:
                    os.write(fd, b"\xff" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def free_bytes(where: Path) -> int:
    st = os.statvfs(where)
    return st.f_bavail * st.f_frsize
