"""Visits: one visit per shopper per trip, joined from every identity signal.

Input is every signal that an opted-in shopper is in the store, whatever
noticed it: BLE presence (``PresenceEvent``s: arrived, zone_changed, dwelled,
left), a loyalty scan at a POS lane (``pos``), self-identification at a kiosk
(``kiosk``) and the app telling HQ the shopper arrived, e.g. by geofence
(``hq_arrival``). Output is ``VisitEvent``s (visit_started, visit_ended), and
``visit_of(shopper)``: the open visit's id, which later stages stamp on what
they decide and record. Pure: no I/O, no asyncio, time comes in with each call.

Why it is built this way:

1. **A visit ends after a gap, never at BLE ``left``.** Presence says "left"
   after a minute or two of radio silence (``presence.left_after_s``), and a
   phone goes silent for reasons that have nothing to do with leaving: in a bag
   at the till, behind bodies in the queue, asleep in a pocket. Ending the visit
   there would cut one trip into two and leave the loyalty scan at the till on
   a visit of its own, with none of the zones that led to it. So while
   presence holds the shopper present the visit stays open whatever the time,
   and ``left`` only starts the clock: the visit ends once ``visit_gap_s``
   passes with no signal from any source. ``visit_gap_s`` (20 minutes) rides
   out a phone silent through a queue or a walk to the car for a forgotten bag,
   and still makes a lunchtime and an evening trip two.

2. **Every source opens or extends a visit.** BLE sees only shoppers whose app
   advertises; a loyalty scan, a kiosk login or an arrival the app reported to
   HQ are just as much evidence that this shopper is here now. Any of them opens
   a visit when none is open (a shopper with Bluetooth off still gets one, made
   of their POS scan), and attaches to the open visit otherwise, extending its
   gap. ``sources`` says what saw the visit: a visit of ``("hq_arrival",)``
   alone is a geofence that fired for someone who never came in.

3. **Signals arrive out of order.** A satellite's report or a lane's scan can
   trail the gateway's own radio by seconds, and HQ's arrival message (stamped
   when the app reported, in the car park) can arrive after BLE has already
   placed the shopper in the store. A signal is placed by its own timestamp, not
   by when it arrived: one up to ``visit_gap_s`` before the open visit's first
   signal joins it and moves its start earlier; one within the visit joins it;
   one ``visit_gap_s`` or more after its last signal ends it and opens the next
   (even before ``tick`` runs), unless presence still holds the shopper
   present. A signal too old for any open visit (before the open visit's start
   by more than the gap, or, with none open, older than ``visit_gap_s`` before
   the last tick) belongs to a visit already ended and reported: it is counted
   as ``late`` and dropped rather than rewriting what was sent. One stamped
   more than ``max_future_s`` past the last tick comes from a wrong clock and is
   dropped as ``future``: it would hold a visit open on time that never passed.
   Zones are kept in the order they were learned, which is time order but for
   these seconds of lateness. Ended visits are not kept, so a signal that trails
   the tick which ended its visit opens a new one: with a gap of minutes and
   lateness of seconds, that needs a shopper seen again at the very end of the
   gap.

4. **Nothing here identifies anyone by itself.** Visit ids are random
   (``secrets.token_hex(8)``), not derived from the shopper id: an id shown on a
   screen or sent to HQ names a trip, not a person, and the shopper cannot be
   recovered from it. ``forget`` (opt-out) drops the shopper's open visit at
   once and emits nothing; ``stats`` holds counts only.

5. **Bounded state.** At most ``max_open`` open visits (beyond it the least
   recently signalled visit that BLE does not hold present is ended early), at
   most ``max_zones`` zones per visit, and no visit lasts beyond
   ``max_visit_s`` (a phone left in a staff locker must not keep one visit open
   for a week). An ended visit leaves no state behind.

What hooks in later: the POS stage feeds each loyalty scan here as ``pos``
(with the lane's zone) and then asks ``visit_of(shopper)``, so a transaction
always finds an open visit, and ships the id in ``up/transaction``; the kiosk
handler (``store/v1/kiosks/{kiosk}/identify``) feeds ``kiosk`` and HQ's
``down/arrivals`` feeds ``hq_arrival``; decisions and impressions carry
``visit_of`` the same way. ``VisitEvent``s go upstream as the ``visit`` kind.
"""

