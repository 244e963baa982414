"""The ranker's pieces: orders reader, protocol, features shared with the Pi, graph and training."""

from __future__ import annotations

import collections
import json
import math

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decision.features import (
    FeedRequest,
    ShopperFeatures,
    batch_feed,
    features_from_attributes,
    request_feed,
)
from gateway.errors import OrdersError
from gateway.hq import evaluate as ev
from gateway.hq import training as T
from gateway.hq.features import DecayParams, features_to_attributes, neighbour_vectors, tifu_vector
from gateway.hq.orders import Order, OrdersFile, read_orders
from gateway.hq.synthetic import DEMO_CODES, SyntheticSpec, ean13, synthetic_orders

HEADER = (
    "order_id,user_id,order_number,order_dow,order_hour_of_day,"
    "days_since_prior_order,product_id,add_to_cart_order"
)


def read_text(tmp_path, text: str) -> OrdersFile:
    """``text`` read back as an Orders CSV file, the way `model train` reads one."""
    path = tmp_path / "orders.csv"
    path.write_text(text, encoding="utf-8", newline="")
    return read_orders(path)


def make_order(items, *, user="1", number=1, hour=10, dow=2, order_id=None, gap=7.0):
    return Order(order_id or f"{user}-{number}", user, number, dow, hour, gap, tuple(items))


@pytest.fixture(scope="module")
def small_ranker():
    """A ranker trained on a small synthetic history (fast settings)."""
    spec = SyntheticSpec(shoppers=60, items=150, categories=10, min_orders=6, max_orders=12)
    by_user = collections.defaultdict(list)
    for o in synthetic_orders(spec):
        by_user[o.user_id].append(o)
    config = T.TrainConfig(personal_epochs=2, personal_seeds=1, rerank_epochs=3, k=10)
    ranker = T.train(by_user, config)
    manifest = T.build_manifest(ranker, "fp32", 1)
    manifest["sha256"] = "0" * 64
    return ranker, manifest


# -- orders --------------------------------------------------------------------------------


def test_orders_reader_groups_sorts_and_ignores_extra_columns(tmp_path):
    """Rows become orders in add-to-cart order, sorted by order_number; extra columns ignored."""
    text = "\n".join(
        [
            HEADER + ",reordered",
            "o2,17,2,3,9,7.0,b,2.0,1",
            "o2,17,2,3,9,7.0,a,1.0,1",
            "o1,17,1,1,8,,c,1,0",
        ]
    )
    orders = read_text(tmp_path, text).by_user["17"]
    assert [o.order_id for o in orders] == ["o1", "o2"]
    assert orders[1].items == ("a", "b")
    assert orders[0].days_since_prior is None
    assert orders[1].days_since_prior == 7.0


def test_orders_reader_counts_garbage_rows_and_keeps_going(tmp_path):
    """Bad rows are counted and described with line numbers; good rows still load."""
    text = "\n".join(
        [
            HEADER,
            "o1,1,1,1,8,,a,1",
            "o1,1,1,1,99,,b,2",  # hour out of range
            "o1,1,1,x,8,,c,3",  # dow not a number
            "short,row",
            "o1,1,1,1,8,,d,4",
        ]
    )
    result = read_text(tmp_path, text)
    assert result.bad_rows == 3
    assert result.by_user["1"][0].items == ("a", "d")
    assert any("line 3" in p for p in result.problems)


def test_orders_reader_skips_an_endless_line_without_holding_it(tmp_path):
    """A line over the cap is skipped and counted, not parsed."""
    text = HEADER + "\n" + "o1,1,1,1,8,,a,1\n" + "x" * 100_000 + "\n" + "o1,1,1,1,8,,b,2\n"
    result = read_text(tmp_path, text)
    assert result.by_user["1"][0].items == ("a", "b")
    assert result.bad_rows == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("order_id,user_id\n1,2\n", "missing column"),
        (HEADER + "\n", "no usable order rows"),
    ],
)
def test_orders_reader_unusable_files(tmp_path, text, message):
    """Unusable files raise OrdersError with a message fit for the command line."""
    with pytest.raises(OrdersError, match=message):
        read_text(tmp_path, text)


