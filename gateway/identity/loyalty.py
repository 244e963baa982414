"""Loyalty numbers as salted hashes: how a POS loyalty scan finds an opted-in shopper.

A loyalty number printed on a receipt is personal data that the gateway must
not keep: the lane stage hashes it the moment the dialect extracts it, and
only the hash is looked up, stored or sent upstream. HQ computes the same
hash for each opted-in shopper's loyalty numbers (``hq push-profiles``), so
profiles carry hashes, never numbers. The salt is the fleet's secret (a file
with mode 0600 on each gateway): without it a hash of a 13-digit number could
be reversed by trying every number, with it that needs the salt too.

Only the digits count: "9900-0111-2223 3" on a receipt and "9900011122233" in
HQ's records are the same card.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac


def loyalty_digits(loyalty_number: str) -> str:
    """The digits of a loyalty number, which is all that identifies the card."""
    return "".join(ch for ch in loyalty_number if ch.isdigit())


def loyalty_hash(salt: bytes, loyalty_number: str) -> str:
    """HMAC-SHA256 of the number's digits under the fleet's salt, as lowercase hex."""
    return hmac.new(salt, loyalty_digits(loyalty_number).encode(), hashlib.sha256).hexdigest()
