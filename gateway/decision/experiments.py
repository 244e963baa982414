"""Experiments: which arm a shopper is in, which recommendations converted, and per-arm sums.

Three parts, all pure (no I/O, no asyncio; time comes in with each call):

- ``Experiment`` and ``assign``: a shopper's arm is a hash of the experiment's
  salt, its id and the shopper id, so it is the same in every decision, every
  visit, every store and every process, until the salt changes, and nobody has
  to store who is in which arm.
- ``Attribution``: remembers what each visit was recommended (shown or not) and
  turns a purchase in the same visit into ``Conversion``s, one per (visit,
  experiment, item) however many decisions recommended the item.
- ``HourlySummary``: decisions, impressions and conversions per experiment, arm
  and hour, flushed once an hour is over for the ``experiment_summary`` event.

Why it is built this way:

1. **Assignment is ``sha256(salt || b"/" || id || b"/" || shopper)``.** The
   first 53 bits of the digest, over 2**53, give a point ``u`` in [0, 1) (53
   bits so that the division is exact in a float and never rounds up to 1.0).
   ``u`` below ``holdout`` is the holdout; the rest of [0, 1) is cut into the
   arms in their declared order, in proportion to their weights. Salting with
   the experiment's id as well as its salt keeps two experiments that share a
   salt independent; a new salt reshuffles everyone. Python's ``hash()`` is
   salted per process and ``random`` is not stable across versions, so neither
   is used.

2. **A holdout still decides.** Cloud engines (Adobe Target's control group,
   Salesforce's holdout) measure lift against shoppers who saw nothing; that
   needs to know what they *would* have seen, or a holdout's purchases cannot
   be compared with an arm's conversions. So ``Experiment.plan`` tells the
   caller, for the holdout and for any arm whose strategy is ``none``, to rank
   with the ``baseline`` strategy, run the rules, record the result with
   ``shown=False`` and show nothing. Their would-have conversions carry
   ``shown=False``; the lift of an arm is its attach rate against the
   holdout's.

3. **A conversion is counted once per (visit, experiment, item).** An item
   recommended at arrival, again in a zone and again at the lane, then bought,
   is one conversion, attributed to the first recommendation (its arm does not
   change within an experiment anyway) and marked shown if any of those
   recommendations was shown. A recommendation stamped after the purchase (more
   than ``max_skew_s`` after: lane PCs and the gateway are NTP-synchronised but
   may differ by seconds) did not cause it. A purchase in another visit is not
   a conversion: attribution is within a trip, where the store's nudge can
   plausibly have mattered.

4. **Bounded memory, no personal data in the sums.** At most ``max_visits``
   visits (least recently recorded out first), ``max_items_per_visit``
   recommended items per visit, visits idle for ``idle_s`` forgotten, and at
   most ``max_buckets`` summary rows between flushes. ``forget_shopper`` drops
   a shopper's visits at once (opt-out). Summaries hold counts only.

What the composition root wires: an ``Experiment`` per ``[[experiments]]``
table (``Experiment.from_config``), ``AttributionParams.bucket_s`` from
``decision.summary_interval_s``, ``Attribution.end_visit`` on each
``visit_ended``, ``on_purchase`` on each completed checkout with a visit, and
``flush`` on a timer.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, NamedTuple

from gateway.clock import as_finite as _finite
from gateway.decision.visit_book import VisitBook

HOLDOUT = "holdout"
# The strategy that shows nothing: an arm with it is a second holdout (point 2).
NONE_STRATEGY = "none"

# Top 53 bits of the digest: a float holds them exactly (module docstring, point 1).
_BITS = 53
# Items looked at per call: k is at most 50, and a receipt has at most a few
# hundred lines; this bounds the work a junk list can cause.
MAX_ITEMS_PER_CALL = 2_000


# -- experiments and assignment ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arm:
    """One arm: its name, its relative weight and the strategy it shows.

    Not validated here: arms come from ``[[experiments.arms]]`` tables, which
    gateway/config.py checks (a name like ``model-b``, a finite weight above 0,
    a known strategy). Any other caller passes values that pass those checks.
    """

    name: str
    weight: float = 1.0
    strategy: str = "model"  # "model", "popular" or "none"; the caller maps it to a ranker


class ArmPlan(NamedTuple):
    """What to do for a shopper in an arm: rank with ``strategy``; show only when ``shown``."""

    strategy: str
    shown: bool


@dataclass(frozen=True, slots=True)
class Experiment:
    """An A/B test with a holdout; the holdout is its own arm, named ``holdout``.

    ``baseline`` is the strategy the holdout (and any ``none`` arm) computes its
    would-have decisions with: what the store shows when no experiment runs.

    Not validated here: ``id``, ``salt``, ``holdout`` and ``arms`` come from an
    ``[[experiments]]`` table, which gateway/config.py checks (an id like
    ``oat-milk-2026``, salt of 8 to 128 characters, holdout in [0, 1), 1 to 16
    arms with unique names, none named ``holdout``). ``baseline`` is the
    caller's, a strategy that shows something (never ``none``: the holdout
    would then have nothing to be compared with).
    """

    id: str
    salt: str | bytes
    arms: tuple[Arm, ...]
    holdout: float = 0.0
    baseline: str = "model"
    # Cumulative upper bounds of the arms' shares of [0, 1) after the holdout.
    _bounds: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        total = math.fsum(a.weight for a in self.arms)
        bounds, running = [], 0.0
        for a in self.arms:
            running += a.weight
            bounds.append(running / total)
        object.__setattr__(self, "_bounds", tuple(bounds))

    @classmethod
    def from_config(cls, section: Any, baseline: str = "model") -> Experiment:
        """From an ``[[experiments]]`` config section (anything with id, salt, holdout, arms)."""
        arms = tuple(Arm(a.name, a.weight, a.strategy) for a in section.arms)
        return cls(section.id, section.salt, arms, section.holdout, baseline)

    def plan(self, arm: str) -> ArmPlan:
        """What the caller does for ``arm``: the holdout and ``none`` arms compute unshown."""
        if arm == HOLDOUT:
            return ArmPlan(self.baseline, False)
        for a in self.arms:
            if a.name == arm:
                if a.strategy == NONE_STRATEGY:
                    return ArmPlan(self.baseline, False)
                return ArmPlan(a.strategy, True)
        raise ValueError(f"experiment {self.id!r} has no arm {arm!r}")

    def _salt_bytes(self) -> bytes:
        return self.salt.encode() if isinstance(self.salt, str) else self.salt


def bucket(experiment: Experiment, shopper: str) -> float:
    """The shopper's point in [0, 1) for ``experiment``: fixed for a given salt and id."""
    if not isinstance(shopper, str):
        raise ValueError(f"shopper must be a string, not {shopper!r}")
    digest = hashlib.sha256(
        experiment._salt_bytes() + b"/" + experiment.id.encode() + b"/" + shopper.encode()
    ).digest()
    return (int.from_bytes(digest[:8], "big") >> (64 - _BITS)) / (1 << _BITS)


