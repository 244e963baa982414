"""Model bundles: written, read, verified, packed and unpacked; hostile input refused clearly."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.hq.bundles import (
    MAX_MEMBER_BYTES,
    BundleError,
    pack,
    read_manifest,
    unpack,
    verify_bundle,
    write_bundle,
)

MODEL = b"\x08\x08fake-onnx-bytes" * 10


def make_manifest(**overrides):
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
def key():
    return Ed25519PrivateKey.generate()


@pytest.fixture
def bundle(tmp_path, key):
    return write_bundle(tmp_path / "b", MODEL, make_manifest(), key)


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, body in members:
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return out.getvalue()


def file_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def test_round_trip_fills_sha_and_verifies_signature(bundle, key):
    """A written bundle reads back with the model's sha256 and a signature a trusted key accepts."""
    doc = verify_bundle(bundle, [key.public_key()])
    assert doc["sha256"] == hashlib.sha256(MODEL).hexdigest()
    assert doc["model_file"] == "model.onnx"
    assert doc["version"] == 3


def test_signature_covers_exact_manifest_bytes(bundle, key):
    """The signature verifies over manifest.json's bytes as written."""
    data = (bundle / "manifest.json").read_bytes()
    key.public_key().verify((bundle / "manifest.sig").read_bytes(), data)


def test_unsigned_bundle_reads_without_keys_but_fails_with_them(tmp_path, key):
    """No key: no manifest.sig; trusting keys then demands one."""
    path = write_bundle(tmp_path / "u", MODEL, make_manifest(), None)
    assert not (path / "manifest.sig").exists()
    assert read_manifest(path)["version"] == 3
    with pytest.raises(BundleError, match=r"manifest\.sig: .*missing"):
        verify_bundle(path, [key.public_key()])


def test_flipped_signature_byte_is_refused(bundle, key):
    """One changed bit in the signature makes it untrusted."""
    sig = bytearray((bundle / "manifest.sig").read_bytes())
    sig[10] ^= 0x01
    (bundle / "manifest.sig").write_bytes(bytes(sig))
    with pytest.raises(BundleError, match="not signed by any trusted key"):
        verify_bundle(bundle, [key.public_key()])


def test_other_key_is_not_trusted(bundle):
    """A valid signature from a key the store does not trust is refused."""
    with pytest.raises(BundleError, match="not signed by any trusted key"):
        verify_bundle(bundle, [Ed25519PrivateKey.generate().public_key()])


def test_empty_trust_list_trusts_nobody(bundle):
    """trusted_keys=[] is not the same as None: nothing verifies."""
    with pytest.raises(BundleError, match="not signed"):
        verify_bundle(bundle, [])


def test_truncated_signature_is_refused(bundle, key):
    """A signature of the wrong length is reported as such."""
    (bundle / "manifest.sig").write_bytes(b"\x00" * 10)
    with pytest.raises(BundleError, match="64"):
        verify_bundle(bundle, [key.public_key()])


def test_edited_manifest_breaks_signature(bundle, key):
    """Changing any manifest byte after signing fails verification."""
    path = bundle / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"version":3', b'"version":9'))
    with pytest.raises(BundleError, match="not signed"):
        verify_bundle(bundle, [key.public_key()])


def test_wrong_sha_is_refused(bundle):
    """A model that does not match the manifest's sha256 is refused."""
    (bundle / "model.onnx").write_bytes(MODEL + b"x")
    with pytest.raises(BundleError, match="sha256"):
        read_manifest(bundle)


def test_missing_files_are_named(tmp_path, bundle):
    """A missing model or manifest is reported by name; a missing directory too."""
    (bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"model\.onnx missing"):
        read_manifest(bundle)
    with pytest.raises(BundleError, match="not a bundle directory"):
        read_manifest(tmp_path / "nope")


