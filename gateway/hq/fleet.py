"""HQ's view of the fleet's models, and the staged rollout that waits on it.

Every store keeps one retained message at ``retail/v1/stores/{store}/up/model_state``
(docs/mqtt-api.md): its active version, the version it is downloading or
shadowing, the state with its reason, and when it said so. Retained, so this
tool needs no database: it subscribes, takes what the broker holds, and prints
one row per store with a count per state at the end (``hq fleet status``).

A staged rollout (``hq publish-model --fleet --stages 5,25,100``) publishes the
release for the first share of the fleet (the stores ``rollout.selected`` picks,
the same computation the store makes), then waits until every one of those
stores reports the version ``active`` with its probation over, and only then
publishes the next share. A store that reports the version ``rejected`` or
``rolled_back`` stops the rollout (as hawkBit's error threshold, with a
threshold of ``max_failures``), and so does a stage that does not finish in
time: the rest of the fleet never gets a model its canaries refused.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.publish.rollout import selected

STATES = ("downloading", "verifying", "shadow", "active", "rolled_back", "rejected")
FAILED_STATES = ("rejected", "rolled_back")
MODEL_STATE_FILTER = "retail/v1/stores/+/up/model_state"
STATUS_FILTER = "retail/v1/stores/+/status"


@dataclass(slots=True)
class StoreRow:
    """What one store last said about its models (and whether it is online)."""

    store: str
    active_version: int | None = None
    pending_version: int | None = None
    state: str | None = None
    version: int | None = None
    reason: str | None = None
    received: int | None = None
    total: int | None = None
    probation_left_s: float | None = None
    reported_at: float | None = None
    online: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "active_version": self.active_version,
            "pending_version": self.pending_version,
            "state": self.state,
            "version": self.version,
            "reason": self.reason,
            "progress": (
                {"received": self.received, "total": self.total} if self.total is not None else None
            ),
            "probation_left_s": self.probation_left_s,
            "reported_at": self.reported_at,
            "online": self.online,
        }


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _store_of(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) >= 4 and parts[:3] == ["retail", "v1", "stores"] and parts[3]:
        return parts[3]
    return None


def apply_model_state(row: StoreRow, doc: Any) -> bool:
    """Fold one ``up/model_state`` envelope into ``row``; False when it is not one."""
    if not isinstance(doc, dict) or doc.get("v") != 1 or not isinstance(doc.get("data"), dict):
        return False
    data = doc["data"]
    state = data.get("state")
    if state not in STATES:
        return False
    row.state = state
    row.version = _int(data.get("version"))
    row.active_version = _int(data.get("active_version"))
    row.pending_version = _int(data.get("pending_version"))
    reason = data.get("reason")
    row.reason = reason[:200] if isinstance(reason, str) else None
    progress = data.get("progress")
    if isinstance(progress, dict):
        row.received = _int(progress.get("received"))
        row.total = _int(progress.get("total"))
    else:
        row.received = row.total = None
    row.probation_left_s = _num(data.get("probation_left_s"))
    row.reported_at = _num(doc.get("ts"))
    return True


class FleetView:
    """Rows by store, fed with (topic, payload) messages; thread-safe."""

    def __init__(self) -> None:
        self._rows: dict[str, StoreRow] = {}
        self._lock = threading.Lock()
        self.bad_messages = 0

    def feed(self, topic: str, payload: bytes) -> None:
        store = _store_of(topic)
        if store is None:
            return
        try:
            doc = json.loads(payload)
        except ValueError:
            with self._lock:
                self.bad_messages += 1
            return
        with self._lock:
            row = self._rows.setdefault(store, StoreRow(store))
            if topic.endswith("/status"):
                if isinstance(doc, dict) and doc.get("state") in ("online", "offline"):
                    row.online = doc["state"] == "online"
                return
            if not apply_model_state(row, doc):
                self.bad_messages += 1

    def rows(self) -> dict[str, StoreRow]:
        with self._lock:
            return {s: dataclasses.replace(r) for s, r in self._rows.items()}


def counts(rows: Iterable[StoreRow]) -> dict[str, int]:
    """How many stores are in each state (``unknown``: no model state retained yet)."""
    c: Counter[str] = Counter(r.state or "unknown" for r in rows)
    return dict(sorted(c.items()))


def render(rows: Mapping[str, StoreRow], now: float) -> str:
    """The table ``hq fleet status`` prints, a count per state at the end."""
    header = ("store", "active", "pending", "state", "progress", "reason", "reported", "online")
    lines = [header]
    for store in sorted(rows):
        r = rows[store]
        progress = f"{r.received}/{r.total}" if r.total else "-"
        ago = f"{max(0, round(now - r.reported_at))} s ago" if r.reported_at else "-"
        online = "-" if r.online is None else ("yes" if r.online else "no")
        lines.append(
            (
                store,
                "-" if r.active_version is None else str(r.active_version),
                "-" if r.pending_version is None else str(r.pending_version),
                r.state or "-",
                progress,
                r.reason or "-",
                ago,
                online,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    summary = ", ".join(f"{state} {n}" for state, n in counts(rows.values()).items())
    out.append(f"{len(rows)} stores: {summary}" if rows else "0 stores")
    return "\n".join(out)


class FleetWatcher:
    """A paho client holding a ``FleetView`` of the retained model states and statuses."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        tls_context: Any = None,
    ) -> None:
        self.view = FleetView()
        self._subscribed = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"store-gateway-hq-fleet-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if username:
            self._client.username_pw_set(username, password)
        if tls_context is not None:
            self._client.tls_set_context(tls_context)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = lambda c, u, m: self.view.feed(m.topic, bytes(m.payload))
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(MODEL_STATE_FILTER, 1), (STATUS_FILTER, 1)])

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._subscribed.wait(timeout_s)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# -- staged rollout ---------------------------------------------------------------------