def assign(experiment: Experiment, shopper: str) -> str:
    """The arm ``shopper`` is in: ``holdout`` or one of the experiment's arm names."""
    u = bucket(experiment, shopper)
    if u < experiment.holdout:
        return HOLDOUT
    v = (u - experiment.holdout) / (1 - experiment.holdout)
    for arm, bound in zip(experiment.arms, experiment._bounds, strict=True):
        if v < bound:
            return arm.name
    # Only rounding in the running sum can leave v at or above the last bound.
    return experiment.arms[-1].name


# -- hourly summaries --------------------------------------------------------------


@dataclass(slots=True)
class ArmSummary:
    """One arm of one experiment over one period (an hour by default).

    ``decisions`` and ``items`` count every decision recorded, shown or not (a
    holdout's are all would-have); ``decisions_shown`` and ``impressions``
    (items shown) only those shown. Conversions count in the period of the
    purchase, so a recommendation at 10:58 bought at 11:03 converts in the 11:00
    period: summed over a day, the attach rate is right.
    """

    experiment: str
    arm: str
    start: float
    end: float
    decisions: int = 0
    decisions_shown: int = 0
    items: int = 0
    impressions: int = 0
    conversions: int = 0
    conversions_shown: int = 0

    @property
    def attach_rate(self) -> float | None:
        """Conversions per decision; None when there were no decisions in the period."""
        return self.conversions / self.decisions if self.decisions else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "decisions": self.decisions,
            "decisions_shown": self.decisions_shown,
            "items": self.items,
            "impressions": self.impressions,
            "conversions": self.conversions,
            "conversions_shown": self.conversions_shown,
            "attach_rate": self.attach_rate,
        }


