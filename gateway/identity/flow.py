"""The identity stage's loop: adverts in; opted-in shoppers' zones and visits out.

Every scanner (the Pi's radio, each ESP32 satellite) hands each advert to
``on_advert``, which resolves it on the spot: an advert that does not resolve
is counted and dropped before anything keeps it. Resolved adverts become
``Sighting``s in a bounded queue (BLE may shed, and counts what it sheds); one
task feeds them to the presence tracker and the visit book, and sends what
they decide upstream within each shopper's consent (``analytics``). Another
task keeps the token and EID tables current: rebuilt off the event loop
``ble.rebuild_ahead_s`` before each 15-minute window change and swapped in at
the change, and rebuilt soon after HQ changes profiles. An opt-out drops the
shopper from the tables, the tracker and the visit book at once.

Later stages reach it through two ports (gateway/ports.py): ``ShopperLookup``
(consent, scopes, profile, open visit) and ``ShopperIdentification`` (a loyalty
scan or a kiosk made a shopper known); they hear its presence and visit events
through ``events``, and what goes to HQ leaves through an ``UpstreamSink``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import time
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

from gateway.clock import Clock
from gateway.config import (
    BleSection,
    PresenceSection,
    ReferenceBeaconSection,
    SatelliteSection,
)
from gateway.events import DownlinkApplied, Sighting
from gateway.identity.directory import DirectorySnapshot, ShopperDirectory, TableInputs
from gateway.identity.presence import (
    PresenceEvent,
    PresenceParams,
    PresenceTracker,
    ReferenceBeacon,
)
from gateway.identity.resolver import AdvertResolver, build_eid_table, build_ibeacon_table
from gateway.identity.tokens import WINDOW_S, table_windows, window_of, window_tokens
from gateway.identity.visits import VisitEvent, VisitParams, VisitTracker
from gateway.log import get_logger
from gateway.ports import Fanout, UpstreamSink
from gateway.shoppers import Consent, Profile

# The presence tracker's clock: absences, dwells and stale readings are judged
# once a second (PresenceTracker.tick's own advice).
TICK_S = 1.0
# HQ sends profiles in pages of up to 5,000; wait this long after a change
# before rebuilding so that a burst of pages costs one rebuild, not twenty.
REBUILD_DEBOUNCE_S = 1.0
# Sightings handled before the presence task yields to the loop, so that a
# burst never holds up MQTT and the outbox for more than a few milliseconds.
BATCH = 512
# The one "shopper" scope that lets presence and visits go to HQ: knowing
# where someone walked is analytics (consent scopes: gateway/shoppers.py).
UPSTREAM_SCOPE = "analytics"
PI_SCANNER = "pi"


def scanner_zones(ble: BleSection, satellites: Iterable[SatelliteSection]) -> dict[str, str]:
    """Each scanner id -> its zone: the Pi's radio when enabled, and every satellite."""
    zones = {PI_SCANNER: ble.zone} if ble.enabled else {}
    zones.update({s.id: s.zone for s in satellites})
    return zones


