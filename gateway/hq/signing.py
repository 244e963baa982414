"""HQ's signing side: Ed25519 keys, DSSE envelopes, signed bundles (docs/downlink.md).

A private key file is PEM (PKCS#8, unencrypted) or the raw 32-byte seed as 64
hex digits. The key id is the first 16 hex digits of sha256 of the raw public
key, the same as the store computes (publish/trust.py ``key_id``).

Commands: ``hq keygen``, ``hq sign-bundle``, ``hq sign-keys`` (a key rotation
document), ``hq timestamp``. Their parsers live in cli.py, which imports this
module only when one of them runs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.decision.bundle import MANIFEST_FILE, SIGNATURE_FILE
from gateway.publish.trust import key_id, pae, payload_type

DEFAULT_LIFETIME_S = 7 * 86400
TIMESTAMP_LIFETIME_S = 3600


class Signer:
    """One HQ signing key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.public_raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.keyid = key_id(self.public_raw)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: str | Path) -> Signer:
        data = Path(path).read_bytes()
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path}: not an Ed25519 private key")
            return cls(key)
        text = data.decode("ascii").strip()
        return cls(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text)))

    @property
    def public_hex(self) -> str:
        return self.public_raw.hex()

    def config_entry(self) -> dict[str, str]:
        """This key as a ``[[trust.keys]]`` entry."""
        return {"id": self.keyid, "public_key": self.public_hex}

    def pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, path: str | Path) -> None:
        """The private key as PEM, mode 0600 from its creation."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.pem())

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def signature(self, kind: str, body: bytes) -> dict[str, str]:
        sig = self.sign(pae(payload_type(kind), body))
        return {"keyid": self.keyid, "sig": base64.b64encode(sig).decode("ascii")}

    def envelope(self, kind: str, doc: dict[str, Any]) -> bytes:
        """``doc`` signed for ``kind``; ``issued_at``/``expires`` added when absent."""
        return seal(kind, doc, [self])

    def sign_bundle(self, bundle_dir: str | Path) -> Path:
        """Write ``manifest.sig`` (Ed25519 over manifest.json's exact bytes)."""
        bundle = Path(bundle_dir)
        sig = self.sign((bundle / MANIFEST_FILE).read_bytes())
        out = bundle / SIGNATURE_FILE
        out.write_bytes(sig)
        return out


def with_times(doc: dict[str, Any], lifetime_s: float = DEFAULT_LIFETIME_S) -> dict[str, Any]:
    now = time.time()
    out = dict(doc)
    out.setdefault("issued_at", round(now, 3))
    out.setdefault("expires", round(float(out["issued_at"]) + lifetime_s, 3))
    return out


def seal(kind: str, doc: dict[str, Any], signers: list[Signer]) -> bytes:
    """A DSSE envelope of ``doc`` for ``kind``, signed by every one of ``signers``."""
    body = json.dumps(with_times(doc), separators=(",", ":")).encode("utf-8")
    env = {
        "payloadType": payload_type(kind),
        "payload": base64.b64encode(body).decode("ascii"),
        "signatures": [s.signature(kind, body) for s in signers],
    }
    return json.dumps(env, separators=(",", ":")).encode("utf-8")


def keys_document(
    version: int, new_keys: list[dict[str, str]], threshold: int, *, store: str | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1, "version": version, "keys": new_keys, "threshold": threshold}
    if store is not None:
        doc["store"] = store
    return doc


# -- commands ------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    signer = Signer.generate()
    try:
        signer.write(args.out)
    except FileExistsError:
        print(f"{args.out}: exists; not overwritten", file=sys.stderr)
        return 1
    print(json.dumps({"id": signer.keyid, "public_key": signer.public_hex}))
    print(f'# [[trust.keys]]\n# id = "{signer.keyid}"\n# public_key = "{signer.public_hex}"')
    return 0


def cmd_sign_bundle(args: argparse.Namespace) -> int:
    signer = Signer.from_file(args.key)
    out = signer.sign_bundle(args.bundle)
    print(f"{out}: signed by {signer.keyid}")
    return 0


def _signers(paths: list[str]) -> list[Signer]:
    return [Signer.from_file(p) for p in paths]


def cmd_sign_keys(args: argparse.Namespace) -> int:
    new = [Signer.from_file(p) if not p.endswith(".pub") else None for p in args.new_key]
    entries = []
    for path, s in zip(args.new_key, new, strict=True):
        if s is not None:
            entries.append(s.config_entry())
        else:
            pub = Path(path).read_text().strip()
            entries.append({"id": key_id(bytes.fromhex(pub)), "public_key": pub})
    doc = keys_document(args.version, entries, args.threshold)
    signers = _signers(args.key) + [s for s in new if s is not None]
    envelope = seal("keys", with_times(doc, args.lifetime), signers)
    Path(args.out).write_bytes(envelope)
    print(f"{args.out}: keys v{args.version}, {len(entries)} keys, threshold {args.threshold}")
    return 0


def cmd_timestamp(args: argparse.Namespace) -> int:
    version = args.version if args.version is not None else int(time.time())
    doc = with_times({"v": 1, "version": version}, args.lifetime)
    Path(args.out).write_bytes(seal("timestamp", doc, _signers(args.key)))
    print(f"{args.out}: timestamp v{version} (publish it on down/timestamp)")
    return 0
