"""Which stores a staged (canary) release reaches: a deterministic hash of the store id.

HQ and the store compute the same thing from the same inputs, so a fleet
release carrying ``canary_share`` reaches exactly the stores whose bucket is
below it, with no list of stores on the wire. The bucket depends on the store
id alone: the same stores go first in every release (a stable canary ring, as
hawkBit's and AWS IoT Jobs' fixed rollout groups), so a store IT team knows
whether it is an early store. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib

# Versioned so that a future change of the rule cannot silently reshuffle the fleet.
_DOMAIN = b"store-gateway/rollout/v1\x00"


def bucket(store_id: str) -> float:
    """The store's place in the fleet, uniform in [0, 1)."""
    digest = hashlib.sha256(_DOMAIN + store_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def selected(store_id: str, share: float) -> bool:
    """Whether a release for ``share`` of the fleet (0 < share <= 1) reaches this store."""
    if share >= 1.0:
        return True
    return bucket(store_id) < share
