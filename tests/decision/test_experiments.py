"""Experiments: deterministic, balanced arms; conversions within a visit; hourly sums."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.decision.experiments import (
    HOLDOUT,
    Arm,
    ArmPlan,
    Attribution,
    AttributionParams,
    Experiment,
    HourlySummary,
    assign,
    bucket,
)

T0 = 1_795_000_000.0  # 2026-11-18 11:06:40 UTC
HOUR_START = 1_794_999_600.0  # 11:00:00 that day
REPO = Path(__file__).resolve().parents[2]


def experiment(
    weights: tuple[float, ...] = (1, 2), holdout: float = 0.1, salt: str = "s3cret-salt"
) -> Experiment:
    """oat-milk-2026 with arms "model" (strategy model) and "popular" (strategy popular)."""
    arms = (Arm("model", weights[0], "model"), Arm("popular", weights[1], "popular"))
    return Experiment("oat-milk-2026", salt, arms, holdout)


def attribution(**params: Any) -> Attribution:
    return Attribution(AttributionParams(**params))


# -- from the config ---------------------------------------------------------------------
# Bad values are refused by the config models (tests/test_config.py), the one place they
# are checked; an Experiment takes what it is given.


def test_from_config_takes_a_config_section() -> None:
    """Anything shaped like an [[experiments]] table builds the same experiment."""
    section = SimpleNamespace(
        id="oat-milk-2026",
        salt="s3cret-salt",
        holdout=0.1,
        arms=(
            SimpleNamespace(name="model", weight=1.0, strategy="model"),
            SimpleNamespace(name="popular", weight=2.0, strategy="popular"),
        ),
    )

    assert Experiment.from_config(section) == experiment()


# -- assignment ------------------------------------------------------------------------

# sha256(b"s3cret-salt/oat-milk-2026/" + shopper) and the arm it gives with weights 1:2
# and a 10 % holdout. Changing either breaks every running experiment's assignment.
VECTOR = {
    "shopper-1": "popular",
    "shopper-2": "model",
    "shopper-3": "popular",
    "shopper-6": "popular",
    "shopper-7": "holdout",
    "shopper-8": "holdout",
}


def test_assignment_matches_the_fixed_vector() -> None:
    """The hash, the 53-bit point and the holdout-then-weights split are pinned."""
    e = experiment()
    digest = hashlib.sha256(b"s3cret-salt/oat-milk-2026/shopper-2").hexdigest()

    assert digest.startswith("245584997af31b84")
    assert bucket(e, "shopper-2") == (0x245584997AF31B84 >> 11) / 2**53
    assert {s: assign(e, s) for s in VECTOR} == VECTOR


def test_assignment_is_the_same_in_another_process() -> None:
    """A fresh interpreter with another hash seed puts every shopper in the same arm."""
    shoppers = [f"shopper-{n}" for n in range(200)]
    here = [assign(experiment(), s) for s in shoppers]
    code = (
        "import json, sys\n"
        "from gateway.decision.experiments import Arm, Experiment, assign\n"
        "e = Experiment('oat-milk-2026', 's3cret-salt', "
        "(Arm('model', 1, 'model'), Arm('popular', 2, 'popular')), 0.1)\n"
        "print(json.dumps([assign(e, f'shopper-{n}') for n in range(200)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}

    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=env,
        timeout=30,
    )

    assert json.loads(out.stdout) == here
    assert here == [assign(experiment(), s) for s in shoppers]


def test_a_new_salt_reshuffles() -> None:
    """Another salt puts a good share of shoppers in another arm."""
    shoppers = [f"shopper-{n}" for n in range(1_000)]
    moved = sum(
        assign(experiment(), s) != assign(experiment(salt="other-salt"), s) for s in shoppers
    )

    assert moved > 300


# Critical value of chi-square with 2 degrees of freedom at p = 0.001. With two degrees
# of freedom the distribution is exponential, P(X > x) = exp(-x / 2), so it is exact.
CHI2_DF2_P001 = -2 * math.log(0.001)  # 13.8155...


def chi_square(observed: Counter[str], expected: dict[str, float]) -> float:
    return sum((observed[k] - e) ** 2 / e for k, e in expected.items())


@pytest.mark.parametrize("weights", [(1, 1), (1, 2)])
def test_arms_are_balanced_by_weight_with_a_10_percent_holdout(
    weights: tuple[float, float],
) -> None:
    """Over 20,000 shoppers the arm counts fit holdout 10 % and the weights (p = 0.001)."""
    n = 20_000
    e = experiment(weights=weights, holdout=0.1)
    observed = Counter(assign(e, f"shopper-{i}") for i in range(n))
    share = 0.9 / sum(weights)
    expected = {
        HOLDOUT: 0.1 * n,
        "model": share * weights[0] * n,
        "popular": share * weights[1] * n,
    }

    assert set(observed) == set(expected)
    assert chi_square(observed, expected) < CHI2_DF2_P001


def test_the_chi_square_check_can_fail() -> None:
    """The same check rejects a 1:2 split judged as 1:1: the test above has teeth."""
    n = 20_000
    observed = Counter(assign(experiment(weights=(1, 2)), f"shopper-{i}") for i in range(n))
    expected = {HOLDOUT: 0.1 * n, "model": 0.45 * n, "popular": 0.45 * n}

    assert chi_square(observed, expected) > CHI2_DF2_P001


def test_no_holdout_share_means_no_holdout() -> None:
    """With holdout 0 every shopper is in one of the arms."""
    e = experiment(holdout=0)

    assert {assign(e, f"s{i}") for i in range(2_000)} == {"model", "popular"}


def test_plan_tells_holdout_and_none_arms_to_compute_unshown() -> None:
    """Holdout and "none" arms rank with the baseline and show nothing; others show theirs."""
    e = Experiment("e1", "salt", (Arm("a", 1, "popular"), Arm("b", 1, "none")), 0.1)

    assert e.plan(HOLDOUT) == ArmPlan("model", False)
    assert e.plan("b") == ArmPlan("model", False)
    assert e.plan("a") == ArmPlan("popular", True)
    with pytest.raises(ValueError, match="no arm"):
        e.plan("c")


# -- attribution -----------------------------------------------------------------------


def test_an_item_recommended_twice_then_bought_is_one_conversion_with_its_arm() -> None:
    """Arrival and dwell both recommend oat milk; the checkout makes exactly one conversion."""
    attr = attribution()
    attr.record("v1", "s1", "popular", "oat-milk-2026", ["oat", "bread"], T0, shown=True)
    attr.record("v1", "s1", "popular", "oat-milk-2026", ["oat"], T0 + 60, shown=True)

    conversions = attr.on_purchase("v1", ["oat", "oat", "milk"], T0 + 600)

    assert len(conversions) == 1
    (c,) = conversions
    assert (c.visit, c.shopper, c.experiment, c.arm, c.item, c.shown) == (
        "v1",
        "s1",
        "oat-milk-2026",
        "popular",
        "oat",
        True,
    )
    assert (c.recommended_ts, c.ts) == (T0, T0 + 600)
    assert "shopper" not in c.as_dict()
    assert attr.on_purchase("v1", ["oat"], T0 + 900) == []


def test_a_purchase_in_another_visit_is_no_conversion() -> None:
    """Recommended in v1, bought in v2: not attributed."""
    attr = attribution()
    attr.record("v1", "s1", "model", "oat-milk-2026", ["oat"], T0, shown=True)

    assert attr.on_purchase("v2", ["oat"], T0 + 600) == []
    assert attr.on_purchase("v1", ["bread"], T0 + 600) == []


def test_a_holdout_would_have_conversion_is_marked_not_shown() -> None:
    """The holdout's would-have recommendation converts with shown=False, in the holdout arm."""
    attr = attribution()
    attr.record("v1", "s1", HOLDOUT, "oat-milk-2026", ["oat"], T0, shown=False)

    (c,) = attr.on_purchase("v1", ["oat"], T0 + 600)

    assert (c.arm, c.shown) == (HOLDOUT, False)


