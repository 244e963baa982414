"""Offline quality of the ranker on shared/data/instacart_dev.csv, through the two CLI commands.

The protocol of shared/data/README.md: each shopper's last order is the test
basket, every earlier order is history. The model is trained with
``store-gateway model train`` on the history only, then asked with
``store-gateway model recommend`` for each shopper's next basket (empty basket,
hour and dow of the test order) and for basket completion (the first half of
the test basket by add-to-cart order known). Baselines are computed in
process by gateway.hq.evaluate. Figures for all shoppers and for half B
(shoppers hashed into B: no hyper-parameter was chosen on them).

    .venv/bin/python bench/ranker_quality.py            # ~2 minutes on 2 cores
    .venv/bin/python bench/ranker_quality.py --latency  # + a 50,000-item graph's size and p99

The data is not part of the repository (its licence is non-commercial): it is
read from ../shared/data next to the checkout and never copied into it.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.hq import evaluate as ev
from gateway.hq.orders import read_orders, write_orders

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instacart_dev.csv"
README_FIGURES = {
    "own frequency": (0.359, 0.441, None),
    "TIFU-KNN (published)": (0.400, 0.484, 0.327),
    "co-occurrence": (None, None, 0.140),
    "global top-10": (0.069, 0.103, None),
}


def cli_prefix() -> list[str]:
    """``store-gateway model`` when the installed CLI has it, else the module's own entry."""
    exe = Path(sys.executable).with_name("store-gateway")
    if exe.exists():
        probe = subprocess.run(
            [str(exe), "model", "--help"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [str(exe), "model"]
    return [sys.executable, "-m", "gateway", "model"]


def run(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args[:4])}... failed:\n{done.stderr}")
    return done.stdout


def fmt(x: float | None) -> str:
    return "   -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:6.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="Orders CSV (default: shared dev file)")
    parser.add_argument("--latency", action="store_true", help="also time a 50k-item graph")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"{args.data}: not found (the dev data lives in ../shared/data)")
    by_user = read_orders(args.data).by_user
    history, test = ev.split_last(by_user)
    users = list(test)
    halves = {"all": users, "half B": [u for u in users if ev.half_of(u) == "B"]}
    prefix = cli_prefix()
    rows: dict[str, dict[str, tuple]] = {}

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hist_csv = root / "history.csv"
        write_orders(hist_csv, [o for orders in history.values() for o in orders])
        nb_req, cp_req = root / "next.jsonl", root / "completion.jsonl"
        with nb_req.open("w") as nb, cp_req.open("w") as cp:
            for u in users:
                o = test[u]
                known, _ = ev.known_split(o)
                nb.write(json.dumps({"shopper": u, "basket": [], "hour": o.hour, "dow": o.dow}))
                nb.write("\n")
                cp.write(json.dumps({"shopper": u, "basket": known, "hour": o.hour, "dow": o.dow}))
                cp.write("\n")
        started = time.perf_counter()
        bundle = root / "bundle"
        run([*prefix, "train", "--orders", str(hist_csv), "--out", str(bundle),
             "--variant", "both", "--quiet"])  # fmt: skip
        train_s = time.perf_counter() - started
        model_out = {}
        for variant in ("fp32", "int8"):
            outs = []
            for req in (nb_req, cp_req):
                text = run([*prefix, "recommend", "--bundle", str(bundle / variant),
                            "--orders", str(hist_csv), "--requests", str(req)])  # fmt: skip
                outs.append({d["shopper"]: d["items"] for d in map(json.loads, text.splitlines())})
            model_out[variant] = outs
            size = sum(
                (bundle / variant / f).stat().st_size for f in ("model.onnx", "manifest.json")
            )
            model_out[variant].append(size)
        metrics = json.loads((bundle / "fp32" / "manifest.json").read_text())["metrics"]

    own = ev.own_frequency(history)
    tifu = ev.tifu_scores(history)
    tifu_ranked = ev.rank_all(tifu)
    tifu_masked = ev.rank_all(tifu, exclude=lambda u: ev.known_split(test[u])[0])
    cooc = ev.cooccurrence_completion(history, test, users)
    top = ev.global_top(history)
    for half, us in halves.items():
        table = rows.setdefault(half, {})
        for name, ranked, comp in (
            ("global top-10", top, None),
            ("own frequency", own, None),
            ("TIFU-KNN (published)", tifu_ranked, tifu_masked),
            ("co-occurrence", None, cooc),
            ("model fp32", model_out["fp32"][0], model_out["fp32"][1]),
            ("model int8", model_out["int8"][0], model_out["int8"][1]),
        ):
            s = ev.next_basket_scores(ranked, history, test, us) if ranked else None
            c = ev.completion_recall(comp, test, us) if comp else None
            table[name] = (
                s.recall if s else None,
                s.ndcg if s else None,
                s.repeat_recall if s else None,
                s.explore_recall if s else None,
                c,
            )

    print(f"data: {args.data}: {len(users)} shoppers, half B {len(halves['half B'])}")
    print(f"train: {train_s:.0f} s through the CLI; validation (newest history order): {metrics}")
    for variant in ("fp32", "int8"):
        print(
            f"bundle {variant}: {model_out[variant][2] / 1e6:.2f} MB (model.onnx + manifest.json)"
        )
    head = "recall@10  NDCG@10  repeat  explore  completion@10"
    for half, table in rows.items():
        print(f"\n{half:<24} {head}")
        for name, (r, n, rep, exp, c) in table.items():
            print(f"{name:<24} {fmt(r)}    {fmt(n)}  {fmt(rep)}  {fmt(exp)}   {fmt(c)}")
    print("\nREADME's published figures (all shoppers), for the protocol check:")
    for name, (r, n, c) in README_FIGURES.items():
        print(f"{name:<24} {fmt(r)}    {fmt(n)}                   {fmt(c)}")
    if args.latency:
        latency_50k()
    return 0


