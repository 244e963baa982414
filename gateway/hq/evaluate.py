"""The offline evaluation protocol of shared/data/README.md, and its baselines.

Each shopper's last order is the test basket, every earlier order is history.
Next basket: rank items with an empty basket, recall@10 and NDCG@10 against the
whole test basket, averaged over shoppers; recall is also split into *repeat*
(test items the shopper bought before) and *explore* (new to the shopper), each
averaged over the shoppers that have such items. Basket completion: the first
half of the test basket by add-to-cart order (``len // 2`` items) is known and
the rest is to be predicted, recall@10 over the items not known.

Shoppers split into halves A and B by a hash of their id (``half_of``): tune on
A, report on B, so one figure comes from shoppers nothing was tuned on.

The baselines (global top, own frequency, TIFU-KNN, co-occurrence with the
known items) are here so the protocol can be checked against the README's
published figures before any model is compared with them: bench/ranker_quality.py
prints them next to the model's figures.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.hq.features import DecayParams, neighbour_vectors, tifu_vector
from gateway.hq.orders import Order

K = 10
# TIFU-KNN's published parameters, the README baseline: m=3, rb=0.9, rg=0.6 (k=100, alpha=0.9)
PUBLISHED_DECAY = DecayParams(groups=3, within=0.9, group=0.6)


def half_of(user_id: str) -> str:
    """ "A" or "B": a stable split of shoppers by the SHA-256 of their id."""
    return "A" if hashlib.sha256(user_id.encode("utf-8")).digest()[0] % 2 == 0 else "B"


def split_last(
    by_user: Mapping[str, Sequence[Order]],
) -> tuple[dict[str, list[Order]], dict[str, Order]]:
    """(history, test): each shopper with at least two orders gives its last order as test."""
    history: dict[str, list[Order]] = {}
    test: dict[str, Order] = {}
    for user, orders in by_user.items():
        if len(orders) < 2:
            continue
        history[user] = list(orders[:-1])
        test[user] = orders[-1]
    return history, test


def known_split(order: Order) -> tuple[list[str], list[str]]:
    """(known, rest): the first half of the basket by add-to-cart order, and the others."""
    half = len(order.items) // 2
    return list(order.items[:half]), list(order.items[half:])


def recall_at(ranked: Sequence[str], target: Iterable[str], k: int = K) -> float | None:
    target = set(target)
    if not target:
        return None
    return len(set(ranked[:k]) & target) / len(target)


def ndcg_at(ranked: Sequence[str], target: Iterable[str], k: int = K) -> float | None:
    target = set(target)
    if not target:
        return None
    dcg = sum(1 / math.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in target)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(target))))
    return dcg / idcg


def _mean(values: Iterable[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else float("nan")


@dataclass
class Scores:
    """Averaged metrics of one method on one set of shoppers."""

    n: int
    recall: float
    ndcg: float
    repeat_recall: float = float("nan")
    explore_recall: float = float("nan")
    completion_recall: float = float("nan")
    extra: dict[str, float] = field(default_factory=dict)


def next_basket_scores(
    ranked: Mapping[str, Sequence[str]],
    history: Mapping[str, Sequence[Order]],
    test: Mapping[str, Order],
    users: Iterable[str],
) -> Scores:
    """recall@10, NDCG@10 and the repeat/explore split of next-basket rankings."""
    r, n, rep, exp = [], [], [], []
    users = list(users)
    for u in users:
        target = set(test[u].items)
        seen = {i for o in history[u] for i in o.items}
        top = list(ranked.get(u, []))
        r.append(recall_at(top, target))
        n.append(ndcg_at(top, target))
        rep.append(recall_at(top, target & seen))
        exp.append(recall_at(top, target - seen))
    return Scores(len(users), _mean(r), _mean(n), _mean(rep), _mean(exp))


def completion_recall(
    ranked: Mapping[str, Sequence[str]], test: Mapping[str, Order], users: Iterable[str]
) -> float:
    """recall@10 of completion rankings over the unknown half (known items never count)."""
    out = []
    for u in users:
        known, rest = known_split(test[u])
        top = [i for i in ranked.get(u, []) if i not in set(known)]
        out.append(recall_at(top, set(rest) - set(known)))
    return _mean(out)


# -- baselines -----------------------------------------------------------------------------


def _rank(scores: Mapping[str, float], exclude: Iterable[str] = (), k: int = K) -> list[str]:
    banned = set(exclude)
    kept = [(item, s) for item, s in scores.items() if item not in banned and s > 0]
    kept.sort(key=lambda kv: (-kv[1], kv[0]))
    return [item for item, _ in kept[:k]]


def global_counts(history: Mapping[str, Sequence[Order]]) -> Counter[str]:
    return Counter(i for orders in history.values() for o in orders for i in o.items)


def global_top(history: Mapping[str, Sequence[Order]], k: int = K) -> dict[str, list[str]]:
    top = _rank(global_counts(history), k=k)
    return {u: list(top) for u in history}


def own_frequency(history: Mapping[str, Sequence[Order]], k: int = K) -> dict[str, list[str]]:
    """Each shopper's items by how many of their orders held them.

    Ties go to the item first bought earliest (``Counter.most_common``'s order),
    which is what reproduces the README's 0.359; breaking ties by recency instead
    gives 0.371 on the same file.
    """
    out = {}
    for u, orders in history.items():
        counts = Counter(i for o in orders for i in o.items)
        out[u] = [item for item, _ in counts.most_common(k)]
    return out


def tifu_scores(
    history: Mapping[str, Sequence[Order]],
    decay: DecayParams = PUBLISHED_DECAY,
    k_neighbours: int = 100,
    alpha: float = 0.9,
) -> dict[str, dict[str, float]]:
    """TIFU-KNN's score vectors: alpha * personal + (1 - alpha) * mean of k nearest."""
    personal = {u: tifu_vector([o.items for o in orders], decay) for u, orders in history.items()}
    nbr = neighbour_vectors(personal, k_neighbours)
    out = {}
    for u, vec in personal.items():
        s: dict[str, float] = defaultdict(float)
        for i, w in vec.items():
            s[i] += alpha * w
        for i, w in nbr[u].items():
            s[i] += (1 - alpha) * w
        out[u] = dict(s)
    return out


def rank_all(
    scores: Mapping[str, Mapping[str, float]], exclude: Callable[[str], Iterable[str]] | None = None
) -> dict[str, list[str]]:
    return {u: _rank(s, exclude(u) if exclude else ()) for u, s in scores.items()}


def cooccurrence_completion(
    history: Mapping[str, Sequence[Order]], test: Mapping[str, Order], users: Iterable[str]
) -> dict[str, list[str]]:
    """Items ranked by how many history baskets (all shoppers) they share with the known items."""
    baskets_of: dict[str, list[int]] = defaultdict(list)
    baskets: list[tuple[str, ...]] = []
    for orders in history.values():
        for o in orders:
            for i in o.items:
                baskets_of[i].append(len(baskets))
            baskets.append(o.items)
    popularity = global_counts(history)
    out = {}
    for u in users:
        known, _ = known_split(test[u])
        scores: dict[str, float] = defaultdict(float)
        for i in known:
            for b in baskets_of.get(i, ()):
                for j in baskets[b]:
                    scores[j] += 1
        for j in list(scores):  # popularity breaks ties
            scores[j] += popularity[j] * 1e-9
        out[u] = _rank(scores, exclude=known)
    return out
