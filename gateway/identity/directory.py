"""The in-memory directory of opted-in shoppers: who may be noticed now, with which keys.

Loaded from the profile cache at start and kept current by the downlink's
change notices. A shopper is detectable only with a profile *and* a consent
that is unexpired and includes ``presence`` (gateway/shoppers.py);
everything the resolver tables are built from comes through here, so an
erased or expired shopper can never be rebuilt into them.

Pure: no asyncio, no I/O; time comes in as a parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from gateway.shoppers import Consent, EidTag, IBeaconTag, Profile


class ShopperDirectory:
    """Profiles and consents by shopper id."""

    def __init__(self) -> None:
        self._profiles: dict[str, Profile] = {}
        self._consents: dict[str, Consent] = {}
        # Salted loyalty hash -> shopper, for POS loyalty scans (gateway/identity/loyalty.py).
        self._loyalty: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._profiles)

    def load(self, profiles: Iterable[Profile], consents: Iterable[Consent]) -> None:
        """Replace everything with what the profile cache holds."""
        self._profiles = {p.shopper: p for p in profiles}
        self._consents = {c.shopper: c for c in consents}
        self._loyalty = {h: p.shopper for p in self._profiles.values() for h in p.loyalty_hashes}

    def apply(
        self,
        profiles: Mapping[str, Profile],
        consents: Mapping[str, Consent],
        erased: Iterable[str],
    ) -> None:
        """Take one committed batch of downlink changes (erasures last: they win)."""
        for shopper, profile in profiles.items():
            self._drop_loyalty(shopper)
            self._profiles[shopper] = profile
            for h in profile.loyalty_hashes:
                self._loyalty[h] = shopper
        self._consents.update(consents)
        for shopper in erased:
            self._drop_loyalty(shopper)
            self._profiles.pop(shopper, None)
            self._consents.pop(shopper, None)

    def _drop_loyalty(self, shopper: str) -> None:
        old = self._profiles.get(shopper)
        if old is not None:
            for h in old.loyalty_hashes:
                if self._loyalty.get(h) == shopper:
                    del self._loyalty[h]

    def by_loyalty(self, loyalty_hash: str, now_s: float) -> str | None:
        """The shopper a salted loyalty hash belongs to, while their consent is live."""
        shopper = self._loyalty.get(loyalty_hash)
        if shopper is None:
            return None
        c = self._consents.get(shopper)
        p = self._profiles.get(shopper)
        if c is None or p is None or not c.active(now_s) or p.expires_at <= now_s:
            return None
        return shopper

    def profile(self, shopper: str) -> Profile | None:
        return self._profiles.get(shopper)

    def consent(self, shopper: str) -> Consent | None:
        return self._consents.get(shopper)

    def allows(self, shopper: str, scope: str, now_s: float) -> bool:
        """True when the shopper's live consent grants ``scope``."""
        c = self._consents.get(shopper)
        return c is not None and c.allows(scope, now_s) and c.active(now_s)

    def snapshot(self) -> DirectorySnapshot:
        """The profiles and consents as they are now, for building tables off the loop.

        Shallow copies of two dicts (their values are frozen): a few milliseconds for
        100,000 shoppers, where walking them all to pick the detectable ones would hold
        the event loop for tens of milliseconds per rebuild.
        """
        return DirectorySnapshot(dict(self._profiles), dict(self._consents))

    def detectable(self, now_s: float) -> list[Profile]:
        """Profiles whose shoppers may be noticed at ``now_s``."""
        return self.snapshot().detectable(now_s)

    def token_keys(self, now_s: float) -> list[tuple[str, Mapping[str, bytes]]]:
        """(shopper, day keys) of every detectable shopper with day keys."""
        return self.snapshot().table_inputs(now_s).token_keys

    def eid_tags(self, now_s: float) -> list[tuple[str, EidTag]]:
        """(shopper, tag) of every registered Eddystone-EID tag of a detectable shopper."""
        return self.snapshot().table_inputs(now_s).eid_tags

    def ibeacon_tags(self, now_s: float) -> list[tuple[str, IBeaconTag]]:
        """(shopper, tag) of every fixed-identity iBeacon tag of a detectable shopper."""
        return self.snapshot().table_inputs(now_s).ibeacon_tags


class TableInputs(NamedTuple):
    """What the resolver's tables are built from, for one moment."""

    token_keys: list[tuple[str, Mapping[str, bytes]]]  # (shopper, day keys)
    eid_tags: list[tuple[str, EidTag]]
    ibeacon_tags: list[tuple[str, IBeaconTag]]


class DirectorySnapshot(NamedTuple):
    """Profiles and consents at one moment (``ShopperDirectory.snapshot``); safe to read
    on another thread, as nothing changes it."""

    profiles: Mapping[str, Profile]
    consents: Mapping[str, Consent]

    def detectable(self, now_s: float) -> list[Profile]:
        """Profiles whose shoppers may be noticed at ``now_s``."""
        out = []
        for shopper, p in self.profiles.items():
            c = self.consents.get(shopper)
            if c is not None and c.active(now_s) and p.expires_at > now_s:
                out.append(p)
        return out

    def table_inputs(self, now_s: float) -> TableInputs:
        """Day keys, EID tags and iBeacon tags of every detectable shopper, in one pass."""
        keys: list[tuple[str, Mapping[str, bytes]]] = []
        eids: list[tuple[str, EidTag]] = []
        ibeacons: list[tuple[str, IBeaconTag]] = []
        for p in self.detectable(now_s):
            if p.day_keys:
                keys.append((p.shopper, p.day_keys))
            eids.extend((p.shopper, t) for t in p.eid_tags)
            ibeacons.extend((p.shopper, t) for t in p.ibeacon_tags)
        return TableInputs(keys, eids, ibeacons)
