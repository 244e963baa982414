"""The on-Pi ranker with real onnxruntime: bundles built here, broken every way HQ or a disk can.

Most bundles come from HQ's own trainer (``gateway/hq/training.py``) on a tiny
synthetic store; a hand-built scatter graph covers what the trainer never
produces (a graph that forgets to mask, fewer than k candidates, a graph that
fails on real items).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from onnx import TensorProto, helper, numpy_helper
from structlog.testing import capture_logs

from gateway.decision.bundle import MAX_MODEL_BYTES
from gateway.decision.features import FeedRequest, ShopperFeatures, batch_feed
from gateway.decision.ranker import (
    GRAPH_INPUTS,
    INFERENCE_THREAD,
    DecisionRanker,
    PopularFallback,
    Ranker,
    RankerError,
    session_options,
)
from gateway.hq import bundles, training
from gateway.hq.orders import Order

ZONES = ["produce", "bakery"]


# -- HQ's trainer on a tiny store ------------------------------------------------------------


def make_orders(users: int = 30, items: int = 40, orders: int = 6, seed: int = 0) -> dict:
    """Shoppers who keep buying a few favourites plus some random items."""
    rng = random.Random(seed)
    catalogue = [f"sku-{i}" for i in range(items)]
    by_user: dict[str, list[Order]] = {}
    for u in range(users):
        favourites = rng.sample(catalogue, 6)
        by_user[f"u{u}"] = [
            Order(
                order_id=f"o{u}-{n}",
                user_id=f"u{u}",
                order_number=n + 1,
                dow=n % 7,
                hour=8 + n,
                days_since_prior=None if n == 0 else 7.0,
                items=tuple(dict.fromkeys(rng.sample(favourites, 3) + rng.sample(catalogue, 2))),
            )
            for n in range(orders)
        ]
    return by_user


@dataclass
class Hq:
    """A trained ranker and its fp32 graph, built once per module (building takes ~1.5 s)."""

    trained: training.TrainedRanker
    graph: bytes

    def bundle(
        self,
        root: Path,
        *,
        version: int = 1,
        variant: str = "fp32",
        model: bytes | None = None,
        sign_with: Ed25519PrivateKey | None = None,
        **manifest_over: Any,
    ) -> Path:
        """A bundle ``root/v{version}`` as HQ writes it."""
        manifest = training.build_manifest(self.trained, variant, version)
        manifest.update(manifest_over)
        data = model if model is not None else self.graph
        return bundles.write_bundle(root / f"v{version}", data, manifest, sign_with)

    def features(self, user: str = "u0") -> ShopperFeatures:
        return self.trained.profiles[user]


@pytest.fixture(scope="module")
def hq() -> Hq:
    config = training.TrainConfig(
        k=5,
        hist_len=8,
        nbr_len=4,
        basket_len=4,
        learn_personal=False,
        rerank_epochs=2,
        zones=tuple(ZONES),
    )
    trained = training.train(make_orders(), config)
    return Hq(trained, training.build_graph(trained))


# -- a contract-honouring graph: scatter the weights into a score vector, mask, TopK --------


def scatter_graph(
    n_items: int,
    *,
    k: int = 5,
    prior: Sequence[float] | None = None,
    mask_basket: bool = True,
    raise_on_items: bool = False,
    rename: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """score[i] = prior[i] + hist and nbr weights of i; basket and padding -inf; top k.

    ``raise_on_items`` adds a Gather that is in range for padding (the warm-up)
    and out of range for any real item, so inference fails on real requests.
    """
    names = {n: n for n in ("hist_items", "hist_weights", "nbr_items", "nbr_weights")}
    names.update({"basket_items": "basket_items", "context": "context"})
    names.update(rename or {})
    widths = {
        "hist_items": SCHEMA["hist_len"],
        "hist_weights": SCHEMA["hist_len"],
        "nbr_items": SCHEMA["nbr_len"],
        "nbr_weights": SCHEMA["nbr_len"],
        "basket_items": SCHEMA["basket_len"],
        "context": 3,
    }
    inputs = [
        helper.make_tensor_value_info(
            names[n], TensorProto.FLOAT if n.endswith("weights") else TensorProto.INT64, ["b", w]
        )
        for n, w in widths.items()
    ]
    base = np.zeros((1, n_items + 1), np.float32)
    if prior is not None:
        base[0, :n_items] = prior
    base[0, n_items] = -np.inf  # the padding index is never a candidate
    inits = [
        numpy_helper.from_array(base, "prior"),
        numpy_helper.from_array(np.array([n_items + 1], np.int64), "width"),
        numpy_helper.from_array(np.array([k], np.int64), "k"),
        numpy_helper.from_array(np.array([[-np.inf]], np.float32), "neg_inf"),
    ]
    h, hw, nb, nw = (names[n] for n in ("hist_items", "hist_weights", "nbr_items", "nbr_weights"))
    nodes = [
        helper.make_node("Shape", [h], ["batch"], start=0, end=1),
        helper.make_node("Concat", ["batch", "width"], ["score_shape"], axis=0),
        helper.make_node("Expand", ["prior", "score_shape"], ["s0"]),
        helper.make_node("ScatterElements", ["s0", h, hw], ["s1"], axis=1, reduction="add"),
        helper.make_node("ScatterElements", ["s1", nb, nw], ["s2"], axis=1, reduction="add"),
    ]
    last = "s2"
    if mask_basket:
        nodes += [
            helper.make_node("Shape", [names["basket_items"]], ["basket_shape"]),
            helper.make_node("Expand", ["neg_inf", "basket_shape"], ["basket_neg"]),
            helper.make_node(
                "ScatterElements", [last, names["basket_items"], "basket_neg"], ["s3"], axis=1
            ),
        ]
        last = "s3"
    if raise_on_items:
        inits += [
            numpy_helper.from_array(np.zeros(n_items + 1, np.float32), "probe_table"),
            numpy_helper.from_array(np.array(n_items, np.int64), "pad"),
            numpy_helper.from_array(np.array(n_items + 1, np.int64), "stride"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ]
        nodes += [
            helper.make_node("Sub", ["pad", h], ["from_pad"]),
            helper.make_node("Mul", ["from_pad", "stride"], ["probe_ix"]),
            helper.make_node("Gather", ["probe_table", "probe_ix"], ["probe"]),
            helper.make_node("ReduceSum", ["probe", "axis1"], ["probe_sum"], keepdims=1),
            helper.make_node("Add", [last, "probe_sum"], ["s4"]),
        ]
        last = "s4"
    nodes.append(helper.make_node("TopK", [last, "k"], ["top_scores", "top_items"], axis=-1))
    outputs = [
        helper.make_tensor_value_info("top_items", TensorProto.INT64, ["b", k]),
        helper.make_tensor_value_info("top_scores", TensorProto.FLOAT, ["b", k]),
    ]
    graph = helper.make_graph(nodes, "scatter_ranker", inputs, outputs, initializer=inits)
    # IR 8 / opset 17: ScatterElements' reduction needs 16; onnxruntime 1.31 reads both.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


SCATTER_CATALOGUE = [f"item-{i}" for i in range(12)]
SCHEMA = {"hist_len": 4, "nbr_len": 3, "basket_len": 3}


def scatter_bundle(
    root: Path,
    model: onnx.ModelProto | None = None,
    *,
    catalogue: Sequence[str] = SCATTER_CATALOGUE,
    k: int = 5,
) -> Path:
    """A bundle around a scatter graph (manifest written by HQ's bundle writer)."""
    manifest: dict[str, Any] = {
        "format": "store-gateway-ranker/1",
        "version": 1,
        "created": "2026-11-18T00:00:00Z",
        "variant": "fp32",
        "catalogue": list(catalogue),
        "zones": ZONES,
        "k": k,
        "feature_schema": SCHEMA,
        "inputs": [*GRAPH_INPUTS],
        "outputs": ["top_items", "top_scores"],
        "catalogue_size": len(catalogue),
        "metrics": {},
        "min_runtime": {"onnxruntime": "1.31"},
        "popular": {"overall": [], "by_hour": {}},
    }
    if model is None:
        model = scatter_graph(len(catalogue), k=k)
    return bundles.write_bundle(root, model.SerializeToString(), manifest)


def replace_model(bundle: Path, model: bytes) -> None:
    """Swap in another model with a manifest that agrees with it (the sha check passes)."""
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    bundles.write_bundle(bundle, model, manifest)


def renamed_input(graph: bytes, old: str, new: str) -> bytes:
    """The same graph with one input renamed (and every node reading it)."""
    model = onnx.load_from_string(graph)
    for value in model.graph.input:
        if value.name == old:
            value.name = new
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
    return model.SerializeToString()


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def shopper(*hist: tuple[str, float], nbr: Sequence[tuple[str, float]] = ()) -> ShopperFeatures:
    return ShopperFeatures(hist=tuple(hist), nbr=tuple(nbr))


@pytest.fixture
def decision() -> Iterator[DecisionRanker]:
    ranker = DecisionRanker()
    yield ranker
    ranker.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- Ranker ------------------------------------------------------------------------------------


def test_ranker_returns_what_hqs_numpy_reference_ranks(tmp_path: Path, hq: Hq) -> None:
    """A trained bundle loads, exposes its manifest, and ranks exactly as training's numpy."""
    ranker = Ranker.load(hq.bundle(tmp_path, version=7))
    assert (ranker.version, ranker.variant, ranker.catalogue_size) == (7, "fp32", 40)
    assert ranker.load_ms > 0 and ranker.warmup_ms > 0
    for user, basket in (("u0", []), ("u1", ["sku-3"]), ("u2", ["sku-1", "sku-5"])):
        got = ranker.recommend(hq.features(user), basket, 10, 2, "produce", 5)
        feeds = batch_feed(ranker.manifest, [FeedRequest(hq.features(user), basket, 10, 2)])
        top, scores = training.score_numpy(hq.trained, feeds)
        want = [
            hq.trained.catalogue[i]
            for i, s in zip(top[0], scores[0], strict=True)
            if np.isfinite(s)
        ]
        assert got == want and len(got) == 5


def test_basket_items_are_never_returned(tmp_path: Path, hq: Hq) -> None:
    """Whatever the shopper likes most, what is already in the basket is not suggested."""
    ranker = Ranker.load(hq.bundle(tmp_path))
    features = hq.features("u3")
    favourite = ranker.recommend(features, [], 9, 0, None, 3)
    basket = [*favourite, "sku-0", "sku-1", "sku-2"]  # longer than basket_len 4
    items = ranker.recommend(features, basket, 9, 0, None, 5)
    assert items and not set(items) & set(basket)


def test_basket_items_are_dropped_even_when_the_graph_does_not_mask_them(tmp_path: Path) -> None:
    """The runtime's own guarantee: a graph that forgets the mask still cannot suggest them."""
    unmasked = scatter_graph(12, k=8, mask_basket=False, prior=[0.1] * 12)
    ranker = Ranker.load(scatter_bundle(tmp_path, unmasked, k=8))
    basket = ["item-0", "item-1", "item-2", "item-3"]
    items = ranker.recommend(shopper(*[(i, 5.0) for i in basket]), basket, 9, 0, None, 5)
    assert len(items) == 4 and not set(items) & set(basket)


def test_masked_scores_are_dropped_so_fewer_than_k_can_come_back(tmp_path: Path) -> None:
    """Entries scored -inf (basket, padding) are not items: 3 items minus a basket of 2 is 1."""
    ranker = Ranker.load(scatter_bundle(tmp_path, catalogue=["a", "b", "c"], k=4))
    assert ranker.recommend(shopper(("a", 1.0)), ["b", "c"], 9, 0, None, k=4) == ["a"]


def test_recommend_batch_answers_each_request_as_recommend_does(tmp_path: Path, hq: Hq) -> None:
    """One batched run gives every request its own answer."""
    ranker = Ranker.load(hq.bundle(tmp_path))
    requests = [
        FeedRequest(hq.features("u4"), ["sku-7"], 8, 1, "bakery"),
        FeedRequest(hq.features("u5"), [], 20, 6, None),
        FeedRequest(None, [], 0, 0, None),
    ]
    batch = ranker.recommend_batch(requests, k=3)
    single = [ranker.recommend(r.features, r.basket, r.hour, r.dow, r.zone, 3) for r in requests]
    assert batch == single and all(len(items) == 3 for items in batch)


def test_the_int8_variant_loads_and_serves(tmp_path: Path, hq: Hq) -> None:
    """HQ's int8 graph is just another bundle to the runtime."""
    bundle = hq.bundle(tmp_path, variant="int8", model=training.build_graph(hq.trained, "int8"))
    ranker = Ranker.load(bundle)
    assert ranker.variant == "int8"
    assert len(ranker.recommend(hq.features("u6"), [], 9, 0, None, 5)) == 5


def test_session_options_suit_a_small_shared_cpu() -> None:
    """1-2 intra-op threads, one inter-op, sequential, no spinning, all graph optimisations."""
    import onnxruntime as ort

    opts = session_options(threads=4)
    assert opts.intra_op_num_threads == 2
    assert session_options(threads=1).intra_op_num_threads == 1
    assert opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_a_bundle_needing_a_newer_runtime_is_refused(tmp_path: Path, hq: Hq) -> None:
    """min_runtime above the installed onnxruntime is runtime_too_old, before any parsing."""
    bundle = hq.bundle(tmp_path, min_runtime={"onnxruntime": "99.0"})
    with pytest.raises(RankerError) as err:
        Ranker.load(bundle)
    assert err.value.reason == "runtime_too_old"


# -- DecisionRanker: broken bundles fall back, counted and logged once ------------------------


def _sha_mismatch(bundle: Path) -> None:
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))


