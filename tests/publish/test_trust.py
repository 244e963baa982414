"""TrustStore: DSSE envelopes, thresholds, trusted time, versions, rotation."""

from __future__ import annotations

import base64
import json
import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import TrustSection
from gateway.hq.signing import Signer, keys_document, seal
from gateway.publish.trust import TrustRejected, TrustStore
from gateway.storage import migrations as _migrations  # noqa: F401
from gateway.storage import trust as trust_rows

NOW = 1_800_000_000.0


def _cfg(signers: list[Signer], threshold: int = 1, **kw: Any) -> TrustSection:
    return TrustSection(
        keys=tuple(s.config_entry() for s in signers),  # type: ignore[arg-type]
        threshold=threshold,
        **kw,
    )


def _doc(**kw: Any) -> dict[str, Any]:
    return {"v": 1, "id": "m1", "issued_at": NOW, "expires": NOW + 3600, **kw}


def _store(signers: list[Signer], threshold: int = 1, **kw: Any) -> TrustStore:
    return TrustStore(_cfg(signers, threshold, **kw), wall=lambda: NOW)


def _code(fn: Any) -> str:
    with pytest.raises(TrustRejected) as info:
        fn()
    return info.value.code


def test_signed_opens_and_forgeries_are_refused() -> None:
    hq, other = Signer.generate(), Signer.generate()
    trust = _store([hq])
    assert trust.open("consent", hq.envelope("consent", _doc()), store_id="s1")["id"] == "m1"
    assert (
        _code(lambda: trust.open("consent", other.envelope("consent", _doc()), store_id="s1"))
        == "untrusted_key"
    )
    assert (
        _code(lambda: trust.open("consent", json.dumps(_doc()).encode(), store_id="s1"))
        == "unsigned"
    )
    env = json.loads(hq.envelope("consent", _doc()))
    env["payload"] = base64.b64encode(json.dumps(_doc(id="m2")).encode()).decode()
    assert (
        _code(lambda: trust.open("consent", json.dumps(env).encode(), store_id="s1"))
        == "bad_signature"
    )
    env["payload"] = "!!notbase64"
    assert (
        _code(lambda: trust.open("consent", json.dumps(env).encode(), store_id="s1"))
        == "bad_envelope"
    )
    # A profiles envelope replayed on the consent topic.
    assert (
        _code(lambda: trust.open("consent", hq.envelope("profiles", _doc()), store_id="s1"))
        == "bad_envelope"
    )
    assert _code(lambda: trust.open("consent", b"x" * (200 * 1024), store_id="s1")) == "too_large"


def test_expiry_store_version_threshold() -> None:
    a, b = Signer.generate(), Signer.generate()
    trust = _store([a, b], threshold=2)
    both = seal("inventory", _doc(version=5), [a, b])
    assert trust.open("inventory", both, store_id="s1")["version"] == 5
    assert (
        _code(
            lambda: trust.open(
                "inventory", seal("inventory", _doc(version=4), [a, b]), store_id="s1"
            )
        )
        == "not_newer"
    )
    assert (
        _code(
            lambda: trust.open("inventory", seal("inventory", _doc(version=9), [a]), store_id="s1")
        )
        == "threshold"
    )
    old = _doc(version=10, issued_at=NOW - 9000, expires=NOW - 7200)
    assert (
        _code(lambda: trust.open("inventory", seal("inventory", old, [a, b]), store_id="s1"))
        == "expired"
    )
    wrong = seal("inventory", _doc(version=11, store="s2"), [a, b])
    assert _code(lambda: trust.open("inventory", wrong, store_id="s1")) == "wrong_store"


def test_trusted_time_survives_a_clock_going_back_and_a_restart(tmp_path: Any) -> None:
    hq = Signer.generate()
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.executescript(
        "CREATE TABLE trust_state (name TEXT PRIMARY KEY, value REAL NOT NULL);"
        "CREATE TABLE trust_keys (version INTEGER NOT NULL, document TEXT NOT NULL);"
    )
    trust = _store([hq])
    ts = seal(
        "timestamp", {"v": 1, "version": 1, "issued_at": NOW + 86400, "expires": NOW + 90000}, [hq]
    )
    trust.open("timestamp", ts, store_id="s1")
    trust.save(conn)
    # Restart with the clock a day behind: a document that expired yesterday stays expired.
    again = TrustStore(_cfg([hq]), wall=lambda: NOW - 86400)
    again.load(conn)
    assert again.trusted_time() == NOW + 86400
    stale = _doc(issued_at=NOW, expires=NOW + 3600)
    assert (
        _code(lambda: again.open("consent", hq.envelope("consent", stale), store_id="s1"))
        == "expired"
    )
    assert trust_rows.load_state(conn)["time"] == NOW + 86400


def test_key_rotation_needs_old_and_new_keys() -> None:
    old, new = Signer.generate(), Signer.generate()
    trust = _store([old])
    doc = {**keys_document(2, [new.config_entry()], 1), "issued_at": NOW, "expires": NOW + 60}
    assert (
        _code(lambda: trust.open("keys", seal("keys", doc, [old]), store_id="s1"))
        == "untrusted_key"
    )
    trust.open("keys", seal("keys", doc, [old, new]), store_id="s1")
    assert (
        _code(lambda: trust.open("consent", old.envelope("consent", _doc()), store_id="s1"))
        == "untrusted_key"
    )
    assert trust.open("consent", new.envelope("consent", _doc()), store_id="s1")["id"] == "m1"


def test_pilot_switch_accepts_unsigned() -> None:
    trust = _store([Signer.generate()], allow_unsigned_downlink=True)
    assert trust.open("consent", json.dumps(_doc()).encode(), store_id="s1")["id"] == "m1"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_garbage_is_refused_never_crashes(data: bytes) -> None:
    trust = _store([Signer.generate()])
    with pytest.raises(TrustRejected):
        trust.open("consent", data, store_id="s1")


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda c: (
            st.lists(c, max_size=4)
            | st.dictionaries(
                st.sampled_from(["payloadType", "payload", "signatures", "keyid", "sig", "x"]),
                c,
                max_size=4,
            )
        ),
        max_leaves=20,
    )
)
def test_hostile_envelopes_are_refused(doc: Any) -> None:
    trust = _store([Signer.generate()])
    with pytest.raises(TrustRejected):
        trust.open("consent", json.dumps(doc).encode(), store_id="s1")
