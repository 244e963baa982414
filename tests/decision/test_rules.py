"""Business rules: kept items with reasons, dropped candidates with why, refusals, visit caps."""

from __future__ import annotations

import json
import math
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decision.rules import (
    MAX_EXAMINED,
    MAX_K,
    OUTPUT_SCOPES,
    Candidate,
    CapParams,
    Decision,
    DropReason,
    Exclusions,
    VisitCaps,
    decide,
    ranked,
)
from gateway.shoppers import Consent

T0 = 1_795_000_000.0
ALL_SCOPES = frozenset({"presence", "associate_assist", "screens", "kiosk", "analytics"})


def consent(
    scopes: frozenset[str] = ALL_SCOPES, expires_at: float = T0 + 86_400, shopper: str = "s1"
) -> Consent:
    return Consent(shopper, scopes, expires_at)


def run(
    items: Any = ("a", "b", "c"),
    *,
    source: str = "model",
    caps: VisitCaps | None = None,
    **overrides: Any,
) -> Decision:
    """``decide`` with defaults: visit v1, an arrival for associates, full consent, k=5.

    A tuple of ids is ranked by ``source``; anything else goes to ``decide`` as it is.
    """
    candidates = ranked(items, source) if isinstance(items, tuple) else items
    kwargs: dict[str, Any] = {
        "visit": "v1",
        "trigger": "arrived",
        "output": "associate",
        "consent": consent(),
        "now": T0,
        "k": 5,
        "caps": caps or VisitCaps(),
    }
    kwargs.update(overrides)
    return decide(candidates, **kwargs)


def reasons_of(d: Decision) -> dict[str, str]:
    return {x.item: x.reason for x in d.dropped}  # type: ignore[misc]


# -- kept items and their reasons ----------------------------------------------------


def test_kept_items_carry_their_rank_source_and_stock() -> None:
    """A kept item says where the ranker put it, which ranker, and the stock on hand."""
    d = run(("a", "b"), stock={"a": 14, "b": 2.5})

    assert d.item_ids == ("a", "b")
    assert d.items[0].reasons == (
        "ranked 1 by model",
        "in stock 14",
        "shown 0 of 2 times this visit",
    )
    assert d.items[1].reasons[:2] == ("ranked 2 by model", "in stock 2.5")
    assert (d.items[0].rank, d.items[0].source, d.items[0].stock) == (1, "model", 14.0)
    assert d.refusal is None and d.scope == "associate_assist"


def test_fallback_candidates_say_so() -> None:
    """Candidates from the popularity fallback are ranked "by fallback"."""
    d = run(("a",), source="fallback")

    assert d.items[0].reasons[0] == "ranked 1 by fallback"


def test_rank_is_the_position_in_the_candidate_list_not_among_kept_items() -> None:
    """An item kept after a drop keeps the rank the ranker gave it."""
    d = run(("a", "b"), basket=["a"])

    assert d.items[0].item == "b"
    assert d.items[0].rank == 2
    assert d.items[0].reasons[0] == "ranked 2 by model"


def test_an_empty_stock_table_means_unknown_never_out() -> None:
    """With no inventory received, every item stays, marked "stock unknown"."""
    d = run(("a", "b"), stock={})

    assert d.item_ids == ("a", "b")
    assert all(p.stock is None and "stock unknown" in p.reasons for p in d.items)
    assert d.dropped == ()


def test_items_missing_from_the_table_or_with_junk_quantities_are_unknown() -> None:
    """A partial table, None, NaN, a bool or a string is "unknown", not "out"."""
    stock = {"a": 3, "b": None, "c": math.nan, "d": True, "e": "7"}
    d = run(("a", "b", "c", "d", "e", "f"), stock=stock, k=10)

    assert d.item_ids == ("a", "b", "c", "d", "e", "f")
    assert [p.stock for p in d.items] == [3.0, None, None, None, None, None]


def test_zero_or_negative_stock_is_out_of_stock() -> None:
    """A known quantity of 0 or less drops the item as out_of_stock."""
    d = run(("a", "b", "c"), stock={"a": 0, "b": -2, "c": 1})

    assert d.item_ids == ("c",)
    assert reasons_of(d) == {"a": "out_of_stock", "b": "out_of_stock"}
    assert d.dropped[1].detail == "out of stock (-2)"


def test_basket_items_are_never_returned() -> None:
    """What the shopper already has is dropped as in_basket."""
    d = run(("a", "b", "c"), basket=["b", "zz"])

    assert d.item_ids == ("a", "c")
    assert reasons_of(d) == {"b": "in_basket"}


