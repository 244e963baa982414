"""The ``replay`` radio: adverts recorded in a file, played into bleak at their times.

A real sensing backend (``[ble] backend = "replay"``, with ``replay_file``), for the
demo and for store IT replaying a capture: it goes in where BlueZ would, through
bleak's own ``backend=`` hook, so everything above it (``BleakScanner``, the
detection callback, the scanner's watchdog, resolution) is the code that runs in
a store. One JSON object per line::

    {"at": 1795000000.25, "address": "C0:FF:EE:00:00:01", "rssi": -61,
     "md": {"65535": "01...c5"}, "sd": {"0000feaa-0000-1000-8000-00805f9b34fb": "30..."}}

``at`` is unix time: the advert is delivered when the wall clock reaches it (one
already more than ``LATE_S`` in the past is skipped, as a radio that was off
would have missed it). ``t`` instead of ``at`` is seconds after the scanner's
first start, for files not tied to a moment. ``md`` keys are company ids in
decimal; values are hex. A line that is not such an object is skipped and
counted (``ReplayFile.bad_lines``, with the first bad line's number logged); the
file is read once, when the backend is built.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import (
    AdvertisementData,
    AdvertisementDataCallback,
    BaseBleakScanner,
)

from gateway.log import get_logger

# An advert this far behind the wall clock is still delivered (a start takes a moment).
LATE_S = 1.0
# Adverts delivered back to back before yielding: a file of adverts due at once
# must not hold up the loop (MQTT, the outbox) for more than a few milliseconds.
BURST = 256
# What bleak hands a detection callback.
Heard = tuple[BLEDevice, AdvertisementData]


def make_device(address: str = "C0:FF:EE:00:00:01", name: str | None = None) -> BLEDevice:
    """A BLEDevice as BlueZ would describe it (``details`` is an opaque D-Bus path)."""
    return BLEDevice(address, name, {"path": "/org/bluez/hci0/dev_" + address.replace(":", "_")})


def make_advert(
    *,
    manufacturer_data: Mapping[int, bytes] | None = None,
    service_data: Mapping[str, bytes] | None = None,
    rssi: int = -60,
    local_name: str | None = None,
    service_uuids: Sequence[str] = (),
    tx_power: int | None = None,
) -> AdvertisementData:
    """bleak's AdvertisementData with every field it requires, defaulting to an empty advert."""
    return AdvertisementData(
        local_name=local_name,
        manufacturer_data=dict(manufacturer_data or {}),
        service_data=dict(service_data or {}),
        service_uuids=list(service_uuids),
        tx_power=tx_power,
        rssi=rssi,
        platform_data=(),
    )


def _entry(doc: Any) -> tuple[float, bool, Heard]:
    """One line's (time, absolute?, advert); ValueError/TypeError/KeyError when malformed."""
    if not isinstance(doc, dict):
        raise TypeError("not an object")
    absolute = "at" in doc
    at = float(doc["at"] if absolute else doc["t"])
    adv = make_advert(
        manufacturer_data={int(k): bytes.fromhex(v) for k, v in doc.get("md", {}).items()},
        service_data={str(k): bytes.fromhex(v) for k, v in doc.get("sd", {}).items()},
        rssi=int(doc.get("rssi", -70)),
    )
    return at, absolute, (make_device(str(doc.get("address", "C0:FF:EE:00:00:01"))), adv)


@dataclass
class ReplayFile:
    """A recorded file's adverts, and how far playing them has come."""

    path: Path
    entries: list[tuple[float, bool, Heard]] = field(default_factory=list)
    bad_lines: int = 0
    position: int = 0
    skipped: int = 0
    started_at: float | None = None

    @classmethod
    def load(cls, path: Path) -> ReplayFile:
        """Read every line of ``path``; malformed lines are counted, not fatal."""
        out = cls(Path(path))
        first_bad: int | None = None
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.entries.append(_entry(json.loads(line)))
                except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
                    out.bad_lines += 1
                    first_bad = first_bad or number
        if first_bad is not None:
            get_logger("ble").warning(
                "replay_file_bad_lines", path=str(path), bad_lines=out.bad_lines, first=first_bad
            )
        return out


class ReplayScanner(BaseBleakScanner):
    """A ``BaseBleakScanner`` that plays a ``ReplayFile``; get the class from
    ``replay_backend``. Stopping pauses it; starting again goes on where it was."""

    recording: ClassVar[ReplayFile]

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # The backend's own receiver, standing in for BlueZ's D-Bus signal reader:
        # owned by this backend, started here and cancelled in stop().
        self._pump = asyncio.get_running_loop().create_task(self._play(), name="replay-radio")

    async def stop(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            # wait() rather than awaiting the task: a cancellation of our caller must
            # still propagate, and the pump's own CancelledError must not.
            await asyncio.wait([pump])

    async def _play(self) -> None:
        rec = self.recording
        if rec.started_at is None:
            rec.started_at = time.time()
        while rec.position < len(rec.entries):
            at, absolute, (device, adv) = rec.entries[rec.position]
            delay = (at if absolute else rec.started_at + at) - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            rec.position += 1
            if delay < -LATE_S:
                rec.skipped += 1
                continue
            self.call_detection_callbacks(device, adv)
            if rec.position % BURST == 0:
                await asyncio.sleep(0)
        await asyncio.Event().wait()  # the file is over; a radio goes quiet, it does not end


def replay_backend(path: Path) -> type[ReplayScanner]:
    """The bleak backend class that plays ``path`` (read now, once)."""
    return type("BoundReplayScanner", (ReplayScanner,), {"recording": ReplayFile.load(path)})