def _truncated_with_matching_sha(bundle: Path) -> None:
    # The manifest agrees with the truncated file, so onnxruntime itself must refuse it.
    replace_model(bundle, (bundle / "model.onnx").read_bytes()[:200])


def _garbage_manifest(bundle: Path) -> None:
    (bundle / "manifest.json").write_bytes(b"\x00\xffnot json{")


def _manifest_missing_fields(bundle: Path) -> None:
    (bundle / "manifest.json").write_text(json.dumps({"format": "store-gateway-ranker/1"}))


def _no_model_file(bundle: Path) -> None:
    (bundle / "model.onnx").unlink()


def _no_manifest(bundle: Path) -> None:
    (bundle / "manifest.json").unlink()


def _model_over_the_cap(bundle: Path) -> None:
    # A sparse file: its size alone is past the cap, so nothing of it is read.
    os.truncate(bundle / "model.onnx", MAX_MODEL_BYTES + 1)


def _model_unreadable(bundle: Path) -> None:
    # Running as root, a mode cannot make a file unreadable; a directory in its place does.
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").mkdir()


def _wrong_input_names(bundle: Path) -> None:
    graph = (bundle / "model.onnx").read_bytes()
    replace_model(bundle, renamed_input(graph, "hist_items", "history"))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_sha_mismatch, "bad_sha"),
        (_truncated_with_matching_sha, "bad_onnx"),
        (_garbage_manifest, "bad_manifest"),
        (_manifest_missing_fields, "bad_manifest"),
        (_no_model_file, "missing"),
        (_no_manifest, "missing"),
        (_model_unreadable, "missing"),
        (_model_over_the_cap, "too_large"),
        (_wrong_input_names, "wrong_inputs"),
    ],
)
def test_a_broken_bundle_means_the_fallback_with_the_reason_counted(
    tmp_path: Path, hq: Hq, decision: DecisionRanker, damage: Any, reason: str
) -> None:
    """Each kind of broken bundle: load() says False, requests get popular items, nothing raises."""
    bundle = hq.bundle(tmp_path)
    damage(bundle)
    decision.observe_purchase("produce", 9, ["sku-8"])

    async def scenario() -> list[Any]:
        loaded = await decision.load(bundle)
        recs = [await decision.recommend(hq.features(), [], 9, 0, "produce", 3) for _ in range(2)]
        return [loaded, *recs]

    with capture_logs() as logs:
        loaded, *recs = run(scenario())
    assert loaded is False
    assert all(r.source == "fallback" and r.reason == "no_model" for r in recs)
    assert recs[0].items[0] == "sku-8"
    stats = decision.stats()
    assert stats["load_failures"] == {reason: 1}
    assert stats["fallback_reasons"] == {"no_model": 2}
    assert stats["last_error"]["reason"] == reason
    failures = [e for e in logs if e["event"] == "ranker_load_failed"]
    assert len(failures) == 1 and failures[0]["reason"] == reason
    assert failures[0]["where"] == str(bundle)
    assert [e["event"] for e in logs].count("ranker_no_model") == 1