def test_at_most_k_items_best_first_and_the_rest_unexamined() -> None:
    """The first k that pass are kept; later candidates are not looked at."""
    d = run(tuple("abcdefgh"), k=3)

    assert d.item_ids == ("a", "b", "c")
    assert (d.examined, d.unexamined) == (3, 5)


def test_k_of_zero_or_less_keeps_nothing_and_k_is_capped() -> None:
    """k=0 or a negative k keeps nothing; a huge k keeps at most MAX_K."""
    many = tuple(f"i{n}" for n in range(200))

    assert run(many, k=0).items == ()
    assert run(many, k=-3).items == ()
    assert len(run(many, k=10_000).items) == MAX_K


def test_duplicates_keep_the_better_rank() -> None:
    """A candidate listed twice is kept once at its first rank; the repeat is a duplicate."""
    d = run(("a", "b", "a"))

    assert d.item_ids == ("a", "b")
    assert [(x.item, x.rank, x.reason) for x in d.dropped] == [("a", 3, "duplicate")]


def test_entries_that_are_not_item_ids_are_invalid() -> None:
    """None, numbers, empty or over-long ids and bad sources are dropped as invalid."""
    junk: list[Any] = [
        None,
        7,
        ("",),
        Candidate("", "model"),
        Candidate("x" * 500, "model"),
        Candidate("a", ""),
        Candidate("b", 3),
        ("c", "model"),
    ]
    d = run(junk, k=10)

    assert d.item_ids == ("c",)
    assert [x.reason for x in d.dropped] == ["invalid"] * 7


def test_an_invalid_entry_does_not_shadow_a_later_valid_one() -> None:
    """An item first seen with a bad source is still kept when it comes again properly."""
    d = run([Candidate("a", ""), Candidate("a", "model")])

    assert d.item_ids == ("a",)


# -- exclusions ------------------------------------------------------------------------


def test_exclusions_by_id_and_prefix_name_the_rule() -> None:
    """Excluded items are dropped with the rule that matched."""
    ex = Exclusions.build(items=["recalled-1"], prefixes=["ALC-", "TOB-"])
    d = run(("ALC-wine", "recalled-1", "TOB-cig", "milk"), exclusions=ex, k=10)

    assert d.item_ids == ("milk",)
    assert [(x.item, x.detail) for x in d.dropped] == [
        ("ALC-wine", "excluded by prefix ALC-"),
        ("recalled-1", "excluded by item recalled-1"),
        ("TOB-cig", "excluded by prefix TOB-"),
    ]
    assert all(x.reason == "excluded" for x in d.dropped)


# -- consent -----------------------------------------------------------------------------


def test_each_output_needs_its_scope() -> None:
    """Associates need associate_assist; screens and lane displays need screens."""
    assert OUTPUT_SCOPES == {
        "associate": "associate_assist",
        "screen": "screens",
        "lane": "screens",
    }
    only_screens = consent(frozenset({"presence", "screens"}))

    refused = run(consent=only_screens, output="associate")
    lane = run(consent=only_screens, output="lane", trigger="basket_changed")

    assert (refused.refusal, refused.detail) == ("no_consent", "scope associate_assist not granted")
    assert refused.items == () and refused.dropped == ()
    assert lane.item_ids == ("a", "b", "c") and lane.scope == "screens"


def test_a_lane_display_without_screens_consent_is_refused() -> None:
    """A linked shopper who allowed associate help but not screens gets no lane suggestions."""
    d = run(consent=consent(frozenset({"presence", "associate_assist"})), output="lane")

    assert d.refusal == "no_consent"


@pytest.mark.parametrize(
    ("given_consent", "detail"),
    [
        (None, "no consent on record"),
        (consent(expires_at=T0), "consent expired"),
        (consent(frozenset({"associate_assist"})), "scope associate_assist not granted"),
    ],
)
def test_missing_expired_or_presence_less_consent_refuses(
    given_consent: Consent | None, detail: str
) -> None:
    """No consent, an expired one, or one without presence refuses the whole decision."""
    d = run(consent=given_consent)

    assert (d.refusal, d.refused, d.items) == ("no_consent", True, ())
    assert d.detail == detail


def test_a_time_that_is_not_a_number_refuses_rather_than_trusting_consent() -> None:
    """With now=NaN consent cannot be checked, so nothing is shown."""
    assert run(now=math.nan).refusal == "no_consent"


def test_no_visit_refuses() -> None:
    """Caps are per visit: a decision without a visit id is refused as no_visit."""
    assert run(visit=None).refusal == "no_visit"
    assert run(visit="").refusal == "no_visit"