from __future__ import annotations

import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.clock import as_finite
from gateway.identity.presence import PresenceEvent

Source = Literal["ble", "pos", "kiosk", "hq_arrival"]
SOURCES: tuple[str, ...] = ("ble", "pos", "kiosk", "hq_arrival")

VisitEventKind = Literal["visit_started", "visit_ended"]

# Presence events that say the shopper is in the store now (they hold the
# visit open); "left" only starts the gap.
_PRESENT_KINDS = frozenset({"arrived", "zone_changed", "dwelled"})


# Seconds from a signal: finite, not a bool, not an int beyond float.
_as_time = as_finite


def random_visit_id() -> str:
    """A fresh visit id: 64 random bits in hex, unrelated to the shopper id."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class VisitParams:
    """Tuning of visits; every value carries the reason for it.

    ``visit_gap_s`` comes from ``presence.visit_gap_s``, validated by the config
    (gateway/config.py); the rest are constants with their reasons.
    """

    # A visit ends after this long without a signal from any source (and with BLE
    # presence no longer holding the shopper present). Config: presence.visit_gap_s.
    # Long enough for a phone silent in a bag through the checkout queue, or a walk
    # to the car and back; short enough that two trips on one day are two visits.
    visit_gap_s: float = 20 * 60
    # Most visits open at once. Presence tracks at most 2,000 shoppers; visits
    # outlive presence by the gap and also come from POS, kiosk and HQ signals of
    # shoppers the radio never hears. A visit holds well under 1 kB, so this caps
    # memory at a few MB.
    max_open: int = 5_000
    # Zones kept per visit. A long trip through a large store passes 20-30 zones;
    # beyond this the last slot follows the newest zone, so the path keeps where
    # it began and where it ended.
    max_zones: int = 64
    # No visit lasts longer than this, even held open by presence: longer than
    # any shopping trip or shift, so it only ends a phone left in a locker, or a
    # presence hold whose "left" never came.
    max_visit_s: float = 12 * 3600
    # A signal stamped this far past the last tick is refused. The gateway's own
    # stamps are at most a tick ahead; lanes and satellites are NTP-synchronised
    # but a lane PC may drift by a minute. Beyond that the clock is wrong, and
    # believing it would keep a visit open on time that never passed. Adapters
    # for sources whose clocks are not trusted stamp signals on receipt instead.
    max_future_s: float = 120.0


@dataclass(frozen=True, slots=True)
class VisitEvent:
    """A visit opened or closed, for the pipeline and for HQ (as the ``visit`` kind).

    Times are evidence, not decisions: ``visit_started`` carries the time of the
    signal that opened the visit; ``visit_ended`` the time the shopper was last
    known to be in the store (the last signal, or the moment the visit was ended
    while presence still held the shopper present), not the moment the gap ran
    out. ``duration_s`` runs from the visit's earliest signal (a late signal may
    have moved it earlier than ``visit_started``'s ``ts``) to ``ts``; 0 on start.
    """

    kind: VisitEventKind
    shopper: str
    visit_id: str  # random; names the trip, not the shopper
    ts: float
    sources: tuple[str, ...]  # what noticed the visit, in order of first signal
    zones: tuple[str, ...]  # zones visited, in order, consecutive repeats merged
    duration_s: float = 0.0


class _Visit:
    """One open visit; dropped whole when it ends or its shopper opts out."""

    __slots__ = ("first_s", "held", "last_s", "sources", "visit_id", "zones")

    def __init__(self, visit_id: str, ts: float) -> None:
        self.visit_id = visit_id
        self.first_s = ts
        self.last_s = ts
        self.sources: list[str] = []
        self.zones: list[str] = []
        # True between a presence arrived/zone_changed/dwelled and its "left":
        # the gap does not run while the radio says the shopper is here.
        self.held = False


class VisitTracker:
    """Joins every identity signal into one open visit per shopper per trip.

    Same shape as ``PresenceTracker``: feed it signals and presence events as
    they come, ``tick`` it about once a second, and ask ``visit_of`` for the id
    to stamp on anything that happens during the visit. ``new_visit_id`` makes
    visit ids (random by default; tests inject a counter).
    """

    def __init__(
        self,
        params: VisitParams | None = None,
        *,
        new_visit_id: Callable[[], str] = random_visit_id,
    ) -> None:
        self.params = params or VisitParams()
        self._new_visit_id = new_visit_id
        # Ordered by last accepted signal: the front is the least recently signalled.
        self._open: OrderedDict[str, _Visit] = OrderedDict()
        self._clock_s: float | None = None  # the last tick's time
        self._signals: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._ended: Counter[str] = Counter()
        self._started = 0
        self._forgotten = 0
        self._zones_truncated = 0
        self._bad_ticks = 0

    # -- signals ------------------------------------------------------------------

    def signal(
        self, shopper: str, source: str, ts: float, zone: str | None = None
    ) -> list[VisitEvent]:
        """One sign that ``shopper`` is in the store at ``ts``; the events it caused.

        Opens a visit when none is open or the open one's last signal is
        ``visit_gap_s`` or more before ``ts``, else attaches to it. An unknown
        source, an empty shopper or an empty zone is a programmer error
        (ValueError); a bad, late or future timestamp is counted and dropped.
        """
        if source not in SOURCES:
            raise ValueError(f"unknown visit source {source!r}; expected one of {SOURCES}")
        return self._signal(shopper, source, ts, zone, hold=None)

    def on_presence(self, ev: PresenceEvent) -> list[VisitEvent]:
        """A presence event as a ``ble`` signal.

        arrived, zone_changed and dwelled hold the visit open until ``left``;
        ``left`` closes nothing, it starts the gap (the shopper may still be at
        the till with the phone in a bag). A ``left`` with no open visit opens
        none: it is the end of a stay, not the start of a trip.
        """
        if ev.kind in _PRESENT_KINDS:
            return self._signal(ev.shopper, "ble", ev.ts, ev.zone, hold=True)
        if ev.kind == "left":
            ts = _as_time(ev.ts)
            if ts is None:
                return self._reject("bad_ts")
            visit = self._open.get(ev.shopper)
            # With the visit already over by the gap (tick has not run yet), this
            # "left" would open the next one: no open visit for it either.
            if visit is None or (not visit.held and ts - visit.last_s >= self.params.visit_gap_s):
                return self._reject("left_without_visit")
            return self._signal(ev.shopper, "ble", ev.ts, ev.zone, hold=False)
        raise ValueError(f"unknown presence event kind {ev.kind!r}")

    def _signal(
        self, shopper: str, source: str, ts: float, zone: str | None, *, hold: bool | None
    ) -> list[VisitEvent]:
        if not isinstance(shopper, str) or not shopper:
            raise ValueError(f"shopper must be a non-empty string, not {shopper!r}")
        if zone is not None and (not isinstance(zone, str) or not zone):
            raise ValueError(f"zone must be None or a non-empty string, not {zone!r}")
        seconds = _as_time(ts)
        if seconds is None:
            return self._reject("bad_ts")
        ts = seconds
        p = self.params
        gap = p.visit_gap_s
        clock = self._clock_s
        if clock is not None and ts > clock + p.max_future_s:
            return self._reject("future")
        out: list[VisitEvent] = []
        visit = self._open.get(shopper)
        if visit is not None:
            if ts < visit.first_s - gap:
                return self._reject("late")
            if not visit.held and ts - visit.last_s >= gap:
                # The trip this visit was ended before this signal; tick has not
                # noticed yet. The signal opens the next one.
                self._end(shopper, visit, visit.last_s, "gap", out)
                visit = None
        if visit is None:
            if clock is not None and ts < clock - gap:
                return self._reject("late")
            if len(self._open) >= p.max_open:
                self._evict(ts if clock is None else max(ts, clock), out)
            visit = _Visit(self._new_visit_id(), ts)
            self._open[shopper] = visit
            self._attach(visit, source, ts, zone, hold)
            self._started += 1
            out.append(self._event("visit_started", shopper, visit, ts, 0.0))
        else:
            self._attach(visit, source, ts, zone, hold)
            self._open.move_to_end(shopper)
        self._signals[source] += 1
        return out

    def _attach(
        self, visit: _Visit, source: str, ts: float, zone: str | None, hold: bool | None
    ) -> None:
        visit.first_s = min(visit.first_s, ts)
        visit.last_s = max(visit.last_s, ts)
        if source not in visit.sources:
            visit.sources.append(source)
        if hold is not None:
            visit.held = hold
        if zone is not None and (not visit.zones or visit.zones[-1] != zone):
            if len(visit.zones) < self.params.max_zones:
                visit.zones.append(zone)
            else:
                visit.zones[-1] = zone
                self._zones_truncated += 1

    # -- time passing -----------------------------------------------------------

    def tick(self, now: float) -> list[VisitEvent]:
        """Let time pass: visits idle for ``visit_gap_s`` (or open ``max_visit_s``) end.

        Call it about once a second; its cost is one pass over the open visits
        (never more than ``max_open``). A clock that goes back is ignored.
        """
        seconds = _as_time(now)
        if seconds is None:
            self._bad_ticks += 1
            return []
        if self._clock_s is None or seconds > self._clock_s:
            self._clock_s = seconds
        clock = self._clock_s
        p = self.params
        ending: list[tuple[str, _Visit, float, str]] = []
        for shopper, visit in self._open.items():
            if clock - visit.first_s >= p.max_visit_s:
                ending.append((shopper, visit, clock if visit.held else visit.last_s, "too_long"))
            elif not visit.held and clock - visit.last_s >= p.visit_gap_s:
                ending.append((shopper, visit, visit.last_s, "gap"))
        out: list[VisitEvent] = []
        for shopper, visit, ended_s, reason in ending:
            self._end(shopper, visit, ended_s, reason, out)
        return out

    def forget(self, shopper: str) -> bool:
        """Opt-out erasure: drop the shopper's open visit at once, emit nothing."""
        if self._open.pop(shopper, None) is None:
            return False
        self._forgotten += 1
        return True

    # -- what others may ask ------------------------------------------------------

    def visit_of(self, shopper: str) -> str | None:
        """The shopper's open visit id, to stamp on decisions and transactions; else None."""
        visit = self._open.get(shopper)
        return visit.visit_id if visit is not None else None

    def stats(self) -> dict[str, Any]:
        """Counters for health: nothing here names a shopper or a visit."""
        return {
            "open": len(self._open),
            "held_by_presence": sum(1 for v in self._open.values() if v.held),
            "started": self._started,
            "ended": dict(self._ended),
            "ended_total": sum(self._ended.values()),
            "forgotten": self._forgotten,
            "signals": dict(self._signals),
            "rejected": dict(self._rejected),
            "rejected_total": sum(self._rejected.values()),
            "zones_truncated": self._zones_truncated,
            "bad_ticks": self._bad_ticks,
        }

    # -- internals ----------------------------------------------------------------

    def _reject(self, reason: str) -> list[VisitEvent]:
        self._rejected[reason] += 1
        return []

    def _event(
        self, kind: VisitEventKind, shopper: str, visit: _Visit, ts: float, duration_s: float
    ) -> VisitEvent:
        return VisitEvent(
            kind=kind,
            shopper=shopper,
            visit_id=visit.visit_id,
            ts=ts,
            sources=tuple(visit.sources),
            zones=tuple(visit.zones),
            duration_s=duration_s,
        )

    def _end(
        self, shopper: str, visit: _Visit, ended_s: float, reason: str, out: list[VisitEvent]
    ) -> None:
        del self._open[shopper]
        self._ended[reason] += 1
        out.append(
            self._event("visit_ended", shopper, visit, ended_s, max(0.0, ended_s - visit.first_s))
        )

    def _evict(self, now: float, out: list[VisitEvent]) -> None:
        """End the least recently signalled visit, preferring one presence does not hold."""
        victim = next((s for s, v in self._open.items() if not v.held), None)
        if victim is None:
            victim = next(iter(self._open))
        visit = self._open[victim]
        ended_s = max(now, visit.last_s) if visit.held else visit.last_s
        self._end(victim, visit, ended_s, "evicted", out)