def test_a_missing_bundle_directory_falls_back(tmp_path: Path) -> None:
    """start() with a configured directory that does not exist serves popular items."""
    decision = DecisionRanker(tmp_path / "nowhere")
    try:
        assert run(decision.start()) is False
        rec = run(decision.recommend(None, [], 9, 0, None, 3))
        assert (rec.source, rec.reason) == ("fallback", "no_model")
        assert decision.stats()["load_failures"] == {"missing": 1}
    finally:
        decision.close()


def test_inference_that_raises_falls_back_and_is_logged_once(
    tmp_path: Path, decision: DecisionRanker
) -> None:
    """A graph that passes warm-up but fails on real items: every request still gets an answer."""
    bundle = scatter_bundle(tmp_path, scatter_graph(12, raise_on_items=True))

    async def scenario() -> list[Any]:
        assert await decision.load(bundle)
        return [
            await decision.recommend(shopper(("item-2", 1.0)), [], 9, 0, None, 3) for _ in range(3)
        ]

    with capture_logs() as logs:
        recs = run(scenario())
    assert [(r.source, r.reason) for r in recs] == [("fallback", "inference_failed")] * 3
    stats = decision.stats()
    assert stats["fallback_reasons"] == {"inference_failed": 3}
    assert stats["model_version"] == 1
    assert stats["last_error"]["reason"] == "inference_failed"
    assert [e["event"] for e in logs].count("ranker_inference_failed") == 1