def test_programmer_errors_raise() -> None:
    """An unknown output or an empty trigger is a bug in the caller, not hostile data."""
    with pytest.raises(ValueError, match="unknown output"):
        run(output="billboard")
    with pytest.raises(ValueError, match="trigger"):
        run(trigger="")


# -- caps --------------------------------------------------------------------------------


def test_an_item_is_capped_after_its_shows_per_visit() -> None:
    """Shown twice this visit (the default cap), the item is dropped as capped."""
    caps = VisitCaps(CapParams(item_shows_per_visit=2))
    caps.record("v1", "arrived", ["a"], T0)
    caps.record("v1", "dwelled", ["a", "b"], T0 + 1)

    d = run(("a", "b"), caps=caps, trigger="dwelled")

    assert d.item_ids == ("b",)
    assert d.items[0].reasons[2] == "shown 1 of 2 times this visit"
    assert [(x.item, x.reason, x.detail) for x in d.dropped] == [
        ("a", "capped", "shown 2 of 2 times this visit")
    ]
    assert run(("a",), caps=caps, visit="v2").item_ids == ("a",)


def test_decisions_per_visit_and_trigger_are_capped() -> None:
    """Past the cap for a trigger the decision is refused; other triggers and visits go on."""
    caps = VisitCaps(CapParams(decisions_per_trigger=2, trigger_limits={"basket_changed": 3}))
    for n in range(2):
        caps.record("v1", "dwelled", [], T0 + n)

    refused = run(caps=caps, trigger="dwelled")

    assert (refused.refusal, refused.detail) == (
        "visit_cap",
        "2 of 2 dwelled decisions made this visit",
    )
    assert run(caps=caps, trigger="arrived").refusal is None
    assert run(caps=caps, trigger="dwelled", visit="v2").refusal is None
    for n in range(2):
        caps.record("v1", "basket_changed", [], T0 + n)
    assert run(caps=caps, trigger="basket_changed").refusal is None
    caps.record("v1", "basket_changed", [], T0 + 3)
    assert run(caps=caps, trigger="basket_changed").refusal == "visit_cap"


def test_decide_records_nothing() -> None:
    """Caps count only what the caller records: deciding twice does not use up the cap."""
    caps = VisitCaps(CapParams(decisions_per_trigger=1, item_shows_per_visit=1))

    run(caps=caps)

    assert run(caps=caps).item_ids == ("a", "b", "c")
    assert caps.decisions("v1", "arrived") == 0 and caps.shows("v1", "a") == 0


def test_one_decision_counts_an_item_once_even_if_listed_twice() -> None:
    """Recording ["a", "a"] is one show of a."""
    caps = VisitCaps()
    caps.record("v1", "arrived", ["a", "a"], T0)

    assert caps.shows("v1", "a") == 1
    assert caps.decisions("v1", "arrived") == 1


def test_an_ended_visit_is_forgotten() -> None:
    """end_visit drops the visit's counts."""
    caps = VisitCaps()
    caps.record("v1", "arrived", ["a"], T0)

    assert caps.end_visit("v1") is True
    assert caps.end_visit("v1") is False
    assert (len(caps), caps.shows("v1", "a"), caps.decisions("v1", "arrived")) == (0, 0, 0)


def test_caps_track_at_most_max_visits_least_recent_out() -> None:
    """Beyond max_visits the least recently recorded visit is forgotten."""
    caps = VisitCaps(CapParams(max_visits=3))
    for n in range(3):
        caps.record(f"v{n}", "arrived", ["a"], T0 + n)
    caps.record("v0", "dwelled", ["a"], T0 + 3)  # v0 is now the most recent

    caps.record("v3", "arrived", ["a"], T0 + 4)

    assert len(caps) == 3
    assert caps.shows("v1", "a") == 0
    assert caps.shows("v0", "a") == 2
    assert caps.stats()["evicted"] == 1


def test_idle_visits_expire_without_end_visit() -> None:
    """A visit not recorded for idle_s is dropped at the next record."""
    caps = VisitCaps(CapParams(idle_s=60))
    caps.record("v1", "arrived", ["a"], T0)

    caps.record("v2", "arrived", ["a"], T0 + 60)

    assert caps.shows("v1", "a") == 0 and len(caps) == 1
    assert caps.stats()["expired"] == 1


