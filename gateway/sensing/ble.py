"""The gateway's own Bluetooth radio: bleak scanning on BlueZ, kept alive by a watchdog.

One job: turn every advert the adapter hears into
``on_advert(manufacturer_data, service_data, rssi, wall_ts)`` and keep adverts
coming. ``on_advert`` is the cheap hot path the composition root builds (it
resolves tokens and drops everything else); this module never sees who a
device is. The detection callback passes on no address, no name and no bleak
type, keeps no reference to the advert once it returns, and nothing it counts
or logs identifies a device: a device that does not resolve leaves no trace
here. (bleak and BlueZ keep their own device caches while a device is in
range; BlueZ drops a device about 180 s after it was last heard.)

Mode: ``active`` asks for scan responses; ``passive`` (BlueZ >= 5.56 with
``--experimental``) needs advertisement-monitor ``or_patterns``, built here
from the shopper token's company id plus Eddystone and iBeacon so that EID
tags and reference beacons are heard too. The patterns only wake the
controller: ``on_advert`` still filters every advert itself.

The watchdog follows Home Assistant's habluetooth (``const.py`` and
``HaScanner``), whose values are the config defaults:

- it checks every ``ble.check_interval_s`` (30 s, habluetooth's
  ``SCANNER_WATCHDOG_INTERVAL``);
- a scanner that heard nothing for ``ble.silent_restart_s`` (90 s,
  ``SCANNER_WATCHDOG_TIMEOUT``: BlueZ forgets a device 180 s after its last
  advert, and a silent scanner must be back before that, allowing one 30 s
  check interval and two 30 s restarts) is stopped and started again;
- silence is measured from the later of the last advert and the last
  (re)start, and adverts with no content at all do not count as heard (a
  controller in a failure state reports empty adverts, habluetooth's
  observation);
- after ``ble.restarts_before_reset`` restarts (or failed starts) that brought
  no advert back, the next recovery power-cycles the adapter first. habluetooth
  power-cycles at the first silence after a fruitless restart
  (``restarts_before_reset = 1`` here); the default of 2 buys one more plain
  restart, which costs nothing, before a power cycle, which drops every
  connection on the adapter and takes seconds.

A store's reference beacons advertise day and night, so a silent radio is a
broken radio, not an empty shop.

Failed starts (no adapter, no system bus, BlueZ not ready or wedged) are logged
as ``ble_start_failed`` with the reason, counted and retried after a capped,
jittered delay (``ble.start_retry_min_s`` doubling to ``ble.start_retry_max_s``).
The scanner never raises out of ``run()`` except for cancellation.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern, OrPatternLike
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from gateway.clock import Clock
from gateway.config import BleSection
from gateway.log import get_logger

try:
    from dbus_fast.errors import DBusFastError
except ImportError:  # bleak installs dbus-fast on Linux only; elsewhere nothing raises it

    class DBusFastError(Exception):  # type: ignore[no-redef]
        """Stands in for dbus-fast's error base where dbus-fast is not installed."""


# The hot path's shape: (manufacturer_data, service_data, rssi, wall_ts). Built by
# the composition root; it must be cheap and must not keep what it drops.
AdvertCallback = Callable[[Mapping[int, bytes], Mapping[str, bytes], int, float], None]
# Power-cycles the named adapter ("hci0"); True when it came back.
AdapterReset = Callable[[str], Awaitable[bool]]

# What a radio that is missing, wedged or unreachable raises, from bleak's BlueZ
# backend down: BleakError (BlueZ said NotReady/InProgress/Failed, or Bluetooth is
# unavailable), OSError (no system bus socket is FileNotFoundError, a dropped bus
# BrokenPipeError or ConnectionError; our own time bounds raise TimeoutError) and
# dbus-fast's errors that bleak lets through (habluetooth catches InvalidMessageError).
RADIO_ERRORS: tuple[type[Exception], ...] = (BleakError, OSError, DBusFastError)