def latency_50k() -> None:
    """Size and one-thread latency of the graph with a 50,000-item catalogue (random tables)."""
    import numpy as np
    import onnxruntime as ort

    from gateway.decision.features import ShopperFeatures, request_feed
    from gateway.hq import training as T
    from gateway.hq.synthetic import ean13

    n = 50_000
    rng = np.random.default_rng(0)
    tables = T.ItemTables.random(n, rng)
    config = T.TrainConfig()
    features = len(T.RERANK_FEATURES)
    rerank = T.fit_mlp(
        rng.standard_normal((2000, features)), rng.random(2000) < 0.1, config.rerank_hidden,
        epochs=1, seed=0,
    )  # fmt: skip
    catalogue = [ean13(10**10 + i) for i in range(n)]
    ranker = T.TrainedRanker(
        catalogue, T.ProfileModel(), tables, rerank, config, {}, {"overall": [], "by_hour": {}}
    )
    manifest = T.build_manifest(ranker, "fp32", 1)
    manifest["sha256"] = "0" * 64
    manifest_mb = len(json.dumps(manifest)) / 1e6
    feats = ShopperFeatures(
        hist=tuple((catalogue[i], float(rng.standard_normal())) for i in rng.choice(n, 100)),
        nbr=tuple((catalogue[i], float(rng.random())) for i in rng.choice(n, 50)),
    )
    print("\n50,000-item graph, one thread, b=1 (random tables, 200 requests x 5):")
    for variant in ("fp32", "int8"):
        model = T.build_graph(ranker, variant)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        feeds = [
            request_feed(
                manifest,
                feats,
                [catalogue[i] for i in rng.choice(n, rng.integers(0, 20))],
                int(rng.integers(0, 24)),
                1,
                None,
            )
            for _ in range(200)
        ]
        for f in feeds[:20]:
            session.run(None, f)
        times = []
        for _ in range(5):
            for f in feeds:
                t = time.perf_counter()
                session.run(None, f)
                times.append((time.perf_counter() - t) * 1000)
        print(
            f"{variant}: model {len(model) / 1e6:.2f} MB + manifest {manifest_mb:.2f} MB, "
            f"p50 {np.percentile(times, 50):.3f} ms, p99 {np.percentile(times, 99):.3f} ms"
        )


if __name__ == "__main__":
    sys.exit(main())