# -- protocol ------------------------------------------------------------------------------


def test_known_split_is_first_half_by_cart_order():
    """The known half is the first len // 2 items added."""
    known, rest = ev.known_split(make_order(["a", "b", "c", "d", "e"]))
    assert (known, rest) == (["a", "b"], ["c", "d", "e"])


def test_recall_and_ndcg_by_hand():
    """recall@k and NDCG@k against hand-computed values."""
    assert ev.recall_at(["a", "x", "b"], {"a", "b", "c", "d"}) == 0.5
    idcg = 1 + 1 / math.log2(3)
    assert ev.ndcg_at(["x", "a"], {"a", "b"}) == pytest.approx((1 / math.log2(3)) / idcg)
    assert ev.recall_at(["a"], set()) is None


def test_halves_are_stable_and_roughly_even():
    """half_of is a pure function of the id and splits many ids near 50/50."""
    halves = collections.Counter(ev.half_of(str(u)) for u in range(2000))
    assert ev.half_of("17") == ev.half_of("17")
    assert 900 < halves["A"] < 1100


def test_own_frequency_breaks_ties_by_first_purchase():
    """Equal counts rank the item bought first higher (the README's baseline)."""
    history = {"1": [make_order(["b", "a"], number=1), make_order(["a", "b", "c"], number=2)]}
    assert ev.own_frequency(history)["1"][:3] == ["b", "a", "c"]


# -- features ------------------------------------------------------------------------------


def test_tifu_vector_matches_the_published_grouping():
    """Four baskets, m=3: groups [b0], [b1], [b2, b3]; decays as in the reference code."""
    baskets = [("x",), ("x",), ("y",), ("x",)]
    d = DecayParams(groups=3, within=0.5, group=0.5)
    v = tifu_vector(baskets, d)
    within = [0.5**3, 0.5**2, 0.5, 1.0]
    expected_x = (0.25 * within[0] + 0.5 * within[1] + 1.0 * within[3] / 2) / 3
    assert v["x"] == pytest.approx(expected_x)
    assert v["y"] == pytest.approx(1.0 * within[2] / 2 / 3)


def test_neighbours_with_k1_are_the_shopper_itself():
    """k=1: the nearest shopper is oneself (distance 0), as in TIFU-KNN."""
    vectors = {"a": {"x": 1.0}, "b": {"y": 1.0, "z": 0.5}}
    assert neighbour_vectors(vectors, 1) == {"a": {"x": 1.0}, "b": {"y": 1.0, "z": 0.5}}


def test_neighbours_average_k_nearest():
    """k=2 averages the two closest vectors."""
    vectors = {"a": {"x": 1.0}, "b": {"x": 0.9}, "c": {"y": 5.0}}
    out = neighbour_vectors(vectors, 2)
    assert out["a"] == pytest.approx({"x": 0.95})


def test_attributes_round_trip():
    """Features survive their JSON attribute form (weights rounded to 4 digits)."""
    f = ShopperFeatures(hist=(("a", 1.234567), ("b", -0.5)), nbr=(("c", 0.001234567),))
    back = features_from_attributes(json.loads(json.dumps(features_to_attributes(f))))
    assert back == ShopperFeatures(hist=(("a", 1.235), ("b", -0.5)), nbr=(("c", 0.001235),))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {
                "v": st.sampled_from([1, 2, "1"]),
                "h": json_values,
                "hw": json_values,
                "n": json_values,
                "nw": json_values,
            }
        ),
        st.fixed_dictionaries(
            {
                "v": st.just(1),
                "h": st.lists(st.text(max_size=70), max_size=5),
                "hw": st.lists(st.floats() | st.integers() | st.booleans(), max_size=5),
                "n": st.just([]),
                "nw": st.just([]),
            }
        ),
    )
)
def test_features_from_attributes_never_raises(doc):
    """Hostile attributes give None or clean features: finite weights, non-empty string ids."""
    out = features_from_attributes(doc)
    if out is not None:
        for item, w in out.hist + out.nbr:
            assert isinstance(item, str) and item
            assert math.isfinite(w)


