"""Downlink load for the daemon tests and bench/downlink.py: floods, fuzz, and what to watch.

What HQ sends (valid profile pages of a given size, small profile messages, an
opt-out, fuzzed messages up to the size cap), a publisher that keeps a bounded
number of them unacknowledged by HQ's broker (so the test process does not hold
half a gigabyte), and three outside observers of the daemon: its RSS read from
``/proc``, a stand-in for systemd's notify socket that records every
``WATCHDOG=1``, and the loop lag read from its health messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

# HQ's profile pages in the flood were 115 KB each (the cap is 128 KiB).
PAGE_BYTES = 115 * 1024
# Unacknowledged publishes the load publisher keeps at HQ's broker: enough to keep
# the broker's socket busy, few enough that the test process stays small.
PUBLISH_WINDOW = 200


# -- what HQ sends --------------------------------------------------------------------


def _upsert(rng: random.Random, shopper: str, page: int, now_s: float) -> dict[str, Any]:
    """One profile as HQ syncs it: two day keys, a tag, a loyalty hash, consent."""
    return {
        "shopper": shopper,
        "expires_at": now_s + 7 * 86400,
        "day_keys": {"2026-11-18": rng.randbytes(32).hex(), "2026-11-19": rng.randbytes(32).hex()},
        "eid_tags": [
            {
                "tag": f"tag-{shopper}",
                "identity_key": rng.randbytes(16).hex(),
                "k": 10,
                "epoch_offset_s": 0,
            }
        ],
        "loyalty_hashes": [rng.randbytes(32).hex()],
        "consent": {"scopes": ["presence", "associate_assist"], "expires_at": now_s + 365 * 86400},
        # The page that last wrote the profile: a test reads it back to check that every
        # page was applied, in order.
        "attributes": {"page": page, "segments": ["family", "organic"]},
    }


def page_upserts(target_bytes: int = PAGE_BYTES) -> int:
    """How many upserts fill a page of about ``target_bytes`` (never more)."""
    one = len(json.dumps(_upsert(random.Random(0), "shopper-000000", 0, 1.8e9)))
    return max(1, (target_bytes - 64) // (one + 2))


def page_shoppers(page: int, pool: int, per_page: int) -> list[str]:
    """The shoppers page ``page`` upserts: the next ``per_page`` of a pool, round robin."""
    start = page * per_page
    return [f"shopper-{(start + i) % pool:06d}" for i in range(per_page)]


def profile_page(page: int, pool: int, per_page: int, now_s: float) -> bytes:
    """A valid ``profiles`` message (id ``page-{page}``) of ``per_page`` upserts."""
    rng = random.Random(page)
    ups = [_upsert(rng, s, page, now_s) for s in page_shoppers(page, pool, per_page)]
    return json.dumps({"v": 1, "id": f"page-{page}", "upserts": ups}).encode()


def profiles_message(message_id: str, shoppers: list[str], now_s: float) -> bytes:
    """A valid ``profiles`` message with a small profile for each of ``shoppers``."""
    ups = [
        {
            "shopper": shopper,
            "expires_at": now_s + 86400,
            "day_keys": {"2026-11-23": hashlib.sha256(shopper.encode()).hexdigest()},
            "consent": {"scopes": ["presence"], "expires_at": now_s + 86400},
        }
        for shopper in shoppers
    ]
    return json.dumps({"v": 1, "id": message_id, "upserts": ups}).encode()


def small_profile(i: int, now_s: float) -> bytes:
    """A valid one-shopper ``profiles`` message: id ``valid-{i}``, shopper ``good-{i}``."""
    return profiles_message(f"valid-{i}", [f"good-{i}"], now_s)


def opt_out(message_id: str, shopper: str) -> bytes:
    """A ``consent`` message opting ``shopper`` out."""
    change = {"shopper": shopper, "action": "opt_out"}
    return json.dumps({"v": 1, "id": message_id, "changes": [change]}).encode()


def fuzzed(rng: random.Random, i: int, max_bytes: int) -> tuple[str, bytes]:
    """One of many ways a message can be wrong, of any size up to ``max_bytes``: bytes,
    JSON, schema, shape (deep, long, wide), hostile values, kind, and a few over the cap."""
    # Most of the large kinds fill a good part of the cap: about 50 KB a message on average.
    size = rng.randrange(max_bytes // 3, max_bytes)
    choice = rng.randrange(14)
    kind = rng.choice(["profiles", "consent"])
    good = small_profile(i, 1.8e9)
    if choice == 0:
        return kind, rng.randbytes(size)
    if choice == 1:  # a big valid-looking page, cut short
        page = profile_page(i, 10_000, max(1, size // 560), 1.8e9)
        return "profiles", page[: rng.randrange(1, len(page) - 1)]
    if choice == 2:
        return kind, good.replace(b'"v": 1', b'"v": ' + str(rng.randrange(2, 99)).encode())
    if choice == 3:
        doc = json.loads(good)
        doc["upserts"][0]["day_keys"] = {"2026-11-23": rng.randbytes(8).hex()}
        return "profiles", json.dumps(doc).encode()
    if choice == 4:
        doc = json.loads(good)
        doc["upserts"][0]["expires_at"] = rng.choice(["soon", None, [], {"a": 1}, -5, 1e300])
        return "profiles", json.dumps(doc).encode()
    if choice == 5:
        bad = {"shopper": "x" * rng.randrange(65, 500), "action": "opt_out"}
        return "consent", json.dumps({"v": 1, "id": f"c{i}", "changes": [bad]}).encode()
    if choice == 6:  # nested as deep as the size allows
        return kind, b"[" * (size // 2) + b"]" * (size // 2)
    if choice == 7:  # one long array of numbers
        return kind, b'{"v":1,"id":"l%d","deletes":[' % i + b"0," * (size // 2) + b"0]}"
    if choice == 8:  # many small objects
        return kind, b'{"v":1,"id":"o%d","upserts":[' % i + b"{}," * (size // 3) + b"{}]}"
    if choice == 9:  # a page with a field the schema does not know, at full size
        page = json.loads(profile_page(i, 10_000, max(1, size // 560), 1.8e9))
        page["extra"] = True
        return "profiles", json.dumps(page).encode()
    if choice == 10:
        return rng.choice(["teleport", "model", "x" * 40]), good
    if choice == 11:  # over the cap: refused unread
        return kind, b'{"v":1,"id":"big","pad":"' + b"a" * max_bytes + b'"}'
    if choice == 12:  # one huge string
        return kind, b'{"v":1,"id":"s%d","deletes":["' % i + b"a" * size + b'!"]}'
    return kind, json.dumps(rng.choice([1, "s", None, [1, 2], {"v": "1"}])).encode()


# -- publishing -----------------------------------------------------------------------


class LoadPublisher:
    """Publishes at QoS 1 to HQ's broker, never more than ``window`` unacknowledged."""

    def __init__(self, port: int, window: int = PUBLISH_WINDOW, host: str = "127.0.0.1") -> None:
        self.window = window
        self.published = 0
        self.acked = 0
        self.failed = 0
        self._cond = threading.Condition()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"load-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.max_inflight_messages_set(window)
        self._client.on_publish = self._on_publish
        self._client.connect(host, port)
        self._client.loop_start()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._cond:
            self.acked += 1
            if getattr(reason, "is_failure", False):
                self.failed += 1
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes, timeout_s: float = 60.0, qos: int = 1) -> None:
        """Publish one message, first waiting until fewer than ``window`` are unacknowledged
        (at QoS 0, until fewer than ``window`` are unwritten)."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self.published - self.acked < self.window, timeout_s
            ):
                raise TimeoutError("HQ's broker stopped acknowledging")
            self.published += 1
        self._client.publish(topic, payload, qos=qos)

    def publish_all(
        self, messages: Iterable[tuple[str, bytes]], timeout_s: float = 60.0, qos: int = 1
    ) -> int:
        """Publish every ``(topic, payload)`` and wait for all PUBACKs; how many were sent."""
        n = 0
        for topic, payload in messages:
            self.publish(topic, payload, timeout_s, qos)
            n += 1
        self.wait_acked(timeout_s)
        return n

    def wait_acked(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.acked >= self.published, timeout_s)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# -- observing the daemon -------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class RssSampler:
    """Samples a process's RSS from ``/proc`` every ``interval_s`` on a thread."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = rss_bytes(self.pid)
            if rss is None:
                return
            with self._lock:
                self.samples.append((time.monotonic(), rss))

    def peak(self, since: float | None = None, until: float | None = None) -> int:
        with self._lock:
            return max(
                (
                    r
                    for t, r in self.samples
                    if (since is None or t >= since) and (until is None or t <= until)
                ),
                default=0,
            )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