def test_shown_once_is_shown() -> None:
    """An item recommended unshown then shown converts as shown."""
    attr = attribution()
    attr.record("v1", "s1", "model", "e1", ["oat"], T0, shown=False)
    attr.record("v1", "s1", "model", "e1", ["oat"], T0 + 10, shown=True)

    (c,) = attr.on_purchase("v1", ["oat"], T0 + 600)

    assert c.shown is True


def test_each_experiment_counts_its_own_conversion() -> None:
    """Two experiments that both recommended the item each get one conversion."""
    attr = attribution()
    attr.record("v1", "s1", "model", "e1", ["oat"], T0, shown=True)
    attr.record("v1", "s1", HOLDOUT, "e2", ["oat"], T0, shown=False)

    conversions = attr.on_purchase("v1", ["oat"], T0 + 600)

    assert sorted((c.experiment, c.arm) for c in conversions) == [("e1", "model"), ("e2", HOLDOUT)]


def test_a_recommendation_after_the_purchase_did_not_cause_it() -> None:
    """Beyond max_skew_s after the purchase a recommendation does not convert; within it, does."""
    attr = attribution(max_skew_s=120)
    attr.record("v1", "s1", "model", "e1", ["late"], T0 + 121, shown=True)
    attr.record("v1", "s1", "model", "e1", ["skewed"], T0 + 120, shown=True)

    conversions = attr.on_purchase("v1", ["late", "skewed"], T0)

    assert [c.item for c in conversions] == ["skewed"]
    assert [c.item for c in attr.on_purchase("v1", ["late"], T0 + 200)] == ["late"]