def test_request_feed_pads_ignores_unknown_and_maps_zones(small_ranker):
    """Unknown ids are dropped, rows padded with index N, zones map to 1-based indices."""
    ranker, manifest = small_ranker
    manifest = dict(manifest, zones=["dairy", "bakery"])
    n = ranker.n_items
    first, second = ranker.catalogue[:2]
    feats = ShopperFeatures(hist=(("nope", 9.0), (first, 2.0)), nbr=((second, 0.5),))
    feed = request_feed(manifest, feats, ["nope", second, second], 9, 3, "bakery")
    schema = manifest["feature_schema"]
    assert feed["hist_items"].shape == (1, schema["hist_len"])
    assert feed["hist_items"][0, 0] == 0 and feed["hist_items"][0, 1] == n
    assert feed["hist_weights"][0, :2].tolist() == [2.0, 0.0]
    assert feed["basket_items"][0, 0] == 1 and feed["basket_items"][0, 1] == n
    assert feed["context"].tolist() == [[9, 3, 2]]
    assert feed["hist_items"].dtype == np.int64 and feed["hist_weights"].dtype == np.float32
    assert request_feed(manifest, None, [], 0, 0, "unknown zone")["context"].tolist() == [[0, 0, 0]]


@pytest.mark.parametrize(("hour", "dow"), [(24, 0), (-1, 0), (0, 7)])
def test_request_feed_rejects_bad_context(small_ranker, hour, dow):
    """Out-of-range hour or dow is a ValueError, not a silent wrong input."""
    _, manifest = small_ranker
    with pytest.raises(ValueError):
        request_feed(manifest, None, [], hour, dow, None)


# -- graph ---------------------------------------------------------------------------------


def run_graph(model: bytes, feeds):
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(["top_items", "top_scores"], feeds)


def some_requests(ranker, rng):
    reqs = []
    for feats in list(ranker.profiles.values())[:20]:
        basket = list(rng.choice(ranker.catalogue, size=rng.integers(0, 6), replace=False))
        reqs.append(FeedRequest(feats, basket, int(rng.integers(0, 24)), int(rng.integers(0, 7))))
    reqs.append(FeedRequest(None, [], 12, 1))
    return reqs


def test_graph_matches_numpy_and_never_returns_basket_or_padding(small_ranker):
    """The fp32 graph gives the numpy reference's ranking; basket and padding never scored."""
    ranker, manifest = small_ranker
    feeds = batch_feed(manifest, some_requests(ranker, np.random.default_rng(0)))
    items, scores = run_graph(T.build_graph(ranker, "fp32"), feeds)
    ref_items, ref_scores = T.score_numpy(ranker, feeds)
    assert np.allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    agree = np.mean(
        [set(a) == set(b) for a, b in zip(items.tolist(), ref_items.tolist(), strict=True)]
    )
    assert agree >= 0.9
    for row in range(len(items)):
        valid = [i for i, s in zip(items[row], scores[row], strict=True) if np.isfinite(s)]
        assert ranker.n_items not in valid
        assert not set(valid) & set(feeds["basket_items"][row].tolist())
        assert list(scores[row]) == sorted(scores[row], reverse=True)


def test_int8_graph_loads_and_agrees_with_fp32(small_ranker):
    """The int8 variant runs in onnxruntime and keeps most top-10s of the fp32 graph."""
    ranker, manifest = small_ranker
    feeds = batch_feed(manifest, some_requests(ranker, np.random.default_rng(1)))
    fp32, _ = run_graph(T.build_graph(ranker, "fp32"), feeds)
    int8, _ = run_graph(T.build_graph(ranker, "int8"), feeds)
    overlap = np.mean(
        [len(set(a) & set(b)) / 10 for a, b in zip(fp32.tolist(), int8.tolist(), strict=True)]
    )
    assert overlap >= 0.8


