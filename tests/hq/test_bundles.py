"""HQ's bundle writer: canonical signed manifests; one a store would refuse is never written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.decision.bundle import read_manifest
from gateway.errors import BundleError, BundleProblem
from gateway.hq.bundles import write_bundle
from tests.decision.test_bundle import MODEL, make_manifest


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def bundle(tmp_path, key):
    return write_bundle(tmp_path / "b", MODEL, make_manifest(), key)


def test_round_trip_fills_sha_and_verifies_signature(bundle, key):
    """A written bundle reads back (with the stores' reader) with its sha256, under its key."""
    doc = read_manifest(bundle, [key.public_key()])
    assert doc["sha256"] == hashlib.sha256(MODEL).hexdigest()
    assert doc["model_file"] == "model.onnx"
    assert doc["version"] == 3


def test_signature_covers_exact_manifest_bytes(bundle, key):
    """The signature verifies over manifest.json's bytes as written."""
    data = (bundle / "manifest.json").read_bytes()
    key.public_key().verify((bundle / "manifest.sig").read_bytes(), data)


def test_unsigned_bundle_has_no_signature_file(tmp_path):
    """No key: no manifest.sig, and the bundle reads where no signature is needed."""
    path = write_bundle(tmp_path / "u", MODEL, make_manifest(), None)
    assert not (path / "manifest.sig").exists()
    assert read_manifest(path)["version"] == 3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format", "other/1", "format"),
        ("version", "3", "version"),
        ("version", True, "version"),
        ("variant", "fp16", "variant"),
        ("catalogue_size", 4, "catalogue_size"),
        ("catalogue", ["a", "a", "b"], "duplicate"),
        ("k", 0, "k"),
        ("feature_schema", {"hist_len": 0, "nbr_len": 1, "basket_len": 1}, "hist_len"),
        ("popular", {"overall": []}, "popular"),
        ("min_runtime", {}, "onnxruntime"),
    ],
)
def test_invalid_manifest_fields_are_named(tmp_path, field, value, message):
    """write_bundle validates before writing and names the bad field."""
    with pytest.raises(BundleError, match=message) as info:
        write_bundle(tmp_path / "x", MODEL, make_manifest(**{field: value}), None)
    assert info.value.reason is BundleProblem.BAD_MANIFEST
    assert not (tmp_path / "x" / "model.onnx").exists()


def test_manifest_is_canonical_json(bundle):
    """manifest.json is compact, sorted JSON: what is signed is easy to reproduce."""
    text = (bundle / "manifest.json").read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def test_write_bundle_removes_stale_signature(tmp_path, key):
    """Rewriting a signed bundle without a key leaves no signature that no longer matches."""
    path = write_bundle(tmp_path / "b", MODEL, make_manifest(), key)
    write_bundle(path, MODEL, make_manifest(version=4), None)
    assert not Path(path / "manifest.sig").exists()