def test_end_visit_forgets_the_visit() -> None:
    """After end_visit a purchase in that visit converts nothing."""
    attr = attribution()
    attr.record("v1", "s1", "model", "e1", ["oat"], T0, shown=True)

    assert attr.end_visit("v1") is True
    assert attr.on_purchase("v1", ["oat"], T0 + 60) == []
    assert attr.end_visit("v1") is False


def test_opt_out_forgets_the_shoppers_visits() -> None:
    """forget_shopper drops every visit of that shopper and no other."""
    attr = attribution()
    attr.record("v1", "s1", "model", "e1", ["oat"], T0, shown=True)
    attr.record("v2", "s2", "model", "e1", ["oat"], T0, shown=True)

    assert attr.forget_shopper("s1") == 1
    assert attr.on_purchase("v1", ["oat"], T0 + 60) == []
    assert len(attr.on_purchase("v2", ["oat"], T0 + 60)) == 1


def test_bad_records_and_purchases_are_ignored() -> None:
    """Empty ids, NaN times and junk items neither raise nor count."""
    attr = attribution()
    attr.record("", "s1", "model", "e1", ["oat"], T0, shown=True)
    attr.record("v1", "s1", "model", "e1", ["oat"], math.nan, shown=True)
    junk: list[Any] = [None, 3, "oat"]
    attr.record("v1", "s1", "model", "e1", junk, T0, shown=True)

    assert attr.stats()["bad"] == 2
    assert attr.on_purchase("v1", ["oat"], math.inf) == []
    assert attr.on_purchase(None, ["oat"], T0) == []  # type: ignore[arg-type]
    assert [c.item for c in attr.on_purchase("v1", junk, T0)] == ["oat"]


# -- bounded memory --------------------------------------------------------------------


def test_at_most_max_visits_are_remembered() -> None:
    """Beyond max_visits the least recently recorded visit is forgotten."""
    attr = attribution(max_visits=100)
    for n in range(1_000):
        attr.record(f"v{n}", f"s{n}", "model", "e1", ["oat"], T0 + n, shown=True)

    assert len(attr) == 100
    assert attr.on_purchase("v0", ["oat"], T0 + 2_000) == []
    assert len(attr.on_purchase("v999", ["oat"], T0 + 2_000)) == 1
    assert attr.stats()["evicted"] == 900


def test_items_per_visit_are_bounded() -> None:
    """Beyond max_items_per_visit new recommendations in a visit are not remembered."""
    attr = attribution(max_items_per_visit=3)
    attr.record("v1", "s1", "model", "e1", [f"i{n}" for n in range(10)], T0, shown=True)

    bought = attr.on_purchase("v1", [f"i{n}" for n in range(10)], T0 + 60)

    assert [c.item for c in bought] == ["i0", "i1", "i2"]
    assert attr.stats()["untracked"] == 7


def test_idle_visits_expire() -> None:
    """A visit not recorded for idle_s is forgotten at the next record."""
    attr = attribution(idle_s=3_600)
    attr.record("v1", "s1", "model", "e1", ["oat"], T0, shown=True)
    attr.record("v2", "s2", "model", "e1", ["oat"], T0 + 3_600, shown=True)

    assert len(attr) == 1
    assert attr.on_purchase("v1", ["oat"], T0 + 3_601) == []