def test_a_bad_request_falls_back_instead_of_raising(
    tmp_path: Path, hq: Hq, decision: DecisionRanker
) -> None:
    """An hour outside 0..23 is refused by the feature code; the shopper still gets items."""
    decision.observe_purchase(None, 9, ["sku-1"])
    assert run(decision.load(hq.bundle(tmp_path)))
    rec = run(decision.recommend(hq.features(), [], 24, 0, None, 3))
    assert (rec.source, rec.reason, rec.items[0]) == ("fallback", "bad_request", "sku-1")


def test_a_cold_shopper_still_gets_model_items(
    tmp_path: Path, hq: Hq, decision: DecisionRanker
) -> None:
    """No features (a screen's request) is a valid model request, answered by the graph."""
    assert run(decision.load(hq.bundle(tmp_path)))
    rec = run(decision.recommend(None, ["sku-1"], 9, 0, "bakery", 3))
    assert (rec.source, rec.reason, rec.model_version) == ("model", None, 1)
    assert len(rec.items) == 3 and "sku-1" not in rec.items


# -- signatures ---------------------------------------------------------------------------------


def test_with_trusted_keys_only_a_valid_signature_loads(tmp_path: Path, hq: Hq) -> None:
    """Trusted keys configured: signed loads; unsigned, flipped byte or another key's do not."""
    key, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    good = hq.bundle(tmp_path / "good", sign_with=key)
    unsigned = hq.bundle(tmp_path / "unsigned")
    foreign = hq.bundle(tmp_path / "foreign", sign_with=stranger)
    flipped = hq.bundle(tmp_path / "flipped", sign_with=key)
    raw = bytearray((flipped / "manifest.json").read_bytes())
    raw[raw.index(b'"created"') + 1] ^= 0x01
    (flipped / "manifest.json").write_bytes(bytes(raw))

    for bundle in (unsigned, foreign, flipped):
        with pytest.raises(RankerError) as err:
            Ranker.load(bundle, trusted_keys=[public_hex(key)])
        assert err.value.reason == "bad_signature", bundle
    assert Ranker.load(good, trusted_keys=[public_hex(stranger), public_hex(key)]).version == 1
    assert Ranker.load(unsigned).version == 1  # no keys configured: none needed