# habluetooth's START_TIMEOUT: BlueZ answers StartDiscovery and RegisterMonitor in
# well under a second; a start still pending after 15 s is a wedged stack, so it
# counts as a failed start and is retried.
START_TIMEOUT_S = 15.0
# habluetooth allows a stop 5 s (STOP_TIMEOUT); we allow less because run()'s last
# stop must fit in daemon.shutdown_timeout_s (4 s by default) beside every other
# component's shutdown, and a stop BlueZ has not answered in 2 s comes from a stack
# that the next start, or a power cycle, has to deal with anyway.
STOP_TIMEOUT_S = 2.0
# bluetooth_auto_recovery's MGMT_PROTOCOL_TIMEOUT: BlueZ replies to a Powered change
# once the kernel has switched the controller, normally well under a second.
RESET_STEP_TIMEOUT_S = 5.0
# bluetooth_auto_recovery's DBUS_REGISTER_TIME: once powered again, BlueZ needs about
# a second to bring the adapter back on D-Bus before a scan can start on it.
ADAPTER_SETTLE_S = 1.0
# The default reset's worst case (connect, off, on: three 5 s steps, then a 1 s
# settle) with room; a reset that takes longer is abandoned and counted as failed.
RESET_TIMEOUT_S = 20.0
# Longest exception text kept in a log line: enough for a D-Bus error name and its
# message, short enough that a line stays one line.
DETAIL_MAX_CHARS = 200

# Eddystone's 16-bit service UUID 0xFEAA as it sits in the AD structure (little-endian).
EDDYSTONE_UUID16_LE = b"\xaa\xfe"
# Apple's company id 0x004C (little-endian), then iBeacon's type 0x02 and length 0x15.
IBEACON_PREFIX = b"\x4c\x00\x02\x15"


def passive_or_patterns(company_id: int) -> list[OrPatternLike]:
    """The advertisement-monitor patterns for passive mode: tokens, Eddystone, iBeacon.

    Each matches at offset 0 of an AD structure of the given type: manufacturer
    data (0xFF) starting with the token's company id (little-endian), service
    data (0x16) starting with Eddystone's UUID, manufacturer data starting with
    Apple's iBeacon prefix.
    """
    return [
        OrPattern(
            0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, company_id.to_bytes(2, "little")
        ),
        OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, EDDYSTONE_UUID16_LE),
        OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, IBEACON_PREFIX),
    ]


def bluez_args(cfg: BleSection) -> BlueZScannerArgs:
    """bleak's ``bluez=`` argument: the adapter (the ``adapter=`` kwarg is deprecated in
    bleak 3), and in passive mode the or_patterns."""
    args: BlueZScannerArgs = {"adapter": cfg.adapter}
    if cfg.mode == "passive":
        args["or_patterns"] = passive_or_patterns(cfg.company_id)
    return args


def _detail(what: object) -> str:
    return str(what)[:DETAIL_MAX_CHARS]


async def power_cycle_adapter(adapter: str, *, settle_s: float = ADAPTER_SETTLE_S) -> bool:
    """The default ``AdapterReset``: BlueZ's ``Adapter1.Powered`` off, then on, over D-Bus.

    D-Bus rather than ``btmgmt``: the service runs without capabilities (the
    kernel's management socket needs CAP_NET_ADMIN) but in group ``bluetooth``,
    which BlueZ's D-Bus policy lets change the adapter. BlueZ replies once the
    controller has switched. Never raises for a missing bus, BlueZ or adapter:
    it logs ``ble_adapter_power_cycle_failed`` and returns False.
    """
    log = get_logger("ble").bind(adapter=adapter)
    try:
        from dbus_fast import BusType, Message, MessageType, Variant
        from dbus_fast.aio import MessageBus
    except ImportError as exc:
        log.error("ble_adapter_power_cycle_failed", error="ImportError", detail=_detail(exc))
        return False
    bus: MessageBus | None = None
    try:
        # The constructor opens the socket, so a missing bus fails here; disconnect()
        # in finally releases what it opened even when connect() fails.
        bus = MessageBus(bus_type=BusType.SYSTEM)
        async with asyncio.timeout(RESET_STEP_TIMEOUT_S):
            await bus.connect()
        for powered in (False, True):
            async with asyncio.timeout(RESET_STEP_TIMEOUT_S):
                reply = await bus.call(
                    Message(
                        destination="org.bluez",
                        path=f"/org/bluez/{adapter}",
                        interface="org.freedesktop.DBus.Properties",
                        member="Set",
                        signature="ssv",
                        body=["org.bluez.Adapter1", "Powered", Variant("b", powered)],
                    )
                )
            if reply is None or reply.message_type == MessageType.ERROR:
                log.error(
                    "ble_adapter_power_cycle_failed",
                    step="power_on" if powered else "power_off",
                    error=reply.error_name if reply is not None else "no reply",
                    detail=_detail(reply.body) if reply is not None else "",
                )
                return False
        await asyncio.sleep(settle_s)
    except RADIO_ERRORS as exc:
        log.error("ble_adapter_power_cycle_failed", error=type(exc).__name__, detail=_detail(exc))
        return False
    finally:
        if bus is not None:
            bus.disconnect()
    log.info("ble_adapter_power_cycled")
    return True