def test_items_and_triggers_per_visit_are_bounded() -> None:
    """Beyond the per-visit bounds new items and triggers go uncounted (and counted in stats)."""
    caps = VisitCaps(CapParams(max_items_per_visit=2, max_triggers_per_visit=1))
    caps.record("v1", "arrived", ["a", "b", "c"], T0)
    caps.record("v1", "dwelled", ["a"], T0 + 1)

    assert (caps.shows("v1", "a"), caps.shows("v1", "b"), caps.shows("v1", "c")) == (2, 1, 0)
    assert caps.decisions("v1", "dwelled") == 0
    assert caps.stats()["untracked"] == 2


def test_bad_records_are_counted_and_ignored() -> None:
    """An empty visit or trigger or a NaN clock changes nothing."""
    caps = VisitCaps()
    caps.record("", "arrived", ["a"], T0)
    caps.record("v1", "", ["a"], T0)
    caps.record("v1", "arrived", ["a"], math.nan)

    assert len(caps) == 0 and caps.stats()["bad"] == 3


# -- hostile inputs -------------------------------------------------------------------


def test_a_huge_candidate_list_costs_at_most_max_examined() -> None:
    """A bundle returning 200,000 items that are all in the basket is looked at 500 deep."""
    items = [f"i{n}" for n in range(200_000)]
    basket = frozenset(items)
    pulled = 0

    def candidates() -> Any:
        nonlocal pulled
        for i in items:
            pulled += 1
            yield Candidate(i, "model")

    d = run(ranked(items, "model"), basket=basket)  # ranked() itself stops at MAX_EXAMINED
    d2 = run(candidates(), basket=basket)

    assert d.items == () and d.examined == MAX_EXAMINED
    assert d2.examined == MAX_EXAMINED and d2.unexamined == 0  # an iterator's rest is unknown
    # The cost, counted rather than timed: the iterator was not drained past the limit.
    assert pulled == MAX_EXAMINED


def test_a_decision_serialises_to_json() -> None:
    """as_dict is JSON-ready for the decision event."""
    d = run(("a", "b"), basket=["a"], stock={"b": 3})

    doc = json.loads(json.dumps(d.as_dict()))

    assert doc["items"][0]["reasons"] == [
        "ranked 2 by model",
        "in stock 3",
        "shown 0 of 2 times this visit",
    ]
    assert doc["dropped"] == [
        {"item": "a", "rank": 1, "reason": "in_basket", "detail": "already in the basket"}
    ]


item_ids = st.text(alphabet="abcAL-_0123456789", min_size=0, max_size=6)
junk = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.text(max_size=3),
    st.tuples(item_ids),
    st.tuples(st.integers(), st.text(max_size=3)),
)
candidate_entries = st.one_of(
    st.builds(Candidate, item_ids, st.sampled_from(["model", "fallback", ""])), junk
)
quantities = st.one_of(
    st.none(), st.integers(-5, 50), st.floats(allow_nan=True), st.booleans(), st.text(max_size=2)
)


@settings(max_examples=300, deadline=None)
@given(
    candidates=st.lists(candidate_entries, max_size=60),
    basket=st.lists(item_ids, max_size=10),
    stock=st.dictionaries(item_ids, quantities, max_size=15),
    k=st.integers(-3, 80),
    shown_before=st.lists(item_ids, max_size=10),
    now=st.one_of(st.just(T0), st.floats()),
)
def test_hostile_inputs_never_raise_and_the_invariants_hold(
    candidates: list[Any],
    basket: list[str],
    stock: dict[str, Any],
    k: int,
    shown_before: list[str],
    now: float,
) -> None:
    """Whatever comes in: no exception, at most k distinct items best first, none forbidden."""
    caps = VisitCaps(CapParams(item_shows_per_visit=1))
    caps.record("v1", "dwelled", shown_before, T0)
    ex = Exclusions.build(prefixes=["AL"], items=["c0"])

    d = run(candidates, basket=basket, stock=stock, k=k, caps=caps, exclusions=ex, now=now)

    json.dumps(d.as_dict())
    if d.refused:
        assert d.items == () and d.dropped == ()
        return
    kept = d.item_ids
    assert len(kept) <= max(0, min(k, MAX_K))
    assert len(set(kept)) == len(kept)
    assert [p.rank for p in d.items] == sorted(p.rank for p in d.items)
    for p in d.items:
        assert p.item not in basket
        assert not p.item.startswith("AL") and p.item != "c0"
        assert p.item not in shown_before
        q = stock.get(p.item)
        assert not (
            isinstance(q, int | float) and not isinstance(q, bool) and math.isfinite(q) and q <= 0
        )
    assert {x.reason for x in d.dropped} <= set(typing.get_args(DropReason))
    assert d.examined <= MAX_EXAMINED
