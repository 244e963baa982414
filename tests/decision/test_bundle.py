"""The store's bundle reader: what HQ writes reads back; a hostile bundle is refused with a reason.

Bundles are written by HQ's own writer (``gateway.hq.bundles``) into real
directories, then damaged on disk the way a truncated copy, a tampering
broker or a full disk would.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.decision.bundle import (
    MAX_MANIFEST_BYTES,
    MAX_MODEL_BYTES,
    model_bytes,
    public_keys,
    read_manifest,
)
from gateway.errors import BundleError, BundleProblem
from gateway.hq.bundles import write_bundle

MODEL = b"\x08\x08fake-onnx-bytes" * 10


def make_manifest(**overrides: object) -> dict:
    """A complete manifest for MODEL (sha256 and model_file are filled in by write_bundle)."""
    doc = {
        "format": "store-gateway-ranker/1",
        "version": 3,
        "created": "2026-12-01T10:00:00Z",
        "variant": "fp32",
        "catalogue": ["0000000123457", "0000000045678", "4011"],
        "catalogue_size": 3,
        "zones": ["dairy", "bakery"],
        "k": 10,
        "feature_schema": {"hist_len": 4, "nbr_len": 4, "basket_len": 4},
        "inputs": [{"name": "hist_items", "dtype": "int64", "shape": ["b", 4]}],
        "outputs": [{"name": "top_items", "dtype": "int64", "shape": ["b", 10]}],
        "metrics": {"next_recall@10": 0.4},
        "min_runtime": {"onnxruntime": "1.31"},
        "popular": {"overall": ["4011"], "by_hour": {"9": ["4011"]}},
    }
    doc.update(overrides)
    return doc


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def bundle(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    return write_bundle(tmp_path / "b", MODEL, make_manifest(), key)


def refusal(call: Callable[[], object]) -> BundleError:
    with pytest.raises(BundleError) as info:
        call()
    return info.value


def test_a_signed_bundle_reads_back_under_its_key(bundle: Path, key: Ed25519PrivateKey) -> None:
    """What HQ wrote and signed, a store trusting the key reads: the model's sha256 filled in."""
    doc = read_manifest(bundle, [key.public_key()])
    assert doc["sha256"] == hashlib.sha256(MODEL).hexdigest()
    assert doc["model_file"] == "model.onnx"
    assert doc["version"] == 3
    assert model_bytes(bundle, doc) == MODEL


def test_unsigned_bundle_reads_without_keys_but_fails_with_them(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    """No key configured: no signature needed; trusting a key then demands manifest.sig."""
    path = write_bundle(tmp_path / "u", MODEL, make_manifest(), None)
    assert read_manifest(path)["version"] == 3
    err = refusal(lambda: read_manifest(path, [key.public_key()]))
    assert err.reason is BundleProblem.BAD_SIGNATURE
    assert "manifest.sig" in str(err) and str(err).endswith("missing")


def _flip_signature_bit(bundle: Path) -> None:
    sig = bytearray((bundle / "manifest.sig").read_bytes())
    sig[10] ^= 0x01
    (bundle / "manifest.sig").write_bytes(bytes(sig))


def _edit_signed_manifest(bundle: Path) -> None:
    path = bundle / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"version":3', b'"version":9'))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_flip_signature_bit, "not signed by any trusted key"),
        (_edit_signed_manifest, "not signed by any trusted key"),
        (lambda b: (b / "manifest.sig").write_bytes(b"\x00" * 10), "an Ed25519 signature is 64"),
        (lambda b: (b / "manifest.sig").write_bytes(b"\x00" * 4096), "cap"),
    ],
    ids=["flipped-bit", "edited-manifest", "truncated", "oversized"],
)
def test_a_tampered_signature_is_bad_signature(
    bundle: Path, key: Ed25519PrivateKey, damage: Callable[[Path], object], message: str
) -> None:
    """One changed bit in the signature or the manifest, or a signature of the wrong size."""
    damage(bundle)
    err = refusal(lambda: read_manifest(bundle, [key.public_key()]))
    assert err.reason is BundleProblem.BAD_SIGNATURE
    assert message in str(err)


