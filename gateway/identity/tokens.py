"""Shopper tokens (docs/contracts.md section 2): day keys, the token of a window, the lookup table.

A shopper's app derives ``day_key = HKDF-SHA256(root_key, info="store-gateway/day/"
+ "YYYY-MM-DD")`` and broadcasts ``HMAC-SHA256(day_key, b"tok1" || window)[:8]``
for ``window = floor(unix / 900)``. A store holds day keys only (today and
tomorrow), so it can compute every opted-in shopper's token ahead of time: a
table maps the tokens of windows w-1, w and w+1 to shopper ids (``build_table``;
the shopper flow builds it one window at a time with ``window_tokens``), and
resolving an advert is one dict lookup in ``gateway/identity/resolver.py``. The
table for the next window is computed off the event loop before the window
changes and swapped in whole.

Pure: no asyncio, no I/O; time comes in as a parameter.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

WINDOW_S = 900
TOKEN_BYTES = 8
DAY_KEY_BYTES = 32
ROOT_KEY_BYTES = 32
# Windows either side of now that still resolve: a phone's clock may be a few
# minutes off, and BlueZ reports the merged device state, so an advert may carry
# the previous window's token for a moment after the change (REFERENCE.md).
WINDOW_SLACK = 1
_DAY_INFO = b"store-gateway/day/"
_TOKEN_PREFIX = b"tok1"
_EPOCH = dt.date(1970, 1, 1)


def day_key(root_key: bytes, day: dt.date) -> bytes:
    """The 32-byte key of ``day`` (UTC) for a shopper's root key."""
    if len(root_key) != ROOT_KEY_BYTES:
        raise ValueError(f"a root key is {ROOT_KEY_BYTES} bytes, not {len(root_key)}")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=DAY_KEY_BYTES,
        salt=None,  # RFC 5869: no salt = HashLen zero bytes, the same as "salt=empty"
        info=_DAY_INFO + day.isoformat().encode("ascii"),
    )
    return hkdf.derive(root_key)


def window_of(unix_s: float) -> int:
    """The token window (15 minutes) that contains ``unix_s``."""
    return int(unix_s // WINDOW_S)


def day_of_window(window: int) -> str:
    """The UTC date ("YYYY-MM-DD") a window lies in (96 windows a day, none straddles)."""
    return (_EPOCH + dt.timedelta(days=(window * WINDOW_S) // 86_400)).isoformat()


def token(day_key_: bytes, window: int) -> bytes:
    """The 8-byte token of ``window`` under a day key."""
    return hmac.digest(day_key_, _TOKEN_PREFIX + window.to_bytes(4, "big"), "sha256")[:TOKEN_BYTES]


def token_at(root_key: bytes, unix_s: float) -> bytes:
    """What a shopper's app broadcasts at ``unix_s`` (the ``store-gateway token`` command)."""
    window = window_of(unix_s)
    day = dt.date.fromisoformat(day_of_window(window))
    return token(day_key(root_key, day), window)


def table_windows(center_window: int) -> range:
    """The windows a table centred on ``center_window`` resolves."""
    return range(center_window - WINDOW_SLACK, center_window + WINDOW_SLACK + 1)


def window_tokens(keys: Iterable[tuple[str, Mapping[str, bytes]]], window: int) -> dict[bytes, str]:
    """Every shopper's token of one window -> shopper id.

    ``keys`` yields (shopper, day keys by "YYYY-MM-DD"); a shopper without a key
    for the window's day is skipped (they cannot be recognised then). One HMAC
    per shopper: run it off the event loop.
    """
    day = day_of_window(window)
    msg = _TOKEN_PREFIX + window.to_bytes(4, "big")
    digest = hmac.digest
    out: dict[bytes, str] = {}
    for shopper, day_keys in keys:
        key = day_keys.get(day)
        if key is not None:
            out[digest(key, msg, "sha256")[:TOKEN_BYTES]] = shopper
    return out


def build_table(
    keys: Iterable[tuple[str, Mapping[str, bytes]]], center_window: int
) -> dict[bytes, str]:
    """Tokens of windows ``center_window`` ± ``WINDOW_SLACK`` for every shopper -> shopper id."""
    keys = list(keys)
    table: dict[bytes, str] = {}
    for w in table_windows(center_window):
        table.update(window_tokens(keys, w))
    return table
