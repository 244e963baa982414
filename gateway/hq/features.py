"""HQ's shopper features: from order histories to the ``ShopperFeatures`` stores receive.

HQ turns each shopper's orders (``ShopperHistory``) into ``ShopperFeatures``
with ``build_profiles``: ``hist`` is the shopper's candidates (items bought
before plus their neighbours' best) scored by the personal model of the
manifest's ``feature_schema.profile_model`` (repeat-cycle, recency, frequency,
cart-position, TIFU-KNN and popularity features; Hu et al. SIGIR 2020 for the
time-decayed group vectors, ``tifu_vector``), and ``nbr`` is the mean TIFU
vector of the shopper's nearest shoppers (``neighbour_vectors``). The features
travel to stores inside a profile's ``attributes["features"]``
(``features_to_attributes`` here; the stores read them back with
``gateway.decision.features.features_from_attributes``).

Used by training, evaluation and ``model train`` / ``model recommend``; never
on the Pi (the Pi's runtime never imports ``gateway.hq``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.decision.features import ATTRIBUTES_VERSION, ShopperFeatures

# Weights round to this many significant digits in attributes: ranking needs
# relative order, and short numbers keep profiles small.
ATTRIBUTE_DIGITS = 4


@dataclass(frozen=True)
class DecayParams:
    """TIFU-KNN's temporal decay: ``groups`` (its m), ``within`` (r_b) and ``group`` (r_g).

    History is cut into ``groups`` consecutive groups of (nearly) equal size;
    basket i of n weighs ``within ** (n - 1 - i)``, group g of m weighs
    ``group ** (m - 1 - g)``; groups are averaged. The defaults are the
    published parameters used as the README baseline.
    """

    groups: int = 3
    within: float = 0.9
    group: float = 0.6

    def to_dict(self) -> dict[str, float]:
        return {"groups": self.groups, "within": self.within, "group": self.group}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> DecayParams:
        return cls(int(doc["groups"]), float(doc["within"]), float(doc["group"]))


def _group_bounds(n: int, groups: int) -> list[tuple[int, int]]:
    """TIFU-KNN's partition of n baskets into groups: earlier groups are the smaller ones."""
    if n < groups:
        return [(i, i + 1) for i in range(n)]
    base, extra = divmod(n, groups)
    bounds = []
    start = 0
    for g in range(groups):
        size = base + (1 if g >= groups - extra else 0)
        bounds.append((start, start + size))
        start += size
    return bounds


def tifu_vector(baskets: Sequence[Sequence[str]], decay: DecayParams) -> dict[str, float]:
    """TIFU-KNN's personal vector of ``baskets`` (oldest first), as the reference code computes it.

    Within-basket decay counts from the newest basket overall; a history shorter
    than ``decay.groups`` uses one group per basket (still decayed as if the
    later groups existed), and the sum is divided by the number of groups.
    """
    n = len(baskets)
    if n == 0:
        return {}
    out: dict[str, float] = {}
    bounds = _group_bounds(n, decay.groups)
    for g, (lo, hi) in enumerate(bounds):
        g_weight = decay.group ** (decay.groups - 1 - g) / (hi - lo) / len(bounds)
        for i in range(lo, hi):
            w = g_weight * decay.within ** (n - 1 - i)
            for item in set(baskets[i]):
                out[item] = out.get(item, 0.0) + w
    return out


def neighbour_vectors(
    vectors: Mapping[str, Mapping[str, float]],
    k: int,
    *,
    block: int = 512,
) -> dict[str, dict[str, float]]:
    """The mean of each shopper's ``k`` nearest shoppers' vectors (Euclidean, itself included).

    TIFU-KNN's user-kNN smoothing, done at HQ over every shopper's personal
    vector. Dot products come from sparse postings in blocks of at most
    ``block`` shoppers, so memory grows with shoppers times the block, never
    with the catalogue.
    """
    users = list(vectors)
    if not users:
        return {}
    names: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for u, user in enumerate(users):
        for item, w in vectors[user].items():
            rows.append(u)
            cols.append(names.setdefault(item, len(names)))
            vals.append(float(w))
    item_names = list(names)
    nbrs = _neighbour_means(
        np.asarray(rows, dtype=np.int64),
        np.asarray(cols, dtype=np.int64),
        np.asarray(vals, dtype=np.float64),
        len(users),
        len(item_names),
        k,
        block,
    )
    out: dict[str, dict[str, float]] = {}
    for u, (idx, val) in enumerate(nbrs):
        out[users[u]] = {item_names[i]: float(w) for i, w in zip(idx, val, strict=True)}
    return out


