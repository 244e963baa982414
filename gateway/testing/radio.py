"""A fake Bluetooth radio behind bleak's own ``backend=`` hook, for tests and benches.

The radio is the one fake the project allows (ARCHITECTURE, principle 3), and it
goes in where a real BlueZ backend would: ``BleakScanner(backend=radio.backend)``
builds a ``ReplayBackend`` whose ``start``/``stop`` are ours and which feeds
bleak's ``AdvertisementData`` through ``call_detection_callbacks``, the path
every real backend uses. Everything above it (BleakScanner, the detection
callback, the watchdog) is the real code.

A ``ReplayRadio`` is the air one adapter hears and the record of how a scanner
drove it::

    radio = ReplayRadio(lambda n: (make_device(), make_advert(rssi=-60 - n % 10)))
    scanner = BleakScanner(callback, backend=radio.backend)

It plays adverts from a callable (the n-th advert heard) or from an asyncio
queue, and can misbehave the ways real controllers do:

- ``silent_after=N``: each scan session goes quiet after N adverts until the
  scanner is stopped and started again (a stall a restart cures);
- ``stall()`` / ``heal()``: nothing is heard in any session until healed (a
  controller only a power cycle cures; ``radio.reset`` is an ``AdapterReset``
  that heals it);
- ``start_errors``: exceptions the next starts raise, in order (no adapter,
  BlueZ not ready, no system bus);
- ``stop_delay_s``: a stop that takes this long to be acknowledged (a wedged
  BlueZ), after the adverts have stopped.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import (
    AdvertisementData,
    AdvertisementDataCallback,
    BaseBleakScanner,
)
from bleak.exc import BleakError

from gateway.sensing.replay import Heard, make_advert, make_device

# The n-th advert the radio hears (n counts from 0 across sessions).
Produce = Callable[[int], Heard]

# Bleak's service_data keys are full lower-case 128-bit UUIDs (Eddystone is 0xFEAA).
EDDYSTONE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"
# Apple's company id; an iBeacon's manufacturer data starts 02 15 after it.
APPLE_COMPANY_ID = 0x004C
# A gap between adverts that keeps a test's radio busy without hogging the loop:
# about 200 adverts/s, the order of a busy store (ARCHITECTURE: hundreds/s on a Pi).
DEFAULT_INTERVAL_S = 0.005


def ibeacon_advert(uuid: bytes, major: int, minor: int, *, rssi: int = -60) -> AdvertisementData:
    """An Apple iBeacon advert (a reference beacon), measured power -59 dBm at 1 m."""
    payload = b"\x02\x15" + uuid + major.to_bytes(2, "big") + minor.to_bytes(2, "big") + b"\xc5"
    return make_advert(manufacturer_data={APPLE_COMPANY_ID: payload}, rssi=rssi)


@dataclass(frozen=True)
class ScannerArgs:
    """How a BleakScanner asked for its backend: what a test checks mode and patterns on."""

    scanning_mode: str
    service_uuids: list[str] | None
    bluez: dict[str, Any]


class ReplayBackend(BaseBleakScanner):
    """A ``BaseBleakScanner`` playing a ``ReplayRadio``; get the class from ``radio.backend``."""

    radio: ClassVar[ReplayRadio]

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        *,
        bluez: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        bluez = dict(bluez or {})
        self.radio.created.append(ScannerArgs(scanning_mode, service_uuids, bluez))
        # The same refusal as bleak's BlueZ backend, so a wrong setup fails here too.
        if scanning_mode == "passive" and not bluez.get("or_patterns"):
            raise BleakError("passive scanning mode requires bluez or_patterns")
        self._pump: asyncio.Task[None] | None = None
        self._session_adverts = 0

    async def start(self) -> None:
        radio = self.radio
        radio.start_calls += 1
        if radio.start_errors:
            raise radio.start_errors.popleft()
        self._session_adverts = 0
        # The fake's receiver, standing in for BlueZ's D-Bus signal reader: owned by
        # this backend, started here and cancelled in stop().
        self._pump = asyncio.get_running_loop().create_task(self._play(), name="replay-radio")
        radio.active = self
        radio.starts += 1

    async def stop(self) -> None:
        radio = self.radio
        pump, self._pump = self._pump, None
        if radio.active is self:
            radio.active = None
        if pump is not None:
            pump.cancel()
            # wait() rather than awaiting the task: a cancellation of our caller must
            # still propagate, and the pump's own CancelledError must not.
            await asyncio.wait([pump])
            if radio.stop_delay_s:
                await asyncio.sleep(radio.stop_delay_s)  # BlueZ slow to acknowledge
            radio.stops += 1

    async def _play(self) -> None:
        radio = self.radio
        if radio.queue is not None:
            while True:
                self.deliver(*await radio.queue.get())
        while True:
            self.deliver(*radio.produce(radio.heard))
            await asyncio.sleep(radio.interval_s)

    def deliver(self, device: BLEDevice, adv: AdvertisementData) -> bool:
        """Hand one advert to the scanner's callbacks, unless the controller is quiet."""
        radio = self.radio
        radio.heard += 1
        silent_after = radio.silent_after
        if radio.stalled or (silent_after is not None and self._session_adverts >= silent_after):
            radio.dropped += 1
            return False
        self._session_adverts += 1
        radio.delivered += 1
        self.call_detection_callbacks(device, adv)
        return True


class ReplayRadio:
    """The air one fake adapter hears, and a record of how a scanner drove it."""

    def __init__(
        self,
        produce: Produce | None = None,
        *,
        queue: asyncio.Queue[Heard] | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        silent_after: int | None = None,
        start_errors: Iterable[BaseException] = (),
        stop_delay_s: float = 0.0,
    ) -> None:
        if (produce is None) == (queue is None):
            raise ValueError("give the radio either produce or queue")
        self.produce: Produce = produce or _never
        self.queue = queue
        self.interval_s = interval_s
        self.silent_after = silent_after
        self.start_errors: collections.deque[BaseException] = collections.deque(start_errors)
        self.stop_delay_s = stop_delay_s
        self.stalled = False
        # The record.
        self.created: list[ScannerArgs] = []
        self.start_calls = 0
        self.starts = 0
        self.stops = 0
        self.heard = 0
        self.delivered = 0
        self.dropped = 0
        self.resets: list[str] = []
        self.active: ReplayBackend | None = None
        # A class per radio: bleak instantiates the class it is given, so the class
        # is how each scanner it builds finds this radio.
        self.backend: type[ReplayBackend] = type(
            "BoundReplayBackend", (ReplayBackend,), {"radio": self}
        )

    @property
    def running(self) -> bool:
        """A backend is started and not yet stopped."""
        return self.active is not None

    def emit(self, device: BLEDevice, adv: AdvertisementData) -> bool:
        """Deliver one advert now (False when no backend is started, or it is quiet)."""
        return self.active is not None and self.active.deliver(device, adv)

    def stall(self) -> None:
        """The controller goes deaf in every session until ``heal()`` (or ``reset``)."""
        self.stalled = True

    def heal(self) -> None:
        self.stalled = False

    async def reset(self, adapter: str) -> bool:
        """An ``AdapterReset``: records the adapter and heals the radio, as a power cycle would."""
        self.resets.append(adapter)
        self.heal()
        return True


def _never(n: int) -> Heard:
    raise AssertionError("a queue-fed radio has no producer")


__all__ = ["Heard", "ReplayBackend", "ReplayRadio", "ScannerArgs", "make_advert", "make_device"]
