"""`store-gateway hq keygen | sign-bundle | sign-keys | timestamp` through the real CLI, and
what they write checked by the store's own verifiers."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import TrustSection
from gateway.decision.bundle import public_keys, read_manifest
from gateway.errors import BundleError
from gateway.publish.trust import TrustRejected, TrustStore

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default"


def hq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "hq", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def keygen(path: Path) -> dict[str, str]:
    out = hq("keygen", "--out", str(path))
    assert out.returncode == 0, out.stderr
    entry: dict[str, str] = json.loads(out.stdout.splitlines()[0])
    return entry


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(
    tmp_path: Path,
) -> None:
    key = tmp_path / "hq.key"
    entry = keygen(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(entry["id"]) == 16 and len(entry["public_key"]) == 64
    assert entry["public_key"] not in key.read_text()  # PEM private key, not the public hex
    again = hq("keygen", "--out", str(key))
    assert again.returncode == 1 and "not overwritten" in again.stderr


def test_sign_bundle_makes_a_bundle_the_store_accepts_only_under_that_key(tmp_path: Path) -> None:
    key, other = tmp_path / "hq.key", tmp_path / "other.key"
    entry, stranger = keygen(key), keygen(other)
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    out = hq("sign-bundle", "--bundle", str(bundle), "--key", str(key))
    assert out.returncode == 0, out.stderr
    manifest = read_manifest(bundle, public_keys([entry["public_key"]]))
    assert manifest["version"] >= 0
    with pytest.raises(BundleError, match="not signed by any trusted key"):
        read_manifest(bundle, public_keys([stranger["public_key"]]))
    # One byte of the manifest changed after signing: refused.
    (bundle / "manifest.json").write_bytes((bundle / "manifest.json").read_bytes() + b" ")
    with pytest.raises(BundleError):
        read_manifest(bundle, public_keys([entry["public_key"]]))


def test_timestamp_and_rotation_documents_open_under_the_store_trust(tmp_path: Path) -> None:
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    old_entry, new_entry = keygen(old), keygen(new)
    ts = tmp_path / "ts.json"
    out = hq("timestamp", "--key", str(old), "--version", "7", "--out", str(ts))
    assert out.returncode == 0, out.stderr
    trust = TrustStore(TrustSection(keys=(old_entry,), threshold=1))
    doc = trust.open("timestamp", ts.read_bytes(), store_id="S1")
    assert doc["version"] == 7
    rot = tmp_path / "keys.json"
    out = hq(
        "sign-keys", "--key", str(old), "--new-key", str(new), "--version", "2", "--out", str(rot)
    )
    assert out.returncode == 0, out.stderr
    trust.open("keys", rot.read_bytes(), store_id="S1")
    # After the rotation only the new key signs: the old key's next timestamp is refused.
    hq("timestamp", "--key", str(old), "--version", "8", "--out", str(ts))
    with pytest.raises(TrustRejected, match=r"untrusted_key|threshold"):
        trust.open("timestamp", ts.read_bytes(), store_id="S1")
    hq("timestamp", "--key", str(new), "--version", "9", "--out", str(ts))
    assert trust.open("timestamp", ts.read_bytes(), store_id="S1")["version"] == 9
    assert new_entry["id"] != old_entry["id"]