_MAX_BLOCK_CELLS = 20_000_000


def _neighbour_means(
    r: np.ndarray, c: np.ndarray, v: np.ndarray, n_users: int, n_items: int, k: int, block: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per user (item indices, mean weights) over its k nearest users; COO input."""
    k = max(1, min(k, n_users))
    # keep a block's distance matrix under ~20 M floats (160 MB) however many shoppers
    block = max(1, min(block, _MAX_BLOCK_CELLS // max(n_users, 1)))
    sq = np.bincount(r, weights=v * v, minlength=n_users)
    by_item = np.argsort(c, kind="stable")
    post_user, post_val = r[by_item], v[by_item]
    post_ptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(c, minlength=n_items), out=post_ptr[1:])
    by_user = np.argsort(r, kind="stable")
    u_items, u_vals = c[by_user], v[by_user]
    user_ptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n_users), out=user_ptr[1:])
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, n_users, block):
        stop = min(n_users, start + block)
        lo, hi = user_ptr[start], user_ptr[stop]
        q_row = np.repeat(np.arange(stop - start), np.diff(user_ptr[start : stop + 1]))
        q_item, q_val = u_items[lo:hi], u_vals[lo:hi]
        counts = post_ptr[q_item + 1] - post_ptr[q_item]
        rep_row = np.repeat(q_row, counts)
        rep_val = np.repeat(q_val, counts)
        offsets = np.repeat(post_ptr[q_item] - np.cumsum(counts) + counts, counts) + np.arange(
            counts.sum()
        )
        dots = np.zeros((stop - start) * n_users)
        np.add.at(dots, rep_row * n_users + post_user[offsets], rep_val * post_val[offsets])
        dist = sq[start:stop, None] + sq[None, :] - 2 * dots.reshape(stop - start, n_users)
        for row in range(stop - start):
            d = dist[row]
            near = np.argpartition(d, k - 1)[:k] if k < n_users else np.arange(n_users)
            idx = np.concatenate([u_items[user_ptr[n] : user_ptr[n + 1]] for n in near])
            val = np.concatenate([u_vals[user_ptr[n] : user_ptr[n + 1]] for n in near])
            acc_idx, inverse = np.unique(idx, return_inverse=True)
            acc = np.bincount(inverse, weights=val, minlength=len(acc_idx)) / len(near)
            out.append((acc_idx, acc))
    return out


# -- profiles: from order histories to ShopperFeatures (HQ) ------------------------------


@dataclass(frozen=True)
class ShopperHistory:
    """A shopper's orders, oldest first: item ids per basket and days since the prior order."""

    baskets: tuple[tuple[str, ...], ...]
    days: tuple[float | None, ...]


# The personal model's inputs for one (shopper, candidate item); the order is the
# MLP's input order, so it is part of the model (saved in the manifest).
PERSONAL_FEATURES = (
    # exponentially decayed purchase frequency at several half-lives (in orders)
    "exp_0.3",
    "exp_0.6",
    "exp_0.8",
    "exp_0.9",
    "exp_0.95",
    "exp_0.98",
    # TIFU-KNN personal vectors at the published and two longer-memory settings
    "tifu_3_0.9_0.6",
    "tifu_7_0.9_1.0",
    "tifu_1_0.95_1.0",
    "freq",
    "log_count",
    "log_gap",
    "gap",
    "last_1",
    "last_2",
    "last_3",
    "last_5",
    # repeat cycles: orders (and days) since the last purchase against the item's own rhythm
    "cycle",
    "log_mean_interval",
    "repeat_prob",
    "log_since_first",
    "log_days_since",
    "days_cycle",
    # where in the cart the shopper puts it (staples first)
    "cart_position",
    "cart_position_last",
    # neighbours and the item overall
    "in_history",
    "nbr",
    "log_nbr",
    "log_pop",
    "repeat_rate",
    "log_buyers",
    # the shopper overall (lets the model trade repeats against exploration per shopper)
    "log_orders",
    "basket_size",
    "repeat_share",
    "distinct_share",
    "log_median_gap",
)
_EXP_RATES = (0.3, 0.6, 0.8, 0.9, 0.95, 0.98)
_TIFU_SETTINGS = ((3, 0.9, 0.6), (7, 0.9, 1.0), (1, 0.95, 1.0))
# Days assumed between orders when a history has no gaps at all (Instacart's median is 7).
_DEFAULT_GAP_DAYS = 7.0
# A single purchase has no interval yet: treat it as a year, i.e. "not on a cycle".
_NO_INTERVAL_DAYS = 365.0


@dataclass(frozen=True)
class MlpParams:
    """A small ReLU network: standardise, then dense layers; the last one has one output."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[tuple[tuple[float, ...], ...], ...]
    biases: tuple[tuple[float, ...], ...]

    def forward(self, x: np.ndarray) -> np.ndarray:
        a = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            a = a @ np.asarray(w) + np.asarray(b)
            if i < last:
                a = np.maximum(a, 0.0)
        scores: np.ndarray = a[:, 0]
        return scores

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "scale": list(self.scale),
            "weights": [[list(r) for r in w] for w in self.weights],
            "biases": [list(b) for b in self.biases],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> MlpParams:
        return cls(
            tuple(float(x) for x in doc["mean"]),
            tuple(float(x) for x in doc["scale"]),
            tuple(tuple(tuple(float(x) for x in r) for r in w) for w in doc["weights"]),
            tuple(tuple(float(x) for x in b) for b in doc["biases"]),
        )

    @classmethod
    def from_arrays(
        cls,
        mean: np.ndarray,
        scale: np.ndarray,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
    ) -> MlpParams:
        return cls(
            tuple(float(x) for x in mean),
            tuple(float(x) for x in scale),
            tuple(tuple(tuple(float(x) for x in r) for r in w) for w in weights),
            tuple(tuple(float(x) for x in b) for b in biases),
        )


@dataclass(frozen=True)
class ProfileModel:
    """How HQ turns histories into ShopperFeatures (saved in the manifest's feature_schema).

    ``hist`` holds the shopper's candidates (every item bought before plus the
    ``candidates`` best neighbour items) scored by the personal model: the mean
    logit of the ``mlp`` ensemble, or TIFU-KNN's ``alpha`` blend when there is
    none. ``nbr`` holds the neighbour mean of TIFU vectors (``decay``,
    ``neighbours``).
    """

    decay: DecayParams = DecayParams()
    neighbours: int = 100
    alpha: float = 0.9
    candidates: int = 50
    hist_len: int = 100
    nbr_len: int = 50
    mlp: tuple[MlpParams, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay.to_dict(),
            "neighbours": self.neighbours,
            "alpha": self.alpha,
            "candidates": self.candidates,
            "hist_len": self.hist_len,
            "nbr_len": self.nbr_len,
            "personal_features": list(PERSONAL_FEATURES),
            "mlp": [m.to_dict() for m in self.mlp],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ProfileModel:
        if list(doc.get("personal_features", PERSONAL_FEATURES)) != list(PERSONAL_FEATURES):
            raise ValueError("profile model was trained on other personal features")
        return cls(
            DecayParams.from_dict(doc["decay"]),
            int(doc["neighbours"]),
            float(doc["alpha"]),
            int(doc["candidates"]),
            int(doc["hist_len"]),
            int(doc["nbr_len"]),
            tuple(MlpParams.from_dict(m) for m in doc.get("mlp", [])),
        )


@dataclass
class CandidateTable:
    """Every shopper's candidates and their personal-model inputs (rows of ``x``)."""

    users: list[str]
    items: list[str]  # item index -> id
    user_of_row: np.ndarray  # int64 [rows]
    item_of_row: np.ndarray  # int64 [rows]
    x: np.ndarray  # float64 [rows, len(PERSONAL_FEATURES)]
    nbr: list[tuple[np.ndarray, np.ndarray]]  # per user: (item indices, weights)


def _tifu_dense(xb: np.ndarray, groups: int, within: float, group: float) -> np.ndarray:
    n = xb.shape[0]
    bounds = _group_bounds(n, groups)
    out = np.zeros(xb.shape[1])
    decay = within ** (n - 1 - np.arange(n))
    for g, (lo, hi) in enumerate(bounds):
        weight = group ** (groups - 1 - g) / (hi - lo) / len(bounds)
        out += weight * (decay[lo:hi] @ xb[lo:hi])
    return out


def _personal_block(
    baskets: Sequence[np.ndarray], days: Sequence[float | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items, per-item features [m, 25], shopper features [5]) from index baskets."""
    n = len(baskets)
    items = np.unique(np.concatenate(baskets))
    m = len(items)
    xb = np.zeros((n, m))
    pos = np.zeros((n, m))
    for t, b in enumerate(baskets):
        at = np.searchsorted(items, b)
        xb[t, at] = 1.0
        pos[t, at] = (np.arange(len(b)) + 0.5) / len(b)
    gaps = np.array([_DEFAULT_GAP_DAYS if d is None else float(d) for d in days[1:]])
    median_gap = float(np.median(gaps)) if len(gaps) else _DEFAULT_GAP_DAYS
    cum = np.concatenate([[0.0], np.cumsum(gaps)])
    cum -= cum[-1]  # days before the newest order (<= 0)
    count = xb.sum(0)
    last = n - 1 - np.argmax(xb[::-1], axis=0)
    first = np.argmax(xb, axis=0)
    gap = n - 1 - last
    cols = []
    for r in _EXP_RATES:
        w = r ** (n - 1 - np.arange(n))
        cols.append((w @ xb) / w.sum())
    for g, rb, rg in _TIFU_SETTINGS:
        cols.append(_tifu_dense(xb, g, rb, rg))
    cols += [count / n, np.log1p(count), np.log1p(gap), np.minimum(gap, 30)]
    cols += [xb[-k:].mean(0) for k in (1, 2, 3, 5)]
    interval = np.where(count >= 2, (last - first) / np.maximum(count - 1, 1), n)
    cols += [np.log((gap + 1) / (interval + 1)), np.log1p(interval)]
    cols += [(count - 1) / np.maximum(n - 1 - first, 1), np.log1p(n - 1 - first)]
    days_since = -cum[last]
    mean_days = np.full(m, _NO_INTERVAL_DAYS)
    several = np.flatnonzero(count >= 2)
    for j in several:
        when = cum[xb[:, j] > 0]
        mean_days[j] = (when[-1] - when[0]) / (len(when) - 1)
    cols += [np.log1p(days_since), np.log(days_since + median_gap + 1) - np.log(mean_days + 1)]
    cols += [pos.sum(0) / np.maximum(count, 1), pos[-1] * xb[-1]]
    total = xb.sum()
    seen_before = np.cumsum(xb, axis=0)[:-1] > 0
    repeats = (xb[1:] * seen_before).sum() / max(xb[1:].sum(), 1.0)
    shopper = np.array([np.log(n), total / n, repeats, m / max(total, 1.0), np.log1p(median_gap)])
    return items, np.stack(cols, axis=1), shopper


def candidate_table(histories: Mapping[str, ShopperHistory], model: ProfileModel) -> CandidateTable:
    """The personal model's inputs for every shopper with at least one non-empty basket."""
    index: dict[str, int] = {}
    users: list[str] = []
    coded: list[list[np.ndarray]] = []
    days: list[Sequence[float | None]] = []
    for user, h in histories.items():
        kept = [(b, d) for b, d in zip(h.baskets, h.days, strict=True) if b]
        if not kept:
            continue
        users.append(user)
        coded.append(
            [
                np.asarray(
                    list(dict.fromkeys(index.setdefault(i, len(index)) for i in b)),
                    dtype=np.int64,
                )
                for b, _ in kept
            ]
        )
        days.append([d for _, d in kept])
    n_items = len(index)
    pop = np.zeros(n_items)
    buyers = np.zeros(n_items)
    repeat = np.zeros(n_items)
    blocks = []
    rows_u, rows_i, rows_w = [], [], []
    for u, baskets in enumerate(coded):
        items, feats, shopper = _personal_block(baskets, days[u])
        counts = np.zeros(len(items))
        for b in baskets:
            counts[np.searchsorted(items, b)] += 1
        pop[items] += counts
        buyers[items] += 1
        repeat[items] += counts - 1
        blocks.append((items, feats, shopper))
        d = model.decay
        tifu = _tifu_dense_sparse(baskets, items, d.groups, d.within, d.group)
        rows_u.append(np.full(len(items), u))
        rows_i.append(items)
        rows_w.append(tifu)
    nbr = (
        _neighbour_means(
            np.concatenate(rows_u),
            np.concatenate(rows_i),
            np.concatenate(rows_w),
            len(users),
            n_items,
            model.neighbours,
            512,
        )
        if users
        else []
    )
    log_pop = np.log1p(pop)
    repeat_rate = (repeat + 1) / (pop + 5)
    log_buyers = np.log1p(buyers)
    xs, us, its = [], [], []
    for u, (items, feats, shopper) in enumerate(blocks):
        n_idx, n_val = nbr[u]
        order = np.argsort(-n_val, kind="stable")[: model.candidates]
        cand = np.union1d(items, n_idx[order])
        x = np.zeros((len(cand), len(PERSONAL_FEATURES)))
        mine = np.isin(cand, items)
        x[mine, : feats.shape[1]] = feats[np.searchsorted(items, cand[mine])]
        nv = np.zeros(len(cand))
        at = np.searchsorted(n_idx, cand)
        at = np.minimum(at, len(n_idx) - 1)
        hit = n_idx[at] == cand
        nv[hit] = n_val[at[hit]]
        base = feats.shape[1]
        x[:, base] = mine
        x[:, base + 1] = nv
        x[:, base + 2] = np.log1p(100 * nv)
        x[:, base + 3] = log_pop[cand]
        x[:, base + 4] = repeat_rate[cand]
        x[:, base + 5] = log_buyers[cand]
        x[:, base + 6 :] = shopper
        xs.append(x)
        us.append(np.full(len(cand), u))
        its.append(cand)
    empty_i = np.zeros(0, dtype=np.int64)
    return CandidateTable(
        users=users,
        items=list(index),
        user_of_row=np.concatenate(us) if us else empty_i,
        item_of_row=np.concatenate(its) if its else empty_i,
        x=np.concatenate(xs) if xs else np.zeros((0, len(PERSONAL_FEATURES))),
        nbr=nbr,
    )


def _tifu_dense_sparse(
    baskets: Sequence[np.ndarray], items: np.ndarray, groups: int, within: float, group: float
) -> np.ndarray:
    xb = np.zeros((len(baskets), len(items)))
    for t, b in enumerate(baskets):
        xb[t, np.searchsorted(items, b)] = 1.0
    return _tifu_dense(xb, groups, within, group)


def personal_scores(table: CandidateTable, model: ProfileModel) -> np.ndarray:
    """The personal model's score of every row of ``table`` (mean logit, or TIFU's blend)."""
    if len(table.x) == 0:
        return np.zeros(0)
    if model.mlp:
        return np.asarray(np.mean([m.forward(table.x) for m in model.mlp], axis=0))
    tifu = table.x[:, PERSONAL_FEATURES.index("tifu_3_0.9_0.6")]
    nbr = table.x[:, PERSONAL_FEATURES.index("nbr")]
    return model.alpha * tifu + (1 - model.alpha) * nbr


def build_profiles(
    histories: Mapping[str, ShopperHistory], model: ProfileModel
) -> dict[str, ShopperFeatures]:
    """Every shopper's features: top ``hist_len`` personal scores, top ``nbr_len`` neighbours."""
    table = candidate_table(histories, model)
    scores = personal_scores(table, model)
    out: dict[str, ShopperFeatures] = {}
    order = np.lexsort((-scores, table.user_of_row))
    starts = np.searchsorted(table.user_of_row[order], np.arange(len(table.users) + 1))
    for u, user in enumerate(table.users):
        rows = order[starts[u] : starts[u + 1]][: model.hist_len]
        hist = tuple(
            (table.items[i], float(s))
            for i, s in zip(table.item_of_row[rows], scores[rows], strict=True)
        )
        n_idx, n_val = table.nbr[u]
        top = np.argsort(-n_val, kind="stable")[: model.nbr_len]
        nbr = tuple((table.items[i], float(w)) for i, w in zip(n_idx[top], n_val[top], strict=True))
        out[user] = ShopperFeatures(hist=hist, nbr=nbr)
    return out


# -- attributes: the JSON form of features inside a profile ------------------------------


def _round(w: float) -> float:
    if w == 0:
        return 0.0
    return float(f"{w:.{ATTRIBUTE_DIGITS}g}")


def features_to_attributes(f: ShopperFeatures) -> dict[str, Any]:
    """``features`` as HQ puts them in ``attributes["features"]`` (compact, versioned)."""
    return {
        "v": ATTRIBUTES_VERSION,
        "h": [item for item, _ in f.hist],
        "hw": [_round(w) for _, w in f.hist],
        "n": [item for item, _ in f.nbr],
        "nw": [_round(w) for _, w in f.nbr],
    }
