"""Business rules: from a ranked candidate list to the items one output may show, with reasons.

Input is the ranker's candidates (best first, each with its source: the ONNX
``model`` or the popularity ``fallback``), the shopper's basket, a stock view,
the shopper's consent, the visit's frequency caps and the store's exclusions;
output is a ``Decision``: at most ``k`` items kept, best first, each with the
reasons it is there, every candidate looked at and dropped with the reason it
was dropped, or a refusal of the whole decision. Pure: no I/O, no asyncio, time
comes in with each call.

Why it is built this way:

1. **Every decision explains itself.** Salesforce Personalization and Adobe
   Target show a marketer why an offer won; an associate told "suggest oat milk"
   deserves the same, and so does HQ when a shopper asks "why was I shown
   this?". So a kept item carries ``ranked 2 by model``, ``in stock 14`` (or
   ``stock unknown``) and how often it was shown this visit, and a dropped one
   carries ``in_basket``, ``out_of_stock``, ``excluded`` (with the rule that
   matched), ``capped``, ``duplicate`` or ``invalid``. The reasons are data
   (``Pick``, ``Drop``), with plain sentences beside them for people.

2. **Consent is checked per output, not per shopper.** An output shows a
   shopper's suggestions only within the scope that output needs
   (``OUTPUT_SCOPES``): associate alerts need ``associate_assist``; zone screens
   and lane displays need ``screens``. A lane display shows no name, but the
   suggestions on it are made from the linked shopper's basket and history and
   are read by whoever stands at the lane, which is what the ``screens`` scope
   is about. An expired consent, or one without ``presence`` (the shopper may
   not be noticed at all), refuses as ``no_consent``, exactly like
   ``ShopperDirectory.allows``.

3. **Unknown stock is not "out".** The stock view comes from HQ's inventory
   downlink and may be empty (not received yet, or never sent) or partial. An
   empty table, an item missing from it, or a quantity that is None or not a
   number means "unknown": the item stays, with the reason ``stock unknown``.
   Only a known quantity of 0 or less drops it. Dropping on unknown stock would
   turn a lost downlink into a store that suggests nothing.

4. **Caps are per visit, and count what the caller records.** ``decide`` only
   reads ``VisitCaps``; the caller records a decision once it has acted on it
   (``caps.record(visit, trigger, items, now)``). A holdout's would-have
   decision is recorded too: the holdout must meet the same caps as the arms,
   or its would-have decisions (the attach-rate denominator) would not be
   comparable. The caps forget a visit when it ends, keep at most
   ``max_visits`` visits (least recently recorded first out) and drop visits
   idle for ``idle_s``, so a missed ``end_visit`` costs a little memory for a
   while, never forever.

5. **Hostile input never raises, and the work is capped.** Candidates come
   from a model bundle and stock from a downlink; either may be junk. Entries
   that are not item ids are dropped as ``invalid``, repeats as ``duplicate``
   (the better rank wins), and at most ``MAX_EXAMINED`` candidates are looked
   at, stopping as soon as ``k`` are kept. Programmer errors (an unknown output,
   an empty trigger) are ValueErrors, as elsewhere in the gateway.

What the composition root wires: ``Exclusions.build`` from
``decision.exclude_items`` and ``decision.exclude_prefixes``; ``CapParams``
from ``decision.item_cap_per_visit`` and ``decision.decisions_per_visit``; ``k``
from ``decision.k``; ``VisitCaps.end_visit`` on each ``visit_ended``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal, NamedTuple

from gateway.clock import as_finite as _finite
from gateway.decision.visit_book import VisitBook
from gateway.shoppers import Consent

Output = Literal["associate", "screen", "lane"]

# The consent scope each output needs (module docstring, point 2).
OUTPUT_SCOPES: Mapping[str, str] = {
    "associate": "associate_assist",
    "screen": "screens",
    "lane": "screens",
}

DropReason = Literal["invalid", "duplicate", "in_basket", "excluded", "out_of_stock", "capped"]
Refusal = Literal["no_visit", "no_consent", "visit_cap"]

# Candidates looked at per decision. The ranker returns a few dozen; a bundle
# that returns the whole catalogue must not cost a pass of every rule over 50,000
# ids on a Pi, and by 500 candidates deep something is wrong with the ranking anyway.
MAX_EXAMINED = 500
# Items kept per decision, whatever ``k`` asks: config allows at most 50.
MAX_K = 50
# Longest item id accepted. Catalogue ids are opaque strings (EAN-13, PLU,
# Instacart product ids) well under 64 characters; the bound also bounds the
# cost of each exclusion prefix on each id.
MAX_ITEM_ID_LEN = 128
# Longest source name ("model", "fallback"); anything longer is junk from a bundle.
MAX_SOURCE_LEN = 32


class Candidate(NamedTuple):
    """One ranked item: its id and what ranked it ("model" or "fallback")."""

    item: str
    source: str


def ranked(items: Iterable[str], source: str) -> tuple[Candidate, ...]:
    """Candidates from one ranker's list, best first (at most ``MAX_EXAMINED`` of them)."""
    return tuple(Candidate(item, source) for item in islice(items, MAX_EXAMINED))


