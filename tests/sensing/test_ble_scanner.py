"""The gateway's own BLE scanner, driven only through bleak's real ``BleakScanner(backend=...)``.

The radio is ``gateway.testing.radio.ReplayRadio``; everything above it
(BleakScanner, the detection callback, the watchdog) is the real code. Watchdog
tests move a ``ManualClock`` by hand, so the only real waits are the 0.1 s check
interval and generous "eventually" bounds.
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import subprocess
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bleak.assigned_numbers import AdvertisementDataType
from bleak.exc import BleakError
from structlog.testing import capture_logs

from gateway.clock import ManualClock, SystemClock
from gateway.config import BleSection
from gateway.sensing.ble import STOP_TIMEOUT_S, BleScanner, power_cycle_adapter
from gateway.testing.radio import (
    EDDYSTONE_UUID,
    Heard,
    ReplayRadio,
    ibeacon_advert,
    make_advert,
    make_device,
)

# Generous: every wait here is a few check intervals (0.1 s) on an idle machine;
# the bound only has to catch a scanner that never gets there.
EVENTUALLY_S = 10.0
ADDRESS = "5C:A1:AB:1E:00:42"
PHONE_NAME = "Alice's iPhone"
TOKEN = bytes.fromhex("0102a1b2c3d4e5f60718")


def ble_cfg(**overrides: Any) -> BleSection:
    """A BleSection at the fastest settings the config allows, for tests."""
    values: dict[str, Any] = {
        "enabled": True,
        "check_interval_s": 0.1,
        "silent_restart_s": 1.0,
        "restarts_before_reset": 2,
        "start_retry_min_s": 0.01,
        "start_retry_max_s": 0.04,
    }
    values.update(overrides)
    return BleSection(**values)


def token_heard(n: int = 0, *, company_id: int = 0xFFFF, rssi: int = -60) -> Heard:
    """A phone advertising a shopper token, with the address and name a phone really sends."""
    adv = make_advert(manufacturer_data={company_id: TOKEN}, rssi=rssi, local_name=PHONE_NAME)
    return make_device(ADDRESS, PHONE_NAME), adv


class Adverts:
    """An ``on_advert`` that records what it was given (what the composition root would see)."""

    def __init__(self, fail_with: type[Exception] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_with = fail_with

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)
        if self.fail_with is not None:
            raise self.fail_with("the resolver choked")


async def eventually(cond: Callable[[], bool], what: str, scanner: BleScanner) -> None:
    """Wait for ``cond``; fail saying what never happened and what the scanner reported."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENTUALLY_S
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not after {EVENTUALLY_S} s; stats {scanner.stats()}")
        await asyncio.sleep(0.005)


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel a scanner's run() and wait, boundedly, for it to finish."""
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=STOP_TIMEOUT_S + 5)
    assert done, "run() did not finish after cancellation"
    assert task.cancelled(), f"run() ended with {task.exception()!r} instead of cancelling"


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def test_adverts_reach_on_advert_with_their_fields_and_nothing_else() -> None:
    """Each advert calls on_advert(manufacturer_data, service_data, rssi, wall_ts), no device."""

    async def scenario() -> None:
        clock = ManualClock()
        eddystone = b"\x30\xbf" + bytes(8)
        radio = ReplayRadio(
            lambda n: (
                make_device(ADDRESS, PHONE_NAME),
                make_advert(
                    manufacturer_data={0xFFFF: TOKEN},
                    service_data={EDDYSTONE_UUID: eddystone},
                    rssi=-61,
                    local_name=PHONE_NAME,
                ),
            )
        )
        got = Adverts()
        scanner = BleScanner(ble_cfg(adapter="hci1"), got, clock, backend=radio.backend)
        task = asyncio.create_task(scanner.run())
        await eventually(lambda: len(got.calls) >= 3, "three adverts reach on_advert", scanner)
        await stop(task)
        assert got.calls[0] == ({0xFFFF: TOKEN}, {EDDYSTONE_UUID: eddystone}, -61, clock.wall())
        assert scanner.stats()["adverts"] == len(got.calls)
        assert radio.created[0].scanning_mode == "active"
        assert radio.created[0].bluez == {"adapter": "hci1"}

    asyncio.run(scenario())