def test_the_decision_ranker_enforces_its_trusted_keys(tmp_path: Path, hq: Hq) -> None:
    """Configured with a key, the decision ranker refuses an unsigned bundle and falls back."""
    key = Ed25519PrivateKey.generate()
    decision = DecisionRanker(trusted_keys=[public_hex(key)])
    try:
        assert run(decision.load(hq.bundle(tmp_path / "unsigned"))) is False
        assert decision.stats()["load_failures"] == {"bad_signature": 1}
        assert run(decision.load(hq.bundle(tmp_path / "signed", sign_with=key))) is True
        assert decision.version == 1
    finally:
        decision.close()


# -- swapping bundles ---------------------------------------------------------------------------


def test_a_trusted_key_that_is_no_key_refuses_every_bundle(tmp_path: Path, hq: Hq) -> None:
    """A configured key that cannot be used fails closed: no load, counted as bad_key."""
    decision = DecisionRanker(trusted_keys=["zz" * 32])
    try:
        assert run(decision.load(hq.bundle(tmp_path))) is False
        assert decision.stats()["load_failures"] == {"bad_key": 1}
        assert decision.version is None
    finally:
        decision.close()


def test_swapping_takes_only_newer_bundles_and_keeps_the_old_on_failure(
    tmp_path: Path, hq: Hq, decision: DecisionRanker
) -> None:
    """v1 -> v2 swaps; v1 again is refused; a broken v3 leaves v2 serving."""
    v1, v2, v3 = (hq.bundle(tmp_path, version=v) for v in (1, 2, 3))
    _sha_mismatch(v3)
    features = hq.features()

    async def scenario() -> list[Any]:
        out = [await decision.load(v1)]
        out.append((await decision.recommend(features, [], 9, 0, None, 1)).model_version)
        out.append(await decision.load(v2))
        out.append(await decision.load(v1))
        out.append(await decision.load(v3))
        out.append((await decision.recommend(features, [], 9, 0, None, 1)).model_version)
        return out

    assert run(scenario()) == [True, 1, True, False, False, 2]
    stats = decision.stats()
    assert stats["model_version"] == 2
    assert stats["load_failures"] == {"not_newer": 1, "bad_sha": 1}
    assert stats["sources"] == {"model": 2, "fallback": 0}