@dataclass(frozen=True, slots=True)
class Pick:
    """An item kept: its 1-based rank in the candidate list, its source and why it stays."""

    item: str
    rank: int
    source: str
    stock: float | None  # known quantity on hand; None when unknown
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "rank": self.rank,
            "source": self.source,
            "stock": self.stock,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True)
class Drop:
    """A candidate dropped: its rank, the reason code and a sentence for people."""

    item: str | None  # None when the entry was not an item id at all
    rank: int
    reason: DropReason
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"item": self.item, "rank": self.rank, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Decision:
    """What one output may show for one trigger of one visit, and why.

    Either ``refusal`` is set (nothing may be shown; ``items`` and ``dropped``
    are empty) or ``items`` holds at most ``k`` picks, best first, possibly
    none. ``examined`` counts the candidates looked at; ``unexamined`` those
    never reached (the ``k`` picks were found first, or ``MAX_EXAMINED`` ran out).
    """

    visit: str | None
    trigger: str
    output: str
    scope: str
    ts: float
    items: tuple[Pick, ...] = ()
    dropped: tuple[Drop, ...] = ()
    refusal: Refusal | None = None
    detail: str = ""
    examined: int = 0
    unexamined: int = 0

    @property
    def refused(self) -> bool:
        return self.refusal is not None

    @property
    def item_ids(self) -> tuple[str, ...]:
        """The kept items' ids, best first: what to show and to record."""
        return tuple(p.item for p in self.items)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the ``decision`` upstream event (the shopper goes in its subject)."""
        return {
            "visit": self.visit,
            "trigger": self.trigger,
            "output": self.output,
            "scope": self.scope,
            "items": [p.as_dict() for p in self.items],
            "dropped": [d.as_dict() for d in self.dropped],
            "refusal": self.refusal,
            "detail": self.detail,
            "examined": self.examined,
            "unexamined": self.unexamined,
        }


# -- exclusions --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exclusions:
    """Items the store never recommends: exact ids and id prefixes.

    Not validated here: the composition root builds it from
    ``decision.exclude_items`` and ``decision.exclude_prefixes``, which
    gateway/config.py has already checked (lists of non-empty ids of at most
    64 characters; an empty prefix, which would exclude every item and so
    silence the store, never gets this far).
    """

    items: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def build(cls, items: Iterable[str] = (), prefixes: Iterable[str] = ()) -> Exclusions:
        """Exclusions of ``items`` and ``prefixes`` (a repeated prefix is tried once)."""
        return cls(frozenset(items), tuple(dict.fromkeys(prefixes)))

    def match(self, item: str) -> str | None:
        """The rule that excludes ``item`` ("item X", "prefix ALC-"), or None."""
        if item in self.items:
            return f"item {item}"
        for prefix in self.prefixes:
            if item.startswith(prefix):
                return f"prefix {prefix}"
        return None


# -- frequency caps ----------------------------------------------------------------


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True, slots=True)
class CapParams:
    """Frequency caps per visit and the bounds of their memory; each value says why.

    Not validated here: the two configurable caps come from
    ``decision.item_cap_per_visit`` and ``decision.decisions_per_visit``, which
    gateway/config.py bounds (integers of at least 1); the other fields are the
    constants below. Any other caller passes positive integers and a positive
    ``idle_s``.
    """

    # An item is shown at most this often per visit, across triggers and outputs:
    # the third mention of oat milk is nagging. Config: decision.item_cap_per_visit.
    item_shows_per_visit: int = 2
    # At most this many decisions per visit and trigger: a shopper who dwells in
    # five zones does not get fifty alerts. Config: decision.decisions_per_visit.
    decisions_per_trigger: int = 10
    # Per-trigger overrides of ``decisions_per_trigger`` (a lane display updates
    # at every scanned item and may need more than an arrival alert, which is one).
    trigger_limits: Mapping[str, int] = field(default_factory=dict)
    # Visits tracked at once: the visit book keeps at most 5,000 open visits
    # (VisitParams.max_open), and a tracked visit costs well under 10 kB.
    max_visits: int = 5_000
    # Distinct items counted per visit: k=50 items per decision times a generous
    # number of decisions. Beyond it new items are shown uncounted (and counted
    # in stats): a cap that forgets is better than memory that grows.
    max_items_per_visit: int = 512
    # Distinct triggers counted per visit: there are three today.
    max_triggers_per_visit: int = 16
    # A visit not recorded for this long is forgotten even without end_visit:
    # no visit lasts longer (VisitParams.max_visit_s).
    idle_s: float = 12 * 3600

    def limit_for(self, trigger: str) -> int:
        """Decisions allowed per visit for ``trigger``."""
        return self.trigger_limits.get(trigger, self.decisions_per_trigger)


class _VisitCount:
    __slots__ = ("decisions", "items", "last_s")

    def __init__(self, now: float) -> None:
        self.decisions: Counter[str] = Counter()
        self.items: Counter[str] = Counter()
        self.last_s = now


class VisitCaps:
    """Per-visit counts of decisions per trigger and of shows per item; bounded.

    ``decide`` reads it; the caller ``record``s each decision it acted on and
    calls ``end_visit`` when the visit ends. Visit ids are random (they name a
    trip, not a person), so nothing here identifies a shopper.
    """

    def __init__(self, params: CapParams | None = None) -> None:
        self.params = params or CapParams()
        self._visits: VisitBook[_VisitCount] = VisitBook(self.params.max_visits, self.params.idle_s)
        self._untracked = 0
        self._bad = 0

    def record(self, visit: str, trigger: str, items: Iterable[str], now: float) -> None:
        """Count one decision of ``trigger`` in ``visit`` that showed (or would have) ``items``.

        Each distinct item counts once per decision. Bad input (an empty visit or
        trigger, a clock that is not a number) is counted and ignored.
        """
        now_s = _finite(now)
        if (
            not isinstance(visit, str)
            or not visit
            or not isinstance(trigger, str)
            or not trigger
            or now_s is None
        ):
            self._bad += 1
            return
        p = self.params
        entry = self._visits.touch(visit, now_s, lambda: _VisitCount(now_s))
        if trigger in entry.decisions or len(entry.decisions) < p.max_triggers_per_visit:
            entry.decisions[trigger] += 1
        else:
            self._untracked += 1
        seen: set[str] = set()
        for item in islice(items, MAX_K * 2):
            if not isinstance(item, str) or item in seen:
                continue
            seen.add(item)
            if item in entry.items or len(entry.items) < p.max_items_per_visit:
                entry.items[item] += 1
            else:
                self._untracked += 1

    def decisions(self, visit: str, trigger: str) -> int:
        """Decisions recorded for ``trigger`` in ``visit``."""
        entry = self._visits.get(visit)
        return entry.decisions[trigger] if entry is not None else 0

    def shows(self, visit: str, item: str) -> int:
        """Times ``item`` was recorded as shown in ``visit``."""
        entry = self._visits.get(visit)
        return entry.items[item] if entry is not None else 0

    def end_visit(self, visit: str) -> bool:
        """The visit ended: forget its counts. True when there were any."""
        return self._visits.end(visit)

    def __len__(self) -> int:
        return len(self._visits)

    def stats(self) -> dict[str, int]:
        """Counters for health: nothing here names a visit."""
        return {
            "visits": len(self._visits),
            "ended": self._visits.ended,
            "evicted": self._visits.evicted,
            "expired": self._visits.expired,
            "untracked": self._untracked,
            "bad": self._bad,
        }


# -- the decision ------------------------------------------------------------------


def _stock_of(stock: Mapping[str, object], item: str) -> float | None:
    """Known quantity on hand, or None when unknown (missing, None, not a number)."""
    try:
        value = stock.get(item)
    except (TypeError, AttributeError):
        return None
    return _finite(value)


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _basket_set(basket: Collection[str]) -> Collection[str]:
    if isinstance(basket, set | frozenset):
        return basket
    try:
        return frozenset(b for b in basket if isinstance(b, str))
    except TypeError:
        return frozenset()


def decide(
    candidates: Iterable[Candidate],
    *,
    visit: str | None,
    trigger: str,
    output: Output,
    consent: Consent | None,
    now: float,
    k: int,
    caps: VisitCaps,
    basket: Collection[str] = (),
    stock: Mapping[str, float | None] | None = None,
    exclusions: Exclusions | None = None,
) -> Decision:
    """The rules applied to ``candidates`` (best first) for one output; see the module docs.

    Refusals, in this order: ``no_visit`` (no visit id: caps cannot be kept),
    ``no_consent`` (``consent`` is None, expired, lacks ``presence`` or lacks the
    output's scope at ``now``), ``visit_cap`` (``caps`` holds as many decisions
    of this trigger in this visit as allowed). Otherwise each candidate in turn
    is dropped as ``invalid``, ``duplicate``, ``in_basket``, ``excluded``,
    ``out_of_stock`` or ``capped`` (first reason that applies), or kept, until
    ``k`` are kept. Nothing is recorded: call ``caps.record`` once acted upon.
    """
    if output not in OUTPUT_SCOPES:
        raise ValueError(f"unknown output {output!r}; expected one of {tuple(OUTPUT_SCOPES)}")
    if not isinstance(trigger, str) or not trigger:
        raise ValueError(f"trigger must be a non-empty string, not {trigger!r}")
    scope = OUTPUT_SCOPES[output]
    ts = _finite(now)
    stamp = ts if ts is not None else 0.0

    def refuse(refusal: Refusal, detail: str) -> Decision:
        return Decision(
            visit=visit if isinstance(visit, str) else None,
            trigger=trigger,
            output=output,
            scope=scope,
            ts=stamp,
            refusal=refusal,
            detail=detail,
        )

    if not isinstance(visit, str) or not visit:
        return refuse("no_visit", "no open visit to count caps against")
    if ts is None:
        return refuse("no_consent", "no valid time to check consent at")
    if consent is None:
        return refuse("no_consent", "no consent on record")
    if not (consent.active(ts) and consent.allows(scope, ts)):
        why = "consent expired" if ts >= consent.expires_at else f"scope {scope} not granted"
        return refuse("no_consent", why)
    limit = caps.params.limit_for(trigger)
    made = caps.decisions(visit, trigger)
    if made >= limit:
        return refuse("visit_cap", f"{made} of {limit} {trigger} decisions made this visit")

    want = min(k, MAX_K) if _count(k) else 0
    in_basket = _basket_set(basket)
    stock = stock if isinstance(stock, Mapping) else {}
    exclusions = exclusions or Exclusions()
    item_cap = caps.params.item_shows_per_visit

    kept: list[Pick] = []
    dropped: list[Drop] = []
    seen: set[str] = set()
    examined = 0
    iterator = iter(candidates) if isinstance(candidates, Iterable) else iter(())
    if want:
        for rank, candidate in enumerate(islice(iterator, MAX_EXAMINED), start=1):
            examined = rank
            item, source = _parse(candidate)
            if item is None or source is None:
                dropped.append(Drop(item, rank, "invalid", "not an item id with a source"))
                continue
            if item in seen:
                dropped.append(Drop(item, rank, "duplicate", "ranked higher already"))
            elif item in in_basket:
                dropped.append(Drop(item, rank, "in_basket", "already in the basket"))
            elif (rule := exclusions.match(item)) is not None:
                dropped.append(Drop(item, rank, "excluded", f"excluded by {rule}"))
            else:
                quantity = _stock_of(stock, item)
                shows = caps.shows(visit, item)
                if quantity is not None and quantity <= 0:
                    dropped.append(
                        Drop(item, rank, "out_of_stock", f"out of stock ({_number(quantity)})")
                    )
                elif shows >= item_cap:
                    dropped.append(
                        Drop(item, rank, "capped", f"shown {shows} of {item_cap} times this visit")
                    )
                else:
                    stock_reason = (
                        "stock unknown" if quantity is None else f"in stock {_number(quantity)}"
                    )
                    kept.append(
                        Pick(
                            item,
                            rank,
                            source,
                            quantity,
                            (
                                f"ranked {rank} by {source}",
                                stock_reason,
                                f"shown {shows} of {item_cap} times this visit",
                            ),
                        )
                    )
            seen.add(item)
            if len(kept) >= want:
                break
    unexamined = _remaining(candidates, examined)
    return Decision(
        visit=visit,
        trigger=trigger,
        output=output,
        scope=scope,
        ts=stamp,
        items=tuple(kept),
        dropped=tuple(dropped),
        examined=examined,
        unexamined=unexamined,
    )


def _parse(candidate: object) -> tuple[str | None, str | None]:
    """(item, source) of a candidate, with None for whichever is not valid."""
    if not isinstance(candidate, tuple) or len(candidate) != 2:
        return None, None
    item, source = candidate
    if not isinstance(item, str) or not 0 < len(item) <= MAX_ITEM_ID_LEN:
        item = None
    if not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE_LEN:
        source = None
    return item, source


def _remaining(candidates: object, examined: int) -> int:
    """Candidates not looked at, when the input has a length (an iterator's are unknown: 0)."""
    try:
        return max(0, len(candidates) - examined)  # type: ignore[arg-type]
    except TypeError:
        return 0
