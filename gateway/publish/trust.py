"""HQ's signatures on everything it sends a store: TUF-style trust (docs/downlink.md).

Every HQ -> store message is a DSSE envelope::

    {"payloadType": "application/vnd.store-gateway.<kind>+json; v=1",
     "payload": "<standard base64 of the inner JSON>",
     "signatures": [{"keyid": "<16 hex>", "sig": "<base64 Ed25519 signature>"}]}

signed over the DSSE pre-authentication encoding (``pae``). ``TrustStore.open``
returns the verified inner document or raises ``TrustRejected`` whose ``code``
is one of ``REASONS``. What it checks, in order, each before any further
parsing: the envelope's size, its JSON and shape, the payload type against the
topic's kind, the inner size (96 KiB), a threshold of distinct trusted key ids
with valid Ed25519 signatures (``cryptography``, no crypto written here), then
the inner document: ``store`` (absent: the whole fleet), ``expires`` against
TRUSTED TIME, and ``version`` (monotonic per kind and target).

Trusted time is max(the system clock, the highest signed ``issued_at`` ever
accepted, persisted): a Pi whose clock went back (no RTC) cannot be made to
accept a document that had expired, nor an older version. A signed
``timestamp`` document (short-lived) moves trusted time forward even when
nothing else is sent (TUF's timestamp role). A signed ``keys`` document
replaces the key set; it must be signed by a threshold of the current keys and
by a threshold of the new ones (TUF root rotation). The config's keys are the
initial root.

State changes (time, versions, keys) are kept in memory at once and written by
``save(conn)`` inside the caller's transaction (the downlink's batch), so they
commit with the messages they let in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.config import TrustSection
from gateway.errors import DownlinkRejected
from gateway.log import get_logger
from gateway.storage import trust as trust_rows

MAX_ENVELOPE_BYTES = 128 * 1024
MAX_INNER_BYTES = 96 * 1024
MAX_SIGNATURES = 16
MAX_KEYS = 32
PAYLOAD_TYPE = "application/vnd.store-gateway.{kind}+json; v=1"
ENVELOPE_FIELDS = frozenset({"payloadType", "payload", "signatures"})
# Kinds the trust store applies itself.
KEYS_KIND = "keys"
TIMESTAMP_KIND = "timestamp"
# Kinds whose documents must carry a version (rollback protection is the point).
VERSIONED_KINDS = frozenset({KEYS_KIND, TIMESTAMP_KIND, "model", "config"})
# Fields the trust layer owns in an inner document; stripped before a kind's schema.
TRUST_FIELDS = ("store", "expires", "version")

REASONS = (
    "unsigned",
    "bad_envelope",
    "bad_signature",
    "untrusted_key",
    "threshold",
    "expired",
    "wrong_store",
    "not_newer",
    "too_large",
    "bad_document",
    "bad_keys",
)


class TrustRejected(DownlinkRejected):
    """A document the trust store refused; ``code`` is one of ``REASONS``.

    ``reason`` is ``"{code}: {detail}"`` and quotes no payload value.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def key_id(public_key: bytes) -> str:
    """A key's id: the first 16 hex digits of sha256 of its 32 raw public bytes."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signatures cover."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def payload_type(kind: str) -> str:
    return PAYLOAD_TYPE.format(kind=kind)


@dataclass(frozen=True)
class KeySet:
    """Trusted keys by id and how many must sign."""

    keys: Mapping[str, Ed25519PublicKey]
    threshold: int
    version: int = 0

    @classmethod
    def from_pairs(
        cls, pairs: Iterable[tuple[str, str]], threshold: int, version: int = 0
    ) -> KeySet:
        keys: dict[str, Ed25519PublicKey] = {}
        for kid, hex_key in pairs:
            raw = bytes.fromhex(hex_key)
            if key_id(raw) != kid:
                raise ValueError(f"key id {kid} does not match its public key")
            keys[kid] = Ed25519PublicKey.from_public_bytes(raw)
        return cls(keys, threshold, version)


def _b64(value: Any, what: str, max_len: int) -> bytes:
    if not isinstance(value, str) or len(value) > max_len:
        raise TrustRejected("bad_envelope", f"{what}: not a base64 string of bounded size")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise TrustRejected("bad_envelope", f"{what}: not standard base64") from None


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    body: bytes
    signatures: tuple[tuple[str, bytes], ...]


def parse_envelope(payload: bytes) -> Envelope:
    """The envelope's parts, bounded and checked; ``TrustRejected`` says why not.

    An object without ``signatures``/``payload`` (an old plain message) is
    ``unsigned``; anything else malformed is ``bad_envelope``.
    """
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise TrustRejected("too_large", f"envelope over {MAX_ENVELOPE_BYTES} bytes")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise TrustRejected("bad_envelope", "not JSON") from None
    except RecursionError:
        raise TrustRejected("bad_envelope", "nested too deeply") from None
    if not isinstance(doc, dict):
        raise TrustRejected("bad_envelope", "not a JSON object")
    if "payload" not in doc and "signatures" not in doc:
        raise TrustRejected("unsigned", "not a signed envelope")
    if set(doc) != ENVELOPE_FIELDS:
        raise TrustRejected("bad_envelope", "fields must be payloadType, payload, signatures")
    ptype = doc["payloadType"]
    if not isinstance(ptype, str) or len(ptype) > 128:
        raise TrustRejected("bad_envelope", "payloadType: not a short string")
    body = _b64(doc["payload"], "payload", MAX_ENVELOPE_BYTES)
    if len(body) > MAX_INNER_BYTES:
        raise TrustRejected("too_large", f"inner payload over {MAX_INNER_BYTES} bytes")
    sigs = doc["signatures"]
    if not isinstance(sigs, list):
        raise TrustRejected("bad_envelope", "signatures: not a list")
    if not sigs:
        raise TrustRejected("unsigned", "no signatures")
    if len(sigs) > MAX_SIGNATURES:
        raise TrustRejected("bad_envelope", f"more than {MAX_SIGNATURES} signatures")
    out = []
    for i, s in enumerate(sigs):
        if not isinstance(s, dict) or set(s) != {"keyid", "sig"}:
            raise TrustRejected("bad_envelope", f"signatures.{i}: needs keyid and sig only")
        kid = s["keyid"]
        if not isinstance(kid, str) or len(kid) > 64:
            raise TrustRejected("bad_envelope", f"signatures.{i}.keyid: not a short string")
        out.append((kid, _b64(s["sig"], f"signatures.{i}.sig", 128)))
    return Envelope(ptype, body, tuple(out))


def count_valid(env: Envelope, keyset: KeySet) -> tuple[int, bool, bool]:
    """(distinct trusted key ids that signed validly, any trusted sig failed, any known key)."""
    message = pae(env.payload_type, env.body)
    valid: set[str] = set()
    failed = known = False
    for kid, sig in env.signatures:
        key = keyset.keys.get(kid)
        if key is None:
            continue
        known = True
        if kid in valid:
            continue
        try:
            key.verify(sig, message)
        except InvalidSignature:
            failed = True
            continue
        valid.add(kid)
    return len(valid), failed, known


def check_threshold(env: Envelope, keyset: KeySet, what: str = "") -> None:
    valid, failed, known = count_valid(env, keyset)
    if valid >= keyset.threshold:
        return
    if failed:
        raise TrustRejected("bad_signature", f"{what}a signature by a trusted key does not verify")
    if valid:
        raise TrustRejected(
            "threshold", f"{what}{valid} of the {keyset.threshold} required keys signed"
        )
    if not known:
        raise TrustRejected("untrusted_key", f"{what}no signature by a trusted key")
    raise TrustRejected("bad_signature", f"{what}no valid signature")


def _number(doc: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise TrustRejected("bad_document", f"{name}: missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1e11:
        raise TrustRejected("bad_document", f"{name}: not a unix time / version number")
    return float(value)


class TrustStore:
    """Verifies HQ's envelopes; keeps trusted time, versions and keys monotonic."""

    def __init__(
        self,
        cfg: TrustSection,
        *,
        extra_keys: Iterable[str] = (),
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self._wall = wall
        self._lock = threading.Lock()
        pairs = [(k.id, k.public_key.lower()) for k in cfg.keys]
        # [decision] trusted_keys (legacy): hex public keys, trusted as extra root keys.
        for hex_key in extra_keys:
            kid = key_id(bytes.fromhex(hex_key))
            if kid not in {p[0] for p in pairs}:
                pairs.append((kid, hex_key.lower()))
        self.root = KeySet.from_pairs(pairs, min(cfg.threshold, max(1, len(pairs))))
        self.keyset = self.root
        self._state: dict[str, float] = {}
        self._dirty: dict[str, float] = {}
        self._keys_dirty: tuple[int, str] | None = None
        self._log = get_logger("trust")
        if cfg.allow_unsigned_downlink:
            self._log.warning(
                "trust_unsigned_downlink_allowed",
                detail="[trust] allow_unsigned_downlink = true: unsigned HQ messages are "
                "APPLIED; a pilot setting, never for production",
            )

    # -- state -------------------------------------------------------------------

    def load(self, conn: Any) -> None:
        """Read the persisted state (writer thread, at start)."""
        state = trust_rows.load_state(conn)
        rotated = trust_rows.load_keys(conn)
        with self._lock:
            self._state = state
            if rotated is not None:
                version, text = rotated
                self.keyset = _keyset_of(json.loads(text), version)

    def save(self, conn: Any) -> None:
        """Write what changed since the last save, in the caller's transaction."""
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            keys, self._keys_dirty = self._keys_dirty, None
        if dirty:
            trust_rows.raise_state(conn, dirty)
        if keys is not None:
            trust_rows.save_keys(conn, *keys)

    def trusted_time(self) -> float:
        """max(system clock, the highest signed issued_at ever accepted)."""
        return max(self._wall(), self._state.get("time", 0.0))

    def _raise(self, name: str, value: float) -> None:
        if value > self._state.get(name, float("-inf")):
            self._state[name] = value
            self._dirty[name] = value

    @property
    def has_keys(self) -> bool:
        return bool(self.keyset.keys)

    # -- open --------------------------------------------------------------------

    def open(
        self,
        kind: str,
        payload: bytes,
        *,
        store_id: str,
        inner_check: Callable[[bytes], None] | None = None,
    ) -> dict[str, Any]:
        """The verified inner document of ``payload`` for ``kind``; ``TrustRejected`` if not.

        ``inner_check`` bounds the inner JSON's shape before it is parsed. With
        ``allow_unsigned_downlink`` an unsigned plain message is returned as it is.
        """
        try:
            env = parse_envelope(payload)
        except TrustRejected as exc:
            if exc.code == "unsigned" and self.cfg.allow_unsigned_downlink:
                self._log.warning("trust_unsigned_accepted", kind=kind[:32], size=len(payload))
                return self._plain(payload, inner_check)
            raise
        if env.payload_type != payload_type(kind):
            raise TrustRejected("bad_envelope", "payloadType does not match the topic's kind")
        with self._lock:
            if not self.keyset.keys:
                raise TrustRejected("untrusted_key", "no HQ keys configured ([trust] keys)")
            check_threshold(env, self.keyset)
            doc = self._inner(env.body, inner_check)
            self._check_doc(kind, doc, store_id)
            if kind == KEYS_KIND:
                self._rotate(env, doc)
            self._accept(kind, doc)
        return doc

    def _plain(self, payload: bytes, inner_check: Callable[[bytes], None] | None) -> dict[str, Any]:
        if len(payload) > MAX_ENVELOPE_BYTES:
            raise TrustRejected("too_large", "payload too large")
        return self._inner(payload, inner_check)

    @staticmethod
    def _inner(body: bytes, inner_check: Callable[[bytes], None] | None) -> dict[str, Any]:
        if inner_check is not None:
            inner_check(body)
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise TrustRejected("bad_document", "inner payload is not JSON") from None
        except RecursionError:
            raise TrustRejected("bad_document", "inner payload nested too deeply") from None
        if not isinstance(doc, dict):
            raise TrustRejected("bad_document", "inner payload is not a JSON object")
        return doc

    def _check_doc(self, kind: str, doc: dict[str, Any], store_id: str) -> None:
        target = doc.get("store")
        if target is not None and target != store_id:
            raise TrustRejected("wrong_store", "addressed to another store")
        issued = _number(doc, "issued_at", required=True)
        expires = _number(doc, "expires", required=True)
        assert issued is not None and expires is not None
        now = self.trusted_time()
        if expires + self.cfg.max_clock_skew_s < now:
            raise TrustRejected("expired", "expired before the store's trusted time")
        version = _number(doc, "version", required=kind in VERSIONED_KINDS)
        if version is not None:
            last = self._state.get(_version_name(kind, target))
            if last is not None and version <= last:
                raise TrustRejected("not_newer", "version is not above the last one accepted")
        if kind == KEYS_KIND and version is not None and version <= self.keyset.version:
            raise TrustRejected("not_newer", "keys version is not above the current one")

    def _accept(self, kind: str, doc: dict[str, Any]) -> None:
        self._raise("time", float(doc["issued_at"]))
        if doc.get("version") is not None:
            self._raise(_version_name(kind, doc.get("store")), float(doc["version"]))

    def _rotate(self, env: Envelope, doc: dict[str, Any]) -> None:
        version = int(doc["version"])
        try:
            new = _keyset_of(doc, version)
        except (KeyError, TypeError, ValueError) as exc:
            raise TrustRejected("bad_keys", f"keys document: {type(exc).__name__}") from None
        check_threshold(env, new, "new keys: ")
        self.keyset = new
        self._keys_dirty = (version, json.dumps(_keys_doc(doc), separators=(",", ":")))
        self._log.warning(
            "trust_keys_rotated", version=version, keys=sorted(new.keys), threshold=new.threshold
        )


def _version_name(kind: str, target: Any) -> str:
    return f"version:{kind}:{target if isinstance(target, str) else 'fleet'}"


def _keys_doc(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {"keys": doc["keys"], "threshold": doc["threshold"]}


def _keyset_of(doc: Mapping[str, Any], version: int) -> KeySet:
    keys = doc["keys"]
    threshold = doc["threshold"]
    if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_KEYS:
        raise ValueError("keys: 1 to 32 keys")
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise TypeError("threshold")
    if not 1 <= threshold <= len(keys):
        raise ValueError("threshold out of range")
    pairs = []
    for k in keys:
        if not isinstance(k, dict) or set(k) != {"id", "public_key"}:
            raise ValueError("key entries need id and public_key")
        kid, pub = k["id"], k["public_key"]
        if not isinstance(kid, str) or not isinstance(pub, str) or len(pub) != 64:
            raise ValueError("key entry types")
        pairs.append((kid, pub))
    if len({p[0] for p in pairs}) != len(pairs):
        raise ValueError("duplicate key ids")
    return KeySet.from_pairs(pairs, threshold, version)


def strip_trust_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """The kind's own message: the inner document without the trust layer's fields."""
    return {k: v for k, v in doc.items() if k not in TRUST_FIELDS}