def test_graph_with_fewer_candidates_than_k_pads_with_minus_inf():
    """A catalogue smaller than k: the graph still runs; missing places score -inf."""
    by_user = {
        "1": [make_order(["a", "b"], number=1), make_order(["a"], number=2)],
        "2": [make_order(["b", "c"], user="2", number=1), make_order(["c"], user="2", number=2)],
    }
    ranker = T.train(by_user, T.TrainConfig(k=10, learn_personal=False))
    manifest = T.build_manifest(ranker, "fp32", 1)
    manifest["sha256"] = "0" * 64
    feeds = request_feed(manifest, ranker.profiles["1"], ["a"], 10, 1, None)
    items, scores = run_graph(T.build_graph(ranker, "fp32"), feeds)
    valid = [
        ranker.catalogue[i] for i, s in zip(items[0], scores[0], strict=True) if np.isfinite(s)
    ]
    assert sorted(valid) == ["b", "c"]
    assert np.isinf(scores[0][-1])


def test_graph_size_and_opset_for_50k_items():
    """A 50,000-item graph stays under the 8 MB bundle cap in both variants, at opset <= 21."""
    import onnx

    n = 50_000
    rng = np.random.default_rng(0)
    tables = T.ItemTables.random(n, rng)
    ranker = T.TrainedRanker(
        catalogue=[ean13(10**10 + i) for i in range(n)],
        profile_model=T.ProfileModel(),
        tables=tables,
        rerank=T._hand_rerank(),
        config=T.TrainConfig(),
        profiles={},
        popular={},
    )
    manifest_bytes = len(json.dumps(T.build_manifest(ranker, "fp32", 1)))
    for variant in ("fp32", "int8"):
        model = T.build_graph(ranker, variant)
        assert len(model) + manifest_bytes < 8 * 1024 * 1024
        assert onnx.load_from_string(model).opset_import[0].version <= 21


# -- training ------------------------------------------------------------------------------


def test_planted_staples_are_learned():
    """On synthetic shoppers with staple cycles, the model's recall@10 beats own frequency."""
    spec = SyntheticSpec(shoppers=100, items=300, categories=15, min_orders=8, max_orders=14)
    by_user = collections.defaultdict(list)
    for o in synthetic_orders(spec):
        by_user[o.user_id].append(o)
    history, test = ev.split_last(by_user)
    config = T.TrainConfig(personal_epochs=4, personal_seeds=1, rerank_epochs=4)
    ranker = T.train(history, config)
    manifest = T.build_manifest(ranker, "fp32", 1)
    manifest["sha256"] = "0" * 64
    users = list(test)
    reqs = [FeedRequest(ranker.profiles.get(u), (), test[u].hour, test[u].dow) for u in users]
    top, _ = T.score_numpy(ranker, batch_feed(manifest, reqs))
    ranked = {u: [ranker.catalogue[i] for i in top[j]] for j, u in enumerate(users)}
    model = ev.next_basket_scores(ranked, history, test, users).recall
    own = ev.next_basket_scores(ev.own_frequency(history), history, test, users).recall
    assert model >= own


def test_training_is_deterministic(small_ranker):
    """The same orders and seed give the same graph bytes (reproducible bundles)."""
    spec = SyntheticSpec(shoppers=30, items=80, categories=8, min_orders=5, max_orders=8)
    by_user = collections.defaultdict(list)
    for o in synthetic_orders(spec):
        by_user[o.user_id].append(o)
    config = T.TrainConfig(personal_epochs=1, personal_seeds=1, rerank_epochs=1)
    one = T.build_graph(T.train(by_user, config), "fp32")
    two = T.build_graph(T.train(by_user, config), "fp32")
    assert one == two


def test_synthetic_orders_are_seeded_and_use_ean13_codes():
    """Same spec, same orders; generated ids are 13-digit codes with a valid check digit."""
    spec = SyntheticSpec(shoppers=5, items=40, categories=4)
    a, b = synthetic_orders(spec), synthetic_orders(spec)
    assert a == b
    codes = {i for o in a for i in o.items} - set(DEMO_CODES)  # the demo's codes are as printed
    for code in codes:
        assert len(code) == 13 and code.isdigit()
        body = [int(d) for d in code[:12]]
        check = (10 - sum(d * (3 if i % 2 else 1) for i, d in enumerate(body)) % 10) % 10
        assert int(code[12]) == check
