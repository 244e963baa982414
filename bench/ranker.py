"""Ranker benchmark: a 50,000-item bundle's size, single-request latency on one thread, and RSS.

Figures, from one run:

1. the bundle: model.onnx + manifest.json in MB against the 8 MB limit (CONTRACTS
   section 5 travels in 128 KiB MQTT chunks), per variant (fp32, int8).
2. latency of 5,000 single requests, one after another on ONE thread with the
   gateway's session options (1 intra-op thread, no spinning, sequential), as
   p50/p99 in ms (goal: p99 at most 1 ms here, which leaves a Pi 4's 4-6x):
   - floor: onnxruntime running a trivial graph (one Identity) through the same
     session options: the least any model can cost per call;
   - graph: ``session.run`` on prepared feeds;
   - end to end: ``Ranker.recommend`` (features -> feed, run, indices -> ids);
   - numpy: the same scoring computed with numpy from the graph's initializers,
     and how often its top-k agrees with onnxruntime's.
3. RSS of a fresh process after importing the ranker, and after loading each variant.

Usage:  .venv/bin/python bench/ranker.py [--items 50000] [--requests 5000] [--keep DIR]
"""

from __future__ import annotations

import argparse
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
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.decision.features import FeedRequest, ShopperFeatures, batch_feed
from gateway.decision.ranker import OUTPUT_NAMES, Ranker, session_options
from gateway.hq import bundles

LIMIT_MB = 8.0
GOAL_P99_MS = 1.0
SCHEMA = {"hist_len": 64, "nbr_len": 64, "basket_len": 32}
ZONES = ["entrance", "produce", "bakery", "dairy", "frozen", "checkout"]
K = 50


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
    flag = "" if p99 <= GOAL_P99_MS else "  (over the 1 ms goal)"
    return f"   {label:<34} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms{flag}{note}"


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


# -- requests ---------------------------------------------------------------------------------


def make_requests(catalogue: Sequence[str], n: int, seed: int) -> list[FeedRequest]:
    """Shoppers with full feature lists (the worst case), baskets of 0-20 items, any hour."""
    rng = np.random.default_rng(seed)
    out = []
    size = len(catalogue)
    # Popular items are bought far more often: draw ids Zipf-like, as real histories are.
    ranks = np.minimum(rng.zipf(1.3, size=(n, 200)) - 1, size - 1)
    for i in range(n):
        ids = list(dict.fromkeys(catalogue[r] for r in ranks[i]))
        hist_n = min(SCHEMA["hist_len"], len(ids))
        hist = tuple((item, float(1.0 / (j + 1))) for j, item in enumerate(ids[:hist_n]))
        nbr_ids = rng.choice(size, size=SCHEMA["nbr_len"], replace=False)
        nbr = tuple((catalogue[j], float(rng.random())) for j in nbr_ids)
        basket_ids = rng.choice(size, size=int(rng.integers(0, 21)), replace=False)
        out.append(
            FeedRequest(
                features=ShopperFeatures(hist=hist, nbr=nbr),
                basket=[catalogue[j] for j in basket_ids],
                hour=int(rng.integers(0, 24)),
                dow=int(rng.integers(0, 7)),
                zone=ZONES[int(rng.integers(0, len(ZONES)))],
            )
        )
    return out


# -- the bundle -------------------------------------------------------------------------------
