"""Seeded synthetic grocery orders in the Orders CSV schema, for tests and the default bundle.

What it plants, and nothing else (models/README.md repeats this):

* a catalogue of ``items`` EAN-13 codes (13-digit strings with a valid check
  digit, the style of the demo's receipts; the demo's own eight codes come
  first) in ``categories`` aisles, popularity Zipf-like within each aisle;
* per shopper, an affinity over aisles (a few favourite aisles carry most of
  the weight) and an ordering rhythm of 3 to 14 days between orders (jittered);
* per shopper, 2 to 8 *staples*, each bought on its own cycle of 1 to 4 orders
  (probability 0.85 when due, 0.1 otherwise), added to the cart first;
* *co-purchase pairs*: a fixed partner per item for one item in five; the
  partner joins the basket with probability 0.6 when the item is bought,
  right after it;
* *hour-of-day effects*: each shopper has a usual hour (morning, midday or
  evening, +-2 h); one aisle in four is an "evening" aisle bought twice as
  often after 17:00;
* *exploration*: each order adds Poisson(``explore_mean``) items drawn from the
  shopper's aisles by popularity, new or not.

Everything comes from one ``random.Random(seed)``: the same spec gives the
same file on every machine.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.hq.orders import Order, write_orders

# The demo receipts' codes (gateway/testing/receipts.py): a fresh install's
# default bundle knows them, so the demo's baskets get sensible completions.
DEMO_CODES = (
    "0000000123457",
    "0007874235187",
    "0001200000128",
    "0002840004576",
    "0000000045678",
    "0000000011111",
    "0000000022222",
    "0000000033333",
)


@dataclass(frozen=True)
class SyntheticSpec:
    shoppers: int = 300
    items: int = 1500
    categories: int = 30
    min_orders: int = 6
    max_orders: int = 30
    explore_mean: float = 3.0
    seed: int = 7


def ean13(body12: int) -> str:
    """A 13-digit code with its EAN check digit, from a 12-digit number."""
    digits = f"{body12:012d}"
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits))
    return digits + str((10 - total % 10) % 10)


def catalogue(spec: SyntheticSpec) -> list[str]:
    """The item codes, demo codes first, then EAN-13s from a seeded sequence."""
    rng = random.Random(spec.seed * 7919 + 1)
    codes = list(DEMO_CODES[: spec.items])
    seen = set(codes)
    while len(codes) < spec.items:
        code = ean13(rng.randrange(10**10, 10**12))
        if code not in seen:
            seen.add(code)
            codes.append(code)
    return codes


def synthetic_orders(spec: SyntheticSpec = SyntheticSpec()) -> list[Order]:
    """Every shopper's orders (user ids "1".."n"), oldest first per shopper."""
    rng = random.Random(spec.seed)
    codes = catalogue(spec)
    n_items = len(codes)
    aisle_of = [i % spec.categories for i in range(n_items)]
    aisles: list[list[int]] = [[] for _ in range(spec.categories)]
    for i, a in enumerate(aisle_of):
        aisles[a].append(i)
    # Zipf-like popularity within each aisle
    weight = [0.0] * n_items
    for members in aisles:
        for rank, i in enumerate(members):
            weight[i] = 1.0 / (rank + 1) ** 0.9
    evening = {a for a in range(spec.categories) if a % 4 == 3}
    partner = {
        i: rng.choice(aisles[(aisle_of[i] + 1) % spec.categories])
        for i in range(n_items)
        if rng.random() < 0.2
    }
    orders: list[Order] = []
    order_id = 1_000_000
    for user in range(1, spec.shoppers + 1):
        favourites = rng.sample(range(spec.categories), k=min(4, spec.categories))
        affinity = [0.2] * spec.categories
        for rank, a in enumerate(favourites):
            affinity[a] += 4.0 / (rank + 1)
        usual_hour = rng.choice((9, 13, 19))
        rhythm_days = rng.uniform(3, 14)
        staples = []
        for _ in range(rng.randint(2, 8)):
            a = rng.choices(range(spec.categories), weights=affinity)[0]
            item = rng.choices(aisles[a], weights=[weight[i] for i in aisles[a]])[0]
            staples.append((item, rng.randint(1, 4)))
        last_bought = {item: -10 for item, _ in staples}
        for number in range(1, rng.randint(spec.min_orders, spec.max_orders) + 1):
            hour = min(23, max(0, usual_hour + rng.randint(-2, 2)))
            dow = rng.randrange(7)
            gap = None if number == 1 else round(max(1.0, rng.gauss(rhythm_days, 2.0)))
            basket: list[int] = []
            for item, cycle in staples:
                due = number - last_bought[item] >= cycle
                if rng.random() < (0.85 if due else 0.1):
                    basket.append(item)
                    last_bought[item] = number
            hour_aff = [
                affinity[a] * (2.0 if a in evening and hour >= 17 else 1.0)
                for a in range(spec.categories)
            ]
            for _ in range(_poisson(rng, spec.explore_mean) + (0 if basket else 1)):
                a = rng.choices(range(spec.categories), weights=hour_aff)[0]
                basket.append(rng.choices(aisles[a], weights=[weight[i] for i in aisles[a]])[0])
            with_partners: list[int] = []
            for item in basket:
                with_partners.append(item)
                if item in partner and rng.random() < 0.6:
                    with_partners.append(partner[item])
            items = tuple(dict.fromkeys(codes[i] for i in with_partners))
            orders.append(Order(str(order_id), str(user), number, dow, hour, gap, items))
            order_id += 1
    return orders


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: means here are small (a few items per order)
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.hq.synthetic --out orders.csv``: write a synthetic Orders CSV."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Orders CSV to write")
    defaults = SyntheticSpec()
    parser.add_argument("--shoppers", type=int, default=defaults.shoppers)
    parser.add_argument("--items", type=int, default=defaults.items)
    parser.add_argument("--categories", type=int, default=defaults.categories)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.shoppers < 1 or args.items < 1 or args.categories < 1:
        print("--shoppers, --items and --categories must be positive", file=sys.stderr)
        return 1
    spec = SyntheticSpec(
        shoppers=args.shoppers,
        items=args.items,
        categories=min(args.categories, args.items),
        seed=args.seed,
    )
    orders = synthetic_orders(spec)
    write_orders(Path(args.out), orders)
    print(f"{args.out}: {len(orders)} orders of {spec.shoppers} shoppers", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
