"""Eddystone-EID: the ephemeral ids a registered tag broadcasts, computed as the tag does.

Google's published computation (google/eddystone, eddystone-eid/eid-computation.md):

1. temporary key = AES-128(identity key, ``00``x11 ``FF`` ``00 00`` TS[0] TS[1]),
   where TS[0..1] are the top 16 bits of the tag's 32-bit seconds counter;
2. EID = first 8 bytes of AES-128(temporary key, ``00``x11 K TS[0..3]), where
   TS is the counter, big-endian, with its K lowest bits cleared.

So the EID changes every 2**K seconds (K, the rotation exponent, is 0..15) and the
temporary key every 65,536 seconds. The tag's counter is its own: a resolver keeps
the offset from unix time (``EidTag.epoch_offset_s``), and ``beacon_time`` applies
it. A tag's clock drifts (the spec allows 150 ppm), so a resolver accepts the
neighbouring periods too: ``eids_around``.

Pure: no asyncio, no I/O; time comes in as a parameter. Nothing is cached: an
identity key must be gone from this process once its shopper opts out.
"""

from __future__ import annotations

import math

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

IDENTITY_KEY_BYTES = 16  # AES-128
EID_BYTES = 8  # the AES output truncated to 64 bits
MAX_ROTATION_EXPONENT = 15  # the spec's range for K is 0..15
# The tag's time counter is 32 bits (eid-computation.md); it wraps after 136 years,
# and both reference implementations (Google's eidtools.py, RadiusNetworks'
# ephemeral_calc) reduce the time modulo 2**32, so this does too.
_COUNTER_MASK = 0xFFFFFFFF
_TEMPORARY_KEY_SALT = 0xFF  # byte 11 of the temporary key's input block
_TEMPORARY_KEY_SHIFT = 16  # the temporary key uses the counter's top 16 bits


def _aes_block(key: bytes, block: bytes) -> bytes:
    # ECB here is not a mode of bulk encryption but the bare AES block function
    # applied to exactly one 16-byte block, which is what the EID spec defines.
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305
    return encryptor.update(block) + encryptor.finalize()


def _check_key(identity_key: bytes) -> None:
    if len(identity_key) != IDENTITY_KEY_BYTES:
        raise ValueError(
            f"an EID identity key is {IDENTITY_KEY_BYTES} bytes, not {len(identity_key)}"
        )


def _check_k(k: int) -> None:
    if not 0 <= k <= MAX_ROTATION_EXPONENT:
        raise ValueError(f"the rotation exponent K is 0..{MAX_ROTATION_EXPONENT}, not {k}")


def _counter(beacon_time_s: int) -> int:
    if beacon_time_s < 0:
        raise ValueError(f"beacon time {beacon_time_s} s is before the tag's clock started")
    return beacon_time_s & _COUNTER_MASK


def beacon_time(unix_s: float, epoch_offset_s: int) -> int:
    """The tag's counter at ``unix_s``: whole seconds since the tag's epoch."""
    return math.floor(unix_s) - epoch_offset_s


def temporary_key(identity_key: bytes, beacon_time_s: int) -> bytes:
    """The 16-byte temporary key in force at ``beacon_time_s`` (it changes every 65,536 s)."""
    _check_key(identity_key)
    top = _counter(beacon_time_s) >> _TEMPORARY_KEY_SHIFT
    block = bytes(11) + bytes((_TEMPORARY_KEY_SALT, 0, 0)) + top.to_bytes(2, "big")
    return _aes_block(identity_key, block)


def _eid_with(temp_key: bytes, k: int, counter: int) -> bytes:
    quantum_start = counter >> k << k
    block = bytes(11) + bytes((k,)) + quantum_start.to_bytes(4, "big")
    return _aes_block(temp_key, block)[:EID_BYTES]


def eid(identity_key: bytes, k: int, beacon_time_s: int) -> bytes:
    """The 8-byte EID a tag with ``identity_key`` and exponent ``k`` sends at ``beacon_time_s``."""
    _check_k(k)
    return _eid_with(temporary_key(identity_key, beacon_time_s), k, _counter(beacon_time_s))


def eids_around(identity_key: bytes, k: int, beacon_time_s: int, periods: int = 1) -> list[bytes]:
    """EIDs of the period holding ``beacon_time_s`` and ``periods`` periods either side.

    Oldest first. Periods before the tag's clock started have no EID and are
    left out, so near beacon time 0 the list is shorter than ``2 * periods + 1``.
    """
    _check_key(identity_key)
    _check_k(k)
    if periods < 0:
        raise ValueError(f"periods is 0 or more, not {periods}")
    period_s = 1 << k
    start = _counter(beacon_time_s) >> k << k
    found: list[bytes] = []
    temp_keys: dict[int, bytes] = {}  # neighbours mostly share one temporary key
    for i in range(-periods, periods + 1):
        t = start + i * period_s
        if t < 0:
            continue
        counter = t & _COUNTER_MASK
        top = counter >> _TEMPORARY_KEY_SHIFT
        temp_key = temp_keys.get(top)
        if temp_key is None:
            temp_key = temp_keys[top] = temporary_key(identity_key, counter)
        found.append(_eid_with(temp_key, k, counter))
    return found
