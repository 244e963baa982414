"""Eddystone-EID: published test vectors, Google's block layout, rotation and neighbours."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from gateway.identity.eid import (
    EID_BYTES,
    beacon_time,
    eid,
    eids_around,
    temporary_key,
)

# The identity key of RadiusNetworks/ephemeral_calc spec/encryptor_spec.rb (also
# quoted in REFERENCE.md), used with rotation exponent K = 10 there.
IDENTITY_KEY = bytes.fromhex("0102030405060708090A111213141516")
K = 10


def aes_block(key: bytes, block: bytes) -> bytes:
    """One raw AES-128 block, written here apart from the module under test."""
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - one block, as the spec defines
    return enc.update(block) + enc.finalize()


def test_ephemeral_calc_vector_at_beacon_time_zero() -> None:
    """The EID at beacon time 0 with K=10 is ephemeral_calc's A9B76A71C5F89290."""
    # RadiusNetworks/ephemeral_calc spec/encryptor_spec.rb, "can compute an eid when
    # given a 16 byte identity key": Encryptor.new(key, 10) with initial_time = now,
    # so its beacon time (now - initial_time) is 0.
    assert eid(IDENTITY_KEY, K, 0) == bytes.fromhex("A9B76A71C5F89290")


def test_ephemeral_calc_vector_at_beacon_time_2000() -> None:
    """The EID at beacon time 2000 s with K=10 is ephemeral_calc's 4144413E45FEFA58."""
    # RadiusNetworks/ephemeral_calc spec/encryptor_spec.rb, "can compute an eid when
    # given an identity key hex string": initial_time = now - 2000, so beacon time 2000.
    assert eid(IDENTITY_KEY, K, 2000) == bytes.fromhex("4144413E45FEFA58")


def test_ephemeral_calc_vector_holds_for_its_whole_rotation_period() -> None:
    """Every second of the period 1024..2047 (K=10) gives ephemeral_calc's second EID."""
    # The spec's second case runs at "now - 2000", which may land a second either
    # side; the period is what the vector pins, so check all of it.
    expected = bytes.fromhex("4144413E45FEFA58")
    assert {eid(IDENTITY_KEY, K, t) for t in range(1024, 2048)} == {expected}


def test_eid_changes_at_the_period_boundary() -> None:
    """The EID of beacon time 2048 (next K=10 period) differs from that of 2047."""
    assert eid(IDENTITY_KEY, K, 2048) != eid(IDENTITY_KEY, K, 2047)


def test_temporary_key_follows_google_block_layout() -> None:
    """The temporary key is AES(identity key, 00*11 FF 00 00 TS[0] TS[1]) per Google's doc."""
    # google/eddystone eddystone-eid/eid-computation.md, "Computing the temporary key".
    t = 0x12345678
    block = bytes(11) + b"\xff" + b"\x00\x00" + bytes((0x12, 0x34))
    assert temporary_key(IDENTITY_KEY, t) == aes_block(IDENTITY_KEY, block)


def test_eid_follows_google_block_layout() -> None:
    """The EID is the first 8 bytes of AES(temporary key, 00*11 K TS with K low bits cleared)."""
    # google/eddystone eddystone-eid/eid-computation.md, "Computing the EID value".
    # Google's doc publishes the layout but no numeric vectors; this pins the layout
    # at a time whose low K bits are not zero and whose top half is not zero.
    t, k = 0x12345678, 10
    temp_key = aes_block(IDENTITY_KEY, bytes(11) + b"\xff\x00\x00\x12\x34")
    block = bytes(11) + bytes((k,)) + (t & ~0x3FF).to_bytes(4, "big")
    assert eid(IDENTITY_KEY, k, t) == aes_block(temp_key, block)[:8]


def test_temporary_key_holds_for_65536_seconds() -> None:
    """The temporary key is the same from beacon time 0 to 65535."""
    assert temporary_key(IDENTITY_KEY, 65_535) == temporary_key(IDENTITY_KEY, 0)


def test_temporary_key_rolls_over_at_65536_seconds() -> None:
    """The temporary key changes when the counter's top 16 bits do (65535 -> 65536)."""
    assert temporary_key(IDENTITY_KEY, 65_536) != temporary_key(IDENTITY_KEY, 65_535)


def test_k_zero_rotates_every_second() -> None:
    """With K=0 consecutive seconds give different EIDs."""
    assert eid(IDENTITY_KEY, 0, 65_280) != eid(IDENTITY_KEY, 0, 65_281)


def test_k_enters_the_eid_block() -> None:
    """The same time under two exponents gives two EIDs (K is part of the input block)."""
    assert eid(IDENTITY_KEY, 10, 0) != eid(IDENTITY_KEY, 11, 0)


