"""Train the store ranker at HQ: a personal model, a basket-aware reranker, one ONNX graph.

Two stages, both small numpy networks trained on each shopper's own past
(never on the order being predicted):

1. The *personal model* (``features.ProfileModel``) scores every item a
   shopper bought before, plus the best items of their TIFU-KNN neighbours,
   from repeat-cycle, recency, frequency, cart-position, neighbour and
   popularity features. Trained on orders 2..7 back from each shopper's
   newest (each target predicted from the orders before it). Its top scores
   are the shopper's ``hist`` features, computed at HQ and sent to stores.
2. The *reranker* runs inside the ONNX graph on each request: it takes the
   union of the shopper's ``hist`` and ``nbr`` items, the items that most
   often share a basket with what is in the basket now (per-item lists of
   conditional probabilities, the basket-completion signal) and the popular
   items, and scores each from the personal score, neighbour weight,
   co-occurrence, the item's cart position, popularity, repeat rate and
   hour-of-day lift. Trained on every shopper's newest history order, once
   with an empty basket (next basket) and once with its first half known
   (basket completion), from profiles built without that order.

The graph's contract (inputs, outputs, masking, padding) is in
``build_graph``; ``score_numpy`` is the same computation in numpy, used to
validate during training and to test the graph. numpy and ``onnx`` (the
``[train]`` extra) only; imported lazily by ``model train``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gateway.decision.bundle import FORMAT
from gateway.decision.features import FeedRequest, ShopperFeatures, batch_feed
from gateway.hq.features import (
    PERSONAL_FEATURES,
    MlpParams,
    ProfileModel,
    ShopperHistory,
    build_profiles,
    candidate_table,
)
from gateway.hq.orders import Order

OPSET = 17  # ScatterElements(reduction="add") needs 16; onnxruntime 1.31 runs up to 21
MIN_RUNTIME = {"onnxruntime": "1.31"}
# Items added as reranker candidates from each source (see module docstring).
COOC_CANDIDATES = 50
POPULAR_CANDIDATES = 30
# Co-occurring items kept per item: 12 keeps a 50,000-item graph under the 8 MB cap
# in fp32 (int32 index + float32 value each) and costs < 0.1 ms per request.
COOC_LIST = 12
BASKET_LEN = 64
# Hour-of-day lift in four day-parts: finer parts are too sparse per item to help.
HOUR_PARTS = (0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 0)
N_PARTS = 4
RERANK_FEATURES = (
    "hist_score",
    "in_hist",
    "log_nbr",
    "in_nbr",
    "cooc",
    "log_cooc",
    "has_basket",
    "log_basket_size",
    "log_pop",
    "cart_position",
    "repeat_rate",
    "hour_lift",
)
# Next-basket score of items outside the shopper's hist list: below any personal
# score (logits stay far above -1000), ordered by popularity among themselves.
NEXT_FLOOR = -1000.0
# Orders back from each shopper's newest used as personal-model targets.
PERSONAL_CUTS = (2, 3, 4, 5, 6, 7)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults were chosen on half A of the dev file only."""

    k: int = 10
    hist_len: int = 100
    nbr_len: int = 50
    basket_len: int = BASKET_LEN
    personal_hidden: tuple[int, ...] = (32, 16)
    personal_epochs: int = 10
    personal_seeds: int = 3
    rerank_hidden: tuple[int, ...] = (16,)
    rerank_epochs: int = 20
    seed: int = 0
    zones: tuple[str, ...] = ()
    # False: the reranker only reorders the TIFU-KNN blend (tests, tiny data)
    learn_personal: bool = True


@dataclass
class ItemTables:
    """Per-item tables the graph carries (row N is padding)."""

    cooc_idx: np.ndarray  # int64 [N+1, L]
    cooc_val: np.ndarray  # float32 [N+1, L]
    item_feats: np.ndarray  # float32 [N+1, 3]: log_pop, cart_position, repeat_rate
    hour_lift: np.ndarray  # float32 [N+1, N_PARTS]
    popular: np.ndarray  # int64 [POPULAR_CANDIDATES]

    @classmethod
    def random(cls, n: int, rng: np.random.Generator) -> ItemTables:
        """Random tables of the right shapes for ``n`` items: graph size and speed
        measurements (bench/, tests) without training on that many."""
        return cls(
            cooc_idx=rng.integers(0, n, size=(n + 1, COOC_LIST)),
            cooc_val=rng.random((n + 1, COOC_LIST)).astype(np.float32),
            item_feats=rng.random((n + 1, 3)).astype(np.float32),
            hour_lift=rng.standard_normal((n + 1, N_PARTS)).astype(np.float32),
            popular=np.arange(POPULAR_CANDIDATES),
        )


