"""Shopper tokens: the vector of docs/contracts.md section 2, windows, day boundaries,
the lookup table."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from gateway.identity.tokens import (
    WINDOW_S,
    build_table,
    day_key,
    day_of_window,
    token,
    token_at,
    window_of,
)

ROOT = bytes(range(32))
VECTOR_AT = 1_795_000_000  # 2026-11-18 11:06:40 UTC


def keys_for(root: bytes, *days: str) -> dict[str, bytes]:
    return {d: day_key(root, dt.date.fromisoformat(d)) for d in days}


def test_contract_test_vector() -> None:
    """Root key 00..1f at unix 1795000000 gives the token docs/contracts.md section 2 publishes."""
    assert token_at(ROOT, VECTOR_AT).hex() == "5e4041bd37d2e8ef"


def test_token_changes_every_window_and_only_then() -> None:
    """The token is constant within a 15-minute window and changes at its edge."""
    start = window_of(VECTOR_AT) * WINDOW_S
    assert token_at(ROOT, start) == token_at(ROOT, start + WINDOW_S - 1)
    assert token_at(ROOT, start) != token_at(ROOT, start + WINDOW_S)


def test_windows_never_straddle_a_day() -> None:
    """Every window lies inside one UTC day, so one day key computes it."""
    midnight = int(dt.datetime(2026, 11, 19, tzinfo=dt.UTC).timestamp())
    assert day_of_window(window_of(midnight - 1)) == "2026-11-18"
    assert day_of_window(window_of(midnight)) == "2026-11-19"


def test_root_key_length_is_checked() -> None:
    """A root key that is not 32 bytes is refused, not silently derived from."""
    with pytest.raises(ValueError, match="32 bytes"):
        day_key(b"short", dt.date(2026, 11, 18))


def test_table_resolves_previous_current_and_next_window() -> None:
    """The table maps the tokens of w-1, w and w+1 to the shopper, and nothing else."""
    w = window_of(VECTOR_AT)
    table = build_table([("s1", keys_for(ROOT, "2026-11-18"))], w)
    k = day_key(ROOT, dt.date(2026, 11, 18))
    for offset in (-1, 0, 1):
        assert table[token(k, w + offset)] == "s1"
    assert token(k, w + 2) not in table
    assert token(k, w - 2) not in table
    assert len(table) == 3


def test_table_uses_the_next_days_key_across_midnight() -> None:
    """At 23:50 the next window belongs to tomorrow and resolves with tomorrow's key."""
    before_midnight = int(dt.datetime(2026, 11, 18, 23, 50, tzinfo=dt.UTC).timestamp())
    w = window_of(before_midnight)
    keys = keys_for(ROOT, "2026-11-18", "2026-11-19")
    table = build_table([("s1", keys)], w)
    assert table[token_at(ROOT, before_midnight + WINDOW_S)] == "s1"
    assert day_of_window(w + 1) == "2026-11-19"


def test_shopper_without_a_days_key_is_not_in_that_days_windows() -> None:
    """A store holding only yesterday's key cannot recognise the shopper today."""
    table = build_table([("s1", keys_for(ROOT, "2026-11-17"))], window_of(VECTOR_AT))
    assert table == {}


def test_token_command_prints_the_vector() -> None:
    """`store-gateway token --key HEX --at UNIX` prints 16 lowercase hex digits on one line."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--key", ROOT.hex(), "--at", str(VECTOR_AT)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "5e4041bd37d2e8ef\n"


def test_token_command_rejects_a_short_key() -> None:
    """A key that is not 32 bytes is an error with exit 1 and a reason, not a token."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--key", "00ff"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "32 bytes" in out.stderr
    assert out.stdout == ""