@dataclass(slots=True)
class StageReport:
    share: float
    stores: list[str]
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)
    took_s: float = 0.0


@dataclass(slots=True)
class RolloutResult:
    version: int
    stages: list[StageReport]
    outcome: str  # "complete", "aborted" (a store failed), "timeout"

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "outcome": self.outcome,
            "stages": [
                {
                    "share": s.share,
                    "stores": s.stores,
                    "done": s.done,
                    "failed": s.failed,
                    "waiting": s.waiting,
                    "took_s": round(s.took_s, 1),
                }
                for s in self.stages
            ],
        }


def stage_stores(stores: Iterable[str], share: float) -> list[str]:
    """The stores a release for ``share`` of the fleet reaches (the store's own rule)."""
    return sorted(s for s in stores if selected(s, share))


def is_done(row: StoreRow | None, version: int) -> bool:
    """The store runs ``version`` and its probation is over (its guards held)."""
    return (
        row is not None
        and row.state == "active"
        and row.active_version == version
        and not row.probation_left_s
    )


def failure(row: StoreRow | None, version: int) -> str | None:
    """Why the store refused ``version``, if it did."""
    if row is None or row.version != version or row.state not in FAILED_STATES:
        return None
    return f"{row.state}: {row.reason or 'no reason given'}"


def parse_stages(text: str) -> list[float]:
    """``"5,25,100"`` (percent) as shares, rising, ending at the whole fleet."""
    try:
        shares = [float(p) / 100 for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise ValueError(f"--stages: {text!r} is not a list of percentages") from exc
    if not shares or any(not 0 < s <= 1 for s in shares):
        raise ValueError("--stages: each stage is a percentage above 0 and at most 100")
    if any(b <= a for a, b in itertools.pairwise(shares)):
        raise ValueError("--stages: each stage must be larger than the one before")
    if shares[-1] != 1.0:
        raise ValueError("--stages: the last stage must be 100 (the whole fleet)")
    return shares


def run_rollout(
    version: int,
    stages: Sequence[float],
    fleet: Callable[[], Iterable[str]],
    rows: Callable[[], Mapping[str, StoreRow]],
    publish_stage: Callable[[float], None],
    *,
    stage_timeout_s: float,
    max_failures: int = 0,
    poll_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_progress: Callable[[StageReport], None] | None = None,
) -> RolloutResult:
    """Publish each stage once the previous one's stores all report ``version`` active."""
    reports: list[StageReport] = []
    for share in stages:
        started = clock()
        publish_stage(share)
        report = StageReport(share=share, stores=stage_stores(fleet(), share))
        reports.append(report)
        while True:
            now_rows = rows()
            report.done = [s for s in report.stores if is_done(now_rows.get(s), version)]
            report.failed = {
                s: why for s in report.stores if (why := failure(now_rows.get(s), version))
            }
            report.waiting = [
                s for s in report.stores if s not in report.done and s not in report.failed
            ]
            report.took_s = clock() - started
            if on_progress is not None:
                on_progress(report)
            if len(report.failed) > max_failures:
                return RolloutResult(version, reports, "aborted")
            if not report.waiting:
                break
            if report.took_s >= stage_timeout_s:
                return RolloutResult(version, reports, "timeout")
            sleep(poll_s)
    return RolloutResult(version, reports, "complete")


# -- command line -----------------------------------------------------------------------


def cmd_status(args: Any) -> int:
    """``store-gateway hq fleet status``: the table (or ``--json``) of the retained states."""
    import sys

    host, _, port = args.broker.rpartition(":")
    try:
        watcher = FleetWatcher(
            host or "127.0.0.1",
            int(port),
            username=args.username,
            password=os.environ.get("STORE_GATEWAY_HQ_PASSWORD"),
        )
    except (OSError, ValueError) as exc:
        print(f"{args.broker}: cannot connect: {exc}", file=sys.stderr)
        return 1
    try:
        if not watcher.wait_subscribed(args.timeout):
            print(f"{args.broker}: no subscription acknowledged", file=sys.stderr)
            return 1
        # Retained messages arrive right after the SUBACK; wait until they stop coming.
        last, quiet_since = -1, time.monotonic()
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            n = len(watcher.view.rows())
            if n != last:
                last, quiet_since = n, time.monotonic()
            elif time.monotonic() - quiet_since >= args.settle:
                break
            time.sleep(0.05)
        rows = watcher.view.rows()
    finally:
        watcher.close()
    if args.json:
        doc = {
            "stores": [rows[s].as_dict() for s in sorted(rows)],
            "counts": counts(rows.values()),
        }
        print(json.dumps(doc, indent=1))
    else:
        print(render(rows, time.time()))
    return 0