def test_summary_rows_are_bounded_when_flush_is_never_called() -> None:
    """Beyond max_buckets rows new periods are dropped and counted, never grown."""
    summary = HourlySummary(bucket_s=3_600, max_buckets=5)
    for hour in range(20):
        summary.add_decision("e1", "model", 1, True, T0 + hour * 3_600)

    assert len(summary) == 5
    assert summary.dropped == 15


# -- hourly summaries ----------------------------------------------------------------


def test_hourly_summary_counts_decisions_impressions_and_conversions_per_arm() -> None:
    """One hour: shown and would-have decisions, items, conversions and attach rate per arm."""
    attr = attribution()
    attr.record("v1", "s1", "model", "e1", ["a", "b"], T0, shown=True)
    attr.record("v1", "s1", "model", "e1", ["a"], T0 + 60, shown=True)
    attr.record("v1", "s1", "model", "e1", [], T0 + 90, shown=True)
    attr.record("v2", "s2", HOLDOUT, "e1", ["a", "c"], T0 + 120, shown=False)
    attr.on_purchase("v1", ["a", "b"], T0 + 600)
    attr.on_purchase("v2", ["c"], T0 + 600)

    assert attr.flush(T0 + 1_000) == []  # the hour is not over
    (summary,) = attr.flush(HOUR_START + 3_600)

    assert (summary["experiment"], summary["start"], summary["end"]) == (
        "e1",
        HOUR_START,
        HOUR_START + 3_600,
    )
    assert summary["arms"] == [
        {
            "arm": HOLDOUT,
            "decisions": 1,
            "decisions_shown": 0,
            "items": 2,
            "impressions": 0,
            "conversions": 1,
            "conversions_shown": 0,
            "attach_rate": 1.0,
        },
        {
            "arm": "model",
            "decisions": 3,
            "decisions_shown": 3,
            "items": 3,
            "impressions": 3,
            "conversions": 2,
            "conversions_shown": 2,
            "attach_rate": 2 / 3,
        },
    ]
    json.dumps(summary)
    assert attr.flush(HOUR_START + 7_200) == []  # flushed once, then reset


def test_flush_returns_only_completed_hours_and_keeps_the_current_one() -> None:
    """Two past hours come out (in order, per experiment); the running hour stays."""
    summary = HourlySummary()
    summary.add_decision("e2", "a", 1, True, HOUR_START + 10)
    summary.add_decision("e1", "a", 1, True, HOUR_START + 3_600 + 10)
    summary.add_decision("e1", "a", 1, True, HOUR_START + 10)
    summary.add_decision("e1", "b", 1, True, HOUR_START + 20)
    summary.add_decision("e1", "a", 1, True, HOUR_START + 7_200 + 10)

    out = summary.flush(HOUR_START + 7_200 + 30)

    assert [(s["experiment"], s["start"], [a["arm"] for a in s["arms"]]) for s in out] == [
        ("e1", HOUR_START, ["a", "b"]),
        ("e2", HOUR_START, ["a"]),
        ("e1", HOUR_START + 3_600, ["a"]),
    ]
    assert [r.start for r in summary.rows()] == [HOUR_START + 7_200]


def test_a_conversion_counts_in_the_hour_of_the_purchase() -> None:
    """Recommended at 11:50, bought at 12:05: the decision is in 11:00, the conversion in 12:00."""
    attr = attribution()
    attr.record("v1", "s1", "model", "e1", ["oat"], HOUR_START + 3_000, shown=True)
    attr.on_purchase("v1", ["oat"], HOUR_START + 3_900)

    first, second = attr.flush(HOUR_START + 7_200)

    assert (first["arms"][0]["decisions"], first["arms"][0]["conversions"]) == (1, 0)
    assert (second["arms"][0]["decisions"], second["arms"][0]["conversions"]) == (0, 1)
    assert second["arms"][0]["attach_rate"] is None


def test_the_period_follows_the_configured_interval() -> None:
    """bucket_s=900 sums quarter hours."""
    attr = attribution(bucket_s=900)
    attr.record("v1", "s1", "model", "e1", ["oat"], HOUR_START + 10, shown=True)

    (s,) = attr.flush(HOUR_START + 900)

    assert (s["start"], s["end"]) == (HOUR_START, HOUR_START + 900)
