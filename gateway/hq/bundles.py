"""Model bundles (docs/contracts.md section 5): write, read, verify, pack and unpack them safely.

A bundle is a directory holding ``model.onnx``, ``manifest.json`` and, when
signed, ``manifest.sig`` (Ed25519 over the manifest's exact bytes). The
manifest pins the model by SHA-256, so one signature covers both. Everything
read from outside is treated as hostile: sizes are capped before reading,
JSON is validated field by field, tar members may not escape the target
directory, be links or devices, or declare more bytes than the cap.

Only the standard library and ``cryptography`` (a core dependency): stores
verify bundles with this module too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.errors import BundleError

FORMAT = "store-gateway-ranker/1"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
BUNDLE_FILES = (MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE)
# The contract caps model.onnx + manifest.json at 8 MB; the caps below leave
# headroom so a bundle just over it is reported as such rather than as garbage.
MAX_MODEL_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
MAX_SIGNATURE_BYTES = 1024
MAX_MEMBER_BYTES = MAX_MODEL_BYTES
# A tar of the three files is at most a few tens of members even if padded with junk.
MAX_TAR_MEMBERS = 16
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
    written). A stale ``manifest.sig`` is removed when no key is given.
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_capped(path: Path, cap: int, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > cap:
            raise BundleError(f"{path}: {what} is {size} bytes, over the {cap}-byte cap")
        with path.open("rb") as handle:
            data = handle.read(cap + 1)
    except FileNotFoundError:
        raise BundleError(f"{path}: {what} missing") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    if len(data) > cap:
        raise BundleError(f"{path}: {what} over the {cap}-byte cap")
    return data


def validate_manifest(doc: Any) -> dict[str, Any]:
    """Check the manifest's shape; raise BundleError naming the first wrong field."""
    if not isinstance(doc, dict):
        raise BundleError("manifest: not a JSON object")
    for name, kind in REQUIRED_FIELDS.items():
        if name not in doc:
            raise BundleError(f"manifest: missing field {name!r}")
        value = doc[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise BundleError(f"manifest.{name}: wrong type {type(value).__name__}")
    if doc["format"] != FORMAT:
        raise BundleError(f"manifest.format: {doc['format']!r}, expected {FORMAT!r}")
    if doc["version"] < 0:
        raise BundleError("manifest.version: must be a non-negative integer")
    if doc["variant"] not in VARIANTS:
        raise BundleError(f"manifest.variant: {doc['variant']!r} not one of {VARIANTS}")
    if doc["model_file"] != MODEL_FILE:
        raise BundleError(f"manifest.model_file: must be {MODEL_FILE!r}")
    sha = doc["sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise BundleError("manifest.sha256: not 64 lowercase hex digits")
    catalogue = doc["catalogue"]
    if not all(isinstance(i, str) and i for i in catalogue):
        raise BundleError("manifest.catalogue: every item id must be a non-empty string")
    if len(set(catalogue)) != len(catalogue):
        raise BundleError("manifest.catalogue: duplicate item ids")
    if doc["catalogue_size"] != len(catalogue):
        raise BundleError(
            f"manifest.catalogue_size: {doc['catalogue_size']} but the catalogue holds "
            f"{len(catalogue)} ids"
        )
    if not all(isinstance(z, str) for z in doc["zones"]):
        raise BundleError("manifest.zones: every zone must be a string")
    if doc["k"] < 1:
        raise BundleError("manifest.k: must be at least 1")
    schema = doc["feature_schema"]
    for name in ("hist_len", "nbr_len", "basket_len"):
        value = schema.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BundleError(f"manifest.feature_schema.{name}: must be a positive integer")
    popular = doc["popular"]
    if not isinstance(popular.get("overall"), list) or not isinstance(popular.get("by_hour"), dict):
        raise BundleError("manifest.popular: needs 'overall' (list) and 'by_hour' (object)")
    if not all(isinstance(i, str) for i in popular["overall"]):
        raise BundleError("manifest.popular.overall: item ids must be strings")
    for hour, items in popular["by_hour"].items():
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise BundleError(f"manifest.popular.by_hour.{hour}: must be a list of item ids")
    runtime = doc["min_runtime"].get("onnxruntime")
    if not isinstance(runtime, str):
        raise BundleError("manifest.min_runtime.onnxruntime: must be a version string")
    return doc


def read_manifest(
    directory: str | Path, trusted_keys: Sequence[Ed25519PublicKey] | None = None
) -> dict[str, Any]:
    """The bundle's validated manifest, after checking the model's SHA-256.

    With ``trusted_keys`` the signature must verify under one of them (an empty
    list trusts nobody); without, the signature is not looked at.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: not a bundle directory")
    data = _read_capped(directory / MANIFEST_FILE, MAX_MANIFEST_BYTES, MANIFEST_FILE)
    if trusted_keys is not None:
        _check_signature(directory, data, trusted_keys)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{directory / MANIFEST_FILE}: not valid JSON ({exc})") from None
    try:
        validate_manifest(doc)
    except BundleError as exc:
        raise BundleError(f"{directory / MANIFEST_FILE}: {exc}") from None
    model = _read_capped(directory / MODEL_FILE, MAX_MODEL_BYTES, MODEL_FILE)
    digest = hashlib.sha256(model).hexdigest()
    if digest != doc["sha256"]:
        raise BundleError(
            f"{directory / MODEL_FILE}: sha256 {digest[:16]}… does not match the manifest's "
            f"{doc['sha256'][:16]}…"
        )
    return doc


def _check_signature(
    directory: Path, data: bytes, trusted_keys: Sequence[Ed25519PublicKey]
) -> None:
    sig = _read_capped(directory / SIGNATURE_FILE, MAX_SIGNATURE_BYTES, SIGNATURE_FILE)
    if len(sig) != ED25519_SIGNATURE_BYTES:
        raise BundleError(
            f"{directory / SIGNATURE_FILE}: {len(sig)} bytes, an Ed25519 signature is 64"
        )
    for key in trusted_keys:
        try:
            key.verify(sig, data)
        except InvalidSignature:
            continue
        return
    raise BundleError(f"{directory / SIGNATURE_FILE}: not signed by any trusted key")


def verify_bundle(
    directory: str | Path, trusted_keys: Sequence[Ed25519PublicKey] | None
) -> dict[str, Any]:
    """``read_manifest`` for a bundle a store is about to accept (same checks, same errors)."""
    return read_manifest(directory, trusted_keys)


def model_bytes(directory: str | Path, manifest: Mapping[str, Any]) -> bytes:
    """The model file of a bundle already read with ``read_manifest``, re-checked."""
    data = _read_capped(Path(directory) / MODEL_FILE, MAX_MODEL_BYTES, MODEL_FILE)
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise BundleError(f"{directory}: {MODEL_FILE} changed since its manifest was read")
    return data


def pack(directory: str | Path) -> bytes:
    """The bundle's files as an uncompressed tar (fixed order and metadata: reproducible)."""
    directory = Path(directory)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in BUNDLE_FILES:
            path = directory / name
            if not path.exists():
                if name == SIGNATURE_FILE:
                    continue
                raise BundleError(f"{path}: missing")
            cap = MAX_MODEL_BYTES if name == MODEL_FILE else MAX_MANIFEST_BYTES
            data = _read_capped(path, cap, name)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def unpack(data: bytes, directory: str | Path) -> Path:
    """Extract a packed bundle into ``directory``; only the bundle's own plain files.

    Refuses path traversal, absolute names, links, devices, unknown names,
    duplicates and members declaring more than ``MAX_MEMBER_BYTES``, before
    anything is written. Does not verify: call ``verify_bundle`` next.
    """
    directory = Path(directory)
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")  # noqa: SIM115  (closed below)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"not a bundle tar: {exc}") from None
    with tar:
        try:
            members = []
            for member in tar:
                members.append(member)
                if len(members) > MAX_TAR_MEMBERS:
                    raise BundleError(f"bundle tar: more than {MAX_TAR_MEMBERS} members")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise BundleError(f"bundle tar is corrupt: {exc}") from None
        seen: set[str] = set()
        kept = []
        for m in members:
            # `tar -C bundle -cf - .` writes "./" and "./model.onnx": accept that spelling
            if m.isdir() and m.name in (".", "./"):
                continue
            name = m.name[2:] if m.name.startswith("./") else m.name
            m.name = name
            kept.append(m)
            if name.startswith("/") or ".." in Path(name).parts or "/" in name or "\\" in name:
                raise BundleError(f"bundle tar: refusing member path {name!r}")
            if not m.isfile():
                raise BundleError(f"bundle tar: {name!r} is not a regular file")
            if name not in BUNDLE_FILES:
                raise BundleError(f"bundle tar: unexpected member {name!r}")
            if name in seen:
                raise BundleError(f"bundle tar: {name!r} appears twice")
            if m.size > MAX_MEMBER_BYTES or m.size < 0:
                raise BundleError(
                    f"bundle tar: {name!r} declares {m.size} bytes, over the "
                    f"{MAX_MEMBER_BYTES}-byte cap"
                )
            seen.add(name)
        for required in (MODEL_FILE, MANIFEST_FILE):
            if required not in seen:
                raise BundleError(f"bundle tar: {required} missing")
        contents = {}
        for m in kept:
            handle = tar.extractfile(m)
            if handle is None:
                raise BundleError(f"bundle tar: cannot read {m.name!r}")
            try:
                body = handle.read(MAX_MEMBER_BYTES + 1)
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise BundleError(f"bundle tar: {m.name!r} is truncated: {exc}") from None
            if len(body) != m.size:
                raise BundleError(f"bundle tar: {m.name!r} is truncated")
            contents[m.name] = body
    directory.mkdir(parents=True, exist_ok=True)
    stale = directory / SIGNATURE_FILE
    if SIGNATURE_FILE not in contents and stale.exists():
        stale.unlink()
    for name, body in contents.items():
        _atomic_write(directory / name, body)
    return directory