# -- the inference thread -----------------------------------------------------------------------


def test_inference_runs_on_the_one_dedicated_thread(tmp_path: Path, hq: Hq) -> None:
    """Every request runs on the ranker's own thread, never the loop's or the default executor."""
    seen: list[str] = []

    class RecordingRanker(Ranker):
        def recommend_batch(self, requests: Any, k: int) -> list[list[str]]:
            seen.append(threading.current_thread().name)
            return super().recommend_batch(requests, k)

    decision = DecisionRanker(ranker_factory=RecordingRanker.load)
    try:

        async def scenario() -> None:
            assert await decision.load(hq.bundle(tmp_path))
            await asyncio.gather(
                *(decision.recommend(hq.features(), [], 9, 0, None, 2) for _ in range(8))
            )

        run(scenario())
    finally:
        decision.close()
    assert len(seen) == 8
    assert set(seen) == {f"{INFERENCE_THREAD}_0"}


# -- the fallback -------------------------------------------------------------------------------


def test_fallback_prefers_what_sells_in_this_zone_at_this_hour() -> None:
    """Observed checkouts rank by zone and hour first, then zone, store hour, store, HQ's lists."""
    fallback = PopularFallback()
    fallback.seed({"overall": ["hq-1", "hq-2"], "by_hour": {"9": ["hq-9"]}})
    for _ in range(3):
        fallback.observe_purchase("bakery", 9, ["bread", "butter"])
    fallback.observe_purchase("bakery", 17, ["cake", "cake"])
    fallback.observe_purchase("produce", 9, ["apples"])
    fallback.observe_purchase("produce", 9, ["apples"])

    assert fallback.recommend([], 9, "bakery", 3) == ["bread", "butter", "cake"]
    assert fallback.recommend(["bread"], 17, "bakery", 3) == ["cake", "butter", "apples"]
    assert fallback.recommend([], 9, "produce", 2) == ["apples", "bread"]
    assert fallback.recommend([], 9, "dairy", 10)[-3:] == ["hq-9", "hq-1", "hq-2"]
    assert PopularFallback().recommend(["x"], 9, None, 3) == []