class ShopperFlow:
    """From adverts to presence and visit events, for every scanner in the store."""

    def __init__(
        self,
        ble: BleSection,
        satellites: tuple[SatelliteSection, ...],
        reference_beacons: tuple[ReferenceBeaconSection, ...],
        presence: PresenceSection,
        clock: Clock,
        upstream: UpstreamSink,
    ) -> None:
        self.clock = clock
        self.upstream = upstream
        self.zones = scanner_zones(ble, satellites)
        self._rebuild_ahead_s = ble.rebuild_ahead_s
        self.directory = ShopperDirectory()
        self.resolver = AdvertResolver(
            ble.company_id,
            {
                (bytes.fromhex(b.uuid.replace("-", "")), b.major, b.minor): b.id
                for b in reference_beacons
            },
        )
        params = PresenceParams(
            margin_db=presence.margin_db,
            min_dwell_s=presence.min_dwell_s,
            dwelled_after_s=presence.dwelled_after_s,
            left_after_s=presence.left_after_s,
        )
        offsets = {s.id: s.rssi_offset_db for s in satellites if s.rssi_offset_db}
        if ble.enabled and ble.rssi_offset_db:
            offsets[PI_SCANNER] = ble.rssi_offset_db
        # No scanner (POS lanes only): no presence, but visits still open on a loyalty scan.
        self.tracker: PresenceTracker | None = (
            PresenceTracker(
                self.zones,
                params,
                offsets,
                beacons=[
                    ReferenceBeacon(b.id, b.scanner, b.expected_rssi_dbm) for b in reference_beacons
                ],
            )
            if self.zones
            else None
        )
        self.visits = VisitTracker(VisitParams(visit_gap_s=presence.visit_gap_s))
        self._queue: collections.deque[Sighting] = collections.deque()
        self._queue_max = ble.queue_max
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._erased_during_build: set[str] = set()
        # Per-window token maps of the current key set: at a window change only the
        # new window is computed (a third of a full rebuild). Any change to the
        # directory (profiles, consent, an erasure) bumps the version and empties it.
        self._window_cache: dict[int, dict[bytes, str]] = {}
        self._keys_version = 0
        self._cache_version = -1
        self._building = False
        self._log = get_logger("shoppers")
        self.shed = 0
        self.table_window: int | None = None
        self.last_rebuild_ms = 0.0
        self.rebuilds = 0
        self.erased = 0
        self.counts: collections.Counter[str] = collections.Counter()
        # Later stages (the decision engine) hear every presence and visit event.
        self.events: Fanout[PresenceEvent | VisitEvent] = Fanout("shopper")
        # The hot path: ``on_advert(scanner, manufacturer_data, service_data, rssi, ts)``
        # resolves on the spot and queues only what resolved.
        self.on_advert = self.resolver.handler(self._accept)
        # The same for the gateway's own radio, in the scanner's callback shape.
        self.pi_advert = functools.partial(self.on_advert, PI_SCANNER)

    # -- inputs -----------------------------------------------------------------------

    def _accept(self, sighting: Sighting) -> None:
        queue = self._queue
        if len(queue) >= self._queue_max:
            self.shed += 1
            return
        queue.append(sighting)
        if len(queue) == 1:
            self._wake.set()

    def load(self, profiles: Iterable[Profile], consents: Iterable[Consent]) -> None:
        """Start from the profile cache (then ``run`` builds the tables)."""
        self.directory.load(profiles, consents)
        self._keys_version += 1
        self._dirty.set()

    def on_changes(
        self,
        profiles: Mapping[str, Profile],
        consents: Mapping[str, Consent],
        erased: Iterable[str],
    ) -> None:
        """A committed downlink batch: erasures take effect now, the rest at the next rebuild."""
        now = self.clock.wall()
        gone = set(erased)
        # A consent without ``presence`` (or already expired) stops detection at once too.
        gone |= {s for s, c in consents.items() if not c.active(now)}
        self.directory.apply(profiles, consents, erased)
        if gone:
            self.forget(gone)
        if profiles or consents:
            self._keys_version += 1
            self._dirty.set()

    def on_downlink(self, changes: DownlinkApplied) -> None:
        """A committed downlink batch (the downlink's fan-out): profiles, consent, erasures."""
        self.on_changes(changes.profiles, changes.consents, changes.erased)

    def forget(self, shoppers: set[str]) -> None:
        """Opt-out: tokens stop resolving, presence and visits drop the shopper, unsent
        sightings of theirs are discarded."""
        self.resolver.forget(shoppers)
        self._keys_version += 1
        if self._building:
            self._erased_during_build |= shoppers
        for shopper in shoppers:
            if self.tracker is not None:
                self.tracker.forget(shopper)
            self.visits.forget(shopper)
        if self._queue:
            kept = [s for s in self._queue if s.subject not in shoppers]
            self._queue.clear()
            self._queue.extend(kept)
        self.erased += len(shoppers)

    # -- tasks ------------------------------------------------------------------------

    # -- the ports later stages hold (ShopperLookup, ShopperIdentification) -------------

    def consent(self, shopper: str) -> Consent | None:
        """The shopper's consent, or None."""
        return self.directory.consent(shopper)

    def allows(self, shopper: str, scope: str, now_s: float) -> bool:
        """True when the shopper's live consent includes ``scope``."""
        return self.directory.allows(shopper, scope, now_s)

    def profile(self, shopper: str) -> Profile | None:
        """The shopper's profile as HQ sent it, or None."""
        return self.directory.profile(shopper)

    def visit_of(self, shopper: str) -> str | None:
        """The shopper's open visit, or None."""
        return self.visits.visit_of(shopper)

    def by_loyalty(self, loyalty_hash: str, now_s: float) -> str | None:
        """The opted-in shopper with live consent whose salted loyalty hash this is."""
        return self.directory.by_loyalty(loyalty_hash, now_s)

    def identify(self, shopper: str, source: str, ts: float, zone: str | None = None) -> str | None:
        """A shopper identified themselves (a POS loyalty scan, a kiosk): their visit id.

        Only a shopper whose consent is live is linked; anyone else gets None and
        nothing is kept. The signal opens or extends the visit (visit events go
        upstream within ``analytics`` consent, as BLE's do).
        """
        consent = self.directory.consent(shopper)
        if consent is None or not consent.active(self.clock.wall()):
            return None
        self._send_visits(self.visits.signal(shopper, source, ts, zone))
        return self.visits.visit_of(shopper)

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The coroutines the composition root runs: presence, and the token tables."""
        tasks = {"presence": self._presence_loop()}
        if self.zones:
            # Without a scanner there are no tokens to resolve (POS lanes only).
            tasks["token-tables"] = self._table_loop()
        return tasks

    async def _presence_loop(self) -> None:
        last_tick = self.clock.monotonic()
        while True:
            if not self._queue:
                try:
                    async with asyncio.timeout(TICK_S):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._wake.clear()
            events = self.drain(BATCH)
            if self.clock.monotonic() - last_tick >= TICK_S:
                last_tick = self.clock.monotonic()
                if self.tracker is not None:
                    events += self.tracker.tick(self.clock.wall())
                self._send_visits(self.visits.tick(self.clock.wall()))
            self.handle(events)
            if self._queue:
                await asyncio.sleep(0)

    def drain(self, limit: int) -> list[PresenceEvent]:
        """Feed up to ``limit`` queued sightings to the tracker; the events they caused."""
        events: list[PresenceEvent] = []
        queue = self._queue
        if self.tracker is None:
            queue.clear()
            return events
        observe = self.tracker.observe
        for _ in range(min(limit, len(queue))):
            out = observe(queue.popleft())
            if out:
                events += out
        return events

    def handle(self, events: list[PresenceEvent]) -> None:
        """Presence events -> the visit book, and both upstream within consent."""
        for ev in events:
            self.counts[ev.kind] += 1
            self._send_visits(self.visits.on_presence(ev))
            ev = dataclasses.replace(ev, visit=self.visits.visit_of(ev.shopper))
            self.events.emit(ev)
            if self.directory.allows(ev.shopper, UPSTREAM_SCOPE, self.clock.wall()):
                self.upstream.send(ev)

    def _send_visits(self, events: list[VisitEvent]) -> None:
        for ev in events:
            self.counts[ev.kind] += 1
            self.events.emit(ev)
            if self.directory.allows(ev.shopper, UPSTREAM_SCOPE, self.clock.wall()):
                self.upstream.send(ev)

    async def _table_loop(self) -> None:
        while True:
            now = self.clock.wall()
            window = window_of(now)
            if self.table_window != window or self._dirty.is_set():
                self._dirty.clear()
                await self.rebuild(window)
                continue
            change_at = (window + 1) * WINDOW_S
            wait_s = change_at - self._rebuild_ahead_s - now
            if wait_s > 0:
                try:
                    async with asyncio.timeout(wait_s):
                        await self._dirty.wait()
                    await asyncio.sleep(REBUILD_DEBOUNCE_S)
                except TimeoutError:
                    pass
                continue
            # Build the next window's tables now, swap them in at the change.
            await self.rebuild(window + 1, install_at=change_at)

    async def rebuild(self, center_window: int, *, install_at: float | None = None) -> None:
        """Build the token and EID tables for ``center_window`` off the loop and install them."""
        at = center_window * WINDOW_S + WINDOW_S / 2
        # Only the copy is made on the loop; picking the detectable shoppers and building
        # every table runs on the worker thread.
        snapshot = self.directory.snapshot()
        version = self._keys_version
        cached = self._window_cache if self._cache_version == version else {}
        self._building = True
        self._erased_during_build = set()
        try:
            started = time.perf_counter()
            inputs, tokens, eids, ibeacons, windows = await asyncio.to_thread(
                _build_tables, snapshot, at, center_window, cached
            )
            if self._keys_version == version:
                self._window_cache, self._cache_version = windows, version
            self.last_rebuild_ms = (time.perf_counter() - started) * 1000
            if install_at is not None and not await self._wait_unchanged(install_at, version):
                # HQ changed profiles while these tables waited for the window change:
                # they are stale, and a new shopper must not wait up to
                # ble.rebuild_ahead_s for the change. The loop rebuilds now.
                return
            self.resolver.install(tokens, eids, ibeacons)
            if self._erased_during_build:
                self.resolver.forget(self._erased_during_build)
        finally:
            self._building = False
        self.table_window = center_window
        self.rebuilds += 1
        self._log.info(
            "token_tables_built",
            window=center_window,
            shoppers=len(inputs.token_keys),
            tags=len(inputs.eid_tags) + len(inputs.ibeacon_tags),
            tokens=len(tokens),
            took_ms=round(self.last_rebuild_ms, 1),
        )

    async def _wait_unchanged(self, install_at: float, version: int) -> bool:
        """Sleep until ``install_at``; False as soon as the key set leaves ``version``.

        Looked at four times a second: this wait happens once per 15-minute window.
        """
        while (left := install_at - self.clock.wall()) > 0:
            if self._keys_version != version:
                return False
            await asyncio.sleep(min(left, 0.25))
        return True

    # -- health -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts only; nothing names a shopper or a device."""
        return {
            "shoppers_known": len(self.directory),
            "resolver": self.resolver.stats(),
            "queue": len(self._queue),
            "shed": self.shed,
            "erased": self.erased,
            "table_window": self.table_window,
            "last_rebuild_ms": round(self.last_rebuild_ms, 1),
            "rebuilds": self.rebuilds,
            "events": dict(self.counts),
            **self.upstream.stats(),
            "subscriber_errors": self.events.errors,
            "presence": self.tracker.stats() if self.tracker is not None else None,
            "visits": self.visits.stats(),
        }


def _build_tables(
    snapshot: DirectorySnapshot,
    at: float,
    center_window: int,
    cached: Mapping[int, dict[bytes, str]],
) -> tuple[
    TableInputs, dict[bytes, str], dict[bytes, str], dict[bytes, str], dict[int, dict[bytes, str]]
]:
    """Everything a rebuild computes, on the worker thread: what the tables are built from,
    the token table (reusing cached windows), the EID and iBeacon tables, and the
    per-window token maps."""
    inputs = snapshot.table_inputs(at)
    windows = {
        w: cached[w] if w in cached else window_tokens(inputs.token_keys, w)
        for w in table_windows(center_window)
    }
    tokens: dict[bytes, str] = {}
    for part in windows.values():
        tokens.update(part)
    eids = build_eid_table(inputs.eid_tags, center_window)
    return inputs, tokens, eids, build_ibeacon_table(inputs.ibeacon_tags), windows