class BleScanner:
    """Scans one adapter with bleak, hands each advert to ``on_advert``, and keeps it alive."""

    def __init__(
        self,
        cfg: BleSection,
        on_advert: AdvertCallback,
        clock: Clock,
        *,
        backend: type[BaseBleakScanner] | None = None,
        reset_adapter: AdapterReset | None = None,
    ) -> None:
        self._cfg = cfg
        self._on_advert = on_advert
        self._clock = clock
        self._backend = backend
        self._reset_adapter: AdapterReset = reset_adapter or power_cycle_adapter
        self._bluez = bluez_args(cfg)
        self._log = get_logger("ble").bind(adapter=cfg.adapter)
        self._scanner: BleakScanner | None = None
        # Written by the hot path.
        self._adverts = 0
        self._heard = 0  # adverts with any content: what the watchdog trusts
        self._last_advert: float | None = None
        self._callback_errors = 0
        self._callback_error_type: str | None = None
        # The watchdog's view.
        self._started_at = clock.monotonic()
        self._heard_at_start = 0
        self._fruitless = 0  # restarts and failed starts since an advert last came
        self._restarts = 0
        self._adapter_resets = 0
        self._adapter_reset_failures = 0
        self._start_failures = 0
        self._callback_errors_logged = 0
        self._rate = 0.0
        self._rate_mark = (self._started_at, 0)

    # -- the hot path ---------------------------------------------------------------

    def _on_detection(self, device: BLEDevice, adv: AdvertisementData) -> None:
        """bleak's detection callback: count, stamp, hand on; hundreds of times a second."""
        self._adverts += 1
        manufacturer_data = adv.manufacturer_data
        service_data = adv.service_data
        if manufacturer_data or service_data or adv.local_name or adv.service_uuids:
            self._last_advert = self._clock.monotonic()
            self._heard += 1
        try:
            self._on_advert(manufacturer_data, service_data, adv.rssi, self._clock.wall())
        except Exception as exc:  # noqa: BLE001 - counted, summarised per interval; the scan goes on
            # Only the type is kept: the exception and its traceback would hold the advert.
            self._callback_errors += 1
            self._callback_error_type = type(exc).__name__

    # -- supervision ----------------------------------------------------------------

    async def run(self) -> None:
        """Start scanning and supervise until cancelled; cancellation stops the scanner
        within ``STOP_TIMEOUT_S``."""
        self._rate_mark = (self._clock.monotonic(), self._adverts)
        self._log.info("ble_scanner_starting", mode=self._cfg.mode)
        try:
            await self._start_until_running("startup")
            while True:
                await asyncio.sleep(self._cfg.check_interval_s)
                await self._check()
        finally:
            await self._stop_scanner()
            self._log.info("ble_scanner_stopped", **self._counts())

    async def _check(self) -> None:
        """One watchdog tick: close the interval, restart or reset a silent scanner."""
        now = self._clock.monotonic()
        self._close_interval(now)
        if self._heard > self._heard_at_start:
            self._fruitless = 0  # the latest (re)start brought adverts back
        silent_for_s = self._silent_for(now)
        if silent_for_s < self._cfg.silent_restart_s:
            return
        await self._stop_scanner()
        if self._fruitless >= self._cfg.restarts_before_reset:
            await self._reset("silent", silent_for_s)
        else:
            self._restarts += 1
            self._fruitless += 1
            self._log.warning(
                "ble_scanner_restart",
                reason="silent",
                silent_for_s=round(silent_for_s, 1),
                restarts=self._fruitless,
                restarts_total=self._restarts,
            )
        await self._start_until_running("watchdog")

    def _silent_for(self, now: float) -> float:
        last = self._last_advert
        quiet_since = self._started_at if last is None else max(last, self._started_at)
        return now - quiet_since

    def _close_interval(self, now: float) -> None:
        mark_t, mark_n = self._rate_mark
        if now > mark_t:
            self._rate = (self._adverts - mark_n) / (now - mark_t)
            self._rate_mark = (now, self._adverts)
        new_errors = self._callback_errors - self._callback_errors_logged
        if new_errors:
            self._callback_errors_logged = self._callback_errors
            self._log.warning(
                "ble_callback_errors",
                errors=new_errors,
                callback_errors=self._callback_errors,
                error=self._callback_error_type,
            )

    async def _start_until_running(self, reason: str) -> None:
        """Start a fresh scanner, retrying failures with capped, jittered backoff."""
        delay_s = self._cfg.start_retry_min_s
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._start_once()
            except RADIO_ERRORS as exc:
                self._start_failures += 1
                self._fruitless += 1
                # Half to all of the delay, so a fleet does not retry in lockstep.
                wait_s = random.uniform(delay_s / 2, delay_s)
                self._log.warning(
                    "ble_start_failed",
                    reason=reason,
                    attempt=attempt,
                    error=type(exc).__name__,
                    detail=_detail(exc),
                    retry_in_s=round(wait_s, 2),
                    start_failures=self._start_failures,
                )
                await asyncio.sleep(wait_s)
                delay_s = min(delay_s * 2, self._cfg.start_retry_max_s)
                if self._fruitless >= self._cfg.restarts_before_reset:
                    await self._reset("start_failed", self._silent_for(self._clock.monotonic()))
                continue
            self._log.info("ble_scanner_started", reason=reason, attempt=attempt)
            return

    async def _start_once(self) -> None:
        # A fresh BleakScanner per start, as habluetooth does: no state survives a
        # scanner that went wrong.
        scanner = BleakScanner(
            self._on_detection,
            None,
            self._cfg.mode,
            bluez=self._bluez,
            backend=self._backend,
        )
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await scanner.start()
        except BaseException:
            await self._stop_quietly(scanner)
            raise
        self._scanner = scanner
        self._started_at = self._clock.monotonic()
        self._heard_at_start = self._heard

    async def _stop_scanner(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            await self._stop_quietly(scanner)

    async def _stop_quietly(self, scanner: BleakScanner) -> None:
        try:
            # wait_for, not asyncio.timeout: this runs while run() is being cancelled,
            # and on Python 3.11 (Raspberry Pi OS Bookworm) an asyncio.timeout that
            # expires in a task already cancelled raises CancelledError, not TimeoutError
            # (fixed in 3.12), which would skip the rest of the shutdown.
            await asyncio.wait_for(scanner.stop(), STOP_TIMEOUT_S)
        except RADIO_ERRORS as exc:
            self._log.warning("ble_stop_failed", error=type(exc).__name__, detail=_detail(exc))

    async def _reset(self, reason: str, silent_for_s: float) -> None:
        """Power-cycle the adapter (the scanner is stopped); a failure is counted, not raised."""
        self._adapter_resets += 1
        self._log.warning(
            "ble_adapter_reset",
            reason=reason,
            silent_for_s=round(silent_for_s, 1),
            restarts=self._fruitless,
            adapter_resets=self._adapter_resets,
        )
        self._fruitless = 0
        error = detail = None
        try:
            async with asyncio.timeout(RESET_TIMEOUT_S):
                ok = await self._reset_adapter(self._cfg.adapter)
        except RADIO_ERRORS as exc:
            ok, error, detail = False, type(exc).__name__, _detail(exc)
        if not ok:
            self._adapter_reset_failures += 1
            self._log.error(
                "ble_adapter_reset_failed",
                reason=reason,
                error=error,
                detail=detail,
                adapter_reset_failures=self._adapter_reset_failures,
            )

    # -- health ---------------------------------------------------------------------

    def _counts(self) -> dict[str, int]:
        return {
            "adverts": self._adverts,
            "restarts": self._restarts,
            "adapter_resets": self._adapter_resets,
            "adapter_reset_failures": self._adapter_reset_failures,
            "start_failures": self._start_failures,
            "callback_errors": self._callback_errors,
        }

    def stats(self) -> dict[str, Any]:
        """Counters for the health topic; nothing in them identifies a device.

        ``adverts_per_s`` covers the last watchdog interval (0.0 until one has
        closed); ``last_advert_age_s`` is None until an advert with content came.
        """
        last = self._last_advert
        return {
            **self._counts(),
            "adverts_per_s": round(self._rate, 1),
            "last_advert_age_s": (
                None if last is None else round(self._clock.monotonic() - last, 1)
            ),
            "running": self._scanner is not None,
            "mode": self._cfg.mode,
            "adapter": self._cfg.adapter,
        }
