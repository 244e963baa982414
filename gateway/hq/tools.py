"""HQ tools for a pilot without an HQ backend: turn files into downlink messages and publish them.

``store-gateway hq push-profiles`` reads shoppers with their *root* keys (HQ's
secret), derives the day keys a store may hold (today and tomorrow, UTC: a
stolen gateway exposes at most two days), hashes loyalty numbers with the
fleet's salt, pages the result under the 128 KiB payload cap and publishes it
at QoS 1. ``hq push-consent`` publishes consent changes. Root keys never leave
this tool.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.errors import ConfigError
from gateway.identity.loyalty import loyalty_hash
from gateway.identity.tokens import day_key
from gateway.publish import topics

# Stay clearly under the 128 KiB cap (docs/contracts.md section 3) once topic and
# headers are added.
PAGE_BYTES = 120 * 1024
# Day keys sent per shopper: today and tomorrow (docs/contracts.md section 2).
DAYS_AHEAD = 2
DEFAULT_PROFILE_DAYS = 7


def profile_entry(shopper: dict[str, Any], now: dt.datetime, salt: bytes | None) -> dict[str, Any]:
    """One ``upserts`` entry from a pilot file's shopper (root key -> day keys)."""
    entry: dict[str, Any] = {"shopper": str(shopper["shopper"])}
    expires = shopper.get("expires_at")
    entry["expires_at"] = float(
        expires
        if expires is not None
        else (now + dt.timedelta(days=DEFAULT_PROFILE_DAYS)).timestamp()
    )
    if "root_key" in shopper:
        root = bytes.fromhex(shopper["root_key"])
        if len(root) != 32:
            raise ValueError(f"shopper {entry['shopper']}: root_key must be 32 bytes of hex")
        today = now.astimezone(dt.UTC).date()
        entry["day_keys"] = {
            (today + dt.timedelta(days=d)).isoformat(): day_key(
                root, today + dt.timedelta(days=d)
            ).hex()
            for d in range(DAYS_AHEAD)
        }
    if shopper.get("eid_tags"):
        entry["eid_tags"] = shopper["eid_tags"]
    if shopper.get("ibeacon_tags"):
        entry["ibeacon_tags"] = shopper["ibeacon_tags"]
    hashes = list(shopper.get("loyalty_hashes", []))
    if shopper.get("loyalty_ids"):
        if salt is None:
            raise ValueError("loyalty_ids need --loyalty-salt-file")
        hashes += [loyalty_hash(salt, n) for n in shopper["loyalty_ids"]]
    if hashes:
        entry["loyalty_hashes"] = hashes
    if shopper.get("consent"):
        consent = dict(shopper["consent"])
        consent.setdefault("expires_at", entry["expires_at"])
        entry["consent"] = consent
    if shopper.get("attributes"):
        entry["attributes"] = shopper["attributes"]
    return entry


def paged(key: str, entries: Iterable[dict[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """Messages of ``entries`` under ``key``, each under PAGE_BYTES, each with a fresh id."""
    messages: list[dict[str, Any]] = []
    page: list[dict[str, Any]] = []
    size = 200
    for entry in entries:
        n = len(json.dumps(entry, separators=(",", ":"))) + 1
        if page and (size + n > PAGE_BYTES or len(page) >= 5000):
            messages.append(page)  # type: ignore[arg-type]
            page, size = [], 200
        page.append(entry)
        size += n
    if page:
        messages.append(page)  # type: ignore[arg-type]
    return [
        {"v": 1, "id": f"hq-{uuid.uuid4().hex}", "issued_at": now.timestamp(), key: p}
        for p in messages
    ]


def profiles_messages(
    doc: dict[str, Any], now: dt.datetime, salt: bytes | None
) -> list[dict[str, Any]]:
    """Downlink ``profiles`` messages from a pilot file (or a ready message, passed through)."""
    if doc.get("v") == 1 and "id" in doc:
        return [doc]
    upserts = [profile_entry(s, now, salt) for s in doc.get("shoppers", [])]
    messages = paged("upserts", upserts, now)
    if doc.get("deletes"):
        messages += paged("deletes", doc["deletes"], now)
    return messages


def consent_messages(doc: dict[str, Any], now: dt.datetime) -> list[dict[str, Any]]:
    """Downlink ``consent`` messages from a file of ``changes`` (or a ready message)."""
    if doc.get("v") == 1 and "id" in doc:
        return [doc]
    return paged("changes", doc.get("changes", []), now)


class Publisher:
    """A short-lived MQTT v5 client that publishes at QoS 1 and waits for every PUBACK."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"store-gateway-hq-tool-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        password = os.environ.get("STORE_GATEWAY_HQ_PASSWORD")
        if username:
            self._client.username_pw_set(username, password)
        if ca_file or cert_file:
            ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if cert_file and key_file:
                ctx.load_cert_chain(str(cert_file), str(key_file))
            self._client.tls_set_context(ctx)
        self._acked: set[int] = set()
        self._failed: list[int] = []
        self._cond = threading.Condition()
        self._client.on_publish = self._on_publish
        try:
            self._client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise ConfigError([(f"{host}:{port}", f"cannot connect: {exc}")]) from exc
        self._client.loop_start()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._cond:
            self._acked.add(mid)
            if getattr(rc, "is_failure", False):
                self._failed.append(mid)
            self._cond.notify_all()

    def publish_all(self, topic: str, messages: list[dict[str, Any]], timeout_s: float) -> int:
        """Publish every message; how many HQ's broker acknowledged without failure."""
        mids = []
        for m in messages:
            info = self._client.publish(topic, json.dumps(m, separators=(",", ":")), qos=1)
            mids.append(info.mid)
        with self._cond:
            self._cond.wait_for(lambda: all(m in self._acked for m in mids), timeout_s)
            return sum(1 for m in mids if m in self._acked and m not in self._failed)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def downlink_topic(kind: str, store: str | None) -> str:
    return topics.hq_down(store, kind) if store else topics.fleet_down(kind)
