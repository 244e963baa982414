"""``model train`` -> bundle -> ``model recommend`` through the command line, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.decision.bundle import read_manifest
from gateway.hq import evaluate as ev
from gateway.hq.orders import write_orders
from gateway.hq.synthetic import SyntheticSpec, synthetic_orders

# `store-gateway model ...`, run as the installed entry point runs it.
COMMAND = [sys.executable, "-m", "gateway.cli", "model"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
    )


def write_requests(path: Path, docs: list) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """History and test orders of synthetic shoppers, and bundles trained on the history."""
    root = tmp_path_factory.mktemp("model")
    spec = SyntheticSpec(shoppers=80, items=250, categories=12, min_orders=6, max_orders=12)
    by_user: dict[str, list] = {}
    for o in synthetic_orders(spec):
        by_user.setdefault(o.user_id, []).append(o)
    history, test = ev.split_last(by_user)
    orders_csv = root / "history.csv"
    write_orders(orders_csv, [o for orders in history.values() for o in orders])
    key = Ed25519PrivateKey.generate()
    pem = root / "signing.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    out = root / "bundle"
    done = run(
        "train",
        "--orders",
        orders_csv,
        "--out",
        out,
        "--variant",
        "both",
        "--signing-key",
        pem,
        "--version",
        "7",
        "--profiles-out",
        root / "profiles.jsonl",
    )
    assert done.returncode == 0, done.stderr
    return {
        "root": root,
        "orders": orders_csv,
        "bundle": out,
        "key": key,
        "history": history,
        "test": test,
    }


def recommend(trained, requests: Path, variant: str = "fp32", *extra: str):
    done = run(
        "recommend",
        "--bundle",
        trained["bundle"] / variant,
        "--orders",
        trained["orders"],
        "--requests",
        requests,
        *extra,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_train_writes_signed_bundles_of_both_variants(trained):
    """--variant both writes OUT/fp32 and OUT/int8, each signed and at the given version."""
    for variant in ("fp32", "int8"):
        doc = read_manifest(trained["bundle"] / variant, [trained["key"].public_key()])
        assert doc["variant"] == variant
        assert doc["version"] == 7
        assert len(doc["popular"]["overall"]) <= 100
        assert set(doc["popular"]["by_hour"]) == {str(h) for h in range(24)}


def test_profiles_out_holds_attribute_features(trained):
    """--profiles-out writes one attributes document per shopper, small enough for a profile."""
    lines = (trained["root"] / "profiles.jsonl").read_text().splitlines()
    assert len(lines) == len(trained["history"])
    doc = json.loads(lines[0])
    assert doc["attributes"]["features"]["v"] == 1
    assert max(len(json.dumps(json.loads(x)["attributes"])) for x in lines) < 8 * 1024


def test_recommend_keeps_order_and_never_returns_basket_items(trained, tmp_path):
    """One line per request in request order; no item already in the basket; k items."""
    test = trained["test"]
    docs = []
    for user in list(test)[:30]:
        known, _ = ev.known_split(test[user])
        docs.append({"shopper": user, "basket": known, "hour": test[user].hour, "dow": 2})
    docs.append({"shopper": docs[0]["shopper"], "basket": [], "hour": 9, "dow": 0, "zone": "z"})
    out = recommend(trained, write_requests(tmp_path / "r.jsonl", docs))
    assert [o["shopper"] for o in out] == [d["shopper"] for d in docs]
    for doc, answer in zip(docs, out, strict=True):
        assert len(answer["items"]) == 10
        assert len(set(answer["items"])) == 10
        assert not set(answer["items"]) & set(doc["basket"])


def test_unknown_shopper_gets_the_popular_fallback(trained, tmp_path):
    """A shopper absent from the orders gets the bundle's popular items for that hour."""
    manifest = json.loads((trained["bundle"] / "fp32" / "manifest.json").read_text())
    by_hour = manifest["popular"]["by_hour"]["8"]
    docs = [{"shopper": "never-seen", "basket": [by_hour[0]], "hour": 8, "dow": 1}]
    out = recommend(trained, write_requests(tmp_path / "r.jsonl", docs), "fp32", "--top", "5")
    assert out[0]["items"] == by_hour[1:6]


def test_model_beats_own_frequency_through_the_cli(trained, tmp_path):
    """Next-basket recall@10 of the bundle, via the CLI, is at least own frequency's."""
    test, history = trained["test"], trained["history"]
    docs = [{"shopper": u, "basket": [], "hour": o.hour, "dow": o.dow} for u, o in test.items()]
    out = recommend(trained, write_requests(tmp_path / "r.jsonl", docs), "int8")
    ranked = {o["shopper"]: o["items"] for o in out}
    users = list(test)
    model = ev.next_basket_scores(ranked, history, test, users).recall
    own = ev.next_basket_scores(ev.own_frequency(history), history, test, users).recall
    assert model >= own


def test_bad_request_lines_are_reported_with_line_numbers(trained, tmp_path):
    """Every bad line is named with its number; exit 1, nothing on stdout, no traceback."""
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"shopper": "1", "basket": [], "hour": 9, "dow": 2}\n'
        "not json\n"
        '{"shopper": "1", "basket": [], "hour": 25, "dow": 2}\n'
        '{"shopper": "1", "basket": "x", "hour": 9, "dow": 2}\n'
        "[1, 2]\n"
    )
    done = run(
        "recommend",
        "--bundle",
        trained["bundle"] / "fp32",
        "--orders",
        trained["orders"],
        "--requests",
        path,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    for line_no in (2, 3, 4, 5):
        assert f"line {line_no}:" in done.stderr
    assert "line 1:" not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("orders_text", "message"),
    [
        ("", "empty file"),
        ("order_id,user_id,product_id\n1,2,3\n", "missing column"),
    ],
)
def test_train_refuses_unusable_orders(tmp_path, orders_text, message):
    """Unusable orders: a clear message naming the file, exit 1, no traceback."""
    path = tmp_path / "orders.csv"
    path.write_text(orders_text)
    done = run("train", "--orders", path, "--out", tmp_path / "b")
    assert done.returncode == 1
    assert message in done.stderr and str(path) in done.stderr
    assert "Traceback" not in done.stderr


def test_recommend_errors_exit_1_with_clear_messages(trained, tmp_path):
    """Missing bundle, empty requests and a tampered model each give one clear line."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cases = [
        (["--bundle", tmp_path / "none", "--requests", empty], "not a bundle directory"),
        (["--bundle", trained["bundle"] / "fp32", "--requests", empty], "no requests"),
    ]
    for args, message in cases:
        done = run("recommend", "--orders", trained["orders"], *args)
        assert done.returncode == 1, done.stderr
        assert message in done.stderr
        assert "Traceback" not in done.stderr


def test_bad_signing_key_is_refused(trained, tmp_path):
    """A signing key file that is not an Ed25519 PEM key is a clear error before training."""
    bad = tmp_path / "key.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    done = run(
        "train", "--orders", trained["orders"], "--out", tmp_path / "b", "--signing-key", bad
    )
    assert done.returncode == 1
    assert "--signing-key" in done.stderr and "Traceback" not in done.stderr