class HourlySummary:
    """Per-(period, experiment, arm) counters; ``flush`` hands over the periods that are over.

    A period is ``[n * bucket_s, (n + 1) * bucket_s)`` in unix seconds (hours on
    the UTC hour by default). A record stamped in a period already flushed opens
    it again and is flushed with the next batch: summaries of the same period
    add up, so HQ sums them.
    """

    def __init__(self, bucket_s: float = 3600.0, max_buckets: int = 4_096) -> None:
        # Unchecked: both come from AttributionParams (bucket_s from the config).
        self.bucket_s = float(bucket_s)
        self.max_buckets = max_buckets
        self._rows: dict[tuple[float, str, str], ArmSummary] = {}
        self.dropped = 0  # records lost because ``max_buckets`` rows were open

    def _row(self, experiment: str, arm: str, ts: float) -> ArmSummary | None:
        start = math.floor(ts / self.bucket_s) * self.bucket_s
        key = (start, experiment, arm)
        row = self._rows.get(key)
        if row is None:
            if len(self._rows) >= self.max_buckets:
                self.dropped += 1
                return None
            row = self._rows[key] = ArmSummary(experiment, arm, start, start + self.bucket_s)
        return row

    def add_decision(self, experiment: str, arm: str, items: int, shown: bool, ts: float) -> None:
        """One decision of ``items`` items, shown or not."""
        row = self._row(experiment, arm, ts)
        if row is not None:
            row.decisions += 1
            row.items += items
            if shown:
                row.decisions_shown += 1
                row.impressions += items

    def add_conversion(self, experiment: str, arm: str, shown: bool, ts: float) -> None:
        """One conversion at ``ts`` (the purchase)."""
        row = self._row(experiment, arm, ts)
        if row is not None:
            row.conversions += 1
            if shown:
                row.conversions_shown += 1

    def flush(self, now: float, *, everything: bool = False) -> list[dict[str, Any]]:
        """The periods over by ``now``, one dict per (period, experiment), and forget them.

        Each dict is the data of one ``experiment_summary`` event: ``experiment``,
        ``start``, ``end`` and ``arms`` (one entry per arm with activity, by name).
        ``everything`` hands over the periods still running too (at shutdown: HQ
        adds up summaries of the same period, so nothing counted is lost).
        """
        now_s = _finite(now)
        if now_s is None and not everything:
            return []
        done = sorted(
            key
            for key, row in self._rows.items()
            if everything or (now_s is not None and row.end <= now_s)
        )
        out: list[dict[str, Any]] = []
        for start, experiment, arm in done:
            row = self._rows.pop((start, experiment, arm))
            if not out or out[-1]["experiment"] != experiment or out[-1]["start"] != start:
                out.append({"experiment": experiment, "start": start, "end": row.end, "arms": []})
            out[-1]["arms"].append(row.as_dict())
        return out

    def rows(self) -> list[ArmSummary]:
        """The open rows, for a look at the current period (health, tests)."""
        return list(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)


# -- attribution -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttributionParams:
    """Bounds and tolerances of attribution; each value says why.

    Not validated here: ``bucket_s`` comes from ``decision.summary_interval_s``,
    which gateway/config.py bounds (1 to 86,400 s); the other fields are the
    constants below. Any other caller passes positive counts and durations.
    """

    # Visits remembered at once: the visit book keeps at most 5,000 open visits.
    max_visits: int = 5_000
    # Recommended (experiment, item) pairs remembered per visit: k=5 items in a
    # few dozen decisions is a few hundred at most.
    max_items_per_visit: int = 256
    # A visit not recorded for this long is forgotten without end_visit: no visit
    # lasts longer (VisitParams.max_visit_s).
    idle_s: float = 12 * 3600
    # A recommendation stamped up to this long after a purchase still counts for
    # it: lane PCs and the gateway are NTP-synchronised but a lane may drift.
    max_skew_s: float = 120.0
    # Summary period. Config: decision.summary_interval_s.
    bucket_s: float = 3600.0
    # Summary rows kept between flushes: 8 experiments x 17 arms x a day of hours
    # is 3,264; more means flush is not being called.
    max_buckets: int = 4_096