def test_another_key_or_an_empty_trust_list_trusts_nobody(bundle: Path) -> None:
    """A valid signature by a key the store does not trust is refused; [] trusts no key at all."""
    for keys in ([Ed25519PrivateKey.generate().public_key()], []):
        err = refusal(lambda keys=keys: read_manifest(bundle, keys))
        assert err.reason is BundleProblem.BAD_SIGNATURE
        assert "not signed by any trusted key" in str(err)


def test_a_model_that_does_not_match_its_sha_is_bad_sha(bundle: Path) -> None:
    """A truncated or altered model.onnx is refused before anything parses it."""
    (bundle / "model.onnx").write_bytes(MODEL + b"x")
    err = refusal(lambda: read_manifest(bundle))
    assert err.reason is BundleProblem.BAD_SHA and "sha256" in str(err)


def test_a_model_changed_after_its_manifest_was_read_is_bad_sha(bundle: Path) -> None:
    """model_bytes checks the bytes it returns, so a file swapped after read_manifest is caught."""
    doc = read_manifest(bundle)
    (bundle / "model.onnx").write_bytes(b"swapped")
    assert refusal(lambda: model_bytes(bundle, doc)).reason is BundleProblem.BAD_SHA


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: (b / "model.onnx").unlink(), r"model.onnx missing"),
        (lambda b: (b / "manifest.json").unlink(), r"manifest.json missing"),
        (lambda b: (b / "model.onnx").unlink() or (b / "model.onnx").mkdir(), "cannot read"),
        (lambda b: (b / "manifest.json").unlink() or (b / "manifest.json").mkdir(), "cannot read"),
    ],
    ids=["no-model", "no-manifest", "unreadable-model", "unreadable-manifest"],
)
def test_a_file_that_cannot_be_had_is_missing(
    bundle: Path, damage: Callable[[Path], object], message: str
) -> None:
    """An absent or unreadable model or manifest is reported by name, as missing."""
    damage(bundle)
    err = refusal(lambda: read_manifest(bundle))
    assert err.reason is BundleProblem.MISSING
    assert message in str(err)


def test_no_directory_is_missing(tmp_path: Path) -> None:
    """A bundle path that is not a directory is missing."""
    err = refusal(lambda: read_manifest(tmp_path / "nope"))
    assert err.reason is BundleProblem.MISSING and "not a bundle directory" in str(err)


def test_a_model_over_its_cap_is_too_large_without_being_read(bundle: Path) -> None:
    """A model.onnx past the cap is refused from its size alone (a sparse file: nothing is read)."""
    os.truncate(bundle / "model.onnx", MAX_MODEL_BYTES + 1)
    err = refusal(lambda: read_manifest(bundle))
    assert err.reason is BundleProblem.TOO_LARGE and "cap" in str(err)


def test_a_manifest_over_its_cap_is_bad_manifest(bundle: Path) -> None:
    """A manifest.json past the cap is refused from its size alone, before any parsing."""
    os.truncate(bundle / "manifest.json", MAX_MANIFEST_BYTES + 1)
    err = refusal(lambda: read_manifest(bundle))
    assert err.reason is BundleProblem.BAD_MANIFEST and "cap" in str(err)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"{", b"\xff\xfe\x00", b"[1, 2]", b"null", b"[" * 100000, b'{"format": 1}'],
)
def test_garbage_manifest_is_bad_manifest(bundle: Path, garbage: bytes) -> None:
    """Anything that is not a manifest object is BAD_MANIFEST, never another exception."""
    (bundle / "manifest.json").write_bytes(garbage)
    assert refusal(lambda: read_manifest(bundle)).reason is BundleProblem.BAD_MANIFEST


def test_trusted_keys_come_from_hex_bytes_or_key_objects(key: Ed25519PrivateKey) -> None:
    """The config's hex form, raw bytes and key objects are one key; none or empty needs none."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    keys = public_keys([raw.hex(), raw, key.public_key()])
    assert keys is not None
    assert {k.public_bytes(Encoding.Raw, PublicFormat.Raw) for k in keys} == {raw}
    assert public_keys(None) is None and public_keys([]) is None


@pytest.mark.parametrize("bad", ["zz" * 32, "ab" * 31, b"\x00" * 5, None])
def test_a_key_that_is_not_ed25519_is_bad_key(bad: object) -> None:
    """A trusted key that is not 32 bytes of Ed25519 public key is refused, never ignored."""
    assert refusal(lambda: public_keys([bad])).reason is BundleProblem.BAD_KEY
