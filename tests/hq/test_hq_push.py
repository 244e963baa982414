"""`store-gateway hq push-profiles` and `push-consent`: pilot files published to a real broker."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from gateway.hq.tools import loyalty_hash
from gateway.identity.tokens import day_key
from gateway.publish.downlink import decode
from gateway.testing.mosquitto import MosquittoBroker
from gateway.testing.subscriber import TopicRecorder

ROOT = bytes(range(32))


def push(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "hq", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_push_profiles_sends_day_keys_and_hashes_never_the_root_key(
    tmp_path: Path, hq_broker: MosquittoBroker
) -> None:
    """A pilot file becomes a valid profiles message with today's and tomorrow's day keys,
    salted loyalty hashes, and no root key or loyalty number."""
    pilot = tmp_path / "shoppers.json"
    pilot.write_text(
        json.dumps(
            {
                "shoppers": [
                    {
                        "shopper": "s-17",
                        "root_key": ROOT.hex(),
                        "loyalty_ids": ["9900011122233"],
                        "consent": {"scopes": ["presence", "associate_assist"]},
                    }
                ]
            }
        )
    )
    salt = tmp_path / "salt"
    salt.write_bytes(b"fleet-salt\n")
    topic = "retail/v1/stores/S1/down/profiles"
    with TopicRecorder(hq_broker.port, [topic]) as rec:
        out = push(
            "push-profiles",
            "--file",
            str(pilot),
            "--store",
            "S1",
            "--broker",
            f"127.0.0.1:{hq_broker.port}",
            "--loyalty-salt-file",
            str(salt),
        )
        assert out.returncode == 0, out.stderr
        got = rec.wait_for(topic, timeout_s=10)
    assert got is not None
    raw = json.dumps(got.doc).encode()
    assert ROOT.hex().encode() not in raw
    assert b"9900011122233" not in raw
    msg = decode("profiles", raw, 128 * 1024)
    (entry,) = msg.upserts  # type: ignore[attr-defined]
    today = dt.datetime.now(dt.UTC).date()
    assert entry.day_keys == {
        (today + dt.timedelta(days=d)).isoformat(): day_key(
            ROOT, today + dt.timedelta(days=d)
        ).hex()
        for d in (0, 1)
    }
    assert entry.loyalty_hashes == [loyalty_hash(b"fleet-salt", "9900011122233")]
    assert sorted(entry.consent.scopes) == ["associate_assist", "presence"]
    assert "1/1 messages acknowledged" in out.stdout


def test_push_consent_publishes_an_opt_out_to_the_fleet(
    tmp_path: Path, hq_broker: MosquittoBroker
) -> None:
    """`push-consent --fleet` publishes the changes as one valid consent message."""
    changes = tmp_path / "changes.json"
    changes.write_text(json.dumps({"changes": [{"shopper": "s-17", "action": "opt_out"}]}))
    topic = "retail/v1/fleet/down/consent"
    with TopicRecorder(hq_broker.port, [topic]) as rec:
        out = push(
            "push-consent",
            "--file",
            str(changes),
            "--fleet",
            "--broker",
            f"127.0.0.1:{hq_broker.port}",
        )
        assert out.returncode == 0, out.stderr
        got = rec.wait_for(topic, timeout_s=10)
    assert got is not None
    msg = decode("consent", json.dumps(got.doc).encode(), 128 * 1024)
    assert [(c.shopper, c.action) for c in msg.changes] == [("s-17", "opt_out")]  # type: ignore[attr-defined]


def test_push_profiles_refuses_a_short_root_key(tmp_path: Path, hq_broker: MosquittoBroker) -> None:
    """A root key that is not 32 bytes is an error naming the shopper, and nothing is sent."""
    pilot = tmp_path / "shoppers.json"
    pilot.write_text(json.dumps({"shoppers": [{"shopper": "s-1", "root_key": "00ff"}]}))
    out = push(
        "push-profiles",
        "--file",
        str(pilot),
        "--store",
        "S1",
        "--broker",
        f"127.0.0.1:{hq_broker.port}",
    )
    assert out.returncode == 1
    assert "s-1" in out.stderr