@dataclass(frozen=True, slots=True)
class Conversion:
    """A recommended item bought in the same visit, with the arm that recommended it.

    ``shopper`` is for the upstream event's ``subject`` (opt-out erasure), not its data.
    """

    visit: str
    shopper: str
    experiment: str
    arm: str
    item: str
    shown: bool  # False: a would-have conversion (holdout, or a recommendation never shown)
    recommended_ts: float  # the first recommendation of the item in this visit
    ts: float  # the purchase

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready data of a ``conversion`` event (no shopper id)."""
        return {
            "visit": self.visit,
            "experiment": self.experiment,
            "arm": self.arm,
            "item": self.item,
            "shown": self.shown,
            "recommended_ts": self.recommended_ts,
        }


class _Recommended:
    __slots__ = ("arm", "converted", "shown", "ts")

    def __init__(self, arm: str, shown: bool, ts: float) -> None:
        self.arm = arm
        self.shown = shown
        self.ts = ts
        self.converted = False


class _VisitRecord:
    __slots__ = ("items", "last_s", "shopper", "size")

    def __init__(self, shopper: str, now: float) -> None:
        self.shopper = shopper
        self.last_s = now
        self.items: dict[str, dict[str, _Recommended]] = {}  # item -> experiment -> first rec
        self.size = 0  # (experiment, item) pairs held


class Attribution:
    """Recommendations per visit, and the conversions a purchase in the visit makes of them."""

    def __init__(self, params: AttributionParams | None = None) -> None:
        self.params = p = params or AttributionParams()
        self.summary = HourlySummary(p.bucket_s, p.max_buckets)
        self._visits: VisitBook[_VisitRecord] = VisitBook(p.max_visits, p.idle_s)
        self._recorded = 0
        self._conversions = 0
        self._forgotten = 0
        self._untracked = 0
        self._bad = 0

    def record(
        self,
        visit: str,
        shopper: str,
        arm: str,
        experiment: str,
        items: Iterable[str],
        ts: float,
        shown: bool,
    ) -> None:
        """One decision for ``visit`` in ``arm`` of ``experiment`` (an id), shown or not.

        Record every decision the rules did not refuse, empty ones included (a
        decision is an opportunity, the attach rate's denominator); a holdout's
        with ``shown=False``. Bad input (empty ids, a time that is not a number)
        is counted and ignored.
        """
        ts_s = _finite(ts)
        if ts_s is None or not all(
            isinstance(s, str) and s for s in (visit, shopper, arm, experiment)
        ):
            self._bad += 1
            return
        shown = bool(shown)
        p = self.params
        entry = self._visits.touch(visit, ts_s, lambda: _VisitRecord(shopper, ts_s))
        distinct = list(
            dict.fromkeys(i for i in islice(items, MAX_ITEMS_PER_CALL) if isinstance(i, str) and i)
        )
        for item in distinct:
            by_experiment = entry.items.get(item)
            rec = by_experiment.get(experiment) if by_experiment is not None else None
            if rec is not None:
                rec.shown = rec.shown or shown
                rec.ts = min(rec.ts, ts_s)
                continue
            if entry.size >= p.max_items_per_visit:
                self._untracked += 1
                continue
            entry.items.setdefault(item, {})[experiment] = _Recommended(arm, shown, ts_s)
            entry.size += 1
        self._recorded += 1
        self.summary.add_decision(experiment, arm, len(distinct), shown, ts_s)

    def on_purchase(self, visit: str, items: Iterable[str], ts: float) -> list[Conversion]:
        """Items bought in ``visit`` at ``ts``: the conversions they make, each once ever."""
        ts_s = _finite(ts)
        entry = self._visits.get(visit) if isinstance(visit, str) else None
        if ts_s is None or entry is None:
            return []
        out: list[Conversion] = []
        bought = dict.fromkeys(i for i in islice(items, MAX_ITEMS_PER_CALL) if isinstance(i, str))
        for item in bought:
            for experiment, rec in entry.items.get(item, {}).items():
                if rec.converted or rec.ts > ts_s + self.params.max_skew_s:
                    continue
                rec.converted = True
                out.append(
                    Conversion(
                        visit, entry.shopper, experiment, rec.arm, item, rec.shown, rec.ts, ts_s
                    )
                )
                self.summary.add_conversion(experiment, rec.arm, rec.shown, ts_s)
        self._conversions += len(out)
        return out

    def end_visit(self, visit: str) -> bool:
        """The visit ended: forget what it was recommended. True when there was anything."""
        return self._visits.end(visit)

    def forget_shopper(self, shopper: str) -> int:
        """Opt-out: drop the shopper's visits at once; how many. The sums hold no one."""
        gone = self._visits.drop_where(lambda entry: entry.shopper == shopper)
        self._forgotten += gone
        return gone

    def flush(self, now: float, *, everything: bool = False) -> list[dict[str, Any]]:
        """``HourlySummary.flush``: the finished periods' summaries, for ``experiment_summary``."""
        return self.summary.flush(now, everything=everything)

    def __len__(self) -> int:
        return len(self._visits)

    def stats(self) -> dict[str, int]:
        """Counters for health: nothing here names a shopper or a visit."""
        return {
            "visits": len(self._visits),
            "recorded": self._recorded,
            "conversions": self._conversions,
            "ended": self._visits.ended,
            "evicted": self._visits.evicted,
            "expired": self._visits.expired,
            "forgotten": self._forgotten,
            "untracked": self._untracked,
            "bad": self._bad,
            "summary_rows": len(self.summary),
            "summary_dropped": self.summary.dropped,
        }