def test_fallback_never_returns_basket_items() -> None:
    """Whatever tier an item comes from, a basket item is skipped."""
    fallback = PopularFallback()
    fallback.seed({"overall": ["a", "b"], "by_hour": {"9": ["a", "c"]}})
    fallback.observe_purchase("z", 9, ["a", "d"])
    assert fallback.recommend(["a", "d"], 9, "z", 10) == ["c", "b"]


def test_fallback_memory_is_bounded_per_tier() -> None:
    """A tier holds at most twice max_items counts; the most bought survive pruning."""
    fallback = PopularFallback(max_items=10)
    for _ in range(5):
        fallback.observe_purchase("z", 9, ["best"])
    for i in range(100):
        fallback.observe_purchase("z", 9, [f"rare-{i}"])
    assert fallback.recommend([], 9, "z", 1) == ["best"]
    # Every tier saw the same checkouts, so all it can still offer is at most 2 x 10 items.
    assert 10 <= len(fallback.recommend([], 9, "z", 1000)) <= 20


def test_a_manifest_seeds_the_fallback_even_when_its_model_is_broken(
    tmp_path: Path, hq: Hq, decision: DecisionRanker
) -> None:
    """HQ's popular lists from a verified manifest serve while onnxruntime refuses its model."""
    bundle = hq.bundle(tmp_path, popular={"overall": ["sku-2"], "by_hour": {"9": ["sku-7"]}})
    _truncated_with_matching_sha(bundle)
    assert run(decision.load(bundle)) is False
    rec = run(decision.recommend(None, [], 9, 0, None, 3))
    assert rec.items == ("sku-7", "sku-2")


def test_popular_and_empty_on_request_are_not_counted_as_fallbacks(
    decision: DecisionRanker,
) -> None:
    """An experiment arm asking for popular items or nothing is no fault of the model."""
    decision.observe_purchase(None, 9, ["x"])
    assert decision.popular([], 9, None, 3).items == ("x",)
    assert decision.empty().items == ()
    stats = decision.stats()
    assert stats["requested"] == {"popular": 1, "none": 1}
    assert stats["fallback_reasons"] == {} and stats["sources"] == {"model": 0, "fallback": 0}


# -- health ---------------------------------------------------------------------------------------


def test_stats_report_model_sources_latency_and_errors(
    tmp_path: Path, hq: Hq, decision: DecisionRanker
) -> None:
    """stats() carries what health needs, with percentiles over the served requests."""

    async def scenario() -> None:
        await decision.recommend(None, [], 9, 0, None, 2)
        await decision.load(hq.bundle(tmp_path, version=4))
        for _ in range(5):
            await decision.recommend(hq.features(), [], 9, 0, None, 2)

    run(scenario())
    stats = decision.stats()
    assert set(stats) >= {
        "model_version",
        "variant",
        "catalogue_size",
        "sources",
        "fallback_reasons",
        "requested",
        "load_failures",
        "inference_ms",
        "load_ms",
        "warmup_ms",
        "last_error",
    }
    assert (stats["model_version"], stats["variant"], stats["catalogue_size"]) == (4, "fp32", 40)
    assert stats["sources"] == {"model": 5, "fallback": 1}
    assert stats["fallback_reasons"] == {"no_model": 1}
    assert stats["inference_ms"]["count"] == 5
    assert 0 < stats["inference_ms"]["p50"] <= stats["inference_ms"]["p99"]
    assert stats["load_ms"] > 0 and stats["warmup_ms"] > 0
    assert stats["last_error"] is None