@dataclass
class TrainedRanker:
    catalogue: list[str]
    profile_model: ProfileModel
    tables: ItemTables
    rerank: MlpParams
    config: TrainConfig
    profiles: dict[str, ShopperFeatures]
    popular: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.catalogue)


# -- data ----------------------------------------------------------------------------------


def histories_of(by_user: Mapping[str, Sequence[Order]]) -> dict[str, ShopperHistory]:
    """Orders (sorted per shopper) as the feature code's ``ShopperHistory``."""
    return {
        user: ShopperHistory(
            tuple(o.items for o in orders), tuple(o.days_since_prior for o in orders)
        )
        for user, orders in by_user.items()
        if orders
    }


def _cut(
    by_user: Mapping[str, Sequence[Order]], cut: int
) -> tuple[dict[str, list[Order]], dict[str, Order]]:
    """(orders before the target, target): the target is ``cut`` orders back from the newest."""
    hist, target = {}, {}
    for user, orders in by_user.items():
        if len(orders) > cut >= 1:
            hist[user] = list(orders[: len(orders) - cut])
            target[user] = orders[len(orders) - cut]
    return hist, target


# -- numpy networks ------------------------------------------------------------------------


def fit_mlp(
    x: np.ndarray,
    y: np.ndarray,
    hidden: Sequence[int],
    *,
    epochs: int,
    seed: int,
    lr: float = 3e-3,
    batch: int = 512,
    l2: float = 1e-4,
) -> MlpParams:
    """A ReLU network with a logistic output, trained with Adam on log loss."""
    rng = np.random.default_rng(seed)
    mean = x.mean(0)
    scale = x.std(0) + 1e-6
    z = ((x - mean) / scale).astype(np.float32)
    y = y.astype(np.float32)
    sizes = [z.shape[1], *hidden, 1]
    ws = [
        (rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32)
        for a, b in itertools.pairwise(sizes)
    ]
    bs = [np.zeros(b, np.float32) for b in sizes[1:]]
    rate = float(np.clip(y.mean(), 1e-4, 1 - 1e-4))
    bs[-1][:] = math.log(rate / (1 - rate))
    params = ws + bs
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(epochs):
        perm = rng.permutation(len(z))
        for start in range(0, len(z), batch):
            idx = perm[start : start + batch]
            acts = [z[idx]]
            for i in range(len(ws)):
                h = acts[-1] @ ws[i] + bs[i]
                acts.append(np.maximum(h, 0) if i < len(ws) - 1 else h)
            p = 1 / (1 + np.exp(-np.clip(acts[-1][:, 0], -30, 30)))
            g = ((p - y[idx]) / len(idx))[:, None]
            gw: list[np.ndarray] = [np.empty(0)] * len(ws)
            gb: list[np.ndarray] = [np.empty(0)] * len(ws)
            for i in range(len(ws) - 1, -1, -1):
                gw[i] = acts[i].T @ g + l2 * ws[i]
                gb[i] = g.sum(0)
                if i > 0:
                    g = (g @ ws[i].T) * (acts[i] > 0)
            step += 1
            for j, (param, grad) in enumerate(zip(params, gw + gb, strict=True)):
                m1[j] = 0.9 * m1[j] + 0.1 * grad
                m2[j] = 0.999 * m2[j] + 0.001 * grad * grad
                param -= (
                    lr * (m1[j] / (1 - 0.9**step)) / (np.sqrt(m2[j] / (1 - 0.999**step)) + 1e-8)
                )
    return MlpParams.from_arrays(mean, scale, ws, bs)


# -- item tables ---------------------------------------------------------------------------


