"""Read and verify a model bundle on the Pi (docs/contracts.md section 5); refusals carry a reason.

A bundle is a directory holding ``model.onnx``, ``manifest.json`` and, when
signed, ``manifest.sig`` (Ed25519 over the manifest's exact bytes). The
manifest pins the model by SHA-256, so one signature covers both. Everything
read here came from outside and is treated as hostile: sizes are capped before
reading, the signature is checked before the JSON is parsed, and the manifest
is validated field by field. Every refusal is a ``BundleError`` whose
``reason`` (a ``BundleProblem``) is the code the ranker counts in health, so
no caller has to guess from the message.

HQ writes bundles with hq/bundles.py, which validates with this
module's ``validate_manifest``: a bundle HQ can write is one a store can read.
Only the standard library and ``cryptography`` (a core dependency).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.errors import BundleError, BundleProblem

FORMAT = "store-gateway-ranker/1"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
# The contract caps model.onnx + manifest.json at 8 MB; the caps below leave
# headroom so a bundle just over it is reported as such rather than as garbage.
MAX_MODEL_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
# An Ed25519 signature is 64 bytes; anything near a kilobyte is not one.
MAX_SIGNATURE_BYTES = 1024
ED25519_SIGNATURE_BYTES = 64
VARIANTS = ("fp32", "int8")
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "created": str,
    "sha256": str,
    "model_file": str,
    "variant": str,
    "catalogue": list,
    "zones": list,
    "k": int,
    "feature_schema": dict,
    "inputs": list,
    "outputs": list,
    "catalogue_size": int,
    "metrics": dict,
    "min_runtime": dict,
    "popular": dict,
}


def public_keys(keys: Sequence[Any] | None) -> list[Ed25519PublicKey] | None:
    """Trusted keys as Ed25519 keys, from hex (the config's form), raw bytes or key objects.

    None or empty means no signature is required (the config's "empty: none
    needed"); ``read_manifest`` reads an empty *list* as "trust nobody", so
    this never returns one. A key that is not an Ed25519 public key is
    ``BundleProblem.BAD_KEY``.
    """
    if not keys:
        return None
    out = []
    for key in keys:
        if isinstance(key, Ed25519PublicKey):
            out.append(key)
            continue
        try:
            raw = bytes.fromhex(key) if isinstance(key, str) else bytes(key)
            out.append(Ed25519PublicKey.from_public_bytes(raw))
        except (ValueError, TypeError) as exc:
            raise BundleError(
                BundleProblem.BAD_KEY, "a trusted key is not an Ed25519 public key"
            ) from exc
    return out


def _read_capped(
    path: Path, cap: int, *, missing: BundleProblem, bad: BundleProblem, over: BundleProblem
) -> bytes:
    """``path``'s bytes, never more than ``cap``; each way of failing has the caller's reason."""
    what = path.name
    try:
        size = path.stat().st_size
        if size > cap:
            raise BundleError(over, f"{path}: {what} is {size} bytes, over the {cap}-byte cap")
        with path.open("rb") as handle:
            data = handle.read(cap + 1)
    except FileNotFoundError:
        raise BundleError(missing, f"{path}: {what} missing") from None
    except OSError as exc:
        raise BundleError(bad, f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    if len(data) > cap:
        # The file grew between stat and read.
        raise BundleError(over, f"{path}: {what} over the {cap}-byte cap")
    return data


def _bad(message: str) -> BundleError:
    return BundleError(BundleProblem.BAD_MANIFEST, message)


def validate_manifest(doc: Any) -> dict[str, Any]:
    """Check the manifest's shape; ``BAD_MANIFEST`` naming the first wrong field."""
    if not isinstance(doc, dict):
        raise _bad("manifest: not a JSON object")
    for name, kind in REQUIRED_FIELDS.items():
        if name not in doc:
            raise _bad(f"manifest: missing field {name!r}")
        value = doc[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise _bad(f"manifest.{name}: wrong type {type(value).__name__}")
    if doc["format"] != FORMAT:
        raise _bad(f"manifest.format: {doc['format']!r}, expected {FORMAT!r}")
    if doc["version"] < 0:
        raise _bad("manifest.version: must be a non-negative integer")
    if doc["variant"] not in VARIANTS:
        raise _bad(f"manifest.variant: {doc['variant']!r} not one of {VARIANTS}")
    if doc["model_file"] != MODEL_FILE:
        raise _bad(f"manifest.model_file: must be {MODEL_FILE!r}")
    sha = doc["sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise _bad("manifest.sha256: not 64 lowercase hex digits")
    catalogue = doc["catalogue"]
    if not all(isinstance(i, str) and i for i in catalogue):
        raise _bad("manifest.catalogue: every item id must be a non-empty string")
    if len(set(catalogue)) != len(catalogue):
        raise _bad("manifest.catalogue: duplicate item ids")
    if doc["catalogue_size"] != len(catalogue):
        raise _bad(
            f"manifest.catalogue_size: {doc['catalogue_size']} but the catalogue holds "
            f"{len(catalogue)} ids"
        )
    if not all(isinstance(z, str) for z in doc["zones"]):
        raise _bad("manifest.zones: every zone must be a string")
    if doc["k"] < 1:
        raise _bad("manifest.k: must be at least 1")
    schema = doc["feature_schema"]
    for name in ("hist_len", "nbr_len", "basket_len"):
        value = schema.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _bad(f"manifest.feature_schema.{name}: must be a positive integer")
    popular = doc["popular"]
    if not isinstance(popular.get("overall"), list) or not isinstance(popular.get("by_hour"), dict):
        raise _bad("manifest.popular: needs 'overall' (list) and 'by_hour' (object)")
    if not all(isinstance(i, str) for i in popular["overall"]):
        raise _bad("manifest.popular.overall: item ids must be strings")
    for hour, items in popular["by_hour"].items():
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise _bad(f"manifest.popular.by_hour.{hour}: must be a list of item ids")
    runtime = doc["min_runtime"].get("onnxruntime")
    if not isinstance(runtime, str):
        raise _bad("manifest.min_runtime.onnxruntime: must be a version string")
    return doc


def read_manifest(
    directory: str | Path, trusted_keys: Sequence[Ed25519PublicKey] | None = None
) -> dict[str, Any]:
    """The bundle's validated manifest, after checking the model's SHA-256.

    With ``trusted_keys`` the signature must verify under one of them (an empty
    list trusts nobody); without, the signature is not looked at. This is what
    a store runs before it accepts a bundle.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(BundleProblem.MISSING, f"{directory}: not a bundle directory")
    data = _read_capped(
        directory / MANIFEST_FILE,
        MAX_MANIFEST_BYTES,
        missing=BundleProblem.MISSING,
        bad=BundleProblem.MISSING,
        over=BundleProblem.BAD_MANIFEST,
    )
    if trusted_keys is not None:
        _check_signature(directory, data, trusted_keys)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"{directory / MANIFEST_FILE}: not valid JSON ({exc})") from None
    try:
        validate_manifest(doc)
    except BundleError as exc:
        raise BundleError(exc.reason, f"{directory / MANIFEST_FILE}: {exc}") from None
    model_bytes(directory, doc)
    manifest: dict[str, Any] = doc  # validate_manifest checked it is an object
    return manifest


def _check_signature(
    directory: Path, data: bytes, trusted_keys: Sequence[Ed25519PublicKey]
) -> None:
    path = directory / SIGNATURE_FILE
    bad = BundleProblem.BAD_SIGNATURE
    sig = _read_capped(path, MAX_SIGNATURE_BYTES, missing=bad, bad=bad, over=bad)
    if len(sig) != ED25519_SIGNATURE_BYTES:
        raise BundleError(bad, f"{path}: {len(sig)} bytes, an Ed25519 signature is 64")
    for key in trusted_keys:
        try:
            key.verify(sig, data)
        except InvalidSignature:
            continue
        return
    raise BundleError(bad, f"{path}: not signed by any trusted key")


def model_bytes(directory: str | Path, manifest: Mapping[str, Any]) -> bytes:
    """The model file of a bundle whose manifest was read, checked against its sha256.

    Whoever builds a session from these very bytes cannot be handed a file
    swapped after the check.
    """
    path = Path(directory) / MODEL_FILE
    data = _read_capped(
        path,
        MAX_MODEL_BYTES,
        missing=BundleProblem.MISSING,
        bad=BundleProblem.MISSING,
        over=BundleProblem.TOO_LARGE,
    )
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest["sha256"]:
        raise BundleError(
            BundleProblem.BAD_SHA,
            f"{path}: sha256 {digest[:16]}… does not match the manifest's "
            f"{manifest['sha256'][:16]}…",
        )
    return data
