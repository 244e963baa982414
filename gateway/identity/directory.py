"""The in-memory directory of opted-in shoppers: who may be noticed now, with which keys.

Loaded from the profile cache at start and kept current by the downlink's
change notices. A shopper is detectable only with a profile *and* a consent
that is unexpired and includes ``presence`` (gateway/identity/shoppers.py);
everything the resolver tables are built from comes through here, so an
erased or expired shopper can never be rebuilt into them.

Pure: no asyncio, no I/O; time comes in as a parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gateway.identity.shoppers import Consent, EidTag, IBeaconTag, Profile


class ShopperDirectory:
    """Profiles and consents by shopper id."""

    def __init__(self) -> None:
        self._profiles: dict[str, Profile] = {}
        self._consents: dict[str, Consent] = {}

    def __len__(self) -> int:
        return len(self._profiles)

    def load(self, profiles: Iterable[Profile], consents: Iterable[Consent]) -> None:
        """Replace everything with what the profile cache holds."""
        self._profiles = {p.shopper: p for p in profiles}
        self._consents = {c.shopper: c for c in consents}

    def apply(
        self,
        profiles: Mapping[str, Profile],
        consents: Mapping[str, Consent],
        erased: Iterable[str],
    ) -> None:
        """Take one committed batch of downlink changes (erasures last: they win)."""
        self._profiles.update(profiles)
        self._consents.update(consents)
        for shopper in erased:
            self._profiles.pop(shopper, None)
            self._consents.pop(shopper, None)

    def consent(self, shopper: str) -> Consent | None:
        return self._consents.get(shopper)

    def allows(self, shopper: str, scope: str, now_s: float) -> bool:
        """True when the shopper's live consent grants ``scope``."""
        c = self._consents.get(shopper)
        return c is not None and c.allows(scope, now_s) and c.active(now_s)

    def detectable(self, now_s: float) -> list[Profile]:
        """Profiles whose shoppers may be noticed at ``now_s``."""
        out = []
        for shopper, p in self._profiles.items():
            c = self._consents.get(shopper)
            if c is not None and c.active(now_s) and p.expires_at > now_s:
                out.append(p)
        return out

    def token_keys(self, now_s: float) -> list[tuple[str, Mapping[str, bytes]]]:
        """(shopper, day keys) of every detectable shopper with day keys."""
        return [(p.shopper, p.day_keys) for p in self.detectable(now_s) if p.day_keys]

    def eid_tags(self, now_s: float) -> list[tuple[str, EidTag]]:
        """(shopper, tag) of every registered Eddystone-EID tag of a detectable shopper."""
        return [(p.shopper, t) for p in self.detectable(now_s) for t in p.eid_tags]

    def ibeacon_tags(self, now_s: float) -> list[tuple[str, IBeaconTag]]:
        """(shopper, tag) of every fixed-identity iBeacon tag of a detectable shopper."""
        return [(p.shopper, t) for p in self.detectable(now_s) for t in p.ibeacon_tags]