@pytest.mark.parametrize(
    "garbage",
    [b"", b"{", b"\xff\xfe\x00", b"[1, 2]", b"null", b"[" * 100000],
)
def test_garbage_manifest_is_a_bundle_error(bundle, garbage):
    """Anything that is not a manifest object raises BundleError, never another exception."""
    (bundle / "manifest.json").write_bytes(garbage)
    with pytest.raises(BundleError):
        read_manifest(bundle)


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
    with pytest.raises(BundleError, match=message):
        write_bundle(tmp_path / "x", MODEL, make_manifest(**{field: value}), None)
    assert not (tmp_path / "x" / "model.onnx").exists()


def test_pack_unpack_round_trip(tmp_path, bundle, key):
    """A packed bundle unpacks to the same verified bundle."""
    out = unpack(pack(bundle), tmp_path / "copy")
    assert verify_bundle(out, [key.public_key()]) == verify_bundle(bundle, [key.public_key()])


def test_pack_is_reproducible(bundle):
    """Packing the same bundle twice gives the same bytes (content-addressable chunks)."""
    assert pack(bundle) == pack(bundle)


@pytest.mark.parametrize("name", ["../model.onnx", "/etc/model.onnx", "sub/model.onnx", ".."])
def test_unpack_refuses_path_traversal(tmp_path, name):
    """Members that would land outside the target directory are refused."""
    data = tar_of([(file_info(name, 3), b"abc")])
    with pytest.raises(BundleError, match=r"refusing member path|not a regular file"):
        unpack(data, tmp_path / "t")
    assert not (tmp_path / "model.onnx").exists()


def test_unpack_refuses_symlinks(tmp_path):
    """A symlink member is refused before anything is written."""
    link = tarfile.TarInfo("model.onnx")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(BundleError, match="not a regular file"):
        unpack(tar_of([(link, None)]), tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_unpack_refuses_huge_declared_member(tmp_path):
    """A member declaring 1 GB is refused from its header, without reading a body."""
    header = file_info("model.onnx", 10**9).tobuf()
    data = header + b"\x00" * 1024  # the body is not there: only the claim
    with pytest.raises(BundleError, match=r"cap|corrupt|truncated"):
        unpack(data, tmp_path / "t")
    assert MAX_MEMBER_BYTES < 10**9


def test_unpack_accepts_a_tar_made_with_dot_prefixes(tmp_path, bundle, key):
    """A tar made by `tar -C bundle -cf - .` ("./" entries) unpacks to the same bundle."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(bundle, arcname=".")
    copy = unpack(out.getvalue(), tmp_path / "copy")
    assert verify_bundle(copy, [key.public_key()])["version"] == 3


def test_unpack_refuses_unknown_and_duplicate_members(tmp_path):
    """Only the bundle's own files, each once."""
    with pytest.raises(BundleError, match="unexpected member"):
        unpack(tar_of([(file_info("run.sh", 2), b"hi")]), tmp_path / "a")
    twice = tar_of([(file_info("model.onnx", 1), b"a"), (file_info("model.onnx", 1), b"b")])
    with pytest.raises(BundleError, match="twice"):
        unpack(twice, tmp_path / "b")


@pytest.mark.parametrize("cut", [0, 10, 300, 700, 1500])
def test_unpack_truncated_tar_is_a_bundle_error(tmp_path, bundle, cut):
    """A tar cut anywhere raises BundleError (or unpacks only if complete), never crashes."""
    data = pack(bundle)
    with pytest.raises(BundleError):
        unpack(data[:cut], tmp_path / "t")


@pytest.mark.parametrize("garbage", [b"", b"not a tar at all", bytes(range(256)) * 8])
def test_unpack_garbage(tmp_path, garbage):
    """Random bytes are reported as not a bundle."""
    with pytest.raises(BundleError):
        unpack(garbage, tmp_path / "t")


def test_manifest_is_canonical_json(bundle):
    """manifest.json is compact, sorted JSON: what is signed is easy to reproduce."""
    text = (bundle / "manifest.json").read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def test_write_bundle_removes_stale_signature(tmp_path, key):
    """Rewriting a signed bundle without a key leaves no signature that no longer matches."""
    path = write_bundle(tmp_path / "b", MODEL, make_manifest(), key)
    write_bundle(path, MODEL, make_manifest(version=4), None)
    assert not Path(path / "manifest.sig").exists()
