"""Ranker benchmark: a 50,000-item bundle's size, single-request latency on one thread, and RSS.

The bundle is trained by HQ's own trainer (gateway/hq/training.py) on a
synthetic 50,000-item store made here (no synthetic-orders module exists with
that many items), in both variants the trainer writes (fp32, int8). Figures,
from one run:

1. the bundle: model.onnx + manifest.json in MB against the 8 MB limit.
2. latency of 5,000 single requests (HQ's profiles of random shoppers, half
   with a basket), one after another on ONE thread with the gateway's session
   options (1 intra-op thread, no spinning, sequential), as p50/p99 in ms and
   the share over 1 ms (goal: p99 at most 1 ms here, before a Pi 4's 4-6x):
   - floor: onnxruntime running a trivial graph (one Identity) through the same
     session options: the least any model can cost per call;
   - graph: ``Ranker.run`` on prepared feeds (onnxruntime alone);
   - end to end: ``Ranker.recommend_batch`` of one request (feature code ->
     feed, run, indices -> ids), what the inference thread does per request;
   - numpy: ``training.score_numpy``, the trainer's numpy version of the same
     scoring (dense over the catalogue), and how often onnxruntime's top-10
     is identical to it.
3. RSS of a fresh process after importing the ranker, and after loading each variant.

Other work on the machine shows up as p99 outliers; the load average is printed
at the start and the end so a noisy run can be told from a slow model.

Usage:  .venv/bin/python bench/ranker.py [--items 50000] [--users 2000] [--requests 5000]
                                         [--keep DIR]
About a minute here, most of it training.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.decision.features import FeedRequest, batch_feed
from gateway.decision.ranker import Ranker, session_options
from gateway.hq import bundles, training
from gateway.hq.orders import Order

LIMIT_MB = 8.0
GOAL_P99_MS = 1.0
ZONES = ["entrance", "produce", "bakery", "dairy", "frozen", "checkout"]


# -- timing -----------------------------------------------------------------------------------


def percentiles(samples_ms: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(samples_ms)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return p50, p99


def time_calls(call: Callable[[int], Any], n: int) -> list[float]:
    """Milliseconds for each of ``n`` calls ``call(i)``, one after another on this thread."""
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        start = clock()
        call(i)
        out.append((clock() - start) / 1e6)
    return out


def line(label: str, samples_ms: Sequence[float], note: str = "") -> str:
    p50, p99 = percentiles(samples_ms)
    over = sum(v > GOAL_P99_MS for v in samples_ms) / len(samples_ms)
    return f"   {label:<38} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   >1 ms {over:6.2%}{note}"


# -- the trivial graph: onnxruntime's floor ----------------------------------------------------


def identity_graph() -> bytes:
    """One Identity over a [b, 3] int64 input: what a call costs with nothing to compute."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["context"], ["out"])],
        "floor",
        [helper.make_tensor_value_info("context", TensorProto.INT64, ["b", 3])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["b", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def floor_ms(n: int) -> list[float]:
    session = ort.InferenceSession(
        identity_graph(), sess_options=session_options(1), providers=["CPUExecutionProvider"]
    )
    feed = {"context": np.zeros((1, 3), dtype=np.int64)}
    for _ in range(10):
        session.run(["out"], feed)
    return time_calls(lambda _i: session.run(["out"], feed), n)


# -- a 50,000-item store, trained by HQ's own trainer -----------------------------------------


def synthetic_orders(n_items: int, users: int, orders_per_user: int, seed: int) -> dict:
    """Shoppers with Zipf-popular favourites; a sweep makes every item bought at least once.

    (There is no synthetic-orders module in gateway/hq with a 50,000-item
    catalogue, so the bench makes its own store: HQ's catalogue is the items
    seen in orders, and the bench needs exactly ``n_items`` of them.)
    """
    rng = np.random.default_rng(seed)
    catalogue = [str(100_000 + i) for i in range(n_items)]
    sweep = rng.permutation(n_items)
    per_order = max(2, -(-n_items // (users * orders_per_user)))
    pos = 0
    by_user: dict[str, list[Order]] = {}
    for u in range(users):
        favourites = np.minimum(rng.zipf(1.2, size=12) - 1, n_items - 1)
        orders = []
        for n in range(orders_per_user):
            size = int(rng.integers(4, 16))
            picks = list(rng.choice(favourites, size=min(5, size)))
            picks += list(np.minimum(rng.zipf(1.2, size=size - len(picks)) - 1, n_items - 1))
            picks += [sweep[(pos + j) % n_items] for j in range(per_order)]
            pos += per_order
            orders.append(
                Order(
                    order_id=f"o{u}-{n}",
                    user_id=f"u{u}",
                    order_number=n + 1,
                    dow=int(rng.integers(0, 7)),
                    hour=int(rng.integers(7, 22)),
                    days_since_prior=None if n == 0 else float(rng.integers(2, 15)),
                    items=tuple(dict.fromkeys(catalogue[i] for i in picks)),
                )
            )
        by_user[f"u{u}"] = orders
    return by_user


def train_bundles(args: argparse.Namespace, root: Path) -> tuple[Any, dict[str, Path]]:
    """Train on the synthetic store and write an fp32 and an int8 bundle under ``root``."""
    start = time.perf_counter()
    by_user = synthetic_orders(args.items, args.users, args.orders, args.seed)
    # The graph's shape (and so its cost) does not depend on how long the networks
    # train; two reranker epochs and no personal network keep the bench at ~1 min.
    config = training.TrainConfig(learn_personal=False, rerank_epochs=2, zones=tuple(ZONES))
    trained = training.train(by_user, config)
    print(
        f"trained on {sum(len(v) for v in by_user.values()):,} synthetic orders of "
        f"{args.users:,} shoppers: {trained.n_items:,} items, k={config.k}, "
        f"hist/nbr/basket {config.hist_len}/{config.nbr_len}/{config.basket_len} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    paths = {}
    for variant in ("fp32", "int8"):
        manifest = training.build_manifest(trained, variant, version=1)
        graph = training.build_graph(trained, variant)
        paths[variant] = bundles.write_bundle(root / variant, graph, manifest)
    return trained, paths


# -- requests ---------------------------------------------------------------------------------


def make_requests(trained: Any, n: int, seed: int) -> list[FeedRequest]:
    """HQ's own profiles of random shoppers; half with an empty basket, half mid-shop."""
    rng = np.random.default_rng(seed)
    users = sorted(trained.profiles)
    catalogue = trained.catalogue
    out = []
    for i in range(n):
        features = trained.profiles[users[int(rng.integers(len(users)))]]
        basket: list[str] = []
        if i % 2:
            own = [item for item, _ in features.hist[:20]]
            basket = [own[j] for j in rng.permutation(len(own))[: int(rng.integers(1, 6))]]
            basket += [catalogue[int(j)] for j in rng.integers(0, len(catalogue), size=3)]
        out.append(
            FeedRequest(
                features=features,
                basket=basket,
                hour=int(rng.integers(0, 24)),
                dow=int(rng.integers(0, 7)),
                zone=ZONES[int(rng.integers(len(ZONES)))],
            )
        )
    return out


# -- figures ----------------------------------------------------------------------------------


def size_figures(paths: dict[str, Path]) -> None:
    print("1. bundle size (model.onnx + manifest.json; limit 8 MB)")
    for variant, path in paths.items():
        model = (path / "model.onnx").stat().st_size / 1e6
        manifest = (path / "manifest.json").stat().st_size / 1e6
        total = model + manifest
        verdict = "within" if total <= LIMIT_MB else "OVER"
        print(
            f"   {variant:<5} {total:5.2f} MB  (model {model:.2f} + manifest {manifest:.2f}), "
            f"{verdict} the limit"
        )


def latency_figures(trained: Any, paths: dict[str, Path], requests: list[FeedRequest]) -> None:
    n = len(requests)
    print(f"2. latency of {n:,} single requests on one thread (goal p99 <= {GOAL_P99_MS} ms)")
    print(line("floor: Identity, same options", floor_ms(n)))
    agreement = {}
    for variant, path in paths.items():
        ranker = Ranker.load(path, threads=1)
        feeds = [batch_feed(ranker.manifest, [r]) for r in requests]
        # the graph alone: prepared feeds, no feature code, no id mapping
        graph = time_calls(lambda i, r=ranker, f=feeds: r.run(f[i]), n)
        print(line(f"{variant}: graph (session.run)", graph))
        e2e = time_calls(
            lambda i, r=ranker: r.recommend_batch([requests[i]], 10),
            n,
        )
        print(line(f"{variant}: end to end (Ranker.recommend)", e2e))
        agreement[variant] = [ranker.recommend_batch([r], 10)[0] for r in requests[:500]]
    # numpy: training's own reference scoring of the same graph, one request at a time.
    manifest = Ranker.load(paths["fp32"]).manifest
    feeds = [batch_feed(manifest, [r]) for r in requests]
    numpy_ms = time_calls(lambda i: training.score_numpy(trained, feeds[i]), n)
    print(line("numpy: training.score_numpy", numpy_ms, "  (dense numpy)"))
    reference = []
    for f in feeds[:500]:
        top, scores = training.score_numpy(trained, f)
        reference.append(
            [trained.catalogue[i] for i, s in zip(top[0], scores[0], strict=True) if np.isfinite(s)]
        )
    for variant, got in agreement.items():
        same = sum(a == b for a, b in zip(got, reference, strict=True)) / len(reference)
        overlap = statistics.mean(
            len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(got, reference, strict=True)
        )
        print(
            f"   {variant} vs numpy on 500 requests: identical top-10 {same:.1%}, "
            f"overlap {overlap:.1%}"
        )


RSS_PROBE = """
import sys, psutil
sys.path.insert(0, {root!r})
from gateway.decision.ranker import Ranker
before = psutil.Process().memory_info().rss
ranker = Ranker.load({path!r})
after = psutil.Process().memory_info().rss
print(before, after)
"""


def rss_figures(paths: dict[str, Path]) -> None:
    print("3. RSS of a fresh process (python + numpy + onnxruntime + the ranker module)")
    root = str(Path(__file__).resolve().parent.parent)
    for variant, path in paths.items():
        probe = RSS_PROBE.format(root=root, path=str(path))
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        before, after = (int(v) / 1e6 for v in out.stdout.split())
        print(
            f"   {variant:<5} imported {before:6.1f} MB, bundle loaded {after:6.1f} MB "
            f"(+{after - before:.1f} MB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--orders", type=int, default=10, help="orders per synthetic shopper")
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="write the bundles here (default: a temp dir)")
    args = parser.parse_args()
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"onnxruntime {ort.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        trained, paths = train_bundles(args, root)
        requests = make_requests(trained, args.requests, args.seed)
        size_figures(paths)
        latency_figures(trained, paths, requests)
        rss_figures(paths)
    # Other work on a 2-core machine shows up as p99 outliers in every row alike.
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