def test_passive_mode_asks_bluez_for_token_eddystone_and_ibeacon_patterns() -> None:
    """Passive mode passes bluez={"adapter", "or_patterns"} built from the token's company id."""

    async def scenario() -> None:
        radio = ReplayRadio(token_heard)
        scanner = BleScanner(
            ble_cfg(mode="passive", company_id=0x1234),
            Adverts(),
            ManualClock(),
            backend=radio.backend,
        )
        task = asyncio.create_task(scanner.run())
        await eventually(lambda: radio.running, "the passive scanner starts", scanner)
        await stop(task)
        (args,) = radio.created
        assert args.scanning_mode == "passive"
        assert args.bluez["adapter"] == "hci0"
        patterns = [(p[0], int(p[1]), bytes(p[2])) for p in args.bluez["or_patterns"]]
        assert patterns == [
            (0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x34\x12"),
            (0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xaa\xfe"),
            (0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x4c\x00\x02\x15"),
        ]
        assert scanner.stats()["mode"] == "passive"

    asyncio.run(scenario())


def test_reference_beacons_reach_on_advert_unfiltered() -> None:
    """An iBeacon advert reaches on_advert as Apple manufacturer data (filtering is its job)."""

    async def scenario() -> None:
        uuid = bytes(range(16))
        radio = ReplayRadio(lambda n: (make_device(), ibeacon_advert(uuid, 1, 2, rssi=-70)))
        got = Adverts()
        scanner = BleScanner(ble_cfg(), got, ManualClock(), backend=radio.backend)
        task = asyncio.create_task(scanner.run())
        await eventually(lambda: bool(got.calls), "an iBeacon advert arrives", scanner)
        await stop(task)
        manufacturer_data, service_data, rssi, _ = got.calls[0]
        assert manufacturer_data[0x004C].startswith(b"\x02\x15" + uuid)
        assert (service_data, rssi) == ({}, -70)

    asyncio.run(scenario())


def test_watchdog_restarts_a_silent_scanner_and_adverts_flow_again() -> None:
    """No advert for silent_restart_s: the watchdog stops and starts the scanner, adverts resume."""

    async def scenario() -> None:
        clock = ManualClock()
        radio = ReplayRadio(token_heard, silent_after=5)
        got = Adverts()
        scanner = BleScanner(
            ble_cfg(), got, clock, backend=radio.backend, reset_adapter=radio.reset
        )
        with capture_logs() as logs:
            task = asyncio.create_task(scanner.run())
            await eventually(lambda: len(got.calls) == 5, "the first session's adverts", scanner)
            await asyncio.sleep(0.3)  # three checks while quiet but not yet for long
            assert scanner.stats()["restarts"] == 0, "restarted before silent_restart_s"
            clock.advance(1.5)
            await eventually(lambda: radio.starts == 2, "the watchdog restarts", scanner)
            await eventually(lambda: len(got.calls) == 10, "adverts after the restart", scanner)
            await stop(task)
        stats = scanner.stats()
        assert (stats["restarts"], stats["adapter_resets"]) == (1, 0)
        assert radio.resets == []
        (restart,) = events(logs, "ble_scanner_restart")
        assert restart["reason"] == "silent"
        assert restart["silent_for_s"] == 1.5
        assert restart["restarts"] == 1

    asyncio.run(scenario())


def test_adverts_with_content_keep_the_watchdog_quiet_and_empty_ones_do_not() -> None:
    """Silence counts from the last advert with content; an empty advert does not reset it."""

    async def scenario() -> None:
        clock = ManualClock()
        queue: asyncio.Queue[Heard] = asyncio.Queue()
        radio = ReplayRadio(queue=queue)
        got = Adverts()
        scanner = BleScanner(ble_cfg(), got, clock, backend=radio.backend)
        task = asyncio.create_task(scanner.run())
        await eventually(lambda: radio.running, "the scanner runs", scanner)
        assert scanner.stats()["last_advert_age_s"] is None
        clock.advance(0.8)
        await queue.put(token_heard())
        await eventually(lambda: len(got.calls) == 1, "the token advert", scanner)
        clock.advance(0.8)  # 1.6 s since the start, 0.8 s since the advert
        await asyncio.sleep(0.35)  # three checks
        assert scanner.stats()["restarts"] == 0, "restarted although an advert came 0.8 s ago"
        assert scanner.stats()["last_advert_age_s"] == 0.8
        await queue.put((make_device(), make_advert()))  # no content: a sick controller's kind
        await eventually(lambda: len(got.calls) == 2, "the empty advert, handed on", scanner)
        clock.advance(0.4)  # 1.2 s since the last advert with content
        await eventually(lambda: radio.starts == 2, "a restart despite the empty advert", scanner)
        await stop(task)

    asyncio.run(scenario())


def test_a_restart_that_brought_adverts_back_does_not_count_toward_a_reset() -> None:
    """Silence after a restart that worked is a new episode: restart again, no power cycle."""

    async def scenario() -> None:
        clock = ManualClock()
        radio = ReplayRadio(token_heard, silent_after=3)  # every session stalls; restarts cure
        scanner = BleScanner(
            ble_cfg(restarts_before_reset=1),
            Adverts(),
            clock,
            backend=radio.backend,
            reset_adapter=radio.reset,
        )
        task = asyncio.create_task(scanner.run())
        for session in (1, 2, 3):
            await eventually(
                lambda s=session: radio.delivered == 3 * s, f"session {session}'s adverts", scanner
            )
            clock.advance(1.5)
            await eventually(
                lambda s=session: radio.starts == s + 1, f"restart #{session}", scanner
            )
        await stop(task)
        assert radio.resets == []
        assert scanner.stats()["restarts"] == 3

    asyncio.run(scenario())


def test_repeated_silence_leads_to_an_adapter_reset() -> None:
    """After restarts_before_reset fruitless restarts the watchdog power-cycles the adapter."""

    async def scenario() -> None:
        clock = ManualClock()
        radio = ReplayRadio(token_heard)
        got = Adverts()
        scanner = BleScanner(
            ble_cfg(restarts_before_reset=2),
            got,
            clock,
            backend=radio.backend,
            reset_adapter=radio.reset,
        )
        with capture_logs() as logs:
            task = asyncio.create_task(scanner.run())
            await eventually(lambda: len(got.calls) >= 3, "adverts before the stall", scanner)
            radio.stall()  # deaf in every session until the adapter is power-cycled
            for starts in (2, 3):
                clock.advance(1.5)
                await eventually(lambda s=starts: radio.starts == s, f"start #{starts}", scanner)
            assert radio.resets == [], "reset before restarts_before_reset restarts"
            clock.advance(1.5)
            await eventually(lambda: radio.resets == ["hci0"], "the adapter reset", scanner)
            heard = len(got.calls)
            await eventually(lambda: len(got.calls) > heard, "adverts after the reset", scanner)
            await stop(task)
        stats = scanner.stats()
        assert (stats["restarts"], stats["adapter_resets"], stats["adapter_reset_failures"]) == (
            2,
            1,
            0,
        )
        assert [e["restarts"] for e in events(logs, "ble_scanner_restart")] == [1, 2]
        (reset,) = events(logs, "ble_adapter_reset")
        assert (reset["reason"], reset["silent_for_s"], reset["restarts"]) == ("silent", 1.5, 2)

    asyncio.run(scenario())


def test_a_failed_reset_is_counted_and_scanning_resumes_afterwards() -> None:
    """A reset that fails (or raises) is logged and counted; the scanner still starts again."""

    async def scenario() -> None:
        clock = ManualClock()
        radio = ReplayRadio(token_heard)
        resets: list[str] = []

        async def broken_reset(adapter: str) -> bool:
            resets.append(adapter)
            raise FileNotFoundError(2, "No such file or directory", "/run/dbus/system_bus_socket")

        scanner = BleScanner(
            ble_cfg(restarts_before_reset=1),
            Adverts(),
            clock,
            backend=radio.backend,
            reset_adapter=broken_reset,
        )
        with capture_logs() as logs:
            task = asyncio.create_task(scanner.run())
            await eventually(lambda: radio.delivered >= 2, "the first adverts", scanner)
            radio.stall()
            clock.advance(1.5)
            await eventually(lambda: radio.starts == 2, "the restart", scanner)
            clock.advance(1.5)
            await eventually(lambda: radio.starts == 3, "the start after the reset", scanner)
            await stop(task)
        assert resets == ["hci0"]
        assert scanner.stats()["adapter_reset_failures"] == 1
        (failed,) = events(logs, "ble_adapter_reset_failed")
        assert failed["error"] == "FileNotFoundError"

    asyncio.run(scenario())


def test_a_failing_start_is_retried_with_capped_backoff_and_counted() -> None:
    """Starts that raise (no bus, BlueZ not ready) are logged, counted and retried; no crash."""

    async def scenario() -> None:
        failures = [
            FileNotFoundError(2, "No such file or directory"),
            BleakError("org.bluez.Error.NotReady", "Resource Not Ready"),
            BleakError("org.bluez.Error.InProgress"),
            TimeoutError(),
        ]
        radio = ReplayRadio(token_heard, start_errors=failures)
        got = Adverts()
        scanner = BleScanner(
            ble_cfg(restarts_before_reset=10),
            got,
            SystemClock(),
            backend=radio.backend,
            reset_adapter=radio.reset,
        )
        with capture_logs() as logs:
            task = asyncio.create_task(scanner.run())
            await eventually(lambda: bool(got.calls), "adverts once a start succeeds", scanner)
            await stop(task)
        stats = scanner.stats()
        assert stats["start_failures"] == 4
        assert radio.start_calls == 5
        failed = events(logs, "ble_start_failed")
        assert [f["error"] for f in failed] == [
            "FileNotFoundError",
            "BleakError",
            "BleakError",
            "TimeoutError",
        ]
        assert "org.bluez.Error.NotReady" in failed[1]["detail"]
        # Doubling from 0.01 s, capped at 0.04 s, each jittered to half..all of the delay.
        for entry, delay in zip(failed, [0.01, 0.02, 0.04, 0.04], strict=True):
            assert delay / 2 - 0.005 <= entry["retry_in_s"] <= delay + 0.005, entry
        assert radio.resets == []

    asyncio.run(scenario())


def test_failed_starts_count_toward_an_adapter_reset() -> None:
    """restarts_before_reset failed starts in a row lead to a power cycle before the next try."""

    async def scenario() -> None:
        radio = ReplayRadio(
            token_heard,
            start_errors=[BleakError("org.bluez.Error.Failed")] * 2,
        )
        got = Adverts()
        scanner = BleScanner(
            ble_cfg(restarts_before_reset=2),
            got,
            SystemClock(),
            backend=radio.backend,
            reset_adapter=radio.reset,
        )
        task = asyncio.create_task(scanner.run())
        await eventually(lambda: bool(got.calls), "adverts after the reset", scanner)
        await stop(task)
        assert radio.resets == ["hci0"]
        assert scanner.stats()["start_failures"] == 2

    asyncio.run(scenario())


def test_on_advert_raising_is_counted_and_scanning_goes_on() -> None:
    """An on_advert that raises is counted and summarised per interval, not per advert."""

    async def scenario() -> None:
        radio = ReplayRadio(token_heard)
        got = Adverts(fail_with=KeyError)
        scanner = BleScanner(ble_cfg(), got, ManualClock(), backend=radio.backend)
        with capture_logs() as logs:
            task = asyncio.create_task(scanner.run())
            await eventually(lambda: len(got.calls) >= 100, "adverts keep coming", scanner)
            await eventually(
                lambda: bool(events(logs, "ble_callback_errors")), "a check's summary", scanner
            )
            await stop(task)
        stats = scanner.stats()
        assert stats["callback_errors"] == len(got.calls) == stats["adverts"]
        assert stats["restarts"] == 0
        summaries = events(logs, "ble_callback_errors")
        assert summaries, "no ble_callback_errors summary was logged"
        assert len(summaries) < len(got.calls) / 10, "logged per advert, not per interval"
        assert summaries[0]["error"] == "KeyError"
        assert sum(s["errors"] for s in summaries) <= stats["callback_errors"]

    asyncio.run(scenario())


def test_cancel_stops_the_scanner() -> None:
    """Cancelling run() stops the backend and leaves the scanner not running."""

    async def scenario() -> None:
        radio = ReplayRadio(token_heard)
        scanner = BleScanner(ble_cfg(), Adverts(), ManualClock(), backend=radio.backend)
        task = asyncio.create_task(scanner.run())
        await eventually(lambda: radio.delivered > 0, "the scanner runs", scanner)
        await stop(task)
        assert not radio.running
        assert radio.stops == 1
        assert scanner.stats()["running"] is False
        delivered = radio.delivered
        await asyncio.sleep(0.05)
        assert radio.delivered == delivered, "adverts still delivered after cancellation"

    asyncio.run(scenario())


def test_cancel_while_retrying_a_failing_start_returns_promptly() -> None:
    """Cancellation during start backoff ends run() at once, without a crash."""

    async def scenario() -> None:
        radio = ReplayRadio(token_heard, start_errors=[FileNotFoundError(2, "no bus")] * 1000)
        scanner = BleScanner(
            ble_cfg(start_retry_min_s=30, start_retry_max_s=60),
            Adverts(),
            ManualClock(),
            backend=radio.backend,
        )
        task = asyncio.create_task(scanner.run())
        await eventually(lambda: radio.start_calls == 1, "the first start attempt", scanner)
        await stop(task)
        assert scanner.stats()["start_failures"] == 1

    asyncio.run(scenario())


def test_cancel_is_bounded_when_bluez_does_not_acknowledge_the_stop() -> None:
    """A stop that hangs is abandoned after STOP_TIMEOUT_S; run() still ends on cancellation."""

    async def scenario() -> None:
        radio = ReplayRadio(token_heard, stop_delay_s=3600)
        scanner = BleScanner(ble_cfg(), Adverts(), ManualClock(), backend=radio.backend)
        with capture_logs() as logs:
            task = asyncio.create_task(scanner.run())
            await eventually(lambda: radio.delivered > 0, "the scanner runs", scanner)
            await stop(task)  # fails if run() takes longer than STOP_TIMEOUT_S + 5 s
        (failed,) = events(logs, "ble_stop_failed")
        assert failed["error"] == "TimeoutError"
        assert not radio.running

    asyncio.run(scenario())


def test_stats_and_logs_carry_nothing_that_identifies_a_device() -> None:
    """Health counters and log lines hold no address, name or advert bytes."""

    async def scenario() -> None:
        clock = ManualClock()
        radio = ReplayRadio(token_heard, silent_after=20)
        got = Adverts(fail_with=ValueError)
        scanner = BleScanner(
            ble_cfg(), got, clock, backend=radio.backend, reset_adapter=radio.reset
        )
        with capture_logs() as logs:
            task = asyncio.create_task(scanner.run())
            await eventually(lambda: radio.delivered == 20, "adverts", scanner)
            clock.advance(1.5)
            await eventually(lambda: radio.starts == 2, "a restart", scanner)
            await stop(task)
        stats = scanner.stats()
        assert set(stats) == {
            "adverts",
            "adverts_per_s",
            "last_advert_age_s",
            "restarts",
            "adapter_resets",
            "adapter_reset_failures",
            "start_failures",
            "callback_errors",
            "running",
            "mode",
            "adapter",
        }
        text = json.dumps(stats) + json.dumps(logs, default=repr)
        for secret in (ADDRESS, ADDRESS.replace(":", "_"), PHONE_NAME, TOKEN.hex(), repr(TOKEN)):
            assert secret not in text, f"{secret!r} leaked into stats or logs"

    asyncio.run(scenario())


def test_no_advert_outlives_its_callback() -> None:
    """Once on_advert returns, the scanner holds no reference to the advert's data."""

    class Data(dict[int, bytes]):
        """A dict that can be weakly referenced."""

    async def scenario() -> None:
        queue: asyncio.Queue[Heard] = asyncio.Queue()
        radio = ReplayRadio(queue=queue)
        seen: list[int] = []
        scanner = BleScanner(
            ble_cfg(),
            lambda m, s, rssi, ts: seen.append(rssi),
            ManualClock(),
            backend=radio.backend,
        )
        task = asyncio.create_task(scanner.run())
        await eventually(lambda: radio.running, "the scanner runs", scanner)
        data = Data({0xFFFF: TOKEN})
        ref = weakref.ref(data)
        await queue.put((make_device(ADDRESS), make_advert(manufacturer_data=data, rssi=-55)))
        del data
        await eventually(lambda: seen == [-55], "the advert is handled", scanner)
        gc.collect()
        assert ref() is None, f"still referenced by {gc.get_referrers(ref())!r}"
        await stop(task)

    asyncio.run(scenario())


def test_ble_section_refuses_a_retry_minimum_above_its_maximum() -> None:
    """start_retry_min_s above start_retry_max_s is a config error, not a silent swap."""
    with pytest.raises(ValueError, match="start_retry_min_s"):
        BleSection(start_retry_min_s=5, start_retry_max_s=1)


# -- the default reset: BlueZ's Adapter1.Powered over a real (private) D-Bus ----------------

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@pytest.fixture
def private_system_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A dbus-daemon of our own, standing in for the system bus (never the machine's)."""
    if shutil.which("dbus-daemon") is None:
        pytest.fail("dbus-daemon is not installed (install.sh --dev installs it)")
    socket = tmp_path / "system_bus_socket"
    config = tmp_path / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket=socket))
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address.startswith("unix:"), f"dbus-daemon printed {address!r}"
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:  # the pipe is ours to close (else a ResourceWarning)
            proc.stdout.close()


async def fake_bluez(address: str, adapters: set[str], writes: list[tuple[str, bool]]) -> Any:
    """org.bluez on the private bus: records Powered writes to the given adapters."""
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_address=address).connect()
    await bus.request_name("org.bluez")

    def handle(msg: Message) -> Message | None:
        if msg.message_type != MessageType.METHOD_CALL or msg.member != "Set":
            return None
        adapter = msg.path.rsplit("/", 1)[-1]
        if adapter not in adapters:
            return Message.new_error(
                msg, "org.freedesktop.DBus.Error.UnknownObject", f"Method Set on {msg.path}"
            )
        interface, prop, value = msg.body
        assert (interface, prop) == ("org.bluez.Adapter1", "Powered")
        writes.append((adapter, value.value))
        return Message.new_method_return(msg)

    bus.add_message_handler(handle)
    return bus


def test_default_reset_turns_the_adapter_off_then_on_through_bluez(
    private_system_bus: str,
) -> None:
    """The default AdapterReset sets org.bluez.Adapter1.Powered false, then true, on hciN."""

    async def scenario() -> None:
        writes: list[tuple[str, bool]] = []
        bus = await fake_bluez(private_system_bus, {"hci0"}, writes)
        try:
            assert await power_cycle_adapter("hci0", settle_s=0) is True
        finally:
            bus.disconnect()
        assert writes == [("hci0", False), ("hci0", True)]

    asyncio.run(scenario())


def test_default_reset_of_an_unknown_adapter_fails_cleanly(private_system_bus: str) -> None:
    """BlueZ refusing the adapter makes the default reset return False and log why."""

    async def scenario() -> None:
        writes: list[tuple[str, bool]] = []
        bus = await fake_bluez(private_system_bus, {"hci0"}, writes)
        try:
            with capture_logs() as logs:
                assert await power_cycle_adapter("hci7", settle_s=0) is False
        finally:
            bus.disconnect()
        assert writes == []
        (failed,) = events(logs, "ble_adapter_power_cycle_failed")
        assert failed["error"] == "org.freedesktop.DBus.Error.UnknownObject"

    asyncio.run(scenario())


def test_default_reset_without_a_system_bus_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No system bus (no BlueZ, a container): the default reset returns False, never raises."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-such-socket'}")

    async def scenario() -> None:
        with capture_logs() as logs:
            assert await power_cycle_adapter("hci0", settle_s=0) is False
        (failed,) = events(logs, "ble_adapter_power_cycle_failed")
        assert failed["error"] == "FileNotFoundError"

    asyncio.run(scenario())


def test_scanner_counts_a_default_reset_that_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default reset and no BlueZ, a silent radio's reset is counted as failed."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-such-socket'}")

    async def scenario() -> None:
        clock = ManualClock()
        radio = ReplayRadio(token_heard)
        scanner = BleScanner(
            ble_cfg(restarts_before_reset=1), Adverts(), clock, backend=radio.backend
        )
        task = asyncio.create_task(scanner.run())
        await eventually(lambda: radio.delivered >= 1, "an advert", scanner)
        radio.stall()
        clock.advance(1.5)
        await eventually(lambda: radio.starts == 2, "the restart", scanner)
        clock.advance(1.5)
        await eventually(lambda: radio.starts == 3, "the start after the reset", scanner)
        await stop(task)
        stats = scanner.stats()
        assert (stats["adapter_resets"], stats["adapter_reset_failures"]) == (1, 1)

    asyncio.run(scenario())


def test_replay_radio_needs_exactly_one_source() -> None:
    """A ReplayRadio is fed by a producer or a queue, not both and not neither."""
    with pytest.raises(ValueError, match="either"):
        ReplayRadio()
    with pytest.raises(ValueError, match="either"):
        ReplayRadio(token_heard, queue=asyncio.Queue())