def test_counter_wraps_at_32_bits() -> None:
    """Beacon time 2**32 + t gives the EID of t (the tag's counter is 32 bits)."""
    assert eid(IDENTITY_KEY, K, 2**32 + 2000) == eid(IDENTITY_KEY, K, 2000)


@pytest.mark.parametrize("k", [-1, 16, 255])
def test_rotation_exponent_outside_0_to_15_is_refused(k: int) -> None:
    """A rotation exponent outside 0..15 raises ValueError."""
    with pytest.raises(ValueError, match="rotation exponent"):
        eid(IDENTITY_KEY, k, 0)


@pytest.mark.parametrize("size", [0, 15, 17, 32])
def test_identity_key_of_wrong_length_is_refused(size: int) -> None:
    """An identity key that is not 16 bytes raises ValueError."""
    with pytest.raises(ValueError, match="identity key"):
        eid(bytes(size), K, 0)


def test_temporary_key_refuses_a_short_identity_key() -> None:
    """temporary_key validates the key length too."""
    with pytest.raises(ValueError, match="identity key"):
        temporary_key(bytes(8), 0)


def test_negative_beacon_time_is_refused() -> None:
    """A beacon time before the tag's epoch raises ValueError."""
    with pytest.raises(ValueError, match="before the tag's clock"):
        eid(IDENTITY_KEY, K, -1)


def test_eids_around_lists_previous_current_and_next_period() -> None:
    """eids_around gives the EIDs of the period before, the period and the period after."""
    t = 100_000
    assert eids_around(IDENTITY_KEY, K, t) == [
        eid(IDENTITY_KEY, K, t - 1024),
        eid(IDENTITY_KEY, K, t),
        eid(IDENTITY_KEY, K, t + 1024),
    ]


def test_eids_around_widens_with_periods() -> None:
    """eids_around with periods=3 gives 7 EIDs, oldest first."""
    t = 100_000
    expected = [eid(IDENTITY_KEY, K, t + i * 1024) for i in range(-3, 4)]
    assert eids_around(IDENTITY_KEY, K, t, periods=3) == expected


def test_eids_around_with_zero_periods_is_the_current_eid() -> None:
    """eids_around with periods=0 gives the current EID alone."""
    assert eids_around(IDENTITY_KEY, K, 2000, periods=0) == [bytes.fromhex("4144413E45FEFA58")]


def test_eids_around_spans_a_temporary_key_rollover() -> None:
    """Neighbours across the 65,536 s boundary use their own temporary key."""
    t = 65_536  # the first second of the second temporary key
    assert eids_around(IDENTITY_KEY, K, t) == [
        eid(IDENTITY_KEY, K, t - 1024),
        eid(IDENTITY_KEY, K, t),
        eid(IDENTITY_KEY, K, t + 1024),
    ]


def test_eids_around_leaves_out_periods_before_the_epoch() -> None:
    """At beacon time 0 there is no previous period: current and next only."""
    assert eids_around(IDENTITY_KEY, K, 0) == [
        bytes.fromhex("A9B76A71C5F89290"),
        bytes.fromhex("4144413E45FEFA58"),
    ]


def test_eids_around_refuses_negative_periods() -> None:
    """A negative number of periods raises ValueError."""
    with pytest.raises(ValueError, match="periods"):
        eids_around(IDENTITY_KEY, K, 0, periods=-1)


def test_eids_around_validates_k() -> None:
    """eids_around refuses a rotation exponent above 15."""
    with pytest.raises(ValueError, match="rotation exponent"):
        eids_around(IDENTITY_KEY, 16, 0)


def test_beacon_time_subtracts_the_tag_epoch() -> None:
    """Beacon time is whole unix seconds minus the tag's epoch offset."""
    assert beacon_time(1_795_000_000.9, 1_794_998_000) == 2000


def test_beacon_time_floors_fractional_seconds() -> None:
    """A fraction of a second never rounds up into the next second."""
    assert beacon_time(1_795_000_000.999, 0) == 1_795_000_000


@given(
    key=st.binary(min_size=16, max_size=16),
    k=st.integers(0, 15),
    t=st.integers(0, 2**40),
)
def test_eid_is_always_8_bytes(key: bytes, k: int, t: int) -> None:
    """Any valid key, exponent and time give an 8-byte EID."""
    assert len(eid(key, k, t)) == EID_BYTES


@given(
    key=st.binary(min_size=16, max_size=16),
    k=st.integers(0, 15),
    t=st.integers(0, 2**32 - 1),
)
def test_eid_is_constant_within_its_period(key: bytes, k: int, t: int) -> None:
    """Any second of a period gives the EID of the period's first second."""
    assert eid(key, k, t) == eid(key, k, t >> k << k)