def item_tables(
    by_user: Mapping[str, Sequence[Order]], index: Mapping[str, int], n_items: int
) -> ItemTables:
    """Co-occurrence lists, item statistics and hour lifts from every basket in ``by_user``."""
    n1 = n_items + 1
    count = np.zeros(n1)
    position = np.zeros(n1)
    buyers_repeat = np.zeros(n1)
    part_count = np.zeros((n1, N_PARTS))
    codes = []
    for orders in by_user.values():
        seen: set[int] = set()
        for o in orders:
            b = np.asarray([index[i] for i in o.items if i in index], dtype=np.int64)
            if not len(b):
                continue
            count[b] += 1
            position[b] += (np.arange(len(b)) + 0.5) / len(b)
            part_count[b, HOUR_PARTS[o.hour]] += 1
            buyers_repeat[[i for i in b.tolist() if i in seen]] += 1
            seen.update(b.tolist())
            if len(b) > 1:
                ii, jj = np.meshgrid(b, b, indexing="ij")
                off = ii != jj
                codes.append(ii[off] * n1 + jj[off])
    cooc_idx = np.full((n1, COOC_LIST), n_items, dtype=np.int64)
    cooc_val = np.zeros((n1, COOC_LIST), dtype=np.float32)
    if codes:
        pair, pair_count = np.unique(np.concatenate(codes), return_counts=True)
        src, dst = pair // n1, pair % n1
        # P(j in basket | i in basket), shrunk towards 0 for rarely bought i
        prob = pair_count / (count[src] + 2.0)
        order = np.lexsort((-count[dst], -prob, src))
        src, dst, prob = src[order], dst[order], prob[order]
        first = np.searchsorted(src, np.arange(n1))
        rank = np.arange(len(src)) - first[src]
        keep = rank < COOC_LIST
        cooc_idx[src[keep], rank[keep]] = dst[keep]
        cooc_val[src[keep], rank[keep]] = prob[keep]
    # a smoothed mean cart position (0 = first added, 1 = last); 0.5 when unknown
    cart = (position + 0.5 * 5) / (count + 5)
    repeat_rate = (buyers_repeat + 1) / (count + 5)
    feats = np.stack([np.log1p(count), cart, repeat_rate], axis=1).astype(np.float32)
    feats[n_items] = 0
    part_total = part_count.sum(0) + 1
    lift = np.log(
        ((part_count + 1) / (count[:, None] + N_PARTS)) / (part_total / part_total.sum())
    ).astype(np.float32)
    lift[n_items] = 0
    popular = np.argsort(-count[:n_items], kind="stable")[:POPULAR_CANDIDATES]
    return ItemTables(cooc_idx, cooc_val, feats, lift, popular.astype(np.int64))


# -- the reranker, in numpy (mirrors build_graph) ------------------------------------------


