"""Write and sign model bundles at HQ (docs/contracts.md section 5).

A bundle is a directory holding ``model.onnx``, ``manifest.json`` and, when
signed, ``manifest.sig`` (Ed25519 over the manifest's exact bytes, which are
canonical JSON so the signed bytes are easy to reproduce). The manifest pins
the model by SHA-256, so one signature covers both.

The manifest is validated with the stores' own reader
(``gateway.decision.bundle.validate_manifest``) before anything is written:
HQ cannot write a bundle a store would refuse for its shape. Reading and
verifying a bundle is the stores' job, in that module (HQ may import the
Pi's code; the Pi never imports this package).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.decision.bundle import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, validate_manifest


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The canonical bytes written (and signed) for ``manifest``."""
    return json.dumps(manifest, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode(
        "utf-8"
    )


def write_bundle(
    directory: str | Path,
    model_bytes: bytes,
    manifest: Mapping[str, Any],
    signing_key: Ed25519PrivateKey | None = None,
) -> Path:
    """Write a bundle into ``directory`` (created if needed) and return its path.

    ``sha256`` and ``model_file`` are filled in from ``model_bytes``; the rest of
    the manifest must already be complete (it is validated before anything is
    written: ``BundleError`` naming the field). A stale ``manifest.sig`` is
    removed when no key is given.
    """
    directory = Path(directory)
    doc = dict(manifest)
    doc["sha256"] = hashlib.sha256(model_bytes).hexdigest()
    doc["model_file"] = MODEL_FILE
    validate_manifest(doc)
    data = manifest_bytes(doc)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(directory / MODEL_FILE, model_bytes)
    _atomic_write(directory / MANIFEST_FILE, data)
    sig_path = directory / SIGNATURE_FILE
    if signing_key is not None:
        _atomic_write(sig_path, signing_key.sign(data))
    elif sig_path.exists():
        sig_path.unlink()
    return directory


def _atomic_write(path: Path, data: bytes) -> None:
    # A store (or `model recommend`) reading the bundle meanwhile sees the old
    # file or the new one, never half of one.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
