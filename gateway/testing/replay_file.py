"""Adverts recorded in a file, played through the fake radio at their times (backend "replay").

One JSON object per line::

    {"at": 1795000000.25, "address": "C0:FF:EE:00:00:01", "rssi": -61,
     "md": {"65535": "01...c5"}, "sd": {"0000feaa-0000-1000-8000-00805f9b34fb": "30..."}}

``at`` is unix time: the advert is delivered when the wall clock reaches it (one
already more than ``LATE_S`` in the past when the scanner starts is skipped, as a
radio that was off would have missed it). ``t`` instead of ``at`` is seconds after
the scanner's first start, for files that are not tied to a moment. ``md`` keys
are company ids in decimal; values are hex. The demo writes such a file for the
Pi's radio; a test can write 100,000 foreign adverts into one.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from gateway.testing.radio import Heard, ReplayBackend, ReplayRadio, make_advert, make_device

# An advert this far behind the wall clock is still delivered (a start takes a moment).
LATE_S = 1.0


def load(path: Path) -> list[tuple[float, bool, Heard]]:
    """(time, absolute?, (device, advert)) for every line, in file order."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            doc = json.loads(line)
            absolute = "at" in doc
            adv = make_advert(
                manufacturer_data={int(k): bytes.fromhex(v) for k, v in doc.get("md", {}).items()},
                service_data={k: bytes.fromhex(v) for k, v in doc.get("sd", {}).items()},
                rssi=int(doc.get("rssi", -70)),
            )
            device = make_device(doc.get("address", "C0:FF:EE:00:00:01"))
            out.append((float(doc["at"] if absolute else doc["t"]), absolute, (device, adv)))
    return out


class _FileBackend(ReplayBackend):
    async def _play(self) -> None:
        radio = self.radio
        assert isinstance(radio, FileRadio)
        if radio.started_at is None:
            radio.started_at = time.time()
        while radio.position < len(radio.entries):
            at, absolute, (device, adv) = radio.entries[radio.position]
            due = at if absolute else radio.started_at + at
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            radio.position += 1
            if delay < -LATE_S:
                radio.skipped += 1
                continue
            self.deliver(device, adv)
            if radio.position % 256 == 0:
                await asyncio.sleep(0)  # a file of adverts due at once must not hog the loop
        await asyncio.Event().wait()


class FileRadio(ReplayRadio):
    """A radio that hears what a file recorded, once, in order."""

    def __init__(self, entries: list[tuple[float, bool, Heard]]) -> None:
        super().__init__(queue=asyncio.Queue())
        self.entries = entries
        self.position = 0
        self.skipped = 0
        self.started_at: float | None = None
        self.backend = type("BoundFileBackend", (_FileBackend,), {"radio": self})


def replay_backend(path: Path) -> type[ReplayBackend]:
    """The bleak backend class that plays ``path``."""
    return FileRadio(load(path)).backend
