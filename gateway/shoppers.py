"""What the gateway knows about an opted-in shopper: profile, keys and consent.

Pure types shared by the downlink (which receives them from HQ), storage (which
keeps them) and identity (which resolves tokens with them). A shopper is
detectable only while they have a profile with keys *and* an unexpired consent
with at least one scope.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Consent scopes (ARCHITECTURE principle 1). ``presence`` lets the store notice
# the shopper at all; each other scope allows one use of that knowledge.
SCOPES: tuple[str, ...] = ("presence", "associate_assist", "screens", "kiosk", "analytics")


@dataclass(frozen=True, slots=True)
class EidTag:
    """A registered Eddystone-EID tag: the beacon clock is ``unix - epoch_offset_s``."""

    tag: str
    identity_key: bytes  # 16 bytes (AES-128)
    k: int  # rotation exponent: the EID changes every 2**k seconds
    epoch_offset_s: int


@dataclass(frozen=True, slots=True)
class IBeaconTag:
    """A shopper tag with a fixed iBeacon identity issued by HQ.

    For satellites that cannot pass on a rotating token (ESPresense reports only
    ``iBeacon:<uuid>-<major>-<minor>`` ids: firmware_configs/satellites/). A fixed
    identity can be followed by anyone with a scanner, so it is the shopper's
    choice of tag, never the app's default.
    """

    tag: str
    uuid: bytes  # 16 bytes
    major: int
    minor: int


@dataclass(frozen=True, slots=True)
class Profile:
    """A shopper's profile as this store keeps it (no root key ever reaches a store)."""

    shopper: str
    expires_at: float
    day_keys: Mapping[str, bytes] = field(default_factory=dict)  # "YYYY-MM-DD" -> 32 bytes
    eid_tags: tuple[EidTag, ...] = ()
    ibeacon_tags: tuple[IBeaconTag, ...] = ()
    loyalty_hashes: tuple[str, ...] = ()  # lowercase hex of salted SHA-256
    attributes: Mapping[str, Any] = field(default_factory=dict)  # for later stages


@dataclass(frozen=True, slots=True)
class Consent:
    """What a shopper allowed, until when."""

    shopper: str
    scopes: frozenset[str]
    expires_at: float

    def allows(self, scope: str, now_s: float) -> bool:
        """True when ``scope`` is granted and the consent has not expired."""
        return now_s < self.expires_at and scope in self.scopes

    def active(self, now_s: float) -> bool:
        """True while the shopper may be noticed at all."""
        return now_s < self.expires_at and "presence" in self.scopes
