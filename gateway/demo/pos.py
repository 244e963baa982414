"""The demo store's checkout lane: a real kernel pty, receipts scanned item by item.

The till writes the shipped ``journal-dvr`` dialect's lines (one per event, as a
journal/DVR port prints them while the cashier scans) through a pty whose
slave the daemon reads as lane ``lane-1``. Each opted-in shopper checks out
once their walk reaches the checkout zone; the first scans their loyalty card
(the demo's profiles carry its salted hash, so the sale links to their visit)
and pays by card, whose number the dialect drops. Shoppers who did not opt in
check out too, anonymously.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gateway
from gateway.testing.pty_lane import PtyLane
from gateway.testing.receipts import GROCERIES, ScannedItem, journal_receipt

LANE = "lane-1"
DIALECT = "journal-dvr"
# The demo fleet's loyalty salt (a real fleet's is a secret file HQ and stores share).
SALT = b"demo-fleet-salt"
# The card the first opted-in shopper scans (their profile carries its salted hash).
LOYALTY_NUMBER = "9900011122233"
TEST_CARD = "4111111111111111"  # the well-known test PAN: the dialect drops its line
SCAN_GAP_S = 1.2  # between two scanned lines
RECEIPT_GAP_S = 2.0  # between two customers at the lane


def dialects_dir() -> Path:
    """The shipped dialects: the checkout's firmware_configs/pos, else the read-only copy
    install.sh keeps in /usr/share/store-gateway/pos (any user can run the demo)."""
    checkout = Path(gateway.__file__).resolve().parent.parent / "firmware_configs" / "pos"
    if (checkout / f"{DIALECT}.toml").exists():
        return checkout
    return Path("/usr/share/store-gateway/pos")


class DemoTill:
    """Receipts at their moments, written through a pty from a thread."""

    def __init__(
        self,
        workdir: Path,
        checkouts: list[tuple[str, float]],
        anonymous_at: list[float],
        suggestion: Callable[[str], str | None] | None = None,
    ) -> None:
        rng = random.Random(4)
        self.workdir = workdir
        self.pty = PtyLane(workdir / "ttyLANE1")
        self.salt_file = workdir / "loyalty.salt"
        self.salt_file.write_bytes(SALT)
        os.chmod(self.salt_file, 0o600)
        # What the associates suggested to a shopper (an item id), if anything: the
        # loyalty shopper takes the first suggestion to the till.
        self.suggestion = suggestion
        self.took_suggestion: str | None = None
        # (when, who, lines); the lane serves one customer at a time.
        sales: list[tuple[float, str | None]] = sorted(
            [(at, shopper) for shopper, at in checkouts] + [(at, None) for at in anonymous_at],
            key=lambda s: s[0],
        )
        self.loyalty_shopper = checkouts[0][0] if checkouts else None
        # (when, sale index, line index): lines are built when each sale starts, so
        # that a shopper can buy what was suggested to them minutes before.
        self.sales: list[tuple[int, str | None, list[ScannedItem]]] = []
        self.schedule: list[tuple[float, int, int]] = []
        free_at = 0.0
        for index, (at, shopper) in enumerate(sales):
            items = rng.sample(list(GROCERIES), rng.randint(3, 5))
            self.sales.append((101 + index, shopper, items))
            linked = shopper is not None and shopper == self.loyalty_shopper
            n_lines = len(journal_receipt(101 + index, items, loyalty="0" if linked else None))
            start = max(at, free_at)
            for i in range(n_lines):
                self.schedule.append((start + i * SCAN_GAP_S, index, i))
            free_at = start + n_lines * SCAN_GAP_S + RECEIPT_GAP_S
        self.receipts = len(sales)
        self.ends_at = free_at
        self.written = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _receipt(self, index: int) -> list[bytes]:
        number, shopper, items = self.sales[index]
        linked = shopper is not None and shopper == self.loyalty_shopper
        if linked and shopper is not None and self.suggestion is not None:
            item = self.suggestion(shopper)
            if item is not None and item.isdigit():
                # The item the associate suggested replaces the last one picked.
                items = [*items[:-1], ScannedItem(item, f"ITEM {item}", "3.49")]
                self.took_suggestion = item
        return journal_receipt(
            number,
            items,
            lane="L01",
            loyalty=LOYALTY_NUMBER if linked else None,
            card=TEST_CARD if linked else None,
        )

    def loyalty_ids(self) -> dict[str, list[str]]:
        """Shopper -> loyalty numbers, for the profiles HQ pushes (hashed with SALT)."""
        return {self.loyalty_shopper: [LOYALTY_NUMBER]} if self.loyalty_shopper else {}

    def config_sections(self) -> dict[str, Any]:
        return {
            "pos": {"dialects_dir": str(dialects_dir()), "loyalty_salt_file": str(self.salt_file)},
            "lanes": [
                {
                    "id": LANE,
                    "port": str(self.pty.link),
                    "dialect": DIALECT,
                    "zone": "checkout",
                    "reconnect_min_s": 0.1,
                    "reconnect_max_s": 1.0,
                }
            ],
        }

    def start(self) -> None:
        def play() -> None:
            lines: list[bytes] = []
            for at, index, i in self.schedule:
                delay = at - time.time()
                if delay > 0 and self._stop.wait(delay):
                    return
                if i == 0:
                    lines = self._receipt(index)
                with contextlib.suppress(OSError, TimeoutError, IndexError):
                    self.pty.write(lines[i], timeout_s=5)
                    self.written += 1

        self._thread = threading.Thread(target=play, name="demo-till", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.pty.close()