def rerank_inputs(
    tables: ItemTables, n_items: int, feeds: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(candidates [b, C], features [b, C, F]) exactly as the graph computes them."""
    n1 = n_items + 1
    b = feeds["hist_items"].shape[0]
    rows = np.arange(b)[:, None]

    def dense(items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        out = np.zeros((b, n1), dtype=np.float32)
        out[rows, items] = weights
        return out

    hd = dense(feeds["hist_items"], feeds["hist_weights"])
    ih = dense(feeds["hist_items"], np.ones_like(feeds["hist_weights"]))
    nd = dense(feeds["nbr_items"], feeds["nbr_weights"])
    inn = dense(feeds["nbr_items"], np.ones_like(feeds["nbr_weights"]))
    basket = feeds["basket_items"]
    cd = np.zeros((b, n1), dtype=np.float32)
    bi = tables.cooc_idx[basket].reshape(b, -1)
    bv = tables.cooc_val[basket].reshape(b, -1)
    np.add.at(cd, (np.repeat(rows, bi.shape[1], axis=1), bi), bv)
    n_basket = (basket != n_items).sum(1, keepdims=True).astype(np.float32)
    has = np.minimum(n_basket, 1)
    c2 = min(COOC_CANDIDATES, n1)
    ctop = np.argsort(-cd, axis=1, kind="stable")[:, :c2]
    pop = np.broadcast_to(tables.popular[None, :], (b, len(tables.popular)))
    cand = np.concatenate([feeds["hist_items"], feeds["nbr_items"], ctop, pop], axis=1)
    part = np.asarray(HOUR_PARTS)[np.clip(feeds["context"][:, 0], 0, 23)][:, None]
    g = np.take_along_axis
    cooc = g(cd, cand, 1)
    ones = np.ones(cand.shape, dtype=np.float32)
    cols = [
        g(hd, cand, 1),
        g(ih, cand, 1),
        np.log1p(100 * np.maximum(g(nd, cand, 1), 0)),
        g(inn, cand, 1),
        cooc,
        np.log1p(10 * cooc),
        has * ones,
        np.log1p(n_basket) * ones,
    ]
    x = np.concatenate(
        [np.stack(cols, axis=2), tables.item_feats[cand], tables.hour_lift[cand, part][..., None]],
        axis=2,
    )
    return cand, x.astype(np.float32)


def _gate(s: np.ndarray, x: np.ndarray) -> np.ndarray:
    """With an empty basket the personal order stands (the reranker only completes baskets)."""
    col = RERANK_FEATURES.index
    ih, has = x[..., col("in_hist")], x[..., col("has_basket")]
    nxt = ih * x[..., col("hist_score")] + (1 - ih) * (NEXT_FLOOR + x[..., col("log_pop")])
    scores: np.ndarray = (has * s + (1 - has) * nxt).astype(np.float32)
    return scores


def score_numpy(
    ranker: TrainedRanker, feeds: Mapping[str, np.ndarray], k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(top_items, top_scores) as the fp32 graph returns them."""
    k = k or ranker.config.k
    n = ranker.n_items
    cand, x = rerank_inputs(ranker.tables, n, feeds)
    b, c, f = x.shape
    s = ranker.rerank.forward(x.reshape(b * c, f)).reshape(b, c).astype(np.float32)
    s = _gate(s, x)
    dense = np.full((b, n + 1 + k), -np.inf, dtype=np.float32)
    rows = np.arange(b)[:, None]
    dense[rows, cand] = s
    dense[rows, feeds["basket_items"]] = -np.inf
    dense[:, n] = -np.inf
    top = np.argsort(-dense, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(dense, top, 1)


# -- training ------------------------------------------------------------------------------


def _personal_training_set(
    by_user: Mapping[str, Sequence[Order]], model: ProfileModel
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for cut in PERSONAL_CUTS:
        hist, target = _cut(by_user, cut)
        if not hist:
            continue
        table = candidate_table(histories_of(hist), model)
        if not len(table.x):
            continue
        wanted = {(u, i) for u, user in enumerate(table.users) for i in target[user].items}
        item_code = {name: j for j, name in enumerate(table.items)}
        codes = {(u, item_code[i]) for u, i in wanted if i in item_code}
        y = np.fromiter(
            ((u, i) in codes for u, i in zip(table.user_of_row, table.item_of_row, strict=True)),
            dtype=np.float64,
            count=len(table.x),
        )
        xs.append(table.x)
        ys.append(y)
    if not xs:
        return np.zeros((0, len(PERSONAL_FEATURES))), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys)


def _requests_for(
    target: Mapping[str, Order], profiles: Mapping[str, ShopperFeatures]
) -> tuple[list[FeedRequest], list[set[str]], list[str]]:
    """Next-basket and completion requests (and what each should find) for targets."""
    reqs, wanted, kinds = [], [], []
    for user, order in target.items():
        feats = profiles.get(user)
        reqs.append(FeedRequest(feats, (), order.hour, order.dow))
        wanted.append(set(order.items))
        kinds.append("next")
        half = len(order.items) // 2
        rest = set(order.items[half:]) - set(order.items[:half])
        if half and rest:
            reqs.append(FeedRequest(feats, order.items[:half], order.hour, order.dow))
            wanted.append(rest)
            kinds.append("completion")
    return reqs, wanted, kinds


def _schema(config: TrainConfig, model: ProfileModel) -> dict[str, Any]:
    return {
        "hist_len": config.hist_len,
        "nbr_len": config.nbr_len,
        "basket_len": config.basket_len,
        "decay": model.decay.to_dict(),
        "profile_model": model.to_dict(),
        "rerank_features": list(RERANK_FEATURES),
        "hour_parts": list(HOUR_PARTS),
        "attributes_key": "features",
    }


def _scratch_manifest(
    catalogue: list[str], config: TrainConfig, model: ProfileModel
) -> dict[str, Any]:
    return {
        "catalogue": catalogue,
        "zones": list(config.zones),
        "feature_schema": _schema(config, model),
        "sha256": None,
        "version": None,
    }


def recall_of(
    ranker: TrainedRanker,
    reqs: Sequence[FeedRequest],
    wanted: Sequence[set[str]],
    kinds: Sequence[str],
    catalogue_manifest: Mapping[str, Any],
) -> dict[str, float]:
    """Mean recall@k per request kind (numpy scoring, batches of 512)."""
    out: dict[str, list[float]] = {}
    for start in range(0, len(reqs), 512):
        chunk = reqs[start : start + 512]
        feeds = batch_feed(catalogue_manifest, chunk)
        top, scores = score_numpy(ranker, feeds)
        for j, req in enumerate(chunk):
            items = [
                ranker.catalogue[i]
                for i, s in zip(top[j], scores[j], strict=True)
                if np.isfinite(s)
            ]
            target = wanted[start + j] - set(req.basket)
            if target:
                hit = len(set(items) & target) / len(target)
                out.setdefault(kinds[start + j], []).append(hit)
    return {f"{kind}_recall@{ranker.config.k}": float(np.mean(v)) for kind, v in out.items()}


def train(
    by_user: Mapping[str, Sequence[Order]],
    config: TrainConfig = TrainConfig(),
    log: Any = None,
) -> TrainedRanker:
    """Train both stages on ``by_user`` (every shopper's orders, oldest first)."""

    def say(msg: str) -> None:
        if log is not None:
            log(msg)

    counts: dict[str, int] = {}
    for orders in by_user.values():
        for o in orders:
            for i in o.items:
                counts[i] = counts.get(i, 0) + 1
    if not counts:
        raise ValueError("no items in the orders")
    catalogue = sorted(counts, key=lambda i: (-counts[i], i))
    index = {item: j for j, item in enumerate(catalogue)}
    n = len(catalogue)
    model = ProfileModel(hist_len=config.hist_len, nbr_len=config.nbr_len)

    if config.learn_personal:
        x, y = _personal_training_set(by_user, model)
        say(f"personal model: {len(x)} candidate rows, {int(y.sum())} positives")
        if len(x) and 0 < y.sum() < len(y):
            nets = tuple(
                fit_mlp(
                    x,
                    y,
                    config.personal_hidden,
                    epochs=config.personal_epochs,
                    seed=config.seed + s,
                )
                for s in range(config.personal_seeds)
            )
            model = replace(model, mlp=nets)

    # the reranker learns from each shopper's newest order, with profiles built without it
    hist1, target1 = _cut(by_user, 1)
    scratch = _scratch_manifest(catalogue, config, model)
    tables1 = item_tables(hist1, index, n)
    profiles1 = build_profiles(histories_of(hist1), model) if hist1 else {}
    reqs, wanted, kinds = _requests_for(target1, profiles1)
    xs, ys = [], []
    for start in range(0, len(reqs), 512):
        chunk = reqs[start : start + 512]
        feeds = batch_feed(scratch, chunk)
        cand, xr = rerank_inputs(tables1, n, feeds)
        for j, req in enumerate(chunk):
            target = {index[i] for i in wanted[start + j] if i in index}
            banned = {index[i] for i in req.basket if i in index} | {n}
            c = cand[j]
            keep = ~np.isin(c, list(banned))
            _, first = np.unique(c, return_index=True)
            unique = np.zeros(len(c), dtype=bool)
            unique[first] = True
            keep &= unique
            xs.append(xr[j][keep])
            ys.append(np.isin(c[keep], list(target)).astype(np.float64))
    if xs and 0 < sum(float(v.sum()) for v in ys) < sum(len(v) for v in ys):
        xr_all, yr_all = np.concatenate(xs), np.concatenate(ys)
        say(f"reranker: {len(xr_all)} candidate rows from {len(reqs)} requests")
        rerank = fit_mlp(
            xr_all, yr_all, config.rerank_hidden, epochs=config.rerank_epochs, seed=config.seed
        )
    else:
        rerank = _hand_rerank()
    ranker = TrainedRanker(
        catalogue=catalogue,
        profile_model=model,
        tables=tables1,
        rerank=rerank,
        config=config,
        profiles={},
        popular={},
    )
    if reqs:
        ranker.metrics = recall_of(ranker, reqs, wanted, kinds, scratch)
        say(f"validation on each shopper's newest order: {ranker.metrics}")
    # deploy: tables and profiles from every order
    ranker.tables = item_tables(by_user, index, n)
    ranker.profiles = build_profiles(histories_of(by_user), model)
    ranker.popular = popular_lists(by_user, catalogue, counts)
    return ranker


def _hand_rerank() -> MlpParams:
    """With too little data to learn from: the personal score, then co-occurrence, then pop."""
    f = len(RERANK_FEATURES)
    w = np.zeros((f, 1))
    w[RERANK_FEATURES.index("hist_score"), 0] = 1.0
    w[RERANK_FEATURES.index("in_hist"), 0] = 5.0
    w[RERANK_FEATURES.index("cooc"), 0] = 3.0
    w[RERANK_FEATURES.index("log_pop"), 0] = 0.1
    return MlpParams.from_arrays(np.zeros(f), np.ones(f), [w], [np.zeros(1)])


def popular_lists(
    by_user: Mapping[str, Sequence[Order]], catalogue: list[str], counts: Mapping[str, int]
) -> dict[str, Any]:
    """The manifest's ``popular``: top 100 overall, top 20 per hour (overall where none)."""
    overall = catalogue[:100]
    per_hour: dict[int, dict[str, int]] = {h: {} for h in range(24)}
    for orders in by_user.values():
        for o in orders:
            bucket = per_hour[o.hour]
            for i in o.items:
                bucket[i] = bucket.get(i, 0) + 1
    by_hour = {}
    for h, c in per_hour.items():
        ranked = sorted(c, key=lambda i: (-c[i], -counts[i], i))[:20]
        for i in overall:
            if len(ranked) >= 20:
                break
            if i not in ranked:
                ranked.append(i)
        by_hour[str(h)] = ranked
    return {"overall": overall, "by_hour": by_hour}


# -- the ONNX graph ------------------------------------------------------------------------


def build_graph(ranker: TrainedRanker, variant: str = "fp32") -> bytes:
    """The ranker as one ONNX graph (opset 17), fp32 or with int8/uint8 tables.

    Inputs (b = batch): hist_items int64 [b,H], hist_weights float [b,H],
    nbr_items int64 [b,M], nbr_weights float [b,M], basket_items int64 [b,B],
    context int64 [b,3] (hour, dow, zone). Index N is padding. Outputs:
    top_items int64 [b,K], top_scores float [b,K], best first; basket items and
    padding are never returned with a finite score (the caller drops -inf).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cfg = ranker.config
    n = ranker.n_items
    n1 = n + 1
    k = cfg.k
    t = ranker.tables
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    i64 = np.int64
    # shapes
    node("Shape", ["hist_items"], "shape_h")
    c0, c1 = const("c0", np.array([0], i64)), const("c1", np.array([1], i64))
    node("Slice", ["shape_h", c0, c1], "b")
    node("Concat", ["b", const("n1", np.array([n1], i64))], "shape_bn", axis=0)
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    node("ConstantOfShape", ["shape_bn"], "zeros", value=zero)
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    node("ConstantOfShape", ["shape_h"], "ones_h", value=one)
    node("Shape", ["nbr_items"], "shape_n")
    node("ConstantOfShape", ["shape_n"], "ones_n", value=one)
    node("ScatterElements", ["zeros", "hist_items", "hist_weights"], "hd", axis=1)
    node("ScatterElements", ["zeros", "hist_items", "ones_h"], "ih", axis=1)
    node("ScatterElements", ["zeros", "nbr_items", "nbr_weights"], "nd", axis=1)
    node("ScatterElements", ["zeros", "nbr_items", "ones_n"], "inn", axis=1)

    # co-occurrence with the basket
    if variant == "int8":
        idx_dtype = np.uint16 if n1 <= np.iinfo(np.uint16).max else np.int32
        const("cooc_idx", t.cooc_idx.astype(idx_dtype))
        vmax = float(t.cooc_val.max()) or 1.0
        vscale = vmax / 255.0
        const("cooc_val_q", np.round(t.cooc_val / vscale).clip(0, 255).astype(np.uint8))
        node("Gather", ["cooc_val_q", "basket_items"], "bv_q", axis=0)
        node(
            "DequantizeLinear",
            [
                "bv_q",
                const("cooc_scale", np.array(vscale, np.float32)),
                const("cooc_zp", np.array(0, np.uint8)),
            ],
            "bv",
        )
    else:
        const("cooc_idx", t.cooc_idx.astype(np.int32))
        const("cooc_val", t.cooc_val.astype(np.float32))
        node("Gather", ["cooc_val", "basket_items"], "bv", axis=0)
    node("Gather", ["cooc_idx", "basket_items"], "bi_raw", axis=0)
    node("Cast", ["bi_raw"], "bi", to=TensorProto.INT64)
    node("Concat", ["b", const("minus1", np.array([-1], i64))], "shape_flat", axis=0)
    node("Reshape", ["bi", "shape_flat"], "bi_flat")
    node("Reshape", ["bv", "shape_flat"], "bv_flat")
    node("ScatterElements", ["zeros", "bi_flat", "bv_flat"], "cd", axis=1, reduction="add")
    node("Equal", ["basket_items", const("pad", np.array(n, i64))], "is_pad")
    node("Not", ["is_pad"], "is_item")
    node("Cast", ["is_item"], "is_item_f", to=TensorProto.FLOAT)
    node("ReduceSum", ["is_item_f", const("ax1", np.array([1], i64))], "n_basket", keepdims=1)
    node("Min", ["n_basket", const("one_f", np.array([1.0], np.float32))], "has_basket")
    c2 = min(COOC_CANDIDATES, n1)
    node("TopK", ["cd", const("c2", np.array([c2], i64))], "ctop_v", axis=1)
    nodes[-1].output.append("ctop")
    pop = t.popular.reshape(1, -1)
    node("Concat", ["b", const("npop", np.array([pop.shape[1]], i64))], "shape_pop", axis=0)
    node("Expand", [const("pop_cands", pop.astype(i64)), "shape_pop"], "popc")
    node("Concat", ["hist_items", "nbr_items", "ctop", "popc"], "cand", axis=1)

    # candidate features, in RERANK_FEATURES order
    for src in ("hd", "ih", "nd", "inn", "cd"):
        node("GatherElements", [src, "cand"], f"{src}_c", axis=1)
    node("Max", ["nd_c", const("zero_f", np.array([0.0], np.float32))], "nd_pos")
    node("Mul", ["nd_pos", const("hundred", np.array([100.0], np.float32))], "nd_100")
    node("Add", ["nd_100", "one_f"], "nd_1")
    node("Log", ["nd_1"], "log_nbr")
    node("Mul", ["cd_c", const("ten", np.array([10.0], np.float32))], "cd_10")
    node("Add", ["cd_10", "one_f"], "cd_1")
    node("Log", ["cd_1"], "log_cooc")
    node("Shape", ["cand"], "shape_c")
    node("Expand", ["has_basket", "shape_c"], "has_c")
    node("Add", ["n_basket", "one_f"], "nb_1")
    node("Log", ["nb_1"], "log_nb")
    node("Expand", ["log_nb", "shape_c"], "log_nb_c")
    if variant == "int8":
        lo = t.item_feats.min(0)
        hi = t.item_feats.max(0)
        scale = np.maximum(hi - lo, 1e-6) / 255.0
        zp = np.round(-lo / scale).clip(0, 255)
        q = np.round(t.item_feats / scale + zp).clip(0, 255).astype(np.uint8)
        const("item_q", q)
        node("Gather", ["item_q", "cand"], "item_c_q", axis=0)
        node(
            "DequantizeLinear",
            [
                "item_c_q",
                const("item_scale", scale.astype(np.float32)),
                const("item_zp", zp.astype(np.uint8)),
            ],
            "item_c",
            axis=2,
        )
        flat = t.hour_lift.reshape(-1)
        lscale = max(float(flat.max() - flat.min()), 1e-6) / 255.0
        lzp = float(np.round(-flat.min() / lscale).clip(0, 255))
        const("lift_q", np.round(flat / lscale + lzp).clip(0, 255).astype(np.uint8))
    else:
        const("item_table", t.item_feats.astype(np.float32))
        node("Gather", ["item_table", "cand"], "item_c", axis=0)
        const("lift", t.hour_lift.reshape(-1).astype(np.float32))
    node("Slice", ["context", "c0", "c1", "ax1"], "hour_raw")
    h0, h23 = const("h0", np.array(0, i64)), const("h23", np.array(23, i64))
    node("Clip", ["hour_raw", h0, h23], "hour")
    node("Gather", [const("parts", np.asarray(HOUR_PARTS, i64)), "hour"], "part", axis=0)
    node("Mul", ["cand", const("nparts", np.array(N_PARTS, i64))], "cand_x")
    node("Add", ["cand_x", "part"], "lift_at")
    if variant == "int8":
        node("Gather", ["lift_q", "lift_at"], "lift_c_q", axis=0)
        node(
            "DequantizeLinear",
            [
                "lift_c_q",
                const("lift_scale", np.array(lscale, np.float32)),
                const("lift_zp", np.array(lzp, np.uint8)),
            ],
            "lift_c",
        )
    else:
        node("Gather", ["lift", "lift_at"], "lift_c", axis=0)
    cols = ["hd_c", "ih_c", "log_nbr", "inn_c", "cd_c", "log_cooc", "has_c", "log_nb_c"]
    ax2 = const("ax2", np.array([2], i64))
    for name in cols:
        node("Unsqueeze", [name, ax2], f"{name}_3")
    node("Unsqueeze", ["lift_c", ax2], "lift_c_3")
    node("Concat", [f"{c}_3" for c in cols] + ["item_c", "lift_c_3"], "x", axis=2)

    # the reranker network, standardisation folded into its first layer
    r = ranker.rerank
    mean, sc = np.asarray(r.mean), np.asarray(r.scale)
    ws = [np.asarray(w, np.float64) for w in r.weights]
    bs = [np.asarray(b_, np.float64) for b_ in r.biases]
    ws[0], bs[0] = ws[0] / sc[:, None], bs[0] - (mean / sc) @ ws[0]
    a = "x"
    for i, (w, b_) in enumerate(zip(ws, bs, strict=True)):
        node("MatMul", [a, const(f"w{i}", w.astype(np.float32))], f"mm{i}")
        node("Add", [f"mm{i}", const(f"b{i}", b_.astype(np.float32))], f"z{i}")
        a = f"z{i}"
        if i < len(ws) - 1:
            a = node("Relu", [a], f"relu{i}")
    node("Squeeze", [a, ax2], "s_mlp")
    # gate (see _gate): has * s_mlp + (1 - has) * (ih * h + (1 - ih) * (floor + log_pop))
    node("Gather", ["item_c", const("c0s", np.array(0, i64))], "logpop_c", axis=2)
    node("Add", ["logpop_c", const("floor", np.array([NEXT_FLOOR], np.float32))], "floor_c")
    node("Sub", ["hd_c", "floor_c"], "h_minus_floor")
    node("Mul", ["ih_c", "h_minus_floor"], "ih_part")
    node("Add", ["floor_c", "ih_part"], "s_next")
    node("Sub", ["s_mlp", "s_next"], "mlp_minus_next")
    node("Mul", ["has_c", "mlp_minus_next"], "has_part")
    node("Add", ["s_next", "has_part"], "s")

    # scatter back to items (duplicates carry equal scores), mask, take the top k
    node("Concat", ["b", const("n1k", np.array([n1 + k], i64))], "shape_out", axis=0)
    neg = helper.make_tensor("neg", TensorProto.FLOAT, [1], [-np.inf])
    node("ConstantOfShape", ["shape_out"], "neg_inf", value=neg)
    node("ScatterElements", ["neg_inf", "cand", "s"], "scored", axis=1)
    node("Shape", ["basket_items"], "shape_bk")
    node("ConstantOfShape", ["shape_bk"], "neg_bk", value=neg)
    node("ScatterElements", ["scored", "basket_items", "neg_bk"], "masked", axis=1)
    pad_mask = np.zeros((1, n1 + k), np.float32)
    pad_mask[0, n] = -np.inf
    node("Add", ["masked", const("pad_mask", pad_mask)], "final")
    node("TopK", ["final", const("k", np.array([k], i64))], "top_scores", axis=1)
    nodes[-1].output.append("top_items")

    f32, int64 = TensorProto.FLOAT, TensorProto.INT64
    h, m, bl = cfg.hist_len, cfg.nbr_len, cfg.basket_len
    inputs = [
        helper.make_tensor_value_info("hist_items", int64, ["b", h]),
        helper.make_tensor_value_info("hist_weights", f32, ["b", h]),
        helper.make_tensor_value_info("nbr_items", int64, ["b", m]),
        helper.make_tensor_value_info("nbr_weights", f32, ["b", m]),
        helper.make_tensor_value_info("basket_items", int64, ["b", bl]),
        helper.make_tensor_value_info("context", int64, ["b", 3]),
    ]
    outputs = [
        helper.make_tensor_value_info("top_items", int64, ["b", k]),
        helper.make_tensor_value_info("top_scores", f32, ["b", k]),
    ]
    graph = helper.make_graph(nodes, "store_ranker", inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="store-gateway",
    )
    model.ir_version = 8  # onnxruntime 1.31 reads IR <= 10; 8 is what opset 17 needs
    onnx.checker.check_model(model, full_check=True)
    serialised: bytes = model.SerializeToString()
    return serialised


def io_spec(config: TrainConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The manifest's ``inputs`` / ``outputs``: names, dtypes, shapes ("b" = batch)."""
    h, m, bl, k = config.hist_len, config.nbr_len, config.basket_len, config.k
    inputs = [
        {"name": "hist_items", "dtype": "int64", "shape": ["b", h]},
        {"name": "hist_weights", "dtype": "float32", "shape": ["b", h]},
        {"name": "nbr_items", "dtype": "int64", "shape": ["b", m]},
        {"name": "nbr_weights", "dtype": "float32", "shape": ["b", m]},
        {"name": "basket_items", "dtype": "int64", "shape": ["b", bl]},
        {"name": "context", "dtype": "int64", "shape": ["b", 3]},
    ]
    outputs = [
        {"name": "top_items", "dtype": "int64", "shape": ["b", k]},
        {"name": "top_scores", "dtype": "float32", "shape": ["b", k]},
    ]
    return inputs, outputs


def build_manifest(
    ranker: TrainedRanker, variant: str, version: int, now: dt.datetime | None = None
) -> dict[str, Any]:
    """The manifest (without sha256/model_file: ``write_bundle`` fills those in)."""
    now = now or dt.datetime.now(dt.UTC)
    inputs, outputs = io_spec(ranker.config)
    return {
        "format": FORMAT,
        "version": version,
        "created": now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "variant": variant,
        "catalogue": list(ranker.catalogue),
        "catalogue_size": ranker.n_items,
        "zones": list(ranker.config.zones),
        "k": ranker.config.k,
        "feature_schema": _schema(ranker.config, ranker.profile_model),
        "inputs": inputs,
        "outputs": outputs,
        "metrics": {key: round(v, 4) for key, v in ranker.metrics.items()},
        "min_runtime": dict(MIN_RUNTIME),
        "popular": ranker.popular,
    }