class NotifySocket:
    """A stand-in for systemd's notify socket (abstract namespace): the arrival time of
    every ``WATCHDOG=1`` the daemon sends."""

    def __init__(self, watchdog_usec: int) -> None:
        self.watchdog_usec = watchdog_usec
        self.name = f"sgw-notify-{uuid.uuid4().hex[:12]}"
        self.pings: list[float] = []
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.name)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-socket", daemon=True)
        self._thread.start()

    def env(self) -> dict[str, str]:
        """The variables systemd sets for a unit with ``WatchdogSec``."""
        return {"NOTIFY_SOCKET": "@" + self.name, "WATCHDOG_USEC": str(self.watchdog_usec)}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self._lock:
                for line in data.decode(errors="replace").splitlines():
                    self.messages.append(line)
                    if line == "WATCHDOG=1":
                        self.pings.append(now)

    def max_gap_s(self, since: float, until: float) -> float:
        """The longest time between ``since``, the pings in between, and ``until``."""
        with self._lock:
            times = [since, *(t for t in self.pings if since < t < until), until]
        return max(b - a for a, b in itertools.pairwise(times))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(OSError):
            self._sock.close()


def loop_lag_s(health: list[dict[str, Any]], interval_s: float) -> float:
    """The worst loop lag in a run of health documents: the daemon's own figure
    (``loop_lag_ms``, sampled by its watchdog) or how much later than ``interval_s``
    after the previous one a document was stamped (``ts``, taken when the daemon's
    health timer fired, so the observer's own delays do not count)."""
    worst = max((doc.get("loop_lag_ms", 0) / 1000 for doc in health), default=0.0)
    stamps = [doc["ts"] for doc in health if isinstance(doc.get("ts"), int | float)]
    for a, b in itertools.pairwise(stamps):
        worst = max(worst, b - a - interval_s)
    return worst
